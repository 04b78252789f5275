//! The four scenarios. Each opens its connections, drives the load, waits for the
//! deliveries it expects (or the timeout) and returns a [`Report`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::stream::{self, StreamExt};
use rand::Rng;

use crate::conn::{cpu_secs, now_ns, open, rss_kib, target, Shared};
use crate::report::{ms, Report};
use crate::Common;

struct Opened {
    handles: Vec<tokio::task::JoinHandle<()>>,
    failures: usize,
    first_error: Option<String>,
    elapsed: Duration,
}

async fn open_all(c: &Common, n: usize, concurrency: usize, shared: &Arc<Shared>) -> Opened {
    let started = Instant::now();
    let results: Vec<anyhow::Result<tokio::task::JoinHandle<()>>> = stream::iter(0..n)
        .map(|i| {
            let shared = shared.clone();
            async move {
                let (_, _, user) = target(c, i);
                open(c, i, &user, shared).await
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut handles = Vec::with_capacity(n);
    let mut failures = 0;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(h) => handles.push(h),
            Err(e) => {
                failures += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let opened = Opened {
        handles,
        failures,
        first_error,
        elapsed: started.elapsed(),
    };
    wait_for(shared, c.timeout, |s| {
        s.welcomed.load(Ordering::Relaxed) >= opened.handles.len()
    })
    .await;
    opened
}

/// Wait until `cond` holds or `timeout` passes; true when it held.
async fn wait_for(shared: &Arc<Shared>, timeout: Duration, cond: impl Fn(&Shared) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond(shared) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // Counters change far more often than we need to look; poll gently.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn cpu_total(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_secs(*p)).sum()
}

/// herald CPU per unit of work between two readings, in microseconds.
fn cpu_figure(r: &mut Report, before: Option<f64>, pids: &[u32], units: u64, what: &str) {
    if let (Some(b), Some(a)) = (before, cpu_total(pids)) {
        let per = (a - b) * 1e6 / units.max(1) as f64;
        r.figure(
            &format!("herald_cpu_us_per_{what}"),
            (per * 100.0).round() / 100.0,
            format!("herald CPU: {:.2} s, {per:.2} µs per {what}", a - b),
        );
    }
}

fn rss_total(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| rss_kib(*p)).sum()
}

fn connection_figures(r: &mut Report, n: usize, o: &Opened, shared: &Shared) {
    let rate = o.handles.len() as f64 / o.elapsed.as_secs_f64().max(1e-9);
    r.figure(
        "connections",
        n,
        format!("connections: {n} asked, {} open", o.handles.len()),
    );
    r.figure(
        "connect_per_s",
        rate.round(),
        format!("connect rate: {rate:.0}/s"),
    );
    r.figure("failures", o.failures, format!("failures: {}", o.failures));
    if let Some(e) = &o.first_error {
        r.figure("first_error", e.as_str(), format!("first error: {e}"));
    }
    r.value("welcomed", shared.welcomed.load(Ordering::Relaxed));
    if o.failures > 0 {
        r.failed = true;
    }
}

fn latency_figures(r: &mut Report, shared: &Shared) {
    let h = shared.latency();
    if h.is_empty() {
        return;
    }
    let (p50, p99, p999, max) = (
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
    );
    r.value("latency_p50_ms", ms(p50));
    r.value("latency_p99_ms", ms(p99));
    r.value("latency_p999_ms", ms(p999));
    r.value("latency_max_ms", ms(max));
    r.lines.push(format!(
        "latency: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        ms(p50),
        ms(p99),
        ms(p999),
        ms(max)
    ));
}

pub async fn idle(c: &Common, n: usize, hold: Duration) -> anyhow::Result<Report> {
    let before = rss_total(&c.herald_pids);
    let shared = Shared::new(0);
    let opened = open_all(c, n, c.concurrency, &shared).await;
    let mut r = Report::new("idle");
    connection_figures(&mut r, n, &opened, &shared);
    tokio::time::sleep(hold).await;
    let still_open = opened.handles.len() - shared.closed.load(Ordering::Relaxed);
    r.figure(
        "held",
        still_open,
        format!("still open after {hold:?}: {still_open}"),
    );
    if still_open < opened.handles.len() {
        r.failed = true;
    }
    if let (Some(b), Some(a)) = (before, rss_total(&c.herald_pids)) {
        let per = (a.saturating_sub(b)) as f64 / still_open.max(1) as f64;
        r.figure(
            "herald_rss_before_kib",
            b,
            format!("herald RSS: {b} KiB before, {a} KiB with the connections open"),
        );
        r.value("herald_rss_after_kib", a);
        r.figure(
            "herald_rss_per_conn_kib",
            (per * 100.0).round() / 100.0,
            format!("herald RSS per connection: {per:.2} KiB"),
        );
    }
    if let Some(me) = rss_kib(std::process::id()) {
        r.value("loader_rss_kib", me);
    }
    Ok(r)
}

pub async fn broadcast(
    c: &Common,
    n: usize,
    messages: usize,
    rate: f64,
    publish: bool,
) -> anyhow::Result<Report> {
    let shared = Shared::new(messages);
    let opened = open_all(c, n, c.concurrency, &shared).await;
    let mut r = Report::new("broadcast");
    connection_figures(&mut r, n, &opened, &shared);
    let expected = (opened.handles.len() * messages) as u64;
    let cpu_before = cpu_total(&c.herald_pids);
    let started_ns = now_ns();
    if publish {
        let nats = async_nats::connect(&c.nats_url)
            .await
            .context("connecting to NATS")?;
        let subject = format!("{}.broadcast", c.subject_prefix);
        let started = Instant::now();
        for m in 0..messages {
            let due = started + Duration::from_secs_f64(m as f64 / rate.max(0.001));
            tokio::time::sleep_until(due.into()).await;
            let payload = format!(r#"{{"t":{},"seq":{m}}}"#, now_ns());
            nats.publish(subject.clone(), payload.into()).await?;
        }
        nats.flush().await?;
    }
    let complete = wait_for(&shared, c.timeout, |s| {
        s.deliveries.load(Ordering::Relaxed) >= expected
    })
    .await;
    let delivered = shared.deliveries.load(Ordering::Relaxed);
    // A listen-only loader does not know when publishing began: count from its first delivery.
    let started_ns = if publish {
        started_ns
    } else {
        shared
            .first_delivery_ns
            .load(Ordering::Relaxed)
            .min(now_ns())
    };
    let span_ns = shared
        .last_delivery_ns
        .load(Ordering::Relaxed)
        .saturating_sub(started_ns)
        .max(1);
    let per_s = delivered as f64 / (span_ns as f64 / 1e9);
    r.figure(
        "messages",
        messages,
        format!("broadcasts: {messages} at {rate}/s"),
    );
    r.figure(
        "deliveries",
        delivered,
        format!(
            "deliveries: {delivered} of {expected} ({})",
            if complete {
                "all arrived"
            } else {
                "INCOMPLETE"
            }
        ),
    );
    r.value("expected", expected);
    r.figure("complete", complete, format!("deliveries/s: {per_s:.0}"));
    r.value("deliveries_per_s", per_s.round());
    let mut reach: Vec<u64> = shared
        .per_seq_max_ns
        .iter()
        .map(|v| v.load(Ordering::Relaxed))
        .collect();
    reach.sort_unstable();
    if let (Some(max), false) = (reach.last(), reach.is_empty()) {
        let p50 = reach[reach.len() / 2];
        r.figure(
            "reach_all_p50_ms",
            ms(p50),
            format!(
                "time for one broadcast to reach every connection: p50 {:.3} ms, max {:.3} ms",
                ms(p50),
                ms(*max)
            ),
        );
        r.value("reach_all_max_ms", ms(*max));
    }
    latency_figures(&mut r, &shared);
    if delivered > 0 {
        cpu_figure(&mut r, cpu_before, &c.herald_pids, delivered, "delivery");
    }
    if !complete {
        r.failed = true;
    }
    Ok(r)
}

pub async fn addressed(
    c: &Common,
    users: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<Report> {
    let total = (rate * duration.as_secs_f64()).ceil() as usize;
    let shared = Shared::new(total);
    let opened = open_all(c, users, c.concurrency, &shared).await;
    let mut r = Report::new("addressed");
    connection_figures(&mut r, users, &opened, &shared);
    let nats = async_nats::connect(&c.nats_url)
        .await
        .context("connecting to NATS")?;
    let cpu_before = cpu_total(&c.herald_pids);
    let started = Instant::now();
    let mut sent = 0usize;
    let mut rng = rand::rng();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
        while sent < due {
            let user = rng.random_range(0..opened.handles.len().max(1));
            let (_, _, name) = target(c, user);
            let payload = format!(r#"{{"t":{},"seq":{sent}}}"#, now_ns());
            nats.publish(format!("{}.user.{name}", c.subject_prefix), payload.into())
                .await?;
            sent += 1;
        }
    }
    nats.flush().await?;
    let publish_secs = started.elapsed().as_secs_f64();
    let complete = wait_for(&shared, c.timeout, |s| {
        s.deliveries.load(Ordering::Relaxed) >= sent as u64
    })
    .await;
    let delivered = shared.deliveries.load(Ordering::Relaxed);
    let lost = sent as u64 - delivered.min(sent as u64);
    r.figure(
        "sent",
        sent,
        format!(
            "sent: {sent} in {publish_secs:.2} s ({:.0}/s)",
            sent as f64 / publish_secs
        ),
    );
    r.value("rate", rate);
    r.figure(
        "delivered",
        delivered,
        format!("delivered: {delivered}, lost: {lost}"),
    );
    r.value("lost", lost);
    latency_figures(&mut r, &shared);
    cpu_figure(&mut r, cpu_before, &c.herald_pids, sent as u64, "message");
    if !complete {
        r.failed = true;
    }
    Ok(r)
}

pub async fn storm(c: &Common, n: usize) -> anyhow::Result<Report> {
    let shared = Shared::new(0);
    let started = Instant::now();
    // Everyone at once: no limit on handshakes in flight.
    let opened = open_all(c, n, n, &shared).await;
    let welcomed = shared.welcomed.load(Ordering::Relaxed);
    let all = welcomed >= n;
    let took = started.elapsed();
    let mut r = Report::new("storm");
    connection_figures(&mut r, n, &opened, &shared);
    r.figure(
        "all_welcomed_s",
        (took.as_secs_f64() * 1000.0).round() / 1000.0,
        format!("{welcomed} of {n} welcomed in {:.3} s", took.as_secs_f64()),
    );
    if !all {
        r.failed = true;
    }
    Ok(r)
}
