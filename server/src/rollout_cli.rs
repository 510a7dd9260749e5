//! `ota-server rollout ...`: the same holds and status as the admin API,
//! on the configured database and repository storage (for an operator on
//! the server host, or when the API is unreachable).

use crate::config::Config;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::paths::TargetPath;
use crate::rollout::{Action, Rollouts};
use crate::storage::Storage;
use anyhow::{anyhow, Context};
use ota_common::wire::{RolloutHold, RolloutStatus, WaveStatus};
use std::io::Write;
use std::sync::Arc;

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Lists the published releases: version, waves, server state.
    List,
    /// The fleet's progress through one release, a table per wave.
    Status {
        target: String,
        /// The admin API's JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Holds a staged rollout: no device starts it until resumed.
    Pause {
        target: String,
        #[arg(long)]
        reason: String,
    },
    /// Lets a paused rollout proceed as its signed waves open.
    Resume { target: String },
    /// Stops a rollout for good (it cannot be resumed).
    Abort {
        target: String,
        #[arg(long)]
        reason: String,
    },
}

/// Who a change from the command line is recorded as: `cli:$USER`.
fn cli_user() -> String {
    match std::env::var("USER") {
        Ok(u) if ota_common::wire::is_valid_id(&u) => format!("cli:{u}"),
        _ => "cli".to_owned(),
    }
}

fn target(name: &str) -> anyhow::Result<String> {
    TargetPath::parse_decoded(name)
        .map(|t| t.as_str().to_owned())
        .map_err(|e| anyhow!(e))
}

pub async fn run(
    config: &Config,
    db: &Db,
    command: RolloutCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let storage = Storage::open_with(&config.data_dir, config.object_store.as_ref())?;
    let rollouts = Rollouts {
        db: db.clone(),
        storage: Arc::new(storage),
        metrics: Arc::new(Metrics::default()),
        settings: config.rollouts,
    };
    let text = match command {
        RolloutCommand::List => list(&rollouts).await?,
        RolloutCommand::Status { target: t, json } => {
            let status = rollouts.status(&target(&t)?).await?;
            if json {
                let mut s = serde_json::to_string_pretty(&status).context("encode status")?;
                s.push('\n');
                s
            } else {
                render_status(&status)
            }
        }
        RolloutCommand::Pause { target: t, reason } => {
            change(&rollouts, &t, Action::Pause, Some(&reason)).await?
        }
        RolloutCommand::Resume { target: t } => change(&rollouts, &t, Action::Resume, None).await?,
        RolloutCommand::Abort { target: t, reason } => {
            change(&rollouts, &t, Action::Abort, Some(&reason)).await?
        }
    };
    out.write_all(text.as_bytes())
        .map_err(|e| anyhow!("cannot write to stdout: {e}"))
}

async fn change(
    rollouts: &Rollouts,
    name: &str,
    action: Action,
    reason: Option<&str>,
) -> anyhow::Result<String> {
    let hold: RolloutHold = rollouts
        .change(&target(name)?, action, reason, &cli_user())
        .await?;
    Ok(match hold.reason {
        Some(r) => format!("{}: {} ({r})\n", hold.target, hold.state),
        None => format!("{}: {}\n", hold.target, hold.state),
    })
}

async fn list(rollouts: &Rollouts) -> anyhow::Result<String> {
    let mut rows = vec![vec![
        "TARGET".to_owned(),
        "VERSION".to_owned(),
        "HARDWARE".to_owned(),
        "WAVES (open/all)".to_owned(),
        "STATE".to_owned(),
        "REASON".to_owned(),
    ]];
    for r in rollouts.list().await? {
        let waves = if r.waves.is_empty() {
            "unstaged".to_owned()
        } else {
            let open = r.waves.iter().filter(|w| w.open).count();
            let next = r
                .waves
                .iter()
                .find(|w| !w.open)
                .map(|w| format!(", next {} {}", w.name, w.not_before))
                .unwrap_or_default();
            format!("{open}/{}{next}", r.waves.len())
        };
        rows.push(vec![
            r.target,
            r.version,
            r.hardware_ids.join(","),
            waves,
            r.state.to_string(),
            r.reason.unwrap_or_default(),
        ]);
    }
    if rows.len() == 1 {
        return Ok("no published releases\n".to_owned());
    }
    Ok(table(&rows))
}

/// A human summary: state, one table row per wave, problems, history.
pub fn render_status(s: &RolloutStatus) -> String {
    let mut out = format!(
        "{}  version {}  hardware {}\nstate: {}",
        s.target,
        s.version.as_deref().unwrap_or("(no longer published)"),
        if s.hardware_ids.is_empty() {
            "-".to_owned()
        } else {
            s.hardware_ids.join(",")
        },
        s.state
    );
    if let (Some(by), Some(at)) = (&s.changed_by, &s.changed_at) {
        out.push_str(&format!(" (by {by} at {at})"));
    }
    if let Some(reason) = &s.reason {
        out.push_str(&format!(": {reason}"));
    }
    out.push_str("\n\n");
    let mut rows = vec![[
        "WAVE",
        "OPENS",
        "OPEN",
        "TOTAL",
        "PENDING",
        "DOWNLOADING",
        "INSTALLED",
        "COMMITTED",
        "ROLLED_BACK",
        "FAILED",
        "NOT_SEEN",
    ]
    .map(str::to_owned)
    .to_vec()];
    rows.extend(s.waves.iter().map(wave_row));
    out.push_str(&table(&rows));
    if !s.problems.is_empty() {
        out.push_str("\nfailed or rolled back:\n");
        for p in &s.problems {
            out.push_str(&format!(
                "  {}  {}  {}  {}  {}\n",
                p.device_id,
                p.wave.as_deref().unwrap_or("-"),
                p.status,
                p.at,
                p.reason.as_deref().unwrap_or("")
            ));
        }
    }
    if !s.history.is_empty() {
        out.push_str("\nhistory:\n");
        for h in &s.history {
            out.push_str(&format!("  {}  {} by {}", h.at, h.state, h.by));
            if let Some(r) = &h.reason {
                out.push_str(&format!(": {r}"));
            }
            out.push('\n');
        }
    }
    out
}

fn wave_row(w: &WaveStatus) -> Vec<String> {
    let mut row = vec![
        w.name.clone(),
        w.not_before.clone().unwrap_or_else(|| "-".to_owned()),
        if w.open { "yes" } else { "no" }.to_owned(),
    ];
    row.extend(
        [
            w.total,
            w.pending,
            w.downloading,
            w.installed,
            w.committed,
            w.rolled_back,
            w.failed,
            w.not_seen,
        ]
        .map(|n| n.to_string()),
    );
    row
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|v| v.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
