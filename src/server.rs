//! Builds a pod and runs it: the bus engine, the Registry and Subscriber actors, the HTTP
//! server, the pod beacon, and the graceful drain on SIGTERM. `run` is shared by `main`
//! and the tests, which hand it a listener bound to port 0.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_http::HttpService;
use actix_service::{fn_service, map_config, IntoServiceFactory, ServiceFactoryExt};
use actix_web::dev::AppConfig;
use actix_web::{web, App};
use anyhow::Context as _;
use herald_proto::control::{self, Control};
use herald_proto::Subjects;

use crate::bus::memory::MemoryBus;
use crate::bus::nats::NatsBus;
use crate::bus::{Bus, Outbound};
use crate::config::Config;
use crate::config::StoreConfig;
use crate::control::beacon::{beacon_loop, discover};
use crate::control::cluster::Cluster;
use crate::control::pods::{publish_pod_event, PodTable};
use crate::control::ControlPlane;
use crate::handoff::InFlight;
use crate::http::{access_log, routes, AppState};
use crate::mailbox::InterestHandle;
use crate::metrics::Metrics;
use crate::registry::{Drain, Registry, RegistryDeps, SetSubscriber};
use crate::session::SessionShared;
use crate::store::jetstream::{DurableError, JetStream};
use crate::store::{disk::DiskLog, embedded::Embedded, memory::MemoryLog, Store};
use crate::subscriber::{Resync, Subscriber};

/// How long a closing connection may take to flush before it is dropped.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// How long to wait for WebSocket connections to finish after the drain.
const SHUTDOWN_GRACE_SECS: u64 = 2;

