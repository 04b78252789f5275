//! The JWKS key cache behind `--jwt-jwks-url`: RS256 and ES256 keys by `kid`, fetched
//! by a refresher thread and read by every handshake.
//!
//! Lifecycle: [`Jwks::start`] (from `main`, or at the first lookup) spawns the refresher,
//! which fetches at once, then every [`Timing::refresh`]; after a failure it retries with
//! a backoff (1 s doubling to 60 s). A lookup of an unknown `kid` wakes it for an early
//! fetch, at most once per [`Timing::min_refetch`], and waits for that fetch (bounded by
//! [`Timing::wait`]). A failed fetch never empties the cache: the last good set stays in
//! use and `herald_jwks_stale` says so. The thread ends when the last clone is dropped.
//!
//! The fetch is blocking (ureq) on the refresher's own thread: no runtime is involved, so
//! the cache works the same under actix's per-worker runtimes, the session actors and the
//! tests. Handshakes only read an `Arc` snapshot of the key map.
//!
//! Keys taken from the document: `kty` RSA (`alg` absent or RS256) and `kty` EC on P-256
//! (`alg` absent or ES256), with a `kid`, and `use` absent or `sig`. Everything else is
//! skipped, symmetric (`oct`) keys above all: a key published in a JWKS is public, and an
//! HMAC key that anyone can read would let anyone sign.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, Once, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::{AuthError, VerifyKey};

/// The largest JWKS document herald reads; real ones are a few KiB.
const MAX_DOCUMENT_BYTES: u64 = 1 << 20;
/// Longest pause between retries while fetches fail.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// When the cache refetches and how long a handshake waits for it.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Regular refresh after a good fetch.
    pub refresh: Duration,
    /// Shortest time between two fetches asked for by unknown `kid`s.
    pub min_refetch: Duration,
    /// How long a handshake with an unknown `kid` waits for the fetch it asked for.
    pub wait: Duration,
    /// Timeout of one fetch, connect to last byte.
    pub fetch_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            refresh: Duration::from_secs(600),
            min_refetch: Duration::from_secs(30),
            wait: Duration::from_secs(2),
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

type KeyMap = HashMap<String, Arc<VerifyKey>>;

/// A JWKS key cache; clones share it (and its one refresher thread).
#[derive(Clone)]
pub struct Jwks(Arc<Handle>);

/// Dropped with the last clone: tells the refresher to end.
struct Handle {
    shared: Arc<Shared>,
    started: Once,
}

struct Shared {
    url: String,
    timing: Timing,
    /// The set in use; replaced whole by a good fetch, never emptied by a bad one.
    keys: RwLock<Arc<KeyMap>>,
    control: Mutex<Control>,
    /// Wakes the refresher (early fetch asked for, or stop).
    wake: Condvar,
    /// Bumped after every fetch attempt, good or bad: what waiting handshakes watch.
    fetched: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Control {
    /// A handshake asked for a fetch.
    wanted: bool,
    /// A fetch is running (or about to: the first one, from `start`).
    in_flight: bool,
    /// When a handshake last asked for a fetch (the once-per-`min_refetch` rule).
    last_asked: Option<Instant>,
    /// A good fetch has happened.
    loaded: bool,
    stop: bool,
}

impl Jwks {
    pub fn new(url: String, timing: Timing) -> Jwks {
        let (fetched, _) = tokio::sync::watch::channel(0);
        Jwks(Arc::new(Handle {
            shared: Arc::new(Shared {
                url,
                timing,
                keys: RwLock::new(Arc::new(KeyMap::new())),
                control: Mutex::new(Control::default()),
                wake: Condvar::new(),
                fetched,
            }),
            started: Once::new(),
        }))
    }

    pub fn url(&self) -> &str {
        &self.0.shared.url
    }

    /// Start the refresher (once; later calls do nothing). Its first fetch begins at once.
    pub fn start(&self) {
        self.0.started.call_once(|| {
            let shared = self.0.shared.clone();
            lock(&shared.control).in_flight = true;
            let spawned = std::thread::Builder::new()
                .name("herald-jwks".into())
                .spawn(move || refresher(shared));
            if let Err(e) = spawned {
                // Without the thread no key ever arrives; every token gets 401.
                tracing::error!(error = %e, "cannot start the JWKS refresher thread");
                lock(&self.0.shared.control).in_flight = false;
            }
        });
    }

