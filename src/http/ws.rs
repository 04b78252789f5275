//! `GET /websocket/{userId}` without an upgrade: a plain HTTP request to the WebSocket
//! endpoint is refused with 400 (upgrades are served by `upgrade`).

use actix_web::{web, HttpRequest, HttpResponse};

use super::upgrade::{user_from_path, Refusal};
use super::AppState;

pub async fn not_upgraded(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let Refusal(status, reason) = match user_from_path(&state, req.path()) {
        Err(r) => r,
        Ok(_) => {
            state.metrics.refused(400);
            Refusal(400, "not a WebSocket request".into())
        }
    };
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(format!("{reason}\n"))
}
