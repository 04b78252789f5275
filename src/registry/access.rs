//! Revocations and blocks on live sessions: when a rule changes, the user's sessions on
//! this pod are checked against it and those it forbids are closed (4003 for a revoked
//! token, 4004 for a blocked user).

use actix::prelude::*;
use herald_proto::CloseCode;

use super::{Refusal, Registry};
use crate::access::{Denied, TokenMark};
use crate::ids::{SessionId, UserId};
use crate::metrics::{ReasonLabels, ACCESS_BLOCKED, ACCESS_REVOKED};

/// The refusal of a handshake a rule forbids.
pub fn refusal(denied: Denied) -> Refusal {
    match denied {
        Denied::Revoked => Refusal::Revoked,
        Denied::Blocked => Refusal::Blocked,
    }
}

/// The metric reason of a denial.
pub fn reason(denied: Denied) -> &'static str {
    match denied {
        Denied::Revoked => ACCESS_REVOKED,
        Denied::Blocked => ACCESS_BLOCKED,
    }
}

/// The user's access rules changed: close the local sessions they now forbid. Returns
/// how many were closed.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Enforce(pub UserId);

impl Handler<Enforce> for Registry {
    type Result = usize;
    fn handle(&mut self, msg: Enforce, _: &mut Context<Self>) -> usize {
        let doomed: Vec<(SessionId, Denied)> = self
            .index
            .of_user(&msg.0, None)
            .filter_map(|(id, e)| {
                let mark = TokenMark {
                    issued_at: e.issued_at,
                    jti: e.token_id.as_deref(),
                };
                self.deps.access.check(&e.user, mark).err().map(|d| (id, d))
            })
            .collect();
        for (id, denied) in &doomed {
            let code = match denied {
                Denied::Revoked => CloseCode::Revoked,
                Denied::Blocked => CloseCode::Blocked,
            };
            self.close(*id, code);
            self.deps
                .metrics
                .access_closed
                .get_or_create(&ReasonLabels {
                    reason: reason(*denied),
                })
                .inc();
        }
        if !doomed.is_empty() {
            tracing::info!(user = %msg.0, closed = doomed.len(), "sessions closed by a revocation or block");
        }
        doomed.len()
    }
}
