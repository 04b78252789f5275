//! The per-user session limit counted across pods (PROTOCOL.md §4): with
//! `--max-sessions-per-user 2` on three pods of one NATS, a third session of a user gets
//! 429 on a pod that has heard of the other two, connects racing on several pods settle
//! within a second at the limit with the newest closed 4009, a takeover of a device held
//! on another pod is not refused, and a killed pod's sessions stop counting.

mod common;

use std::time::{Duration, Instant};

use common::*;

async fn pod(nats: &Nats, name: &str) -> Hub {
    let hub = Hub::secured(&[
        "--nats-url",
        &nats.url(),
        "--pod-name",
        name,
        "--max-sessions-per-user",
        "2",
    ])
    .await;
    hub.wait_ready(200).await;
    hub
}

fn url(hub: &Hub, user: &str, extra: &str) -> String {
    hub.ws_url(user, &format!("token={}{extra}", token(user, 60, None)))
}

/// Connect, retrying while the pods have not yet heard of each other's sessions: the
/// status of the first refusal, or None when every attempt got in until `within`.
async fn refused_within(hub: &Hub, user: &str, within: Duration) -> Option<u16> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match try_connect(&url(hub, user, ""), &[]).await {
            Err(r) => return Some(r.status),
            Ok(mut ws) => {
                // Let in before the others' sessions were known: it is closed over the limit.
                let _ = ended(&mut ws, Duration::from_millis(300)).await;
            }
        }
    }
    None
}

/// The close code when the session ends within `within` (0 without a close frame), None
/// while it stays open.
async fn ended(ws: &mut Ws, within: Duration) -> Option<u16> {
    let deadline = Instant::now() + within;
    loop {
        match next_event(ws, deadline.saturating_duration_since(Instant::now())).await {
            WsEvent::Closed(code) => return Some(code),
            WsEvent::Gone(_) => return Some(0),
            WsEvent::Quiet => return None,
            WsEvent::Frame(_) => continue,
        }
    }
}

#[tokio::test]
async fn a_session_over_the_limit_elsewhere_is_refused_429() {
    let nats = Nats::start().await;
    let a = pod(&nats, "pod-a").await;
    let b = pod(&nats, "pod-b").await;
    let (_s1, _) = connect(&url(&a, "u1", "")).await;
    let (_s2, _) = connect(&url(&a, "u1", "")).await;
    assert_eq!(refused_within(&b, "u1", WAIT).await, Some(429));
    // Another user is not affected, nor a takeover of a device held elsewhere.
    let (_other, _) = connect(&url(&b, "u2", "")).await;
    let (mut pos, _) = connect(&url(&a, "u3", "&device=pos")).await;
    let (_s, _) = connect(&url(&a, "u3", "")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_new_pos, _) = connect(&url(&b, "u3", "&device=pos")).await;
    assert_eq!(expect_close(&mut pos, WAIT).await, 4001);
}

#[tokio::test]
async fn racing_connects_on_three_pods_settle_at_the_limit_with_4009() {
    let nats = Nats::start().await;
    let a = pod(&nats, "pod-a").await;
    let b = pod(&nats, "pod-b").await;
    let c = pod(&nats, "pod-c").await;
    let urls: Vec<String> = [&a, &b, &c, &a, &b, &c]
        .iter()
        .map(|h| url(h, "racer", ""))
        .collect();
    let opened = futures_util::future::join_all(urls.iter().map(|u| try_connect(u, &[]))).await;
    let mut sessions: Vec<Ws> = opened.into_iter().filter_map(Result::ok).collect();
    let admitted = sessions.len();
    assert!(admitted >= 2, "at least the limit got in: {admitted}");
    // Within a second of the burst the newest beyond the limit are closed with 4009.
    let settle = Instant::now() + Duration::from_millis(1500);
    let mut open = Vec::new();
    let mut codes = Vec::new();
    for mut ws in sessions.drain(..) {
        let left = settle.saturating_duration_since(Instant::now());
        match ended(&mut ws, left).await {
            Some(code) => codes.push(code),
            None => open.push(ws),
        }
    }
    eprintln!("{admitted} of 6 admitted at once; closed afterwards: {codes:?}");
    assert!(codes.iter().all(|c| *c == 4009), "closes: {codes:?}");
    assert_eq!(open.len(), 2, "{admitted} admitted, closed {codes:?}");
    for ws in &mut open {
        assert_alive(ws).await;
    }
}

#[tokio::test]
async fn a_killed_pods_sessions_stop_counting() {
    let nats = Nats::start().await;
    let mut a = pod(&nats, "pod-a").await;
    let b = pod(&nats, "pod-b").await;
    let (_s1, _) = connect(&url(&a, "u1", "")).await;
    let (_s2, _) = connect(&url(&a, "u1", "")).await;
    assert_eq!(refused_within(&b, "u1", WAIT).await, Some(429));
    a.signal("KILL");
    a.wait_exit(WAIT).await;
    // Once pod-a is declared down (within 10 s), its sessions no longer count.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match try_connect(&url(&b, "u1", ""), &[]).await {
            Ok(_) => break,
            Err(r) => {
                assert_eq!(r.status, 429);
                assert!(Instant::now() < deadline, "pod-a's sessions still count");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}