    /// The key for `kid`. An unknown one asks the refresher for an early fetch (at most
    /// once per `min_refetch`) and waits for it, at most `wait`, before giving up.
    pub async fn key(&self, kid: &str) -> Result<Arc<VerifyKey>, AuthError> {
        self.start();
        let shared = &self.0.shared;
        if let Some(k) = shared.lookup(kid) {
            return Ok(k);
        }
        // Subscribed before looking at the control state, so a fetch that ends after this
        // line is seen whichever way the race goes.
        let mut fetched = shared.fetched.subscribe();
        let wait = {
            let mut c = lock(&shared.control);
            if c.in_flight || c.wanted {
                true
            } else if c
                .last_asked
                .is_none_or(|t| t.elapsed() >= shared.timing.min_refetch)
            {
                c.last_asked = Some(Instant::now());
                c.wanted = true;
                shared.wake.notify_all();
                true
            } else {
                false
            }
        };
        if wait {
            let _ = tokio::time::timeout(shared.timing.wait, fetched.changed()).await;
        }
        if let Some(k) = shared.lookup(kid) {
            return Ok(k);
        }
        if lock(&shared.control).loaded {
            Err(AuthError::UnknownKey)
        } else {
            Err(AuthError::KeysUnavailable)
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        lock(&self.shared.control).stop = true;
        self.shared.wake.notify_all();
    }
}

impl Shared {
    fn snapshot(&self) -> Arc<KeyMap> {
        self.keys
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn lookup(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.snapshot().get(kid).cloned()
    }
}

/// A lock that survives a panicked holder: the guarded state is plain flags, always valid.
fn lock(m: &Mutex<Control>) -> std::sync::MutexGuard<'_, Control> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The refresher thread: fetch, publish the outcome, sleep until the next fetch is due or
/// asked for; until told to stop.
fn refresher(shared: Arc<Shared>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(shared.timing.fetch_timeout))
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let url = shared.url.as_str();
    let shown = redact_url(url);
    let metrics = crate::metrics::jwks();
    let mut failures: u32 = 0;
    loop {
        match fetch(&agent, url) {
            Ok(keys) => {
                let old = shared.snapshot();
                let changed = old.len() != keys.len() || keys.keys().any(|k| !old.contains_key(k));
                metrics.keys.set(keys.len() as i64);
                metrics.stale.set(0);
                *shared
                    .keys
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
                lock(&shared.control).loaded = true;
                if changed || failures > 0 {
                    let keys = shared.snapshot();
                    tracing::info!(url = %shown, kids = ?kids_of(&keys), "JWKS key set loaded");
                }
                failures = 0;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                metrics.refresh_failures.inc();
                metrics.stale.set(1);
                let kept = shared.snapshot().len();
                if kept > 0 {
                    tracing::warn!(url = %shown, error = %e, kept, "JWKS refresh failed; the last good key set stays in use");
                } else {
                    tracing::warn!(url = %shown, error = %e, "JWKS fetch failed; no signing keys yet, tokens get 401 until one succeeds");
                }
            }
        }
        let delay = if failures == 0 {
            shared.timing.refresh
        } else {
            backoff(failures).min(shared.timing.refresh)
        };
        let due = Instant::now() + delay;
        let mut c = lock(&shared.control);
        c.in_flight = false;
        // Waiters see this bump only after `in_flight` is false, so a handshake that finds
        // nothing in flight after its wake-up asks for a new fetch instead of waiting.
        shared.fetched.send_modify(|n| *n = n.wrapping_add(1));
        loop {
            if c.stop {
                return;
            }
            if c.wanted {
                break;
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            c = shared
                .wake
                .wait_timeout(c, due - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        c.wanted = false;
        c.in_flight = true;
    }
}

/// The `kid`s of a set, sorted (for logs).
fn kids_of(keys: &KeyMap) -> Vec<&str> {
    let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
    kids.sort_unstable();
    kids
}

/// 1 s after the first failure, doubling, at most [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(6)).min(MAX_BACKOFF)
}

/// One fetch of the document, parsed into the usable keys.
fn fetch(agent: &ureq::Agent, url: &str) -> Result<KeyMap, String> {
    let mut response = agent
        .get(url)
        .header("accept", "application/json, application/jwk-set+json")
        .call()
        .map_err(|e| e.to_string())?;
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_DOCUMENT_BYTES)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    parse_set(&body)
}

/// The usable keys of a JWKS document. Entries that are malformed or not RS256/ES256
/// signature keys with a `kid` are skipped; a document with none left is an error, so a
/// broken endpoint cannot replace a good set with an empty one.
pub fn parse_set(body: &str) -> Result<KeyMap, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let doc: Document =
        serde_json::from_str(body).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = KeyMap::new();
    for entry in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry) else {
            tracing::debug!("JWKS entry skipped: not a key herald reads");
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            tracing::debug!("JWKS entry skipped: no kid");
            continue;
        };
        let Some(algorithm) = usable_algorithm(&jwk) else {
            tracing::debug!(kid = %kid, "JWKS entry skipped: not an RS256 or ES256 signature key");
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            tracing::debug!(kid = %kid, "JWKS entry skipped: bad key material");
            continue;
        };
        if keys.contains_key(&kid) {
            tracing::warn!(kid = %kid, "JWKS has two keys with one kid; using the first");
            continue;
        }
        keys.insert(kid, Arc::new(VerifyKey { key, algorithm }));
    }
    if keys.is_empty() {
        return Err("no usable key (RS256 or ES256 with a kid) in the JWKS document".into());
    }
    Ok(keys)
}

