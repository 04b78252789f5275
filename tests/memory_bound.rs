//! The pod's memory is bounded by its sessions' outbound limits however fast messages are
//! published: broadcasts far faster than clients read are refused past each session's
//! `--outbound-queue-bytes` (counted wherever the frames wait inside the pod), the sessions
//! close with 4008, and the hub's RSS does not grow with what was published.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 50;
const BROADCASTS: usize = 1000;
const PAYLOAD: usize = 16 * 1024;
const QUEUE: usize = 64 * 1024;

/// A raw WebSocket client that completes the handshake and then never reads, so the
/// kernel's buffers fill and everything else waits inside the hub.
async fn silent_client(port: u16, user: &str) -> TcpStream {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("connect timed out")
        .expect("connect");
    // A small receive buffer so the hub's side backs up quickly.
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4096);
    let req = format!(
        "GET /websocket/{user} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("handshake sent");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("handshake answer timed out")
            .expect("handshake answer");
        assert_eq!(n, 1, "connection closed during the handshake");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_faster_than_clients_read_do_not_grow_the_hub() {
    let queue = QUEUE.to_string();
    let hub = Hub::start(&["--outbound-queue-bytes", &queue, "--close-grace", "30s"]).await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(silent_client(hub.port, &format!("m{i}")).await);
    }
    hub.wait_json("/api/v1/stats", WAIT, |v| v["connections"] == CLIENTS)
        .await;
    let before = rss_kib(hub.pid());

    let data = "z".repeat(PAYLOAD);
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/publish", hub.http());
    let mut publishers = Vec::new();
    for p in 0..4 {
        let (http, url, data) = (http.clone(), url.clone(), data.clone());
        publishers.push(tokio::spawn(async move {
            for _ in 0..BROADCASTS / 4 {
                let r = http
                    .post(&url)
                    .json(&json!({"broadcast": true, "data": data}))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("publisher {p}: {e}"));
                assert_eq!(r.status().as_u16(), 202);
            }
        }));
    }
    for p in publishers {
        tokio::time::timeout(WAIT * 6, p)
            .await
            .expect("publishing timed out")
            .expect("publisher");
    }

    // Every client is a slow consumer; each decided close is counted at once.
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.metric("herald_closes_total{code=\"4008\"}").await < CLIENTS as f64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every silent client was closed with 4008: {}",
            hub.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(hub.metric("herald_slow_consumer_drops_total").await > 0.0);

    // Published: CLIENTS × BROADCASTS × PAYLOAD = 800 MiB of frames. Held at most: the
    // queue limit per client (3 MiB here), plus socket buffers and allocator slack.
    let after = rss_kib(hub.pid());
    let grew_mib = after.saturating_sub(before) / 1024;
    eprintln!("hub RSS {before} KiB before, {after} KiB after publishing");
    assert!(
        grew_mib < 96,
        "the hub grew by {grew_mib} MiB (from {before} KiB to {after} KiB)"
    );
    drop(clients);
}
