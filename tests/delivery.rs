//! Delivery through the HTTP API to real WebSocket sessions: multi-tab, broadcast,
//! device-addressed messages, the forms of `data`, ids and events.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_user_message_reaches_every_tab_of_that_user_only() {
    let hub = Hub::secured(&[]).await;
    let url = |u: &str| hub.ws_url(u, &format!("token={}", token(u, 60, None)));
    let (mut tab1, _) = connect(&url("u1")).await;
    let (mut tab2, _) = connect(&url("u1")).await;
    let (mut other, _) = connect(&url("u2")).await;
    let (status, body) = hub
        .publish(json!({"user": "u1", "event": "order", "data": {"id": "A-1", "total": 12.5}, "id": "msg-1"}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(body["id"], "msg-1");
    for tab in [&mut tab1, &mut tab2] {
        let m = next_json(tab).await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["source"], "user");
        assert_eq!(m["event"], "order");
        assert_eq!(m["id"], "msg-1");
        assert!(m["cursor"].is_string());
        assert_eq!(m["data"], json!({"id": "A-1", "total": 12.5}));
    }
    expect_silence(&mut other, Duration::from_millis(300)).await;
    // Each tab got it exactly once.
    expect_silence(&mut tab1, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn broadcast_reaches_everyone() {
    let hub = Hub::secured(&[]).await;
    let mut sessions = Vec::new();
    for u in ["a", "b", "c"] {
        sessions.push(
            connect(&hub.ws_url(u, &format!("token={}", token(u, 60, None))))
                .await
                .0,
        );
    }
    let (status, _) = hub
        .publish(json!({"broadcast": true, "data": "maintenance at 18:00"}))
        .await;
    assert_eq!(status, 202);
    for ws in &mut sessions {
        let m = next_json(ws).await;
        assert_eq!(m["source"], "broadcast");
        assert_eq!(m["data"], "maintenance at 18:00");
        assert!(m.get("event").is_none());
    }
    assert_eq!(
        hub.metric("herald_messages_out_total{source=\"broadcast\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn device_addressed_messages_reach_that_device_only() {
    let hub = Hub::secured(&[]).await;
    let t = token("shop", 60, None);
    let (mut printer, _) = connect(&hub.ws_url("shop", &format!("token={t}&device=printer"))).await;
    let (mut console, _) = connect(&hub.ws_url("shop", &format!("token={t}&device=console"))).await;
    hub.publish(json!({"user": "shop", "device": "printer", "data": {"print": 1}}))
        .await;
    assert_eq!(next_json(&mut printer).await["data"], json!({"print": 1}));
    expect_silence(&mut console, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn ping_frames_get_pong_and_server_assigns_ids() {
    let hub = Hub::start(&[]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", "")).await;
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut ws).await, json!({"type": "pong"}));
    let (status, body) = hub.publish(json!({"user": "u1", "data": 7})).await;
    assert_eq!(status, 202);
    let m = next_json(&mut ws).await;
    assert_eq!(m["data"], 7);
    assert_eq!(m["id"], body["id"]);
}

#[tokio::test]
async fn resume_without_durable_mode_says_not_recovered() {
    let hub = Hub::start(&[]).await;
    let (_ws, welcome) = connect(&hub.ws_url("u1", "since=abc")).await;
    assert_eq!(welcome["recovered"], false);
    assert_eq!(welcome["replayed"], 0);
}

#[tokio::test]
async fn upstream_publish_frames_are_accepted_in_standalone_mode() {
    let hub = Hub::start(&[]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", "")).await;
    send_text(
        &mut ws,
        r#"{"type":"publish","event":"printed","data":{"id":"A-1"}}"#,
    )
    .await;
    // No error frame comes back, and the hub counts it.
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    assert_eq!(
        hub.metric("herald_messages_in_total{source=\"upstream\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_republished_message_id_is_delivered_once() {
    let hub = Hub::start(&[]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", "")).await;
    for _ in 0..2 {
        let (status, _) = hub
            .publish(json!({"user": "u1", "id": "order-77", "data": 1}))
            .await;
        assert_eq!(status, 202);
    }
    assert_eq!(next_json(&mut ws).await["id"], "order-77");
    expect_silence(&mut ws, Duration::from_millis(300)).await;
}
