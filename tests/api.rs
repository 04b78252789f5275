//! The HTTP API: API key, publish validation, presence, stats, disconnect (4004), probes
//! and metrics.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn api_needs_the_key_but_probes_do_not() {
    let hub = Hub::secured(&[]).await;
    let client = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/api/v1/stats"),
        ("GET", "/api/v1/presence/u1"),
        ("POST", "/api/v1/publish"),
    ] {
        let r = client
            .request(method.parse().unwrap(), format!("{}{path}", hub.http()))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            reqwest::get(format!("{}{path}", hub.http()))
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
}

#[tokio::test]
async fn api_without_a_key_is_open_on_loopback() {
    let hub = Hub::start(&[]).await;
    let r = reqwest::get(format!("{}/api/v1/stats", hub.http()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn bad_publish_requests_get_400_with_a_reason() {
    let hub = Hub::secured(&[]).await;
    for body in [
        json!({"data": 1}),
        json!({"user": "a.b"}),
        json!({"user": "u", "broadcast": true}),
        json!({"user": "u", "bogus": 1}),
        json!({"user": "u", "event": "a\nb"}),
        json!({"user": "u", "id": "x\r"}),
    ] {
        let (status, v) = hub.publish(body.clone()).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}: {v}"
        );
    }
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/publish", hub.http()))
        .bearer_auth(API_KEY)
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn presence_and_stats_follow_sessions() {
    let hub = Hub::secured(&[]).await;
    let (_, p) = hub.get_json("/api/v1/presence/u1").await;
    assert_eq!(
        p,
        json!({"user": "u1", "online": false, "sessions": 0, "pods": []})
    );
    let url = |u: &str| hub.ws_url(u, &format!("token={}", token(u, 60, None)));
    let (_a, welcome) = connect(&url("u1")).await;
    let (_b, _) = connect(&url("u1")).await;
    let (_c, _) = connect(&url("u2")).await;
    let pod = welcome["pod"].as_str().unwrap().to_string();
    let (status, p) = hub.get_json("/api/v1/presence/u1").await;
    assert_eq!(status, 200);
    assert_eq!(
        p,
        json!({"user": "u1", "online": true, "sessions": 2, "pods": [pod]})
    );
    let (_, s) = hub.get_json("/api/v1/stats").await;
    assert_eq!(s["connections"], 3);
    assert_eq!(s["users"], 2);
    assert_eq!(
        s["pods"],
        json!([{"pod": pod, "connections": 3, "users": 2, "topics": 0}])
    );
    let metrics = hub.metrics().await;
    assert_eq!(metric_value(&metrics, "herald_connections"), 3.0);
    assert_eq!(metric_value(&metrics, "herald_users"), 2.0);
    for name in [
        "herald_delivery_latency_seconds_bucket",
        "herald_bytes_out_total",
        "herald_handshake_refusals",
        "herald_closes",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn disconnect_closes_every_session_of_the_user_with_4004() {
    let hub = Hub::secured(&[]).await;
    let url = |u: &str| hub.ws_url(u, &format!("token={}", token(u, 60, None)));
    let (mut a, _) = connect(&url("u1")).await;
    let (mut b, _) = connect(&url("u1")).await;
    let (mut other, _) = connect(&url("u2")).await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/users/u1/disconnect", hub.http()))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(expect_close(&mut a, WAIT).await, 4004);
    assert_eq!(expect_close(&mut b, WAIT).await, 4004);
    expect_silence(&mut other, std::time::Duration::from_millis(300)).await;
}

#[tokio::test]
async fn herald_publish_over_http_delivers() {
    let hub = Hub::start(&[]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", "")).await;
    let stdout = herald_cli(&[
        "publish",
        "--http",
        &hub.http(),
        "--user",
        "u1",
        "--event",
        "order",
        r#"{"id":"A-9"}"#,
    ])
    .await;
    let m = next_json(&mut ws).await;
    assert_eq!(m["event"], "order");
    assert_eq!(m["data"], json!({"id": "A-9"}));
    assert_eq!(m["id"], stdout);
}
