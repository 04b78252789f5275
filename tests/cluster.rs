//! Several pods behaving as one hub through NATS: interest-based routing proven against
//! the NATS server's own monitoring, cross-pod delivery (one NATS and a three-node NATS
//! cluster), cluster-wide presence and stats, cross-pod takeover and disconnect,
//! upstream and presence events, pod death, and a NATS outage.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};

async fn pod(nats: &Nats, name: &str) -> Hub {
    Hub::secured(&["--nats-url", &nats.url(), "--pod-name", name]).await
}

fn url(hub: &Hub, user: &str, extra: &str) -> String {
    hub.ws_url(user, &format!("token={}{extra}", token(user, 60, None)))
}

async fn nats_client(nats: &Nats) -> async_nats::Client {
    async_nats::connect(nats.url())
        .await
        .expect("test NATS client")
}

async fn next_nats(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("NATS message in time")
        .expect("subscription open")
}

#[tokio::test]
async fn a_pod_holds_a_user_subject_exactly_while_the_user_is_connected() {
    let nats = Nats::start().await;
    let a = pod(&nats, "pod-a").await;
    let base = nats
        .wait_subs("pod-a", |s| s.contains(&"herald.broadcast".to_string()))
        .await;
    assert!(
        !base.iter().any(|s| s.starts_with("herald.user.")),
        "{base:?}"
    );
    assert!(
        !base
            .iter()
            .any(|s| s == ">" || s.ends_with(".>") && s.starts_with("herald.user")),
        "{base:?}"
    );
    let (mut t1, _) = connect(&url(&a, "u1", "")).await;
    // welcome means the subscription is in place on the server already
    let subs = nats.subs_of("pod-a").await;
    assert!(subs.contains(&"herald.user.u1".to_string()), "{subs:?}");
    assert_eq!(
        subs.iter()
            .filter(|s| s.starts_with("herald.user."))
            .count(),
        1,
        "{subs:?}"
    );
    let (mut t2, _) = connect(&url(&a, "u1", "")).await;
    t1.close(None).await.unwrap();
    let _ = close_code_or_gone(&mut t1, WAIT).await;
    // One tab left: interest stays.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(nats
        .subs_of("pod-a")
        .await
        .contains(&"herald.user.u1".to_string()));
    t2.close(None).await.unwrap();
    let _ = close_code_or_gone(&mut t2, WAIT).await;
    nats.wait_subs("pod-a", |s| {
        !s.iter().any(|x| x.starts_with("herald.user."))
    })
    .await;
}

#[tokio::test]
async fn an_addressed_message_reaches_only_the_pod_holding_the_user() {
    let nats = Nats::start().await;
    let pods = [
        pod(&nats, "pod-a").await,
        pod(&nats, "pod-b").await,
        pod(&nats, "pod-c").await,
    ];
    let (mut ws, welcome) = connect(&url(&pods[1], "u1", "")).await;
    assert_eq!(welcome["pod"], "pod-b");
    let (status, _) = pods[0]
        .publish(json!({"user": "u1", "event": "order", "data": {"id": 1}}))
        .await;
    assert_eq!(status, 202);
    let m = next_json(&mut ws).await;
    assert_eq!(m["data"], json!({"id": 1}));
    assert_eq!(m["event"], "order");
    let received: Vec<f64> = futures_util::future::join_all(
        pods.iter()
            .map(|p| p.metric("herald_messages_in_total{source=\"user\"}")),
    )
    .await;
    assert_eq!(
        received,
        vec![0.0, 1.0, 0.0],
        "NATS messages received per pod"
    );
    // Broadcast is one subscription per pod: every pod receives it.
    let (mut other, _) = connect(&url(&pods[2], "u2", "")).await;
    pods[0]
        .publish(json!({"broadcast": true, "data": "all"}))
        .await;
    assert_eq!(next_json(&mut ws).await["data"], "all");
    assert_eq!(next_json(&mut other).await["data"], "all");
}

