//! Connecting and disconnecting 10,000 sessions leaves nothing behind in the registry.

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;

#[tokio::test]
async fn ten_thousand_sessions_leave_no_trace() {
    let hub = Hub::start(&["--max-connections", "20000"]).await;
    const TOTAL: usize = 10_000;
    const BATCH: usize = 500;
    for batch in 0..TOTAL / BATCH {
        let opened = join_all((0..BATCH).map(|i| {
            let n = batch * BATCH + i;
            // Some users have several sessions and some a device, so every index is used.
            let url = hub.ws_url(&format!("user{}", n % 3000), &format!("device=d{}", n % 7));
            async move { connect(&url).await.0 }
        }))
        .await;
        join_all(opened.into_iter().map(|mut ws| async move {
            let _ = tokio::time::timeout(WAIT, ws.close(None)).await;
        }))
        .await;
    }
    let stats = hub
        .wait_json("/api/v1/stats", Duration::from_secs(30), |v| {
            v["connections"] == 0 && v["users"] == 0
        })
        .await;
    assert_eq!(stats["connections"], 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = hub.metrics().await;
        let sizes: Vec<f64> = ["sessions", "users", "devices"]
            .iter()
            .map(|map| metric_value(&m, &format!("herald_registry_entries{{map=\"{map}\"}}")))
            .collect();
        let refused = metric_value(&m, "herald_handshake_refusals_total{status=\"503\"}");
        assert_eq!(refused, 0.0);
        if sizes.iter().all(|s| *s == 0.0)
            && m.contains("herald_registry_entries{map=\"sessions\"}")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "registry not empty: {sizes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
