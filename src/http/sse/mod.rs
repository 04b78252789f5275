//! The Server-Sent Events transport (PROTOCOL §5b), for browsers whose network blocks
//! WebSocket: `GET /sse/{userId}` opens a session like a WebSocket's (same admission,
//! limits, takeover, presence, eviction, drain and recovery) whose frames are written as
//! events into the response body, and `POST /sse/{userId}/{sessionId}` carries one client
//! frame to it, on whichever pod holds it.
//!
//! The stream is an ordinary streaming response: the session writes into a
//! `session::pipe::Pipe` and the HTTP layer sends what comes out, so the session's
//! outbound limit, heartbeats and closes work exactly as on a socket of its own.

pub mod event;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::admission::{self, check_origin, refusal, user_from_path, Admitted, Refusal};
use super::{plain_refusal, AppState};
use crate::auth::{authenticate, extract_token};
use crate::ids::{SessionId, UserId};
use crate::session::pipe::pipe;
use crate::session::socket::Socket;
use crate::session::Session;
use event::SseWire;

const PATH: &str = "/sse/";

fn refused(Refusal(status, reason): Refusal) -> HttpResponse {
    plain_refusal(status, &reason)
}

/// `GET /sse/{userId}`: refuse as plain HTTP, or start a session and stream its events.
pub async fn stream(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if !state.is_draining() && !state.connect_rate.admit() {
        // Over `--connect-rate`: the stream opens and closes at once with 1013.
        let code = herald_proto::CloseCode::TryAgainLater;
        let mut body = bytes::BytesMut::new();
        event::write_close(&mut body, code.code(), code.reason());
        state
            .metrics
            .closes
            .get_or_create(&crate::metrics::CodeLabels { code: code.code() })
            .inc();
        return HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/event-stream"))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            // Streamed like every event stream (chunked), then ended.
            .streaming(futures_util::stream::once(async move {
                Ok::<_, std::convert::Infallible>(body.freeze())
            }));
    }
    match open(&req, &state).await {
        Ok(body) => HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "text/event-stream"))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            // Proxies that buffer responses (nginx) would hold events back.
            .insert_header(("x-accel-buffering", "no"))
            .streaming(body),
        Err(r) => refused(r),
    }
}

async fn open(
    req: &HttpRequest,
    state: &AppState,
) -> Result<crate::session::pipe::PipeBody, Refusal> {
    if state.is_draining() {
        return Err(refusal(state, 503, "pod is draining"));
    }
    let user = user_from_path(state, req.path(), PATH)?;
    // An EventSource that reconnects sends the id of the last event it saw; it is newer
    // than the `since=` of the URL it keeps.
    let resume = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let Admitted {
        reserved,
        identity,
        opening,
    } = admission::admit(
        state,
        admission::Request {
            user,
            query: req.query_string(),
            headers: req.headers(),
            resume,
            wire: Box::new(SseWire),
        },
    )
    .await?;
    let (socket, body) = pipe();
    let (ctx, session) = Session::new(
        reserved,
        identity,
        state.session.clone(),
        Socket::Pipe(socket),
        Default::default(),
        opening,
    );
    ctx.run(session);
    Ok(body)
}

/// `POST /sse/{userId}/{sessionId}`: one client frame for a live SSE session. 202 once a
/// pod holding the session took it (the answer comes on the stream), 404 when none does.
pub async fn post(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    match hand_over(&req, &body, &state).await {
        Ok(()) => HttpResponse::Accepted().finish(),
        Err(r) => refused(r),
    }
}

async fn hand_over(req: &HttpRequest, body: &[u8], state: &AppState) -> Result<(), Refusal> {
    let raw_user = req.match_info().get("user").unwrap_or_default();
    let user =
        UserId::parse(raw_user).map_err(|e| refusal(state, 400, format!("bad user id: {e}")))?;
    check_origin(state, req.headers())?;
    let token = extract_token(req.query_string(), req.headers());
    let identity = authenticate(&state.auth, token.as_deref(), &user, None)
        .await
        .map_err(|e| refusal(state, 401, e.to_string()))?;
    crate::http::admission::check_access(state, &identity).await?;
    if body.len() > state.session.limits.max_frame_bytes {
        return Err(refusal(state, 413, "frame larger than the limit"));
    }
    let frame = std::str::from_utf8(body)
        .map_err(|_| refusal(state, 400, "the body must be one JSON frame in UTF-8"))?
        .to_string();
    let session = req.match_info().get("session").unwrap_or_default();
    let Some(id) = SessionId::parse(session) else {
        return Err(refusal(state, 404, "no such session"));
    };
    match state.cluster.client_frame(&user, id, frame).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(refusal(state, 404, "no such session")),
        Err(e) => {
            tracing::warn!(error = %e, "client frame not forwarded");
            Err(refusal(state, 503, "message bus unavailable"))
        }
    }
}
