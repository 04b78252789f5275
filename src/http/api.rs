//! `/api/v1/*` for services and operators: publish, presence, stats, disconnect. Every
//! route needs the API key (or an open API on a loopback-bound hub without a key).
//! Errors are JSON `{"error": "..."}` with a status that says whose fault it is.

// Helpers return the finished error response as `Err`: it is what the handler sends, and
// boxing it would only add an allocation on a path that already failed.
#![allow(clippy::result_large_err)]

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use herald_proto::{Subjects, HEADER_DEVICE, HEADER_EVENT, HEADER_MSG_ID};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::AppState;
use crate::bus::Outbound;
use crate::ids::{DeviceId, UserId};
use crate::message::new_message_id;

pub(super) fn error(
    status: actix_web::http::StatusCode,
    message: impl Into<String>,
) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": message.into() }))
}

pub(super) fn bad_request(message: impl Into<String>) -> HttpResponse {
    error(actix_web::http::StatusCode::BAD_REQUEST, message)
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> HttpResponse {
    error(
        actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
        e.to_string(),
    )
}

/// `Err(response)` unless the caller may use the API.
pub(super) fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), HttpResponse> {
    let Some(key) = &state.api_key else {
        return if state.api_open {
            Ok(())
        } else {
            Err(error(
                actix_web::http::StatusCode::UNAUTHORIZED,
                "API disabled: no API key configured and not bound to loopback",
            ))
        };
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
        Ok(())
    } else {
        Err(error(
            actix_web::http::StatusCode::UNAUTHORIZED,
            "missing or wrong API key",
        ))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    pub user: Option<String>,
    #[serde(default)]
    pub broadcast: bool,
    pub topic: Option<String>,
    pub event: Option<String>,
    pub data: Option<Box<RawValue>>,
    pub id: Option<String>,
    pub device: Option<String>,
    /// Wait for a delivery receipt before answering (§5c); user messages only.
    #[serde(rename = "await", default)]
    pub await_receipt: Option<AwaitBody>,
}

/// The `await` object of a publish.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwaitBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "super::body::whole_opt"
    )]
    pub timeout_ms: Option<u64>,
}

/// Why a publish body was refused, naming `await` when that is what is wrong (serde's own
/// message gives only a position).
fn publish_body_problem(body: &[u8], e: serde_json::Error) -> String {
    let awaiting = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|mut v| v.get_mut("await").map(serde_json::Value::take));
    if let Some(a) = awaiting {
        if let Err(e) = serde_json::from_value::<AwaitBody>(a) {
            return format!("await: {e} (an object with optional status, device, timeout_ms)");
        }
    }
    format!("body is not a valid publish request: {e}")
}

/// How long a publish waits for a receipt without `timeout_ms` (at most `--max-await`).
pub const DEFAULT_AWAIT_MS: u64 = 10_000;

impl AwaitBody {
    /// What to wait for, and how long (at most `max`); a reason when the object is not valid.
    pub fn check(
        &self,
        max: std::time::Duration,
    ) -> Result<(crate::receipts::Wanted, std::time::Duration), String> {
        if let Some(s) = &self.status {
            if !herald_proto::frame::is_valid_status(s) {
                return Err("await.status: 1 to 32 bytes of a-z 0-9 _ -".into());
            }
        }
        if let Some(d) = &self.device {
            DeviceId::parse(d).map_err(|e| format!("await.device: {e}"))?;
        }
        let max = max.as_millis() as u64;
        let ms = self.timeout_ms.unwrap_or(DEFAULT_AWAIT_MS.min(max));
        if ms == 0 || ms > max {
            return Err(format!("await.timeout_ms: 1 to {max}"));
        }
        Ok((
            crate::receipts::Wanted {
                status: self.status.clone(),
                device: self.device.clone(),
            },
            std::time::Duration::from_millis(ms),
        ))
    }
}

/// Turn a publish body into the bus message a service would have sent over NATS.
pub fn publish_message(
    body: PublishBody,
    subjects: &Subjects,
) -> Result<(String, Outbound), String> {
    let subject = match (&body.user, body.broadcast, &body.topic) {
        (Some(u), false, None) => {
            let user = UserId::parse(u).map_err(|e| format!("user: {e}"))?;
            subjects.user(user.as_str())
        }
        (None, true, None) => {
            if body.device.is_some() {
                return Err("device applies to user messages only".into());
            }
            subjects.broadcast()
        }
        (None, false, Some(t)) => {
            if !herald_proto::is_valid_topic(t) {
                return Err(
                    "topic: 1 to 8 dot-separated tokens of A-Z a-z 0-9 _ - =, each 1 to 64 bytes"
                        .into(),
                );
            }
            subjects.topic(t)
        }
        _ => return Err("give exactly one of \"user\", \"broadcast\": true, or \"topic\"".into()),
    };
    let id = match body.id {
        Some(id) if id.is_empty() || id.len() > 256 => return Err("id: 1 to 256 bytes".into()),
        Some(id) if has_line_break(&id) => return Err("id: may not contain CR or LF".into()),
        Some(id) => id,
        None => new_message_id(),
    };
    let payload = body.data.map_or_else(
        || Bytes::from_static(b"null"),
        |d| Bytes::from(String::from(Box::<str>::from(d))),
    );
    let mut msg = Outbound::new(subject, payload).header(HEADER_MSG_ID, id.clone());
    if let Some(event) = body.event {
        // Carried in a NATS header, where a line break would end the header block.
        if has_line_break(&event) {
            return Err("event: may not contain CR or LF".into());
        }
        msg = msg.header(HEADER_EVENT, event);
    }
    if let Some(d) = body.device {
        let d = DeviceId::parse(&d).map_err(|e| format!("device: {e}"))?;
        msg = msg.header(HEADER_DEVICE, d.to_string());
    }
    Ok((id, msg))
}

