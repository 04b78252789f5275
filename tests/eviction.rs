//! Idle eviction: a client that stops answering is closed with 4002 and leaves presence
//! within the idle timeout, even when its socket is jammed with unread data.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_silent_client_is_evicted_with_4002() {
    let hub = Hub::start(&["--heartbeat", "300ms", "--idle-timeout", "1500ms"]).await;
    let (mut ws, _) = connect(&hub.ws_url("quiet", "")).await;
    // Not reading means pings go unanswered. The event to await is the presence change.
    let p = hub
        .wait_json("/api/v1/presence/quiet", WAIT, |v| v["online"] == false)
        .await;
    assert_eq!(p["sessions"], 0);
    assert_eq!(hub.metric("herald_closes_total{code=\"4002\"}").await, 1.0);
    // The close frame is in the socket; reading it may instead hit the closed socket
    // while the client answers the queued pings, which is fine too.
    if let Some(code) = close_code_or_gone(&mut ws, WAIT).await {
        assert_eq!(code, 4002);
    }
}

#[tokio::test]
async fn a_client_answering_pings_is_not_evicted() {
    let hub = Hub::start(&["--heartbeat", "200ms", "--idle-timeout", "1s"]).await;
    let (mut ws, _) = connect(&hub.ws_url("alive", "")).await;
    // Reading answers pings automatically; nothing but pings arrives for 2.5 idle timeouts.
    expect_silence(&mut ws, Duration::from_millis(2500)).await;
    let p = hub
        .wait_json("/api/v1/presence/alive", WAIT, |v| v.is_object())
        .await;
    assert_eq!(p["online"], true);
}

#[tokio::test]
async fn a_jammed_client_is_evicted_within_the_idle_timeout() {
    let hub = Hub::start(&[
        "--heartbeat",
        "300ms",
        "--idle-timeout",
        "2s",
        "--outbound-queue-bytes",
        "268435456",
    ])
    .await;
    let (_ws, _) = connect(&hub.ws_url("jammed", "")).await;
    let started = Instant::now();
    let payload = "z".repeat(64_000);
    // Fill the socket buffers: the client never reads.
    for _ in 0..150 {
        hub.publish(json!({"user": "jammed", "data": payload}))
            .await;
    }
    let p = hub
        .wait_json("/api/v1/presence/jammed", Duration::from_secs(6), |v| {
            v["online"] == false
        })
        .await;
    assert_eq!(p["sessions"], 0);
    assert!(hub.metric("herald_closes_total{code=\"4002\"}").await >= 1.0);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}
