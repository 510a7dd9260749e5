//! `ota-repo`: command-line front end; the work is in the `ota_repo` library.

mod cli;

use clap::Parser;
use cli::Cli;

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("OTA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = cli::run(Cli::parse()) {
        eprintln!("ota-repo: error: {}", message(&e));
        std::process::exit(1);
    }
}

/// The error and its causes on one line, skipping a cause whose text the
/// message already contains (our errors often quote their source).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
