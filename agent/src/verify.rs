//! `ota-agent verify`: is each slot still exactly the signed release the
//! agent's state says it holds? The evidence a device maker shows for
//! IEC 81001-5-1 §5.8.3 on a device in the field.
//!
//! Each slot is re-hashed and compared with the trusted targets metadata in
//! `state_dir/tuf` (verified again on load; nothing is fetched unless the
//! caller refreshes first). Only the signed `length` bytes are hashed: a
//! block device is larger than the image it holds. Every slot is read once,
//! in one pass, with a fixed buffer: when the slot must be identified
//! against several signed lengths, the running hashes are copied at each
//! length on the way rather than reading the slot again.
//!
//! Verdicts, per slot:
//! * `verified`: the state records a signed release for the slot, and the
//!   slot's first `length` bytes match its length and every listed digest.
//! * `modified`: the state records a signed release and the bytes differ
//!   (or the slot is shorter than the signed length, or gone).
//! * `unknown_image`: the state records no signed release (the factory
//!   image, a download in progress, no state) or one the trusted metadata
//!   does not list; `identified_as` names the signed top-level targets the
//!   slot's content matches, if any.
//! * `empty`: nothing recorded and the slot is missing or of size 0.
//! * `error`: the slot could not be read.

use crate::config::Config;
use crate::slot::{SlotId, Slots};
use crate::state::{AgentState, Phase, StateStore, TargetRef};
use ota_common::tuf::{ClientOptions, FileTransport, Target, TufClient, TufError};
use serde::Serialize;
use sha2::{Digest, Sha256, Sha512};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Read buffer: constant memory whatever the slot's size.
const BUFFER: usize = 256 * 1024;

/// Exit codes of `ota-agent verify`.
pub mod exit {
    /// No slot is modified: each slot holding a recorded signed release verifies.
    pub const OK: u8 = 0;
    /// At least one slot's bytes differ from its signed release.
    pub const MODIFIED: u8 = 1;
    /// Something could not be read (configuration, state, metadata, a slot).
    pub const ERROR: u8 = 2;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Verified,
    Modified,
    UnknownImage,
    Empty,
    Error,
}

impl Verdict {
    /// The words printed in the text report.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Verified => "verified",
            Verdict::Modified => "modified",
            Verdict::UnknownImage => "unknown image",
            Verdict::Empty => "empty",
            Verdict::Error => "error",
        }
    }
}

/// A signed target as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignedTarget {
    pub name: String,
    pub version: Option<String>,
    pub length: u64,
    pub sha256: Option<String>,
    pub sha512: Option<String>,
}

impl From<&Target> for SignedTarget {
    fn from(t: &Target) -> Self {
        SignedTarget {
            name: t.name.clone(),
            version: t.release().ok().map(|r| r.version.to_string()),
            length: t.length,
            sha256: t.digests.sha256.map(hex::encode),
            sha512: t.digests.sha512.map(hex::encode),
        }
    }
}

/// What the agent's state says a slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recorded {
    pub version: String,
    /// The target it came from; `None` for the factory image.
    pub target: Option<String>,
    pub sha256: Option<String>,
    pub sha512: Option<String>,
    /// Where in state.json: `slot` (committed) or the phase name (written
    /// and verified, not committed yet).
    pub from: String,
}

/// The verdict on one slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    pub slot: SlotId,
    pub path: PathBuf,
    pub verdict: Verdict,
    pub detail: String,
    pub recorded: Option<Recorded>,
    /// The signed target the slot was checked against.
    pub signed: Option<SignedTarget>,
    /// Signed top-level targets whose length and digests the slot's content
    /// matches (only looked for when no recorded signed release applies).
    pub identified_as: Vec<String>,
    pub bytes_hashed: u64,
}

