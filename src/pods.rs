//! The table of pods this pod knows to be alive, fed by their beacons on `<prefix>.ctl.all`.
//!
//! Cluster-wide answers wait for one reply per live pod (or a short timeout), so the
//! table decides how long a query can take: a pod that stops beaconing is dropped from it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A pod silent for this long is considered dead.
pub const POD_DEAD_AFTER: Duration = Duration::from_secs(4);

#[derive(Debug, Clone)]
pub struct PodInfo {
    pub last_beacon: Instant,
    pub draining: bool,
    pub connections: u64,
    pub users: u64,
}

/// Live pods, this one included.
pub struct PodTable {
    me: String,
    // A std Mutex: tiny critical sections, never held across an await.
    pods: Mutex<HashMap<String, PodInfo>>,
}

impl PodTable {
    pub fn new(me: String) -> PodTable {
        PodTable {
            me,
            pods: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodInfo>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn beacon(&self, pod: &str, draining: bool, connections: u64, users: u64) {
        if pod == self.me {
            return;
        }
        self.lock().insert(
            pod.to_string(),
            PodInfo {
                last_beacon: Instant::now(),
                draining,
                connections,
                users,
            },
        );
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
        dead
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
        let dead = t.expire(Instant::now() + POD_DEAD_AFTER);
        assert_eq!(dead, vec!["b"]);
        assert_eq!(t.live_count(), 1);
    }
}
