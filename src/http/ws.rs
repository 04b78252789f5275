//! The WebSocket handshake at /websocket/{userId}: validation, authentication and the
//! Registry's admission all happen before the upgrade, so every refusal is plain HTTP
//! with a one-line reason.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix::{AsyncContext, Context};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use herald_proto::ServerFrame;

use super::AppState;
use crate::auth::{authenticate, extract_token, query_param};
use crate::ids::{DeviceId, SessionId, UserId};
use crate::registry::Attach;
use crate::session::Session;

fn refuse(state: &AppState, status: u16, reason: &str) -> HttpResponse {
    state.metrics.refused(status);
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(format!("{reason}\n"))
}

fn is_websocket_request(req: &HttpRequest) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if state.is_draining() {
        return refuse(&state, 503, "pod is draining");
    }
    if !state.bus.is_connected() {
        // A welcome promises delivery has started; without the bus it cannot.
        return refuse(&state, 503, "message bus unavailable");
    }
    let user = match UserId::parse(&path) {
        Ok(u) => u,
        Err(e) => return refuse(&state, 400, &format!("bad user id: {e}")),
    };
    if !is_websocket_request(&req) {
        return refuse(&state, 400, "not a WebSocket request");
    }
    let query = req.query_string();
    let device = match query_param(query, "device") {
        None => None,
        Some(d) => match DeviceId::parse(&d) {
            Ok(d) => Some(d),
            Err(e) => return refuse(&state, 400, &format!("bad device: {e}")),
        },
    };
    let since = query_param(query, "since");
    let token = extract_token(&req);
    let identity = match authenticate(&state.auth, token.as_deref(), &user, device) {
        Ok(i) => i,
        Err(e) => return refuse(&state, 401, &e.to_string()),
    };
    let (response, ws, stream) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(_) => return refuse(&state, 400, "not a valid WebSocket handshake"),
    };
    let limits = state.session.limits;
    let stream = stream
        .max_frame_size(limits.max_frame_bytes)
        .aggregate_continuations()
        .max_continuation_size(limits.max_frame_bytes);

    let id = SessionId::new(state.next_session.fetch_add(1, Ordering::Relaxed));
    let last_seen = Arc::new(AtomicU64::new(crate::clock::now_ms()));
    // The actor's address exists before it runs, so the Registry can index it (and refuse
    // it) while the handshake is still plain HTTP.
    let ctx: Context<Session> = Context::new();
    let attach = Attach {
        id,
        identity: identity.clone(),
        session: ctx.address(),
        last_seen: last_seen.clone(),
    };
    match state.registry.send(attach).await {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => return refuse(&state, refusal.status(), refusal.reason()),
        Err(_) => return refuse(&state, 503, "hub is shutting down"),
    }
    let welcome = ServerFrame::Welcome {
        session: id.to_string(),
        user: user.to_string(),
        pod: state.session.pod.clone(),
        heartbeat_ms: limits.heartbeat.as_millis() as u64,
        // Without durable mode nothing is kept, so a resume request never recovers.
        recovered: since.as_ref().map(|_| false),
        replayed: since.as_ref().map(|_| 0),
    };
    tracing::debug!(session = %id, user = %user, "session open");
    ctx.run(Session::new(
        id,
        identity,
        state.session.clone(),
        ws,
        stream,
        last_seen,
        welcome.to_json(),
    ));
    response
}
