//! Dashboard sessions: a browser logs in once with an admin token and then
//! holds only a random session id in an HttpOnly, SameSite=Strict cookie.
//!
//! The server keeps, per session, the SHA-256 of the token it was opened
//! with (never the token), a CSRF token and an expiry. Each request through
//! a session is authorized from that digest exactly as a bearer token would
//! be, so revoking the token ends its sessions at once and a role change
//! needs no second code path.
//!
//! Cross-site requests cannot act through a session: the cookie is
//! SameSite=Strict, every state-changing request must carry the session's
//! CSRF token in `X-CSRF-Token` (a page from another origin cannot read
//! it), and a present `Origin` or `Sec-Fetch-Site` must say same-origin.
//!
//! Sessions live in this process's memory: a restart logs everyone out, and
//! behind a load balancer with several instances the dashboard needs sticky
//! sessions.

use axum::http::{header, HeaderMap, HeaderValue, Method, Uri};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The cookie's name.
pub const COOKIE: &str = "ota_session";
/// The header carrying the CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts from log-in (a working day).
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Most sessions held at once: a client logging in in a loop cannot grow
/// the server's memory without bound.
pub const MAX_SESSIONS: usize = 4096;

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 of the admin token the session was opened with.
    pub token_digest: [u8; 32],
    /// Sent by the page in [`CSRF_HEADER`] on every state-changing request.
    pub csrf_token: String,
    expires: Instant,
}

/// Why a request through a session may not change anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    #[error("missing or wrong X-CSRF-Token header (reload the dashboard)")]
    Token,
    #[error("cross-origin request refused (Origin {0:?} is not this server)")]
    Origin(String),
    #[error("cross-site request refused (Sec-Fetch-Site: {0})")]
    FetchSite(String),
}

/// The sessions of this process, keyed by the SHA-256 of their id so that
/// neither a memory dump nor lookup timing gives a usable id away.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<[u8; 32], Session>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many dashboard sessions are open; try again later")]
pub struct SessionsFull;

fn id_key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Opens a session for the token whose SHA-256 is `token_digest`;
    /// returns the session id (for the cookie) and the session.
    pub fn open(&self, token_digest: [u8; 32]) -> Result<(String, Session), SessionsFull> {
        let id = super::new_secret();
        let session = Session {
            token_digest,
            csrf_token: super::new_secret(),
            expires: Instant::now() + LIFETIME,
        };
        let mut map = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SESSIONS {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS {
                return Err(SessionsFull);
            }
        }
        map.insert(id_key(&id), session.clone());
        Ok((id, session))
    }

    /// The live session named by the request's cookie, if any.
    pub fn from_headers(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie_value(headers, COOKIE)?;
        let key = id_key(id);
        let mut map = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&key) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session named by the request's cookie (nothing if none).
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie_value(headers, COOKIE) {
            let mut map = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
            map.remove(&id_key(id));
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// `Set-Cookie` for a new session; `Secure` when served over TLS.
pub fn set_cookie(id: &str, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        LIFETIME.as_secs()
    );
    // A hex id and fixed text: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    if secure {
        HeaderValue::from_static(
            "ota_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0; Secure",
        )
    } else {
        HeaderValue::from_static("ota_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
    }
}

/// Whether a method only reads (and so needs no CSRF token).
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The checks of a state-changing request made through a session: the
/// session's CSRF token, and a same-origin `Origin`/`Sec-Fetch-Site`
/// where the browser sent them.
pub fn check_csrf(session: &Session, headers: &HeaderMap, uri: &Uri) -> Result<(), CsrfError> {
    check_same_origin(headers, uri)?;
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(CsrfError::Token)?;
    if !super::constant_time_eq(presented.as_bytes(), session.csrf_token.as_bytes()) {
        return Err(CsrfError::Token);
    }
    Ok(())
}

/// A present `Origin` must name this server (the host the browser
/// addressed: `Host` in HTTP/1.1, the `:authority` that HTTP/2 puts in the
/// URI), and a present `Sec-Fetch-Site` must be `same-origin`. Also
/// checked on log-in, so another site cannot log a browser in.
pub fn check_same_origin(headers: &HeaderMap, uri: &Uri) -> Result<(), CsrfError> {
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("(not text)");
        if site != "same-origin" && site != "none" {
            return Err(CsrfError::FetchSite(site.to_owned()));
        }
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin_text = origin.to_str().unwrap_or("(not text)");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()));
    let origin_host = origin_text
        .strip_prefix("http://")
        .or_else(|| origin_text.strip_prefix("https://"));
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(CsrfError::Origin(origin_text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_ends_on_close() {
        let sessions = Sessions::default();
        let (id, s) = sessions.open([7; 32]).expect("open");
        let cookie = format!("other=1; {COOKIE}={id}");
        let h = headers(&[("cookie", &cookie)]);
        let found = sessions.from_headers(&h).expect("found");
        assert_eq!(found.token_digest, [7; 32]);
        assert_eq!(found.csrf_token, s.csrf_token);
        assert!(sessions
            .from_headers(&headers(&[("cookie", "ota_session=nope")]))
            .is_none());
        sessions.close(&h);
        assert!(sessions.from_headers(&h).is_none());
    }

    #[test]
    fn state_changes_need_the_csrf_token_and_the_same_origin() {
        let sessions = Sessions::default();
        let (_, s) = sessions.open([1; 32]).expect("open");
        let good = [
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ];
        assert_eq!(
            check_csrf(&s, &headers(&good), &Uri::from_static("/")),
            Err(CsrfError::Token)
        );
        let mut with_token = good.to_vec();
        with_token.push(("x-csrf-token", &s.csrf_token));
        assert_eq!(
            check_csrf(&s, &headers(&with_token), &Uri::from_static("/")),
            Ok(())
        );
        let mut wrong = with_token.clone();
        wrong[1] = ("origin", "http://evil.example");
        assert!(matches!(
            check_csrf(&s, &headers(&wrong), &Uri::from_static("/")),
            Err(CsrfError::Origin(_))
        ));
        let mut cross = with_token.clone();
        cross.push(("sec-fetch-site", "cross-site"));
        assert!(matches!(
            check_csrf(&s, &headers(&cross), &Uri::from_static("/")),
            Err(CsrfError::FetchSite(_))
        ));
        let mut bad_token = good.to_vec();
        bad_token.push(("x-csrf-token", "0000"));
        assert_eq!(
            check_csrf(&s, &headers(&bad_token), &Uri::from_static("/")),
            Err(CsrfError::Token)
        );
    }

    #[test]
    fn over_http2_the_origin_is_checked_against_the_authority() {
        let h = headers(&[("origin", "https://ota.example:8443")]);
        let uri = Uri::from_static("https://ota.example:8443/dashboard/session");
        assert_eq!(check_same_origin(&h, &uri), Ok(()));
        let other = Uri::from_static("https://elsewhere.example/dashboard/session");
        assert!(check_same_origin(&h, &other).is_err());
        // Neither Host nor authority: an Origin cannot be matched.
        assert!(check_same_origin(&h, &Uri::from_static("/")).is_err());
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let c = set_cookie("abc", true);
        let c = c.to_str().expect("text");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        assert!(!set_cookie("abc", false)
            .to_str()
            .expect("text")
            .contains("Secure"));
    }
}
