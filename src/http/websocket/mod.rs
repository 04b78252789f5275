//! The WebSocket transport: the handshake at `/websocket/{userId}`, served by the HTTP
//! layer's upgrade hook so herald gets the TCP stream itself once the handshake succeeds
//! (see `session::socket`), the plain-HTTP answer to a request that is not an upgrade, and
//! (below) the framing both ways.
//!
//! Validation, authentication and the Registry's admission (`http::admission`, shared with
//! SSE) all happen before the answer, so every refusal is plain HTTP.

pub mod decoder;
pub mod deflate;
pub mod framing;

use actix_codec::Framed;
use actix_http::{h1, HttpMessage, Request};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::admission::{self, refusal, user_from_path, Admitted, Refusal};
use super::AppState;
use crate::registry::Detach;
use crate::session::socket::Socket;
use crate::session::Session;
use framing::WebSocketWire;

/// The WebSocket version herald speaks; a refusal for another one names it (RFC 6455 §4.4).
const WEBSOCKET_VERSION: &str = "13";
const PATH: &str = "/websocket/";

/// Serve one upgrade request: refuse it, or answer 101 and hand the stream to a Session.
pub async fn serve(state: web::Data<AppState>, req: Request, framed: Framed<TcpStream, h1::Codec>) {
    let parts = framed.into_parts();
    let mut io = parts.io;
    if let Some(key) = over_connect_rate(&state, &req) {
        // Answered as an upgrade and closed at once: a browser can read 1013.
        let accept = actix_http::ws::hash_key(key.as_bytes());
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
            String::from_utf8_lossy(&accept)
        )
        .into_bytes();
        out.extend_from_slice(&super::connect_rate::close_frame());
        state
            .metrics
            .closes
            .get_or_create(&crate::metrics::CodeLabels {
                code: herald_proto::CloseCode::TryAgainLater.code(),
            })
            .inc();
        let _ = io.write_all(&out).await;
        let _ = io.shutdown().await;
        return;
    }
    match admit(&state, &req).await {
        Err(Refusal(status, reason)) => {
            let _ = io
                .write_all(refusal_response(status, &reason).as_bytes())
                .await;
            let _ = io.shutdown().await;
        }
        Ok((admitted, key, deflate)) => {
            let accept = actix_http::ws::hash_key(key.as_bytes());
            let extensions = if deflate {
                format!("sec-websocket-extensions: {}\r\n", deflate::ACCEPTED)
            } else {
                String::new()
            };
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n{extensions}\r\n",
                String::from_utf8_lossy(&accept)
            );
            if io.write_all(head.as_bytes()).await.is_err() {
                // The client left during the handshake: the session never starts.
                state.registry.do_send(Detach {
                    id: admitted.reserved.id,
                    reason: "gone",
                });
                return;
            }
            let _ = io.set_nodelay(true);
            let mut leftover = BytesMut::new();
            leftover.extend_from_slice(&parts.read_buf);
            let Admitted {
                reserved,
                identity,
                opening,
            } = admitted;
            let (ctx, session) = Session::new(
                reserved,
                identity,
                state.session.clone(),
                Socket::Tcp(io),
                leftover,
                opening,
            );
            ctx.run(session);
        }
    }
}

/// The handshake's key when it is a valid WebSocket upgrade for a pod that takes
/// connections but is over `--connect-rate` (a bad request is refused the usual way).
fn over_connect_rate(state: &AppState, req: &Request) -> Option<String> {
    if state.is_draining() || actix_http::ws::verify_handshake(req.head()).is_err() {
        return None;
    }
    if state.connect_rate.admit() {
        return None;
    }
    req.headers()
        .get(actix_http::header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .map(str::to_string)
}

/// The WebSocket checks, then the shared admission. Answers the admitted session, the
/// client's `Sec-WebSocket-Key`, and whether permessage-deflate was negotiated.
async fn admit(state: &AppState, req: &Request) -> Result<(Admitted, String, bool), Refusal> {
    if state.is_draining() {
        return Err(refusal(state, 503, "pod is draining"));
    }
    let user = user_from_path(state, req.path(), PATH)?;
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
    let key = req
        .headers()
        .get(actix_http::header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let deflate_from = state.session.limits.deflate_from.filter(|_| {
        deflate::accepts(
            req.headers()
                .get_all(actix_http::header::SEC_WEBSOCKET_EXTENSIONS)
                .filter_map(|v| v.to_str().ok()),
        )
    });
    let admitted = admission::admit(
        state,
        admission::Request {
            user,
            query: req.uri().query().unwrap_or(""),
            headers: req.headers(),
            resume: None,
            wire: Box::new(WebSocketWire::with_deflate(
                state.session.limits.max_frame_bytes,
                deflate_from,
            )),
        },
    )
    .await?;
    Ok((admitted, key, deflate_from.is_some()))
}

/// `GET /websocket/{userId}` without an upgrade: a plain HTTP request to the WebSocket
/// endpoint is refused with 400 (upgrades are served by [`serve`]).
pub async fn not_upgraded(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Refusal(status, reason) = match user_from_path(&state, req.path(), PATH) {
        Err(r) => r,
        Ok(_) => refusal(&state, 400, "not a WebSocket request"),
    };
    super::plain_refusal(status, &reason)
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
