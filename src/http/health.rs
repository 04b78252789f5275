//! Probes and scrape endpoints: /healthz, /readyz, /metrics. No API key: probes and
//! scrapers call them.

use actix_web::{web, HttpResponse};

use super::AppState;

/// 200 while the process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// 200 when the pod can take connections: bus connected, the other pods known, the kept
/// revocations and blocks read, and not draining.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.is_draining() {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("draining\n")
    } else if !state.discovered.load(std::sync::atomic::Ordering::Acquire) {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("discovering the other pods\n")
    } else if !state.access.is_settled() {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("reading revocations and blocks\n")
    } else if !state.bus.is_connected() {
        HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("bus not connected\n")
    } else {
        HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n")
    }
}

/// Prometheus text format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state
        .metrics
        .bus_connected
        .set(i64::from(state.bus.is_connected()));
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render())
}
