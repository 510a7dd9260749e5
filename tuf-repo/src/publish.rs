//! `ota-repo publish`: hands the repository to the server's admin API, or
//! copies it into a directory, in the order that keeps every reader safe:
//! images first, then the versioned metadata (new names nobody references
//! yet), then `timestamp.json` last, replaced atomically.

use crate::error::{RepoError, Result};
use crate::layout::Layout;
use crate::progress::{bytes_bar, ProgressReader};
use crate::state::RepoState;
use crate::target_name;
use ota_common::hash::copy_and_digest;
use ota_common::wire::{ErrorBody, PublicationCommitted, PublicationCreated, StagedTarget};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;
use tough::schema::Target;
use tough::TargetName;
use url::Url;

pub mod chunks;

/// Largest metadata file the server accepts.
pub const MAX_METADATA_BYTES: u64 = 16 * 1024 * 1024;
/// Most bytes of an answer body read (error messages, JSON answers).
const MAX_ANSWER_BYTES: u64 = 1024 * 1024;

/// An image as listed in the signed targets metadata.
#[derive(Debug, Clone)]
pub struct TargetFile {
    pub name: String,
    pub length: u64,
    pub sha256: String,
    /// Only when the target lists sha512 (`ota-repo add --hash sha512`, or
    /// targets added before sha256 alone was the default).
    pub sha512: Option<String>,
    /// `[dir/]<sha256>.<basename>`, relative to `targets/`.
    pub by_sha256: String,
    /// `[dir/]<sha512>.<basename>`, relative to `targets/`, when listed.
    pub by_sha512: Option<String>,
}

impl TargetFile {
    /// The target's consistent-snapshot file names: one per listed digest.
    pub fn hashed_paths(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.by_sha256).chain(self.by_sha512.as_ref())
    }
}

/// Everything a publication carries.
#[derive(Debug, Clone)]
pub struct PublishSet {
    pub targets: Vec<TargetFile>,
    /// Versioned metadata: every `N.root.json` (oldest first), the current
    /// `N.targets.json` and `N.snapshot.json`.
    pub metadata: Vec<String>,
    /// Whether any of the current metadata has expired (published anyway:
    /// tests publish expired metadata on purpose; the caller warns).
    pub expired_roles: Vec<String>,
}

/// The files of one signed target, checked against its signed length.
pub(crate) fn target_file(
    layout: &Layout,
    name: &TargetName,
    target: &Target,
) -> Result<TargetFile> {
    let name = name.raw().to_owned();
    let sha256 = hex::encode(&*target.hashes.sha256);
    let sha512 = match target.hashes._extra.get("sha512") {
        None => None,
        Some(v) => Some(v.as_str().map(str::to_owned).ok_or_else(|| {
            RepoError::Inconsistent(format!("target {name} lists a sha512 that is not a string"))
        })?),
    };
    let t = TargetFile {
        by_sha256: target_name::hashed_path(&name, &sha256)?,
        by_sha512: sha512
            .as_deref()
            .map(|sha512| target_name::hashed_path(&name, sha512))
            .transpose()?,
        name,
        length: target.length,
        sha256,
        sha512,
    };
    for rel in t.hashed_paths() {
        let path = layout.targets_dir().join(rel);
        let len = std::fs::metadata(&path)
            .map_err(RepoError::io(&path))?
            .len();
        if len != t.length {
            return Err(RepoError::Inconsistent(format!(
                "{} has {len} bytes, the signed length of target {} is {}",
                path.display(),
                t.name,
                t.length
            )));
        }
    }
    Ok(t)
}

