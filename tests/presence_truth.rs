//! Presence tells the truth while a session closes (PROTOCOL.md §1): a session herald
//! cuts off (here a slow consumer, 4008) is offline from the decision on, not when its
//! close handshake ends: with a 5 s close grace and a client that never reads, presence
//! says offline at once and the connection still counts until the grace ends.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_slow_consumer_is_offline_as_soon_as_herald_decides_to_close_it() {
    let hub = Hub::secured(&["--outbound-queue-bytes", "4096", "--close-grace", "5s"]).await;
    let url = hub.ws_url("u1", &format!("token={}", token("u1", 60, None)));
    // Connected and then never read again.
    let (_ws, _) = connect(&url).await;
    let (_, p) = hub.get_json("/api/v1/presence/u1").await;
    assert_eq!(p["online"], true, "{p}");
    let pad = "x".repeat(60_000);
    let started = Instant::now();
    let mut offline_after = None;
    for _ in 0..200 {
        let (status, _) = hub
            .publish(json!({"user": "u1", "data": {"pad": pad}}))
            .await;
        assert_eq!(status, 202);
        let (_, p) = hub.get_json("/api/v1/presence/u1").await;
        if p["online"] == false {
            offline_after = Some(started.elapsed());
            break;
        }
    }
    let offline_after = offline_after.expect("the slow consumer was cut off");
    assert!(
        offline_after < Duration::from_secs(3),
        "offline {offline_after:?} after the flood began, before the 5 s grace could end"
    );
    // Still counted against the pod's connections until its close grace is over.
    assert_eq!(hub.metric("herald_connections").await, 1.0);
    let (_, stats) = hub.get_json("/api/v1/stats").await;
    assert_eq!(stats["users"], 0, "{stats}");
}
