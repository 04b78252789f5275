//! Scale-out behind a real load balancer (PROTOCOL.md §4): HAProxy (Debian's package,
//! `balance roundrobin`, WebSocket passthrough, health checks on /readyz) in front of two
//! pods holding 3,000 clients that reconnect after a close as browsers do (random delay);
//! a third pod starts, and within 60 s the pods' sessions even out to within
//! `--rebalance-above` (1.2) × the mean by the first pods shedding with 1012 `rebalance`.
//! In durable mode, the same with steady addressed traffic to every user: the shed
//! clients resume with `since=` and not one message is lost or repeated.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 3000;
const HAPROXY: &str = "/usr/sbin/haproxy";

/// HAProxy and the directory of its configuration (removed when it stops).
struct Haproxy(Child, #[allow(dead_code)] TempDir);

impl Haproxy {
    fn start(port: u16, pods: &[u16]) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let servers: String = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!("  server pod{i} 127.0.0.1:{p} check inter 300ms fall 2 rise 2\n")
            })
            .collect();
        let conf = format!(
            "global\n  maxconn 9000\n\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n\nfrontend fe\n  bind 127.0.0.1:{port}\n  default_backend pods\n\nbackend pods\n  balance roundrobin\n  option httpchk GET /readyz\n{servers}"
        );
        let path = dir.0.join("haproxy.cfg");
        std::fs::write(&path, conf).expect("haproxy config");
        let child = Command::new(HAPROXY)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        Haproxy(child, dir)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

fn rand_ms(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos) % max
}

async fn connections(hub: &Hub) -> f64 {
    hub.metric("herald_connections").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_pod_gets_its_share_within_a_minute() {
    if !std::path::Path::new(HAPROXY).exists() {
        panic!("{HAPROXY} is missing: scripts/test.sh installs Debian's haproxy");
    }
    let nats = Nats::start().await;
    let ports = [free_port(), free_port(), free_port()];
    let a = pod(&nats, ports[0], "pod-a").await;
    let b = pod(&nats, ports[1], "pod-b").await;
    let lb_port = free_port();
    let _lb = Haproxy::start(lb_port, &ports);
    wait_for_status(
        &format!("http://127.0.0.1:{lb_port}/readyz"),
        200,
        WAIT,
        "haproxy in front of the pods",
    )
    .await;
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
    let _lb = Haproxy::start(lb_port, &ports);
    wait_for_status(
        &format!("http://127.0.0.1:{lb_port}/readyz"),
        200,
        WAIT,
        "haproxy in front of the pods",
    )
    .await;
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
