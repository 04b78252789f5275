//! One conformance suite for every store engine (PROTOCOL.md §5): the same cases against
//! standalone herald keeping messages in memory (the default), standalone `--durable` on
//! disk, and NATS mode `--durable` on JetStream. Each case runs once per engine, against
//! real processes: cursors, exactly-once in-order recovery through reconnects, the device
//! filter on replay, `--max-replay`, retention, foreign and garbage cursors, history
//! paging and 410.

mod common;

use std::time::Duration;

use common::kept::*;
use common::*;
use serde_json::Value;

#[derive(Debug, Clone, Copy)]
enum Engine {
    Memory,
    Disk,
    JetStream,
}

/// A hub keeping messages with `engine`, and what it needs alive.
struct Kept {
    hub: Hub,
    _nats: Option<Nats>,
    _dir: Option<TempDir>,
}

async fn start(engine: Engine, extra: &[&str]) -> Kept {
    match engine {
        Engine::Memory => Kept {
            hub: Hub::secured(extra).await,
            _nats: None,
            _dir: None,
        },
        Engine::Disk => {
            let dir = TempDir::new("store");
            let path = dir.0.to_string_lossy().into_owned();
            let mut args = vec!["--durable", "--data-dir", &path];
            args.extend_from_slice(extra);
            Kept {
                hub: Hub::secured(&args).await,
                _nats: None,
                _dir: Some(dir),
            }
        }
        Engine::JetStream => {
            let nats = Nats::start_js().await;
            let url = nats.url();
            let mut args = vec!["--nats-url", &url, "--durable"];
            args.extend_from_slice(extra);
            Kept {
                hub: Hub::secured(&args).await,
                _nats: Some(nats),
                _dir: None,
            }
        }
    }
}

/// Run a case once per engine, each as its own test.
macro_rules! for_every_engine {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            use super::*;
            #[tokio::test]
            async fn memory() {
                super::$case(Engine::Memory).await
            }
            #[tokio::test]
            async fn disk() {
                super::$case(Engine::Disk).await
            }
            #[tokio::test]
            async fn jetstream() {
                super::$case(Engine::JetStream).await
            }
        }
    )*};
}

for_every_engine!(
    publish_answers_and_frames_carry_one_cursor,
    reconnects_during_a_stream_get_each_message_once_in_order,
    offline_messages_are_replayed_through_the_device_filter,
    max_replay_recovers_whole_or_nothing,
    retention_drops_messages_and_the_cursors_before_them,
    foreign_ahead_and_garbage_cursors_never_recover,
    history_pages_oldest_first,
    receipts_are_kept_beside_their_messages_and_unacked_pages,
    receipts_expire_with_their_messages,
);

async fn publish_answers_and_frames_carry_one_cursor(engine: Engine) {
    let k = start(engine, &[]).await;
    let (mut ws, _) = connect(&url(&k.hub, "u1", "")).await;
    let mut answered = Vec::new();
    for n in 0..3 {
        answered.push(publish(&k.hub, "u1", n, None).await);
    }
    let frames = read_messages(&mut ws, 3).await;
    assert_eq!(ns(&frames), vec![0, 1, 2]);
    let cursors: Vec<String> = frames.iter().map(cursor_of).collect();
    assert_eq!(cursors, answered, "{engine:?}: one cursor per message");
    let parts: Vec<(u64, u64)> = cursors.iter().map(|c| cursor_parts(c)).collect();
    assert!(parts
        .windows(2)
        .all(|w| w[0].0 == w[1].0 && w[0].1 < w[1].1));
}

