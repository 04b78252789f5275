//! The scenarios. Each opens its connections, drives the load, waits for the
//! deliveries it expects (or the timeout) and returns a [`Report`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::stream::{self, StreamExt};
use rand::{Rng, SeedableRng};

use crate::conn::{
    connect, cpu_secs, now_ns, open, open_files_limit, rss_kib, target, Shared, Slot, Ws,
};
use crate::report::{ms, Report};
use crate::{Common, Proto, Transport};

/// What the server processes (`--herald-pid` / `--server-pid`) are, in human lines.
fn server_name(c: &Common) -> &'static str {
    match c.proto {
        Proto::Herald => "herald",
        Proto::NatsWs => "nats-server",
    }
}

/// Record `server_<key>` (every protocol, for side-by-side runs) and, for herald,
/// `herald_<key>` as well (the name earlier results and scripts use).
fn server_value(r: &mut Report, c: &Common, key: &str, value: impl Into<serde_json::Value>) {
    let value = value.into();
    if c.proto == Proto::Herald {
        r.value(&format!("herald_{key}"), value.clone());
    }
    r.value(&format!("server_{key}"), value);
}

/// Refuse more connections than this process may open files for (each is a socket; a few
/// more for the runtime and the NATS publisher).
fn check_open_files(n: usize) -> anyhow::Result<()> {
    if let Some(limit) = open_files_limit() {
        anyhow::ensure!(
            n + 32 <= limit,
            "{n} connections need more than this process's open-file limit of {limit}: \
             raise it (ulimit -n) or split the connections over several loader processes \
             (--user-prefix and --first-source-ip of their own)"
        );
    }
    Ok(())
}

struct Opened {
    handles: Vec<tokio::task::JoinHandle<()>>,
    failures: usize,
    first_error: Option<String>,
    /// Until every handshake had completed (`concurrency` in flight).
    elapsed: Duration,
    /// Until every opened session was ready (welcomed; for NATS, subscribed).
    ready_elapsed: Duration,
}

