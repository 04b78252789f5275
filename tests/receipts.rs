//! Delivery receipts (PROTOCOL.md §5c) over real sockets: the `ack` frame on WebSocket and
//! SSE, its validation and rate limit, the receipt published on
//! `<prefix>.receipts.<userId>`, and HTTP publishes that wait for one (`await`): answered
//! 200 with the receipt, from another pod too, with the device and status filters, or 202
//! with `receipt: null` at the timeout; `herald publish --await` does the same.

mod common;

use std::time::{Duration, Instant};

use common::kept::post_publish;
use common::sse;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

fn url(hub: &Hub, user: &str, extra: &str) -> String {
    hub.ws_url(user, &format!("token={}{extra}", token(user, 60, None)))
}

/// POST a publish; the status and the answer (a wait for a receipt takes up to 60 s).
async fn post(base: &str, body: Value) -> (u16, Value) {
    post_publish(base, &body, Duration::from_secs(70)).await
}

/// The next message frame, skipping nothing else.
async fn message(ws: &mut Ws) -> Value {
    let m = next_json(ws).await;
    assert_eq!(m["type"], "message", "{m}");
    m
}

async fn ack(ws: &mut Ws, id: &str, status: &str) {
    send_text(
        ws,
        &json!({"type": "ack", "id": id, "status": status}).to_string(),
    )
    .await;
}

async fn next_receipt(sub: &mut async_nats::Subscriber) -> Value {
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a receipt in time")
        .expect("subscription open");
    serde_json::from_slice(&m.payload).expect("receipt JSON")
}

#[tokio::test]
async fn an_ack_is_published_once_as_a_receipt_with_who_sent_it() {
    let nats = Nats::start().await;
    let nats_url = nats.url();
    let hub = Hub::secured(&["--nats-url", &nats_url, "--pod-name", "pod-r"]).await;
    let client = nats.client().await;
    let mut receipts = client.subscribe("herald.receipts.u1").await.expect("sub");
    client.flush().await.expect("flush");
    let (mut ws, welcome) = connect(&url(&hub, "u1", "&device=pos")).await;
    let (status, answer) = post(&hub.http(), json!({"user": "u1", "data": 1})).await;
    assert_eq!(status, 202, "{answer}");
    let m = message(&mut ws).await;
    let id = m["id"].as_str().expect("id").to_string();
    ack(&mut ws, &id, "printed").await;
    let r = next_receipt(&mut receipts).await;
    assert_eq!(r["id"], id.as_str());
    assert_eq!(r["user"], "u1");
    assert_eq!(r["session"], welcome["session"]);
    assert_eq!(r["device"], "pos");
    assert_eq!(r["pod"], "pod-r");
    assert_eq!(r["status"], "printed");
    assert!(r["at"].as_str().is_some_and(|a| a.contains('T')), "{r}");
    // The default status, and an id the session never got: published all the same.
    send_text(&mut ws, r#"{"type":"ack","id":"never-sent"}"#).await;
    let r = next_receipt(&mut receipts).await;
    assert_eq!(
        (r["id"].as_str(), r["status"].as_str()),
        (Some("never-sent"), Some("received"))
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), receipts.next())
            .await
            .is_err(),
        "one receipt per ack"
    );
    assert_eq!(hub.metric("herald_receipts_total").await, 2.0);
}

#[tokio::test]
async fn bad_acks_get_bad_ack_and_change_nothing() {
    let hub = Hub::secured(&[]).await;
    let (mut ws, _) = connect(&url(&hub, "u1", "")).await;
    for bad in [
        r#"{"type":"ack"}"#,
        r#"{"type":"ack","id":5}"#,
        r#"{"type":"ack","id":"m","status":"PRINTED"}"#,
        r#"{"type":"ack","id":"m","status":"a b"}"#,
        r#"{"type":"ack","id":"m","status":7}"#,
    ] {
        send_text(&mut ws, bad).await;
        let e = next_json(&mut ws).await;
        assert_eq!(e["type"], "error", "{bad}: {e}");
        assert_eq!(e["code"], "bad_ack", "{bad}: {e}");
    }
    assert_alive(&mut ws).await;
    assert_eq!(hub.metric("herald_receipts_total").await, 0.0);
}

