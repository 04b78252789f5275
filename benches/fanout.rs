//! Registry fan-out to 100 / 10,000 / 100,000 sessions: one broadcast handed to the
//! Registry, timed until every session's frame has been written out (sessions write into
//! in-process pipes, the socket SSE sessions use, whose far ends count what arrives, so
//! the clock stops only when the last byte left the session, not when the Registry
//! returns; 100,000 TCP sockets would not fit one process's file limit).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::StreamExt;
use herald::auth::Identity;
use herald::bus::memory::MemoryBus;
use herald::config::SessionLimits;
use herald::http::websocket::framing::WebSocketWire;
use herald::ids::{SessionId, UserId};
use herald::message::{encode_frame, Delivery, Target};
use herald::metrics::Metrics;
use herald::registry::{Deliver, Limits, Registry, RegistryDeps};
use herald::session::pipe::pipe;
use herald::session::socket::Socket;
use herald::session::{reserve, Opening, Session, SessionShared};
use herald::shard::Shard;
use herald_proto::frame::Source;
use herald_proto::Subjects;

struct Pod {
    registry: Addr<Registry>,
    written: Arc<AtomicU64>,
}

async fn pod_with_sessions(n: usize) -> Pod {
    let metrics = Arc::new(Metrics::new());
    let bus = Arc::new(MemoryBus::new());
    let limits = SessionLimits {
        heartbeat: Duration::from_secs(3600),
        idle_timeout: Duration::from_secs(7200),
        max_frame_bytes: 65_536,
        outbound_queue_bytes: 1 << 20,
        upstream_rate: 50,
        close_grace: Duration::from_secs(2),
        deflate_from: None,
    };
    let access = Arc::new(herald::access::AccessList::new(
        herald::access::Keeper::Memory,
        metrics.clone(),
    ));
    let registry = Registry::new(RegistryDeps {
        limits: Limits {
            max_connections: n + 1,
            max_sessions_per_user: 16,
            idle_timeout: limits.idle_timeout,
            outbound_queue_bytes: limits.outbound_queue_bytes,
        },
        deliveries: Default::default(),
        durable: false,
        heartbeat: limits.heartbeat,
        bus: bus.clone(),
        subjects: Subjects::default(),
        pod: "bench".into(),
        metrics: metrics.clone(),
        clustered: false,
        access: access.clone(),
    })
    .start();
    let shared = Arc::new(SessionShared {
        registry: registry.clone(),
        bus,
        subjects: Subjects::default(),
        metrics: metrics.clone(),
        pod: "bench".into(),
        limits,
        auth: Arc::new(herald::auth::AuthConfig::Unsigned),
        store: None,
        access,
    });
    let written = Arc::new(AtomicU64::new(0));
    for i in 0..n {
        let id = SessionId::new(i as u64);
        let identity = Identity {
            user: UserId::parse(&format!("u{i}")).expect("valid id"),
            device: None,
            topics: None,
            expires_at: None,
            issued_at: None,
            token_id: None,
        };
        let shard = Shard::current(&registry, &metrics);
        let wire = Box::new(WebSocketWire::new(65_536));
        let reserved = reserve(&shared, shard, id, &identity, wire)
            .await
            .expect("registry alive")
            .expect("admitted");
        let (socket, mut body) = pipe();
        let counter = written.clone();
        actix::spawn(async move {
            while let Some(Ok(chunk)) = body.next().await {
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
        let (ctx, session) = Session::new(
            reserved,
            identity,
            shared.clone(),
            Socket::Pipe(socket),
            BytesMut::new(),
            Opening {
                welcome: "{}".into(),
                replay: Vec::new(),
            },
        );
        ctx.run(session);
    }
    // Let every session start and write its welcome.
    let welcomes = n as u64 * 4;
    while written.load(Ordering::Relaxed) < welcomes {
        tokio::task::yield_now().await;
    }
    Pod { registry, written }
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry_fanout");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    let frame = encode_frame(
        "0192f1c3",
        "0192f1c3",
        Source::Broadcast,
        None,
        Some("tick"),
        br#"{"price":42}"#,
    );
    let wire = frame.len() as u64 + 2; // one-byte length header for frames under 126 bytes
                                       // FANOUT_SIZES=100,1000 keeps the test suite's smoke run small.
    let sizes: Vec<usize> = std::env::var("FANOUT_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 10_000, 100_000]);
    for n in sizes {
        let sys = actix::System::new();
        let pod = sys.block_on(pod_with_sessions(n));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("broadcast", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                sys.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let target = pod.written.load(Ordering::Relaxed) + wire * n as u64;
                        let start = Instant::now();
                        pod.registry.do_send(Deliver(Delivery {
                            target: Target::Broadcast,
                            frame: frame.clone(),
                            received_at: start,
                            seq: None,
                        }));
                        while pod.written.load(Ordering::Relaxed) < target {
                            tokio::task::yield_now().await;
                        }
                        total += start.elapsed();
                    }
                    total
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