#[tokio::test]
async fn a_message_crosses_a_three_node_nats_cluster() {
    let n1 = Nats::start().await;
    let n2 = Nats::start_with(free_port(), &[n1.cluster_port]).await;
    let n3 = Nats::start_with(free_port(), &[n1.cluster_port, n2.cluster_port]).await;
    for n in [&n1, &n2, &n3] {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let routez: Value = reqwest::get(format!("http://127.0.0.1:{}/routez", n.monitor_port))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if routez["num_routes"].as_u64().unwrap_or(0) >= 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "routes never formed: {routez}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Pods given the whole cluster but each first attached to a different node.
    let all = |first: &Nats| format!("{},{},{}", first.url(), n1.url(), n3.url());
    let a = Hub::secured(&["--nats-url", &all(&n1), "--pod-name", "pod-a"]).await;
    let c = Hub::secured(&["--nats-url", &all(&n3), "--pod-name", "pod-c"]).await;
    let (mut ws, _) = connect(&url(&c, "u1", "")).await;
    // Interest must have propagated over the routes before the publish.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = a.publish(json!({"user": "u1", "data": "across"})).await;
        assert_eq!(status, 202);
        match tokio::time::timeout(Duration::from_millis(300), ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                let m: Value = serde_json::from_str(t.as_str()).unwrap();
                assert_eq!(m["data"], "across");
                break;
            }
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "message never crossed the cluster"
            ),
        }
    }
}

#[tokio::test]
async fn presence_and_stats_are_cluster_wide_over_http_and_nats() {
    let nats = Nats::start().await;
    let pods = [
        pod(&nats, "pod-a").await,
        pod(&nats, "pod-b").await,
        pod(&nats, "pod-c").await,
    ];
    // Every pod knows the others once their beacons arrived.
    pods[2]
        .wait_json("/api/v1/stats", WAIT, |v| {
            v["pods"].as_array().is_some_and(|p| p.len() == 3)
        })
        .await;
    let _a = connect(&url(&pods[0], "u1", "")).await;
    let _b = connect(&url(&pods[1], "u1", "")).await;
    let _c = connect(&url(&pods[1], "u2", "")).await;
    let (status, p) = pods[2].get_json("/api/v1/presence/u1").await;
    assert_eq!(status, 200);
    assert_eq!(
        p,
        json!({"user": "u1", "online": true, "sessions": 2, "pods": ["pod-a", "pod-b"]})
    );
    let client = nats_client(&nats).await;
    let reply = tokio::time::timeout(WAIT, client.request("herald.presence.u1", "".into()))
        .await
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v, p);
    let (_, s) = pods[0].get_json("/api/v1/stats").await;
    assert_eq!(s["connections"], 3);
    assert_eq!(
        s["users"], 3,
        "users are counted per pod: u1 on two pods counts twice"
    );
    let names: Vec<&str> = s["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pod"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["pod-a", "pod-b", "pod-c"]);
}

#[tokio::test]
async fn takeover_and_disconnect_work_across_pods() {
    let nats = Nats::start().await;
    let pods = [
        pod(&nats, "pod-a").await,
        pod(&nats, "pod-b").await,
        pod(&nats, "pod-c").await,
    ];
    let dev = "&device=till";
    let (mut on_a, _) = connect(&url(&pods[0], "u1", dev)).await;
    let (mut on_b, _) = connect(&url(&pods[1], "u1", dev)).await;
    assert_eq!(expect_close(&mut on_a, WAIT).await, 4001);
    // Disconnect asked of pod C closes the user's sessions on every pod.
    let (_plain, _) = connect(&url(&pods[0], "u1", "")).await;
    let mut plain = _plain;
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/users/u1/disconnect", pods[2].http()))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(expect_close(&mut on_b, WAIT).await, 4004);
    assert_eq!(expect_close(&mut plain, WAIT).await, 4004);
}

