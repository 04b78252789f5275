//! Per-session limits: bad frames (error, then 1008), binary frames, oversized frames
//! (1009), the upstream rate limit (error, then 4029) and the outbound queue (4008).

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn bad_frames_get_error_frames_then_1008() {
    let hub = Hub::start(&[]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", "")).await;
    for bad in ["hello", r#"{"type":"nope"}"#, "[1,2]"] {
        send_text(&mut ws, bad).await;
        let e = next_json(&mut ws).await;
        assert_eq!(e["type"], "error", "{bad}");
        assert_eq!(e["code"], "bad_frame");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "bad_frame");
    // Still usable after a few mistakes.
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    for _ in 0..10 {
        if ws.send(Message::text("garbage")).await.is_err() {
            break;
        }
    }
    assert_eq!(expect_close(&mut ws, WAIT).await, 1008);
}

#[tokio::test]
async fn frames_over_the_limit_close_with_1009() {
    let hub = Hub::start(&["--max-frame-bytes", "1024"]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", "")).await;
    let big = format!(r#"{{"type":"publish","data":"{}"}}"#, "x".repeat(2000));
    send_text(&mut ws, &big).await;
    assert_eq!(expect_close(&mut ws, WAIT).await, 1009);
}

#[tokio::test]
async fn upstream_flood_gets_an_error_then_4029() {
    let hub = Hub::start(&["--upstream-rate", "5"]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", "")).await;
    // Burst is 2x the rate: 10 frames pass, the 11th is refused with an error frame.
    for _ in 0..10 {
        send_text(&mut ws, r#"{"type":"ping"}"#).await;
    }
    for _ in 0..10 {
        assert_eq!(next_json(&mut ws).await["type"], "pong");
    }
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "rate_limited");
    for _ in 0..20 {
        if ws.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
            break;
        }
    }
    assert_eq!(expect_close(&mut ws, WAIT).await, 4029);
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_as_slow_consumer() {
    let hub = Hub::start(&["--outbound-queue-bytes", "65536", "--idle-timeout", "60s"]).await;
    let (_ws, _) = connect(&hub.ws_url("slow", "")).await;
    let payload = "y".repeat(60_000);
    // Publish far more than socket buffers and the queue can hold while the client
    // never reads.
    let mut closed = false;
    for _ in 0..400 {
        hub.publish(json!({"user": "slow", "data": payload})).await;
        if hub.metric("herald_closes_total{code=\"4008\"}").await >= 1.0 {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "no 4008 close after 24 MB queued to a client that does not read"
    );
    let p = hub
        .wait_json("/api/v1/presence/slow", WAIT, |v| v["online"] == false)
        .await;
    assert_eq!(p["sessions"], 0);
}

#[tokio::test]
async fn server_pings_every_heartbeat() {
    let hub = Hub::start(&["--heartbeat", "200ms", "--idle-timeout", "5s"]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", "")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut pings = 0;
    while pings < 3 {
        match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut ws)).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(_))) => {}
            other => panic!("expected pings, got {other:?}"),
        }
    }
}
