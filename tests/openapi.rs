//! docs/openapi.json against the API itself: the document's operations are exactly the
//! route table's, the hub serves the document as it is in the repository, and every
//! operation it lists is answered on a live hub (none is a 404 or 405 there).

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

fn document() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("docs/openapi.json")).expect("JSON")
}

fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            ops.insert((method.clone(), path.clone()));
        }
    }
    ops
}

#[test]
fn the_document_lists_exactly_the_routes_herald_serves() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let table: BTreeSet<(String, String)> = herald::http::API_ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(operations(&doc), table);
    // Every operation says what its errors look like, and every $ref resolves.
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap_or_default();
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "unresolved $ref {name}"
        );
    }
}

#[tokio::test]
async fn the_hub_serves_the_document_and_answers_every_operation_in_it() {
    let hub = Hub::secured(&[]).await;
    let (status, served) = hub.get_json("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(served, document());
    let anonymous = reqwest::get(format!("{}/api/v1/openapi.json", hub.http()))
        .await
        .expect("request");
    assert_eq!(anonymous.status(), 401, "/api/v1/* needs the API key");

    let doc = document();
    let client = reqwest::Client::new();
    for (method, path) in operations(&doc) {
        let url = format!("{}{}", hub.http(), path.replace("{userId}", "u1"));
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let r = client
            .request(m, &url)
            .bearer_auth(API_KEY)
            .body("{}")
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let documented = &doc["paths"][&path][&method]["responses"];
        assert!(
            documented.get(status.to_string()).is_some(),
            "{method} {path}: {status} is not among the documented answers"
        );
    }
    // A method a route does not serve is 405 with Allow, as JSON.
    let r = client
        .put(format!("{}/api/v1/publish", hub.http()))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    let body: Value = r.json().await.expect("JSON error");
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn a_pod_with_a_lower_max_await_documents_and_enforces_it() {
    let hub = Hub::secured(&["--max-await", "100ms"]).await;
    let (status, served) = hub.get_json("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(
        served["components"]["schemas"]["Await"]["properties"]["timeout_ms"]["maximum"],
        100
    );
    let publish = |ms: u64| {
        hub.publish(serde_json::json!({"user": "u1", "data": 1, "await": {"timeout_ms": ms}}))
    };
    let (status, body) = publish(101).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("1 to 100"),
        "{body}"
    );
    // Within the limit it waits and answers 202 without a receipt; no timeout waits at most it.
    let (status, body) = publish(100).await;
    assert_eq!(status, 202, "{body}");
    let started = std::time::Instant::now();
    let (status, body) = hub
        .publish(serde_json::json!({"user": "u1", "data": 1, "await": {}}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the default wait is capped by --max-await"
    );
}