#[tokio::test]
async fn acks_count_against_the_upstream_rate_limit() {
    let hub = Hub::secured(&["--upstream-rate", "5"]).await;
    let (mut ws, _) = connect(&url(&hub, "u1", "")).await;
    for i in 0..40 {
        ack(&mut ws, &format!("m{i}"), "received").await;
    }
    let mut limited = false;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match next_event(&mut ws, WAIT).await {
            WsEvent::Frame(f) if f["code"] == "rate_limited" => {
                limited = true;
                break;
            }
            WsEvent::Frame(_) => continue,
            _ => break,
        }
    }
    assert!(limited, "acks past the rate are refused");
    let published = hub.metric("herald_receipts_total").await;
    assert!((5.0..40.0).contains(&published), "{published} receipts");
}

#[tokio::test]
async fn an_http_publish_waits_for_the_matching_receipt() {
    let hub = Hub::secured(&[]).await;
    let (mut ws, _) = connect(&url(&hub, "u1", "&device=pos")).await;
    let base = hub.http();
    let call = tokio::spawn(async move {
        post(
            &base,
            json!({"user": "u1", "id": "order-1", "data": {"n": 1},
                   "await": {"status": "printed", "device": "pos", "timeout_ms": 10000}}),
        )
        .await
    });
    let m = message(&mut ws).await;
    assert_eq!(m["id"], "order-1");
    // Another status first: not the one awaited.
    ack(&mut ws, "order-1", "received").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!call.is_finished(), "answered before the awaited status");
    ack(&mut ws, "order-1", "printed").await;
    let (status, answer) = tokio::time::timeout(WAIT, call)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], "order-1");
    assert_eq!(answer["cursor"], m["cursor"], "{answer}");
    assert_eq!(answer["receipt"]["status"], "printed");
    assert_eq!(answer["receipt"]["device"], "pos");
    assert_eq!(
        hub.metric("herald_awaits_total{outcome=\"answered\"}")
            .await,
        1.0
    );
    assert_eq!(hub.metric("herald_awaits_pending").await, 0.0);

    // A receipt that came before the wait: the same id published again is answered at once.
    let started = Instant::now();
    let (status, answer) = post(
        &hub.http(),
        json!({"user": "u1", "id": "order-1", "data": {"n": 1},
               "await": {"status": "printed", "timeout_ms": 5000}}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3), "at once");
}

#[tokio::test]
async fn without_a_matching_receipt_the_publish_answers_202_at_the_timeout() {
    let hub = Hub::secured(&[]).await;
    let (mut ws, _) = connect(&url(&hub, "u1", "")).await;
    let base = hub.http();
    let started = Instant::now();
    let call = tokio::spawn(async move {
        post(
            &base,
            json!({"user": "u1", "id": "o2", "data": 2,
                   "await": {"device": "pos", "timeout_ms": 700}}),
        )
        .await
    });
    message(&mut ws).await;
    // From a session without that device: does not count.
    ack(&mut ws, "o2", "printed").await;
    let (status, answer) = tokio::time::timeout(WAIT, call)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["receipt"], Value::Null, "{answer}");
    assert_eq!(answer["id"], "o2");
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert_eq!(
        hub.metric("herald_awaits_total{outcome=\"timed_out\"}")
            .await,
        1.0
    );
    assert_eq!(hub.metric("herald_awaits_pending").await, 0.0);
}

#[tokio::test]
async fn a_bad_await_is_a_400_with_a_reason() {
    let hub = Hub::secured(&[]).await;
    for (body, why) in [
        (
            json!({"user": "u1", "await": {"timeout_ms": 60001}}),
            "timeout_ms",
        ),
        (
            json!({"user": "u1", "await": {"timeout_ms": 0}}),
            "timeout_ms",
        ),
        (
            json!({"user": "u1", "await": {"status": "Printed"}}),
            "status",
        ),
        (json!({"user": "u1", "await": {"device": "a.b"}}), "device"),
        (json!({"user": "u1", "await": {"status": 5}}), "await"),
        (json!({"user": "u1", "await": {"whatever": 1}}), "whatever"),
        (json!({"user": "u1", "await": "printed"}), "await"),
        (json!({"broadcast": true, "await": {}}), "user messages"),
    ] {
        let (status, answer) = post(&hub.http(), body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.to_string().contains(why), "{body}: {answer}");
    }
}

