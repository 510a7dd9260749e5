//! The release engineer's side: the real `ota-repo` binary.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone)]
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    /// `ota-repo init` with the given extra arguments (key type, expiries...).
    pub fn init(dir: &Path, extra: &[&str]) -> anyhow::Result<Repo> {
        let repo = Repo {
            dir: dir.to_path_buf(),
        };
        let mut args = vec!["init"];
        args.extend_from_slice(extra);
        repo.run(&args)?;
        Ok(repo)
    }

    /// Runs `ota-repo --repo DIR ARGS...`, failing with its stderr if it fails.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.output(args)?;
        if !out.status.success() {
            bail!(
                "ota-repo {} failed ({}):\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `ota-repo` and returns its raw output, for tests that expect failure.
    pub fn output(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new(crate::bins::path("ota-repo")?)
            .arg("--repo")
            .arg(&self.dir)
            .args(args)
            .output()
            .context("running ota-repo")
    }

    /// `ota-repo add IMAGE --version V --hardware-id HW... --compress none`:
    /// the raw image, so tests about the install's byte offsets (resume,
    /// checkpoints, memory) see the slot's offsets on the wire.
    pub fn add(&self, image: &Path, version: &str, hardware_ids: &[&str]) -> anyhow::Result<()> {
        self.add_with(image, version, hardware_ids, &["--compress", "none"])
    }

    /// `ota-repo add IMAGE --version V --hardware-id HW... EXTRA...`
    pub fn add_with(
        &self,
        image: &Path,
        version: &str,
        hardware_ids: &[&str],
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let image = image.to_string_lossy().into_owned();
        let mut args = vec!["add", image.as_str(), "--version", version];
        for hw in hardware_ids {
            args.push("--hardware-id");
            args.push(hw);
        }
        args.extend_from_slice(extra);
        self.run(&args).map(|_| ())
    }

    /// `ota-repo publish --server URL --token-file FILE`
    pub fn publish(&self, server: &crate::server::Server) -> anyhow::Result<()> {
        let token = server.admin_token_file().to_string_lossy().into_owned();
        self.run(&["publish", "--server", &server.url, "--token-file", &token])
            .map(|_| ())
    }

    /// The first root a device is provisioned with.
    pub fn initial_root(&self) -> PathBuf {
        self.dir.join("metadata").join("1.root.json")
    }
}
