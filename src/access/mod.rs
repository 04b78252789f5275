//! Token revocations and user blocks (PROTOCOL §6): the rules every pod holds in memory
//! ([`rules`]), checked at the handshake, at `refresh` and on live sessions, and where
//! they are kept ([`keep`]). A change is made through the API of any pod: kept first, then
//! applied here and announced on `<prefix>.ctl.all` (the other pods apply it and close
//! what it forbids). Checking a token is a lookup in memory, never a round trip.

pub mod keep;
pub mod rules;

use std::sync::RwLock;
use std::time::Duration;

use herald_proto::access::AccessRule;

use crate::ids::UserId;
pub use keep::Keeper;
use rules::Rules;
pub use rules::{Denied, TokenMark};

/// How often expired rules are forgotten (and deleted where they are kept).
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub struct AccessList {
    rules: RwLock<Rules>,
    /// Swapped once when the JetStream bucket becomes reachable after the start.
    keeper: RwLock<std::sync::Arc<Keeper>>,
    /// One change kept at a time: the file holds every rule, so two writers would race.
    writing: tokio::sync::Mutex<()>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// True once the kept rules were read (or found unreachable): handshakes before that
    /// wait for it, and readiness reports 503.
    settled: tokio::sync::watch::Sender<bool>,
    /// NATS mode: where to create the bucket with the first change, if it is not there.
    bucket: Option<BucketPlace>,
}

/// The NATS connection and settings a bucket is made with.
#[derive(Clone)]
pub struct BucketPlace {
    pub client: async_nats::Client,
    pub prefix: String,
    pub replicas: usize,
}

impl std::fmt::Debug for AccessList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessList")
            .field("keeper", &self.keeper())
            .field("rules", &self.len())
            .finish()
    }
}

impl AccessList {
    pub fn new(keeper: Keeper, metrics: std::sync::Arc<crate::metrics::Metrics>) -> AccessList {
        AccessList {
            rules: RwLock::new(Rules::default()),
            keeper: RwLock::new(std::sync::Arc::new(keeper)),
            writing: tokio::sync::Mutex::new(()),
            metrics,
            settled: tokio::sync::watch::Sender::new(false),
            bucket: None,
        }
    }

    /// NATS mode: rules go to the JetStream bucket at `place`.
    pub fn with_bucket(mut self, place: BucketPlace) -> AccessList {
        self.bucket = Some(place);
        self
    }

    pub fn is_settled(&self) -> bool {
        *self.settled.borrow()
    }