async fn reconnects_during_a_stream_get_each_message_once_in_order(engine: Engine) {
    const TOTAL: i64 = 200;
    let k = start(engine, &[]).await;
    // The first session is open before the first publish: from then on nothing may be
    // missed, only recovered.
    let (mut ws, _) = connect(&url(&k.hub, "u1", "")).await;
    let base = k.hub.http();
    let publisher = tokio::spawn(async move {
        for n in 0..TOTAL {
            publish_to(&base, "u1", n, None).await;
        }
    });
    let mut got = Vec::new();
    // Read a few, leave, come back from the last cursor: five times, then to the end.
    for round in 0.. {
        let take = if round < 5 { 15 } else { usize::MAX };
        let mut taken = 0;
        let mut cursor = String::new();
        while taken < take && got.last() != Some(&(TOTAL - 1)) {
            let m = next_message(&mut ws).await;
            got.push(n_of(&m));
            cursor = cursor_of(&m);
            taken += 1;
        }
        leave(ws).await;
        if got.last() == Some(&(TOTAL - 1)) {
            break;
        }
        let welcome;
        (ws, welcome) = connect(&url(&k.hub, "u1", &since(&cursor))).await;
        assert_eq!(
            welcome["recovered"], true,
            "{engine:?} round {round}: {welcome}"
        );
    }
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("publisher done")
        .expect("publisher ok");
    assert_eq!(got, (0..TOTAL).collect::<Vec<_>>(), "{engine:?}");
}

async fn offline_messages_are_replayed_through_the_device_filter(engine: Engine) {
    let k = start(engine, &[]).await;
    let c0 = publish(&k.hub, "u1", 0, None).await;
    publish(&k.hub, "u1", 1, None).await;
    publish(&k.hub, "u1", 2, Some("pos")).await;
    publish(&k.hub, "u1", 3, Some("till")).await;
    publish(&k.hub, "u1", 4, None).await;
    publish(&k.hub, "u2", 99, None).await;
    for (device, expected) in [
        ("&device=pos", vec![1, 2, 4]),
        ("&device=till", vec![1, 3, 4]),
        ("", vec![1, 4]),
    ] {
        let (mut ws, welcome) =
            connect(&url(&k.hub, "u1", &format!("{}{device}", since(&c0)))).await;
        assert_recovered(&welcome, expected.len() as u64);
        let replayed = read_messages(&mut ws, expected.len()).await;
        assert_eq!(ns(&replayed), expected, "{engine:?} {device}");
        expect_silence(&mut ws, Duration::from_millis(200)).await;
        leave(ws).await;
    }
}

async fn max_replay_recovers_whole_or_nothing(engine: Engine) {
    let k = start(engine, &["--max-replay", "3"]).await;
    let c0 = publish(&k.hub, "u1", 0, None).await;
    for n in 1..=4 {
        publish(&k.hub, "u1", n, None).await;
    }
    let (mut ws, welcome) = connect(&url(&k.hub, "u1", &since(&c0))).await;
    assert_not_recovered(&welcome);
    expect_silence(&mut ws, Duration::from_millis(200)).await;
    leave(ws).await;
    let c4 = history(&k.hub, "u1", "?limit=3").await;
    let pages = history_messages(&c4);
    let c2 = cursor_of(&pages[2]);
    for n in 5..=6 {
        publish(&k.hub, "u1", n, None).await;
    }
    // After 2: 3, 4, 5, 6 is four; after 3 it is exactly three.
    let (_ws, welcome) = connect(&url(&k.hub, "u1", &since(&c2))).await;
    assert_not_recovered(&welcome);
    let c3 = cursor_of(
        &history_messages(&history(&k.hub, "u1", &format!("?since={c2}&limit=1")).await)[0],
    );
    let (mut ws, welcome) = connect(&url(&k.hub, "u1", &since(&c3))).await;
    assert_recovered(&welcome, 3);
    assert_eq!(
        ns(&read_messages(&mut ws, 3).await),
        vec![4, 5, 6],
        "{engine:?}"
    );
}

async fn retention_drops_messages_and_the_cursors_before_them(engine: Engine) {
    let k = start(engine, &["--retention", "1s"]).await;
    let c0 = publish(&k.hub, "u1", 0, None).await;
    publish(&k.hub, "u1", 1, None).await;
    // Retention has to pass: wait until the store dropped both.
    k.hub
        .wait_json("/api/v1/history/u1", Duration::from_secs(15), |v| {
            v["messages"].as_array().is_some_and(|m| m.is_empty())
        })
        .await;
    let (mut ws, welcome) = connect(&url(&k.hub, "u1", &since(&c0))).await;
    assert_not_recovered(&welcome);
    publish(&k.hub, "u1", 2, None).await;
    assert_eq!(
        n_of(&next_message(&mut ws).await),
        2,
        "{engine:?}: live goes on"
    );
    let (status, body) = get_text(
        &k.hub,
        &format!("/api/v1/history/u1?since={c0}"),
        Some(API_KEY),
    )
    .await;
    assert_eq!(
        status, 410,
        "{engine:?}: history since an expired cursor: {body}"
    );
}

