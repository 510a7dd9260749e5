//! Which digests a publication's own targets metadata names each target by.
//!
//! With consistent snapshots a client fetches a target as
//! `<digest>.<basename>` for a digest its signed targets metadata lists
//! (our agent takes the SHA-256, python-tuf and tough the first listed).
//! The server hashes every upload with both SHA-256 and SHA-512, but a name
//! that no metadata lists is never fetched: on local disk it costs only a
//! hard link, in a bucket it is a second object (a server-side copy, under a
//! key long enough that some S3 implementations refuse it). So a commit
//! places only the names the staged targets metadata lists.
//!
//! The server verifies no signature: devices do. Metadata it cannot read
//! here is simply not consulted, and a target that no staged metadata lists
//! (its metadata published in another publication) keeps both names, as it
//! always had; a wrong listing costs the publisher a 404, never a device a
//! wrong byte, since every name is content-addressed.

use crate::paths::MetadataName;
use serde::de::IgnoredAny;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};

/// The digests the server computes for every upload.
const COMPUTED: [&str; 2] = ["sha256", "sha512"];

/// Target name → hash algorithms some staged targets metadata lists for it.
#[derive(Debug, Default)]
pub struct ListedDigests(HashMap<String, BTreeSet<String>>);

#[derive(Deserialize)]
struct Envelope {
    signed: Signed,
}

#[derive(Deserialize)]
struct Signed {
    #[serde(rename = "_type")]
    kind: String,
    #[serde(default)]
    targets: HashMap<String, TargetInfo>,
}

#[derive(Deserialize)]
struct TargetInfo {
    #[serde(default)]
    hashes: HashMap<String, IgnoredAny>,
}

impl ListedDigests {
    /// Reads the staged metadata files (name and bytes); only versioned
    /// files of type `targets` (top-level and delegated roles) count.
    pub fn from_staged<'a>(files: impl IntoIterator<Item = (&'a MetadataName, &'a [u8])>) -> Self {
        let mut listed = ListedDigests::default();
        for (name, bytes) in files {
            if !matches!(name, MetadataName::Versioned { role, .. } if role != "root" && role != "snapshot")
            {
                continue;
            }
            let Ok(envelope) = serde_json::from_slice::<Envelope>(bytes) else {
                continue;
            };
            if envelope.signed.kind != "targets" {
                continue;
            }
            for (target, info) in envelope.signed.targets {
                listed
                    .0
                    .entry(target)
                    .or_default()
                    .extend(info.hashes.into_keys());
            }
        }
        listed
    }

    /// Whether `target` should be placed under its `algorithm` digest.
    /// `requested`: the names its publisher asked for at upload (a file no
    /// metadata lists, such as a delta release's chunks, which devices fetch
    /// by SHA-256); the staged metadata, when it lists the target, decides.
    pub fn wants(&self, target: &str, requested: Option<&[String]>, algorithm: &str) -> bool {
        match self.0.get(target) {
            None => match requested {
                Some(names) => names.iter().any(|n| n == algorithm),
                // Not listed here: whoever lists it may use either name.
                None => true,
            },
            Some(algorithms) => {
                algorithms.contains(algorithm)
                    // Listed only under digests the server does not compute:
                    // no name of ours will be fetched, keep both as before.
                    || !COMPUTED.iter().any(|a| algorithms.contains(*a))
            }
        }
    }
}

