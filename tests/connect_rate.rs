//! Admission under a reconnect storm (PROTOCOL.md §4, `--connect-rate`): beyond the pod's
//! handshakes per second (burst of one second) the upgrade completes and the session is
//! closed at once with 1013, over WebSocket and SSE, counted in the closes metric; the
//! bucket refills.

mod common;

use std::time::Duration;

use common::sse;
use common::*;

/// Open `n` WebSocket sessions at once: (welcomed, closed with 1013, anything else).
async fn burst(hub: &Hub, n: usize) -> (usize, usize, Vec<String>) {
    let urls: Vec<String> = (0..n)
        .map(|i| {
            hub.ws_url(
                &format!("u{i}"),
                &format!("token={}", token(&format!("u{i}"), 60, None)),
            )
        })
        .collect();
    let results = futures_util::future::join_all(urls.iter().map(|u| try_open(u))).await;
    let (mut welcomed, mut later, mut other) = (0, 0, Vec::new());
    for r in results {
        match r {
            Ok(_) => welcomed += 1,
            Err(e) if e.contains("1013") || e.contains("Again") => later += 1,
            Err(e) => other.push(e),
        }
    }
    (welcomed, later, other)
}

#[tokio::test]
async fn handshakes_beyond_the_rate_are_closed_with_1013_and_the_bucket_refills() {
    let hub = Hub::secured(&["--connect-rate", "5"]).await;
    let (welcomed, later, other) = burst(&hub, 30).await;
    assert!(other.is_empty(), "{other:?}");
    assert!((5..=8).contains(&welcomed), "{welcomed} welcomed");
    assert_eq!(welcomed + later, 30);
    assert_eq!(
        hub.metric("herald_closes_total{code=\"1013\"}").await,
        later as f64
    );

    // An SSE stream over the rate opens and ends with a close event of 1013.
    let t = token("s1", 60, None);
    let mut seen_1013 = false;
    for _ in 0..10 {
        let mut s = sse::open(hub.port, &format!("/sse/s1?token={t}"), &[])
            .await
            .unwrap_or_else(|r| panic!("refused: {r:?}"));
        let ev = s.next_event().await;
        if ev.kind == "close" {
            assert_eq!(ev.json()["code"], 1013, "{ev:?}");
            seen_1013 = true;
            break;
        }
    }
    assert!(seen_1013, "an SSE stream over the rate gets 1013");

    // A second later the bucket is full again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (welcomed, _, other) = burst(&hub, 5).await;
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(welcomed, 5);
}
