//! Durable mode across restarts: a rolling restart of three pods under steady publishing,
//! and a three-node JetStream cluster losing the node the hub is attached to. In both, every
//! client must end with every message exactly once, in order, resuming with `since=`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::sync::watch;

fn url_on(port: u16, user: &str, query: &str) -> String {
    let mut q = format!("token={}", token(user, 60, None));
    q.push_str(query);
    format!("ws://127.0.0.1:{port}/websocket/{user}?{q}")
}

fn n_of(m: &Value) -> i64 {
    m["data"]["n"]
        .as_i64()
        .unwrap_or_else(|| panic!("message without data.n: {m}"))
}

/// What a reconnecting client saw.
#[derive(Debug, Default)]
struct Log {
    ns: Vec<i64>,
    cursor: Option<String>,
    /// (how the previous session ended, the welcome of the next one, its port)
    reconnects: Vec<(String, Value, u16)>,
    problems: Vec<String>,
}

impl Log {
    fn take(&mut self, m: &Value, user: &str) {
        if m["type"] != "message" {
            self.problems.push(format!("unexpected frame {m}"));
            return;
        }
        let n = n_of(m);
        if m["id"] != format!("{user}-{n}") {
            self.problems.push(format!("id of message {n}: {m}"));
        }
        self.ns.push(n);
        self.cursor = m["cursor"].as_str().map(str::to_string);
    }
}

