//! A repository, a running server and a factory image: what every end-to-end test starts from.

use crate::device::SimDevice;
use crate::image::write_image;
use crate::repo::Repo;
use crate::server::Server;
use std::path::PathBuf;

pub const HARDWARE_ID: &str = "board-rev-a";
pub const FACTORY_VERSION: &str = "1.0.0";

#[derive(Debug)]
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub repo: Repo,
    pub server: Server,
    pub factory_image: PathBuf,
}

impl Fixture {
    /// A fresh repository (default keys) and a server with embedded defaults.
    pub fn new() -> anyhow::Result<Fixture> {
        Self::with_init_args(&[])
    }

    pub fn with_init_args(init_args: &[&str]) -> anyhow::Result<Fixture> {
        Self::with_options(init_args, None)
    }

    /// A fixture whose server runs with the TOML configuration `server_config`.
    pub fn with_server_config(server_config: &str) -> anyhow::Result<Fixture> {
        Self::with_options(&[], Some(server_config))
    }

    /// `ota-repo init` with `init_args`, and a server with `server_config`.
    pub fn with_options(
        init_args: &[&str],
        server_config: Option<&str>,
    ) -> anyhow::Result<Fixture> {
        let dir = tempfile::tempdir()?;
        let repo = Repo::init(&dir.path().join("repo"), init_args)?;
        let server = Server::start_with_config(&dir.path().join("server"), server_config)?;
        let factory_image = dir.path().join("factory-1.0.0.img");
        write_image(&factory_image, FACTORY_VERSION, true, 64 * 1024)?;
        Ok(Fixture {
            dir,
            repo,
            server,
            factory_image,
        })
    }

    /// Like [`Self::release`], as a staged rollout: `waves` are `ota-repo add
    /// --wave` specs (`NAME=WHO@WHEN`). Returns the target name.
    pub fn staged_release(
        &self,
        version: &str,
        healthy: bool,
        size: usize,
        waves: &[&str],
    ) -> anyhow::Result<String> {
        let name = format!("rootfs-{version}.img");
        let image = self.dir.path().join(&name);
        write_image(&image, version, healthy, size)?;
        let image = image.to_string_lossy().into_owned();
        let mut args = vec![
            "add",
            image.as_str(),
            "--version",
            version,
            "--hardware-id",
            HARDWARE_ID,
            "--compress",
            "none",
        ];
        for w in waves {
            args.extend(["--wave", w]);
        }
        self.repo.run(&args)?;
        self.repo.publish(&self.server)?;
        Ok(name)
    }

    /// Builds an image for `version`, adds it to the repository for `hardware_ids` and publishes it.
    pub fn release(
        &self,
        version: &str,
        healthy: bool,
        size: usize,
        hardware_ids: &[&str],
    ) -> anyhow::Result<PathBuf> {
        let image = self.dir.path().join(format!("rootfs-{version}.img"));
        write_image(&image, version, healthy, size)?;
        self.repo.add(&image, version, hardware_ids)?;
        self.repo.publish(&self.server)?;
        Ok(image)
    }

    /// A device running the factory image, talking to `server_url` (the server, or a proxy in front of it).
    pub fn device_at(&self, id: &str, server_url: &str) -> anyhow::Result<SimDevice> {
        SimDevice::provision(
            &self.dir.path().join("devices").join(id),
            id,
            HARDWARE_ID,
            server_url,
            &self.repo.initial_root(),
            &self.factory_image,
            FACTORY_VERSION,
        )
    }

    pub fn device(&self, id: &str) -> anyhow::Result<SimDevice> {
        self.device_at(id, &self.server.url)
    }
}
