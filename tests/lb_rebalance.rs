//! Scale-out behind a real load balancer (PROTOCOL.md §4): HAProxy (Debian's package,
//! `balance roundrobin`, WebSocket passthrough, health checks on /readyz) in front of two
//! pods holding 3,000 clients that reconnect after a close as browsers do (random delay);
//! a third pod starts, and within 60 s the pods' sessions even out to within
//! `--rebalance-above` (1.2) × the mean by the first pods shedding with 1012 `rebalance`.
//! In durable mode, the same with steady addressed traffic to every user: the shed
//! clients resume with `since=` and not one message is lost or repeated. And no ping-pong:
//! three equal pods under five minutes of churn (clients closing and reconnecting all the
//! time) shed nothing.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::haproxy::{rand_ms, Haproxy};
use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 3000;

async fn pod(nats: &Nats, port: u16, name: &str) -> Hub {
    pod_with(nats, port, name, &[]).await
}

async fn pod_with(nats: &Nats, port: u16, name: &str, extra: &[&str]) -> Hub {
    let url = nats.url();
    let mut args = vec![
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--nats-url",
        &url,
        "--pod-name",
        name,
        "--max-connections",
        "20000",
    ];
    args.extend_from_slice(extra);
    let hub = Hub::start_on(port, &args).await;
    hub.wait_ready(200).await;
    hub
}

/// A browser-like client: connects through the balancer, and after a close waits a random
/// 0.2–2 s and connects again, for as long as the test runs.
fn client(lb: u16, user: String, reconnects: Arc<AtomicU64>, open: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let url = format!(
            "ws://127.0.0.1:{lb}/websocket/{user}?token={}",
            token(&user, 600, None)
        );
        loop {
            if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
                open.fetch_add(1, Ordering::Relaxed);
                while let Some(Ok(m)) = ws.next().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::Relaxed);
                reconnects.fetch_add(1, Ordering::Relaxed);
            }
            let jitter = 200 + rand_ms(1800);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
    });
}

