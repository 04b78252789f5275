//! The table of pods this pod knows to be alive, fed by their beacons on `<prefix>.ctl.all`.
//!
//! Cluster-wide answers wait for one reply per live pod (or a short timeout), so the
//! table decides how long a query can take: a pod that stops beaconing is dropped from it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use herald_proto::events::PodEvent;
use herald_proto::Subjects;

use crate::bus::{Bus, Outbound};

/// A pod silent for this long is considered dead.
pub const POD_DEAD_AFTER: Duration = Duration::from_secs(4);

#[derive(Debug, Clone)]
pub struct PodInfo {
    pub last_beacon: Instant,
    pub draining: bool,
    pub connections: u64,
    pub users: u64,
}

/// How long a pod declared down is remembered, to notice it coming back.
const REMEMBER_DOWN: Duration = Duration::from_secs(600);

/// Live pods, this one included.
pub struct PodTable {
    me: String,
    // A std Mutex: tiny critical sections, never held across an await.
    pods: Mutex<HashMap<String, PodInfo>>,
    /// Pods declared down, and when: one that beacons again was only stalled.
    down: Mutex<HashMap<String, Instant>>,
}

impl PodTable {
    pub fn new(me: String) -> PodTable {
        PodTable {
            me,
            pods: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodInfo>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Record a beacon. Returns true when the pod had been declared down: it was stalled,
    /// not dead, and services should hear it is up again.
    pub fn beacon(&self, pod: &str, draining: bool, connections: u64, users: u64) -> bool {
        if pod == self.me {
            return false;
        }
        let was_down = self
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod)
            .is_some();
        self.lock().insert(
            pod.to_string(),
            PodInfo {
                last_beacon: Instant::now(),
                draining,
                connections,
                users,
            },
        );
        was_down
    }

    pub fn leaving(&self, pod: &str) {
        self.lock().remove(pod);
    }

    /// Forget pods silent for too long; returns their names.
    pub fn expire(&self, now: Instant) -> Vec<String> {
        let mut dead = Vec::new();
        self.lock().retain(|name, info| {
            let alive = now.duration_since(info.last_beacon) < POD_DEAD_AFTER;
            if !alive {
                dead.push(name.clone());
            }
            alive
        });
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.retain(|_, at| now.duration_since(*at) < REMEMBER_DOWN);
        for name in &dead {
            down.insert(name.clone(), now);
        }
        dead
    }

    /// The pod that announces other pods' `down` and `up` events: the first live pod by
    /// name, so services hear each event once.
    pub fn is_announcer(&self) -> bool {
        let pods = self.lock();
        pods.keys().all(|name| self.me.as_str() < name.as_str())
    }

    /// Names of live pods, this one first.
    pub fn live(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort();
        names.insert(0, self.me.clone());
        names
    }

    pub fn live_count(&self) -> usize {
        self.lock().len() + 1
    }
}

/// Publish a pod lifecycle event on `<prefix>.events.pod`.
pub async fn publish_pod_event(bus: &Arc<dyn Bus>, subjects: &Subjects, pod: &str, event: &str) {
    let ev = PodEvent {
        pod: pod.to_string(),
        event: event.to_string(),
        at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
    };
    let payload = serde_json::to_vec(&ev).unwrap_or_default();
    if let Err(e) = bus
        .publish(Outbound::new(subjects.pod_event(), payload))
        .await
    {
        tracing::debug!(error = %e, event, "pod event not published");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_pods_expire_and_self_is_always_live() {
        let t = PodTable::new("a".into());
        t.beacon("b", false, 1, 1);
        t.beacon("a", false, 1, 1);
        assert_eq!(t.live(), vec!["a", "b"]);
        assert!(t.expire(Instant::now()).is_empty());
        assert!(t.is_announcer());
        let dead = t.expire(Instant::now() + POD_DEAD_AFTER);
        assert_eq!(dead, vec!["b"]);
        assert_eq!(t.live_count(), 1);
        // A pod declared down that beacons again was stalled: report it back up.
        assert!(t.beacon("b", false, 0, 0));
        assert!(!t.beacon("b", false, 0, 0));
        let other = PodTable::new("c".into());
        other.beacon("b", false, 0, 0);
        assert!(!other.is_announcer());
    }
}
