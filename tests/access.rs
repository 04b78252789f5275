//! Token revocation and user blocks (PROTOCOL §6) with real processes: refused at the
//! handshake (401 / 403) and at `refresh`, live sessions closed (4003 / 4004) on every pod
//! within 1 s, and the rules kept across restarts (the data directory standalone, a
//! JetStream key-value bucket in NATS mode) and known to a pod started later.

mod common;

use std::time::Duration;

use common::sse;
use common::*;
use serde_json::json;

/// Live sessions must be closed within this long of the answer (§6).
const WITHIN: Duration = Duration::from_secs(1);

fn now() -> u64 {
    herald::auth::now_secs()
}

async fn refusal(hub: &Hub, user: &str, token: &str) -> Refused {
    match try_connect(&hub.ws_url(user, &format!("token={token}")), &[]).await {
        Ok(_) => panic!("{user}: the handshake was not refused"),
        Err(r) => r,
    }
}

async fn open(hub: &Hub, user: &str, token: &str) -> Ws {
    connect(&hub.ws_url(user, &format!("token={token}")))
        .await
        .0
}

#[tokio::test]
async fn revoking_by_iat_closes_old_sessions_and_refuses_old_tokens_but_not_new_ones() {
    let hub = Hub::secured(&[]).await;
    let old = token_marked("u1", 600, Some(now() - 60), None);
    let no_iat = token_marked("u1", 600, None, None);
    let mut a = open(&hub, "u1", &old).await;
    let mut b = open(&hub, "u1", &no_iat).await;
    let mut other = open(&hub, "u2", &token_marked("u2", 600, Some(now() - 60), None)).await;

    let before = now();
    let (status, body) = hub
        .api(
            "POST",
            "/api/v1/users/u1/revoke",
            json!({ "before": before }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], "u1");
    assert_eq!(body["revoked"]["before"], before);

    assert_eq!(expect_close(&mut a, WITHIN).await, 4003);
    assert_eq!(expect_close(&mut b, WITHIN).await, 4003);
    assert_alive(&mut other).await;

    let r = refusal(&hub, "u1", &old).await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("revoked"), "{}", r.body);
    // A token issued at or after the revocation time is good.
    let fresh = token_marked("u1", 600, Some(before), None);
    let mut c = open(&hub, "u1", &fresh).await;
    assert_alive(&mut c).await;
    assert!(hub.metric("herald_access_rules").await >= 1.0);
    assert_eq!(
        hub.metric("herald_access_closed_total{reason=\"revoked\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn revoking_by_jti_closes_that_token_only_and_refresh_refuses_it() {
    let hub = Hub::secured(&[]).await;
    let stolen = token_marked("u1", 600, Some(now()), Some("tok-1"));
    let mine = token_marked("u1", 600, Some(now()), Some("tok-2"));
    let mut thief = open(&hub, "u1", &stolen).await;
    let mut me = open(&hub, "u1", &mine).await;
    let (status, body) = hub
        .api("POST", "/api/v1/users/u1/revoke", json!({ "jti": "tok-1" }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"]["jti"], "tok-1");
    assert_eq!(expect_close(&mut thief, WITHIN).await, 4003);
    assert_alive(&mut me).await;
    // A refresh with the revoked token is refused and changes nothing.
    let answer = refresh(&mut me, &stolen).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "bad_token", "{answer}");
    assert!(
        answer["message"].as_str().unwrap_or("").contains("revoked"),
        "{answer}"
    );
    assert_alive(&mut me).await;
    assert_eq!(refusal(&hub, "u1", &stolen).await.status, 401);
}

#[tokio::test]
async fn a_block_closes_sessions_with_4004_refuses_handshakes_with_403_until_unblocked() {
    let hub = Hub::secured(&[]).await;
    let t = token_marked("u1", 600, Some(now()), None);
    let mut a = open(&hub, "u1", &t).await;
    let (status, body) = hub
        .api(
            "POST",
            "/api/v1/users/u1/block",
            json!({ "until": now() + 600 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["blocked"]["until"].is_u64(), "{body}");
    assert_eq!(expect_close(&mut a, WITHIN).await, 4004);
    let r = refusal(&hub, "u1", &t).await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("blocked"), "{}", r.body);
    // SSE too.
    let path = format!("/sse/u1?token={t}");
    match sse::open(hub.port, &path, &[]).await {
        Ok(_) => panic!("a blocked user's SSE stream was opened"),
        Err(r) => assert_eq!(r.status, 403),
    }
    let (status, body) = hub.api("DELETE", "/api/v1/users/u1/block", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let mut b = open(&hub, "u1", &t).await;
    assert_alive(&mut b).await;
}

#[tokio::test]
async fn a_revoked_sse_session_is_closed_with_4003() {
    let hub = Hub::secured(&[]).await;
    let t = token_marked("u1", 600, Some(now() - 5), None);
    let mut s = sse::open(hub.port, &format!("/sse/u1?token={t}"), &[])
        .await
        .unwrap_or_else(|r| panic!("refused: {r:?}"));
    assert_eq!(s.next_event().await.kind, "welcome");
    let (status, _) = hub
        .api(
            "POST",
            "/api/v1/users/u1/revoke",
            json!({ "before": now() }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.expect_close().await, 4003);
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_reason_and_change_nothing() {
    let hub = Hub::secured(&[]).await;
    for (path, body) in [
        ("/api/v1/users/u1/revoke", json!({})),
        (
            "/api/v1/users/u1/revoke",
            json!({ "before": 1, "jti": "x" }),
        ),
        ("/api/v1/users/u1/revoke", json!({ "before": -5 })),
        ("/api/v1/users/u1/revoke", json!({ "jti": "" })),
        (
            "/api/v1/users/u1/revoke",
            json!({ "before": 1, "colour": "red" }),
        ),
        ("/api/v1/users/u1/block", json!({ "until": now() - 1 })),
        ("/api/v1/users/u1/block", json!({})),
        (
            "/api/v1/users/bad.user/block",
            json!({ "until": now() + 60 }),
        ),
    ] {
        let (status, answer) = hub.api("POST", path, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    assert_eq!(hub.metric("herald_access_rules").await, 0.0);
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/users/u1/revoke", hub.http()))
        .json(&json!({ "before": now() }))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401, "the API key is needed");
}

#[tokio::test]
async fn the_cli_revokes_and_blocks_through_the_api() {
    let hub = Hub::secured(&[]).await;
    let t = token_marked("u1", 600, Some(now() - 5), None);
    let mut a = open(&hub, "u1", &t).await;
    let http = hub.http();
    let out = herald_cli(&[
        "revoke",
        "u1",
        "--before",
        "now",
        "--http",
        &http,
        "--api-key",
        API_KEY,
    ])
    .await;
    assert!(out.contains("\"revoked\""), "{out}");
    assert_eq!(expect_close(&mut a, WITHIN).await, 4003);
    let fresh = token_marked("u1", 600, Some(now() + 1), None);
    let mut b = open(&hub, "u1", &fresh).await;
    herald_cli(&[
        "block",
        "u1",
        "--for",
        "10m",
        "--http",
        &http,
        "--api-key",
        API_KEY,
    ])
    .await;
    assert_eq!(expect_close(&mut b, WITHIN).await, 4004);
    herald_cli(&[
        "block",
        "u1",
        "--remove",
        "--http",
        &http,
        "--api-key",
        API_KEY,
    ])
    .await;
    let mut c = open(&hub, "u1", &fresh).await;
    assert_alive(&mut c).await;
}

#[tokio::test]
async fn standalone_durable_keeps_rules_in_the_data_dir_across_a_restart() {
    let dir = TempDir::new("access-disk");
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let data = data.to_str().expect("utf-8 path");
    let args = ["--durable", "--data-dir", data];
    let hub = Hub::secured(&args).await;
    let old = token_marked("u1", 600, Some(now() - 60), None);
    let (status, _) = hub
        .api(
            "POST",
            "/api/v1/users/u1/revoke",
            json!({ "before": now() }),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = hub
        .api(
            "POST",
            "/api/v1/users/u2/block",
            json!({ "until": now() + 600 }),
        )
        .await;
    assert_eq!(status, 200);
    drop(hub);
    let hub = Hub::secured(&args).await;
    assert_eq!(refusal(&hub, "u1", &old).await.status, 401);
    let u2 = token_marked("u2", 600, Some(now()), None);
    assert_eq!(refusal(&hub, "u2", &u2).await.status, 403);
}

fn pod_args<'a>(nats: &'a str, name: &'a str) -> Vec<&'a str> {
    vec![
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--nats-url",
        nats,
        "--pod-name",
        name,
    ]
}

#[tokio::test]
async fn across_pods_within_a_second_and_known_to_a_pod_started_later() {
    let nats = Nats::start_js().await;
    let url = nats.url();
    let a = Hub::start(&pod_args(&url, "pod-a")).await;
    let b = Hub::start(&pod_args(&url, "pod-b")).await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let old = token_marked("u1", 600, Some(now() - 60), None);
    let mut on_b = open(&b, "u1", &old).await;
    let mut blocked_on_b = open(&b, "u2", &token_marked("u2", 600, Some(now()), None)).await;
    // Both pods must know each other before a control message from one is acted on.
    b.wait_json("/api/v1/stats", WAIT, |s| {
        s["pods"].as_array().is_some_and(|p| p.len() == 2)
    })
    .await;

    let (status, body) = a
        .api(
            "POST",
            "/api/v1/users/u1/revoke",
            json!({ "before": now() }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(expect_close(&mut on_b, WITHIN).await, 4003);
    let (status, _) = a
        .api(
            "POST",
            "/api/v1/users/u2/block",
            json!({ "until": now() + 600 }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(expect_close(&mut blocked_on_b, WITHIN).await, 4004);
    assert_eq!(refusal(&b, "u1", &old).await.status, 401);

    // A pod that starts after the changes reads them from the bucket.
    let c = Hub::start(&pod_args(&url, "pod-c")).await;
    c.wait_ready(200).await;
    assert_eq!(refusal(&c, "u1", &old).await.status, 401);
    let u2 = token_marked("u2", 600, Some(now()), None);
    assert_eq!(refusal(&c, "u2", &u2).await.status, 403);
    // Unblocking on one pod reaches the others.
    let (status, _) = c.api("DELETE", "/api/v1/users/u2/block", json!({})).await;
    assert_eq!(status, 200);
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        match try_connect(&a.ws_url("u2", &format!("token={u2}")), &[]).await {
            Ok(_) => break,
            Err(r) => {
                assert_eq!(r.status, 403);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still blocked on pod-a"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