/// Why verify could not start.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("trusted metadata in {dir}: {source}")]
    Metadata {
        dir: PathBuf,
        #[source]
        source: TufError,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// The trusted top-level targets in `state_dir/tuf`, read without network,
/// and a note on the metadata (versions, expiry, or why there is none).
pub fn trusted_targets(config: &Config) -> Result<(Vec<Target>, String), VerifyError> {
    let dir = config.tuf_dir();
    if !dir.join("root.json").exists() {
        return Ok((
            Vec::new(),
            format!(
                "no trusted metadata in {} (the agent has not run yet): no slot can be verified",
                dir.display()
            ),
        ));
    }
    let options = ClientOptions::new(config.metadata_url()?, config.targets_url()?);
    let client =
        TufClient::open(&dir, options, FileTransport).map_err(|source| VerifyError::Metadata {
            dir: dir.clone(),
            source,
        })?;
    targets_of(&client, &dir)
}

/// Every trusted target of an open client (delegated roles included, as the
/// agent chooses releases from them), and a note on them.
pub fn targets_of<T: ota_common::tuf::Transport>(
    client: &TufClient<T>,
    dir: &Path,
) -> Result<(Vec<Target>, String), VerifyError> {
    let trusted = client.trusted();
    match client.all_targets() {
        Ok(targets) => {
            let note = match &trusted.targets {
                Some(t) => {
                    let expired = if t.expires <= chrono::Utc::now() {
                        " (expired: refresh to check against current metadata)"
                    } else {
                        ""
                    };
                    format!(
                        "trusted metadata {}: root version {}, targets version {}, expires {}{expired}",
                        dir.display(),
                        trusted.root.version,
                        t.version,
                        t.expires.to_rfc3339()
                    )
                }
                None => format!("trusted metadata {}", dir.display()),
            };
            Ok((targets, note))
        }
        Err(TufError::NotLoaded { .. }) => Ok((
            Vec::new(),
            format!(
                "no trusted targets metadata in {} yet: no slot can be verified",
                dir.display()
            ),
        )),
        Err(source) => Err(VerifyError::Metadata {
            dir: dir.to_owned(),
            source,
        }),
    }
}

/// Reads state.json (read-only; `None` when there is none).
pub fn load_state(config: &Config) -> Result<Option<AgentState>, VerifyError> {
    Ok(StateStore::new(config.state_path()).load()?)
}

/// What the state says about `slot`: the release it should hold, as far as
/// a signed target can be found for it.
enum Expectation {
    /// Nothing recorded, with why.
    Nothing(String),
    /// Recorded, but not (or no longer) a signed target; with why.
    Unsigned(Recorded, String),
    /// Recorded and listed by the trusted metadata with the same digests.
    Signed(Recorded, Target),
}

fn recorded_from_ref(t: &TargetRef, from: &str) -> Recorded {
    Recorded {
        version: t.version.to_string(),
        target: Some(t.name.clone()),
        sha256: t.sha256.clone(),
        sha512: t.sha512.clone(),
        from: from.to_owned(),
    }
}

fn expectation(state: Option<&AgentState>, slot: SlotId, targets: &[Target]) -> Expectation {
    let Some(state) = state else {
        return Expectation::Nothing("no agent state (state.json) records this slot".to_owned());
    };
    let recorded = match &state.phase {
        Phase::Downloading {
            slot: s, target, ..
        } if *s == slot => {
            return Expectation::Nothing(format!(
                "a download of {} {} into this slot is in progress: its content is partial",
                target.name, target.version
            ))
        }
        Phase::Installed { slot: s, target }
        | Phase::Trying {
            slot: s, target, ..
        }
        | Phase::RollingBack {
            slot: s, target, ..
        } if *s == slot => recorded_from_ref(target, state.phase.name()),
        _ => match state.slot(slot) {
            None => {
                return Expectation::Nothing(
                    "the agent state records nothing for this slot".to_owned(),
                )
            }
            Some(r) => Recorded {
                version: r.version.to_string(),
                target: r.target.clone(),
                sha256: r.sha256.clone(),
                sha512: None,
                from: "slot".to_owned(),
            },
        },
    };
    let Some(name) = recorded.target.clone() else {
        let why = format!(
            "the agent state records the factory image (version {}), which no signed target describes",
            recorded.version
        );
        return Expectation::Unsigned(recorded, why);
    };
    let same = |listed: Option<String>, rec: &Option<String>| rec.is_none() || listed == *rec;
    match targets.iter().find(|t| t.name == name) {
        Some(t)
            if same(t.digests.sha256.map(hex::encode), &recorded.sha256)
                && same(t.digests.sha512.map(hex::encode), &recorded.sha512) =>
        {
            Expectation::Signed(recorded, t.clone())
        }
        Some(_) => {
            let why = format!("the trusted metadata lists {name} with other digests than the state records (re-signed since)");
            Expectation::Unsigned(recorded, why)
        }
        None => {
            let why = format!("the trusted metadata does not list {name}");
            Expectation::Unsigned(recorded, why)
        }
    }
}

/// One slot's digests at each requested length, from one pass.
#[derive(Debug)]
struct Hashed {
    /// Size of the slot (file length or block device size).
    size: u64,
    /// (length, sha256, sha512) for each requested length the slot reaches.
    at: Vec<(u64, [u8; 32], [u8; 64])>,
    read: u64,
}

/// Opens `path` read-only and hashes it once up to the largest of
/// `lengths`, copying the running hashes at each length on the way.
/// `Ok(None)` when the slot does not exist.
fn hash_slot(path: &Path, lengths: &BTreeSet<u64>) -> io::Result<Option<Hashed>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::other("is a directory"));
    }
    let is_block = meta.file_type().is_block_device();
    let size = if is_block {
        crate::blockdev::size(&file)?
    } else {
        meta.len()
    };
    drop_cache(&file, is_block);
    let wanted: Vec<u64> = lengths.iter().copied().filter(|l| *l <= size).collect();
    let end = wanted.last().copied().unwrap_or(0);
    let mut sha256 = Sha256::new();
    let mut sha512 = Sha512::new();
    let mut at = Vec::new();
    let mut next = wanted.iter().copied().peekable();
    // A zero-length target is matched before any byte.
    while next.peek() == Some(&0) {
        at.push((
            0,
            sha256.clone().finalize().into(),
            sha512.clone().finalize().into(),
        ));
        next.next();
    }
    let mut buf = vec![0u8; BUFFER];
    let mut read = 0u64;
    while read < end {
        let boundary = next.peek().copied().unwrap_or(end);
        let want = usize::try_from(boundary - read)
            .unwrap_or(usize::MAX)
            .min(BUFFER);
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => break, // shorter than its reported size (a file shrinking under us)
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sha256.update(&buf[..n]);
        sha512.update(&buf[..n]);
        read += n as u64;
        while next.peek() == Some(&read) {
            at.push((
                read,
                sha256.clone().finalize().into(),
                sha512.clone().finalize().into(),
            ));
            next.next();
        }
    }
    Ok(Some(Hashed { size, at, read }))
}

