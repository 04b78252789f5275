//! The API's own description: `GET /api/v1/openapi.json` serves `docs/openapi.json` as it
//! is in the repository, and the answers herald gives outside its handlers (a query, path
//! or body the extractors refuse, an unknown route, a method a route does not serve) are
//! the JSON errors that document promises.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::api::error;
use super::AppState;

/// The document, compiled in.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

pub async fn document(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(r) = super::api::authorize(&req, &state) {
        return r;
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT)
}

pub fn method_not_allowed(allow: &str) -> HttpResponse {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    );
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(allow) {
        r.headers_mut().insert(actix_web::http::header::ALLOW, v);
    }
    r
}

pub async fn not_found() -> HttpResponse {
    error(StatusCode::NOT_FOUND, "no such route")
}

/// Extractor errors as JSON `{"error"}` with the status the extractor chose.
pub fn json_errors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| {
        let answer = error(StatusCode::BAD_REQUEST, format!("bad query string: {e}"));
        actix_web::error::InternalError::from_response(e, answer).into()
    }))
    .app_data(web::PathConfig::default().error_handler(|e, _| {
        let answer = error(StatusCode::BAD_REQUEST, format!("bad path: {e}"));
        actix_web::error::InternalError::from_response(e, answer).into()
    }));
}