pub fn collect(layout: &Layout, state: &RepoState) -> Result<PublishSet> {
    let mut targets = Vec::new();
    let mut listed: Vec<_> = state.targets.signed.targets.iter().collect();
    listed.sort_by(|a, b| a.0.raw().cmp(b.0.raw()));
    for (name, target) in listed {
        let t = target_file(layout, name, target)?;
        targets.push(t);
    }

    let dir = layout.metadata_dir();
    let mut roots: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(RepoError::io(&dir))? {
        let entry = entry.map_err(RepoError::io(&dir))?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".root.json"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            roots.push(n);
        }
    }
    roots.sort_unstable();
    let mut metadata: Vec<String> = roots.iter().map(|n| format!("{n}.root.json")).collect();
    metadata.push(format!("{}.targets.json", state.targets.signed.version));
    metadata.push(format!("{}.snapshot.json", state.snapshot.signed.version));

    let now = jiff::Timestamp::now();
    let expired_roles = [
        ("root", state.root.signed.expires),
        ("targets", state.targets.signed.expires),
        ("snapshot", state.snapshot.signed.expires),
        ("timestamp", state.timestamp.signed.expires),
    ]
    .into_iter()
    .filter(|(_, e)| *e <= now)
    .map(|(r, _)| r.to_owned())
    .collect();
    Ok(PublishSet {
        targets,
        metadata,
        expired_roles,
    })
}

/// The threshold gate: refuses while any role version waits for
/// signatures in a ceremony (naming the role and how many of how many it
/// has). What `collect` found is signed to threshold already: tough
/// verified it while loading the repository.
pub fn ensure_fully_signed(layout: &Layout) -> Result<()> {
    crate::ceremony::ensure_nothing_pending(layout).map_err(|e| match e {
        RepoError::Ceremony(detail) => RepoError::Publish(detail),
        other => other,
    })
}

fn read_metadata(layout: &Layout, name: &str) -> Result<Vec<u8>> {
    let path = layout.metadata_dir().join(name);
    let len = std::fs::metadata(&path)
        .map_err(RepoError::io(&path))?
        .len();
    if len > MAX_METADATA_BYTES {
        return Err(RepoError::Inconsistent(format!(
            "{} is {len} bytes, over the {MAX_METADATA_BYTES}-byte limit for metadata",
            path.display()
        )));
    }
    std::fs::read(&path).map_err(RepoError::io(path))
}

// ---------------------------------------------------------------- directory

