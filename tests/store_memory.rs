//! The memory engine, standalone herald's default (PROTOCOL.md §5, §7): a reconnect after
//! a pause recovers, `--history-memory` bounds what is kept (the oldest go first, and a
//! cursor before them does not recover, never partly), and a restart is another epoch.

mod common;

use std::time::Duration;

use common::kept::*;
use common::*;
use serde_json::json;

#[tokio::test]
async fn a_reconnect_after_ten_seconds_gets_what_it_missed() {
    let hub = Hub::secured(&[]).await;
    let (mut ws, _) = connect(&url(&hub, "u1", "")).await;
    publish(&hub, "u1", 0, None).await;
    let c0 = cursor_of(&next_message(&mut ws).await);
    leave(ws).await;
    publish(&hub, "u1", 1, None).await;
    // The Wi-Fi drop: time passes with the user away.
    tokio::time::sleep(Duration::from_secs(10)).await;
    publish(&hub, "u1", 2, None).await;
    let (mut ws, welcome) = connect(&url(&hub, "u1", &since(&c0))).await;
    assert_recovered(&welcome, 2);
    assert_eq!(ns(&read_messages(&mut ws, 2).await), vec![1, 2]);
    publish(&hub, "u1", 3, None).await;
    assert_eq!(n_of(&next_message(&mut ws).await), 3, "then live");
}

#[tokio::test]
async fn the_memory_cap_drops_the_oldest_and_a_cursor_before_them_does_not_recover() {
    const CAP: f64 = 16_384.0;
    let hub = Hub::secured(&["--history-memory", "16KiB"]).await;
    let filler = "x".repeat(1_000);
    let mut cursors = Vec::new();
    for n in 0..100 {
        let (status, v) = hub
            .publish(json!({"user": "u1", "data": {"n": n, "pad": filler}}))
            .await;
        assert_eq!(status, 202, "{v}");
        cursors.push(v["cursor"].as_str().expect("cursor").to_string());
        assert!(
            hub.metric("herald_store_bytes").await <= CAP,
            "the store stays within --history-memory"
        );
    }
    assert!(hub.metric("herald_store_evicted_memory_total").await > 0.0);
    let kept = history_messages(&history(&hub, "u1", "?limit=1000").await);
    assert!(kept.len() > 4 && kept.len() < 20, "kept {}", kept.len());
    assert_eq!(n_of(kept.last().expect("newest kept")), 99);

    let (mut ws, welcome) = connect(&url(&hub, "u1", &since(&cursors[0]))).await;
    assert_not_recovered(&welcome);
    expect_silence(&mut ws, Duration::from_millis(200)).await;
    leave(ws).await;
    let (status, _) = get_text(
        &hub,
        &format!("/api/v1/history/u1?since={}", cursors[0]),
        Some(API_KEY),
    )
    .await;
    assert_eq!(status, 410);

    let (mut ws, welcome) = connect(&url(&hub, "u1", &since(&cursors[95]))).await;
    assert_recovered(&welcome, 4);
    assert_eq!(ns(&read_messages(&mut ws, 4).await), vec![96, 97, 98, 99]);
}

#[tokio::test]
async fn a_cursor_from_before_a_restart_is_another_epoch() {
    let mut hub = Hub::secured(&[]).await;
    let c0 = publish(&hub, "u1", 0, None).await;
    publish(&hub, "u1", 1, None).await;
    hub.signal("KILL");
    hub.wait_exit(WAIT).await;
    let hub = Hub::secured(&[]).await;
    let (_ws, welcome) = connect(&url(&hub, "u1", &since(&c0))).await;
    assert_not_recovered(&welcome);
    let c = publish(&hub, "u1", 2, None).await;
    assert_ne!(cursor_parts(&c).0, cursor_parts(&c0).0, "a new epoch");
}
