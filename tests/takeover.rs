//! Same user and device replace each other (4001); more than 3 takeovers in 10 s → 429;
//! per-user (429) and per-pod (503) limits.

mod common;

use common::*;

#[tokio::test]
async fn a_new_session_of_the_same_device_replaces_the_old_one() {
    let hub = Hub::secured(&[]).await;
    let url = hub.ws_url(
        "u1",
        &format!("token={}&device=tablet", token("u1", 60, None)),
    );
    let (mut old, _) = connect(&url).await;
    let (mut new, _) = connect(&url).await;
    assert_eq!(expect_close(&mut old, WAIT).await, 4001);
    hub.publish(serde_json::json!({"user": "u1", "data": 1}))
        .await;
    assert_eq!(next_json(&mut new).await["data"], 1);
    let p = hub
        .wait_json("/api/v1/presence/u1", WAIT, |v| v["sessions"] == 1)
        .await;
    assert_eq!(p["online"], true);
}

#[tokio::test]
async fn a_device_from_the_token_claim_counts_for_takeover() {
    let hub = Hub::secured(&[]).await;
    let url = hub.ws_url("u1", &format!("token={}", token("u1", 60, Some("kiosk"))));
    let (mut old, _) = connect(&url).await;
    let (_new, _) = connect(&url).await;
    assert_eq!(expect_close(&mut old, WAIT).await, 4001);
}

#[tokio::test]
async fn more_than_three_takeovers_in_ten_seconds_get_429() {
    let hub = Hub::secured(&[]).await;
    let url = hub.ws_url("u1", &format!("token={}&device=d1", token("u1", 60, None)));
    let mut sessions = vec![connect(&url).await.0];
    for _ in 0..3 {
        sessions.push(connect(&url).await.0);
    }
    let r = try_connect(&url, &[])
        .await
        .expect_err("fourth takeover refused");
    assert_eq!(r.status, 429);
    assert!(r.body.contains("takeover"), "{}", r.body);
    // Another device of the same user is not affected.
    let other = hub.ws_url("u1", &format!("token={}&device=d2", token("u1", 60, None)));
    assert!(try_connect(&other, &[]).await.is_ok());
}

#[tokio::test]
async fn per_user_limit_is_429_and_per_pod_limit_is_503() {
    let hub = Hub::start(&["--max-sessions-per-user", "2", "--max-connections", "3"]).await;
    let _a1 = connect(&hub.ws_url("a", "")).await;
    let _a2 = connect(&hub.ws_url("a", "")).await;
    let r = try_connect(&hub.ws_url("a", ""), &[])
        .await
        .expect_err("third tab refused");
    assert_eq!(r.status, 429);
    let _b = connect(&hub.ws_url("b", "")).await;
    let r = try_connect(&hub.ws_url("c", ""), &[])
        .await
        .expect_err("pod full");
    assert_eq!(r.status, 503);
    assert!(r.body.contains("connection limit"), "{}", r.body);
}
