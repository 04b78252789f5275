//! Scale-out behind a real load balancer (PROTOCOL.md §4): HAProxy (Debian's package,
//! `balance roundrobin`, WebSocket passthrough, health checks on /readyz) in front of two
//! pods holding 3,000 clients that reconnect after a close as browsers do (random delay);
//! a third pod starts, and within 60 s the pods' sessions even out to within
//! `--rebalance-above` (1.2) × the mean by the first pods shedding with 1012 `rebalance`.

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
    let url = nats.url();
    let hub = Hub::start_on(
        port,
        &[
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
        ],
    )
    .await;
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