/// Advisory: read what storage holds, not pages cached before a change.
fn drop_cache(file: &File, is_block: bool) {
    use std::os::fd::AsRawFd;
    if is_block {
        let _ = crate::blockdev::flush_buffers(file);
    }
    let _ = nix::fcntl::posix_fadvise(
        file.as_raw_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// Whether the digests at `t.length` match every digest `t` lists.
fn matches(h: &Hashed, t: &Target) -> bool {
    if t.digests.is_empty() {
        return false;
    }
    h.at.iter().any(|(len, s256, s512)| {
        *len == t.length
            && t.digests.sha256.is_none_or(|d| d == *s256)
            && t.digests.sha512.is_none_or(|d| d == *s512)
    })
}

/// The verdict on every slot.
pub fn verify_slots(
    slots: &Slots,
    state: Option<&AgentState>,
    targets: &[Target],
) -> Vec<SlotReport> {
    let targets = as_slot_images(targets);
    [SlotId::A, SlotId::B]
        .into_iter()
        .map(|id| verify_slot(id, &slots.get(id).path, state, &targets))
        .collect()
}

/// Each target as a slot holds it: a compressed target's length and
/// digests become its decoded image's (the signed `custom.payload`), which
/// is what the slot is hashed against. A target whose payload cannot be
/// read is left out: no device installs it.
fn as_slot_images(targets: &[Target]) -> Vec<Target> {
    targets
        .iter()
        .filter_map(|t| {
            let image = t.slot_image().ok()?;
            Some(Target {
                length: image.length,
                digests: image.digests,
                ..t.clone()
            })
        })
        .collect()
}

fn verify_slot(
    id: SlotId,
    path: &Path,
    state: Option<&AgentState>,
    targets: &[Target],
) -> SlotReport {
    let mut report = SlotReport {
        slot: id,
        path: path.to_owned(),
        verdict: Verdict::Error,
        detail: String::new(),
        recorded: None,
        signed: None,
        identified_as: Vec::new(),
        bytes_hashed: 0,
    };
    let expect = expectation(state, id, targets);
    let lengths: BTreeSet<u64> = match &expect {
        Expectation::Signed(_, t) => [t.length].into(),
        // Identify: one boundary per distinct signed length, all in one pass.
        _ => targets.iter().map(|t| t.length).collect(),
    };
    let hashed = match hash_slot(path, &lengths) {
        Ok(h) => h,
        Err(e) => {
            report.detail = format!("reading {}: {e}", path.display());
            match expect {
                Expectation::Signed(r, t) => {
                    report.recorded = Some(r);
                    report.signed = Some(SignedTarget::from(&t));
                }
                Expectation::Unsigned(r, _) => report.recorded = Some(r),
                Expectation::Nothing(_) => {}
            }
            return report;
        }
    };
    report.bytes_hashed = hashed.as_ref().map_or(0, |h| h.read);
    match expect {
        Expectation::Signed(recorded, target) => {
            report.recorded = Some(recorded);
            report.signed = Some(SignedTarget::from(&target));
            let what = format!("{} (signed length {})", target.name, target.length);
            (report.verdict, report.detail) = match &hashed {
                None => (
                    Verdict::Modified,
                    format!("the slot does not exist but should hold {what}"),
                ),
                Some(h) if h.size < target.length => (
                    Verdict::Modified,
                    format!("the slot holds {} bytes, fewer than {what}", h.size),
                ),
                Some(h) if matches(h, &target) => (
                    Verdict::Verified,
                    format!(
                        "the first {} bytes match the length and every signed digest of {}",
                        target.length, target.name
                    ),
                ),
                Some(_) => (
                    Verdict::Modified,
                    format!(
                        "the first {} bytes do not match the signed digests of {}",
                        target.length, target.name
                    ),
                ),
            };
        }
        Expectation::Unsigned(recorded, why) => {
            report.recorded = Some(recorded);
            identify(&mut report, hashed.as_ref(), targets, why);
        }
        Expectation::Nothing(why) => identify(&mut report, hashed.as_ref(), targets, why),
    }
    report
}

/// The verdict on a slot no recorded signed release applies to: `empty`
/// when there is nothing to read, else `unknown image`, naming the signed
/// targets its content matches.
fn identify(report: &mut SlotReport, hashed: Option<&Hashed>, targets: &[Target], why: String) {
    let Some(h) = hashed.filter(|h| h.size > 0) else {
        if report.recorded.is_some() {
            report.verdict = Verdict::UnknownImage;
            report.detail = format!("{why}; the slot is missing or empty");
        } else {
            report.verdict = Verdict::Empty;
            report.detail = format!("{why}; the slot is missing or of size 0");
        }
        return;
    };
    report.verdict = Verdict::UnknownImage;
    let mut found: Vec<&Target> = targets.iter().filter(|t| matches(h, t)).collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    report.identified_as = found.iter().map(|t| t.name.clone()).collect();
    report.detail = match found.as_slice() {
        [] if targets.is_empty() => format!("{why}; no trusted targets to identify it by"),
        [] => format!(
            "{why}; its content matches none of the {} signed targets",
            targets.len()
        ),
        _ => format!(
            "{why}; its first bytes match the signed target(s) {}",
            found
                .iter()
                .map(|t| format!(
                    "{} ({} bytes{})",
                    t.name,
                    t.length,
                    t.release()
                        .map(|r| format!(", version {}", r.version))
                        .unwrap_or_default()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
}

/// The exit code for a set of verdicts: modified wins over errors, since
/// tampering is what the caller must not miss.
pub fn exit_code(reports: &[SlotReport]) -> u8 {
    if reports.iter().any(|r| r.verdict == Verdict::Modified) {
        exit::MODIFIED
    } else if reports.iter().any(|r| r.verdict == Verdict::Error) {
        exit::ERROR
    } else {
        exit::OK
    }
}

/// The text report: one block per slot.
pub fn render_text(reports: &[SlotReport], note: &str) -> String {
    use std::fmt::Write as _;
    let mut out = format!("{note}\n");
    for r in reports {
        let _ = writeln!(
            out,
            "slot {} ({}): {}",
            r.slot,
            r.path.display(),
            r.verdict.label()
        );
        if let Some(rec) = &r.recorded {
            let _ = writeln!(
                out,
                "  recorded: {} version {} (state.json {})",
                rec.target.as_deref().unwrap_or("factory image"),
                rec.version,
                rec.from
            );
        }
        if let Some(t) = &r.signed {
            let _ = writeln!(
                out,
                "  signed:   {} length {} sha256 {}",
                t.name,
                t.length,
                t.sha256.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(out, "  {}", r.detail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_common::hash::Digests;

    fn target(name: &str, data: &[u8]) -> Target {
        Target {
            name: name.into(),
            length: data.len() as u64,
            digests: Digests {
                sha256: Some(Sha256::digest(data).into()),
                sha512: Some(Sha512::digest(data).into()),
            },
            custom: serde_json::Value::Null,
        }
    }

    #[test]
    fn one_pass_hashes_every_prefix_length_across_buffer_boundaries() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("slot");
        let data: Vec<u8> = (0..(BUFFER * 2 + 77)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let lengths: BTreeSet<u64> = [
            0,
            1,
            BUFFER as u64,
            BUFFER as u64 + 5,
            data.len() as u64,
            data.len() as u64 + 1,
        ]
        .into();
        let h = hash_slot(&path, &lengths).expect("hash").expect("exists");
        assert_eq!(h.size, data.len() as u64);
        assert_eq!(h.read, data.len() as u64);
        // Every length the slot reaches, none past its end.
        assert_eq!(h.at.len(), 5);
        for len in [0, 1, BUFFER, BUFFER + 5, data.len()] {
            assert!(matches(&h, &target("t", &data[..len])), "prefix {len}");
        }
        assert!(!matches(&h, &target("t", &data[1..BUFFER + 1])));
        assert!(hash_slot(&dir.path().join("missing"), &lengths)
            .expect("ok")
            .is_none());
        assert!(hash_slot(dir.path(), &lengths).is_err());
    }
}
