//! Admission and the per-user limit behind a real load balancer (PROTOCOL.md §4), HAProxy
//! (Debian's package, `balance roundrobin`) in front of the pods:
//! - a pod SIGKILLed under 3,000 clients, `--connect-rate 500` on the pods: its clients
//!   come back through the balancer within the time the rate implies, the survivor's RSS
//!   and the p99 latency of the clients it already held stay within stated bounds, and every
//!   1013 the clients saw is one the survivor counted;
//! - simultaneous connects of many users through the balancer onto three pods with
//!   `--max-sessions-per-user 2`: a second after the burst no user holds more than two
//!   sessions, and the ones closed (4009) are each user's newest.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::haproxy::{rand_ms, Haproxy};
use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: u64 = 3000;
const RATE: u64 = 500;
/// A client waits at least this long after a 1013, plus up to TRY_LATER_WINDOW_MS: the
/// browser client's numbers (clients/js/herald.js).
const TRY_LATER_MIN_MS: u64 = 1000;
const TRY_LATER_WINDOW_MS: u64 = 5000;

async fn pod(nats: &Nats, name: &str, extra: &[&str]) -> Hub {
    let url = nats.url();
    let mut args = vec!["--nats-url", &url, "--pod-name", name];
    args.extend_from_slice(extra);
    let hub = Hub::secured(&args).await;
    hub.wait_ready(200).await;
    hub
}

/// What the storm clients saw, shared by all of them.
#[derive(Default)]
struct Storm {
    /// Sessions welcomed and not yet closed.
    open: AtomicU64,
    /// 1013 closes seen, before and after the kill.
    try_later: AtomicU64,
    try_later_after_kill: AtomicU64,
    killed: AtomicBool,
}

/// A browser-like client through the balancer: after a 1013 it waits as the browser client
/// does; after a dropped connection or a failed handshake, a short random delay.
fn storm_client(lb: u16, user: String, storm: Arc<Storm>) {
    tokio::spawn(async move {
        let url = format!(
            "ws://127.0.0.1:{lb}/websocket/{user}?token={}",
            token(&user, 3600, None)
        );
        loop {
            let mut wait = 200 + rand_ms(800);
            if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
                let mut welcomed = false;
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t) if !welcomed && t.as_str().contains("\"welcome\"") => {
                            welcomed = true;
                            storm.open.fetch_add(1, Ordering::Relaxed);
                        }
                        Message::Close(frame) => {
                            if frame.is_some_and(|f| u16::from(f.code) == 1013) {
                                storm.try_later.fetch_add(1, Ordering::Relaxed);
                                if storm.killed.load(Ordering::Relaxed) {
                                    storm.try_later_after_kill.fetch_add(1, Ordering::Relaxed);
                                }
                                wait = TRY_LATER_MIN_MS + rand_ms(TRY_LATER_WINDOW_MS);
                            }
                            break;
                        }
                        _ => {}
                    }
                }
                if welcomed {
                    storm.open.fetch_sub(1, Ordering::Relaxed);
                    // Its pod is gone: back soon, as the browser client's first step.
                    wait = wait.min(rand_ms(300));
                }
            }
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    });
}