async fn open_all(c: &Common, n: usize, concurrency: usize, shared: &Arc<Shared>) -> Opened {
    let started = Instant::now();
    let results: Vec<anyhow::Result<tokio::task::JoinHandle<()>>> = stream::iter(0..n)
        .map(|i| {
            let shared = shared.clone();
            async move {
                let (_, _, user) = target(c, i);
                open(c, i, &user, shared, None).await
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
    let mut opened = Opened {
        handles,
        failures,
        first_error,
        elapsed: started.elapsed(),
        ready_elapsed: Duration::ZERO,
    };
    wait_for(shared, c.timeout, |s| {
        s.welcomed.load(Ordering::Relaxed) >= opened.handles.len()
    })
    .await;
    opened.ready_elapsed = started.elapsed();
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

/// CPU per unit of work between two readings, in microseconds: the server's
/// (`server_cpu_us_per_<what>`, and `herald_...` for herald), its nats-server's
/// (`nats_...`, with `--nats-pid`) and both together (`server_nats_...`): for herald in
/// NATS mode, what a delivery costs the hub and its bus.
struct CpuWindow {
    server: Option<f64>,
    nats: Option<f64>,
}

impl CpuWindow {
    fn start(c: &Common) -> CpuWindow {
        CpuWindow {
            server: cpu_total(&c.herald_pids),
            nats: cpu_total(&c.nats_pids),
        }
    }

    fn finish(&self, r: &mut Report, c: &Common, units: u64, what: &str) {
        let per = |before: f64, after: f64| {
            let us = (after - before) * 1e6 / units.max(1) as f64;
            (us * 100.0).round() / 100.0
        };
        let server = self.server.zip(cpu_total(&c.herald_pids));
        let nats = self.nats.zip(cpu_total(&c.nats_pids));
        if let Some((b, a)) = server {
            let us = per(b, a);
            server_value(r, c, &format!("cpu_us_per_{what}"), us);
            r.lines.push(format!(
                "{} CPU: {:.2} s, {us:.2} µs per {what}",
                server_name(c),
                a - b
            ));
        }
        if let Some((b, a)) = nats {
            let us = per(b, a);
            r.figure(
                &format!("nats_cpu_us_per_{what}"),
                us,
                format!(
                    "nats-server (bus) CPU: {:.2} s, {us:.2} µs per {what}",
                    a - b
                ),
            );
        }
        if let (Some((b, a)), Some((nb, na))) = (server, nats) {
            let us = per(b + nb, a + na);
            r.figure(
                &format!("server_nats_cpu_us_per_{what}"),
                us,
                format!(
                    "{} and its nats-server: {us:.2} µs per {what}",
                    server_name(c)
                ),
            );
        }
    }
}

/// `process`'s CPU (the sum over `pids`) per unit of work between two readings.
fn process_cpu_figure(
    r: &mut Report,
    process: &str,
    before: Option<f64>,
    pids: &[u32],
    units: u64,
    what: &str,
) {
    if let (Some(b), Some(a)) = (before, cpu_total(pids)) {
        let per = (a - b) * 1e6 / units.max(1) as f64;
        r.figure(
            &format!("{process}_cpu_us_per_{what}"),
            (per * 100.0).round() / 100.0,
            format!("{process} CPU: {:.2} s, {per:.2} µs per {what}", a - b),
        );
    }
}

/// Busy CPU seconds of the whole machine (all cores) since boot, from /proc/stat.
fn machine_busy_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy = v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7)?;
    Some(busy / 100.0)
}

/// The machine's CPU over a measurement: how much was busy, and how much of that was not
/// herald, nats-server (`--nats-pid`) or this loader, i.e. other work on the machine that
/// the figures then include.
struct MachineWindow {
    started: Instant,
    busy: Option<f64>,
    ours: Option<f64>,
    pids: Vec<u32>,
}

impl MachineWindow {
    fn start(c: &Common) -> MachineWindow {
        let mut pids = c.herald_pids.clone();
        pids.extend(&c.nats_pids);
        pids.push(std::process::id());
        MachineWindow {
            started: Instant::now(),
            busy: machine_busy_secs(),
            ours: cpu_total(&pids),
            pids,
        }
    }

    fn finish(&self, r: &mut Report) {
        let (Some(b0), Some(o0), Some(b1), Some(o1)) = (
            self.busy,
            self.ours,
            machine_busy_secs(),
            cpu_total(&self.pids),
        ) else {
            return;
        };
        let wall = self.started.elapsed().as_secs_f64();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let busy = b1 - b0;
        let others = (busy - (o1 - o0)).max(0.0);
        let round = |x: f64| (x * 100.0).round() / 100.0;
        r.figure(
            "machine_busy_cpu_s",
            round(busy),
            format!(
                "machine: {busy:.2} s of CPU busy in {wall:.2} s on {cores} cores; {others:.2} s of it \
                 not the servers or the loader"
            ),
        );
        r.value("other_cpu_s", round(others));
        r.value("window_s", round(wall));
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
    let welcomed = shared.welcomed.load(Ordering::Relaxed);
    let ready_rate = welcomed as f64 / o.ready_elapsed.as_secs_f64().max(1e-9);
    r.figure(
        "ready_per_s",
        ready_rate.round(),
        format!(
            "ready rate: {ready_rate:.0}/s ({welcomed} sessions ready in {:.3} s)",
            o.ready_elapsed.as_secs_f64()
        ),
    );
    r.figure("failures", o.failures, format!("failures: {}", o.failures));
    if let Some(e) = &o.first_error {
        r.figure("first_error", e.as_str(), format!("first error: {e}"));
    }
    r.value("welcomed", welcomed);
    if o.failures > 0 || welcomed < o.handles.len() {
        r.failed = true;
    }
    session_errors(r, shared);
}

/// Connections that failed after their handshake (any protocol error).
fn session_errors(r: &mut Report, shared: &Shared) {
    let errors = shared.errors.load(Ordering::Relaxed);
    if errors > 0 {
        r.figure(
            "session_errors",
            errors,
            format!(
                "connections failed after the handshake: {errors} (first: {})",
                shared.first_error().unwrap_or_default()
            ),
        );
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
    check_open_files(n)?;
    let before = rss_total(&c.herald_pids);
    let nats_before = rss_total(&c.nats_pids);
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
    let per_conn = |b: u64, a: u64| {
        let per = a.saturating_sub(b) as f64 / still_open.max(1) as f64;
        (per * 100.0).round() / 100.0
    };
    let server = before.zip(rss_total(&c.herald_pids));
    let nats = nats_before.zip(rss_total(&c.nats_pids));
    let name = server_name(c);
    if let Some((b, a)) = server {
        let per = per_conn(b, a);
        server_value(&mut r, c, "rss_before_kib", b);
        server_value(&mut r, c, "rss_after_kib", a);
        server_value(&mut r, c, "rss_per_conn_kib", per);
        r.lines.push(format!(
            "{name} RSS: {b} KiB before, {a} KiB with the connections open: {per:.2} KiB per connection"
        ));
    }
    if let Some((b, a)) = nats {
        let per = per_conn(b, a);
        r.value("nats_rss_before_kib", b);
        r.value("nats_rss_after_kib", a);
        r.figure(
            "nats_rss_per_conn_kib",
            per,
            format!(
                "nats-server (bus) RSS: {b} KiB before, {a} KiB after: {per:.2} KiB per connection"
            ),
        );
    }
    if let (Some((b, a)), Some((nb, na))) = (server, nats) {
        let per = per_conn(b + nb, a + na);
        r.figure(
            "server_nats_rss_per_conn_kib",
            per,
            format!("{name} and its nats-server: {per:.2} KiB per connection"),
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
    check_open_files(n)?;
    let shared = Shared::new(messages);
    let opened = open_all(c, n, c.concurrency, &shared).await;
    let mut r = Report::new("broadcast");
    connection_figures(&mut r, n, &opened, &shared);
    let expected = (opened.handles.len() * messages) as u64;
    let nats = if publish {
        Some(
            async_nats::connect(&c.nats_url)
                .await
                .context("connecting to NATS")?,
        )
    } else {
        None
    };
    let cpu = CpuWindow::start(c);
    let machine = MachineWindow::start(c);
    let started_ns = now_ns();
    if let Some(nats) = nats {
        let subject = herald_proto::Subjects::new(c.subject_prefix.clone()).broadcast();
        let started = Instant::now();
        for m in 0..messages {
            if rate > 0.0 {
                let due = started + Duration::from_secs_f64(m as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
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
        if rate > 0.0 {
            format!("broadcasts: {messages} at {rate}/s")
        } else {
            format!("broadcasts: {messages}, all at once")
        },
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
        cpu.finish(&mut r, c, delivered, "delivery");
    }
    machine.finish(&mut r);
    session_errors(&mut r, &shared);
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
    check_open_files(users)?;
    let total = (rate * duration.as_secs_f64()).ceil() as usize;
    let shared = Shared::new(total);
    let opened = open_all(c, users, c.concurrency, &shared).await;
    let mut r = Report::new("addressed");
    connection_figures(&mut r, users, &opened, &shared);
    let publisher = Publisher::connect(c, c.http_connections).await?;
    let cpu = CpuWindow::start(c);
    let me = [std::process::id()];
    let loader_cpu_before = cpu_total(&me);
    let machine = MachineWindow::start(c);
    let started_ns = now_ns();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut rng = rand::rng();
    let subjects = herald_proto::Subjects::new(c.subject_prefix.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
        while sent < due {
            let user = rng.random_range(0..opened.handles.len().max(1));
            let (_, _, name) = target(c, user);
            let payload = format!(r#"{{"t":{},"seq":{sent}}}"#, now_ns());
            publisher.user(&subjects, &name, payload).await?;
            sent += 1;
        }
    }
    let http = publisher.finish_stats().await?;
    let publish_secs = started.elapsed().as_secs_f64();
    if let Some(stats) = http {
        r.value("http_refused", stats.failed.load(Ordering::Relaxed));
        if c.await_receipt_ms.is_some() {
            let answered = stats.answered.load(Ordering::Relaxed);
            r.figure(
                "receipts_answered",
                answered,
                format!(
                    "{answered} publishes answered 200 with their receipt, {} at the timeout (202)",
                    stats.accepted.load(Ordering::Relaxed)
                ),
            );
            if let Ok(h) = stats.latency_us.lock() {
                let q = |p: f64| h.value_at_quantile(p) as f64 / 1000.0;
                r.figure(
                    "receipt_p50_ms",
                    q(0.5),
                    format!("publish to receipt (HTTP call with await): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms", q(0.5), q(0.99), h.max() as f64 / 1000.0),
                );
                r.value("receipt_p99_ms", q(0.99));
                r.value("receipt_max_ms", h.max() as f64 / 1000.0);
            }
        }
    }
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
    r.value("sent_per_s", (sent as f64 / publish_secs.max(1e-9)).round());
    r.figure(
        "delivered",
        delivered,
        format!("delivered: {delivered}, lost: {lost}"),
    );
    r.value("lost", lost);
    // Delivered per second from the first publish to the last delivery: it stops
    // following the rate once herald (or the path before it) saturates.
    let span_s = shared
        .last_delivery_ns
        .load(Ordering::Relaxed)
        .saturating_sub(started_ns)
        .max(1) as f64
        / 1e9;
    let delivered_per_s = delivered as f64 / span_s;
    r.figure(
        "delivered_per_s",
        delivered_per_s.round(),
        format!(
            "delivered/s: {delivered_per_s:.0} (first publish to last delivery, {span_s:.2} s)"
        ),
    );
    latency_figures(&mut r, &shared);
    cpu.finish(&mut r, c, sent as u64, "message");
    // The loader shares the machine: its own share of the cores.
    process_cpu_figure(
        &mut r,
        "loader",
        loader_cpu_before,
        &me,
        sent as u64,
        "message",
    );
    machine.finish(&mut r);
    session_errors(&mut r, &shared);
    if !complete {
        r.failed = true;
    }
    Ok(r)
}

pub async fn storm(c: &Common, n: usize) -> anyhow::Result<Report> {
    check_open_files(n)?;
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

/// The next text frame, parsed (pings and pongs skipped); an error on close or timeout.
async fn next_frame(ws: &mut Ws, timeout: Duration) -> anyhow::Result<herald_proto::ServerFrame> {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let msg = tokio::time::timeout(timeout, ws.next())
            .await
            .context("timed out waiting for a frame")?
            .context("connection closed")??;
        match msg {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str())
                    .with_context(|| format!("unexpected frame {t}"))
            }
            Message::Close(f) => anyhow::bail!("closed by herald: {f:?}"),
            _ => {}
        }
    }
}

/// The `seq` and `cursor` of a message frame; an error for any other frame.
fn message_of(f: herald_proto::ServerFrame) -> anyhow::Result<(Option<u64>, String)> {
    match f {
        herald_proto::ServerFrame::Message { cursor, data, .. } => {
            Ok((data.get("seq").and_then(|v| v.as_u64()), cursor))
        }
        other => anyhow::bail!("expected a message frame, got {other:?}"),
    }
}

fn welcome_of(f: herald_proto::ServerFrame) -> anyhow::Result<(Option<bool>, Option<u64>)> {
    match f {
        herald_proto::ServerFrame::Welcome {
            recovered,
            replayed,
            ..
        } => Ok((recovered, replayed)),
        other => anyhow::bail!("expected a welcome, got {other:?}"),
    }
}

/// A JSON payload of exactly `bytes` bytes (or the shortest possible) carrying `seq`.
fn padded_payload(seq: usize, bytes: usize) -> String {
    let head = format!(r#"{{"t":{},"seq":{seq},"pad":""#, now_ns());
    let pad = bytes.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// One timed reconnect with `since`: milliseconds to the welcome and to the last of
/// `expect` replayed messages, which must come in order (`seq` 0..expect).
async fn timed_resume(
    c: &Common,
    i: usize,
    user: &str,
    since: &str,
    expect: usize,
) -> anyhow::Result<(f64, f64)> {
    let t0 = Instant::now();
    let mut ws = connect(c, i, user, Some(since)).await?;
    let (recovered, replayed) = welcome_of(next_frame(&mut ws, c.timeout).await?)?;
    let welcome_ms = t0.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        recovered == Some(true) && replayed == Some(expect as u64),
        "welcome said recovered {recovered:?}, replayed {replayed:?}; expected true, {expect}"
    );
    for want in 0..expect {
        let (seq, _) = message_of(next_frame(&mut ws, c.timeout).await?)?;
        anyhow::ensure!(
            seq == Some(want as u64),
            "replayed message {want} had seq {seq:?}"
        );
    }
    let last_ms = t0.elapsed().as_secs_f64() * 1e3;
    let _ = ws.close(None).await;
    Ok((welcome_ms, last_ms))
}

fn min_median_max(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    (round(s[0]), round(s[s.len() / 2]), round(s[s.len() - 1]))
}

/// Report samples as `<key>_median` (a figure, described by `what` followed by the
/// spread) and `<key>_min` / `<key>_max`.
fn report_spread(r: &mut Report, key: &str, samples: &[f64], what: &str) {
    let (lo, med, hi) = min_median_max(samples);
    r.figure(
        &format!("{key}_median"),
        med,
        format!("{what}: min {lo} ms, median {med} ms, max {hi} ms"),
    );
    r.value(&format!("{key}_min"), lo);
    r.value(&format!("{key}_max"), hi);
}

/// Durable mode: `messages` messages stored for one user (JetStream publish, acks
/// awaited), the cursor of the message before them taken from a live session, then
/// `repeat` reconnects with `since=` that cursor, each timed from the TCP connect until
/// the last replayed message has been read. Then as many reconnects with the cursor of the
/// last message (nothing to replay): the fixed cost of a resuming handshake.
pub async fn replay(
    c: &Common,
    messages: usize,
    repeat: usize,
    payload_bytes: usize,
) -> anyhow::Result<Report> {
    anyhow::ensure!(repeat > 0, "--repeat must be at least 1");
    anyhow::ensure!(
        c.proto == Proto::Herald && c.transport == Transport::Ws,
        "replay is herald's durable mode over WebSocket (--proto herald --transport ws)"
    );
    let user = format!("{}r{}", c.user_prefix, now_ns() % 1_000_000_000);
    let subjects = herald_proto::Subjects::new(c.subject_prefix.clone());
    let subject = subjects.user(&user);

    // A live session gives the cursor of a marker message, the one before the others.
    let mut live = connect(c, 0, &user, None).await?;
    welcome_of(next_frame(&mut live, c.timeout).await?)?;
    let published = Instant::now();
    let how = if c.publish_http {
        // One connection: the messages must be kept in publication order.
        let publisher = Publisher::connect(c, 1).await?;
        publisher
            .user(&subjects, &user, r#"{"marker":true}"#.into())
            .await?;
        for seq in 0..messages {
            publisher
                .user(&subjects, &user, padded_payload(seq, payload_bytes))
                .await?;
        }
        let refused = publisher.finish().await?;
        anyhow::ensure!(refused == 0, "{refused} HTTP publishes refused");
        "HTTP publish, answers awaited"
    } else {
        let nats = async_nats::connect(&c.nats_url)
            .await
            .context("connecting to NATS")?;
        let js = async_nats::jetstream::new(nats.clone());
        js.publish(subject.clone(), r#"{"marker":true}"#.into())
            .await?
            .await
            .context("marker not stored (is herald durable, the stream there?)")?;
        let mut acks = Vec::with_capacity(messages);
        for seq in 0..messages {
            acks.push(
                js.publish(subject.clone(), padded_payload(seq, payload_bytes).into())
                    .await?,
            );
        }
        for a in acks {
            a.await.context("message not stored")?;
        }
        "JetStream publish, acks awaited"
    };
    let publish_ms = published.elapsed().as_secs_f64() * 1e3;
    let (_, before) = message_of(next_frame(&mut live, c.timeout).await?)?;
    // The live session sees them too: then the pod is past them for certain.
    let mut last = before.clone();
    for want in 0..messages {
        let (seq, cursor) = message_of(next_frame(&mut live, c.timeout).await?)?;
        anyhow::ensure!(
            seq == Some(want as u64),
            "live message {want} had seq {seq:?}"
        );
        last = cursor;
    }
    let _ = live.close(None).await;
    drop(live);
    // Let the pod forget the user (no session left), as after a real disconnect.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cpu_before = cpu_total(&c.herald_pids);
    let nats_cpu_before = cpu_total(&c.nats_pids);
    let machine = MachineWindow::start(c);
    let mut welcome = Vec::new();
    let mut whole = Vec::new();
    for rep in 0..repeat {
        let (w, l) = timed_resume(c, rep + 1, &user, &before, messages).await?;
        welcome.push(w);
        whole.push(l);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // CPU over the replaying reconnects (and the pauses between them).
    let cpu_after = cpu_total(&c.herald_pids);
    let nats_cpu_after = cpu_total(&c.nats_pids);
    let mut r = Report::new("replay");
    machine.finish(&mut r);
    let mut empty = Vec::new();
    for rep in 0..repeat {
        let (_, l) = timed_resume(c, repeat + rep + 1, &user, &last, 0).await?;
        empty.push(l);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let frame_bytes = padded_payload(0, payload_bytes).len();
    r.figure(
        "messages",
        messages,
        format!(
            "{messages} messages of {frame_bytes} B stored for {user} in {publish_ms:.1} ms ({how})"
        ),
    );
    r.value("payload_bytes", frame_bytes);
    r.value("repeat", repeat);
    report_spread(
        &mut r,
        "replay_ms",
        &whole,
        &format!("connect with since= to the {messages}th replayed message"),
    );
    r.value(
        "replay_ms",
        whole
            .iter()
            .map(|x| (x * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>(),
    );
    report_spread(
        &mut r,
        "welcome_ms",
        &welcome,
        &format!("of which to the welcome (recovered:true, replayed:{messages})"),
    );
    report_spread(
        &mut r,
        "empty_resume_ms",
        &empty,
        "resume with nothing to replay (cursor of the last message, replayed:0)",
    );
    let replayed = (repeat * messages.max(1)) as f64;
    for (process, before, after) in [
        ("herald", cpu_before, cpu_after),
        ("nats", nats_cpu_before, nats_cpu_after),
    ] {
        if let (Some(b), Some(a)) = (before, after) {
            let per = (a - b) * 1e6 / replayed;
            r.figure(
                &format!("{process}_cpu_us_per_replayed"),
                (per * 100.0).round() / 100.0,
                format!("{process} CPU over the {repeat} replays: {:.2} s, {per:.2} µs per replayed message", a - b),
            );
        }
    }
    Ok(r)
}

/// What `soak` runs (see `Scenario::Soak`).
pub struct SoakPlan {
    pub connections: usize,
    pub duration: Duration,
    pub churn_percent: f64,
    pub rate: f64,
    pub broadcast_rate: f64,
    pub grace: Duration,
    pub interval: Duration,
}

/// One connection slot of the soak: its current connection and what it is owed.
#[derive(Default)]
struct SoakSlot {
    /// In the traffic: messages are sent to it (and counted in `expected`).
    live: AtomicBool,
    /// Being closed or reopened.
    busy: AtomicBool,
    /// Messages sent that this slot's current connection should receive.
    expected: AtomicU64,
    conn: std::sync::Mutex<Option<(Arc<Slot>, tokio::task::JoinHandle<()>)>>,
}

/// Totals over every connection the soak closed (and, at the end, every one left).
#[derive(Default)]
struct SoakTally {
    expected: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
    extra: AtomicU64,
    churned: AtomicU64,
    reopen_failures: AtomicU64,
    /// Connections that closed without being asked (server close, error).
    unexpected_closes: AtomicU64,
}

struct Soak {
    c: Common,
    shared: Arc<Shared>,
    slots: Vec<SoakSlot>,
    tally: SoakTally,
    grace: Duration,
}

impl Soak {
    /// Open slot `i`'s connection and wait until its session is ready; then it is live.
    async fn open_slot(&self, i: usize) -> anyhow::Result<()> {
        let (_, _, user) = target(&self.c, i);
        let slot = Arc::new(Slot::default());
        let handle = open(&self.c, i, &user, self.shared.clone(), Some(slot.clone())).await?;
        let deadline = Instant::now() + self.c.timeout;
        while !slot.ready.load(Ordering::Acquire) {
            if handle.is_finished() || Instant::now() >= deadline {
                handle.abort();
                anyhow::bail!("session {user} not ready");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let s = &self.slots[i];
        s.expected.store(0, Ordering::Relaxed);
        // What arrived before the slot is live was not counted as owed (broadcasts published
        // while it subscribed): start from zero.
        slot.received.store(0, Ordering::Relaxed);
        *s.conn.lock().expect("slot lock") = Some((slot, handle));
        s.live.store(true, Ordering::Release);
        Ok(())
    }

    /// Take slot `i` out of the traffic, let what was sent to it arrive (`grace`), close
    /// it and count what it got against what it was owed.
    async fn close_slot(&self, i: usize, grace: bool) {
        let s = &self.slots[i];
        s.live.store(false, Ordering::Release);
        if grace {
            tokio::time::sleep(self.grace).await;
        }
        let conn = s.conn.lock().expect("slot lock").take();
        let Some((slot, mut handle)) = conn else {
            return;
        };
        slot.close();
        if tokio::time::timeout(Duration::from_secs(5), &mut handle)
            .await
            .is_err()
        {
            // The reader did not finish its close in time: drop the connection.
            handle.abort();
        }
        let expected = s.expected.swap(0, Ordering::Relaxed);
        let received = slot.received.load(Ordering::Relaxed);
        let t = &self.tally;
        t.expected.fetch_add(expected, Ordering::Relaxed);
        t.received.fetch_add(received, Ordering::Relaxed);
        t.lost
            .fetch_add(expected.saturating_sub(received), Ordering::Relaxed);
        t.extra
            .fetch_add(received.saturating_sub(expected), Ordering::Relaxed);
    }

    /// Close slot `i` and open it again (retrying a failed reopen a few times).
    async fn churn(&self, i: usize, grace: bool) {
        self.close_slot(i, grace).await;
        self.tally.churned.fetch_add(1, Ordering::Relaxed);
        for attempt in 0..3 {
            match self.open_slot(i).await {
                Ok(()) => break,
                Err(_) => {
                    self.tally.reopen_failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
                }
            }
        }
        self.slots[i].busy.store(false, Ordering::Release);
    }

    /// Whether slot `i`'s connection closed without being asked.
    fn died(&self, i: usize) -> bool {
        let s = &self.slots[i];
        s.live.load(Ordering::Acquire)
            && s.conn
                .lock()
                .expect("slot lock")
                .as_ref()
                .is_some_and(|(slot, _)| !slot.ready.load(Ordering::Acquire))
    }

    fn live_count(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.live.load(Ordering::Relaxed))
            .count()
    }
}

/// Soak: `connections` sessions; every minute `churn_percent` % of them (random ones, each
/// taken out of the traffic `grace` before it closes) close and reconnect; meanwhile
/// `rate` addressed messages per second to random live users and `broadcast_rate`
/// broadcasts per second, all via NATS. Every `interval`: live connections, the server's
/// RSS, latency of that interval, deliveries; at the end, what every connection was sent
/// against what it received.
pub async fn soak(c: &Common, plan: SoakPlan) -> anyhow::Result<Report> {
    anyhow::ensure!(
        c.sessions_per_user.max(1) == 1,
        "soak counts what each connection is owed: one session per user"
    );
    anyhow::ensure!(plan.connections > 0, "--connections must be at least 1");
    check_open_files(plan.connections)?;
    let shared = Shared::new(0);
    let soak = Arc::new(Soak {
        c: c.clone(),
        shared: shared.clone(),
        slots: (0..plan.connections).map(|_| SoakSlot::default()).collect(),
        tally: SoakTally::default(),
        grace: plan.grace,
    });
    let name = server_name(c);

    // Everyone in, `concurrency` handshakes at a time.
    let started = Instant::now();
    let failures = stream::iter(0..plan.connections)
        .map(|i| {
            let soak = soak.clone();
            async move { soak.open_slot(i).await.is_err() }
        })
        .buffer_unordered(c.concurrency.max(1))
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    let open_s = started.elapsed().as_secs_f64();
    let mut r = Report::new("soak");
    r.figure(
        "connections",
        plan.connections,
        format!(
            "connections: {} asked, {} ready in {open_s:.2} s, {failures} failed",
            plan.connections,
            soak.live_count()
        ),
    );
    r.value("failures", failures);
    let nats = async_nats::connect(&c.nats_url)
        .await
        .context("connecting to NATS")?;

    let stop = Arc::new(AtomicBool::new(false));
    let sent_addressed = Arc::new(AtomicU64::new(0));
    let sent_broadcasts = Arc::new(AtomicU64::new(0));

    // The traffic: addressed messages and broadcasts on one 1 ms tick.
    let publisher = {
        let (soak, stop, nats) = (soak.clone(), stop.clone(), nats.clone());
        let (sent_a, sent_b) = (sent_addressed.clone(), sent_broadcasts.clone());
        let prefix = herald_proto::Subjects::new(c.subject_prefix.clone());
        let (rate, broadcast_rate) = (plan.rate, plan.broadcast_rate);
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let started = Instant::now();
            let (mut addressed, mut broadcasts, mut seq) = (0u64, 0u64, 0u64);
            let n = soak.slots.len();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = started.elapsed().as_secs_f64();
                while (addressed as f64) < t * rate {
                    addressed += 1;
                    // A random live slot (the next live one after a random start).
                    let start = rng.random_range(0..n);
                    let Some(i) = (0..n)
                        .map(|k| (start + k) % n)
                        .find(|&i| soak.slots[i].live.load(Ordering::Acquire))
                    else {
                        continue;
                    };
                    soak.slots[i].expected.fetch_add(1, Ordering::Relaxed);
                    let (_, _, user) = target(&soak.c, i);
                    let payload = format!(r#"{{"t":{},"seq":{seq}}}"#, now_ns());
                    seq += 1;
                    if nats
                        .publish(prefix.user(&user), payload.into())
                        .await
                        .is_ok()
                    {
                        sent_a.fetch_add(1, Ordering::Relaxed);
                    }
                }
                while (broadcasts as f64) < t * broadcast_rate {
                    broadcasts += 1;
                    for s in &soak.slots {
                        if s.live.load(Ordering::Acquire) {
                            s.expected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let payload = format!(r#"{{"t":{},"seq":{seq},"b":1}}"#, now_ns());
                    seq += 1;
                    if nats
                        .publish(prefix.broadcast(), payload.into())
                        .await
                        .is_ok()
                    {
                        sent_b.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    // The churn: one random live slot at a time, evenly spread over each minute; slots
    // whose connection died are reopened at once (their loss counts).
    let churner = {
        let (soak, stop) = (soak.clone(), stop.clone());
        let per_min = plan.connections as f64 * plan.churn_percent / 100.0;
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let n = soak.slots.len();
            let every = if per_min > 0.0 {
                Duration::from_secs_f64(60.0 / per_min)
            } else {
                Duration::from_secs(3600)
            };
            let mut tick = tokio::time::interval(every.min(Duration::from_secs(1)));
            let mut next_churn = Instant::now() + every;
            let mut next_sweep = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if Instant::now() >= next_sweep {
                    next_sweep += Duration::from_secs(1);
                    for i in 0..n {
                        if soak.died(i) && !soak.slots[i].busy.swap(true, Ordering::AcqRel) {
                            soak.tally.unexpected_closes.fetch_add(1, Ordering::Relaxed);
                            let soak = soak.clone();
                            tokio::spawn(async move { soak.churn(i, false).await });
                        }
                    }
                }
                while per_min > 0.0 && Instant::now() >= next_churn {
                    next_churn += every;
                    let start = rng.random_range(0..n);
                    let pick = (0..n).map(|k| (start + k) % n).find(|&i| {
                        soak.slots[i].live.load(Ordering::Acquire)
                            && !soak.slots[i].busy.swap(true, Ordering::AcqRel)
                    });
                    if let Some(i) = pick {
                        let soak = soak.clone();
                        tokio::spawn(async move { soak.churn(i, true).await });
                    }
                }
            }
        })
    };

    // Every interval: a line, and a sample for the JSON.
    let mut samples = Vec::new();
    let run_started = Instant::now();
    let mut last = (0u64, 0u64, 0u64, cpu_total(&c.herald_pids), Instant::now());
    println!(
        "  {name}: t_s live server_rss_kib bus_rss_kib deliveries sent churned closed_unasked \
         addressed_p50/p99/max_ms broadcast_p50/p99/max_ms server_cpu_%"
    );
    shared.take_latency();
    while run_started.elapsed() < plan.duration {
        let left = plan.duration.saturating_sub(run_started.elapsed());
        tokio::time::sleep(plan.interval.min(left)).await;
        let (addressed, broadcasts) = shared.take_latency();
        let deliveries = shared.deliveries.load(Ordering::Relaxed);
        let sent = sent_addressed.load(Ordering::Relaxed) + sent_broadcasts.load(Ordering::Relaxed);
        let churned = soak.tally.churned.load(Ordering::Relaxed);
        let cpu = cpu_total(&c.herald_pids);
        let wall = last.4.elapsed().as_secs_f64();
        let cpu_pct = cpu
            .zip(last.3)
            .map(|(a, b)| ((a - b) / wall.max(1e-9) * 1000.0).round() / 10.0);
        let spread = |h: &hdrhistogram::Histogram<u64>| {
            if h.is_empty() {
                (0.0, 0.0, 0.0)
            } else {
                (
                    ms(h.value_at_quantile(0.5)),
                    ms(h.value_at_quantile(0.99)),
                    ms(h.max()),
                )
            }
        };
        let (p50, p99, max) = spread(&addressed);
        let (bp50, bp99, bmax) = spread(&broadcasts);
        let sample = serde_json::json!({
            "t_s": run_started.elapsed().as_secs(),
            "live": soak.live_count(),
            "server_rss_kib": rss_total(&c.herald_pids),
            "nats_rss_kib": rss_total(&c.nats_pids),
            "deliveries": deliveries - last.0,
            "sent": sent - last.1,
            "churned": churned - last.2,
            "unexpected_closes": soak.tally.unexpected_closes.load(Ordering::Relaxed),
            "addressed_p50_ms": p50,
            "addressed_p99_ms": p99,
            "addressed_max_ms": max,
            "broadcast_p50_ms": bp50,
            "broadcast_p99_ms": bp99,
            "broadcast_max_ms": bmax,
            "server_cpu_percent": cpu_pct,
        });
        let v = |k: &str| sample[k].to_string();
        println!(
            "  {} {} {} {} {} {} {} {} {p50:.3}/{p99:.3}/{max:.3} {bp50:.1}/{bp99:.1}/{bmax:.1} {}",
            v("t_s"),
            v("live"),
            v("server_rss_kib"),
            v("nats_rss_kib"),
            v("deliveries"),
            v("sent"),
            v("churned"),
            v("unexpected_closes"),
            v("server_cpu_percent"),
        );
        samples.push(sample);
        last = (deliveries, sent, churned, cpu, Instant::now());
    }

    // Stop the traffic and the churn, let the last messages and reopenings finish, then
    // count every connection left.
    stop.store(true, Ordering::Relaxed);
    let _ = publisher.await;
    let _ = churner.await;
    let _ = nats.flush().await;
    let settle = Instant::now() + plan.grace + c.timeout;
    while soak.slots.iter().any(|s| s.busy.load(Ordering::Acquire)) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(plan.grace).await;
    let remaining: Vec<usize> = (0..soak.slots.len())
        .filter(|&i| !soak.slots[i].busy.load(Ordering::Acquire))
        .collect();
    for i in remaining {
        soak.close_slot(i, false).await;
    }

    let t = &soak.tally;
    let (expected, received, lost, extra) = (
        t.expected.load(Ordering::Relaxed),
        t.received.load(Ordering::Relaxed),
        t.lost.load(Ordering::Relaxed),
        t.extra.load(Ordering::Relaxed),
    );
    let (sent_a, sent_b) = (
        sent_addressed.load(Ordering::Relaxed),
        sent_broadcasts.load(Ordering::Relaxed),
    );
    r.figure(
        "duration_s",
        plan.duration.as_secs(),
        format!(
            "{} s: {sent_a} addressed messages ({}/s) and {sent_b} broadcasts ({}/s) published",
            plan.duration.as_secs(),
            plan.rate,
            plan.broadcast_rate
        ),
    );
    r.value("sent_addressed", sent_a);
    r.value("sent_broadcasts", sent_b);
    r.figure(
        "churned",
        t.churned.load(Ordering::Relaxed),
        format!(
            "connections closed and reopened: {} ({} % a minute), reopen failures {}, closed unasked {}",
            t.churned.load(Ordering::Relaxed),
            plan.churn_percent,
            t.reopen_failures.load(Ordering::Relaxed),
            t.unexpected_closes.load(Ordering::Relaxed)
        ),
    );
    r.value("reopen_failures", t.reopen_failures.load(Ordering::Relaxed));
    r.value(
        "unexpected_closes",
        t.unexpected_closes.load(Ordering::Relaxed),
    );
    r.figure(
        "expected_deliveries",
        expected,
        format!(
            "deliveries: {received} of {expected} owed; lost {lost}, extra {extra} (arrived \
             while a connection was out of the traffic: opening or in its grace period)"
        ),
    );
    r.value("received", received);
    r.value("lost", lost);
    r.value("extra", extra);
    let worst = |key: &str| {
        samples
            .iter()
            .filter_map(|s| s[key].as_f64())
            .fold(0.0, f64::max)
    };
    let (worst_a, worst_b) = (worst("addressed_p99_ms"), worst("broadcast_p99_ms"));
    r.figure(
        "worst_addressed_p99_ms",
        worst_a,
        format!("worst p99 of an interval: addressed {worst_a:.3} ms, broadcast {worst_b:.3} ms"),
    );
    r.value("worst_broadcast_p99_ms", worst_b);
    r.value("intervals", serde_json::Value::Array(samples));
    session_errors(&mut r, &shared);
    if lost > 0 || failures > 0 {
        r.failed = true;
    }
    Ok(r)
}

/// Where user messages are published: NATS, or the hub's HTTP API (`--publish-http`).
enum Publisher {
    Nats(async_nats::Client),
    Http(crate::http_pub::HttpPublisher),
    /// Each publish waits for a receipt up to this many milliseconds.
    HttpAwait(crate::http_pub::HttpPublisher, u64),
}

impl Publisher {
    async fn connect(c: &Common, http_connections: usize) -> anyhow::Result<Publisher> {
        if c.publish_http {
            let hub = *c.hubs.first().context("--publish-http needs a --hub")?;
            let p = crate::http_pub::HttpPublisher::start(hub, c.api_key.clone(), http_connections)
                .await?;
            return Ok(match c.await_receipt_ms {
                Some(ms) => Publisher::HttpAwait(p, ms),
                None => Publisher::Http(p),
            });
        }
        let nats = async_nats::connect(&c.nats_url)
            .await
            .context("connecting to NATS")?;
        Ok(Publisher::Nats(nats))
    }

    /// Publish `payload` (JSON) to `user`.
    async fn user(
        &self,
        subjects: &herald_proto::Subjects,
        user: &str,
        payload: String,
    ) -> anyhow::Result<()> {
        match self {
            Publisher::Nats(n) => Ok(n.publish(subjects.user(user), payload.into()).await?),
            Publisher::Http(h) => {
                h.publish(format!(r#"{{"user":"{user}","data":{payload}}}"#))
                    .await
            }
            Publisher::HttpAwait(h, ms) => {
                h.publish(format!(
                    r#"{{"user":"{user}","data":{payload},"await":{{"status":"received","timeout_ms":{ms}}}}}"#
                ))
                .await
            }
        }
    }

    /// Wait until everything published left (NATS) or was answered (HTTP); how many the
    /// hub refused.
    async fn finish(self) -> anyhow::Result<u64> {
        Ok(self
            .finish_stats()
            .await?
            .map_or(0, |s| s.failed.load(Ordering::Relaxed)))
    }

    /// As `finish`, with the HTTP publisher's counters (None over NATS).
    async fn finish_stats(self) -> anyhow::Result<Option<Arc<crate::http_pub::Stats>>> {
        match self {
            Publisher::Nats(n) => {
                n.flush().await?;
                Ok(None)
            }
            Publisher::Http(h) | Publisher::HttpAwait(h, _) => Ok(Some(h.finish().await)),
        }
    }
}
