//! The Server-Sent Events fallback (PROTOCOL §5b) over real HTTP: the same admission and
//! refusals as the WebSocket, frames as events with cursors as ids, client frames as
//! POSTs (forwarded between pods), takeover across transports, heartbeats, drain, and
//! durable recovery through `Last-Event-ID`.

mod common;

use std::time::Duration;

use common::sse::{self, Sse};
use common::*;
use serde_json::json;

fn path(user: &str, query: &str) -> String {
    format!("/sse/{user}?token={}{query}", token(user, 60, None))
}

async fn open(hub: &Hub, user: &str, query: &str) -> (Sse, serde_json::Value) {
    let mut s = sse::open(hub.port, &path(user, query), &[])
        .await
        .unwrap_or_else(|r| panic!("refused: {r:?}"));
    let welcome = s.next_event().await;
    assert_eq!(welcome.kind, "welcome", "{welcome:?}");
    (s, welcome.json())
}

async fn refused(hub: &Hub, path: &str, headers: &[(&str, &str)]) -> u16 {
    match sse::open(hub.port, path, headers).await {
        Ok(_) => panic!("{path} was not refused"),
        Err(r) => {
            assert!(!r.body.trim().is_empty(), "a reason is given");
            r.status
        }
    }
}

#[tokio::test]
async fn frames_arrive_as_events_with_the_cursor_as_id() {
    let hub = Hub::secured(&[]).await;
    let (mut s, welcome) = open(&hub, "u1", "").await;
    assert_eq!(welcome["user"], "u1");
    assert!(welcome["session"].as_str().is_some_and(|s| !s.is_empty()));
    let (status, _) = hub
        .publish(json!({"user": "u1", "event": "order", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 202);
    let m = s.next_event().await;
    assert_eq!(m.kind, "message");
    let frame = m.json();
    assert_eq!(frame["data"], json!({"n": 1}));
    assert_eq!(frame["event"], "order");
    assert_eq!(
        m.id.as_deref(),
        frame["cursor"].as_str(),
        "id: is the cursor"
    );
    // A payload with line breaks still arrives as the same JSON.
    let (status, _) = hub
        .publish(json!({"broadcast": true, "data": "two\nlines"}))
        .await;
    assert_eq!(status, 202);
    let b = s.next_event().await.json();
    assert_eq!(b["source"], "broadcast");
    assert_eq!(b["data"], "two\nlines");
}

#[tokio::test]
async fn refusals_are_plain_http_before_the_stream() {
    let hub = Hub::secured(&["--max-sessions-per-user", "1"]).await;
    assert_eq!(refused(&hub, "/sse/bad.id", &[]).await, 400);
    assert_eq!(refused(&hub, "/sse/u1", &[]).await, 401, "no token");
    let other = format!("/sse/u1?token={}", token("u2", 60, None));
    assert_eq!(refused(&hub, &other, &[]).await, 401, "sub differs");
    let p = path("u1", "");
    assert_eq!(
        refused(&hub, &p, &[("Origin", "https://evil.example")]).await,
        403
    );
    let bad_device = path("u1", "&device=a.b");
    assert_eq!(refused(&hub, &bad_device, &[]).await, 400);
    let (_held, _) = open(&hub, "u1", "").await;
    assert_eq!(refused(&hub, &p, &[]).await, 429, "per-user limit");
    // The same credentials in the header work too.
    let bearer = format!("Bearer {}", token("u3", 60, None));
    let s = sse::open(hub.port, "/sse/u3", &[("Authorization", &bearer)]).await;
    assert!(s.is_ok(), "header credentials accepted");
}

#[tokio::test]
async fn client_frames_are_posted_and_answered_on_the_stream() {
    let hub = Hub::secured(&[]).await;
    // The session's own token (allowing orders.*) decides topics, not the POST's.
    let own = token_with(SECRET, "u1", 60, None, Some(vec!["orders.*"]));
    let mut s = sse::open(hub.port, &format!("/sse/u1?token={own}"), &[])
        .await
        .unwrap_or_else(|r| panic!("refused: {r:?}"));
    let welcome = s.next_event().await.json();
    let session = welcome["session"].as_str().expect("session id").to_string();
    let t = token("u1", 60, None);
    let base = hub.http();
    assert_eq!(
        sse::post(&base, "u1", &session, &t, r#"{"type":"ping"}"#).await,
        202
    );
    assert_eq!(s.next_event().await.kind, "pong");
    let sub = r#"{"type":"subscribe","topic":"orders.store-1"}"#;
    assert_eq!(sse::post(&base, "u1", &session, &t, sub).await, 202);
    let ev = s.next_event().await;
    assert_eq!(ev.kind, "subscribed");
    assert_eq!(ev.json()["topic"], "orders.store-1");
    let (status, _) = hub
        .publish(json!({"topic": "orders.store-1", "data": 7}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(s.next_event().await.json()["data"], 7);
    assert_eq!(sse::post(&base, "u1", &session, &t, "not json").await, 202);
    let ev = s.next_event().await;
    assert_eq!(ev.kind, "error");
    assert_eq!(ev.json()["code"], "bad_frame");
    // Someone else's token, no session, no such session.
    let u2 = token("u2", 60, None);
    assert_eq!(
        sse::post(&base, "u1", &session, &u2, r#"{"type":"ping"}"#).await,
        401
    );
    assert_eq!(
        sse::post(&base, "u1", "ffff", &t, r#"{"type":"ping"}"#).await,
        404
    );
    let (_other, w2) = open(&hub, "u2", "").await;
    let s2 = w2["session"].as_str().expect("session id");
    assert_eq!(
        sse::post(&base, "u1", s2, &t, r#"{"type":"ping"}"#).await,
        404,
        "another user's session is not found"
    );
}

#[tokio::test]
async fn takeover_works_across_transports_and_presence_counts_sse() {
    let hub = Hub::secured(&[]).await;
    let (mut s, _) = open(&hub, "u1", "&device=phone").await;
    let (status, p) = hub.get_json("/api/v1/presence/u1").await;
    assert_eq!(status, 200);
    assert_eq!(p["sessions"], 1, "{p}");
    // A WebSocket with the same device replaces the SSE session...
    let ws_url = hub.ws_url(
        "u1",
        &format!("token={}&device=phone", token("u1", 60, None)),
    );
    let (mut ws, _) = connect(&ws_url).await;
    assert_eq!(s.expect_close().await, 4001);
    // ...and an SSE session replaces the WebSocket.
    let (_s2, _) = open(&hub, "u1", "&device=phone").await;
    assert_eq!(expect_close(&mut ws, WAIT).await, 4001);
}

#[tokio::test]
async fn heartbeats_are_comments_and_a_disconnect_closes_the_stream() {
    let hub = Hub::secured(&["--heartbeat", "200ms"]).await;
    let (mut s, _) = open(&hub, "u1", "").await;
    let ev = s
        .next_any(Duration::from_secs(5))
        .await
        .expect("the stream is open");
    assert_eq!(ev.kind, "comment");
    assert_eq!(ev.data, "ping");
    let url = format!("{}/api/v1/users/u1/disconnect", hub.http());
    let status = reqwest::Client::new()
        .post(url)
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("disconnect sent")
        .status();
    assert_eq!(status.as_u16(), 202);
    assert_eq!(s.expect_close().await, 4004);
}

#[tokio::test]
async fn a_stream_that_is_not_read_is_closed_as_a_slow_consumer() {
    let hub = Hub::secured(&["--outbound-queue-bytes", "65536"]).await;
    let (mut s, _) = open(&hub, "u1", "").await;
    let big = "x".repeat(16 * 1024);
    // Enough to fill the socket buffers and the queue while nothing is read.
    for _ in 0..600 {
        let (status, _) = hub.publish(json!({"user": "u1", "data": big})).await;
        assert_eq!(status, 202);
    }
    let mut code = None;
    while let Some(ev) = s.next_any(WAIT).await {
        if ev.kind == "close" {
            code = ev.json()["code"].as_u64();
        }
    }
    assert_eq!(code, Some(4008), "closed with 4008 once it reads again");
}

#[tokio::test]
async fn drain_closes_streams_with_1012() {
    let mut hub = Hub::secured(&["--drain-timeout", "500ms"]).await;
    let (mut s, _) = open(&hub, "u1", "").await;
    hub.signal("TERM");
    assert_eq!(s.expect_close().await, 1012);
    assert_eq!(hub.wait_exit(Duration::from_secs(15)).await, Some(0));
}

#[tokio::test]
async fn a_post_to_another_pod_reaches_the_session() {
    let nats = Nats::start().await;
    let args = |pod: &'static str| {
        [
            "--nats-url".to_string(),
            nats.url(),
            "--pod-name".into(),
            pod.into(),
        ]
    };
    let a_args = args("pod-a");
    let b_args = args("pod-b");
    let a = Hub::secured(&a_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let b = Hub::secured(&b_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let (mut s, welcome) = open(&a, "u1", "").await;
    assert_eq!(welcome["pod"], "pod-a");
    let session = welcome["session"].as_str().expect("session id");
    let t = token("u1", 60, None);
    assert_eq!(
        sse::post(&b.http(), "u1", session, &t, r#"{"type":"ping"}"#).await,
        202,
        "pod-b forwards to pod-a"
    );
    assert_eq!(s.next_event().await.kind, "pong");
    assert_eq!(
        sse::post(&b.http(), "u1", "ffff", &t, r#"{"type":"ping"}"#).await,
        404
    );
}

#[tokio::test]
async fn a_durable_reconnect_with_last_event_id_replays_what_was_missed() {
    let nats = Nats::start_js().await;
    let nats_url = nats.url();
    let hub = Hub::secured(&["--nats-url", &nats_url, "--durable"]).await;
    hub.wait_ready(200).await;
    let (mut s, _) = open(&hub, "u1", "").await;
    let (status, _) = hub.publish(json!({"user": "u1", "data": {"n": 0}})).await;
    assert_eq!(status, 202);
    let first = s.next_event().await;
    let last_id = first
        .id
        .clone()
        .expect("a message carries its cursor as id");
    drop(s);
    let mut cursors = Vec::new();
    for n in 1..=3 {
        let (status, body) = hub.publish(json!({"user": "u1", "data": {"n": n}})).await;
        assert_eq!(status, 202, "{body}");
        cursors.push(body["cursor"].as_str().expect("a cursor").to_string());
    }
    // The EventSource keeps its URL (here with a stale since=); Last-Event-ID wins.
    let stale = path("u1", "&since=garbage");
    let mut s = sse::open(hub.port, &stale, &[("Last-Event-ID", &last_id)])
        .await
        .unwrap_or_else(|r| panic!("refused: {r:?}"));
    let welcome = s.next_event().await.json();
    assert_eq!(welcome["recovered"], true, "{welcome}");
    assert_eq!(welcome["replayed"], 3, "{welcome}");
    for (n, cursor) in (1..=3).zip(&cursors) {
        let m = s.next_event().await;
        assert_eq!(m.json()["data"], json!({"n": n}));
        assert_eq!(m.id.as_ref(), Some(cursor), "replayed in order, once each");
    }
    let (status, _) = hub.publish(json!({"user": "u1", "data": {"n": 4}})).await;
    assert_eq!(status, 202);
    assert_eq!(s.next_event().await.json()["data"], json!({"n": 4}));
}

#[tokio::test]
async fn a_stream_that_cannot_be_written_is_evicted_as_idle_and_a_read_one_lives() {
    let hub = Hub::secured(&[
        "--heartbeat",
        "300ms",
        "--idle-timeout",
        "1500ms",
        "--outbound-queue-bytes",
        "67108864",
    ])
    .await;
    let (mut reader, _) = open(&hub, "reader", "").await;
    let (_stalled, _) = open(&hub, "stalled", "").await;
    // More than the socket buffers hold, less than the queue limit: the stalled stream's
    // writes stop, with no slow-consumer close.
    let big = "x".repeat(64 * 1024);
    for _ in 0..160 {
        let (status, _) = hub.publish(json!({"user": "stalled", "data": big})).await;
        assert_eq!(status, 202);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if hub.metric("herald_closes_total{code=\"4002\"}").await >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled stream was not evicted"
        );
        // The stream that is read stays alive meanwhile, on heartbeats alone.
        let ev = reader.next_any(Duration::from_secs(2)).await.expect("open");
        assert_eq!(ev.kind, "comment");
    }
    assert_eq!(hub.metric("herald_closes_total{code=\"4008\"}").await, 0.0);
    let (_, p) = hub.get_json("/api/v1/presence/stalled").await;
    assert_eq!(p["sessions"], 0, "{p}");
    let (_, p) = hub.get_json("/api/v1/presence/reader").await;
    assert_eq!(
        p["sessions"], 1,
        "the stream that is read is not evicted: {p}"
    );
}
