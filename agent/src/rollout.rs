//! Staged rollouts on the device: may this release be installed now?
//!
//! Two voices, and both must say yes (see `ota_common::rollout`):
//! * the signed plan in the target's custom fields: the device computes its
//!   own wave from its id and `rollout_groups` and waits for that wave's
//!   `not_before`; nothing the server or a proxy says can advance this;
//! * the server's hold (`GET {server_url}/api/v1/rollouts/{target}`): an
//!   operator's or the automatic pause, or an abort. It can only hold back.
//!   When it cannot be asked, the release waits for the next poll: a
//!   staged rollout exists to be cautious.

use chrono::{DateTime, Utc};
use ota_common::rollout::{RolloutPlan, WaveDecision};
use ota_common::wire::{RolloutHold, RolloutState};
use std::io::Read;
use url::Url;

/// Largest hold answer read from the server.
const MAX_HOLD_BYTES: u64 = 4096;

/// Why the server's hold could not be learnt.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("GET {url}: {detail}")]
    Fetch { url: String, detail: String },
    #[error("GET {url}: the answer is not a rollout hold: {detail}")]
    Invalid { url: String, detail: String },
}

/// Where the server's holds come from.
pub trait RolloutHolds: std::fmt::Debug {
    /// The server's state for `target`'s rollout.
    fn hold(&self, target: &str) -> Result<RolloutHold, HoldError>;
}

/// The verdict on one staged release at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Install it: its wave is open and the server does not hold it.
    Go,
    /// Not now; the reason says until when or why (for the log).
    Wait(String),
    /// Not now: the server could not be asked whether it holds the release.
    /// Unlike [`Gate::Wait`], nothing is known to have changed, so an
    /// interrupted download of this release is kept for the next poll.
    Unknown(String),
    /// No wave holds this device: this release is not for it.
    NotForThisDevice,
}

/// Decides whether a release with `plan` may start on this device at `now`.
pub fn gate(
    target: &str,
    plan: &RolloutPlan,
    device_id: &str,
    groups: &[String],
    now: DateTime<Utc>,
    holds: &dyn RolloutHolds,
) -> Gate {
    match plan.decide(device_id, groups, now) {
        WaveDecision::NotIncluded => Gate::NotForThisDevice,
        WaveDecision::NotYet { wave, opens, .. } => Gate::Wait(format!(
            "this device is in wave {wave:?}, which opens at {}",
            opens.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )),
        WaveDecision::Open { wave, .. } => match holds.hold(target) {
            Ok(h) if h.state == RolloutState::Active => {
                tracing::info!(%target, %wave, "rollout wave open and not held");
                Gate::Go
            }
            Ok(h) => Gate::Wait(format!(
                "the server holds the rollout ({}: {})",
                h.state,
                h.reason.as_deref().unwrap_or("no reason given")
            )),
            Err(e) => Gate::Unknown(format!(
                "could not ask the server whether the rollout is held ({e}); trying again next poll"
            )),
        },
    }
}

/// Asks the server over the agent's HTTP client (same TLS identity as reports).
#[derive(Debug, Clone)]
pub struct HttpHolds {
    client: reqwest::blocking::Client,
    base: Url,
}

impl HttpHolds {
    /// `server_url` as in the config; holds live under `api/v1/rollouts/`.
    pub fn new(client: reqwest::blocking::Client, server_url: &Url) -> Self {
        let mut base = server_url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        HttpHolds { client, base }
    }

    fn url(&self, target: &str) -> Result<Url, HoldError> {
        // Target names are verified TUF paths (no `..`, no empty segments);
        // each segment is still percent-encoded so the URL means what it says.
        let mut url = self.base.clone();
        {
            let mut segments = url.path_segments_mut().map_err(|()| HoldError::Fetch {
                url: self.base.to_string(),
                detail: "server_url cannot be a base".into(),
            })?;
            segments.pop_if_empty().extend(["api", "v1", "rollouts"]);
            segments.extend(target.split('/'));
        }
        Ok(url)
    }
}

impl RolloutHolds for HttpHolds {
    fn hold(&self, target: &str) -> Result<RolloutHold, HoldError> {
        let url = self.url(target)?;
        let fetch = |detail: String| HoldError::Fetch {
            url: url.to_string(),
            detail,
        };
        let response = self
            .client
            .get(url.clone())
            .send()
            .map_err(|e| fetch(e.to_string()))?;
        let status = response.status();
        // A server without rollout support knows no holds.
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(RolloutHold {
                target: target.to_owned(),
                state: RolloutState::Active,
                reason: None,
            });
        }
        if !status.is_success() {
            return Err(fetch(format!("HTTP {status}")));
        }
        let mut body = Vec::new();
        response
            .take(MAX_HOLD_BYTES + 1)
            .read_to_end(&mut body)
            .map_err(|e| fetch(e.to_string()))?;
        if body.len() as u64 > MAX_HOLD_BYTES {
            return Err(HoldError::Invalid {
                url: url.to_string(),
                detail: format!("larger than {MAX_HOLD_BYTES} bytes"),
            });
        }
        let hold: RolloutHold = serde_json::from_slice(&body).map_err(|e| HoldError::Invalid {
            url: url.to_string(),
            detail: e.to_string(),
        })?;
        if hold.target != target {
            return Err(HoldError::Invalid {
                url: url.to_string(),
                detail: format!("it is about {:?}", hold.target),
            });
        }
        Ok(hold)
    }
}

