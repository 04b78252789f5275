//! Publishing through herald's HTTP API (`POST /api/v1/publish`) instead of NATS, for
//! standalone hubs: a pool of keep-alive HTTP/1.1 connections, each with one request in
//! flight, fed from one queue. A request is done when its answer has been read, so a hub
//! that answers only once the message is kept (durable stores) paces the publisher.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Publishes queued at most (beyond it `publish` waits: the hub is behind).
const QUEUE: usize = 65_536;

pub struct HttpPublisher {
    jobs: mpsc::Sender<String>,
    pub stats: Arc<Stats>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

pub struct Stats {
    /// Answered 202.
    pub accepted: AtomicU64,
    /// Answered 200: a publish that waited got its receipt.
    pub answered: AtomicU64,
    /// Answered otherwise, or not at all.
    pub failed: AtomicU64,
    /// Request to answer, in microseconds (with `await`: publish to receipt).
    pub latency_us: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            accepted: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latency_us: std::sync::Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 120_000_000, 3)
                    .unwrap_or_else(|_| hdrhistogram::Histogram::new(3).expect("histogram")),
            ),
        }
    }
}

impl HttpPublisher {
    /// `connections` keep-alive connections to `hub`.
    pub async fn start(
        hub: SocketAddr,
        api_key: Option<String>,
        connections: usize,
    ) -> anyhow::Result<HttpPublisher> {
        let (jobs, rx) = mpsc::channel::<String>(QUEUE);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let stats = Arc::new(Stats::default());
        let mut workers = Vec::new();
        for _ in 0..connections.max(1) {
            let conn = Conn::open(hub, api_key.clone()).await?;
            let (rx, stats) = (rx.clone(), stats.clone());
            workers.push(tokio::spawn(async move { conn.serve(rx, stats).await }));
        }
        Ok(HttpPublisher {
            jobs,
            stats,
            workers,
        })
    }

    /// Queue one publish body (a JSON publish request).
    pub async fn publish(&self, body: String) -> anyhow::Result<()> {
        self.jobs
            .send(body)
            .await
            .map_err(|_| anyhow::anyhow!("every HTTP publisher connection failed"))
    }

    /// Wait until every queued publish was answered.
    pub async fn finish(self) -> Arc<Stats> {
        drop(self.jobs);
        for w in self.workers {
            let _ = w.await;
        }
        self.stats
    }
}

struct Conn {
    hub: SocketAddr,
    api_key: Option<String>,
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn open(hub: SocketAddr, api_key: Option<String>) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(hub)
            .await
            .with_context(|| format!("connecting to {hub} for HTTP publishing"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            hub,
            api_key,
            stream: BufReader::new(stream),
        })
    }

    async fn serve(
        mut self,
        rx: Arc<tokio::sync::Mutex<mpsc::Receiver<String>>>,
        stats: Arc<Stats>,
    ) {
        loop {
            let Some(body) = rx.lock().await.recv().await else {
                return;
            };
            let started = std::time::Instant::now();
            let res = self.post(&body).await;
            if let Ok(mut h) = stats.latency_us.lock() {
                let _ = h.record(started.elapsed().as_micros().max(1) as u64);
            }
            match res {
                Ok(202) => stats.accepted.fetch_add(1, Ordering::Relaxed),
                Ok(200) => stats.answered.fetch_add(1, Ordering::Relaxed),
                Ok(_) => stats.failed.fetch_add(1, Ordering::Relaxed),
                Err(_) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    match Conn::open(self.hub, self.api_key.clone()).await {
                        Ok(c) => self = c,
                        Err(_) => return,
                    }
                    continue;
                }
            };
        }
    }

    /// One request and its answer; the answer's status.
    async fn post(&mut self, body: &str) -> anyhow::Result<u16> {
        let auth = self
            .api_key
            .as_ref()
            .map(|k| format!("Authorization: Bearer {k}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST /api/v1/publish HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.hub,
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(body.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status line")?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.stream.read_line(&mut line).await? == 0 {
                anyhow::bail!("connection closed in the answer's head");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut rest = vec![0u8; length];
        self.stream.read_exact(&mut rest).await?;
        Ok(status)
    }
}
