//! Target names (`image.img`, `board-a/image-1.2.0.img`): they become file
//! paths in the repository and on the server and URL paths for devices, so
//! only plain relative paths of safe characters are accepted.

use crate::error::{RepoError, Result};

const MAX_LEN: usize = 255;

/// Checks a target name and returns it split into (directory prefix with
/// trailing slash or "", basename).
pub fn validate(name: &str) -> Result<(String, String)> {
    let invalid = |detail: &str| RepoError::InvalidTargetName {
        name: name.to_owned(),
        detail: detail.to_owned(),
    };
    if name.is_empty() || name.len() > MAX_LEN {
        return Err(invalid("must be 1 to 255 characters"));
    }
    for segment in name.split('/') {
        if segment.is_empty() {
            return Err(invalid(
                "empty path segment (leading, trailing or double '/')",
            ));
        }
        if segment.starts_with('.') {
            return Err(invalid("path segments may not start with '.'"));
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
        {
            return Err(invalid(
                "only letters, digits, '.', '_', '-', '+' and '/' are allowed",
            ));
        }
    }
    Ok(match name.rsplit_once('/') {
        Some((dir, base)) => (format!("{dir}/"), base.to_owned()),
        None => (String::new(), name.to_owned()),
    })
}

/// The consistent-snapshot file name of a target: `[dir/]<hash>.<basename>`.
pub fn hashed_path(name: &str, hash_hex: &str) -> Result<String> {
    let (dir, base) = validate(name)?;
    Ok(format!("{dir}{hash_hex}.{base}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_paths_only() {
        assert_eq!(
            validate("a.img").expect("ok"),
            (String::new(), "a.img".to_owned())
        );
        assert_eq!(
            validate("board-a/img-1.2.0+b1.bin").expect("ok"),
            ("board-a/".to_owned(), "img-1.2.0+b1.bin".to_owned())
        );
        for bad in [
            "",
            "/abs",
            "a//b",
            "../x",
            "a/..",
            "a/.hidden",
            "sp ace",
            "a\\b",
            "x/",
        ] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(hashed_path("d/a.img", "ab").expect("ok"), "d/ab.a.img");
    }
}