/// Run a pod until it is told to stop (SIGTERM or SIGINT), then drain and return.
pub async fn run(config: Config, listener: TcpListener) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let subjects = Subjects::new(config.subject_prefix.clone());
    let pod = config.pod_name.clone();
    let mut jetstream: Option<Arc<JetStream>> = None;
    let mut durable: Option<Arc<dyn Store>> = None;
    #[allow(unused_mut)]
    let mut keeper = crate::access::Keeper::Memory;
    let mut access_bucket = None;
    let bus: Arc<dyn Bus> = if config.standalone() {
        tracing::info!("standalone mode: in-process bus, no NATS");
        let bus: Arc<dyn Bus> = Arc::new(MemoryBus::new());
        durable = embedded_store(&config, &bus, &subjects, &metrics)?;
        if let Some(StoreConfig::Disk { dir, .. }) = &config.store {
            keeper = crate::access::Keeper::File(dir.join(crate::access::keep::FILE_NAME));
        }
        bus
    } else {
        let options = crate::bus::nats::NatsOptions {
            creds: config.nats_creds.clone(),
            tls: config.nats_tls.clone(),
            inbox_prefix: Some(crate::bus::nats::HERALD_INBOX_PREFIX.to_string()),
        };
        let nats = NatsBus::connect_with(&config.nats_urls, &pod, &options, metrics.clone())
            .await
            .context("connecting to NATS")?;
        let replicas = match &config.store {
            Some(StoreConfig::JetStream(d)) => d.replicas,
            _ => 1,
        };
        access_bucket = Some((nats.client(), replicas));
        if let Some(StoreConfig::JetStream(d)) = config.store {
            let stream = JetStream::start(nats.client(), subjects.clone(), d)
                .await
                .context("durable mode")?;
            tracing::info!(
                stream = stream.stream(),
                retention = %humantime::format_duration(d.retention),
                replicas = d.replicas,
                "durable mode: user messages are kept in JetStream"
            );
            let stream = Arc::new(stream);
            jetstream = Some(stream.clone());
            durable = Some(stream);
        }
        Arc::new(nats)
    };
    if matches!(config.auth, crate::auth::AuthConfig::Unsigned) {
        tracing::warn!(listen = %config.listen, "no JWT key configured: accepting unsigned connections (loopback only)");
    }
    let mut access = crate::access::AccessList::new(keeper, metrics.clone());
    if let Some((client, replicas)) = access_bucket {
        access = access.with_bucket(crate::access::BucketPlace {
            client,
            prefix: subjects.prefix().to_string(),
            replicas,
        });
    }
    let access = Arc::new(access);
    let pods = Arc::new(PodTable::new(pod.clone()));
    let deliveries = Arc::new(InFlight::default());
    let registry = Registry::new(RegistryDeps {
        limits: config.registry,
        deliveries: deliveries.clone(),
        heartbeat: config.session.heartbeat,
        bus: bus.clone(),
        subjects: subjects.clone(),
        pod: pod.clone(),
        metrics: metrics.clone(),
        clustered: !config.standalone(),
        durable: durable.is_some(),
        access: access.clone(),
    })
    .start();
    let cluster = Cluster {
        bus: bus.clone(),
        subjects: subjects.clone(),
        pods: pods.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        access: access.clone(),
    };
    let subscriber = Subscriber::new(
        registry.clone(),
        bus.clone(),
        subjects.clone(),
        deliveries,
        durable.clone(),
    )
    .start();
    registry.do_send(SetSubscriber(InterestHandle {
        interest: subscriber.clone().recipient(),
        wait: subscriber.clone().recipient(),
    }));
    // Held for the life of the pod, with the control subscriptions it owns.
    let _control = ControlPlane::start(cluster.clone()).await;
    // After the control subscription: a change made meanwhile arrives there too (the newer
    // of two wins).
    if config.standalone() {
        access
            .load()
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .context("loading revocations and blocks")?;
    } else {
        actix::spawn(crate::access::find_bucket(access.clone()));
    }
    actix::spawn(crate::access::sweep_loop(access.clone()));
    if let Some(d) = &jetstream {
        actix::spawn(watch_stream(d.clone(), bus.clone(), subscriber));
    }

    let draining = Arc::new(AtomicBool::new(false));
    let local = listener
        .local_addr()
        .context("reading the listener address")?;
    let state = web::Data::new(AppState {
        registry: registry.clone(),
        bus: bus.clone(),
        cluster,
        auth: config.auth.clone(),
        api_key: config.api_key.clone(),
        api_open: config.api_key.is_none() && local.ip().is_loopback(),
        metrics: metrics.clone(),
        session: Arc::new(SessionShared {
            registry: registry.clone(),
            bus: bus.clone(),
            subjects: subjects.clone(),
            metrics: metrics.clone(),
            pod: pod.clone(),
            limits: config.session,
            auth: Arc::new(config.auth.clone()),
            store: durable.clone(),
            access: access.clone(),
        }),
        draining: draining.clone(),
        next_session: AtomicU64::new(session_id_seed()),
        allowed_origins: config.allowed_origins.clone(),
        discovered: Arc::new(AtomicBool::new(config.standalone())),
        durable: durable.clone(),
        receipts: crate::receipts::Receipts::new(bus.clone(), subjects.clone(), metrics.clone()),
        connect_rate: crate::http::connect_rate::ConnectRate::new(config.connect_rate),
        access: access.clone(),
        revocation_ttl: config.revocation_ttl,
        max_await: config.max_await,
        openapi: crate::http::openapi::document_for(config.max_await),
    });
    if config.api_key.is_none() && !local.ip().is_loopback() {
        tracing::warn!("no API key configured: /api/v1 answers 401 (set --api-key)");
    }

    let server = http_server(state.clone(), listener, local)?;
    tracing::info!(listen = %local, pod = %pod, bus = bus.engine(), "herald is listening");
    publish_pod_event(&bus, &subjects, &pod, "up").await;

    let leaving = Arc::new(AtomicBool::new(false));
    if !config.standalone() {
        actix::spawn(discover(state.cluster.clone(), state.discovered.clone()));
        if let Some(r) = config.rebalance {
            actix::spawn(crate::control::rebalance::rebalance_loop(
                pods.clone(),
                registry.clone(),
                r,
                metrics.clone(),
            ));
        }
        actix::spawn(beacon_loop(
            bus.clone(),
            subjects.clone(),
            pods.clone(),
            registry.clone(),
            draining.clone(),
            leaving.clone(),
        ));
    }

    let handle = server.handle();
    let drain_timeout = config.drain_timeout;
    let drain_bus = bus.clone();
    actix::spawn(async move {
        wait_for_signal().await;
        tracing::info!(
            window_ms = drain_timeout.as_millis() as u64,
            "stop requested: draining"
        );
        draining.store(true, Ordering::Relaxed);
        metrics.draining.set(1);
        publish_pod_event(&drain_bus, &subjects, &pod, "draining").await;
        let drained = registry.send(Drain {
            window: drain_timeout,
        });
        tokio::select! {
            _ = drained => {}
            _ = wait_for_signal() => tracing::warn!("second stop signal: stopping without finishing the drain"),
            _ = tokio::time::sleep(drain_timeout + Duration::from_secs(5)) => tracing::warn!("drain overran its window"),
        }
        // No beacon may follow the goodbye, or the others would count this pod alive again.
        leaving.store(true, Ordering::Relaxed);
        let leaving = Control::Leaving { pod: pod.clone() };
        let _ = drain_bus
            .publish(Outbound::new(subjects.ctl_all(), control::encode(&leaving)))
            .await;
        publish_pod_event(&drain_bus, &subjects, &pod, "down").await;
        drain_bus.flush().await;
        handle.stop(true).await;
    });
    server.await.context("HTTP server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// The HTTP server: actix-web for every route, and the HTTP layer's upgrade hook for
/// WebSocket handshakes, which takes the TCP stream out of the HTTP dispatcher (and its
/// per-connection buffers) for the life of the session.
fn http_server(
    state: web::Data<AppState>,
    listener: TcpListener,
    local: std::net::SocketAddr,
) -> anyhow::Result<actix_server::Server> {
    let server = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .max_concurrent_connections(200_000)
        .listen("herald", listener, move || {
            let app_state = state.clone();
            let upgrade_state = state.clone();
            let app = App::new()
                .app_data(app_state)
                .app_data(web::PayloadConfig::new(1 << 20))
                .wrap(access_log())
                .configure(crate::http::openapi::json_errors)
                .configure(routes)
                .default_service(web::to(crate::http::openapi::not_found))
                .into_factory()
                .map_err(|err: actix_web::Error| err.error_response());
            HttpService::build()
                // After a close the client waits for the server to drop the connection
                // before it reports the close (browsers do); don't make it wait long.
                .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                .local_addr(local)
                .upgrade(fn_service(move |(req, framed)| {
                    let state = upgrade_state.clone();
                    async move {
                        crate::http::websocket::serve(state, req, framed).await;
                        Ok::<_, std::convert::Infallible>(())
                    }
                }))
                .finish(map_config(app, |_| {
                    // Host and address here only feed URL generation, which herald never uses.
                    AppConfig::default()
                }))
                .tcp()
        })
        .context("serving on the listener")?
        .run();
    Ok(server)
}

/// Standalone mode's store: on disk with `--durable`, else in memory (unless
/// `--history-memory 0`).
fn embedded_store(
    config: &Config,
    bus: &Arc<dyn Bus>,
    subjects: &Subjects,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Arc<dyn Store>>> {
    let (log, retention, max_replay): (Arc<dyn crate::store::embedded::Log>, _, _) = match &config
        .store
    {
        Some(StoreConfig::Disk {
            dir,
            create,
            sync,
            retention,
            max_replay,
        }) => {
            if *create && !dir.exists() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating the data directory {}", dir.display()))?;
            }
            let log = DiskLog::open(dir, *sync, metrics.clone())?;
            tracing::info!(
                dir = %dir.display(),
                retention = %humantime::format_duration(*retention),
                sync = ?sync,
                "durable mode: user messages are kept on disk"
            );
            (Arc::new(log), *retention, *max_replay)
        }
        Some(StoreConfig::Memory {
            bytes,
            retention,
            max_replay,
        }) => {
            tracing::info!(
                bytes,
                retention = %humantime::format_duration(*retention),
                "recent user messages are kept in memory for recovery"
            );
            (
                Arc::new(MemoryLog::new(*bytes, metrics.clone())),
                *retention,
                *max_replay,
            )
        }
        _ => return Ok(None),
    };
    let store: Arc<dyn Store> = Arc::new(Embedded::start(
        log,
        bus.clone(),
        subjects.clone(),
        retention,
        max_replay,
        metrics.clone(),
    ));
    Ok(Some(store))
}

/// The listening socket, with the accept backlog applied (std's `TcpListener::bind` always
/// asks for 128, which a reconnect storm overflows: dropped SYNs wait seconds for their
/// retransmit). The kernel caps the backlog at `net.core.somaxconn`.
pub fn bind(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // A restarted pod can bind while the old one's connections are in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Session ids start from the clock so ids from a restarted pod do not repeat.
fn session_id_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
        << 8
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops herald");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How often durable mode checks that the stream still is the one it knows.
const STREAM_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Durable mode: re-read the stream after a reconnect (republished messages sent while
/// disconnected were missed), and re-create it if it was deleted (a new epoch: every feed
/// starts over from the new stream).
async fn watch_stream(durable: Arc<JetStream>, bus: Arc<dyn Bus>, subscriber: Addr<Subscriber>) {
    let mut generation = bus.connection_generation();
    let mut tick = tokio::time::interval(STREAM_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !bus.is_connected() {
            continue;
        }
        let now = bus.connection_generation();
        let reconnected = now != generation;
        generation = now;
        let changed = match durable.current_epoch().await {
            Ok(epoch) if epoch == durable.epoch() => false,
            Ok(_) | Err(DurableError::NoStream(_)) => match durable.ensure().await {
                Ok(()) => {
                    tracing::warn!(stream = durable.stream(), "the durable stream was re-created: cursors of the old one no longer resume");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "durable stream missing and not re-created");
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "durable stream not reachable");
                continue;
            }
        };
        if changed || reconnected {
            subscriber.do_send(Resync { reset: changed });
        }
    }
}
