//! HTTP surface: the route table in one place, the state handlers share, and access logs
//! that never show a query string (tokens travel there).

pub mod access_api;
pub mod admission;
pub mod api;
pub mod body;
pub mod connect_rate;
pub mod demo;
pub mod health;
pub mod history;
pub mod openapi;
pub mod sse;
pub mod websocket;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use actix::Addr;
use actix_web::middleware::Logger;
use actix_web::web;

use crate::auth::AuthConfig;
use crate::bus::Bus;
use crate::control::cluster::Cluster;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::session::SessionShared;

/// State shared by every handler on every worker.
pub struct AppState {
    pub registry: Addr<Registry>,
    pub bus: Arc<dyn Bus>,
    pub cluster: Cluster,
    pub auth: AuthConfig,
    pub api_key: Option<String>,
    /// No API key and bound to loopback: the API is open to local callers.
    pub api_open: bool,
    pub metrics: Arc<Metrics>,
    pub session: Arc<SessionShared>,
    pub draining: Arc<AtomicBool>,
    pub next_session: AtomicU64,
    /// Set once the pod has announced itself and heard the live pods (at once in
    /// standalone mode): readiness waits for it.
    pub discovered: Arc<AtomicBool>,
    /// Durable mode's stream, when enabled.
    pub durable: Option<Arc<dyn crate::store::Store>>,
    /// Origins allowed besides same-origin.
    pub allowed_origins: crate::origin::AllowedOrigins,
    /// HTTP publishes waiting for delivery receipts.
    pub receipts: Arc<crate::receipts::Receipts>,
    /// `--connect-rate`: handshakes admitted per second.
    pub connect_rate: connect_rate::ConnectRate,
    /// Revocations and blocks, checked at every handshake.
    pub access: Arc<crate::access::AccessList>,
    /// `--revocation-ttl`: how long a revocation is kept when the revoked tokens'
    /// expiry is not given.
    pub revocation_ttl: std::time::Duration,
    /// `--max-await`: the longest receipt wait a publish may ask for.
    pub max_await: std::time::Duration,
    /// The API's OpenAPI document as served: docs/openapi.json with this pod's limits.
    pub openapi: String,
}

impl AppState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// The API's routes: method, path (as `docs/openapi.json` writes it) and handler. The
/// document is checked against this table (tests/openapi.rs), so neither can drift.
pub type ApiRoute = (&'static str, &'static str, fn() -> actix_web::Route);

pub const API_ROUTES: &[ApiRoute] = &[
    ("post", "/api/v1/publish", || web::post().to(api::publish)),
    ("get", "/api/v1/history/{userId}", || {
        web::get().to(history::history)
    }),
    ("get", "/api/v1/presence/{userId}", || {
        web::get().to(api::presence)
    }),
    ("get", "/api/v1/stats", || web::get().to(api::stats)),
    ("post", "/api/v1/users/{userId}/disconnect", || {
        web::post().to(api::disconnect)
    }),
    ("post", "/api/v1/users/{userId}/revoke", || {
        web::post().to(access_api::revoke)
    }),
    ("post", "/api/v1/users/{userId}/block", || {
        web::post().to(access_api::block)
    }),
    ("delete", "/api/v1/users/{userId}/block", || {
        web::delete().to(access_api::unblock)
    }),
    ("get", "/api/v1/openapi.json", || {
        web::get().to(openapi::document)
    }),
    ("get", "/healthz", || web::get().to(health::healthz)),
    ("get", "/readyz", || web::get().to(health::readyz)),
    ("get", "/metrics", || web::get().to(health::metrics)),
];

/// Every route herald serves.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/websocket/{user}", web::get().to(websocket::not_upgraded))
        .route("/sse/{user}", web::get().to(sse::stream))
        .route("/sse/{user}/{session}", web::post().to(sse::post))
        .route("/demo", web::get().to(demo::index_redirect))
        .route("/demo/{file:.*}", web::get().to(demo::file));
    let mut paths: Vec<&str> = Vec::new();
    for (_, path, _) in API_ROUTES {
        if !paths.contains(path) {
            paths.push(path);
        }
    }
    for path in paths {
        // One resource per path: a method it does not serve is 405 with `Allow`.
        let mut resource = web::resource(path.replace("{userId}", "{user}"));
        let mut allowed = Vec::new();
        for (method, p, route) in API_ROUTES {
            if *p == path {
                resource = resource.route(route());
                allowed.push(method.to_ascii_uppercase());
            }
        }
        let allow = allowed.join(", ");
        resource = resource.default_service(web::to(move || {
            let allow = allow.clone();
            async move { openapi::method_not_allowed(&allow) }
        }));
        cfg.service(resource);
    }
}

/// A refusal as plain HTTP: the status and a one-line reason.
pub fn plain_refusal(status: u16, reason: &str) -> actix_web::HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
    actix_web::HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(format!("{reason}\n"))
}

/// Access log: method, path without the query string, status, time.
pub fn access_log() -> Logger {
    Logger::new("%a \"%{route}xi\" %s %Dms")
        .custom_request_replace("route", |req| format!("{} {}", req.method(), req.path()))
        .log_target("herald::access")
}