/// Copies the repository into `out` (`out/targets/…`, `out/metadata/…`) and
/// returns the files written, in the order they were made visible
/// (`metadata/timestamp.json` last).
pub fn publish_dir(layout: &Layout, set: &PublishSet, out: &Path) -> Result<Vec<String>> {
    ensure_fully_signed(layout)?;
    let mut written = Vec::new();
    for t in &set.targets {
        for rel in t.hashed_paths() {
            let dest = out.join("targets").join(rel);
            if std::fs::metadata(&dest)
                .map(|m| m.len() == t.length)
                .unwrap_or(false)
            {
                continue; // Content-addressed: same name and length, same image.
            }
            copy_verified(&layout.targets_dir().join(rel), &dest, t)?;
            written.push(format!("targets/{rel}"));
        }
    }
    // Before the metadata that signs the indexes: a device never sees a
    // delta release whose chunks are not there yet.
    for file in chunks::chunk_files(layout)? {
        let dest = out.join("targets").join(&file.served);
        if std::fs::metadata(&dest)
            .map(|m| m.len() == file.length)
            .unwrap_or(false)
        {
            continue; // Named by its sha256: same name and length, same bytes.
        }
        copy_chunk_verified(&file, &dest)?;
        written.push(format!("targets/{}", file.served));
    }
    let meta_dir = out.join("metadata");
    ota_common::atomic::create_dir_all_durable(&meta_dir).map_err(RepoError::io(&meta_dir))?;
    for name in &set.metadata {
        let bytes = read_metadata(layout, name)?;
        let dest = meta_dir.join(name);
        match std::fs::read(&dest) {
            Ok(existing) if existing == bytes => continue,
            Ok(_) => {
                return Err(RepoError::Publish(format!(
                    "{} already exists with other content; refusing to replace signed metadata",
                    dest.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RepoError::Io {
                    path: dest,
                    source: e,
                })
            }
        }
        ota_common::atomic::write_atomic(&dest, &bytes).map_err(RepoError::io(&dest))?;
        written.push(format!("metadata/{name}"));
    }
    let bytes = read_metadata(layout, "timestamp.json")?;
    let dest = meta_dir.join("timestamp.json");
    ota_common::atomic::write_atomic(&dest, &bytes).map_err(RepoError::io(&dest))?;
    written.push("metadata/timestamp.json".to_owned());
    Ok(written)
}

/// Streams `src` to a temporary file beside `dest`, checks the signed length
/// and digests on the way, and renames it into place only if they match.
fn copy_verified(src: &Path, dest: &Path, t: &TargetFile) -> Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| RepoError::Publish(format!("{} has no parent directory", dest.display())))?;
    ota_common::atomic::create_dir_all_durable(dir).map_err(RepoError::io(dir))?;
    let tmp = dir.join(format!(".publish-{}.partial", std::process::id()));
    let result = (|| {
        let input = File::open(src).map_err(RepoError::io(src))?;
        let mut output = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(RepoError::io(&tmp))?;
        let bar = bytes_bar(t.length, &format!("copying {}", t.name));
        let d = copy_and_digest(input, Some(&mut output), |n| bar.set_position(n))
            .map_err(RepoError::io(src))?;
        bar.finish_and_clear();
        if d.length != t.length
            || hex::encode(d.sha256) != t.sha256
            || t.sha512
                .as_ref()
                .is_some_and(|s| *s != hex::encode(d.sha512))
        {
            return Err(RepoError::Inconsistent(format!(
                "{} does not match the signed length and hashes of target {}",
                src.display(),
                t.name
            )));
        }
        output.flush().map_err(RepoError::io(&tmp))?;
        output.sync_all().map_err(RepoError::io(&tmp))?;
        ota_common::atomic::rename_durable(&tmp, dest).map_err(RepoError::io(dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies one chunk store file to `dest` (temp, fsync, rename) if it still
/// hashes to the sha256 its name carries: a corrupted local store is
/// refused here rather than by every device.
fn copy_chunk_verified(file: &chunks::ChunkFile, dest: &Path) -> Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| RepoError::Publish(format!("{} has no parent directory", dest.display())))?;
    ota_common::atomic::create_dir_all_durable(dir).map_err(RepoError::io(dir))?;
    let tmp = dir.join(format!(".publish-{}.partial", std::process::id()));
    let result = (|| {
        let input = File::open(&file.path).map_err(RepoError::io(&file.path))?;
        let mut output = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(RepoError::io(&tmp))?;
        let d =
            copy_and_digest(input, Some(&mut output), |_| {}).map_err(RepoError::io(&file.path))?;
        if d.length != file.length || hex::encode(d.sha256) != file.sha256 {
            return Err(RepoError::Inconsistent(format!(
                "chunk store file {} does not hash to the sha256 in its name",
                file.path.display()
            )));
        }
        output.flush().map_err(RepoError::io(&tmp))?;
        output.sync_all().map_err(RepoError::io(&tmp))?;
        ota_common::atomic::rename_durable(&tmp, dest).map_err(RepoError::io(dest))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

// ------------------------------------------------------------------- server

/// An error and its sources on one line: reqwest's own message says only
/// "error sending request"; the cause (e.g. an unknown issuer) is below it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Reads `--ca-cert`: a PEM bundle of the CA certificates that sign the server's.
pub fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).map_err(RepoError::io(path.to_path_buf()))?;
    ota_common::tuf::http::ca_certificates(&pem).map_err(|detail| {
        RepoError::InvalidArgument(format!("--ca-cert {}: {detail}", path.display()))
    })
}

/// The admin API client (see docs/ARCHITECTURE.md, "Wire protocol").
#[derive(Debug)]
pub struct AdminClient {
    base: Url,
    token: String,
    http: reqwest::blocking::Client,
    /// The CA certificates that replace the web roots (`--ca-cert`), if any.
    anchors: Vec<reqwest::Certificate>,
}

impl AdminClient {
    pub fn new(base: Url, token: String) -> Result<Self> {
        Self::trusting(base, token, Vec::new())
    }

    /// A client that trusts only `anchors` (a fleet's private CA) for the
    /// server's certificate; with no anchors, the public web roots.
    pub fn trusting(base: Url, token: String, anchors: Vec<reqwest::Certificate>) -> Result<Self> {
        if !anchors.is_empty() && base.scheme() != "https" {
            return Err(RepoError::InvalidArgument(format!(
                "--ca-cert is for https:// servers, not {base}"
            )));
        }
        if !matches!(base.scheme(), "http" | "https") {
            return Err(RepoError::InvalidArgument(format!(
                "server URL {base} must be http:// or https://"
            )));
        }
        if token.is_empty() {
            return Err(RepoError::InvalidArgument(
                "the admin token is empty".to_owned(),
            ));
        }
        // reqwest is built without a default crypto provider; a second
        // install (already installed) is harmless.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            // Large images may take long to upload: no overall limit.
            .timeout(None);
        if !anchors.is_empty() {
            builder = builder.tls_built_in_root_certs(false);
            for anchor in &anchors {
                builder = builder.add_root_certificate(anchor.clone());
            }
        }
        let http = builder
            .build()
            .map_err(|e| RepoError::Publish(format!("creating the HTTP client: {e}")))?;
        Ok(Self {
            base,
            token,
            http,
            anchors,
        })
    }

    fn url(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().map_err(|()| {
                RepoError::InvalidArgument(format!("server URL {} cannot have a path", self.base))
            })?;
            path.pop_if_empty();
            for s in segments {
                for part in s.split('/') {
                    path.push(part);
                }
            }
        }
        Ok(url)
    }

    fn send(
        &self,
        what: &str,
        req: reqwest::blocking::RequestBuilder,
    ) -> Result<reqwest::blocking::Response> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .map_err(|e| RepoError::Publish(format!("{what}: {}", error_chain(&e))))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let mut body = String::new();
        let _ = resp.take(MAX_ANSWER_BYTES).read_to_string(&mut body);
        let message = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => e.error,
            Err(_) if body.trim().is_empty() => "(no error message)".to_owned(),
            Err(_) => body.trim().chars().take(500).collect(),
        };
        Err(RepoError::Publish(format!(
            "{what}: server answered {status}: {message}"
        )))
    }

    fn json<T: serde::de::DeserializeOwned>(
        what: &str,
        resp: reqwest::blocking::Response,
    ) -> Result<T> {
        serde_json::from_reader(resp.take(MAX_ANSWER_BYTES)).map_err(|e| {
            RepoError::Publish(format!("{what}: unexpected answer from the server: {e}"))
        })
    }

    pub fn create_publication(&self) -> Result<String> {
        let what = "opening a publication (POST /admin/v1/publications)";
        let resp = self.send(
            what,
            self.http.post(self.url(&["admin", "v1", "publications"])?),
        )?;
        let created: PublicationCreated = Self::json(what, resp)?;
        if !ota_common::wire::is_valid_id(&created.id) {
            return Err(RepoError::Publish(format!(
                "{what}: the server returned an unusable publication id {:?}",
                created.id
            )));
        }
        Ok(created.id)
    }

    /// Whether the server already serves this image (right name and length).
    pub fn has_target(&self, t: &TargetFile) -> Result<bool> {
        // Only a clear 404 means absent; see chunks::serves.
        self.serves(&t.by_sha256, t.length)
            .map_err(|e| RepoError::Publish(format!("target {}: {e}", t.name)))
    }

    pub fn upload_target(&self, id: &str, layout: &Layout, t: &TargetFile) -> Result<()> {
        let what = format!(
            "uploading target {} (PUT /admin/v1/publications/{id}/targets/{})",
            t.name, t.name
        );
        let path = layout.targets_dir().join(&t.by_sha256);
        let file = File::open(&path).map_err(RepoError::io(&path))?;
        let bar = bytes_bar(t.length, &format!("uploading {}", t.name));
        let body = reqwest::blocking::Body::sized(ProgressReader::new(file, bar.clone()), t.length);
        let req = self
            .http
            .put(self.url(&["admin", "v1", "publications", id, "targets", &t.name])?)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body);
        let resp = self.send(&what, req)?;
        bar.finish_and_clear();
        let staged: StagedTarget = Self::json(&what, resp)?;
        if staged.length != t.length
            || !staged.sha256.eq_ignore_ascii_case(&t.sha256)
            || t.sha512
                .as_ref()
                .is_some_and(|s| !staged.sha512.eq_ignore_ascii_case(s))
        {
            return Err(RepoError::Publish(format!(
                "{what}: the server received {} bytes with sha256 {} / sha512 {}, expected {} bytes with sha256 {} / sha512 {}; the upload was corrupted, nothing was committed",
                staged.length,
                staged.sha256,
                staged.sha512,
                t.length,
                t.sha256,
                t.sha512.as_deref().unwrap_or("(not listed)")
            )));
        }
        Ok(())
    }

    pub fn upload_metadata(&self, id: &str, name: &str, bytes: Vec<u8>) -> Result<()> {
        let what = format!("uploading metadata {name}");
        let req = self
            .http
            .put(self.url(&["admin", "v1", "publications", id, "metadata", name])?)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes);
        self.send(&what, req).map(drop)
    }

    /// The server's base URL (its repository is under `metadata/` and
    /// `targets/`).
    pub fn base(&self) -> &Url {
        &self.base
    }

    pub fn commit(&self, id: &str) -> Result<PublicationCommitted> {
        let what = format!("committing publication {id}");
        let resp = self.send(
            &what,
            self.http
                .post(self.url(&["admin", "v1", "publications", id, "commit"])?),
        )?;
        Self::json(&what, resp)
    }
}