async fn foreign_ahead_and_garbage_cursors_never_recover(engine: Engine) {
    let k = start(engine, &[]).await;
    let c0 = publish(&k.hub, "u1", 0, None).await;
    publish(&k.hub, "u1", 1, None).await;
    let (epoch, seq) = cursor_parts(&c0);
    let foreign = format!("{:x}-{seq}", epoch ^ 1);
    let ahead = format!("{epoch:x}-{}", seq + 1_000);
    for bad in ["abc", "zz-1", "-", "1-", "-1", &foreign, &ahead] {
        let (mut ws, welcome) = connect(&url(&k.hub, "u1", &since(bad))).await;
        assert_not_recovered(&welcome);
        expect_silence(&mut ws, Duration::from_millis(100)).await;
        leave(ws).await;
        let (status, body) = get_text(
            &k.hub,
            &format!("/api/v1/history/u1?since={bad}"),
            Some(API_KEY),
        )
        .await;
        assert_eq!(status, 410, "{engine:?} since={bad}: {body}");
    }
    // The real cursor still resumes.
    let (mut ws, welcome) = connect(&url(&k.hub, "u1", &since(&c0))).await;
    assert_recovered(&welcome, 1);
    assert_eq!(n_of(&next_message(&mut ws).await), 1);
}

async fn history_pages_oldest_first(engine: Engine) {
    let k = start(engine, &["--max-replay", "4"]).await;
    let mut c = Vec::new();
    for n in 0..6 {
        c.push(publish(&k.hub, "u1", n, if n == 3 { Some("pos") } else { None }).await);
    }
    publish(&k.hub, "u2", 100, None).await;
    let h = history(&k.hub, "u1", "").await;
    assert_eq!(
        ns(&history_messages(&h)),
        vec![0, 1, 2, 3],
        "clamped to --max-replay: {h}"
    );
    assert_eq!(h["more"], true, "{h}");
    assert_eq!(h["cursor"], c[3].as_str(), "{h}");
    let h = history(&k.hub, "u1", &format!("?since={}&limit=1", c[3])).await;
    assert_eq!(ns(&history_messages(&h)), vec![4], "{h}");
    assert_eq!(h["more"], true, "{h}");
    let h = history(&k.hub, "u1", &format!("?since={}", c[4])).await;
    assert_eq!(ns(&history_messages(&h)), vec![5], "{h}");
    assert_eq!(h["more"], false, "{h}");
    let h = history(&k.hub, "u1", &format!("?since={}", c[5])).await;
    assert_eq!(history_messages(&h), Vec::<Value>::new(), "{h}");
    assert_eq!(
        h["cursor"],
        c[5].as_str(),
        "nothing new: the given since: {h}"
    );
    let h = history(&k.hub, "u1", &format!("?since={}&device=till", c[1])).await;
    assert_eq!(
        ns(&history_messages(&h)),
        vec![2, 4, 5],
        "device filter: {h}"
    );
    let h = history(&k.hub, "u2", "").await;
    assert_eq!(ns(&history_messages(&h)), vec![100], "per user: {h}");
    let (status, body) = get_text(&k.hub, "/api/v1/history/u1?limit=0", Some(API_KEY)).await;
    assert_eq!(status, 400, "{engine:?}: {body}");
}

async fn ack(ws: &mut Ws, id: &str, status: &str) {
    send_text(
        ws,
        &serde_json::json!({"type": "ack", "id": id, "status": status}).to_string(),
    )
    .await;
}

