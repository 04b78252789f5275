//! Rebalancing after scale-out (PROTOCOL §4, `--rebalance`): long-lived connections never
//! move by themselves, so a pod holding more than `--rebalance-above` × the mean of the
//! cluster's ready pods closes the excess with 1012 (reason `rebalance`), at most
//! `--rebalance-rate` of its sessions a second, and stops once within the bound. The
//! clients reconnect through the load balancer, which spreads them over every pod.
//!
//! Why it converges without ping-pong: every pod computes the same mean from the same
//! beacons; only a pod above `above` × mean sheds, and what it sheds lands on all pods
//! alike, so the pods below the mean (the new ones) gain and the mean does not move. No
//! pod can be pushed above the bound by another's shedding unless it was already near it,
//! and a pod sheds nothing while any pod is draining or not yet serving, or when alone.

use std::time::Duration;

use actix::Addr;

use super::pods::PodTable;
use crate::metrics::Metrics;
use crate::registry::{LocalStats, Registry, Shed};

/// How often a pod looks at the cluster and sheds.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A pod beaconing this long is taken as serving (its first answers to the load balancer).
pub const SETTLED: Duration = Duration::from_secs(3);
/// The cluster's total is taken as the highest seen within this long: the clients of shed
/// sessions are on their way back (after a random delay) to some pod, and while they are
/// away the total dips; a bound computed from the dip would shed more than the excess.
pub const PEAK_WINDOW: Duration = Duration::from_secs(30);
/// A pod with fewer sessions never sheds: moving a handful evens out nothing that matters,
/// and each costs a reconnect.
pub const MIN_SESSIONS: u64 = 100;

/// The rebalancer's settings.
#[derive(Debug, Clone, Copy)]
pub struct Rebalance {
    /// Shed above this multiple of the mean.
    pub above: f64,
    /// At most this share of the pod's sessions a second.
    pub rate: f64,
}

/// What this pod should do now: how many sessions to shed, and its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub shed: usize,
    pub bound: u64,
}

/// The plan for a pod with `mine` sessions among `others` (connections, draining,
/// serving), the cluster's total taken as at least `peak_total`, or None when it must not
/// shed at all.
pub fn plan(
    mine: u64,
    me_draining: bool,
    others: &[(u64, bool, bool)],
    peak_total: u64,
    r: Rebalance,
) -> Option<Plan> {
    if me_draining
        || others.is_empty()
        || others
            .iter()
            .any(|(_, draining, serving)| *draining || !serving)
    {
        return None;
    }
    let total: u64 = (mine + others.iter().map(|(c, _, _)| c).sum::<u64>()).max(peak_total);
    let mean = total as f64 / (others.len() + 1) as f64;
    let bound = (r.above * mean).ceil() as u64;
    let excess = if mine < MIN_SESSIONS {
        0
    } else {
        mine.saturating_sub(bound)
    };
    let per_interval = ((r.rate * mine as f64).floor() as u64).max(1);
    Some(Plan {
        shed: usize::try_from(excess.min(per_interval)).unwrap_or(0),
        bound,
    })
}

/// Look at the cluster every second and shed what the plan says. Runs for the life of the
/// pod (NATS mode with `--rebalance`).
pub async fn rebalance_loop(
    pods: std::sync::Arc<PodTable>,
    registry: Addr<Registry>,
    settings: Rebalance,
    metrics: std::sync::Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut totals: std::collections::VecDeque<(std::time::Instant, u64)> =
        std::collections::VecDeque::new();
    loop {
        tick.tick().await;
        let Ok(counts) = registry.send(LocalStats).await else {
            return;
        };
        let others = pods.others(SETTLED);
        let now = std::time::Instant::now();
        while totals
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= PEAK_WINDOW)
        {
            totals.pop_front();
        }
        totals.push_back((
            now,
            counts.sessions + others.iter().map(|(c, _, _)| c).sum::<u64>(),
        ));
        let peak_total = totals.iter().map(|(_, t)| *t).max().unwrap_or(0);
        match plan(
            counts.sessions,
            counts.draining,
            &others,
            peak_total,
            settings,
        ) {
            Some(p) => {
                metrics
                    .rebalance_bound
                    .set(i64::try_from(p.bound).unwrap_or(i64::MAX));
                if p.shed > 0 {
                    tracing::info!(
                        sessions = counts.sessions,
                        bound = p.bound,
                        shedding = p.shed,
                        "over the cluster's mean: shedding sessions"
                    );
                    registry.do_send(Shed { count: p.shed });
                }
            }
            None => {
                metrics.rebalance_bound.set(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Rebalance = Rebalance {
        above: 1.2,
        rate: 0.02,
    };

    #[test]
    fn a_pod_over_the_bound_sheds_at_the_rate_until_within_it() {
        // 3,000 and 3,000, and a new pod with none: mean 2,000, bound 2,400.
        let p = plan(3000, false, &[(3000, false, true), (0, false, true)], 0, R).expect("plan");
        assert_eq!(
            p,
            Plan {
                shed: 60,
                bound: 2400
            }
        );
        // Close to the bound: only the excess.
        let p = plan(
            2410,
            false,
            &[(2300, false, true), (2290, false, true)],
            0,
            R,
        )
        .expect("plan");
        assert_eq!(p.shed, 0, "2,410 is within 1.2 × 2,333");
        // While shed clients are on their way back the total dips: the peak holds the bound.
        let p = plan(
            2450,
            false,
            &[(3000, false, true), (0, false, true)],
            6000,
            R,
        )
        .expect("plan");
        assert_eq!((p.shed, p.bound), (49, 2400));
        let p = plan(
            2400,
            false,
            &[(3000, false, true), (0, false, true)],
            6000,
            R,
        )
        .expect("plan");
        assert_eq!(p.shed, 0, "within the bound: done");
    }

    #[test]
    fn never_alone_while_another_drains_or_starts_nor_when_equal() {
        assert_eq!(plan(5000, false, &[], 0, R), None);
        assert_eq!(plan(5000, false, &[(0, true, true)], 0, R), None);
        assert_eq!(plan(5000, false, &[(0, false, false)], 0, R), None);
        assert_eq!(plan(5000, true, &[(0, false, true)], 0, R), None);
        let p = plan(
            1000,
            false,
            &[(1000, false, true), (1000, false, true)],
            0,
            R,
        )
        .expect("plan");
        assert_eq!(p.shed, 0, "equal pods shed nothing");
        let p = plan(100, false, &[(0, false, true)], 0, R).expect("plan");
        assert_eq!(p.shed, 2, "2 % of 100 a second");
        let p = plan(99, false, &[(0, false, true)], 0, R).expect("plan");
        assert_eq!(p.shed, 0, "below MIN_SESSIONS nothing is shed");
    }
}
