//! Rebalancing after scale-out (PROTOCOL.md §4): a pod holding more than
//! `--rebalance-above` × the cluster's mean sheds sessions with 1012 (reason `rebalance`)
//! at `--rebalance-rate` until within the bound; equal pods shed nothing; a pod alone, or
//! with `--rebalance false`, never sheds.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

async fn pod(nats: &Nats, name: &str, extra: &[&str]) -> Hub {
    let url = nats.url();
    let mut args = vec![
        "--nats-url",
        url.as_str(),
        "--pod-name",
        name,
        "--rebalance-rate",
        "20%",
    ];
    args.extend_from_slice(extra);
    let hub = Hub::secured(&args).await;
    hub.wait_ready(200).await;
    hub
}

async fn open_many(hub: &Hub, prefix: &str, n: usize) -> Vec<Ws> {
    let urls: Vec<String> = (0..n)
        .map(|i| {
            let user = format!("{prefix}{i}");
            hub.ws_url(&user, &format!("token={}", token(&user, 120, None)))
        })
        .collect();
    let mut out = Vec::new();
    for chunk in urls.chunks(50) {
        for (ws, _) in futures_util::future::join_all(chunk.iter().map(|u| connect(u))).await {
            out.push(ws);
        }
    }
    out
}

/// Read every session for `within`: the close frames seen, as (code, reason).
async fn closes(sessions: &mut [Ws], within: Duration) -> Vec<(u16, String)> {
    let deadline = tokio::time::Instant::now() + within;
    let reads = sessions.iter_mut().map(|ws| async move {
        loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => {
                    return Some((u16::from(f.code), f.reason.to_string()))
                }
                Ok(Some(Ok(_))) => continue,
                Ok(_) | Err(_) => return None,
            }
        }
    });
    futures_util::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[tokio::test]
async fn a_pod_over_the_mean_sheds_to_its_bound_with_1012_rebalance() {
    let nats = Nats::start().await;
    let a = pod(&nats, "pod-a", &[]).await;
    let mut on_a = open_many(&a, "r", 300).await;
    let b = pod(&nats, "pod-b", &[]).await;
    // Mean 150, bound 180: 120 shed at 20 % of the pod's sessions a second.
    let shed = closes(&mut on_a, Duration::from_secs(15)).await;
    assert!(
        shed.iter().all(|(c, r)| *c == 1012 && r == "rebalance"),
        "{shed:?}"
    );
    assert!((115..=122).contains(&shed.len()), "{} shed", shed.len());
    assert_eq!(
        a.metric("herald_rebalance_shed_total").await,
        shed.len() as f64
    );
    assert_eq!(a.metric("herald_rebalance_bound").await, 180.0);
    assert_eq!(b.metric("herald_rebalance_shed_total").await, 0.0);
}

#[tokio::test]
async fn equal_pods_and_a_pod_alone_shed_nothing() {
    let nats = Nats::start().await;
    let a = pod(&nats, "pod-a", &[]).await;
    let mut alone = open_many(&a, "x", 120).await;
    // Alone for a while: nothing.
    let started = Instant::now();
    assert!(closes(&mut alone, Duration::from_secs(5)).await.is_empty());
    assert!(started.elapsed() >= Duration::from_secs(5));
    let b = pod(&nats, "pod-b", &[]).await;
    let mut on_b = open_many(&b, "y", 120).await;
    let mut all: Vec<Ws> = alone.into_iter().chain(on_b.drain(..)).collect();
    assert!(closes(&mut all, Duration::from_secs(6)).await.is_empty());
    assert_eq!(a.metric("herald_rebalance_shed_total").await, 0.0);
    assert_eq!(b.metric("herald_rebalance_shed_total").await, 0.0);
}

#[tokio::test]
async fn rebalance_false_never_sheds() {
    let nats = Nats::start().await;
    let a = pod(&nats, "pod-a", &["--rebalance", "false"]).await;
    let mut on_a = open_many(&a, "z", 120).await;
    let _b = pod(&nats, "pod-b", &[]).await;
    assert!(closes(&mut on_a, Duration::from_secs(6)).await.is_empty());
    assert_eq!(a.metric("herald_rebalance_shed_total").await, 0.0);
}