fn has_line_break(s: &str) -> bool {
    s.contains(['\r', '\n'])
}

pub async fn publish(req: HttpRequest, body: Bytes, state: web::Data<AppState>) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return r;
    }
    if let Err(e) = super::body::refuse_nulls(&body, &["data"]) {
        return bad_request(e);
    }
    let body: PublishBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(publish_body_problem(&body, e)),
    };
    let awaiting = match &body.await_receipt {
        None => None,
        Some(_) if body.user.is_none() => {
            return bad_request("await applies to user messages only")
        }
        Some(a) => match a.check(state.max_await) {
            Ok(w) => Some(w),
            Err(e) => return bad_request(e),
        },
    };
    let (id, msg) = match publish_message(body, &state.cluster.subjects) {
        Ok(m) => m,
        Err(e) => return bad_request(e),
    };
    // Registered before the message is published: its receipt cannot come too early.
    let wait = match (&awaiting, state.cluster.subjects.user_of(&msg.subject)) {
        (Some((wanted, timeout)), Some(user)) => {
            if let Err(e) = state.receipts.listen().await {
                return unavailable(format!("cannot listen for receipts: {e}"));
            }
            Some((state.receipts.register(user, &id, wanted.clone()), *timeout))
        }
        _ => None,
    };
    let mut answer = serde_json::json!({ "id": id });
    match &state.durable {
        Some(durable) if state.cluster.subjects.user_of(&msg.subject).is_some() => {
            // Kept first (the store announces it to the pods), so the answer can carry
            // the cursor; a message the store did not take is not delivered.
            match durable.publish(msg).await {
                Ok(seq) => answer["cursor"] = durable.cursor(seq).into(),
                Err(e) => return unavailable(e),
            }
        }
        _ => {
            if let Err(e) = state.bus.publish(msg).await {
                return unavailable(e);
            }
        }
    }
    let Some((wait, timeout)) = wait else {
        return HttpResponse::Accepted().json(answer);
    };
    match wait.receipt(timeout).await {
        Some(r) => {
            answer["receipt"] = serde_json::to_value(&r).unwrap_or_default();
            HttpResponse::Ok().json(answer)
        }
        None => {
            answer["receipt"] = serde_json::Value::Null;
            HttpResponse::Accepted().json(answer)
        }
    }
}

/// The API key check, then the user id of the path.
pub(super) fn authorized_user(
    req: &HttpRequest,
    state: &AppState,
    path: &str,
) -> Result<UserId, HttpResponse> {
    authorize(req, state)?;
    UserId::parse(path).map_err(|e| bad_request(format!("bad user id: {e}")))
}

pub async fn presence(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let user = match authorized_user(&req, &state, &path) {
        Ok(u) => u,
        Err(r) => return r,
    };
    match state.cluster.presence(&user).await {
        Ok(p) => HttpResponse::Ok().json(p),
        Err(e) => unavailable(e),
    }
}

pub async fn stats(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(r) = authorize(&req, &state) {
        return r;
    }
    match state.cluster.stats().await {
        Ok(s) => HttpResponse::Ok().json(s),
        Err(e) => unavailable(e),
    }
}

pub async fn disconnect(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let user = match authorized_user(&req, &state, &path) {
        Ok(u) => u,
        Err(r) => return r,
    };
    match state.cluster.disconnect(&user).await {
        Ok(()) => HttpResponse::Accepted().json(serde_json::json!({ "user": user.to_string() })),
        Err(e) => unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> PublishBody {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn publish_bodies_map_to_subjects_and_headers() {
        let s = Subjects::default();
        let (id, m) = publish_message(
            body(r#"{"user":"u1","event":"order","data":{"a":1},"id":"x1"}"#),
            &s,
        )
        .unwrap();
        assert_eq!(id, "x1");
        assert_eq!(m.subject, "herald.user.u1");
        assert_eq!(&m.payload[..], br#"{"a":1}"#);
        assert!(m.headers.contains(&(HEADER_EVENT.into(), "order".into())));
        let (_, m) = publish_message(body(r#"{"broadcast":true,"data":"hi"}"#), &s).unwrap();
        assert_eq!(m.subject, "herald.broadcast");
        assert_eq!(&m.payload[..], br#""hi""#);
    }

    #[test]
    fn bad_publish_bodies_say_why() {
        let s = Subjects::default();
        for (json, needle) in [
            (r#"{"data":1}"#, "exactly one"),
            (r#"{"user":"u1","broadcast":true}"#, "exactly one"),
            (r#"{"user":"u.1"}"#, "user:"),
            (r#"{"topic":"a..b"}"#, "topic:"),
            (r#"{"broadcast":true,"device":"d"}"#, "device"),
        ] {
            let err = publish_message(body(json), &s).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }
}
