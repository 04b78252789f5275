//! The scenarios. Each opens its connections, drives the load, waits for the
//! deliveries it expects (or the timeout) and returns a [`Report`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::stream::{self, StreamExt};
use rand::Rng;

use crate::conn::{connect, cpu_secs, now_ns, open, rss_kib, target, Shared, Ws};
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
    process_cpu_figure(r, "herald", before, pids, units, what);
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
                 not herald, nats-server or the loader"
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
    let nats_cpu_before = cpu_total(&c.nats_pids);
    let me = [std::process::id()];
    let loader_cpu_before = cpu_total(&me);
    let machine = MachineWindow::start(c);
    let started_ns = now_ns();
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
    cpu_figure(&mut r, cpu_before, &c.herald_pids, sent as u64, "message");
    process_cpu_figure(
        &mut r,
        "nats",
        nats_cpu_before,
        &c.nats_pids,
        sent as u64,
        "message",
    );
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
    let user = format!("{}r{}", c.user_prefix, now_ns() % 1_000_000_000);
    let nats = async_nats::connect(&c.nats_url)
        .await
        .context("connecting to NATS")?;
    let js = async_nats::jetstream::new(nats.clone());
    let subject = format!("{}.user.{user}", c.subject_prefix);

    // A live session gives the cursor of a marker message, the one before the others.
    let mut live = connect(c, 0, &user, None).await?;
    welcome_of(next_frame(&mut live, c.timeout).await?)?;
    js.publish(subject.clone(), r#"{"marker":true}"#.into())
        .await?
        .await
        .context("marker not stored (is herald durable, the stream there?)")?;
    let (_, before) = message_of(next_frame(&mut live, c.timeout).await?)?;

    let published = Instant::now();
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
    let publish_ms = published.elapsed().as_secs_f64() * 1e3;
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
            "{messages} messages of {frame_bytes} B stored for {user} in {publish_ms:.1} ms (JetStream publish, acks awaited)"
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
