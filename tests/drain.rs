//! Graceful drain on SIGTERM: readiness turns 503, new upgrades get 503, open sessions
//! are closed with 1012 spread over the drain window, and the process exits 0.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn sigterm_drains_sessions_with_1012_over_the_window_and_exits_0() {
    let mut hub = Hub::start(&["--drain-timeout", "2s"]).await;
    let mut sessions = Vec::new();
    for i in 0..10 {
        sessions.push(connect(&hub.ws_url(&format!("u{i}"), "")).await.0);
    }
    let started = Instant::now();
    hub.signal("TERM");
    hub.wait_ready(503).await;
    let r = try_connect(&hub.ws_url("late", ""), &[])
        .await
        .expect_err("refused while draining");
    assert_eq!(r.status, 503);
    // Read every session concurrently so each close is timed when it arrives.
    let closed_at: Vec<Duration> =
        futures_util::future::join_all(sessions.iter_mut().map(|ws| async move {
            assert_eq!(expect_close(ws, WAIT).await, 1012);
            started.elapsed()
        }))
        .await;
    // Spread over the 2 s window, not all at once.
    let last = *closed_at.iter().max().unwrap();
    let first = *closed_at.iter().min().unwrap();
    assert!(
        last - first >= Duration::from_millis(1000),
        "closes between {first:?} and {last:?}: not spread"
    );
    assert_eq!(hub.wait_exit(Duration::from_secs(15)).await, Some(0));
}

#[tokio::test]
async fn the_drain_ends_as_soon_as_no_session_is_left() {
    let mut hub = Hub::start(&["--drain-timeout", "30s"]).await;
    let (mut first, _) = connect(&hub.ws_url("a", "")).await;
    let (mut second, _) = connect(&hub.ws_url("b", "")).await;
    let started = Instant::now();
    hub.signal("TERM");
    hub.wait_ready(503).await;
    // The drain closes one session at once and the other only 15 s in; both clients leave
    // by themselves now (closing one the drain already closed is harmless).
    for ws in [&mut first, &mut second] {
        let _ = ws.close(None).await;
        let _ = close_code_or_gone(ws, WAIT).await;
    }
    assert_eq!(hub.wait_exit(Duration::from_secs(25)).await, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drain waited {:?} with no session left",
        started.elapsed()
    );
}
