//! herald's two NATS connections (the NATS client and the interest connection) against a
//! real nats-server with TLS and a client certificate (a test CA made with `openssl`), and
//! in operator mode with a credentials file (operator, account and user JWTs made here
//! with NKeys): both connections up, interest held on the TLS/authenticated connection
//! while the user is connected, messages delivered; and no fallback to plain TCP or to
//! unauthenticated connections when TLS or the credentials fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{json, Value};

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("pki");
        let d = &dir.0;
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=herald-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        for (name, usage, san) in [
            (
                "server",
                "serverAuth",
                "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
            ),
            ("client", "clientAuth", ""),
        ] {
            std::fs::write(
                d.join(format!("{name}.ext")),
                format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{san}"),
            )
            .unwrap();
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN=herald-test-{name}"),
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &format!("{name}.pem"),
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            );
        }
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.0.join(file).to_string_lossy().into_owned()
    }

    /// The server's `tls` block: client certificates required and checked against the CA.
    fn nats_conf(&self) -> String {
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  \
             verify: true\n  timeout: 3\n}}\n",
            self.path("server.pem"),
            self.path("server.key"),
            self.path("ca.pem")
        )
    }

    fn client_flags(&self) -> Vec<String> {
        vec![
            "--nats-tls-ca".into(),
            self.path("ca.pem"),
            "--nats-tls-cert".into(),
            self.path("client.pem"),
            "--nats-tls-key".into(),
            self.path("client.key"),
        ]
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn url(hub: &Hub, user: &str) -> String {
    hub.ws_url(user, &format!("token={}", token(user, 60, None)))
}

/// The server's connections named `pod`.
async fn connections_of(nats: &Nats, pod: &str) -> Vec<Value> {
    nats.connz().await["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == pod)
        .cloned()
        .collect()
}

/// A user connected, its subject held by the pod, an HTTP publish delivered through NATS,
/// and the subject released when the user leaves.
async fn deliver_through(nats: &Nats, hub: &Hub, pod: &str) {
    let (mut ws, _) = connect(&url(hub, "u1")).await;
    let subs = nats.subs_of(pod).await;
    assert!(subs.contains(&"herald.user.u1".to_string()), "{subs:?}");
    let (status, _) = hub
        .publish(json!({"user": "u1", "event": "order", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 202);
    let m = next_json(&mut ws).await;
    assert_eq!(m["data"]["n"], 1, "{m}");
    ws.close(None).await.unwrap();
    let _ = close_code_or_gone(&mut ws, WAIT).await;
    nats.wait_subs(pod, |s| !s.iter().any(|x| x == "herald.user.u1"))
        .await;
}

/// Wait until herald's log says `what`.
async fn wait_log(log: &Path, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "herald never logged {what:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready_status(hub: &Hub) -> u16 {
    reqwest::get(format!("{}/readyz", hub.http()))
        .await
        .expect("readyz answers")
        .status()
        .as_u16()
}

fn secured(extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = ["--jwt-secret", SECRET, "--api-key", API_KEY]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend_from_slice(extra);
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn both_connections_use_tls_with_the_client_certificate() {
    let pki = Pki::new();
    let nats = Nats::start_with_config_no_js(&[("tls.conf", &pki.nats_conf())]).await;
    let mut flags = vec![
        "--nats-url".to_string(),
        format!("tls://127.0.0.1:{}", nats.port),
        "--pod-name".into(),
        "pod-tls".into(),
    ];
    flags.extend(pki.client_flags());
    let hub = Hub::secured(&strs(&flags)).await;
    hub.wait_ready(200).await;
    let conns = connections_of(&nats, "pod-tls").await;
    assert_eq!(
        conns.len(),
        2,
        "the NATS client and the interest connection: {conns:?}"
    );
    for c in &conns {
        assert!(
            c["tls_version"].as_str().is_some_and(|v| !v.is_empty()),
            "every connection of the pod is TLS: {c}"
        );
    }
    deliver_through(&nats, &hub, "pod-tls").await;
    assert_eq!(hub.metric("herald_bus_connected").await, 1.0);
}

#[tokio::test]
async fn a_nats_url_without_tls_scheme_still_uses_tls_when_the_files_are_given() {
    let pki = Pki::new();
    let nats = Nats::start_with_config_no_js(&[("tls.conf", &pki.nats_conf())]).await;
    let mut flags = vec![
        "--nats-url".to_string(),
        nats.url(),
        "--pod-name".into(),
        "pod-tls2".into(),
    ];
    flags.extend(pki.client_flags());
    let hub = Hub::secured(&strs(&flags)).await;
    hub.wait_ready(200).await;
    deliver_through(&nats, &hub, "pod-tls2").await;
}

#[tokio::test]
async fn without_the_client_certificate_herald_is_not_ready_and_says_why() {
    let pki = Pki::new();
    let nats = Nats::start_with_config_no_js(&[("tls.conf", &pki.nats_conf())]).await;
    let dir = TempDir::new("tls-log");
    let log = dir.0.join("herald.log");
    let flags = secured(&[
        "--nats-url".into(),
        format!("tls://127.0.0.1:{}", nats.port),
        "--nats-tls-ca".into(),
        pki.path("ca.pem"),
        "--pod-name".into(),
        "pod-nocert".into(),
    ]);
    let hub = Hub::start_logged(&strs(&flags), "warn", &log).await;
    wait_log(&log, "NATS interest connection failed").await;
    assert_eq!(ready_status(&hub).await, 503);
    assert!(connections_of(&nats, "pod-nocert").await.is_empty());
}

#[tokio::test]
async fn tls_asked_for_is_never_given_up_for_plain_tcp() {
    // A plain server: herald asked for TLS (tls:// and a CA) and must not connect.
    let nats = Nats::start().await;
    let pki = Pki::new();
    let dir = TempDir::new("tls-log");
    let log = dir.0.join("herald.log");
    let flags = secured(&[
        "--nats-url".into(),
        format!("tls://127.0.0.1:{}", nats.port),
        "--nats-tls-ca".into(),
        pki.path("ca.pem"),
        "--pod-name".into(),
        "pod-plain".into(),
    ]);
    let hub = Hub::start_logged(&strs(&flags), "warn", &log).await;
    wait_log(&log, "TLS is required but the server offers none").await;
    assert_eq!(ready_status(&hub).await, 503);
    assert!(connections_of(&nats, "pod-plain").await.is_empty());
}

#[tokio::test]
async fn bad_tls_files_stop_herald_at_start_with_the_file_named() {
    let dir = TempDir::new("tls-bad");
    let junk = dir.0.join("junk.pem");
    std::fs::write(&junk, "not PEM\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--nats-url", "nats://127.0.0.1:1", "--nats-tls-ca"])
        .arg(&junk)
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("herald exits in time")
        .expect("herald runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--nats-tls-ca") && stderr.contains("junk.pem"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// Operator mode: JWTs signed with NKeys, as `nsc` makes them.

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A NATS JWT of `claims` (with `iss`, `iat`, `jti` added) signed by `signer`.
fn nats_jwt(signer: &nkeys::KeyPair, mut claims: Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    claims["iss"] = signer.public_key().into();
    claims["iat"] = now.into();
    claims["jti"] = b64(&now.to_be_bytes()).into();
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = b64(claims.to_string().as_bytes());
    let signed = format!("{header}.{body}");
    let sig = signer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&sig))
}

/// An operator, one account and one user: the server's configuration and the user's
/// credentials file text (with `seed` in place of the user's own when given).
struct Operator {
    conf: String,
    user_jwt: String,
    user_seed: String,
}

impl Operator {
    fn new(dir: &Path) -> Operator {
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let user = nkeys::KeyPair::new_user();
        let op_jwt = nats_jwt(
            &operator,
            json!({"sub": operator.public_key(), "name": "herald-test",
                   "nats": {"type": "operator", "version": 2}}),
        );
        let unlimited = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1,
                               "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
        let acc_jwt = nats_jwt(
            &operator,
            json!({"sub": account.public_key(), "name": "HERALD",
                   "nats": {"limits": unlimited, "type": "account", "version": 2}}),
        );
        let user_jwt = nats_jwt(
            &account,
            json!({"sub": user.public_key(), "name": "herald",
                   "nats": {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                            "type": "user", "version": 2}}),
        );
        let op_file = dir.join("operator.jwt");
        std::fs::write(&op_file, &op_jwt).unwrap();
        let conf = format!(
            "operator: \"{}\"\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{acc_jwt}\"\n}}\n",
            op_file.display(),
            account.public_key()
        );
        Operator {
            conf,
            user_jwt,
            user_seed: user.seed().unwrap(),
        }
    }

    fn creds_file(&self, dir: &Path, name: &str, seed: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n",
                self.user_jwt
            ),
        )
        .unwrap();
        path
    }
}

#[tokio::test]
async fn a_credentials_file_authenticates_both_connections() {
    let dir = TempDir::new("operator");
    let op = Operator::new(&dir.0);
    let nats = Nats::start_with_config_no_js(&[("operator.conf", &op.conf)]).await;
    let creds = op.creds_file(&dir.0, "herald.creds", &op.user_seed);
    let flags = [
        "--nats-url".to_string(),
        nats.url(),
        "--nats-creds".into(),
        creds.to_string_lossy().into_owned(),
        "--pod-name".into(),
        "pod-creds".into(),
    ];
    let hub = Hub::secured(&strs(&flags)).await;
    hub.wait_ready(200).await;
    let conns = connections_of(&nats, "pod-creds").await;
    assert_eq!(
        conns.len(),
        2,
        "the NATS client and the interest connection: {conns:?}"
    );
    deliver_through(&nats, &hub, "pod-creds").await;
}

#[tokio::test]
async fn a_credentials_file_with_the_wrong_seed_is_refused_on_both_connections() {
    let dir = TempDir::new("operator");
    let op = Operator::new(&dir.0);
    let nats = Nats::start_with_config_no_js(&[("operator.conf", &op.conf)]).await;
    let other = nkeys::KeyPair::new_user().seed().unwrap();
    let creds = op.creds_file(&dir.0, "wrong.creds", &other);
    let log = dir.0.join("herald.log");
    let flags = secured(&[
        "--nats-url".into(),
        nats.url(),
        "--nats-creds".into(),
        creds.to_string_lossy().into_owned(),
        "--pod-name".into(),
        "pod-wrong".into(),
    ]);
    let hub = Hub::start_logged(&strs(&flags), "warn", &log).await;
    let text = wait_log(&log, "NATS interest connection failed").await;
    assert!(
        text.to_ascii_lowercase().contains("authorization"),
        "the server's refusal is named: {text}"
    );
    assert!(!text.contains(&other), "the seed is never logged");
    assert_eq!(ready_status(&hub).await, 503);
    assert!(connections_of(&nats, "pod-wrong").await.is_empty());
}
