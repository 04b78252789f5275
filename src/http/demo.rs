//! The demo console at /demo: static files embedded in the binary, plus the browser client
//! library at /demo/herald.js, so the demo needs no build step and no files on disk.

use actix_web::{web, HttpResponse};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "demo/"]
struct DemoFiles;

/// The browser client, the same file web teams embed.
const CLIENT_JS: &str = include_str!("../../clients/js/herald.js");

pub async fn index_redirect(req: actix_web::HttpRequest) -> HttpResponse {
    let q = req.query_string();
    let location = if q.is_empty() {
        "/demo/".to_string()
    } else {
        format!("/demo/?{q}")
    };
    HttpResponse::Found()
        .insert_header(("Location", location))
        .finish()
}

pub async fn file(path: web::Path<String>) -> HttpResponse {
    let name = path.into_inner();
    let name = if name.is_empty() {
        "index.html".to_string()
    } else {
        name
    };
    let content = if name == "herald.js" {
        Some(CLIENT_JS.as_bytes().to_vec())
    } else {
        DemoFiles::get(&name).map(|f| f.data.into_owned())
    };
    match content {
        Some(bytes) => HttpResponse::Ok()
            .content_type(content_type(&name))
            .insert_header(("Cache-Control", "no-cache"))
            .body(bytes),
        None => HttpResponse::NotFound()
            .content_type("text/plain")
            .body("not found\n"),
    }
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}
