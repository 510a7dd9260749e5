//! `publish`, `evidence` and `status`.

use super::args::*;
use super::util::*;
use anyhow::{bail, Result};
use ota_repo::evidence;
use ota_repo::expiry::Expiry;
use ota_repo::layout::Layout;
use ota_repo::publish;
use ota_repo::state::RepoState;
use ota_repo::status;

pub(crate) fn run(layout: Layout, command: Command) -> Result<()> {
    match command {
        Command::Publish {
            server,
            token_file,
            ca_cert,
            dir,
        } => {
            // Load (and verify) with tough on a runtime that is gone before
            // the blocking HTTP client runs.
            let state = runtime()?.block_on(RepoState::load(&layout))?;
            let mut set = publish::collect(&layout, &state)?;
            ota_repo::delegation::extend_publish_set(&layout, &state, &mut set)?;
            if !set.expired_roles.is_empty() {
                eprintln!(
                    "ota-repo: warning: publishing expired metadata ({}); devices will refuse it",
                    set.expired_roles.join(", ")
                );
            }
            match (server, dir) {
                (Some(server), _) => {
                    let token = publish::read_token(
                        token_file.as_deref(),
                        std::env::var("OTA_ADMIN_TOKEN").ok(),
                    )?;
                    let anchors = match &ca_cert {
                        Some(path) => publish::read_ca_file(path)?,
                        None => Vec::new(),
                    };
                    let client = publish::AdminClient::trusting(server.clone(), token, anchors)?;
                    let done = publish::publish_server(&layout, &set, &client)?;
                    println!(
                    "published to {server} (publication {}): {} image(s) uploaded, {} already there; visible: {}",
                    done.id,
                    done.uploaded.len(),
                    done.skipped.len(),
                    done.committed.files.join(", ")
                );
                }
                (None, Some(dir)) => {
                    let written = publish::publish_dir(&layout, &set, &dir)?;
                    println!(
                        "published to {}: {} file(s) written",
                        dir.display(),
                        written.len()
                    );
                }
                (None, None) => bail!("pass --server URL or --dir DIR"),
            }
        }
        Command::Evidence {
            release,
            out,
            trusted_root,
            published_dir,
            published_url,
            online_audit,
        } => {
            // Load on a runtime that is gone before the blocking HTTP client runs.
            let state = runtime()?.block_on(RepoState::load(&layout))?;
            let options = evidence::EvidenceOptions {
                release,
                trusted_root,
                published: match (published_dir, published_url) {
                    (Some(dir), _) => evidence::Published::Dir(dir),
                    (None, Some(url)) => evidence::Published::Url(url),
                    (None, None) => evidence::Published::Repository,
                },
                online_audit,
            };
            let ev = evidence::build(&layout, &state, &options)?;
            let (md, json) = ev.write(&out)?;
            println!(
                "evidence for release {}: {} file(s); written to {} and {}",
                ev.release,
                ev.files.len(),
                md.display(),
                json.display()
            );
            for w in &ev.warnings {
                eprintln!("ota-repo: warning: {w}");
            }
            if !ev.passed {
                for f in &ev.failures {
                    eprintln!("ota-repo: FAILED: {f}");
                }
                // Distinct from errors (1): the evidence exists and records the failure.
                std::process::exit(3);
            }
            println!("all checks passed");
        }
        Command::Status { warn_within } => {
            let window = match warn_within.as_deref().map(parse_expiry).transpose()? {
                None => status::WarnWindow::Scaled,
                Some(Expiry::After(secs)) => status::WarnWindow::Within(secs),
                Some(Expiry::At(_)) => bail!(
                    "--warn-within {}: expected a duration such as 14d",
                    warn_within.unwrap_or_default()
                ),
            };
            let report = runtime()?.block_on(status::status(&layout, window))?;
            print!("{}", report.text);
            if !report.warnings.is_empty() || !report.pending.is_empty() {
                for w in report.warnings.iter().chain(&report.pending) {
                    eprintln!("ota-repo: warning: {w}");
                }
                // Distinct from errors (1) so scripts can alert on it.
                std::process::exit(2);
            }
        }
        other => unreachable!("{other:?} is dispatched elsewhere"),
    }
    Ok(())
}