#[tokio::test]
async fn an_await_on_one_pod_gets_the_receipt_of_a_session_on_another() {
    let nats = Nats::start().await;
    let nats_url = nats.url();
    let a = Hub::secured(&["--nats-url", &nats_url, "--pod-name", "pod-a"]).await;
    let b = Hub::secured(&["--nats-url", &nats_url, "--pod-name", "pod-b"]).await;
    a.wait_ready(200).await;
    b.wait_ready(200).await;
    let (mut ws, _) = connect(&url(&b, "u1", "")).await;
    let base = a.http();
    let call = tokio::spawn(async move {
        post(
            &base,
            json!({"user": "u1", "id": "x-1", "data": 1, "await": {"status": "printed"}}),
        )
        .await
    });
    message(&mut ws).await;
    ack(&mut ws, "x-1", "printed").await;
    let (status, answer) = tokio::time::timeout(WAIT, call)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["receipt"]["pod"], "pod-b");
    // One receipt subscription on pod-a, however many publishes wait.
    let subs = nats.subs_of("pod-a").await;
    let receipt_subs = subs.iter().filter(|s| s.contains("receipts")).count();
    assert_eq!(receipt_subs, 1, "{subs:?}");
}

#[tokio::test]
async fn an_sse_session_acks_with_a_post() {
    let hub = Hub::secured(&[]).await;
    let t = token("u1", 60, None);
    let mut s = sse::open(hub.port, &format!("/sse/u1?token={t}"), &[])
        .await
        .unwrap_or_else(|r| panic!("refused: {r:?}"));
    let welcome = s.next_event().await.json();
    let session = welcome["session"].as_str().expect("session").to_string();
    let base = hub.http();
    let call = tokio::spawn(async move {
        post(
            &base,
            json!({"user": "u1", "id": "s-1", "data": 1, "await": {}}),
        )
        .await
    });
    let m = s.next_event().await.json();
    assert_eq!(m["id"], "s-1");
    let status = sse::post(
        &hub.http(),
        "u1",
        &session,
        &t,
        r#"{"type":"ack","id":"s-1","status":"shown"}"#,
    )
    .await;
    assert!((200..300).contains(&status), "POST {status}");
    let (status, answer) = tokio::time::timeout(WAIT, call)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["receipt"]["status"], "shown");
    assert_eq!(answer["receipt"]["session"], session.as_str());
}

#[tokio::test]
async fn herald_publish_await_prints_the_receipt_or_exits_3() {
    let hub = Hub::secured(&[]).await;
    let (mut ws, _) = connect(&url(&hub, "u1", "")).await;
    let base = hub.http();
    let cli = tokio::spawn(async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([
                "publish",
                "--http",
                &base,
                "--api-key",
                API_KEY,
                "--user",
                "u1",
                "--id",
                "c-1",
                "--await",
                "printed",
                "--timeout",
                "10s",
                "{}",
            ])
            .output()
            .await
    });
    message(&mut ws).await;
    ack(&mut ws, "c-1", "printed").await;
    let out = tokio::time::timeout(WAIT, cli)
        .await
        .expect("cli done")
        .expect("task")
        .expect("cli ran");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"c-1"), "{stdout}");
    let receipt: Value = serde_json::from_str(lines.last().expect("receipt line")).expect("JSON");
    assert_eq!(receipt["status"], "printed");

    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([
                "publish",
                "--http",
                &hub.http(),
                "--api-key",
                API_KEY,
                "--user",
                "nobody",
                "--await",
                "--timeout",
                "300ms",
                "{}",
            ])
            .output(),
    )
    .await
    .expect("cli done")
    .expect("cli ran");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).ends_with("null\n"));
}
