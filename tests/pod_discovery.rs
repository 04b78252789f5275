//! Pod discovery (PROTOCOL §3): a starting pod announces itself and the live pods answer at
//! once, so by the time its /readyz answers 200 it knows every live pod and they know it; and
//! a pod killed right after it became ready is still announced `down`.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::Value;

/// Fail the test saying `what` was awaited when `fut` takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {limit:?}: {what}"))
}

struct Pod {
    hub: Hub,
    name: String,
}

/// A secured pod on `nats`, named after its role and its port so names are unique per test
/// and sort by role (`a` first: it is the pod that announces the others' `down`).
async fn pod(nats: &Nats, role: &str) -> Pod {
    let port = free_port();
    let name = format!("disc-{role}-{port}");
    let url = nats.url();
    let args = [
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
        "--nats-url",
        url.as_str(),
        "--pod-name",
        name.as_str(),
    ];
    let hub = within(
        WAIT * 3,
        &format!("pod {name} starts"),
        Hub::start_on(port, &args),
    )
    .await;
    Pod { hub, name }
}

/// Wait until the pod's /readyz answers 200.
async fn ready(pod: &Pod) {
    within(
        WAIT * 4,
        &format!("{} becomes ready", pod.name),
        pod.hub.wait_ready(200),
    )
    .await;
}

/// The pod names listed by `/api/v1/stats` on `pod`, sorted.
async fn pods_listed(pod: &Pod) -> Vec<String> {
    let (status, stats) = within(
        WAIT,
        &format!("GET /api/v1/stats on {}", pod.name),
        pod.hub.get_json("/api/v1/stats"),
    )
    .await;
    assert_eq!(status, 200, "stats on {}: {stats}", pod.name);
    let mut names: Vec<String> = stats["pods"]
        .as_array()
        .unwrap_or_else(|| panic!("stats on {} have no pods array: {stats}", pod.name))
        .iter()
        .map(|p| {
            p["pod"]
                .as_str()
                .unwrap_or_else(|| panic!("a pods entry without a pod name: {stats}"))
                .to_string()
        })
        .collect();
    names.sort();
    names
}

fn sorted_names(pods: &[&Pod]) -> Vec<String> {
    let mut names: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_ready_pod_knows_every_live_pod_and_they_know_it() {
    let nats = within(WAIT * 2, "nats-server starts", Nats::start()).await;
    let a = pod(&nats, "a").await;
    let healthy_at = Instant::now();
    ready(&a).await;
    assert!(
        healthy_at.elapsed() < Duration::from_secs(2),
        "a pod alone took {:?} from healthy to ready",
        healthy_at.elapsed()
    );

    // No sleep after readiness: a 200 from /readyz promises the exchange is done.
    let b = pod(&nats, "b").await;
    ready(&b).await;
    let both = sorted_names(&[&a, &b]);
    assert_eq!(pods_listed(&b).await, both, "the new pod b lists");
    assert_eq!(pods_listed(&a).await, both, "the older pod a lists");

    let c = pod(&nats, "c").await;
    ready(&c).await;
    let all = sorted_names(&[&a, &b, &c]);
    assert_eq!(pods_listed(&c).await, all, "the new pod c lists");
    assert_eq!(pods_listed(&b).await, all, "pod b lists");
    assert_eq!(pods_listed(&a).await, all, "pod a lists");
}

#[tokio::test]
async fn a_pod_killed_half_a_second_after_it_became_ready_is_announced_down() {
    let nats = within(WAIT * 2, "nats-server starts", Nats::start()).await;
    let client = within(
        WAIT,
        "service NATS client connects",
        async_nats::connect(nats.url()),
    )
    .await
    .expect("service NATS client");
    let mut events = within(
        WAIT,
        "subscribe to herald.events.pod",
        client.subscribe("herald.events.pod"),
    )
    .await
    .expect("subscription to herald.events.pod");
    within(WAIT, "flush the subscription", client.flush())
        .await
        .expect("flush");

    let a = pod(&nats, "a").await;
    ready(&a).await;
    let b = pod(&nats, "b").await;
    ready(&b).await;
    // This sleep is the scenario, not synchronisation: b dies half a second into being
    // ready, when the others know it from the announce exchange and at most one beacon.
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.hub.signal("KILL");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen: Vec<Value> = Vec::new();
    loop {
        let m = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no down event for {} within 10 s of SIGKILL; pod events seen: {seen:?}",
                    b.name
                )
            })
            .expect("subscription open");
        let v: Value = serde_json::from_slice(&m.payload)
            .unwrap_or_else(|e| panic!("pod event is not JSON ({e}): {:?}", m.payload));
        if v["pod"] == b.name.as_str() && v["event"] == "down" {
            break;
        }
        seen.push(v);
    }
}
