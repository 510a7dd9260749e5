//! `ota-agent`: the device daemon.
//!
//! ```text
//! ota-agent [--config PATH] run [--once]   resume after boot, then poll forever (or once);
//!                                          a systemd Type=notify service: READY=1, WATCHDOG=1
//! ota-agent [--config PATH] health         post-boot stage only: health checks, commit or roll back
//! ota-agent [--config PATH] status         print the persisted state as JSON
//! ota-agent [--config PATH] verify [--json] [--refresh]
//!                                          re-hash each slot against the trusted signed
//!                                          metadata; exit 0 none modified, 1 modified, 2 error
//! ```

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ota_agent::config::Config;
use ota_agent::machine::{Heartbeat, Machine, Resumed};
use ota_agent::report::HttpReporter;
use ota_agent::rollout::HttpHolds;
use ota_agent::source::open_tuf;
use ota_agent::state::StateStore;
use ota_agent::watchdog::Watchdogs;
use ota_agent::{bootloader, lock};
use rand::Rng;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "ota-agent",
    version,
    about = "OTA update agent: A/B updates verified with TUF"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, env = "OTA_AGENT_CONFIG", default_value = "/etc/ota/agent.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resume after boot (health checks, commit or roll back), then poll for updates.
    Run {
        /// Resume and poll once, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Only the post-boot stage: health checks, then commit or roll back.
    Health,
    /// Print the agent's persisted state as JSON.
    Status,
    /// Re-hash each slot and check it against the signed release the state
    /// says it holds: verified, modified, unknown image or empty per slot.
    /// Exit 0 when no slot is modified, 1 when one is, 2 on a read error.
    Verify {
        /// Print a JSON array, one object per slot.
        #[arg(long)]
        json: bool,
        /// Refresh the trusted metadata from the server first (else no network).
        #[arg(long)]
        refresh: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    // `verify` documents its own code for errors (2: 1 means a modified slot).
    let error_code = match cli.command {
        Command::Verify { .. } => ExitCode::from(ota_agent::verify::exit::ERROR),
        _ => ExitCode::FAILURE,
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ota-agent: error: {}", error_chain(&e));
            error_code
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Status => status(&config),
        Command::Verify { json, refresh } => verify(&config, json, refresh),
        Command::Health => {
            let _lock = lock::lock(&lock_path_ensured(&config)?, true)?;
            let mut machine = build_machine(&config)?;
            match machine.resume_after_boot()? {
                // Health checks failed (or a reboot is pending) and the system is still up:
                // fail the unit so boot-complete.target is not reached.
                Resumed::RebootRequested => Ok(ExitCode::FAILURE),
                Resumed::Idle | Resumed::Committed | Resumed::RolledBack { .. } => {
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Run { once } => {
            let lock_path = lock_path_ensured(&config)?;
            let watchdogs = Arc::new(Mutex::new(
                Watchdogs::from_env(&config.watchdog).context("watchdog")?,
            ));
            let feed = {
                let watchdogs = watchdogs.clone();
                move || {
                    if let Ok(mut w) = watchdogs.lock() {
                        w.feed();
                    }
                }
            };
            if let Ok(w) = watchdogs.lock() {
                w.ready();
            }
            let mut tuf = None;
            let mut first = true;
            loop {
                // Fed from the loop only: a hung cycle stops the pings.
                feed();
                // The lock is held for one cycle, not while sleeping, so `ota-agent health`
                // (run by systemd at boot) never waits for a whole poll interval. The
                // state is re-read each cycle for the same reason.
                let cycle = (|| -> Result<()> {
                    let _lock = lock::lock(&lock_path, true)?;
                    let mut machine = build_machine(&config)?;
                    if first {
                        tracing::info!(slot = %machine.booted(), phase = machine.state().phase.name(),
                            version = %machine.running_version(), "agent started");
                    }
                    machine.set_heartbeat(Heartbeat::new(feed.clone()));
                    // Finishes whatever the persisted phase left open (commit, rollback,
                    // a reboot that did not happen); a no-op when idle.
                    machine.resume_after_boot()?;
                    let tuf = match &mut tuf {
                        Some(t) => t,
                        None => tuf.insert(open_tuf(&config)?),
                    };
                    machine.poll_once(tuf)?;
                    Ok(())
                })();
                match cycle {
                    // --once: a poll that ran (even one whose install failed and was
                    // reported) is success; one that could not check for updates is not.
                    Ok(()) if once => return Ok(ExitCode::SUCCESS),
                    Err(e) if once || first && is_fatal(&e) => return Err(e),
                    Ok(()) => {}
                    Err(e) => tracing::error!(error = %error_chain(&e), "update cycle failed"),
                }
                first = false;
                let jitter = match config.poll_jitter_secs {
                    0 => 0,
                    j => rand::thread_rng().gen_range(0..=j),
                };
                let wait = config.poll_interval_secs.saturating_add(jitter);
                tracing::debug!(wait_secs = wait, "sleeping until the next poll");
                match watchdogs.lock() {
                    Ok(mut w) => w.sleep(Duration::from_secs(wait)),
                    Err(_) => std::thread::sleep(Duration::from_secs(wait)),
                }
            }
        }
    }
}

/// Errors no retry can fix (bad setup): the daemon exits on them at its first
/// cycle instead of logging them every interval. Network and TUF verification
/// failures are retried.
fn is_fatal(e: &anyhow::Error) -> bool {
    use ota_agent::machine::MachineError;
    use ota_agent::source::SourceError;
    e.chain().any(|c| {
        c.downcast_ref::<lock::LockError>().is_some()
            || matches!(
                c.downcast_ref::<MachineError>(),
                Some(MachineError::Booted(_) | MachineError::StateDir { .. })
            )
            || matches!(
                c.downcast_ref::<SourceError>(),
                Some(
                    SourceError::TrustedRoot { .. }
                        | SourceError::Dir { .. }
                        | SourceError::Config(_)
                )
            )
    })
}

fn build_machine(config: &Config) -> Result<Machine> {
    let bootloader = bootloader::from_config(&config.boot).context("bootloader")?;
    let reporter = HttpReporter::with_credentials(
        config.report_url()?,
        Duration::from_secs(config.http_timeout_secs.min(10)),
        &config.report,
        &config.server_trust_anchors()?,
    )?;
    // Rollout holds are asked over the reporter's client: same TLS identity.
    let holds = HttpHolds::new(reporter.http_client(), &config.server_url);
    Ok(Machine::new(
        config.clone(),
        bootloader,
        Box::new(reporter),
        Box::new(holds),
    )?)
}

fn status(config: &Config) -> Result<ExitCode> {
    let store = StateStore::new(config.state_path());
    let state = store
        .load()
        .with_context(|| format!("reading {}", store.path().display()))?;
    match state {
        Some(state) => println!("{}", serde_json::to_string_pretty(&state)?),
        None => println!("null"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `ota-agent verify`: read-only (no lock: state.json is replaced
/// atomically, and the slots are only read).
fn verify(config: &Config, json: bool, refresh: bool) -> Result<ExitCode> {
    use ota_agent::verify;
    let (targets, note) = if refresh {
        let mut tuf = open_tuf(config)?;
        tuf.refresh().context("refreshing the trusted metadata")?;
        verify::targets_of(&tuf, &config.tuf_dir())?
    } else {
        verify::trusted_targets(config)?
    };
    let state = verify::load_state(config)?;
    let slots = ota_agent::slot::Slots::new(
        config.slots.a.clone(),
        config.slots.b.clone(),
        config.slots.max_image_bytes,
    );
    let reports = verify::verify_slots(&slots, state.as_ref(), &targets);
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        print!("{}", verify::render_text(&reports, &note));
    }
    Ok(ExitCode::from(verify::exit_code(&reports)))
}

/// The lock file's path, creating state_dir first.
fn lock_path_ensured(config: &Config) -> Result<PathBuf> {
    ota_common::atomic::create_dir_all_durable(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
    Ok(config.lock_path())
}

/// The error and its causes on one line, skipping causes whose text the
/// message already includes (the library errors name their source inline).
fn error_chain(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}