/// Latencies (µs) of addressed messages to clients held by the survivor since before the
/// kill, split at the kill.
#[derive(Default)]
struct Latencies {
    before: Vec<u64>,
    during: Vec<u64>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn p99_ms(v: &mut [u64]) -> f64 {
    assert!(!v.is_empty(), "no latencies recorded");
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)] as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pods_clients_come_back_at_the_admission_rate() {
    const PROBES: usize = 40;
    let nats = Nats::start().await;
    let rate = RATE.to_string();
    let mut a = pod(&nats, "pod-a", &["--connect-rate", &rate]).await;
    let b = pod(&nats, "pod-b", &["--connect-rate", &rate]).await;
    let lb_port = free_port();
    let _lb = Haproxy::start_ready(lb_port, &[a.port, b.port]).await;

    // Clients the survivor holds throughout, connected to it directly.
    let lat = Arc::new(Mutex::new(Latencies::default()));
    let killed_at_us = Arc::new(AtomicU64::new(u64::MAX));
    for i in 0..PROBES {
        let (mut ws, _) = connect(&b.ws_url(
            &format!("probe{i}"),
            &format!("token={}", token(&format!("probe{i}"), 3600, None)),
        ))
        .await;
        let lat = lat.clone();
        let killed_at_us = killed_at_us.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    if let Some(sent) = v["data"]["t"].as_u64() {
                        let took = now_us().saturating_sub(sent);
                        let mut l = lat.lock().unwrap();
                        if sent < killed_at_us.load(Ordering::Relaxed) {
                            l.before.push(took);
                        } else {
                            l.during.push(took);
                        }
                    }
                }
            }
        });
    }

    let storm = Arc::new(Storm::default());
    for i in 0..CLIENTS {
        storm_client(lb_port, format!("st{i}"), storm.clone());
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while storm.open.load(Ordering::Relaxed) < CLIENTS {
        assert!(
            Instant::now() < deadline,
            "only {} of {CLIENTS} clients got in",
            storm.open.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let initial_1013 = storm.try_later.load(Ordering::Relaxed);
    let on_a = a.metric("herald_connections").await as u64;
    assert!(
        on_a >= 1000,
        "the balancer spread the clients: {on_a} on pod-a"
    );

    // Steady addressed traffic to the probes: 50 messages a second, before and during.
    let publishing = Arc::new(AtomicBool::new(true));
    let publisher = {
        let publishing = publishing.clone();
        let http = b.http();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while publishing.load(Ordering::Relaxed) {
                tick.tick().await;
                let body = serde_json::json!({"user": format!("probe{}", n % PROBES), "data": {"t": now_us()}});
                let r = client
                    .post(format!("{http}/api/v1/publish"))
                    .bearer_auth(API_KEY)
                    .json(&body)
                    .timeout(WAIT)
                    .send()
                    .await
                    .expect("publish answered");
                assert_eq!(r.status(), 202);
                n += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = rss_kib(b.pid());
    let b_1013_before = b.metric("herald_closes_total{code=\"1013\"}").await;

    storm.killed.store(true, Ordering::Relaxed);
    killed_at_us.store(now_us(), Ordering::Relaxed);
    let killed = Instant::now();
    a.signal("KILL");
    a.wait_exit(WAIT).await;
    // The rate implies on_a / RATE seconds of admission; a client refused with 1013 waits up
    // to TRY_LATER_MIN_MS + TRY_LATER_WINDOW_MS before it tries again, and may be refused
    // twice while the first wave drains: the bound is the rate's time plus two such waits
    // and 5 s for the balancer to mark the pod down and for this loaded machine.
    let implied = Duration::from_millis(on_a * 1000 / RATE);
    let bound =
        implied + Duration::from_millis(2 * (TRY_LATER_MIN_MS + TRY_LATER_WINDOW_MS) + 5000);
    let mut rss_peak = rss_before;
    while storm.open.load(Ordering::Relaxed) < CLIENTS {
        assert!(
            killed.elapsed() < bound,
            "{} of {CLIENTS} back after {:?} (bound {bound:?})",
            storm.open.load(Ordering::Relaxed),
            killed.elapsed()
        );
        rss_peak = rss_peak.max(rss_kib(b.pid()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let back_in = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    rss_peak = rss_peak.max(rss_kib(b.pid()));
    publishing.store(false, Ordering::Relaxed);
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the publisher stops")
        .expect("the publisher did not fail");
    // The last messages are on their way.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let refused_after = storm.try_later_after_kill.load(Ordering::Relaxed);
    let counted = b.metric("herald_closes_total{code=\"1013\"}").await - b_1013_before;
    let (mut before, mut during) = {
        let l = lat.lock().unwrap();
        (l.before.clone(), l.during.clone())
    };
    let (p99_before, p99_during) = (p99_ms(&mut before), p99_ms(&mut during));
    let grown_mib = rss_peak.saturating_sub(rss_before) as f64 / 1024.0;
    eprintln!(
        "storm: {on_a} clients of the killed pod back in {:.1} s (the rate implies {:.1} s, bound {:.0} s); \
         1013s: {initial_1013} while 3,000 first connected, {refused_after} after the kill (survivor counted {counted}); \
         survivor RSS {:.1} -> peak {:.1} MiB; its held clients' p99 {p99_before:.1} ms before, {p99_during:.1} ms during ({} / {} messages)",
        back_in.as_secs_f64(),
        implied.as_secs_f64(),
        bound.as_secs_f64(),
        rss_before as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        before.len(),
        during.len()
    );
    assert!(
        refused_after > 0,
        "{on_a} clients onto one pod admitting {RATE}/s must see 1013s"
    );
    assert_eq!(
        refused_after as f64, counted,
        "every 1013 a client saw is one the survivor counted"
    );
    // The survivor takes on_a more sessions (≈ 5 KiB each); 64 MiB is far above that and
    // far below what a pile-up of half-done handshakes would hold.
    assert!(
        grown_mib <= 64.0,
        "the survivor's RSS grew {grown_mib:.1} MiB in the storm"
    );
    assert!(
        p99_during <= 500.0_f64.max(4.0 * p99_before),
        "the survivor's held clients: p99 {p99_during:.1} ms during the storm, {p99_before:.1} ms before"
    );
}

/// The close code when the session ends by `until` (0 without a close frame), None while
/// it stays open.
async fn ended_by(ws: &mut Ws, until: Instant) -> Option<u16> {
    loop {
        match next_event(ws, until.saturating_duration_since(Instant::now())).await {
            WsEvent::Closed(code) => return Some(code),
            WsEvent::Gone(_) => return Some(0),
            WsEvent::Quiet => return None,
            WsEvent::Frame(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_connects_through_the_balancer_settle_at_the_per_user_limit() {
    const USERS: usize = 60;
    const EACH: usize = 4;
    const LIMIT: usize = 2;
    let nats = Nats::start().await;
    let limit = LIMIT.to_string();
    let extra = ["--max-sessions-per-user", limit.as_str()];
    let pods = [
        pod(&nats, "pod-a", &extra).await,
        pod(&nats, "pod-b", &extra).await,
        pod(&nats, "pod-c", &extra).await,
    ];
    let lb_port = free_port();
    let _lb = Haproxy::start_ready(lb_port, &pods.iter().map(|p| p.port).collect::<Vec<_>>()).await;
    // Every connect event, for the time each pod admitted the session.
    let nc = nats.client().await;
    let mut events = nc
        .subscribe("herald.events.presence.>")
        .await
        .expect("subscribe to presence events");
    let admitted_at: Arc<Mutex<HashMap<String, (u64, String)>>> = Arc::default();
    {
        let admitted_at = admitted_at.clone();
        tokio::spawn(async move {
            while let Some(m) = events.next().await {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                if v["event"] != "connect" {
                    continue;
                }
                let at_ms = v["at"]
                    .as_str()
                    .and_then(|at| humantime::parse_rfc3339(at).ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64)
                    .expect("a connect event has its time");
                let session = v["session"].as_str().unwrap_or_default().to_string();
                let user = v["user"].as_str().unwrap_or_default().to_string();
                admitted_at.lock().unwrap().insert(session, (at_ms, user));
            }
        });
    }

    let attempts = (0..USERS).flat_map(|u| (0..EACH).map(move |_| format!("lim{u}")));
    let opened = futures_util::future::join_all(attempts.map(|user| async move {
        let url = format!(
            "ws://127.0.0.1:{lb_port}/websocket/{user}?token={}",
            token(&user, 600, None)
        );
        (user, try_open(&url).await)
    }))
    .await;
    let burst_over = Instant::now();
    let settle = burst_over + Duration::from_secs(1);
    let mut refused = 0;
    let mut admitted: Vec<(String, String, Ws)> = Vec::new();
    for (user, r) in opened {
        match r {
            Err(e) => {
                assert!(e.contains("429"), "{user}: a refused handshake is 429: {e}");
                refused += 1;
            }
            Ok((ws, welcome)) => {
                let session = welcome["session"]
                    .as_str()
                    .expect("welcome session")
                    .to_string();
                admitted.push((user, session, ws));
            }
        }
    }
    // Every session read at once until the second is over, so a close is seen when it comes.
    let ends =
        futures_util::future::join_all(admitted.iter_mut().map(|(_, _, ws)| ended_by(ws, settle)))
            .await;
    let mut kept: HashMap<String, Vec<(String, Ws)>> = HashMap::new();
    let mut closed: HashMap<String, Vec<String>> = HashMap::new();
    let mut codes = Vec::new();
    for ((user, session, ws), end) in admitted.into_iter().zip(ends) {
        match end {
            Some(code) => {
                codes.push(code);
                closed.entry(user).or_default().push(session);
            }
            None => kept.entry(user).or_default().push((session, ws)),
        }
    }
    eprintln!(
        "{} attempts: {refused} refused with 429, {} closed afterwards, {} kept",
        USERS * EACH,
        codes.len(),
        kept.values().map(Vec::len).sum::<usize>()
    );
    assert!(codes.iter().all(|c| *c == 4009), "closes: {codes:?}");
    for u in 0..USERS {
        let user = format!("lim{u}");
        let held = kept.get(&user).map_or(0, Vec::len);
        assert_eq!(
            held, LIMIT,
            "{user} holds {held} sessions a second after the burst"
        );
    }
    // The ones closed are each user's newest, in the order the pods admitted them.
    let deadline = Instant::now() + WAIT;
    let known = |ids: &[&String]| {
        let at = admitted_at.lock().unwrap();
        ids.iter().all(|id| at.contains_key(*id))
    };
    for (user, gone) in &closed {
        let stays: Vec<&String> = kept[user].iter().map(|(s, _)| s).collect();
        let all: Vec<&String> = stays.iter().copied().chain(gone.iter()).collect();
        while !known(&all) {
            assert!(Instant::now() < deadline, "{user}: connect events missing");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let at = admitted_at.lock().unwrap();
        let key = |id: &String| (at[id].0, id.clone());
        let newest_kept = stays.iter().map(|id| key(id)).max().expect("kept");
        for id in gone {
            assert!(
                key(id) > newest_kept,
                "{user}: {id} (admitted {:?}) was closed while a newer one, {newest_kept:?}, stays",
                at[id].0
            );
        }
    }
    for sessions in kept.values_mut() {
        for (_, ws) in sessions.iter_mut() {
            assert_alive(ws).await;
        }
    }
}
