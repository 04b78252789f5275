//! JWKS keys, required claims and secrets in files, over real sockets: a local HTTP server
//! serves the key set (and counts its requests), `herald token` signs with RS256/ES256
//! keys made by openssl, and every refusal is checked by its 401 reason.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A JWKS endpoint on a free loopback port: answers every GET with the current document,
/// or 503 while down, and counts the requests.
struct JwksServer {
    port: u16,
    requests: Arc<AtomicUsize>,
    document: Arc<Mutex<String>>,
    up: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(document: Value) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let doc = Arc::new(Mutex::new(document.to_string()));
        let up = Arc::new(AtomicBool::new(true));
        let (r, d, u) = (requests.clone(), doc.clone(), up.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, d, u) = (r.clone(), d.clone(), u.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    if !head.starts_with(b"GET ") {
                        return;
                    }
                    r.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = if u.load(Ordering::SeqCst) {
                        ("200 OK", d.lock().unwrap().clone())
                    } else {
                        ("503 Service Unavailable", "down".to_string())
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        JwksServer {
            port,
            requests,
            document: doc,
            up,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/.well-known/jwks.json", self.port)
    }

    fn serve(&self, document: Value) {
        *self.document.lock().unwrap() = document.to_string();
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Wait until at least `n` requests arrived.
    async fn wait_requests(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.requests() < n {
            assert!(
                Instant::now() < deadline,
                "JWKS requests stayed at {}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// RS256 and ES256 private keys (PEM files from openssl) and their public JWKs.
struct Keys {
    dir: TempDir,
}

impl Keys {
    fn new(tag: &str) -> Keys {
        let keys = Keys {
            dir: TempDir::new(tag),
        };
        for (name, alg) in [
            (
                "rsa.pem",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            ),
            (
                "ec.pem",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
            ),
            (
                "rsa2.pem",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            ),
        ] {
            let ok = std::process::Command::new("openssl")
                .arg("genpkey")
                .args(alg)
                .args(["-out", &keys.path(name)])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "openssl genpkey {name}");
        }
        keys
    }

    fn path(&self, name: &str) -> String {
        self.dir.0.join(name).to_string_lossy().into_owned()
    }

    /// The public JWK of a private key file, with `kid`.
    fn jwk(&self, name: &str, kid: &str) -> Value {
        let pem = std::fs::read(self.path(name)).unwrap();
        let (key, alg) = match EncodingKey::from_rsa_pem(&pem) {
            Ok(k) => (k, Algorithm::RS256),
            Err(_) => (EncodingKey::from_ec_pem(&pem).unwrap(), Algorithm::ES256),
        };
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("public JWK");
        jwk.common.key_id = Some(kid.to_string());
        serde_json::to_value(jwk).unwrap()
    }
}

fn set(keys: &[Value]) -> Value {
    json!({ "keys": keys })
}

/// `herald token --user u1` with these extra flags.
async fn mint(extra: &[&str]) -> String {
    let mut args = vec!["token", "--user", "u1", "--ttl", "5m"];
    args.extend_from_slice(extra);
    herald_cli(&args).await
}

async fn refused(hub: &Hub, token: &str) -> Refused {
    try_connect(&hub.ws_url("u1", &format!("token={token}")), &[])
        .await
        .expect_err("must be refused")
}

async fn accepted(hub: &Hub, token: &str) {
    let (_ws, welcome) = connect(&hub.ws_url("u1", &format!("token={token}"))).await;
    assert_eq!(welcome["user"], "u1");
}

#[tokio::test]
async fn tokens_are_verified_with_the_key_their_kid_names_and_hs_keys_are_ignored() {
    let keys = Keys::new("jwks-kid");
    let oct = json!({"kty": "oct", "kid": "hs-1", "alg": "HS256", "k": base64url(SECRET)});
    let server = JwksServer::start(set(&[
        keys.jwk("rsa.pem", "rsa-1"),
        keys.jwk("ec.pem", "ec-1"),
        oct,
    ]))
    .await;
    let hub = Hub::start(&["--jwt-jwks-url", &server.url()]).await;
    let rsa = keys.path("rsa.pem");
    let ec = keys.path("ec.pem");
    accepted(
        &hub,
        &mint(&["--jwt-private-key", &rsa, "--kid", "rsa-1"]).await,
    )
    .await;
    accepted(
        &hub,
        &mint(&["--jwt-private-key", &ec, "--kid", "ec-1"]).await,
    )
    .await;
    assert_eq!(hub.metric("herald_jwks_keys").await, 2.0);
    assert_eq!(hub.metric("herald_jwks_stale").await, 0.0);

    // The RSA key under the EC key's kid, and a token without kid.
    let r = refused(
        &hub,
        &mint(&["--jwt-private-key", &rsa, "--kid", "ec-1"]).await,
    )
    .await;
    assert_eq!((r.status, r.body.trim()), (401, "invalid token"));
    let r = refused(&hub, &mint(&["--jwt-private-key", &rsa]).await).await;
    assert_eq!(
        (r.status, r.body.trim()),
        (401, "token has no key id (kid)")
    );
    // The HMAC key in the set is public: a token signed with it must not pass.
    let hs = mint(&["--jwt-secret", SECRET, "--kid", "hs-1"]).await;
    let r = refused(&hub, &hs).await;
    assert_eq!((r.status, r.body.trim()), (401, "unknown key id"));
}

#[tokio::test]
async fn a_rotated_key_is_accepted_after_the_refetch_its_unknown_kid_triggers() {
    let keys = Keys::new("jwks-rotate");
    let server = JwksServer::start(set(&[keys.jwk("rsa.pem", "2024")])).await;
    let hub = Hub::start(&["--jwt-jwks-url", &server.url()]).await;
    let old = mint(&["--jwt-private-key", &keys.path("rsa.pem"), "--kid", "2024"]).await;
    accepted(&hub, &old).await;
    assert_eq!(server.requests(), 1, "one fetch at start");

    server.serve(set(&[
        keys.jwk("rsa2.pem", "2025"),
        keys.jwk("ec.pem", "2025-ec"),
    ]));
    let new = mint(&["--jwt-private-key", &keys.path("rsa2.pem"), "--kid", "2025"]).await;
    accepted(&hub, &new).await;
    assert_eq!(server.requests(), 2, "the unknown kid caused one refetch");
    let ec = mint(&[
        "--jwt-private-key",
        &keys.path("ec.pem"),
        "--kid",
        "2025-ec",
    ])
    .await;
    accepted(&hub, &ec).await;
    assert_eq!(server.requests(), 2, "a known kid needs no fetch");
    // The old key left the set with the refetch.
    let r = refused(&hub, &old).await;
    assert_eq!((r.status, r.body.trim()), (401, "unknown key id"));
    assert_eq!(hub.metric("herald_jwks_keys").await, 2.0);
}

#[tokio::test]
async fn unknown_kids_trigger_at_most_one_refetch_per_30_seconds() {
    let keys = Keys::new("jwks-unknown");
    let server = JwksServer::start(set(&[keys.jwk("rsa.pem", "k1")])).await;
    let hub = Hub::start(&["--jwt-jwks-url", &server.url()]).await;
    server.wait_requests(1).await;
    let rsa = keys.path("rsa.pem");
    accepted(
        &hub,
        &mint(&["--jwt-private-key", &rsa, "--kid", "k1"]).await,
    )
    .await;

    let first = mint(&["--jwt-private-key", &rsa, "--kid", "nope"]).await;
    let r = refused(&hub, &first).await;
    assert_eq!((r.status, r.body.trim()), (401, "unknown key id"));
    assert_eq!(server.requests(), 2, "the first unknown kid refetches");
    for kid in ["nope", "other"] {
        let t = mint(&["--jwt-private-key", &rsa, "--kid", kid]).await;
        let started = Instant::now();
        let r = refused(&hub, &t).await;
        assert_eq!((r.status, r.body.trim()), (401, "unknown key id"));
        // No fetch to wait for: refused at once.
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{kid}: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(server.requests(), 2, "no second refetch within 30 s");
}

#[tokio::test]
async fn an_unreachable_endpoint_keeps_the_last_good_set_and_says_it_is_stale() {
    let keys = Keys::new("jwks-down");
    let server = JwksServer::start(set(&[keys.jwk("ec.pem", "ec-1")])).await;
    let hub = Hub::start(&["--jwt-jwks-url", &server.url()]).await;
    let ec = keys.path("ec.pem");
    let good = mint(&["--jwt-private-key", &ec, "--kid", "ec-1"]).await;
    accepted(&hub, &good).await;

    server.set_up(false);
    // An unknown kid makes herald refetch; the fetch fails.
    let unknown = mint(&["--jwt-private-key", &ec, "--kid", "ec-2"]).await;
    let r = refused(&hub, &unknown).await;
    assert_eq!((r.status, r.body.trim()), (401, "unknown key id"));
    assert_eq!(hub.metric("herald_jwks_stale").await, 1.0);
    assert!(hub.metric("herald_jwks_refresh_failures_total").await >= 1.0);
    assert_eq!(hub.metric("herald_jwks_keys").await, 1.0);
    accepted(&hub, &good).await;

    // Failed fetches are retried (1 s, then doubling): back up, the set is fresh again.
    server.set_up(true);
    let deadline = Instant::now() + WAIT;
    while hub.metric("herald_jwks_stale").await != 0.0 {
        assert!(Instant::now() < deadline, "herald_jwks_stale stayed 1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    accepted(&hub, &good).await;
}

#[tokio::test]
async fn herald_starts_without_keys_and_takes_them_when_the_endpoint_answers() {
    let keys = Keys::new("jwks-late");
    let server = JwksServer::start(set(&[keys.jwk("rsa.pem", "k1")])).await;
    server.set_up(false);
    let hub = Hub::start(&["--jwt-jwks-url", &server.url()]).await;
    let t = mint(&["--jwt-private-key", &keys.path("rsa.pem"), "--kid", "k1"]).await;
    let r = refused(&hub, &t).await;
    assert_eq!(
        (r.status, r.body.trim()),
        (401, "signing keys not available yet")
    );
    assert_eq!(hub.metric("herald_jwks_stale").await, 1.0);

    server.set_up(true);
    let deadline = Instant::now() + WAIT;
    loop {
        match try_connect(&hub.ws_url("u1", &format!("token={t}")), &[]).await {
            Ok(_) => break,
            Err(r) => {
                assert_eq!(r.status, 401);
                assert!(Instant::now() < deadline, "keys never arrived: {}", r.body);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(hub.metric("herald_jwks_stale").await, 0.0);
    assert_eq!(hub.metric("herald_jwks_keys").await, 1.0);
}

#[tokio::test]
async fn audience_issuer_and_not_before_refusals_say_why() {
    let keys = Keys::new("jwks-claims");
    let server = JwksServer::start(set(&[keys.jwk("rsa.pem", "k1")])).await;
    let hub = Hub::start(&[
        "--jwt-jwks-url",
        &server.url(),
        "--jwt-audience",
        "herald",
        "--jwt-issuer",
        "https://idp.test",
    ])
    .await;
    let rsa = keys.path("rsa.pem");
    let base = ["--jwt-private-key", &rsa, "--kid", "k1"];
    let with = |extra: &[&'static str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        a
    };
    let good = ["--audience", "herald", "--issuer", "https://idp.test"];
    accepted(&hub, &mint(&with(&good)).await).await;
    // nbf a little ahead of the pod's clock (within the 30 s leeway) passes.
    accepted(
        &hub,
        &mint(&with(&[&good[..], &["--not-before", "10s"]].concat())).await,
    )
    .await;

    let cases: [(&[&str], &str); 5] = [
        (
            &["--audience", "other", "--issuer", "https://idp.test"],
            "wrong audience",
        ),
        (&["--issuer", "https://idp.test"], "wrong audience"),
        (
            &["--audience", "herald", "--issuer", "https://evil.test"],
            "wrong issuer",
        ),
        (&["--audience", "herald"], "wrong issuer"),
        (
            &[
                "--audience",
                "herald",
                "--issuer",
                "https://idp.test",
                "--not-before",
                "5m",
            ],
            "token not valid yet (nbf)",
        ),
    ];
    for (extra, reason) in cases {
        let r = refused(&hub, &mint(&with(extra)).await).await;
        assert_eq!((r.status, r.body.trim()), (401, reason), "{extra:?}");
    }
}

#[tokio::test]
async fn secrets_are_read_from_files() {
    let dir = TempDir::new("secret-files");
    let file = |name: &str, text: &str| {
        let p = dir.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let secret = file("jwt-secret", "file-secret-0123456789\n");
    let api_key = file("api-key", "file-api-key\n\n");
    let hub = Hub::start(&["--jwt-secret-file", &secret, "--api-key-file", &api_key]).await;

    accepted(&hub, &mint(&["--jwt-secret-file", &secret]).await).await;
    accepted(
        &hub,
        &token_with("file-secret-0123456789", "u1", 60, None, None),
    )
    .await;
    let r = refused(&hub, &token("u1", 60, None)).await;
    assert_eq!((r.status, r.body.trim()), (401, "invalid token"));

    let publish = |key: &'static str| {
        let url = format!("{}/api/v1/publish", hub.http());
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(key)
                .json(&json!({"user": "u1", "data": 1}))
                .send()
                .await
                .expect("publish")
                .status()
                .as_u16()
        }
    };
    assert_eq!(publish("file-api-key").await, 202);
    assert_eq!(publish(API_KEY).await, 401);

    // A flag and its file form together, or an empty file: herald does not start.
    let empty = file("empty", "\n");
    for (args, says) in [
        (
            vec![
                "--jwt-secret",
                "flag-secret-value",
                "--jwt-secret-file",
                &secret,
            ],
            "--jwt-secret and --jwt-secret-file are both set",
        ),
        (
            vec!["--jwt-secret-file", &secret, "--api-key-file", &empty],
            "the file is empty",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&args)
            .env_remove("HERALD_JWT_SECRET")
            .env_remove("HERALD_API_KEY")
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert!(
            !stderr.contains("flag-secret-value") && !stderr.contains("file-secret"),
            "{stderr}"
        );
    }
}

fn base64url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}