/// Holds kept in memory: the server's side for machine tests and dry runs.
/// A target without an entry is active.
#[derive(Debug, Default)]
pub struct MemoryHolds {
    pub holds: std::sync::Mutex<std::collections::HashMap<String, RolloutState>>,
    /// When set, every question fails as if the server were unreachable.
    pub unreachable: std::sync::atomic::AtomicBool,
}

impl MemoryHolds {
    pub fn set(&self, target: &str, state: RolloutState) {
        match self.holds.lock() {
            Ok(mut h) => h.insert(target.to_owned(), state),
            Err(p) => p.into_inner().insert(target.to_owned(), state),
        };
    }
}

impl RolloutHolds for MemoryHolds {
    fn hold(&self, target: &str) -> Result<RolloutHold, HoldError> {
        if self.unreachable.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(HoldError::Fetch {
                url: format!("memory:{target}"),
                detail: "unreachable".into(),
            });
        }
        let state = match self.holds.lock() {
            Ok(h) => h.get(target).copied(),
            Err(p) => p.into_inner().get(target).copied(),
        };
        Ok(RolloutHold {
            target: target.to_owned(),
            state: state.unwrap_or(RolloutState::Active),
            reason: state.map(|_| "held in memory".to_owned()),
        })
    }
}

impl<T: RolloutHolds + ?Sized> RolloutHolds for std::sync::Arc<T> {
    fn hold(&self, target: &str) -> Result<RolloutHold, HoldError> {
        (**self).hold(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_common::rollout::Wave;
    use std::cell::Cell;

    #[derive(Debug)]
    struct Server(Result<RolloutState, ()>, Cell<u32>);
    impl RolloutHolds for Server {
        fn hold(&self, target: &str) -> Result<RolloutHold, HoldError> {
            self.1.set(self.1.get() + 1);
            match self.0 {
                Ok(state) => Ok(RolloutHold {
                    target: target.into(),
                    state,
                    reason: Some("operator said so".into()),
                }),
                Err(()) => Err(HoldError::Fetch {
                    url: "u".into(),
                    detail: "refused".into(),
                }),
            }
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn plan() -> RolloutPlan {
        RolloutPlan::new(
            "0123456789abcdef".into(),
            vec![Wave {
                name: "bench".into(),
                groups: vec!["bench".into()],
                percent: None,
                not_before: t("2026-12-01T00:00:00Z"),
            }],
        )
        .unwrap()
    }

    #[test]
    fn the_signed_schedule_comes_first() {
        let server = Server(Ok(RolloutState::Active), Cell::new(0));
        let bench = ["bench".to_string()];
        let before = gate(
            "t",
            &plan(),
            "d",
            &bench,
            t("2026-11-30T00:00:00Z"),
            &server,
        );
        assert!(matches!(before, Gate::Wait(ref r) if r.contains("opens at 2026-12-01T00:00:00Z")));
        // The server is not even asked before the wave opens.
        assert_eq!(server.1.get(), 0);
        let after = gate(
            "t",
            &plan(),
            "d",
            &bench,
            t("2026-12-01T00:00:00Z"),
            &server,
        );
        assert_eq!(after, Gate::Go);
        let outsider = gate("t", &plan(), "d", &[], t("2027-01-01T00:00:00Z"), &server);
        assert_eq!(outsider, Gate::NotForThisDevice);
    }

    #[test]
    fn the_server_can_only_hold_back() {
        let bench = ["bench".to_string()];
        let now = t("2026-12-02T00:00:00Z");
        for state in [RolloutState::Paused, RolloutState::Aborted] {
            let g = gate(
                "t",
                &plan(),
                "d",
                &bench,
                now,
                &Server(Ok(state), Cell::new(0)),
            );
            assert!(
                matches!(g, Gate::Wait(ref r) if r.contains(state.as_str()) && r.contains("operator said so"))
            );
        }
        let unreachable = gate(
            "t",
            &plan(),
            "d",
            &bench,
            now,
            &Server(Err(()), Cell::new(0)),
        );
        assert!(matches!(unreachable, Gate::Unknown(ref r) if r.contains("next poll")));
    }

    #[test]
    fn urls_encode_each_segment() {
        let h = HttpHolds::new(
            reqwest::blocking::Client::new(),
            &Url::parse("https://ota.example/base").unwrap(),
        );
        assert_eq!(
            h.url("board-a/fw 1.img").unwrap().as_str(),
            "https://ota.example/base/api/v1/rollouts/board-a/fw%201.img"
        );
    }
}