async fn connections(hub: &Hub) -> f64 {
    hub.metric("herald_connections").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_pod_gets_its_share_within_a_minute() {
    let nats = Nats::start().await;
    let ports = [free_port(), free_port(), free_port()];
    let a = pod(&nats, ports[0], "pod-a").await;
    let b = pod(&nats, ports[1], "pod-b").await;
    let lb_port = free_port();
    let _lb = Haproxy::start_ready(lb_port, &ports).await;
    let reconnects = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicU64::new(0));
    for i in 0..CLIENTS {
        client(lb_port, format!("lb{i}"), reconnects.clone(), open.clone());
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while connections(&a).await + connections(&b).await < CLIENTS as f64 {
        assert!(Instant::now() < deadline, "the clients did not all connect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = reconnects.load(Ordering::Relaxed);
    assert_eq!(before, 0, "nothing sheds with two equal pods");

    let c = pod(&nats, ports[2], "pod-c").await;
    let started = Instant::now();
    let mut last;
    loop {
        let counts = (
            connections(&a).await,
            connections(&b).await,
            connections(&c).await,
        );
        let mean = (counts.0 + counts.1 + counts.2) / 3.0;
        let max = counts.0.max(counts.1).max(counts.2);
        last = counts;
        if counts.2 > 0.0
            && max <= 1.2 * mean + 1.0
            && counts.0 + counts.1 + counts.2 >= CLIENTS as f64 - 10.0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not even within 60 s: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let shed = a.metric("herald_rebalance_shed_total").await
        + b.metric("herald_rebalance_shed_total").await;
    eprintln!(
        "even after {:.1} s: pods {last:?}, {shed} shed, {} reconnects",
        started.elapsed().as_secs_f64(),
        reconnects.load(Ordering::Relaxed)
    );
    assert!(shed > 0.0);
    assert_eq!(
        c.metric("herald_rebalance_shed_total").await,
        0.0,
        "the new pod sheds nothing"
    );
    assert!(
        reconnects.load(Ordering::Relaxed) as f64 >= shed,
        "every shed client came back"
    );
}

/// What a durable client received: each message's sequence number (its `data`), in order.
type Received = Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u64>>>>;

/// A browser-like durable client: like [`client`], resuming with `since=` the cursor of
/// the last message it got, and recording every message's number.
fn durable_client(lb: u16, user: String, got: Received, open: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let mut cursor: Option<String> = None;
        loop {
            let since = cursor
                .as_ref()
                .map(|c| format!("&since={c}"))
                .unwrap_or_default();
            let url = format!(
                "ws://127.0.0.1:{lb}/websocket/{user}?token={}{since}",
                token(&user, 600, None)
            );
            if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
                open.fetch_add(1, Ordering::Relaxed);
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t) => {
                            let v: serde_json::Value =
                                serde_json::from_str(t.as_str()).unwrap_or_default();
                            if v["type"] == "message" {
                                if let Some(n) = v["data"].as_u64() {
                                    got.lock().unwrap().entry(user.clone()).or_default().push(n);
                                }
                                cursor = v["cursor"].as_str().map(str::to_string);
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                open.fetch_sub(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(200 + rand_ms(1800))).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_durable_mode_shed_clients_lose_and_repeat_nothing() {
    const USERS: usize = 3000;
    const ROUNDS: u64 = 8;
    let nats = Nats::start_js().await;
    let ports = [free_port(), free_port(), free_port()];
    let durable = ["--durable"];
    let a = pod_with(&nats, ports[0], "pod-a", &durable).await;
    let b = pod_with(&nats, ports[1], "pod-b", &durable).await;
    let lb_port = free_port();
    let _lb = Haproxy::start_ready(lb_port, &ports).await;
    let got: Received = Arc::default();
    let open = Arc::new(AtomicU64::new(0));
    let users: Vec<String> = (0..USERS).map(|i| format!("dl{i}")).collect();
    for u in &users {
        durable_client(lb_port, u.clone(), got.clone(), open.clone());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while connections(&a).await + connections(&b).await < USERS as f64 {
        assert!(Instant::now() < deadline, "the clients did not all connect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Message 0 to everyone first, so every client holds a cursor before any is shed.
    let publish_round = |n: u64| {
        let users = users.clone();
        let a = &a;
        async move {
            for u in &users {
                let (status, body) = a.publish(serde_json::json!({"user": u, "data": n})).await;
                assert_eq!(status, 202, "{body}");
            }
        }
    };
    publish_round(0).await;
    let all_have = |n: usize| {
        let got = got.lock().unwrap();
        users
            .iter()
            .all(|u| got.get(u).is_some_and(|v| v.len() >= n))
    };
    let deadline = Instant::now() + WAIT;
    while !all_have(1) {
        assert!(
            Instant::now() < deadline,
            "message 0 did not reach every client"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let c = pod_with(&nats, ports[2], "pod-c", &durable).await;
    let started = Instant::now();
    // Steady traffic to every user while the pods shed: a round every 2.5 s or so.
    for n in 1..=ROUNDS {
        publish_round(n).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !all_have(ROUNDS as usize + 1) {
        assert!(Instant::now() < deadline, "not every message arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anything repeated would arrive by now too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shed = a.metric("herald_rebalance_shed_total").await
        + b.metric("herald_rebalance_shed_total").await;
    let counts = (
        connections(&a).await,
        connections(&b).await,
        connections(&c).await,
    );
    eprintln!(
        "durable: {shed} shed in {:.1} s; pods now {counts:?}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        shed > 0.0,
        "the scenario must shed for the check to mean anything"
    );
    let want: Vec<u64> = (0..=ROUNDS).collect();
    let got = got.lock().unwrap();
    for u in &users {
        assert_eq!(got.get(u), Some(&want), "{u}: every message once, in order");
    }
}

/// A client that churns: connects through the balancer, stays 5–25 s, closes, and comes
/// back 0.2–2 s later, for as long as the test runs. Counts its connects.
fn churning_client(lb: u16, user: String, connects: Arc<AtomicU64>) {
    tokio::spawn(async move {
        let url = format!(
            "ws://127.0.0.1:{lb}/websocket/{user}?token={}",
            token(&user, 3600, None)
        );
        // The first stay is spread over the whole range, so closes are spread in time.
        let mut stay = Duration::from_millis(rand_ms(25_000));
        loop {
            if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
                connects.fetch_add(1, Ordering::Relaxed);
                let until = tokio::time::sleep(stay);
                tokio::pin!(until);
                loop {
                    tokio::select! {
                        _ = &mut until => {
                            let _ = ws.close(None).await;
                            break;
                        }
                        m = ws.next() => match m {
                            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                            _ => {}
                        },
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200 + rand_ms(1800))).await;
            stay = Duration::from_millis(5_000 + rand_ms(20_000));
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balanced_cluster_under_churn_sheds_nothing_for_five_minutes() {
    const USERS: usize = 1500;
    // HERALD_TEST_CHURN_SECS shortens the run when iterating locally; CI runs five minutes.
    let secs: u64 = std::env::var("HERALD_TEST_CHURN_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let nats = Nats::start().await;
    let ports = [free_port(), free_port(), free_port()];
    let pods = [
        pod(&nats, ports[0], "pod-a").await,
        pod(&nats, ports[1], "pod-b").await,
        pod(&nats, ports[2], "pod-c").await,
    ];
    let lb_port = free_port();
    let _lb = Haproxy::start_ready(lb_port, &ports).await;
    let connects = Arc::new(AtomicU64::new(0));
    for i in 0..USERS {
        churning_client(lb_port, format!("churn{i}"), connects.clone());
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut held = 0.0;
        for p in &pods {
            held += connections(p).await;
        }
        // Some are always between a close and their next connect.
        if held >= USERS as f64 * 0.9 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the clients did not connect: {held}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    let connects_before = connects.load(Ordering::Relaxed);
    let mut worst = 0.0f64;
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut counts = [0.0; 3];
        for (i, p) in pods.iter().enumerate() {
            counts[i] = connections(p).await;
            let shed = p.metric("herald_rebalance_shed_total").await;
            assert_eq!(
                shed,
                0.0,
                "pod {i} shed {shed} sessions after {:.0} s of churn; pods {counts:?}",
                started.elapsed().as_secs_f64()
            );
        }
        let mean = counts.iter().sum::<f64>() / 3.0;
        if mean > 0.0 {
            worst = worst.max(counts.iter().cloned().fold(0.0, f64::max) / mean);
        }
    }
    let churned = connects.load(Ordering::Relaxed) - connects_before;
    eprintln!(
        "churn: {churned} connects in {secs} s over three pods, nothing shed; the fullest pod at most {worst:.2} x the mean"
    );
    // Churn means every client came and went several times over the run.
    assert!(
        churned as f64 >= USERS as f64 * secs as f64 / 30.0,
        "too little churn for the check to mean anything: {churned} connects"
    );
}
