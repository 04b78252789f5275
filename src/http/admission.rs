//! Admission of a new session, whatever its transport: the path's user id, the Origin
//! rule, the bus, device and token, then the Registry's admission and (durable mode) the
//! recovery of what the client missed, with the welcome it will be sent first.
//!
//! Every refusal here is plain HTTP with a one-line reason, before any stream starts;
//! tokens never reach a log line.

use std::sync::atomic::Ordering;

use actix_http::header::HeaderMap;
use herald_proto::ServerFrame;

use super::AppState;
use crate::auth::{authenticate, extract_token, query_param, Identity};
use crate::ids::{DeviceId, SessionId, UserId};
use crate::message::Frame;
use crate::registry::Detach;
use crate::session::wire::Wire;
use crate::session::{reserve, Opening, Reserved};
use crate::shard::Shard;
use crate::store::{Audience, Store};

/// A handshake refusal: status and reason.
pub struct Refusal(pub u16, pub String);

pub fn refusal(state: &AppState, status: u16, reason: impl Into<String>) -> Refusal {
    state.metrics.refused(status);
    Refusal(status, reason.into())
}

/// The user id after `prefix` in the path (`/websocket/`, `/sse/`), or the refusal for a
/// bad one.
pub fn user_from_path(state: &AppState, path: &str, prefix: &str) -> Result<UserId, Refusal> {
    let Some(raw) = path.strip_prefix(prefix) else {
        return Err(refusal(state, 404, "not found"));
    };
    UserId::parse(raw).map_err(|e| refusal(state, 400, format!("bad user id: {e}")))
}

/// What a transport's handshake brings: the request's parts admission looks at.
pub struct Request<'a> {
    pub user: UserId,
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// A resume point from outside the query (SSE's `Last-Event-ID`); wins over `since=`.
    pub resume: Option<String>,
    /// The session's wire on this transport.
    pub wire: Box<dyn Wire>,
}

/// The Origin rule (PROTOCOL §1): without an Origin header anything passes; with one, it
/// must be the request's own host or an allowed origin.
pub fn check_origin(state: &AppState, headers: &HeaderMap) -> Result<(), Refusal> {
    if let Some(origin) = headers.get(actix_http::header::ORIGIN) {
        let host = headers
            .get(actix_http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let allowed = origin
            .to_str()
            .is_ok_and(|o| state.allowed_origins.allows(o, host));
        if !allowed {
            return Err(refusal(state, 403, "cross-site origin not allowed"));
        }
    }
    Ok(())
}

/// Refuse a revoked token (401) or a blocked user (403): a lookup in memory.
pub async fn check_access(state: &AppState, identity: &Identity) -> Result<(), Refusal> {
    if !state.access.is_settled() {
        // A pod just started: the kept rules are being read.
        state
            .access
            .wait_settled(crate::access::keep::OPEN_TIMEOUT)
            .await;
    }
    state
        .access
        .check(&identity.user, identity.token_mark())
        .map_err(|denied| {
            state
                .metrics
                .access_refused
                .get_or_create(&crate::metrics::ReasonLabels {
                    reason: crate::registry::access::reason(denied),
                })
                .inc();
            let r = crate::registry::access::refusal(denied);
            refusal(state, r.status(), r.reason())
        })
}

/// An admitted session, indexed by the Registry, ready to run.
pub struct Admitted {
    pub reserved: Reserved,
    pub identity: Identity,
    pub opening: Opening,
}

/// Admit a session: refuse it, or index it with the Registry and prepare its opening.
/// The transport checks its own handshake (and the drain) first.
pub async fn admit(state: &AppState, req: Request<'_>) -> Result<Admitted, Refusal> {
    let Request {
        user,
        query,
        headers,
        resume,
        wire,
    } = req;
    check_origin(state, headers)?;
    if !state.bus.is_connected() {
        // A welcome promises delivery has started; without the bus it cannot.
        return Err(refusal(state, 503, "message bus unavailable"));
    }
    let device = match query_param(query, "device") {
        None => None,
        Some(d) => {
            Some(DeviceId::parse(&d).map_err(|e| refusal(state, 400, format!("bad device: {e}")))?)
        }
    };
    let since = resume.or_else(|| query_param(query, "since"));
    let token = extract_token(query, headers);
    let identity = authenticate(&state.auth, token.as_deref(), &user, device)
        .await
        .map_err(|e| refusal(state, 401, e.to_string()))?;
    check_access(state, &identity).await?;

    let id = SessionId::new(state.next_session.fetch_add(1, Ordering::Relaxed));
    // The session runs on this thread: its shard fans out to it.
    let shard = Shard::current(&state.registry, &state.metrics);
    let reserved = match reserve(&state.session, shard, id, &identity, wire).await {
        Ok(Ok(r)) => r,
        Ok(Err(r)) => return Err(refusal(state, r.status(), r.reason())),
        Err(_) => return Err(refusal(state, 503, "hub is shutting down")),
    };
    if state.durable.is_some() && reserved.live_after.is_none() {
        // The user's feed could not read the stream: a welcome would promise delivery
        // that cannot start.
        state.registry.do_send(Detach { id, reason: "gone" });
        return Err(refusal(state, 503, "message store unavailable"));
    }
    let replay = match (&since, &state.durable) {
        (Some(since), Some(durable)) => match reserved.live_after {
            Some(live_after) => recover(durable.as_ref(), &identity, since, live_after).await,
            None => None,
        },
        // Without durable mode nothing is kept, so a resume request never recovers.
        _ => None,
    };
    let welcome = ServerFrame::Welcome {
        session: id.to_string(),
        user: user.to_string(),
        pod: state.session.pod.clone(),
        heartbeat_ms: state.session.limits.heartbeat.as_millis() as u64,
        recovered: since.as_ref().map(|_| replay.is_some()),
        replayed: since
            .as_ref()
            .map(|_| replay.as_ref().map_or(0, |r| r.len() as u64)),
    };
    tracing::debug!(session = %id, user = %user, "session open");
    Ok(Admitted {
        reserved,
        identity,
        opening: Opening {
            welcome: welcome.to_json(),
            replay: replay.unwrap_or_default(),
        },
    })
}

/// Durable mode: every message for this session after `since`, up to `live_after` (the
/// rest comes live), or None when that cannot be done whole: a cursor that cannot be
/// continued, more than `--max-replay` messages, or the stream unreachable. Never a part.
async fn recover(
    durable: &dyn Store,
    identity: &Identity,
    since: &str,
    live_after: u64,
) -> Option<Vec<Frame>> {
    let after = match durable.resume_point(since).await {
        Ok(Ok(after)) => after,
        Ok(Err(refusal)) => {
            tracing::debug!(user = %identity.user, why = %refusal, "not recovered");
            return None;
        }
        Err(e) => {
            tracing::warn!(user = %identity.user, error = %e, "not recovered: stream unreachable");
            return None;
        }
    };
    if after >= live_after {
        return Some(Vec::new());
    }
    let limit = usize::try_from(durable.max_replay()).unwrap_or(usize::MAX);
    let audience = Audience::Session(identity.device.as_ref());
    match durable
        .read(&identity.user, after, Some(live_after), audience, limit)
        .await
    {
        Ok(read) if read.more => {
            tracing::debug!(user = %identity.user, "not recovered: more than --max-replay missing");
            None
        }
        Ok(read) => Some(read.messages.into_iter().map(|m| m.frame).collect()),
        Err(e) => {
            tracing::warn!(user = %identity.user, error = %e, "not recovered: stream unreachable");
            None
        }
    }
}
