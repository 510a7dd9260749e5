//! Validation of the names clients put in URLs before any of them touches the
//! filesystem: metadata file names and relative target paths.

/// What a metadata file name designates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataName {
    /// `timestamp.json`: replaced on every release.
    Timestamp,
    /// `root.json`: the newest root, replaced when root rotates.
    Root,
    /// `{version}.{role}.json` (consistent snapshots): immutable once published.
    Versioned { version: u64, role: String },
}

impl MetadataName {
    /// Accepts only `^[0-9]+\.root\.json$|^root\.json$|^timestamp\.json$|^[0-9]+\.[A-Za-z0-9._-]+\.json$`.
    pub fn parse(name: &str) -> Result<MetadataName, String> {
        match name {
            "timestamp.json" => return Ok(MetadataName::Timestamp),
            "root.json" => return Ok(MetadataName::Root),
            _ => {}
        }
        let invalid = || {
            format!(
                "invalid metadata file name {name:?}: expected timestamp.json, root.json or VERSION.ROLE.json"
            )
        };
        let stem = name.strip_suffix(".json").ok_or_else(invalid)?;
        let (digits, role) = stem.split_once('.').ok_or_else(invalid)?;
        if digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || role.is_empty()
            || !role
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid());
        }
        let version = digits
            .parse::<u64>()
            .map_err(|_| format!("invalid metadata file name {name:?}: version out of range"))?;
        Ok(MetadataName::Versioned {
            version,
            role: role.to_owned(),
        })
    }

    /// Immutable names may only ever have one content.
    pub fn is_immutable(&self) -> bool {
        matches!(self, MetadataName::Versioned { .. })
    }
}

/// A validated relative path under `targets/`: non-empty `/`-separated
/// segments, none of them `.` or `..`, no backslash, NUL or control character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetPath(String);

/// Longest target path accepted, in bytes.
const MAX_TARGET_PATH: usize = 1024;

impl TargetPath {
    /// `raw` is the path as it appeared in the URL (still percent-encoded),
    /// `decoded` the same after percent-decoding. Encoded separators are
    /// refused on the raw form: once decoded they could not be told apart from
    /// real ones and would let `..%2F` slip through as a single segment.
    pub fn parse(raw: &str, decoded: &str) -> Result<TargetPath, String> {
        let lower = raw.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
            return Err(format!(
                "invalid target path {raw:?}: encoded '/', '\\' or NUL is not allowed"
            ));
        }
        Self::parse_decoded(decoded)
    }

    /// Validates an already decoded path.
    pub fn parse_decoded(path: &str) -> Result<TargetPath, String> {
        let bad = |why: &str| Err(format!("invalid target path {path:?}: {why}"));
        if path.is_empty() {
            return bad("empty");
        }
        if path.len() > MAX_TARGET_PATH {
            return bad("too long");
        }
        if path.starts_with('/') {
            return bad("absolute paths are not allowed");
        }
        if path.contains('\\') {
            return bad("backslash is not allowed");
        }
        if path.chars().any(|c| c == '\0' || c.is_control()) {
            return bad("control characters are not allowed");
        }
        for segment in path.split('/') {
            match segment {
                "" => return bad("empty path segment"),
                "." | ".." => return bad("'.' and '..' segments are not allowed"),
                _ => {}
            }
        }
        Ok(TargetPath(path.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The directory part (`""` at the top level) and the file name.
    pub fn split(&self) -> (&str, &str) {
        match self.0.rsplit_once('/') {
            Some((dir, base)) => (dir, base),
            None => ("", &self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names() {
        assert_eq!(
            MetadataName::parse("timestamp.json"),
            Ok(MetadataName::Timestamp)
        );
        assert_eq!(MetadataName::parse("root.json"), Ok(MetadataName::Root));
        assert_eq!(
            MetadataName::parse("12.snapshot.json"),
            Ok(MetadataName::Versioned {
                version: 12,
                role: "snapshot".into()
            })
        );
        assert!(MetadataName::parse("3.my-role_x.json").is_ok());
        for bad in [
            "snapshot.json",
            "x.root.json",
            "1..json",
            "1.a/b.json",
            "1.a\\b.json",
            "../timestamp.json",
            "1.root.json.bak",
            "99999999999999999999999.root.json",
            "",
        ] {
            assert!(MetadataName::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn target_paths() {
        let ok = TargetPath::parse("images/a%20b.img", "images/a b.img").expect("ok");
        assert_eq!(ok.split(), ("images", "a b.img"));
        assert_eq!(
            TargetPath::parse_decoded("top.img").expect("ok").split(),
            ("", "top.img")
        );
        for (raw, decoded) in [
            ("../etc/passwd", "../etc/passwd"),
            ("a/../../x", "a/../../x"),
            ("/etc/passwd", "/etc/passwd"),
            ("a//b", "a//b"),
            ("a/./b", "a/./b"),
            ("a\\b", "a\\b"),
            ("a%00b", "a\0b"),
            ("..%2Fx", "../x"),
            ("a%2fb", "a/b"),
            ("", ""),
            ("a/", "a/"),
        ] {
            assert!(TargetPath::parse(raw, decoded).is_err(), "{raw} accepted");
        }
    }
}
