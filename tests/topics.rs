//! Topics: subscribe/unsubscribe checked against the token's `topics` patterns, delivery
//! to followers only (standalone and across pods over NATS), limits, and interest that
//! follows the followers on the NATS server.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn url_with_topics(hub: &Hub, user: &str, topics: Vec<&str>) -> String {
    hub.ws_url(
        user,
        &format!("token={}", token_with(SECRET, user, 60, None, Some(topics))),
    )
}

async fn subscribe(ws: &mut Ws, topic: &str) -> serde_json::Value {
    send_text(
        ws,
        &json!({"type": "subscribe", "topic": topic}).to_string(),
    )
    .await;
    next_json(ws).await
}

#[tokio::test]
async fn followers_get_topic_messages_and_others_do_not() {
    let hub = Hub::secured(&[]).await;
    let (mut cashier1, _) = connect(&url_with_topics(&hub, "c1", vec!["orders.*"])).await;
    let (mut cashier2, _) = connect(&url_with_topics(&hub, "c2", vec!["orders.>"])).await;
    let (mut outsider, _) = connect(&url_with_topics(&hub, "c3", vec!["orders.*"])).await;
    for ws in [&mut cashier1, &mut cashier2] {
        assert_eq!(
            subscribe(ws, "orders.store-42").await,
            json!({"type": "subscribed", "topic": "orders.store-42"})
        );
    }
    let (status, _) = hub
        .publish(json!({"topic": "orders.store-42", "event": "order", "data": {"id": 7}}))
        .await;
    assert_eq!(status, 202);
    for ws in [&mut cashier1, &mut cashier2] {
        let m = next_json(ws).await;
        assert_eq!(m["source"], "topic");
        assert_eq!(m["topic"], "orders.store-42");
        assert_eq!(m["event"], "order");
        assert_eq!(m["data"], json!({"id": 7}));
    }
    expect_silence(&mut outsider, Duration::from_millis(300)).await;
    let (_, stats) = hub.get_json("/api/v1/stats").await;
    assert_eq!(stats["topics"], 1);
    assert_eq!(hub.metric("herald_topic_subscriptions").await, 2.0);
}

#[tokio::test]
async fn subscriptions_outside_the_token_patterns_bad_names_and_too_many_are_refused() {
    let hub = Hub::secured(&[]).await;
    let (mut ws, _) = connect(&url_with_topics(&hub, "u1", vec!["orders.*", "flash.>"])).await;
    let e = subscribe(&mut ws, "payments.store-1").await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    let e = subscribe(&mut ws, "orders.a.b").await;
    assert_eq!(e["code"], "forbidden", "`*` matches one token only");
    let e = subscribe(&mut ws, "orders..x").await;
    assert_eq!(e["code"], "bad_topic");
    let e = subscribe(&mut ws, "orders.*").await;
    assert_eq!(e["code"], "bad_topic", "wildcards are patterns, not topics");
    assert_eq!(
        subscribe(&mut ws, "flash.sale.42").await["type"],
        "subscribed"
    );
    // A token without a topics claim may follow nothing.
    let (mut plain, _) =
        connect(&hub.ws_url("u2", &format!("token={}", token("u2", 60, None)))).await;
    assert_eq!(subscribe(&mut plain, "orders.x").await["code"], "forbidden");
}

#[tokio::test]
async fn a_session_follows_at_most_128_topics() {
    let hub = Hub::start(&["--upstream-rate", "1000"]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", "")).await;
    for i in 0..128 {
        assert_eq!(
            subscribe(&mut ws, &format!("t.{i}")).await["type"],
            "subscribed",
            "topic {i}"
        );
    }
    assert_eq!(
        subscribe(&mut ws, "t.extra").await["code"],
        "too_many_topics"
    );
    // Re-subscribing to a followed topic is not an extra one.
    assert_eq!(subscribe(&mut ws, "t.5").await["type"], "subscribed");
}

#[tokio::test]
async fn unsubscribe_stops_delivery_at_once() {
    let hub = Hub::start(&[]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", "")).await;
    assert_eq!(subscribe(&mut ws, "dash").await["type"], "subscribed");
    hub.publish(json!({"topic": "dash", "data": 1})).await;
    assert_eq!(next_json(&mut ws).await["data"], 1);
    send_text(&mut ws, r#"{"type":"unsubscribe","topic":"dash"}"#).await;
    // Prove the unsubscribe was processed: a ping after it is answered after it.
    send_text(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    hub.publish(json!({"topic": "dash", "data": 2})).await;
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    assert_eq!(hub.metric("herald_topics").await, 0.0);
}

#[tokio::test]
async fn topic_interest_follows_followers_across_pods() {
    let nats = Nats::start().await;
    let a = Hub::start(&["--nats-url", &nats.url(), "--pod-name", "pod-a"]).await;
    let b = Hub::start(&["--nats-url", &nats.url(), "--pod-name", "pod-b"]).await;
    let (mut on_a, _) = connect(&a.ws_url("u1", "")).await;
    let (mut on_b, _) = connect(&b.ws_url("u2", "")).await;
    let (mut idle_b, _) = connect(&b.ws_url("u3", "")).await;
    assert_eq!(
        subscribe(&mut on_a, "sale.countdown").await["type"],
        "subscribed"
    );
    // `subscribed` means the interest is on the server already.
    assert!(nats
        .subs_of("pod-a")
        .await
        .contains(&"herald.topic.sale.countdown".to_string()));
    assert!(!nats
        .subs_of("pod-b")
        .await
        .iter()
        .any(|s| s.starts_with("herald.topic.")));
    assert_eq!(
        subscribe(&mut on_b, "sale.countdown").await["type"],
        "subscribed"
    );
    let id = herald_cli(&[
        "publish",
        "--nats-url",
        &nats.url(),
        "--topic",
        "sale.countdown",
        "10",
    ])
    .await;
    for ws in [&mut on_a, &mut on_b] {
        let m = next_json(ws).await;
        assert_eq!(m["topic"], "sale.countdown");
        assert_eq!(m["data"], 10);
        assert_eq!(m["id"], id, "one message id on every pod");
    }
    expect_silence(&mut idle_b, Duration::from_millis(300)).await;
    // The session's topics leave with it: no leaked interest.
    on_b.close(None).await.unwrap();
    nats.wait_subs("pod-b", |s| {
        !s.iter().any(|x| x.starts_with("herald.topic."))
    })
    .await;
    // And an unsubscribe drops it too.
    send_text(
        &mut on_a,
        r#"{"type":"unsubscribe","topic":"sale.countdown"}"#,
    )
    .await;
    nats.wait_subs("pod-a", |s| {
        !s.iter().any(|x| x.starts_with("herald.topic."))
    })
    .await;
}