/// Follow `user` through closes and restarts: on a close or a lost connection, reconnect
/// with `since=` to the next of `ports` that takes the connection. Ends when the message
/// numbered `total - 1` (once `total` is known) has arrived, or at `deadline`.
async fn follow(
    user: String,
    mut ws: Ws,
    ports: Vec<u16>,
    mut at: usize,
    total: watch::Receiver<Option<i64>>,
    deadline: tokio::time::Instant,
) -> Log {
    let mut log = Log::default();
    loop {
        let known = *total.borrow();
        if let Some(t) = known {
            if log.ns.last() == Some(&(t - 1)) {
                // Anything after the last one would be a repeat.
                match next_event(&mut ws, Duration::from_millis(300)).await {
                    WsEvent::Frame(m) => log.take(&m, &user),
                    WsEvent::Quiet | WsEvent::Closed(_) | WsEvent::Gone(_) => {}
                }
                return log;
            }
        }
        if tokio::time::Instant::now() > deadline {
            log.problems.push("deadline passed".into());
            return log;
        }
        let ended = match next_event(&mut ws, Duration::from_millis(200)).await {
            WsEvent::Frame(m) => {
                log.take(&m, &user);
                continue;
            }
            WsEvent::Quiet => continue,
            WsEvent::Closed(code) => format!("close {code}"),
            WsEvent::Gone(e) => format!("gone: {e}"),
        };
        // Reconnect, trying the other pods first.
        loop {
            if tokio::time::Instant::now() > deadline {
                log.problems
                    .push(format!("could not reconnect after {ended}"));
                return log;
            }
            at = (at + 1) % ports.len();
            let query = log
                .cursor
                .as_ref()
                .map(|c| format!("&since={c}"))
                .unwrap_or_default();
            match try_open(&url_on(ports[at], &user, &query)).await {
                Ok((next, welcome)) => {
                    if log.cursor.is_some() && welcome["recovered"] != true {
                        log.problems.push(format!("not recovered: {welcome}"));
                    }
                    log.reconnects.push((ended, welcome, ports[at]));
                    ws = next;
                    break;
                }
                // A pod restarting on that port: try the next one after a short pause.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

fn check(user: &str, log: &Log, total: i64) {
    let mut distinct = log.ns.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let missing: Vec<i64> = (0..total)
        .filter(|n| distinct.binary_search(n).is_err())
        .collect();
    assert!(
        log.problems.is_empty() && log.ns == (0..total).collect::<Vec<_>>(),
        "{user}: {} frames for {total} messages, {} distinct, missing {missing:?}, \
         problems {:?}, reconnects {:?}",
        log.ns.len(),
        distinct.len(),
        log.problems,
        log.reconnects
    );
}

// 11 ------------------------------------------------------------------------------------

async fn restartable_pod(nats_url: &str, port: u16, name: &str) -> Hub {
    Hub::start_on(
        port,
        &[
            "--jwt-secret",
            SECRET,
            "--api-key",
            API_KEY,
            "--nats-url",
            nats_url,
            "--pod-name",
            name,
            "--durable",
            "--drain-timeout",
            "1s",
        ],
    )
    .await
}

#[tokio::test]
async fn a_rolling_restart_under_steady_publishing_loses_and_repeats_nothing() {
    const USERS: [&str; 3] = ["u1", "u2", "u3"];
    let nats = Nats::start_js().await;
    let nats_url = nats.url();
    let names = ["pod-a", "pod-b", "pod-c"];
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut pods = Vec::new();
    for (name, &port) in names.iter().zip(&ports) {
        let hub = restartable_pod(&nats_url, port, name).await;
        hub.wait_ready(200).await;
        pods.push(hub);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let (total_tx, total_rx) = watch::channel(None);
    let mut clients = Vec::new();
    for (i, user) in USERS.iter().enumerate() {
        let (ws, _) = connect(&url_on(ports[i], user, "")).await;
        clients.push(tokio::spawn(follow(
            user.to_string(),
            ws,
            ports.clone(),
            i,
            total_rx.clone(),
            deadline,
        )));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let js = nats.js().await;
    let publisher = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut n = 0i64;
            let mut tail = 10;
            while tail > 0 {
                for user in USERS {
                    js_publish_retry(
                        &js,
                        &format!("herald.user.{user}"),
                        &format!("{user}-{n}"),
                        json!({"n": n}).to_string(),
                        WAIT,
                    )
                    .await;
                }
                n += 1;
                if stop.load(Ordering::Relaxed) {
                    tail -= 1;
                }
                // Steady publishing: ~40 rounds a second.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            n
        }
    });

    for i in 0..3 {
        // Traffic flows between restarts.
        tokio::time::sleep(Duration::from_millis(300)).await;
        pods[i].signal("TERM");
        assert_eq!(
            pods[i].wait_exit(Duration::from_secs(15)).await,
            Some(0),
            "{} drained and exited",
            names[i]
        );
        pods[i] = restartable_pod(&nats_url, ports[i], names[i]).await;
        pods[i].wait_ready(200).await;
    }
    stop.store(true, Ordering::Relaxed);
    let total = tokio::time::timeout(WAIT, publisher)
        .await
        .expect("publisher finished")
        .expect("publisher ok");
    total_tx.send(Some(total)).unwrap();
    for (user, client) in USERS.iter().zip(clients) {
        let log = tokio::time::timeout(Duration::from_secs(30), client)
            .await
            .expect("client finished")
            .expect("client task ok");
        assert!(
            !log.reconnects.is_empty(),
            "{user} was never moved by the restart"
        );
        let replayed: Vec<(u16, &Value)> = log
            .reconnects
            .iter()
            .map(|(_, w, port)| (*port, &w["replayed"]))
            .collect();
        eprintln!("{user}: {total} messages; reconnects (port, replayed): {replayed:?}");
        for (ended, _, _) in &log.reconnects {
            assert_eq!(ended, "close 1012", "{user}: a drain closes with 1012");
        }
        check(user, &log, total);
    }
}

// 12 ------------------------------------------------------------------------------------

#[tokio::test]
async fn losing_the_hubs_nats_node_loses_and_repeats_nothing() {
    const TOTAL: i64 = 200;
    let mut cluster = NatsCluster::start(3).await;
    let hub = Hub::secured(&[
        "--nats-url",
        &cluster.urls_from(0),
        "--pod-name",
        "pod-a",
        "--durable",
        "--durable-replicas",
        "3",
    ])
    .await;
    hub.wait_ready(200).await;
    // The node the hub is attached to (its client may have picked any of its URLs).
    let mut attached = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let connz = node.connz().await;
        let names: Vec<Value> = connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].clone())
            .collect();
        if names.iter().any(|n| n == "pod-a") {
            attached.push(i);
        }
    }
    assert_eq!(
        attached.len(),
        1,
        "the hub holds one NATS connection: {attached:?}"
    );
    let victim = attached[0];
    eprintln!("hub attached to n{} (its first URL is n1)", victim + 1);

    let (ws, _) = connect(&url_on(hub.port, "u1", "")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let (total_tx, total_rx) = watch::channel(Some(TOTAL));
    drop(total_tx);
    let client = tokio::spawn(follow(
        "u1".into(),
        ws,
        vec![hub.port],
        0,
        total_rx,
        deadline,
    ));

    // The publisher is attached to the nodes that survive.
    let servers: Vec<String> = cluster
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, n)| n.url())
        .collect();
    let pub_client = tokio::time::timeout(WAIT, async_nats::connect(servers))
        .await
        .expect("publisher connects in time")
        .expect("publisher connects");
    let mut js = async_nats::jetstream::new(pub_client);
    js.set_timeout(Duration::from_secs(2));
    let (published_tx, mut published_rx) = watch::channel(0i64);
    let publisher = tokio::spawn(async move {
        let mut retries = 0;
        for n in 0..TOTAL {
            let (_, failed) = js_publish_retry(
                &js,
                "herald.user.u1",
                &format!("u1-{n}"),
                json!({"n": n}).to_string(),
                Duration::from_secs(20),
            )
            .await;
            retries += failed;
            let _ = published_tx.send(n + 1);
            // Steady publishing.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        retries
    });
    // Mid-stream, the hub's node goes away.
    tokio::time::timeout(WAIT, published_rx.wait_for(|&n| n >= TOTAL / 3))
        .await
        .expect("a third published in time")
        .expect("publisher alive");
    cluster.nodes[victim].kill();

    let retries = tokio::time::timeout(Duration::from_secs(30), publisher)
        .await
        .expect("publisher finished")
        .expect("publisher ok");
    let log = tokio::time::timeout(Duration::from_secs(30), client)
        .await
        .expect("client finished")
        .expect("client task ok");
    eprintln!(
        "publish retries: {retries}; client reconnects: {:?}",
        log.reconnects
    );
    check("u1", &log, TOTAL);
}
