//! The command line: clap's parse of the arguments (`args`) and one module
//! per group of subcommands, each calling into the `ota_repo` library.

mod args;
mod ceremony;
mod publish;
mod release;
mod rollout;
mod setup;
mod util;

pub(crate) use args::Cli;
use args::Command;
use ota_repo::layout::Layout;

/// Runs the parsed command line.
pub(crate) fn run(cli: Cli) -> anyhow::Result<()> {
    let layout = Layout::new(cli.repo);
    match cli.command {
        command @ (Command::Init { .. }
        | Command::Keygen { .. }
        | Command::Key { .. }
        | Command::Rotate { .. }
        | Command::Audit { .. }) => setup::run(layout, command),
        command @ (Command::Sign { .. } | Command::Ceremony { .. }) => {
            ceremony::run(layout, command)
        }
        command @ (Command::Delegate { .. }
        | Command::Undelegate { .. }
        | Command::Add { .. }
        | Command::Resign { .. }) => release::run(layout, command),
        command @ Command::Rollout { .. } => rollout::run(layout, command),
        command @ (Command::Publish { .. } | Command::Evidence { .. } | Command::Status { .. }) => {
            publish::run(layout, command)
        }
    }
}
