//! `tuf-client`: the spec-exact TUF client workflow from the command line,
//! for conformance testing and manual checks. Verification only.
//!
//! ```text
//! tuf-client --metadata-dir DIR init TRUSTED_ROOT
//! tuf-client --metadata-dir DIR --metadata-url URL refresh
//! tuf-client --metadata-dir DIR --metadata-url URL --target-name PATH [--target-name PATH ...]
//!            --target-base-url URL --target-dir DIR download
//! ```
//! Exit status 0 on success, 1 on any failure with a one-line error on stderr.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ota_common::tuf::http::HttpTransport;
use ota_common::tuf::{ClientOptions, FetchError, FileTransport, Transport, TufClient};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

#[derive(Debug, Parser)]
#[command(name = "tuf-client", about = "TUF client workflow (verification only)")]
struct Cli {
    /// Directory holding the trusted metadata.
    #[arg(long, global = true)]
    metadata_dir: Option<PathBuf>,
    /// Base URL of the repository's metadata (http, https or file).
    #[arg(long, global = true)]
    metadata_url: Option<String>,
    /// Target path to download (repeatable; downloaded in order).
    #[arg(long = "target-name", global = true)]
    target_names: Vec<String>,
    /// Base URL of the repository's targets.
    #[arg(long, global = true)]
    target_base_url: Option<String>,
    /// Directory the targets are saved in.
    #[arg(long, global = true)]
    target_dir: Option<PathBuf>,
    /// Network timeout in seconds (connect, and each wait for data).
    #[arg(long, global = true, default_value_t = 30)]
    timeout_secs: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trust TRUSTED_ROOT (must be signed by a threshold of its own keys).
    Init { trusted_root: PathBuf },
    /// Update the trusted top-level metadata.
    Refresh,
    /// Refresh, then find and download each --target-name.
    Download,
}

/// Either transport, chosen by URL scheme.
enum AnyTransport {
    Http(HttpTransport),
    File(FileTransport),
}

impl Transport for AnyTransport {
    fn fetch(
        &self,
        url: &Url,
        max_len: u64,
        etag: Option<&str>,
    ) -> Result<ota_common::tuf::Fetched, FetchError> {
        match self {
            AnyTransport::Http(t) => t.fetch(url, max_len, etag),
            AnyTransport::File(t) => t.fetch(url, max_len, etag),
        }
    }

    fn fetch_stream(&self, url: &Url, offset: u64) -> Result<Box<dyn Read + Send>, FetchError> {
        match self {
            AnyTransport::Http(t) => t.fetch_stream(url, offset),
            AnyTransport::File(t) => t.fetch_stream(url, offset),
        }
    }
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TUF_CLIENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .init();
    if let Err(e) = run(cli) {
        // One line: the whole cause chain, joined.
        eprintln!("tuf-client: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let metadata_dir = cli
        .metadata_dir
        .clone()
        .context("--metadata-dir is required")?;
    match &cli.command {
        Command::Init { trusted_root } => {
            let bytes = read_small(trusted_root, 1024 * 1024)?;
            TufClient::<FileTransport>::init(&metadata_dir, &bytes).context("init")?;
        }
        Command::Refresh => {
            let mut client = open(&cli, &metadata_dir, None)?;
            client.refresh().context("refresh")?;
        }
        Command::Download => {
            if cli.target_names.is_empty() {
                bail!("download needs at least one --target-name");
            }
            let base = cli
                .target_base_url
                .as_deref()
                .context("--target-base-url is required")?;
            let target_dir = cli.target_dir.clone().context("--target-dir is required")?;
            let mut client = open(&cli, &metadata_dir, Some(base))?;
            client.refresh().context("refresh")?;
            std::fs::create_dir_all(&target_dir)
                .with_context(|| format!("creating {}", target_dir.display()))?;
            for name in &cli.target_names {
                let target = client
                    .find_target(name)
                    .with_context(|| format!("looking up target {name}"))?
                    .with_context(|| {
                        format!("target {name} is not listed by any trusted targets role")
                    })?;
                let dest = target_dir.join(file_name_for(name));
                client
                    .download_target(&target, &dest)
                    .with_context(|| format!("downloading target {name}"))?;
            }
        }
    }
    Ok(())
}

fn open(
    cli: &Cli,
    metadata_dir: &Path,
    targets_base: Option<&str>,
) -> Result<TufClient<AnyTransport>> {
    let metadata_url = parse_url(
        cli.metadata_url
            .as_deref()
            .context("--metadata-url is required")?,
        "--metadata-url",
    )?;
    let targets_url = match targets_base {
        Some(b) => parse_url(b, "--target-base-url")?,
        None => metadata_url.clone(),
    };
    let needs_http = [&metadata_url, &targets_url]
        .iter()
        .any(|u| u.scheme() != "file");
    let transport = if needs_http {
        for u in [&metadata_url, &targets_url] {
            if !matches!(u.scheme(), "http" | "https") {
                bail!("{u}: mixing file:// and http(s) URLs is not supported");
            }
        }
        AnyTransport::Http(
            HttpTransport::new(
                Duration::from_secs(cli.timeout_secs),
                concat!("tuf-client/", env!("CARGO_PKG_VERSION")),
            )
            .context("HTTP transport")?,
        )
    } else {
        AnyTransport::File(FileTransport)
    };
    // ClientOptions::new adds the trailing slash a base URL needs.
    let options = ClientOptions::new(metadata_url, targets_url);
    TufClient::open(metadata_dir, options, transport).context("loading trusted metadata")
}

fn parse_url(s: &str, what: &str) -> Result<Url> {
    let url = Url::parse(s).with_context(|| format!("{what} {s:?} is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https" | "file") {
        bail!("{what} {s:?}: only http, https and file URLs are supported");
    }
    Ok(url)
}

fn read_small(path: &Path, max: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > max {
        bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(bytes)
}

/// A stable, flat file name for a target path: every byte outside
/// `[A-Za-z0-9_.-]` (and a leading '.') percent-encoded, so `a/b.img`
/// becomes `a%2Fb.img` and no name can escape the target directory.
fn file_name_for(target: &str) -> String {
    let mut out = String::with_capacity(target.len());
    for (i, b) in target.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::file_name_for;

    #[test]
    fn target_file_names_are_flat_and_safe() {
        assert_eq!(file_name_for("a/b.img"), "a%2Fb.img");
        assert_eq!(file_name_for("../x"), "%2E.%2Fx");
        assert_eq!(file_name_for("plain.bin"), "plain.bin");
    }
}
