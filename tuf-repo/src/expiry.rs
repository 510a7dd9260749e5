//! Expiry policies: a lifetime (`90s`, `12h`, `30d`, `2w`) counted from the
//! moment of signing, or a fixed RFC 3339 instant.

use crate::error::{RepoError, Result};
use jiff::Timestamp;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Seconds after signing.
    After(i64),
    /// A fixed instant.
    At(Timestamp),
}

impl Expiry {
    /// The expiry of metadata signed at `now`, to the whole second (metadata
    /// carries whole seconds; sub-second digits only make the JSON odd).
    pub fn resolve(self, now: Timestamp) -> Result<Timestamp> {
        let t = match self {
            Expiry::After(secs) => now
                .checked_add(jiff::SignedDuration::from_secs(secs))
                .map_err(|e| RepoError::InvalidArgument(format!("expiry out of range: {e}")))?,
            Expiry::At(t) => t,
        };
        Timestamp::from_second(t.as_second())
            .map_err(|e| RepoError::InvalidArgument(format!("expiry out of range: {e}")))
    }
}

impl FromStr for Expiry {
    type Err = RepoError;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let invalid = || {
            RepoError::InvalidArgument(format!(
                "invalid expiry {s:?}: expected a duration such as 90s, 12h, 30d, 2w or an RFC 3339 time such as 2027-01-01T00:00:00Z"
            ))
        };
        if let Some(unit) = s.chars().last().filter(|c| c.is_ascii_alphabetic()) {
            let number = &s[..s.len() - 1];
            if !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()) {
                let n: i64 = number.parse().map_err(|_| invalid())?;
                let factor = match unit {
                    's' => 1,
                    'm' => 60,
                    'h' => 3600,
                    'd' => 86_400,
                    'w' => 7 * 86_400,
                    _ => return Err(invalid()),
                };
                // Ten thousand years is well past anything meaningful and keeps
                // the arithmetic far from overflow.
                let secs = n
                    .checked_mul(factor)
                    .filter(|v| *v <= 10_000 * 366 * 86_400);
                return secs.map(Expiry::After).ok_or_else(invalid);
            }
        }
        s.parse::<Timestamp>()
            .map(Expiry::At)
            .map_err(|_| invalid())
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expiry::After(secs) if secs % 86_400 == 0 => write!(f, "{}d", secs / 86_400),
            Expiry::After(secs) if secs % 3600 == 0 => write!(f, "{}h", secs / 3600),
            Expiry::After(secs) => write!(f, "{secs}s"),
            Expiry::At(t) => write!(f, "{t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_instants() {
        assert_eq!("90s".parse::<Expiry>().expect("s"), Expiry::After(90));
        assert_eq!("12h".parse::<Expiry>().expect("h"), Expiry::After(43_200));
        assert_eq!(
            "30d".parse::<Expiry>().expect("d"),
            Expiry::After(2_592_000)
        );
        let at: Expiry = "2027-01-01T00:00:00Z".parse().expect("rfc3339");
        assert_eq!(at.to_string(), "2027-01-01T00:00:00Z");
        for bad in ["", "d", "-5d", "5y", "tomorrow", "99999999999999999d"] {
            assert!(bad.parse::<Expiry>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn resolves_to_whole_seconds() {
        let now: Timestamp = "2026-11-29T10:00:00.123456Z".parse().expect("now");
        let t = Expiry::After(60).resolve(now).expect("resolve");
        assert_eq!(t.to_string(), "2026-11-29T10:01:00Z");
        assert_eq!(Expiry::After(86_400 * 7).to_string(), "7d");
    }
}
