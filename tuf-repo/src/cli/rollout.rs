//! `rollout`: the wave schedule of a target.

use super::args::*;
use super::util::*;
use anyhow::Result;
use ota_repo::ceremony;
use ota_repo::layout::Layout;
use ota_repo::rollout;

pub(crate) fn run(layout: Layout, command: Command) -> Result<()> {
    match command {
        Command::Rollout { action } => match action {
            RolloutAction::Show {
                target,
                device_id,
                groups,
                json,
            } => {
                let query = device_id.map(|device_id| rollout::DeviceQuery { device_id, groups });
                let view = runtime()?.block_on(rollout::show(
                    &layout,
                    &target,
                    query.as_ref(),
                    chrono::Utc::now(),
                ))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&view)?);
                } else {
                    print!("{}", view.text());
                }
            }
            RolloutAction::Set { target, rollout } => {
                let args = rollout.into_args();
                let (changed, plan) = runtime()?.block_on(rollout::change(
                    &layout,
                    &target,
                    Some(&args),
                    chrono::Utc::now(),
                ))?;
                for w in plan.iter().flat_map(rollout::warnings) {
                    eprintln!("ota-repo: warning: {w}");
                }
                report(
                    &layout,
                    changed,
                    &format!("rollout of {target} changed"),
                    &format!("{target} already has this rollout plan; nothing signed"),
                )?;
            }
            RolloutAction::Clear { target } => {
                let (changed, _) = runtime()?.block_on(rollout::change(
                    &layout,
                    &target,
                    None,
                    chrono::Utc::now(),
                ))?;
                report(
                    &layout,
                    changed,
                    &format!(
                        "rollout plan of {target} removed (every compatible device may install now)"
                    ),
                    &format!("{target} has no rollout plan; nothing signed"),
                )?;
            }
        },
        other => unreachable!("{other:?} is dispatched elsewhere"),
    }
    Ok(())
}

/// What a rollout change signed (`done; outcome`), or `unchanged`.
fn report(layout: &Layout, changed: rollout::Changed, done: &str, unchanged: &str) -> Result<()> {
    match changed {
        rollout::Changed::Signed { targets_version } => {
            let pending = ceremony::pending(layout)?;
            println!(
                "{done}; {}",
                targets_outcome(targets_version, pending.first())
            );
            print_pending(pending.first());
        }
        rollout::Changed::SignedRole {
            role,
            version,
            progress,
        } => {
            println!("{done}; {}", role_outcome(&role, version, &progress));
            print_pending(progress.pending.as_ref());
        }
        rollout::Changed::Unchanged => println!("{unchanged}"),
    }
    Ok(())
}