#[tokio::test]
async fn the_takeover_limit_holds_across_pods() {
    let nats = Nats::start().await;
    let a = pod(&nats, "pod-a").await;
    let b = pod(&nats, "pod-b").await;
    let dev = "&device=kiosk";
    let mut previous = connect(&url(&a, "u1", dev)).await.0;
    for hub in [&b, &a, &b] {
        let (next, _) = connect(&url(hub, "u1", dev)).await;
        assert_eq!(expect_close(&mut previous, WAIT).await, 4001);
        previous = next;
    }
    // Three takeovers happened on alternating pods: the fourth is refused on either.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = try_connect(&url(&a, "u1", dev), &[])
        .await
        .expect_err("fourth takeover refused");
    assert_eq!(r.status, 429);
}

#[tokio::test]
async fn upstream_frames_and_presence_events_reach_services() {
    let nats = Nats::start().await;
    let a = pod(&nats, "pod-a").await;
    let client = nats_client(&nats).await;
    let mut up = client.subscribe("herald.up.u1").await.unwrap();
    let mut presence = client.subscribe("herald.events.presence.u1").await.unwrap();
    client.flush().await.unwrap();
    let (mut ws, welcome) = connect(&url(&a, "u1", "&device=printer")).await;
    let ev: Value = serde_json::from_slice(&next_nats(&mut presence).await.payload).unwrap();
    assert_eq!(ev["event"], "connect");
    assert_eq!(ev["user"], "u1");
    assert_eq!(ev["pod"], "pod-a");
    assert_eq!(ev["device"], "printer");
    assert_eq!(ev["session"], welcome["session"]);
    // An event name cannot hold a line break (it is a NATS header): refused, nothing sent.
    send_text(
        &mut ws,
        r#"{"type":"publish","event":"a\r\nb","data":{"id":"A-0"}}"#,
    )
    .await;
    assert_eq!(next_json(&mut ws).await["code"], "bad_frame");
    send_text(
        &mut ws,
        r#"{"type":"publish","event":"printed","data":{"id":"A-1"}}"#,
    )
    .await;
    let m = next_nats(&mut up).await;
    let v: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(v, json!({"id": "A-1"}));
    let h = m.headers.expect("headers");
    assert_eq!(h.get("Herald-Event").map(|v| v.as_str()), Some("printed"));
    assert_eq!(h.get("Herald-Pod").map(|v| v.as_str()), Some("pod-a"));
    assert_eq!(h.get("Herald-Device").map(|v| v.as_str()), Some("printer"));
    assert_eq!(
        h.get("Herald-Session").map(|v| v.to_string()),
        welcome["session"].as_str().map(str::to_string)
    );
    ws.close(None).await.unwrap();
    let ev: Value = serde_json::from_slice(&next_nats(&mut presence).await.payload).unwrap();
    assert_eq!(ev["event"], "disconnect");
    assert_eq!(ev["reason"], "client");
}