/// Parses an upload's `names` query (`sha256`, `sha512` or both, comma
/// separated): the digest names to place a target no staged metadata lists.
pub fn parse_requested(query: &str) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for name in query.split(',') {
        if !COMPUTED.contains(&name) {
            return Err(format!(
                "names={query:?}: {name:?} is not a digest the server names files by \
                 (expected sha256, sha512 or both, comma separated)"
            ));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versioned(role: &str) -> MetadataName {
        MetadataName::Versioned {
            version: 3,
            role: role.to_owned(),
        }
    }

    fn targets_json(kind: &str, entries: &[(&str, &[&str])]) -> Vec<u8> {
        let targets: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(name, algs)| {
                let hashes: serde_json::Map<String, serde_json::Value> = algs
                    .iter()
                    .map(|a| ((*a).to_owned(), serde_json::json!("00")))
                    .collect();
                (
                    (*name).to_owned(),
                    serde_json::json!({"length": 1, "hashes": hashes}),
                )
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "signed": {"_type": kind, "version": 3, "targets": targets},
            "signatures": []
        }))
        .unwrap()
    }

    impl ListedDigests {
        fn wants_any(&self, target: &str, algorithm: &str) -> bool {
            self.wants(target, None, algorithm)
        }
    }

    #[test]
    fn requested_names_count_only_for_unlisted_targets() {
        let top = targets_json("targets", &[("a.img", &["sha512"])]);
        let names = [versioned("targets")];
        let listed = ListedDigests::from_staged([(&names[0], top.as_slice())]);
        let sha256 = ["sha256".to_owned()];
        assert!(listed.wants("chunks/ab/x.zst", Some(&sha256), "sha256"));
        assert!(!listed.wants("chunks/ab/x.zst", Some(&sha256), "sha512"));
        // The metadata that lists a target overrides what the upload asked.
        assert!(!listed.wants("a.img", Some(&sha256), "sha256"));
        assert!(listed.wants("a.img", Some(&sha256), "sha512"));
    }

    #[test]
    fn requested_names_are_parsed_strictly() {
        assert_eq!(parse_requested("sha256").unwrap(), ["sha256"]);
        assert_eq!(
            parse_requested("sha512,sha256,sha512").unwrap(),
            ["sha512", "sha256"]
        );
        for bad in ["", "md5", "sha256,", "SHA256", "sha256, sha512"] {
            let err = parse_requested(bad).expect_err(bad);
            assert!(err.contains("expected sha256, sha512"), "{err}");
        }
    }

    #[test]
    fn only_listed_digests_are_wanted() {
        let top = targets_json("targets", &[("os/a.img", &["sha256"])]);
        let board = targets_json("targets", &[("board/b.img", &["sha256", "sha512"])]);
        let names = [versioned("targets"), versioned("board")];
        let listed = ListedDigests::from_staged([
            (&names[0], top.as_slice()),
            (&names[1], board.as_slice()),
        ]);
        assert!(listed.wants_any("os/a.img", "sha256"));
        assert!(!listed.wants_any("os/a.img", "sha512"));
        assert!(listed.wants_any("board/b.img", "sha256"));
        assert!(listed.wants_any("board/b.img", "sha512"));
        // Unlisted here: both names, as before.
        assert!(listed.wants_any("other.img", "sha256"));
        assert!(listed.wants_any("other.img", "sha512"));
    }

    #[test]
    fn two_roles_listing_one_target_add_up() {
        let a = targets_json("targets", &[("x.img", &["sha256"])]);
        let b = targets_json("targets", &[("x.img", &["sha512"])]);
        let names = [versioned("targets"), versioned("board")];
        let listed =
            ListedDigests::from_staged([(&names[0], a.as_slice()), (&names[1], b.as_slice())]);
        assert!(listed.wants_any("x.img", "sha256"));
        assert!(listed.wants_any("x.img", "sha512"));
    }

    #[test]
    fn unreadable_or_foreign_metadata_is_not_consulted() {
        let snapshot = targets_json("snapshot", &[("x.img", &["sha256"])]);
        let root = targets_json("targets", &[("y.img", &["sha256"])]);
        let garbage = b"{not json".to_vec();
        let only_blake = targets_json("targets", &[("z.img", &["blake2b-256"])]);
        let names = [
            versioned("snapshot"),
            versioned("root"),
            versioned("targets"),
            MetadataName::Timestamp,
            versioned("board"),
        ];
        let listed = ListedDigests::from_staged([
            (&names[0], snapshot.as_slice()),
            (&names[1], root.as_slice()),
            (&names[2], garbage.as_slice()),
            (&names[3], only_blake.as_slice()),
            (&names[4], only_blake.as_slice()),
        ]);
        for target in ["x.img", "y.img"] {
            assert!(listed.wants_any(target, "sha512"), "{target}");
        }
        // Listed only under a digest the server does not compute.
        assert!(listed.wants_any("z.img", "sha256"));
        assert!(listed.wants_any("z.img", "sha512"));
    }
}