fn usable_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return None,
    }
    match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Some(Algorithm::RS256),
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
            if p.curve == EllipticCurve::P256 =>
        {
            Some(Algorithm::ES256)
        }
        _ => None,
    }
}

/// The URL for logs and errors: without user info or query, which may carry credentials.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit('@').next().unwrap_or(authority);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The public keys of RFC 7517 appendix A.1.
    const RSA_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    fn rsa(kid: Option<&str>, alg: Option<&str>, usage: Option<&str>) -> serde_json::Value {
        let mut v = serde_json::json!({"kty": "RSA", "n": RSA_N, "e": "AQAB"});
        if let Some(k) = kid {
            v["kid"] = k.into();
        }
        if let Some(a) = alg {
            v["alg"] = a.into();
        }
        if let Some(u) = usage {
            v["use"] = u.into();
        }
        v
    }

    fn ec(kid: &str, crv: &str) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC", "crv": crv, "kid": kid,
            "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
            "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
        })
    }

    #[test]
    fn only_rs256_and_es256_signature_keys_with_a_kid_are_taken() {
        let doc = serde_json::json!({"keys": [
            rsa(Some("r1"), Some("RS256"), Some("sig")),
            rsa(Some("r2"), None, None),
            rsa(None, None, None),
            rsa(Some("enc"), None, Some("enc")),
            rsa(Some("r384"), Some("RS384"), None),
            rsa(Some("ps"), Some("PS256"), None),
            ec("e1", "P-256"),
            ec("e384", "P-384"),
            {"kty": "oct", "kid": "hs", "k": "c2VjcmV0", "alg": "HS256"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "weird", "kid": "w"},
            "not an object",
            rsa(Some("r1"), None, None),
        ]});
        let keys = parse_set(&doc.to_string()).unwrap();
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        assert_eq!(kids, ["e1", "r1", "r2"]);
        assert_eq!(keys["r1"].algorithm, Algorithm::RS256);
        assert_eq!(keys["e1"].algorithm, Algorithm::ES256);
    }

    #[test]
    fn a_document_without_a_usable_key_is_an_error() {
        assert!(parse_set(r#"{"keys":[]}"#).is_err());
        assert!(parse_set(r#"{"keys":[{"kty":"oct","kid":"hs","k":"c2VjcmV0"}]}"#).is_err());
        assert!(parse_set("<html>").is_err());
        assert!(parse_set(r#"{"no":"keys"}"#).is_err());
    }

    #[test]
    fn backoff_doubles_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn urls_lose_credentials_in_logs() {
        assert_eq!(
            redact_url("https://user:pw@idp.example/certs?token=x"),
            "https://idp.example/certs"
        );
        assert_eq!(redact_url("http://idp:8080"), "http://idp:8080");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_gives_keys_unavailable_within_the_wait() {
        // A port nothing listens on: the connection is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let jwks = Jwks::new(
            format!("http://127.0.0.1:{port}/jwks"),
            Timing {
                wait: Duration::from_millis(500),
                ..Timing::default()
            },
        );
        let started = Instant::now();
        assert_eq!(jwks.key("k").await.unwrap_err(), AuthError::KeysUnavailable);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
