//! What the tests of kept messages share, whatever the store engine (JetStream, disk,
//! memory): connect URLs with a token, publishing with a cursor in the answer, reading
//! message frames, history requests and the welcome's recovery fields.

use std::time::Duration;

use serde_json::{json, Value};

use super::*;

pub fn url(hub: &Hub, user: &str, extra: &str) -> String {
    hub.ws_url(user, &format!("token={}{extra}", token(user, 60, None)))
}

pub fn since(cursor: &str) -> String {
    format!("&since={cursor}")
}

/// POST `body` to the hub's publish API with the test key, answered within `within`: the
/// status and the answer.
pub async fn post_publish(base: &str, body: &Value, within: Duration) -> (u16, Value) {
    let r = tokio::time::timeout(
        within,
        reqwest::Client::new()
            .post(format!("{base}/api/v1/publish"))
            .bearer_auth(API_KEY)
            .json(body)
            .send(),
    )
    .await
    .expect("publish answered in time")
    .expect("publish request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// HTTP publish of `{"n": n}` to `user` (optionally for one device) on the hub at `base`;
/// returns the answer's cursor.
pub async fn publish_to(base: &str, user: &str, n: i64, device: Option<&str>) -> String {
    let mut body = json!({"user": user, "data": {"n": n}});
    if let Some(d) = device {
        body["device"] = json!(d);
    }
    let (status, v) = post_publish(base, &body, WAIT).await;
    assert_eq!(status, 202, "publish {body}: {v}");
    let cursor = v["cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("durable publish answer without a cursor: {v}"))
        .to_string();
    cursor_parts(&cursor);
    cursor
}

pub async fn publish(hub: &Hub, user: &str, n: i64, device: Option<&str>) -> String {
    publish_to(&hub.http(), user, n, device).await
}

pub async fn next_message(ws: &mut Ws) -> Value {
    let m = next_json(ws).await;
    assert_eq!(m["type"], "message", "expected a message frame: {m}");
    m
}

pub async fn read_messages(ws: &mut Ws, count: usize) -> Vec<Value> {
    let mut out = Vec::new();
    for _ in 0..count {
        out.push(next_message(ws).await);
    }
    out
}

pub fn n_of(m: &Value) -> i64 {
    m["data"]["n"]
        .as_i64()
        .unwrap_or_else(|| panic!("message without data.n: {m}"))
}

pub fn ns(frames: &[Value]) -> Vec<i64> {
    frames.iter().map(n_of).collect()
}

pub fn cursor_of(m: &Value) -> String {
    m["cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("message without a cursor: {m}"))
        .to_string()
}

pub fn assert_recovered(welcome: &Value, replayed: u64) {
    assert_eq!(welcome["recovered"], true, "welcome: {welcome}");
    assert_eq!(welcome["replayed"], replayed, "welcome: {welcome}");
}

pub fn assert_not_recovered(welcome: &Value) {
    assert_eq!(welcome["recovered"], false, "welcome: {welcome}");
    assert_eq!(welcome["replayed"], 0, "welcome: {welcome}");
}

pub async fn leave(mut ws: Ws) {
    let _ = ws.close(None).await;
    let _ = close_code_or_gone(&mut ws, WAIT).await;
}

/// GET with the API key (or `key`), returning the status and the body as text.
pub async fn get_text(hub: &Hub, path: &str, key: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(format!("{}{path}", hub.http()));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("GET answered in time")
        .expect("GET request");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

pub async fn history(hub: &Hub, user: &str, query: &str) -> Value {
    let path = format!("/api/v1/history/{user}{query}");
    let (status, body) = get_text(hub, &path, Some(API_KEY)).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

pub fn history_messages(h: &Value) -> Vec<Value> {
    // Every history message carries its receipts; without them it is the frame sent live.
    h["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("history without messages: {h}"))
        .iter()
        .map(|m| {
            let mut m = m.clone();
            let receipts = m
                .as_object_mut()
                .and_then(|o| o.remove("receipts"))
                .unwrap_or_else(|| panic!("history message without receipts: {m}"));
            assert!(receipts.is_array(), "receipts: {receipts}");
            m
        })
        .collect()
}

/// The statuses of each history message's receipts, in order.
pub fn history_receipts(h: &Value) -> Vec<Vec<String>> {
    h["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("history without messages: {h}"))
        .iter()
        .map(|m| {
            m["receipts"]
                .as_array()
                .unwrap_or_else(|| panic!("history message without receipts: {m}"))
                .iter()
                .map(|r| r["status"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .collect()
}
