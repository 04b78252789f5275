//! Who may connect: token revocations and user blocks (PROTOCOL §6), as pods tell each
//! other on `<prefix>.ctl.all` and as they are kept (the JSON of a stored rule).

use serde::{Deserialize, Serialize};

/// One change to the access rules of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRule {
    pub user: String,
    pub kind: AccessKind,
    /// When the rule was made (ms since the epoch): of two changes to the same rule the
    /// later one wins, whatever order they arrive in.
    pub at_ms: u64,
    /// When the rule stops mattering (seconds since the epoch): the revoked tokens have
    /// expired by then, or the block has ended.
    pub expires: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessKind {
    /// Every token of the user issued before `before` (by `iat`; no `iat` counts as before).
    RevokeBefore { before: u64 },
    /// The token with this `jti`.
    RevokeJti { jti: String },
    /// No session until `until`.
    Block { until: u64 },
    /// The block is lifted.
    Unblock,
}

impl AccessRule {
    /// The name of the rule this change replaces: one per user and kind (per `jti` for
    /// revocations by id). A block and its unblock share a name.
    pub fn slot(&self) -> AccessSlot {
        match &self.kind {
            AccessKind::RevokeBefore { .. } => AccessSlot::Before,
            AccessKind::RevokeJti { jti } => AccessSlot::Jti(jti.clone()),
            AccessKind::Block { .. } | AccessKind::Unblock => AccessSlot::Block,
        }
    }
}

/// Which rule of a user a change is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AccessSlot {
    Before,
    Block,
    Jti(String),
}