/// Result of a server publication.
#[derive(Debug, Clone)]
pub struct ServerPublished {
    pub id: String,
    pub uploaded: Vec<String>,
    pub skipped: Vec<String>,
    pub committed: PublicationCommitted,
    /// The server's timestamp and snapshot written into `metadata/` after
    /// the server issued them with its online keys; `None` when it did not
    /// (or when they could not be adopted: a warning says why).
    pub adopted: Option<Adopted>,
}

/// The online roles adopted from the server after a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    pub timestamp: u64,
    pub snapshot: u64,
    /// The local root version they were verified against.
    pub root: u64,
}

pub fn publish_server(
    layout: &Layout,
    set: &PublishSet,
    client: &AdminClient,
) -> Result<ServerPublished> {
    ensure_fully_signed(layout)?;
    // Read the metadata before opening the publication so a local problem
    // leaves no half-filled publication behind.
    let mut metadata = Vec::new();
    for name in set
        .metadata
        .iter()
        .chain(std::iter::once(&"timestamp.json".to_owned()))
    {
        metadata.push((name.clone(), read_metadata(layout, name)?));
    }
    let local_timestamp = version_of(&metadata, "timestamp.json");
    let local_snapshot = set
        .metadata
        .iter()
        .find(|n| n.ends_with(".snapshot.json"))
        .and_then(|n| version_of(&metadata, n));
    let id = client.create_publication()?;
    let mut uploaded = Vec::new();
    let mut skipped = Vec::new();
    for t in &set.targets {
        if client.has_target(t)? {
            tracing::info!(target = %t.name, "already on the server, not uploaded");
            skipped.push(t.name.clone());
            continue;
        }
        client.upload_target(&id, layout, t)?;
        uploaded.push(t.name.clone());
    }
    // Chunks before metadata: a device that sees a delta release must find
    // every chunk its index names.
    let mut chunks_uploaded = 0usize;
    let chunk_files = chunks::chunk_files(layout)?;
    let mut staged_names = std::collections::HashSet::new();
    for file in &chunk_files {
        if client.serves(&file.served, file.length)? {
            continue;
        }
        // One file per name in a publication: a chunk compressed again by
        // another zstd version is the same chunk, its first copy will do.
        if !staged_names.insert(file.published.as_str()) {
            continue;
        }
        client.upload_chunk_file(&id, file)?;
        chunks_uploaded += 1;
    }
    if !chunk_files.is_empty() {
        tracing::info!(
            uploaded = chunks_uploaded,
            already_served = chunk_files.len() - chunks_uploaded,
            "chunk store published"
        );
    }
    for (name, bytes) in metadata {
        client.upload_metadata(&id, &name, bytes)?;
    }
    let committed = client.commit(&id)?;
    let mut adopted = None;
    if committed.online_timestamp_version.is_some() || committed.online_snapshot_version.is_some() {
        // The server (`[online_signing]`) issued the online roles itself:
        // say so, since what devices see is not what this repository signed.
        if let Some(v) = committed.online_timestamp_version {
            println!(
                "the server signed timestamp.json version {v} with its online key in place of \
                 the uploaded version {}",
                shown(local_timestamp)
            );
        }
        if let Some(v) = committed.online_snapshot_version {
            println!(
                "the server re-issued the snapshot as version {v} with its online key (the \
                 uploaded version {} was not newer than the one it had published)",
                shown(local_snapshot)
            );
        }
        // Follow the server, so this repository's next versions come after its.
        match adopt_online_roles(layout, client.base(), &client.anchors) {
            Ok(a) => {
                println!(
                    "metadata/: now at the server's timestamp.json version {} and {}.snapshot.json \
                     (verified against {}.root.json)",
                    a.timestamp, a.snapshot, a.root
                );
                adopted = Some(a);
            }
            Err(e) => eprintln!(
                "ota-repo: warning: the publication is committed, but the server's timestamp and \
                 snapshot were not copied into metadata/ ({e}); the next publish still works \
                 (the server issues them again)"
            ),
        }
    }
    Ok(ServerPublished {
        id,
        uploaded,
        skipped,
        committed,
        adopted,
    })
}