    /// Wait (at most `within`) until the kept rules are known.
    pub async fn wait_settled(&self, within: Duration) {
        let mut rx = self.settled.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|s| *s)).await;
    }

    fn settle(&self) {
        self.settled.send_replace(true);
    }

    fn keeper(&self) -> std::sync::Arc<Keeper> {
        self.keeper
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Keep rules there from now on (the bucket, reachable late), after reading what it
    /// holds and writing there what this pod learnt meanwhile.
    pub async fn keep_in(&self, keeper: Keeper) -> Result<usize, String> {
        let _one = self.writing.lock().await;
        for rule in self.all() {
            keeper.keep(&rule, Vec::new()).await?;
        }
        *self.keeper.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(keeper);
        drop(_one);
        self.load().await
    }

    /// Read the kept rules (at start, before the pod takes connections).
    pub async fn load(&self) -> Result<usize, String> {
        let keeper = self.keeper();
        let kept = keeper.load().await?;
        let n = kept.len();
        for rule in kept {
            self.apply(rule);
        }
        let gone = self.write().sweep(crate::auth::now_secs());
        if !gone.is_empty() {
            keeper.forget(&gone, self.all()).await;
        }
        self.update_gauge();
        self.settle();
        tracing::info!(
            kept = n,
            held = self.len(),
            engine = keeper.engine(),
            "access rules loaded"
        );
        Ok(n)
    }

    /// Keep a change made through this pod's API, then apply it here; returns whether it
    /// was kept (NATS mode without JetStream: applied and shared, not kept). The caller
    /// announces it to the other pods and closes the sessions it forbids.
    pub async fn change(&self, rule: AccessRule) -> Result<bool, String> {
        if let (Some(place), Keeper::Memory) = (&self.bucket, &*self.keeper()) {
            // The first change in a cluster that has no bucket yet makes it.
            let made = if place.client.server_info().jetstream {
                Keeper::bucket(place.client.clone(), &place.prefix, place.replicas).await
            } else {
                Err("the NATS server has no JetStream".to_string())
            };
            match made {
                Ok(keeper) => {
                    self.keep_in(keeper).await?;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "revocation or block not kept: no JetStream bucket (it reaches the live pods only)");
                    self.apply(rule);
                    return Ok(false);
                }
            }
        }
        let _one = self.writing.lock().await;
        let mut all = self.all();
        all.push(rule.clone());
        self.keeper().keep(&rule, all).await?;
        self.apply(rule);
        Ok(true)
    }

    /// Take a change (from this pod, another pod or the kept set); false when a newer
    /// change of the same rule is already held.
    pub fn apply(&self, rule: AccessRule) -> bool {
        let taken = self.write().apply(rule);
        self.update_gauge();
        taken
    }

    /// Whether a session of `user` holding this token may be open now.
    pub fn check(&self, user: &UserId, token: TokenMark<'_>) -> Result<(), Denied> {
        let rules = self.rules.read().unwrap_or_else(|p| p.into_inner());
        if rules.is_empty() {
            return Ok(());
        }
        rules.check(user.as_str(), token, crate::auth::now_secs())
    }

    /// Forget what expired, here and where it is kept.
    pub async fn sweep(&self) {
        let _one = self.writing.lock().await;
        let gone = self.write().sweep(crate::auth::now_secs());
        if !gone.is_empty() {
            tracing::debug!(expired = gone.len(), "access rules expired");
            self.keeper().forget(&gone, self.all()).await;
            self.update_gauge();
        }
    }

    pub fn len(&self) -> usize {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn all(&self) -> Vec<AccessRule> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).all()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Rules> {
        self.rules.write().unwrap_or_else(|p| p.into_inner())
    }

    fn update_gauge(&self) {
        self.metrics.access_rules.set(self.len() as i64);
    }
}

/// Forget expired rules every [`SWEEP_EVERY`], for the life of the pod.
pub async fn sweep_loop(access: std::sync::Arc<AccessList>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        access.sweep().await;
    }
}

/// NATS mode: read the bucket, if there is one, without holding the pod's start back.
/// Until it is read, handshakes wait for it (at most [`keep::OPEN_TIMEOUT`]) and readiness
/// is 503. Without JetStream the rules are held in memory only, and the bucket is looked
/// for again every [`keep::RETRY_EVERY`].
pub async fn find_bucket(access: std::sync::Arc<AccessList>) {
    let Some(place) = access.bucket.clone() else {
        access.settle();
        return;
    };
    let mut warned = false;
    loop {
        if !place.client.server_info().jetstream {
            // The server says it has no JetStream: nothing to wait for (a cluster without
            // it may not even answer a JetStream request until the timeout).
            access.settle();
            if !warned {
                tracing::warn!("the NATS server has no JetStream: revocations and blocks reach the live pods but are not kept");
                warned = true;
            }
            tokio::time::sleep(keep::RETRY_EVERY).await;
            continue;
        }
        let found = match Keeper::find_bucket(place.client.clone(), &place.prefix).await {
            Ok(Some(keeper)) => access.keep_in(keeper).await.map(|_| ()),
            Ok(None) => {
                // Nothing was ever kept: the first change creates the bucket.
                access.settle();
                return;
            }
            Err(e) => Err(e),
        };
        match found {
            Ok(()) => return,
            Err(e) => {
                access.settle();
                if !warned {
                    tracing::warn!(error = %e, "cannot read the JetStream bucket of revocations and blocks: they reach the live pods but are not kept (retried every 15 s)");
                    warned = true;
                }
            }
        }
        tokio::time::sleep(keep::RETRY_EVERY).await;
    }
}
