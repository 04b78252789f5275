//! Handshake refusals and authentication: every refusal status with its reason, the three
//! places a token may travel, RS256/ES256 keys, and 4003 when a token expires mid-session.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn bad_user_ids_and_plain_http_get_400_with_a_reason() {
    let hub = Hub::secured(&[]).await;
    for bad in ["a.b", "a%20b", "a*", &"x".repeat(129)] {
        let r = try_connect(&hub.ws_url(bad, ""), &[])
            .await
            .expect_err("must be refused");
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.body.contains("bad user id"), "{bad}: {}", r.body);
        assert_eq!(r.body.lines().count(), 1);
    }
    let r = reqwest::get(format!("{}/websocket/u1", hub.http()))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.text().await.unwrap().trim(), "not a WebSocket request");
    let r = try_connect(&hub.ws_url("u1", "device=a.b"), &[])
        .await
        .expect_err("bad device");
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn missing_invalid_expired_and_foreign_tokens_get_401() {
    let hub = Hub::secured(&[]).await;
    let cases = [
        (String::new(), "missing token"),
        ("token=not-a-jwt".to_string(), "invalid token"),
        (
            format!("token={}", token_with("other-secret", "u1", 60, None, None)),
            "invalid token",
        ),
        (format!("token={}", token("u1", -5, None)), "token expired"),
        (format!("token={}", token("u2", 60, None)), "does not match"),
    ];
    for (query, reason) in cases {
        let r = try_connect(&hub.ws_url("u1", &query), &[])
            .await
            .expect_err("must be refused");
        assert_eq!(r.status, 401, "{query}");
        assert!(r.body.contains(reason), "{query}: {}", r.body);
    }
    assert!(
        hub.metric("herald_handshake_refusals_total{status=\"401\"}")
            .await
            >= 5.0
    );
}

#[tokio::test]
async fn token_is_accepted_from_query_header_or_cookie_first_found_wins() {
    let hub = Hub::secured(&[]).await;
    let good = token("u1", 60, None);
    let (_ws, welcome) = connect(&hub.ws_url("u1", &format!("token={good}"))).await;
    assert_eq!(welcome["user"], "u1");
    assert!(welcome["heartbeat_ms"].as_u64().unwrap() > 0);
    let bearer = format!("Bearer {good}");
    assert!(
        try_connect(&hub.ws_url("u1", ""), &[("authorization", &bearer)])
            .await
            .is_ok()
    );
    let cookie = format!("herald_token={good}");
    assert!(try_connect(&hub.ws_url("u1", ""), &[("cookie", &cookie)])
        .await
        .is_ok());
    // The query wins over a valid header: a bad query token is refused.
    let r = try_connect(
        &hub.ws_url("u1", "token=bad"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(r.expect_err("query wins").status, 401);
}

#[tokio::test]
async fn session_is_closed_with_4003_when_its_token_expires() {
    let hub = Hub::secured(&[]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", &format!("token={}", token("u1", 2, None)))).await;
    assert_eq!(expect_close(&mut ws, Duration::from_secs(6)).await, 4003);
}

#[tokio::test]
async fn unsigned_mode_needs_no_token_on_loopback() {
    let hub = Hub::start(&[]).await;
    let (_ws, welcome) = connect(&hub.ws_url("anyone", "")).await;
    assert_eq!(welcome["user"], "anyone");
}

#[tokio::test]
async fn herald_refuses_to_start_unsigned_off_loopback() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("HERALD_JWT_SECRET")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no JWT key"));
}

fn openssl(args: &[&str]) -> bool {
    std::process::Command::new("openssl")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn rs256_and_es256_public_keys_verify_tokens() {
    let dir = TempDir::new("keys");
    let d = |f: &str| dir.0.join(f).to_string_lossy().into_owned();
    assert!(openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &d("rsa.pem")
    ]));
    assert!(openssl(&[
        "pkey",
        "-in",
        &d("rsa.pem"),
        "-pubout",
        "-out",
        &d("rsa.pub")
    ]));
    assert!(openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        &d("ec.pem")
    ]));
    assert!(openssl(&[
        "pkey",
        "-in",
        &d("ec.pem"),
        "-pubout",
        "-out",
        &d("ec.pub")
    ]));
    for (private, public) in [("rsa.pem", "rsa.pub"), ("ec.pem", "ec.pub")] {
        let hub = Hub::start(&["--jwt-public-key", &d(public)]).await;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([
                "token",
                "--user",
                "u1",
                "--ttl",
                "1m",
                "--jwt-private-key",
                &d(private),
            ])
            .output()
            .expect("herald token runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let (_ws, welcome) = connect(&hub.ws_url("u1", &format!("token={t}"))).await;
        assert_eq!(welcome["user"], "u1");
        // An HS256 token cannot pass where a public key is configured.
        let hs = token("u1", 60, None);
        assert_eq!(
            try_connect(&hub.ws_url("u1", &format!("token={hs}")), &[])
                .await
                .expect_err("refused")
                .status,
            401
        );
    }
}
