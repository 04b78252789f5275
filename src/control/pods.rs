//! The table of pods this pod knows to be alive, fed by their beacons on `<prefix>.ctl.all`.
//!
//! Cluster-wide answers wait for one reply per live pod (or a short timeout), so the
//! table decides how long a query can take: a pod that stops beaconing is dropped from it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The first beacon of this run of the pod (a pod beaconing a while is serving).
    pub first_seen: Instant,
    pub started: u64,
    pub draining: bool,
    pub connections: u64,
    pub users: u64,
}

/// How long a pod declared down is remembered, to notice it coming back.
const REMEMBER_DOWN: Duration = Duration::from_secs(600);

/// Live pods, this one included.
pub struct PodTable {
    me: String,
    started: u64,
    // A std Mutex: tiny critical sections, never held across an await.
    pods: Mutex<HashMap<String, PodInfo>>,
    /// Pods declared down: when, and which run of the pod (its start time). The same run
    /// beaconing again was only stalled.
    down: Mutex<HashMap<String, (Instant, u64)>>,
    /// Set once this pod has heard the live pods' answers to its hello: from then on the
    /// table is complete, and a pod missing from it is unknown.
    settled: AtomicBool,
}

impl PodTable {
    pub fn new(me: String) -> PodTable {
        let started = crate::clock::wall_ms();
        PodTable {
            me,
            started,
            pods: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
            settled: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodInfo>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// When this pod's run started (ms since the epoch), for its beacons.
    pub fn started(&self) -> u64 {
        self.started
    }

    /// Record a beacon. Returns true when this pod should announce the sender `up`: the
    /// same run of it was declared down (it stalled rather than died; a restarted pod
    /// announces itself), and this pod is the announcer among the others.
    pub fn beacon(
        &self,
        pod: &str,
        started: u64,
        draining: bool,
        connections: u64,
        users: u64,
    ) -> bool {
        if pod == self.me {
            return false;
        }
        let was_down = self
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod)
            .is_some_and(|(_, run)| run == started);
        // Judge the announcer before the returning pod is back in the table.
        let announce = was_down && self.is_announcer();
        let now = Instant::now();
        let mut pods = self.lock();
        let first_seen = pods
            .get(pod)
            .filter(|p| p.started == started)
            .map_or(now, |p| p.first_seen);
        pods.insert(
            pod.to_string(),
            PodInfo {
                last_beacon: now,
                first_seen,
                started,
                draining,
                connections,
                users,
            },
        );
        announce
    }

    pub fn leaving(&self, pod: &str) {
        self.lock().remove(pod);
    }

    /// Forget pods silent for too long; returns their names.
    pub fn expire(&self, now: Instant) -> Vec<String> {
        let mut dead = Vec::new();
        let mut runs = Vec::new();
        self.lock().retain(|name, info| {
            let alive = now.duration_since(info.last_beacon) < POD_DEAD_AFTER;
            if !alive {
                dead.push(name.clone());
                runs.push(info.started);
            }
            alive
        });
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.retain(|_, (at, _)| now.duration_since(*at) < REMEMBER_DOWN);
        for (name, run) in dead.iter().zip(runs) {
            down.insert(name.clone(), (now, run));
        }
        dead
    }

    /// The pod that announces other pods' `down` and `up` events: the first live pod by
    /// name, so services hear each event once.
    pub fn is_announcer(&self) -> bool {
        let pods = self.lock();
        pods.keys().all(|name| self.me.as_str() < name.as_str())
    }

    /// The other live pods as the rebalancer sees them: connections, draining, and whether
    /// they have been beaconing for `settled` (so are serving, not just starting).
    pub fn others(&self, settled: Duration) -> Vec<(u64, bool, bool)> {
        let now = Instant::now();
        self.lock()
            .values()
            .map(|p| {
                (
                    p.connections,
                    p.draining,
                    now.duration_since(p.first_seen) >= settled,
                )
            })
            .collect()
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

    /// Whether `pod` is this pod or in the table of live pods (draining ones included).
    pub fn knows(&self, pod: &str) -> bool {
        pod == self.me || self.lock().contains_key(pod)
    }

    /// Whether a control message from `pod` comes from a pod not known alive. Before this
    /// pod has heard the others' answers to its hello ([`PodTable::settle`]) nobody is
    /// unknown yet: a session opened on a starting pod must still be taken over.
    pub fn is_unknown(&self, pod: &str) -> bool {
        self.settled.load(Ordering::Acquire) && !self.knows(pod)
    }

    /// The live pods' answers to this pod's hello are in the table.
    pub fn settle(&self) {
        self.settled.store(true, Ordering::Release);
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
        t.beacon("b", 7, false, 1, 1);
        t.beacon("a", 7, false, 1, 1);
        assert_eq!(t.live(), vec!["a", "b"]);
        assert!(t.knows("a") && t.knows("b") && !t.knows("c") && !t.knows(""));
        assert!(
            !t.is_unknown("c"),
            "nobody is unknown before the hello's answers"
        );
        t.settle();
        assert!(t.is_unknown("c") && !t.is_unknown("b") && !t.is_unknown("a"));
        assert!(t.expire(Instant::now()).is_empty());
        assert!(t.is_announcer());
        let dead = t.expire(Instant::now() + POD_DEAD_AFTER);
        assert_eq!(dead, vec!["b"]);
        assert_eq!(t.live_count(), 1);
        assert!(!t.knows("b"), "a pod declared down is not known alive");
        // The same run of a pod declared down beacons again: it was stalled, report it up.
        assert!(t.beacon("b", 7, false, 0, 0));
        assert!(!t.beacon("b", 7, false, 0, 0));
        // A restarted pod (a new run) announces itself; nobody else does.
        t.expire(Instant::now() + POD_DEAD_AFTER);
        assert!(!t.beacon("b", 8, false, 0, 0));
        // Only the announcer reports it, judged without the returning pod: "a" < "b".
        let other = PodTable::new("c".into());
        other.beacon("b", 7, false, 0, 0);
        assert!(!other.is_announcer());
        let first = PodTable::new("b".into());
        first.beacon("a", 7, false, 0, 0);
        first.expire(Instant::now() + POD_DEAD_AFTER);
        assert!(
            first.beacon("a", 7, false, 0, 0),
            "b announces a, the pod before it by name"
        );
    }
}
