//! The `refresh` client frame: new credentials for a running session (docs/protocol.md §1).
//!
//! The new token goes through the handshake's own check (`auth::authenticate`, with the
//! session's user and device), so key, `exp`, `nbf` and `aud`/`iss` rules are the same by
//! construction. On success the session takes the token's expiry and topics: it drops the
//! topics no longer allowed, and tells the Registry (`Refreshed`) so the sweep closes it
//! with 4003 at the new `exp`, not the old one. A token that fails changes nothing and is
//! answered with `bad_token`, as is a token a revocation matches (reason `token revoked`).
//!
//! Refreshes are verified one at a time, in the order they arrived (verification may wait
//! for a key set), so a slow check can never apply an older token over a newer one.
//! Unsigned mode accepts any token and keeps the session as it is (no expiry, every topic);
//! the answer then carries the token's own `exp` when it has one, unverified, so a client
//! schedules its refreshes as it would against a secured hub.

use actix::prelude::*;
use base64::Engine;
use herald_proto::frame::{error_code, Token};
use herald_proto::ServerFrame;

use super::Session;
use crate::auth::{AuthError, Identity};
use crate::registry::Refreshed;

/// Refreshes waiting for their turn while one is verified; more are refused.
pub const MAX_QUEUED_REFRESHES: usize = 4;

impl Session {
    pub(super) fn refresh(&mut self, token: Token, ctx: &mut Context<Self>) {
        if self.refreshes.len() > MAX_QUEUED_REFRESHES {
            let msg = "too many refreshes in progress";
            return self.send_frame(&ServerFrame::error(error_code::RATE_LIMITED, msg), ctx);
        }
        self.refreshes.push_back(token);
        if self.refreshes.len() == 1 {
            self.next_refresh(ctx);
        }
    }

    /// Verify the refresh at the head of the queue; the next one starts when it is done.
    fn next_refresh(&mut self, ctx: &mut Context<Self>) {
        let Some(token) = self.refreshes.front().cloned() else {
            return;
        };
        let auth = self.shared.auth.clone();
        let user = self.identity.user.clone();
        let device = self.identity.device.clone();
        let verify = async move {
            let verified =
                crate::auth::authenticate(&auth, Some(token.as_str()), &user, device).await;
            (token, verified)
        };
        ctx.spawn(verify.into_actor(self).map(|(token, verified), act, ctx| {
            act.refreshes.pop_front();
            if !act.is_closing() {
                act.apply_refresh(&token, verified, ctx);
            }
            act.next_refresh(ctx);
        }));
    }

    fn apply_refresh(
        &mut self,
        token: &Token,
        verified: Result<Identity, AuthError>,
        ctx: &mut Context<Self>,
    ) {
        let new = match verified {
            Ok(new) if new.device != self.identity.device => {
                // The session has no device and the token names one: the session cannot
                // become that device's (takeover rules), so the token is not for it.
                return self.refuse_refresh(&AuthError::WrongDevice, ctx);
            }
            Ok(new) => new,
            Err(e) => return self.refuse_refresh(&e, ctx),
        };
        if let Err(denied) = self.shared.access.check(&new.user, new.token_mark()) {
            self.shared
                .metrics
                .access_refused
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: crate::registry::access::reason(denied),
                })
                .inc();
            let why = match denied {
                crate::access::Denied::Revoked => AuthError::Revoked,
                crate::access::Denied::Blocked => AuthError::Blocked,
            };
            return self.refuse_refresh(&why, ctx);
        }
        let signed = new.expires_at.is_some();
        self.identity.topics = new.topics;
        self.identity.expires_at = new.expires_at;
        self.identity.issued_at = new.issued_at;
        self.identity.token_id = new.token_id;
        let mut dropped: Vec<String> = self
            .io
            .borrow()
            .topics
            .iter()
            .filter(|t| !crate::auth::topic_allowed(&self.identity, t))
            .cloned()
            .collect();
        dropped.sort();
        for t in &dropped {
            // Topic messages already on their way are skipped by the shard from now on.
            self.io.borrow_mut().topics.remove(t);
        }
        self.shared.registry.do_send(Refreshed {
            id: self.id,
            expires_at: self.identity.expires_at,
            issued_at: self.identity.issued_at,
            token_id: self.identity.token_id.clone(),
            unfollow: dropped.clone(),
        });
        let exp = if signed {
            self.identity.expires_at
        } else {
            unverified_exp(token.as_str())
        };
        tracing::debug!(session = %self.id, exp, unsubscribed = dropped.len(), "token refreshed");
        self.send_frame(
            &ServerFrame::Refreshed {
                exp,
                unsubscribed: dropped,
            },
            ctx,
        );
    }

    fn refuse_refresh(&mut self, why: &AuthError, ctx: &mut Context<Self>) {
        let msg = match why {
            AuthError::Missing => "refresh needs a token".to_string(),
            AuthError::WrongUser => "token sub is not this session's user".to_string(),
            AuthError::WrongDevice => "token device is not this session's device".to_string(),
            other => other.to_string(),
        };
        tracing::debug!(session = %self.id, why = %msg, "refresh refused");
        self.send_frame(&ServerFrame::error(error_code::BAD_TOKEN, msg), ctx);
    }
}

/// The `exp` claim of a JWT, read without verifying anything (unsigned mode only).
fn unverified_exp(token: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Exp {
        exp: u64,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Exp>(&bytes).ok().map(|e| e.exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unverified_exp_reads_the_claim_or_nothing() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let t = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"none"}"#),
            b64(r#"{"sub":"u","exp":1900000000}"#)
        );
        assert_eq!(unverified_exp(&t), Some(1_900_000_000));
        let no_exp = format!("{}.{}.", b64("{}"), b64(r#"{"sub":"u"}"#));
        assert_eq!(unverified_exp(&no_exp), None);
        assert_eq!(unverified_exp("garbage"), None);
        assert_eq!(unverified_exp("a.b.c"), None);
        assert_eq!(unverified_exp(""), None);
    }
}
