//! The WebSocket handshake at /websocket/{userId}, served by the HTTP layer's upgrade hook
//! so herald gets the TCP stream itself once the handshake succeeds (see `socket`).
//!
//! Validation, authentication and the Registry's admission all happen before the answer,
//! so every refusal is plain HTTP with a one-line reason; tokens never reach a log line.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::Context;
use actix_codec::Framed;
use actix_http::{h1, HttpMessage, Request};
use actix_web::web;
use bytes::BytesMut;
use herald_proto::ServerFrame;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::AppState;
use crate::auth::{authenticate, extract_token, query_param};
use crate::durable::{Audience, Durable};
use crate::ids::{DeviceId, SessionId, UserId};
use crate::registry::Detach;
use crate::session::{reserve, Link, Opening, Session};
use crate::socket::Socket;

/// A handshake refusal: status and reason.
pub struct Refusal(pub u16, pub String);

fn refusal(state: &AppState, status: u16, reason: impl Into<String>) -> Refusal {
    state.metrics.refused(status);
    Refusal(status, reason.into())
}

/// The WebSocket version herald speaks; a refusal for another one names it (RFC 6455 §4.4).
const WEBSOCKET_VERSION: &str = "13";

/// The user id in `/websocket/{userId}`, or the refusal for a bad one.
pub fn user_from_path(state: &AppState, path: &str) -> Result<UserId, Refusal> {
    let Some(raw) = path.strip_prefix("/websocket/") else {
        return Err(refusal(state, 404, "not found"));
    };
    UserId::parse(raw).map_err(|e| refusal(state, 400, format!("bad user id: {e}")))
}

/// Serve one upgrade request: refuse it, or answer 101 and hand the stream to a Session.
pub async fn serve(state: web::Data<AppState>, req: Request, framed: Framed<TcpStream, h1::Codec>) {
    let parts = framed.into_parts();
    let mut io = parts.io;
    match admit(&state, &req).await {
        Err(Refusal(status, reason)) => {
            let _ = io
                .write_all(refusal_response(status, &reason).as_bytes())
                .await;
            let _ = io.shutdown().await;
        }
        Ok(admitted) => {
            let accept = actix_http::ws::hash_key(admitted.key.as_bytes());
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
                String::from_utf8_lossy(&accept)
            );
            if io.write_all(head.as_bytes()).await.is_err() {
                // The client left during the handshake: the session never starts.
                state.registry.do_send(Detach {
                    id: admitted.id,
                    reason: "gone",
                });
                return;
            }
            let _ = io.set_nodelay(true);
            let mut leftover = BytesMut::new();
            leftover.extend_from_slice(&parts.read_buf);
            let session = Session::new(
                admitted.id,
                admitted.identity,
                state.session.clone(),
                Socket::Tcp(io),
                leftover,
                admitted.link,
                Opening {
                    welcome: admitted.welcome,
                    replay: admitted.replay,
                },
            );
            admitted.ctx.run(session);
        }
    }
}

struct Admitted {
    id: SessionId,
    identity: crate::auth::Identity,
    ctx: Context<Session>,
    link: Arc<Link>,
    welcome: String,
    replay: Vec<crate::message::Frame>,
    key: String,
}

async fn admit(state: &AppState, req: &Request) -> Result<Admitted, Refusal> {
    if state.is_draining() {
        return Err(refusal(state, 503, "pod is draining"));
    }
    let user = user_from_path(state, req.path())?;
    match actix_http::ws::verify_handshake(req.head()) {
        Ok(()) => {}
        Err(actix_http::ws::HandshakeError::UnsupportedVersion) => {
            return Err(refusal(
                state,
                426,
                format!("unsupported WebSocket version: use {WEBSOCKET_VERSION}"),
            ))
        }
        Err(_) => return Err(refusal(state, 400, "not a WebSocket request")),
    }
    if let Some(origin) = req.headers().get(actix_http::header::ORIGIN) {
        let host = req
            .headers()
            .get(actix_http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let allowed = origin
            .to_str()
            .is_ok_and(|o| state.allowed_origins.allows(o, host));
        if !allowed {
            return Err(refusal(state, 403, "cross-site origin not allowed"));
        }
    }
    if !state.bus.is_connected() {
        // A welcome promises delivery has started; without the bus it cannot.
        return Err(refusal(state, 503, "message bus unavailable"));
    }
    let query = req.uri().query().unwrap_or("");
    let device = match query_param(query, "device") {
        None => None,
        Some(d) => {
            Some(DeviceId::parse(&d).map_err(|e| refusal(state, 400, format!("bad device: {e}")))?)
        }
    };
    let since = query_param(query, "since");
    let token = extract_token(query, req.headers());
    let identity = authenticate(&state.auth, token.as_deref(), &user, device)
        .await
        .map_err(|e| refusal(state, 401, e.to_string()))?;
    let key = req
        .headers()
        .get(actix_http::header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .unwrap_or_default()
        .to_string();

    let id = SessionId::new(state.next_session.fetch_add(1, Ordering::Relaxed));
    let reserved = match reserve(&state.registry, id, &identity).await {
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
            Some(live_after) => recover(durable, &identity, since, live_after).await,
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
        id,
        identity,
        ctx: reserved.ctx,
        link: reserved.link,
        welcome: welcome.to_json(),
        replay: replay.unwrap_or_default(),
        key,
    })
}

/// Durable mode: every message for this session after `since`, up to `live_after` (the
/// rest comes live), or None when that cannot be done whole: a cursor that cannot be
/// continued, more than `--max-replay` messages, or the stream unreachable. Never a part.
async fn recover(
    durable: &Durable,
    identity: &crate::auth::Identity,
    since: &str,
    live_after: u64,
) -> Option<Vec<crate::message::Frame>> {
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

fn refusal_response(status: u16, reason: &str) -> String {
    let phrase = actix_http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let body = format!("{reason}\n");
    let extra = if status == 426 {
        format!("sec-websocket-version: {WEBSOCKET_VERSION}\r\n")
    } else {
        String::new()
    };
    format!(
        "HTTP/1.1 {status} {phrase}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{body}",
        body.len()
    )
}
