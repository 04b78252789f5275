//! This pod's voice in the cluster: the hello that makes a starting pod known before it
//! reports ready, and the beacon every second that keeps it alive in the others' tables
//! (and declares silent pods down).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use herald_proto::control::{self, Control};
use herald_proto::Subjects;

use super::cluster::Cluster;
use super::pods::{publish_pod_event, PodTable};
use crate::bus::{Bus, Outbound};
use crate::registry::{LocalStats, Registry};

/// How often a clustered pod announces itself (well under `pods::POD_DEAD_AFTER`).
pub const BEACON_INTERVAL: Duration = Duration::from_secs(1);

/// Announce this starting pod to the live ones and learn them, then let readiness pass.
/// Retried while the bus is unreachable (readiness waits for the bus anyway).
pub async fn discover(cluster: Cluster, discovered: Arc<AtomicBool>) {
    loop {
        match cluster.discover().await {
            Ok(n) => {
                tracing::info!(pods = n, "announced to the live pods");
                discovered.store(true, Ordering::Release);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "pod discovery failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Announce this pod every second and declare silent pods down. Every pod expires the
/// dead pod from its own table; only the first live pod by name publishes the `down`
/// event, so services see it once.
pub async fn beacon_loop(
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    pods: Arc<PodTable>,
    registry: Addr<Registry>,
    draining: Arc<AtomicBool>,
    leaving: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(BEACON_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let scheduled = tick.tick().await;
        if leaving.load(Ordering::Relaxed) {
            return;
        }
        // After a stall (a paused process, a starved runtime) the others' beacons are
        // still queued: judging them now would declare healthy pods down.
        let stalled = scheduled.elapsed() > BEACON_INTERVAL;
        let counts = registry.send(LocalStats).await.ok();
        if leaving.load(Ordering::Relaxed) {
            return;
        }
        let beacon = Control::Beacon {
            pod: pods.me().to_string(),
            started: pods.started(),
            draining: draining.load(Ordering::Relaxed),
            connections: counts.map_or(0, |c| c.connections),
            users: counts.map_or(0, |c| c.users),
        };
        let _ = bus
            .publish(Outbound::new(subjects.ctl_all(), control::encode(&beacon)))
            .await;
        if stalled {
            tracing::warn!("beacon loop was stalled; not judging other pods this round");
            continue;
        }
        let dead = pods.expire(Instant::now());
        if !dead.is_empty() {
            registry.do_send(crate::registry::user_limit::PodsGone(dead.clone()));
        }
        let announcer = pods.is_announcer();
        for pod in dead {
            tracing::warn!(pod = %pod, "pod stopped answering; declaring it down");
            if announcer {
                publish_pod_event(&bus, &subjects, &pod, "down").await;
            }
        }
    }
}