async fn receipts_are_kept_beside_their_messages_and_unacked_pages(engine: Engine) {
    let k = start(engine, &[]).await;
    let (mut ws, _) = connect(&url(&k.hub, "u1", "&device=pos")).await;
    for n in 1..=4 {
        let (status, v) = k
            .hub
            .publish(serde_json::json!({"user": "u1", "id": format!("o{n}"), "data": {"n": n}}))
            .await;
        assert_eq!(status, 202, "{v}");
    }
    read_messages(&mut ws, 4).await;
    ack(&mut ws, "o1", "printed").await;
    ack(&mut ws, "o2", "received").await;
    ack(&mut ws, "o2", "printed").await;
    ack(&mut ws, "o3", "received").await;
    // Not a kept message: published, not kept, harmless.
    ack(&mut ws, "never-published", "printed").await;
    let h = k
        .hub
        .wait_json("/api/v1/history/u1", WAIT, |v| {
            v["messages"].as_array().is_some_and(|m| {
                m.len() == 4
                    && m[2]["receipts"].as_array().is_some_and(|r| r.len() == 1)
                    && m[1]["receipts"].as_array().is_some_and(|r| r.len() == 2)
            })
        })
        .await;
    assert_eq!(
        history_receipts(&h),
        vec![
            vec!["printed".to_string()],
            vec!["received".into(), "printed".into()],
            vec!["received".into()],
            vec![],
        ],
        "{engine:?}: {h}"
    );
    let r = &h["messages"][0]["receipts"][0];
    assert_eq!(r["device"], "pos", "{r}");
    assert!(
        r["session"].as_str().is_some() && r["at"].as_str().is_some(),
        "{r}"
    );

    let h = history(&k.hub, "u1", "?unacked=printed").await;
    assert_eq!(ns(&history_messages(&h)), vec![3, 4], "{engine:?}: {h}");
    assert_eq!(h["more"], false);
    let h = history(&k.hub, "u1", "?unacked=received&limit=1").await;
    assert_eq!(ns(&history_messages(&h)), vec![1], "{engine:?}: {h}");
    assert_eq!(h["more"], true, "{h}");
    let next = h["cursor"].as_str().expect("cursor").to_string();
    let h = history(&k.hub, "u1", &format!("?unacked=received&since={next}")).await;
    assert_eq!(ns(&history_messages(&h)), vec![4], "{engine:?}: {h}");
    assert_eq!(h["more"], false, "{h}");
    // From another device, nothing was acknowledged.
    let h = history(&k.hub, "u1", "?unacked=printed&device=till").await;
    assert_eq!(
        ns(&history_messages(&h)),
        vec![1, 2, 3, 4],
        "{engine:?}: {h}"
    );
    let (status, body) = get_text(
        &k.hub,
        "/api/v1/history/u1?unacked=NOT-A-STATUS",
        Some(API_KEY),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

async fn receipts_expire_with_their_messages(engine: Engine) {
    let k = start(engine, &["--retention", "1s"]).await;
    let (mut ws, _) = connect(&url(&k.hub, "u1", "")).await;
    let (status, _) = k
        .hub
        .publish(serde_json::json!({"user": "u1", "id": "old", "data": {"n": 1}}))
        .await;
    assert_eq!(status, 202);
    read_messages(&mut ws, 1).await;
    ack(&mut ws, "old", "printed").await;
    k.hub
        .wait_json("/api/v1/history/u1", WAIT, |v| {
            v["messages"][0]["receipts"]
                .as_array()
                .is_some_and(|r| r.len() == 1)
        })
        .await;
    // Retention passes: the message and its receipt go together.
    k.hub
        .wait_json("/api/v1/history/u1", Duration::from_secs(15), |v| {
            v["messages"].as_array().is_some_and(|m| m.is_empty())
        })
        .await;
    let h = history(&k.hub, "u1", "?unacked=printed").await;
    assert_eq!(history_messages(&h), Vec::<Value>::new(), "{engine:?}: {h}");
    // Paging goes on after retention: a new message is unacknowledged.
    let (status, _) = k
        .hub
        .publish(serde_json::json!({"user": "u1", "id": "old-2", "data": {"n": 2}}))
        .await;
    assert_eq!(status, 202);
    let h = history(&k.hub, "u1", "?unacked=printed").await;
    assert_eq!(ns(&history_messages(&h)), vec![2], "{engine:?}: {h}");
    assert_eq!(history_receipts(&h), vec![Vec::<String>::new()]);
}