#[tokio::test]
async fn a_killed_pod_is_declared_down_by_the_survivors() {
    let nats = Nats::start().await;
    let a = pod(&nats, "pod-a").await;
    let b = pod(&nats, "pod-b").await;
    a.wait_json("/api/v1/stats", WAIT, |v| {
        v["pods"].as_array().is_some_and(|p| p.len() == 2)
    })
    .await;
    let client = nats_client(&nats).await;
    let mut events = client.subscribe("herald.events.pod").await.unwrap();
    client.flush().await.unwrap();
    let killed_at = std::time::Instant::now();
    b.signal("KILL");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("down event within 10 s")
            .unwrap();
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        if v["pod"] == "pod-b" && v["event"] == "down" {
            break;
        }
    }
    assert!(killed_at.elapsed() < Duration::from_secs(10));
    let (_, s) = a.get_json("/api/v1/stats").await;
    assert_eq!(
        s["pods"],
        json!([{"pod": "pod-a", "connections": 0, "users": 0, "topics": 0}])
    );
    // A dead pod does not slow the answer down.
    let t = std::time::Instant::now();
    let (status, _) = a.get_json("/api/v1/presence/nobody").await;
    assert_eq!(status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "presence took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn sessions_survive_a_nats_outage_and_delivery_resumes() {
    let port = free_port();
    let monitor = free_port();
    let cluster = free_port();
    let mut nats = Nats::spawn(port, monitor, cluster, &[]).await;
    let a = pod(&nats, "pod-a").await;
    a.wait_ready(200).await;
    let (mut ws, _) = connect(&url(&a, "u1", "")).await;
    nats.kill();
    a.wait_ready(503).await;
    // The session stays open and keeps answering.
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    // An upstream publish during the outage is refused out loud.
    send_text(&mut ws, r#"{"type":"publish","event":"e","data":1}"#).await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "unavailable");
    let (status, _) = a.publish(json!({"user": "u1", "data": "lost"})).await;
    assert_eq!(
        status, 503,
        "HTTP publish during the outage is refused, not lost silently"
    );
    let nats = Nats::spawn(port, monitor, cluster, &[]).await;
    a.wait_ready(200).await;
    nats.wait_subs("pod-a", |s| s.contains(&"herald.user.u1".to_string()))
        .await;
    let (status, _) = a.publish(json!({"user": "u1", "data": "back"})).await;
    assert_eq!(status, 202);
    assert_eq!(next_json(&mut ws).await["data"], "back");
}

#[tokio::test]
async fn herald_publish_goes_over_nats() {
    let nats = Nats::start().await;
    let a = pod(&nats, "pod-a").await;
    let (mut ws, _) = connect(&url(&a, "u1", "")).await;
    let id = herald_cli(&[
        "publish",
        "--nats-url",
        &nats.url(),
        "--user",
        "u1",
        "--event",
        "order",
        r#"{"n":1}"#,
    ])
    .await;
    let m = next_json(&mut ws).await;
    assert_eq!(m["data"], json!({"n": 1}));
    assert_eq!(m["event"], "order");
    assert_eq!(m["id"], id, "the id the CLI printed is the message id");
}

#[tokio::test]
async fn an_invalid_device_header_delivers_to_nobody() {
    let nats = Nats::start().await;
    let a = pod(&nats, "pod-a").await;
    let (mut ws, _) = connect(&url(&a, "u1", "&device=printer")).await;
    let client = nats_client(&nats).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Herald-Device", "printer 1");
    client
        .publish_with_headers("herald.user.u1", headers, "x".into())
        .await
        .unwrap();
    client.publish("herald.user.u1", "y".into()).await.unwrap();
    client.flush().await.unwrap();
    // Only the second, unrestricted message arrives.
    assert_eq!(next_json(&mut ws).await["data"], "y");
    expect_silence(&mut ws, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_late_takeover_kick_never_closes_a_newer_session() {
    let nats = Nats::start().await;
    let a = pod(&nats, "pod-a").await;
    let before_connect = herald::clock::wall_ms();
    let (mut ws, _) = connect(&url(&a, "u1", "&device=till")).await;
    let client = nats_client(&nats).await;
    let kick = |before_ms: u64, code: u16| {
        herald_proto::control::encode(&herald_proto::control::Control::Kick {
            user: "u1".into(),
            device: Some("till".into()),
            except: Some("another-session".into()),
            before_ms: Some(before_ms),
            code,
            from_pod: "pod-z".into(),
        })
    };
    // Kicks come from a pod the others know (they ignore kicks from an unknown pod).
    introduce_pod(&client, "herald", "pod-z").await;
    // A kick from a takeover that happened before this session attached, arriving late,
    // then one from a newer takeover. Both travel on one subject, so they are handled in
    // order: the close code says which one closed the session.
    client
        .publish("herald.ctl.all", kick(before_connect, 4004).into())
        .await
        .unwrap();
    client
        .publish(
            "herald.ctl.all",
            kick(herald::clock::wall_ms() + 1, 4001).into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert_eq!(
        expect_close(&mut ws, WAIT).await,
        4001,
        "the late kick must not close it"
    );
}
