//! In-band token refresh over real sockets: `refresh` → `refreshed` moves the session's
//! expiry (no 4003 at the old `exp`), a token that fails (other user, other device,
//! garbage, wrong key, expired) gets `bad_token` and changes nothing, the session's topics
//! become the new token's, refresh frames count against the upstream rate limit, and
//! unsigned mode accepts any token.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Past a 2 s token's `exp` (whole seconds, so up to 1 s early) plus the sweep interval.
const PAST_OLD_EXP: Duration = Duration::from_millis(4_000);

#[tokio::test]
async fn a_refreshed_session_is_not_closed_at_the_old_exp() {
    let hub = Hub::secured(&[]).await;
    let first = token("u1", 2, None);
    let (mut ws, _) = connect(&hub.ws_url("u1", &format!("token={first}"))).await;
    let fresh = token("u1", 60, None);
    let answer = refresh(&mut ws, &fresh).await;
    assert_eq!(answer["type"], "refreshed", "{answer}");
    assert_eq!(answer["exp"].as_u64(), Some(token_exp(&fresh)), "{answer}");
    assert!(answer.get("unsubscribed").is_none(), "{answer}");
    // The scenario: wait until well past the first token's exp. A close (4003) or any
    // frame fails here.
    expect_silence(&mut ws, PAST_OLD_EXP).await;
    assert_alive(&mut ws).await;
    // Still delivered to.
    let (status, _) = hub
        .publish(json!({"user": "u1", "data": "still here"}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(next_json(&mut ws).await["data"], "still here");
}

#[tokio::test]
async fn a_token_of_another_user_is_refused_and_the_old_exp_still_applies() {
    let hub = Hub::secured(&[]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", &format!("token={}", token("u1", 2, None)))).await;
    let answer = refresh(&mut ws, &token("u2", 60, None)).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "bad_token", "{answer}");
    assert_alive(&mut ws).await;
    assert_eq!(expect_close(&mut ws, Duration::from_secs(6)).await, 4003);
}

#[tokio::test]
async fn a_token_for_another_device_is_refused() {
    let hub = Hub::secured(&[]).await;
    // The device comes from the token's claim.
    let (mut ws, _) =
        connect(&hub.ws_url("u1", &format!("token={}", token("u1", 60, Some("d1"))))).await;
    let answer = refresh(&mut ws, &token("u1", 60, Some("d2"))).await;
    assert_eq!(answer["code"], "bad_token", "{answer}");
    let answer = refresh(&mut ws, &token("u1", 90, Some("d1"))).await;
    assert_eq!(answer["type"], "refreshed", "{answer}");
    // A token without a device claim is valid for any device of the user, as at the
    // handshake with device= (docs/protocol.md §1).
    let unbound = token("u1", 120, None);
    let answer = refresh(&mut ws, &unbound).await;
    assert_eq!(
        answer["exp"].as_u64(),
        Some(token_exp(&unbound)),
        "{answer}"
    );

    // The device comes from device=: the same rule.
    let (mut ws, _) =
        connect(&hub.ws_url("u1", &format!("device=d3&token={}", token("u1", 60, None)))).await;
    let answer = refresh(&mut ws, &token("u1", 60, Some("d1"))).await;
    assert_eq!(answer["code"], "bad_token", "{answer}");
    let answer = refresh(&mut ws, &token("u1", 60, Some("d3"))).await;
    assert_eq!(answer["type"], "refreshed", "{answer}");

    // A session without a device cannot take one on.
    let (mut ws, _) = connect(&hub.ws_url("u2", &format!("token={}", token("u2", 60, None)))).await;
    let answer = refresh(&mut ws, &token("u2", 60, Some("d1"))).await;
    assert_eq!(answer["code"], "bad_token", "{answer}");
    assert_alive(&mut ws).await;
}

#[tokio::test]
async fn garbage_forged_and_expired_tokens_are_refused() {
    let hub = Hub::secured(&[]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", &format!("token={}", token("u1", 60, None)))).await;
    for bad in [
        "garbage".to_string(),
        String::new(),
        "a.b.c".to_string(),
        token_with("another-secret", "u1", 60, None, None),
        token("u1", -5, None),
    ] {
        let answer = refresh(&mut ws, &bad).await;
        assert_eq!(answer["type"], "error", "{bad}: {answer}");
        assert_eq!(answer["code"], "bad_token", "{bad}: {answer}");
        assert!(!answer.to_string().contains(&bad) || bad.is_empty());
    }
    // A refresh frame without a token is a bad frame, not a bad token.
    send_text(&mut ws, r#"{"type":"refresh"}"#).await;
    assert_eq!(next_json(&mut ws).await["code"], "bad_frame");
    assert_alive(&mut ws).await;
}

#[tokio::test]
async fn topics_become_the_new_tokens() {
    let hub = Hub::secured(&[]).await;
    let old = token_with(SECRET, "u1", 60, None, Some(vec!["t1"]));
    let (mut ws, _) = connect(&hub.ws_url("u1", &format!("token={old}"))).await;
    send_text(&mut ws, r#"{"type":"subscribe","topic":"t1"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    let (status, _) = hub.publish(json!({"topic": "t1", "data": 1})).await;
    assert_eq!(status, 202);
    assert_eq!(next_json(&mut ws).await["data"], 1);

    let new = token_with(SECRET, "u1", 60, None, Some(vec!["t2"]));
    let answer = refresh(&mut ws, &new).await;
    assert_eq!(answer["type"], "refreshed", "{answer}");
    assert_eq!(answer["unsubscribed"], json!(["t1"]), "{answer}");
    hub.publish(json!({"topic": "t1", "data": 2})).await;
    expect_silence(&mut ws, Duration::from_millis(500)).await;
    // The Registry's bookkeeping followed: no local follower of t1 is left.
    assert_eq!(hub.metric("herald_topics").await, 0.0);
    assert_eq!(hub.metric("herald_topic_subscriptions").await, 0.0);

    send_text(&mut ws, r#"{"type":"subscribe","topic":"t1"}"#).await;
    assert_eq!(next_json(&mut ws).await["code"], "forbidden");
    send_text(&mut ws, r#"{"type":"subscribe","topic":"t2"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    hub.publish(json!({"topic": "t2", "data": 3})).await;
    let m = next_json(&mut ws).await;
    assert_eq!(
        (m["topic"].as_str(), m["data"].as_i64()),
        (Some("t2"), Some(3))
    );
    assert_eq!(hub.metric("herald_topics").await, 1.0);
    assert_eq!(hub.metric("herald_topic_subscriptions").await, 1.0);
}

#[tokio::test]
async fn refresh_frames_count_against_the_upstream_rate_limit() {
    let hub = Hub::secured(&["--upstream-rate", "1"]).await;
    let (mut ws, _) = connect(&hub.ws_url("u1", &format!("token={}", token("u1", 60, None)))).await;
    let fresh = token("u1", 60, None);
    let frame = json!({"type": "refresh", "token": fresh}).to_string();
    // A burst of twice the rate passes; the third frame is refused.
    for _ in 0..3 {
        send_text(&mut ws, &frame).await;
    }
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let f = next_json(&mut ws).await;
        kinds.push(format!("{}:{}", f["type"], f["code"]));
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            r#""error":"rate_limited""#,
            r#""refreshed":null"#,
            r#""refreshed":null"#
        ],
    );
}

#[tokio::test]
async fn unsigned_mode_accepts_any_token_and_keeps_the_session_as_it_is() {
    let hub = Hub::start(&[]).await;
    let (mut ws, _) = connect(&hub.ws_url("anyone", "")).await;
    let answer = refresh(&mut ws, "garbage").await;
    assert_eq!(answer, json!({"type": "refreshed"}));
    // A token with an exp: reported (unverified), so clients schedule as usual.
    let t = token("someone-else", 60, Some("d9"));
    let answer = refresh(&mut ws, &t).await;
    assert_eq!(answer["exp"].as_u64(), Some(token_exp(&t)), "{answer}");
    // Still no expiry and every topic allowed.
    send_text(&mut ws, r#"{"type":"subscribe","topic":"any.thing"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
}