/// `signed.version` of one of the files read for upload.
fn version_of(files: &[(String, Vec<u8>)], name: &str) -> Option<u64> {
    let (_, bytes) = files.iter().find(|(n, _)| n == name)?;
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()?
        .pointer("/signed/version")?
        .as_u64()
}

fn shown(version: Option<u64>) -> String {
    version.map_or_else(|| "(none)".to_owned(), |v| v.to_string())
}

/// Fetches the server's current timestamp and the snapshot it names, checks
/// them with the device-side TUF client (`ota_common::tuf`) trusting this
/// repository's newest root, and writes them into `metadata/`: snapshot
/// first, then `timestamp.json` (atomically), and only when the server's
/// snapshot names exactly this repository's targets metadata, so the
/// repository never refers to metadata it does not hold.
pub fn adopt_online_roles(
    layout: &Layout,
    server: &Url,
    anchors: &[reqwest::Certificate],
) -> Result<Adopted> {
    let dir = layout.metadata_dir();
    let (root_version, root) = newest_root(layout)?;
    let state = tempfile::tempdir().map_err(RepoError::io(std::env::temp_dir()))?;
    let base = ota_common::tuf::ClientOptions::new(server.clone(), server.clone()).metadata_base;
    let join = |rel: &str| {
        base.join(rel)
            .map_err(|e| RepoError::InvalidArgument(format!("server URL {base}: {e}")))
    };
    let options = ota_common::tuf::ClientOptions::new(join("metadata/")?, join("targets/")?);
    let transport = ota_common::tuf::http::HttpTransport::trusting(
        Duration::from_secs(60),
        concat!("ota-repo/", env!("CARGO_PKG_VERSION")),
        anchors,
    )
    .map_err(|e| RepoError::Publish(format!("HTTP client: {e}")))?;
    let tuf = |e: ota_common::tuf::TufError| {
        RepoError::Publish(format!("verifying the server's metadata: {e}"))
    };
    ota_common::tuf::TufClient::<ota_common::tuf::http::HttpTransport>::init(state.path(), &root)
        .map_err(tuf)?;
    let mut client =
        ota_common::tuf::TufClient::open(state.path(), options, transport).map_err(tuf)?;
    client.refresh().map_err(tuf)?;
    let trusted = client.trusted().clone();
    if trusted.root.version != root_version {
        return Err(RepoError::Publish(format!(
            "the server publishes root version {}, this repository's newest is {root_version}",
            trusted.root.version
        )));
    }
    let version = |r: Option<ota_common::tuf::RoleSummary>, role: &str| {
        r.map(|r| r.version)
            .ok_or_else(|| RepoError::Publish(format!("the server has no {role} metadata")))
    };
    let timestamp = version(trusted.timestamp, "timestamp")?;
    let snapshot = version(trusted.snapshot, "snapshot")?;
    let targets = version(trusted.targets, "targets")?;
    // The client keeps the exact bytes it verified.
    let verified = |role: &str| {
        let path = state.path().join(format!("{role}.json"));
        std::fs::read(&path).map_err(RepoError::io(path))
    };
    let local_targets = dir.join(format!("{targets}.targets.json"));
    match std::fs::read(&local_targets) {
        Ok(bytes) if bytes == verified("targets")? => {}
        _ => {
            return Err(RepoError::Publish(format!(
                "the server's snapshot names targets version {targets}, which is not this \
                 repository's {}",
                local_targets.display()
            )))
        }
    }
    let snapshot_path = dir.join(format!("{snapshot}.snapshot.json"));
    let snapshot_bytes = verified("snapshot")?;
    match std::fs::read(&snapshot_path) {
        Ok(existing) if existing == snapshot_bytes => {}
        Ok(_) => {
            return Err(RepoError::Publish(format!(
                "{} exists with other content than the server's",
                snapshot_path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ota_common::atomic::write_atomic(&snapshot_path, &snapshot_bytes)
                .map_err(RepoError::io(&snapshot_path))?;
        }
        Err(e) => {
            return Err(RepoError::Io {
                path: snapshot_path,
                source: e,
            })
        }
    }
    let ts_path = dir.join("timestamp.json");
    let local_ts = std::fs::read(&ts_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.pointer("/signed/version").and_then(|v| v.as_u64()));
    if local_ts.is_some_and(|v| v >= timestamp) {
        return Err(RepoError::Publish(format!(
            "the local timestamp.json (version {}) is not older than the server's {timestamp}",
            shown(local_ts)
        )));
    }
    ota_common::atomic::write_atomic(&ts_path, &verified("timestamp")?)
        .map_err(RepoError::io(&ts_path))?;
    Ok(Adopted {
        timestamp,
        snapshot,
        root: root_version,
    })
}

/// The newest `N.root.json` of the repository.
fn newest_root(layout: &Layout) -> Result<(u64, Vec<u8>)> {
    let dir = layout.metadata_dir();
    let mut newest = None;
    for entry in std::fs::read_dir(&dir).map_err(RepoError::io(&dir))? {
        let entry = entry.map_err(RepoError::io(&dir))?;
        if let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".root.json"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            newest = newest.max(Some(n));
        }
    }
    let n = newest
        .ok_or_else(|| RepoError::Inconsistent(format!("no N.root.json in {}", dir.display())))?;
    Ok((n, read_metadata(layout, &format!("{n}.root.json"))?))
}

/// The admin token from a file (trimmed) or, failing that, `OTA_ADMIN_TOKEN`.
pub fn read_token(file: Option<&Path>, env: Option<String>) -> Result<String> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            RepoError::InvalidArgument(format!("token file {}: {e}", path.display()))
        })?,
        None => env.ok_or_else(|| {
            RepoError::InvalidArgument(
                "no admin token: pass --token-file FILE or set OTA_ADMIN_TOKEN".to_owned(),
            )
        })?,
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(RepoError::InvalidArgument(
            "the admin token is empty".to_owned(),
        ));
    }
    if token.chars().any(|c| c.is_control() || c == ' ') {
        return Err(RepoError::InvalidArgument(
            "the admin token contains spaces or control characters".to_owned(),
        ));
    }
    Ok(token)
}
