//! `ota-server`: see the crate documentation of `ota_server`.

use anyhow::anyhow;
use clap::{Parser, Subcommand};
use ota_server::config::{Config, Overrides};
use ota_server::Server;
use std::io::Write;
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

/// Serves signed TUF metadata and images to devices, accepts publications,
/// records device status.
#[derive(Debug, Parser)]
#[command(name = "ota-server", version)]
struct Args {
    /// TOML config file (keys: listen, data_dir, admin_token_file, max_upload_bytes, log,
    /// database_url, tls_cert, tls_key, header_read_timeout_secs, idle_timeout_secs,
    /// max_connections).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on, IP:PORT [env: OTA_SERVER_LISTEN] [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Data directory [env: OTA_SERVER_DATA_DIR] [default: $STATE_DIRECTORY or ./ota-server-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// sqlite://PATH or postgres://USER@HOST/DB [env: OTA_SERVER_DATABASE_URL]
    /// [default: sqlite://DATA_DIR/ota.db].
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Without a command: serve.
    #[command(subcommand)]
    command: Option<Command>,
}

/// Credential management on the configured database (same configuration as the server).
#[derive(Debug, Subcommand)]
enum Command {
    /// Admin API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Device tokens (device_auth = "token").
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Staged rollouts: list, status, pause, resume, abort.
    #[command(subcommand)]
    Rollout(ota_server::rollout_cli::RolloutCommand),
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Creates a token and prints it (once: only its hash is stored).
    Create {
        #[arg(long)]
        name: String,
        /// publisher, operator or viewer.
        #[arg(long)]
        role: ota_server::auth::Role,
    },
    /// Lists tokens (names, roles, dates; never secrets).
    List,
    /// Revokes a token.
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// Creates (or replaces) a device's token and prints it.
    Add { device_id: String },
    /// Revokes a device's token.
    Revoke { device_id: String },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line, not a debug dump. Every error here already
            // carries its cause in its message, so the chain is not repeated.
            eprintln!("ota-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        admin_token_file: None,
        database_url: args.database_url,
    };
    let config = Config::resolve(args.config.as_deref(), &overrides, |k| {
        std::env::var(k).ok()
    })?;

    // RUST_LOG, when set, beats the config file's filter.
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => f,
        _ => config.log_filter.clone(),
    };
    let filter =
        EnvFilter::try_new(&filter).map_err(|e| anyhow!("invalid log filter {filter:?}: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))?;
    match args.command {
        None => runtime.block_on(serve(config)),
        Some(command) => runtime.block_on(manage(config, command)),
    }
}

async fn manage(config: Config, command: Command) -> anyhow::Result<()> {
    use ota_server::credentials as cred;
    // As the server would: the default SQLite database lives in data_dir.
    ota_common::atomic::create_dir_all_durable(&config.data_dir).map_err(|e| {
        anyhow!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    let db = ota_server::db::Db::open(&config.database()).await?;
    let result = async {
        let mut out = std::io::stdout().lock();
        let print = |out: &mut std::io::StdoutLock<'_>, line: String| {
            writeln!(out, "{line}").map_err(|e| anyhow!("cannot write to stdout: {e}"))
        };
        match command {
            Command::Token(TokenCommand::Create { name, role }) => {
                print(&mut out, cred::create_admin_token(&db, &name, role).await?)
            }
            Command::Token(TokenCommand::List) => {
                for t in cred::list_admin_tokens(&db).await? {
                    let state = if t.revoked { "revoked" } else { "active" };
                    print(
                        &mut out,
                        format!("{}\t{}\t{}\t{state}", t.name, t.role, t.created_at),
                    )?;
                }
                Ok(())
            }
            Command::Token(TokenCommand::Revoke { name }) => {
                Ok(cred::revoke_admin_token(&db, &name).await?)
            }
            Command::Device(DeviceCommand::Add { device_id }) => {
                print(&mut out, cred::add_device(&db, &device_id).await?)
            }
            Command::Device(DeviceCommand::Revoke { device_id }) => {
                Ok(cred::revoke_device(&db, &device_id).await?)
            }
            Command::Rollout(command) => {
                ota_server::rollout_cli::run(&config, &db, command, &mut out).await
            }
        }
    }
    .await;
    db.close().await;
    result
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = Server::bind(&config).await?;
    // SIGHUP's default action ends the process, so the handler must be in
    // place before anyone is told the server is up: a supervisor may send
    // its reload the moment it reads the line below.
    let sighup_reload = server.tls().and_then(|store| {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(hup) => Some((store, hup)),
            Err(e) => {
                tracing::warn!(
                    "cannot watch SIGHUP ({e}); certificates reload on file change only"
                );
                None
            }
        }
    });
    {
        // Tests and supervisors read this exact line for the real port.
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "ota-server listening on {}://{}",
            server.scheme(),
            server.local_addr()
        )
        .and_then(|()| out.flush())
        .map_err(|e| anyhow!("cannot write to stdout: {e}"))?;
    }
    // After SIGTERM, in-flight requests (a device halfway through an image
    // download) get a grace period, not forever: a supervisor's stop must stop.
    if let Some((store, hup)) = sighup_reload {
        tokio::spawn(reload_on_sighup(store, hup));
    }
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let run = server.run(async move {
        shutdown_signal().await;
        let _ = stopping_tx.send(true);
    });
    tokio::select! {
        result = run => result?,
        _ = async {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; stopping anyway"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// How long in-flight requests may run on after a stop signal.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Reloads the TLS certificate on each SIGHUP (the files are also watched;
/// this is for operators and certbot hooks that want it now).
async fn reload_on_sighup(
    store: std::sync::Arc<ota_server::tls::CertStore>,
    mut hup: tokio::signal::unix::Signal,
) {
    while hup.recv().await.is_some() {
        let store = std::sync::Arc::clone(&store);
        match tokio::task::spawn_blocking(move || store.reload()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("{e}; still serving the previous certificate"),
            Err(e) => tracing::warn!("TLS reload task: {e}"),
        }
    }
}

/// Completes on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}
