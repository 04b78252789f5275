//! The API's own description: `GET /api/v1/openapi.json` serves `docs/openapi.json` as it
//! is in the repository (with this pod's `--max-await` when it is not the default), and the
//! answers herald gives outside its handlers (a query, path
//! or body the extractors refuse, an unknown route, a method a route does not serve) are
//! the JSON errors that document promises.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::api::error;
use super::AppState;

/// The document, compiled in.
pub const DOCUMENT: &str = include_str!("../../docs/openapi.json");

/// The document as this pod serves it: `await.timeout_ms` at most `max_await`, so what the
/// document allows is exactly what the pod accepts.
pub fn document_for(max_await: std::time::Duration) -> String {
    if max_await == crate::receipts::MAX_AWAIT {
        return DOCUMENT.to_string();
    }
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(DOCUMENT) else {
        return DOCUMENT.to_string();
    };
    let max = max_await.as_millis() as u64;
    if let Some(t) = doc.pointer_mut("/components/schemas/Await/properties/timeout_ms") {
        t["maximum"] = max.into();
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|_| DOCUMENT.to_string())
}

pub async fn document(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(r) = super::api::authorize(&req, &state) {
        return r;
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi.clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limit_serves_the_document_as_it_is() {
        assert_eq!(document_for(crate::receipts::MAX_AWAIT), DOCUMENT);
    }

    #[test]
    fn a_lower_limit_is_the_documented_maximum() {
        let doc: serde_json::Value =
            serde_json::from_str(&document_for(std::time::Duration::from_millis(100)))
                .expect("json");
        assert_eq!(
            doc.pointer("/components/schemas/Await/properties/timeout_ms/maximum"),
            Some(&serde_json::json!(100))
        );
    }
}
