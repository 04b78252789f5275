//! Durable mode (PROTOCOL.md §5, §6) against a single nats-server with JetStream: cursors
//! on every user frame and in publish answers, recovery with `since=` on any pod and any
//! device of the user, messages kept while the user was offline, the cases that must not
//! recover (expired, foreign epoch, garbage, over `--max-replay`), the device filter on
//! replay, the history API, start-up without JetStream, and a publish storm through
//! reconnects and a killed pod.

mod common;

use std::time::Duration;

use common::kept::*;
use common::*;
use serde_json::{json, Value};

const STREAM: &str = "HERALD";

async fn pod(nats: &Nats, name: &str, extra: &[&str]) -> Hub {
    let nats_url = nats.url();
    let mut args = vec!["--nats-url", &nats_url, "--pod-name", name, "--durable"];
    args.extend_from_slice(extra);
    Hub::secured(&args).await
}

/// The durable stream's creation time in ns, `None` while it does not exist.
async fn stream_created(js: &async_nats::jetstream::Context) -> Option<i128> {
    let mut s = js.get_stream(STREAM).await.ok()?;
    let info = s.info().await.ok()?;
    Some(info.created.unix_timestamp_nanos())
}

// 1 -------------------------------------------------------------------------------------

#[tokio::test]
async fn every_user_frame_carries_the_cursor_its_publisher_was_given() {
    let nats = Nats::start_js().await;
    let a = pod(&nats, "pod-a", &[]).await;
    let (mut ws, _) = connect(&url(&a, "u1", "")).await;

    // HTTP publish answers id and cursor; the frame carries the same strings.
    let (status, answer) = a
        .publish(json!({"user": "u1", "event": "order", "data": {"n": 0}}))
        .await;
    assert_eq!(status, 202, "{answer}");
    let c0 = answer["cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("no cursor in the durable publish answer: {answer}"))
        .to_string();
    let (epoch, seq0) = cursor_parts(&c0);
    let m = next_message(&mut ws).await;
    assert_eq!(m["cursor"], c0.as_str(), "{m}");
    assert_eq!(m["id"], answer["id"], "{m}");
    assert_eq!(m["source"], "user");
    assert_eq!(m["event"], "order");
    assert_eq!(m["data"], json!({"n": 0}));

    // herald publish --durable prints the id, then the cursor.
    let out = herald_cli(&[
        "publish",
        "--durable",
        "--nats-url",
        &nats.url(),
        "--user",
        "u1",
        "--event",
        "cli",
        r#"{"n":1}"#,
    ])
    .await;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines.len(), 2, "herald publish --durable printed: {out:?}");
    let m = next_message(&mut ws).await;
    assert_eq!(n_of(&m), 1);
    assert_eq!(m["id"], lines[0], "{m}");
    assert_eq!(m["cursor"], lines[1], "{m}");
    let (e1, seq1) = cursor_parts(lines[1]);
    assert_eq!(e1, epoch);
    assert!(seq1 > seq0, "{c0} then {}", lines[1]);

    // A service's own JetStream publish: the cursor names the stored sequence.
    let js = nats.js().await;
    let ack = js
        .publish("herald.user.u1", r#"{"n":2}"#.into())
        .await
        .expect("JetStream publish")
        .await
        .expect("JetStream ack");
    let m = next_message(&mut ws).await;
    assert_eq!(n_of(&m), 2);
    assert_eq!(cursor_parts(&cursor_of(&m)), (epoch, ack.sequence), "{m}");

    // A plain NATS publish is kept (and gets a cursor) too.
    let client = nats.client().await;
    client
        .publish("herald.user.u1", r#"{"n":3}"#.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let m = next_message(&mut ws).await;
    assert_eq!(n_of(&m), 3);
    let (e3, seq3) = cursor_parts(&cursor_of(&m));
    assert_eq!(e3, epoch);
    assert!(seq3 > ack.sequence);

    // Broadcasts are not kept, but the frame still carries a cursor field.
    let (status, _) = a.publish(json!({"broadcast": true, "data": "all"})).await;
    assert_eq!(status, 202);
    let m = next_message(&mut ws).await;
    assert_eq!(m["data"], "all");
    assert!(
        m["cursor"].is_string(),
        "broadcast frame without a cursor: {m}"
    );
    expect_silence(&mut ws, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_message_published_twice_with_one_id_is_kept_and_delivered_once() {
    let nats = Nats::start_js().await;
    let a = pod(&nats, "pod-a", &[]).await;
    let (mut ws, _) = connect(&url(&a, "u1", "")).await;
    let body = json!({"user": "u1", "id": "order-17", "data": {"n": 0}});
    let (s1, first) = a.publish(body.clone()).await;
    let (s2, second) = a.publish(body).await;
    assert_eq!((s1, s2), (202, 202), "{first} {second}");
    assert_eq!(first["id"], "order-17");
    assert_eq!(
        first["cursor"], second["cursor"],
        "a retry names the message already kept"
    );
    let m = next_message(&mut ws).await;
    assert_eq!(m["id"], "order-17");
    assert_eq!(m["cursor"], first["cursor"]);
    publish(&a, "u1", 1, None).await;
    assert_eq!(
        n_of(&next_message(&mut ws).await),
        1,
        "the repeat was not delivered"
    );
    let h = history(&a, "u1", "").await;
    assert_eq!(ns(&history_messages(&h)), vec![0, 1], "kept once: {h}");
}

// 2 -------------------------------------------------------------------------------------

#[tokio::test]
async fn a_reconnect_on_another_pod_gets_exactly_what_it_missed_before_live_messages() {
    let nats = Nats::start_js().await;
    let a = pod(&nats, "pod-a", &[]).await;
    let b = pod(&nats, "pod-b", &[]).await;
    let (mut ws, _) = connect(&url(&a, "u1", "")).await;
    let mut cursors = Vec::new();
    for n in 0..3 {
        cursors.push(publish(&a, "u1", n, None).await);
    }
    let seen = read_messages(&mut ws, 3).await;
    assert_eq!(ns(&seen), vec![0, 1, 2]);
    let seen_cursors: Vec<String> = seen.iter().map(cursor_of).collect();
    assert_eq!(
        seen_cursors, cursors,
        "live frames carry the publish answers' cursors"
    );
    leave(ws).await;

    // Missed while away.
    for n in 3..6 {
        cursors.push(publish(&b, "u1", n, None).await);
    }
    // Live traffic keeps coming while the client reconnects to the other pod.
    let base = a.http();
    let live = tokio::spawn(async move {
        for n in 6..20 {
            publish_to(&base, "u1", n, None).await;
            // A steady trickle, so some land during the handshake and replay.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let (mut ws, welcome) = connect(&url(&b, "u1", &since(&cursors[2]))).await;
    assert_eq!(welcome["recovered"], true, "{welcome}");
    let replayed = welcome["replayed"].as_u64().expect("replayed count");
    assert!(replayed >= 3, "{welcome}");
    let mut got = Vec::new();
    while got.last().map(n_of) != Some(19) {
        got.push(next_message(&mut ws).await);
        assert!(got.len() <= 17, "more frames than messages: {:?}", ns(&got));
    }
    assert_eq!(ns(&got), (3..20).collect::<Vec<_>>(), "in order, each once");
    let replayed_cursors: Vec<String> = got[..3].iter().map(cursor_of).collect();
    assert_eq!(
        replayed_cursors,
        cursors[3..6],
        "a replayed frame has the message's cursor"
    );
    tokio::time::timeout(WAIT, live).await.unwrap().unwrap();
    expect_silence(&mut ws, Duration::from_millis(300)).await;
}

// 3 -------------------------------------------------------------------------------------

#[tokio::test]
async fn another_device_resumes_from_the_first_devices_cursor() {
    let nats = Nats::start_js().await;
    let a = pod(&nats, "pod-a", &[]).await;
    let b = pod(&nats, "pod-b", &[]).await;
    let (mut d1, _) = connect(&url(&a, "u1", "&device=d1")).await;
    let c0 = publish(&a, "u1", 0, None).await;
    publish(&a, "u1", 1, None).await;
    publish(&a, "u1", 2, Some("d1")).await;
    publish(&a, "u1", 3, None).await;
    let seen = read_messages(&mut d1, 4).await;
    assert_eq!(ns(&seen), vec![0, 1, 2, 3]);
    assert_eq!(cursor_of(&seen[0]), c0);

    // The phone picks up where the laptop's first message was: d1's own message is not
    // for it.
    let (mut d2, welcome) = connect(&url(&b, "u1", &format!("&device=d2{}", since(&c0)))).await;
    assert_recovered(&welcome, 2);
    let replayed = read_messages(&mut d2, 2).await;
    assert_eq!(ns(&replayed), vec![1, 3]);
    assert_eq!(replayed[0], seen[1], "the same frame, cursor included");
    assert_eq!(replayed[1], seen[3]);
    // And both get live traffic afterwards.
    publish(&b, "u1", 4, None).await;
    assert_eq!(n_of(&next_message(&mut d2).await), 4);
    assert_eq!(n_of(&next_message(&mut d1).await), 4);
    expect_silence(&mut d2, Duration::from_millis(200)).await;
}

// 4 -------------------------------------------------------------------------------------

#[tokio::test]
async fn messages_sent_while_the_user_had_no_session_are_replayed() {
    let nats = Nats::start_js().await;
    let a = pod(&nats, "pod-a", &[]).await;
    let (mut ws, _) = connect(&url(&a, "u1", "")).await;
    publish(&a, "u1", 0, None).await;
    let c0 = cursor_of(&next_message(&mut ws).await);
    leave(ws).await;
    a.wait_json("/api/v1/presence/u1", WAIT, |v| v["online"] == false)
        .await;
    let mut cursors = Vec::new();
    for n in 1..5 {
        cursors.push(publish(&a, "u1", n, None).await);
    }
    let (mut ws, welcome) = connect(&url(&a, "u1", &since(&c0))).await;
    assert_recovered(&welcome, 4);
    let got = read_messages(&mut ws, 4).await;
    assert_eq!(ns(&got), vec![1, 2, 3, 4]);
    assert_eq!(got.iter().map(cursor_of).collect::<Vec<_>>(), cursors);
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    // Resuming from the newest cursor: nothing missed, and that is a recovery too.
    leave(ws).await;
    let (mut ws, welcome) = connect(&url(&a, "u1", &since(&cursors[3]))).await;
    assert_recovered(&welcome, 0);
    publish(&a, "u1", 5, None).await;
    assert_eq!(n_of(&next_message(&mut ws).await), 5);
}

// 5 -------------------------------------------------------------------------------------

#[tokio::test]
async fn a_cursor_whose_successor_expired_does_not_recover() {
    let nats = Nats::start_js().await;
    let a = pod(&nats, "pod-a", &["--retention", "1s"]).await;
    let c0 = publish(&a, "u1", 0, None).await;
    publish(&a, "u1", 1, None).await;
    // Retention has to pass (max_age 1 s): wait until the stream dropped both.
    a.wait_json("/api/v1/history/u1", Duration::from_secs(15), |v| {
        v["messages"].as_array().is_some_and(|m| m.is_empty())
    })
    .await;
    let (mut ws, welcome) = connect(&url(&a, "u1", &since(&c0))).await;
    assert_not_recovered(&welcome);
    publish(&a, "u1", 2, None).await;
    assert_eq!(n_of(&next_message(&mut ws).await), 2, "only live traffic");
    let (status, body) =
        get_text(&a, &format!("/api/v1/history/u1?since={c0}"), Some(API_KEY)).await;
    assert_eq!(status, 410, "history since an expired cursor: {body}");
}

/// The same refusal without waiting for retention: the kept messages are dropped by a
/// purge, which moves the stream's first sequence exactly as max_age does.
#[tokio::test]
async fn a_cursor_whose_successor_was_dropped_does_not_recover() {
    let nats = Nats::start_js().await;
    let a = pod(&nats, "pod-a", &[]).await;
    let c0 = publish(&a, "u1", 0, None).await;
    publish(&a, "u1", 1, None).await;
    let js = nats.js().await;
    let stream = js.get_stream(STREAM).await.expect("the durable stream");
    tokio::time::timeout(WAIT, stream.purge())
        .await
        .expect("purge answered")
        .expect("purged");
    let h = history(&a, "u1", "").await;
    assert_eq!(history_messages(&h), Vec::<Value>::new(), "{h}");
    let (mut ws, welcome) = connect(&url(&a, "u1", &since(&c0))).await;
    assert_not_recovered(&welcome);
    publish(&a, "u1", 2, None).await;
    assert_eq!(n_of(&next_message(&mut ws).await), 2, "only live traffic");
    let (status, body) =
        get_text(&a, &format!("/api/v1/history/u1?since={c0}"), Some(API_KEY)).await;
    assert_eq!(status, 410, "history since a dropped cursor: {body}");
}

#[tokio::test]
async fn a_cursor_from_a_deleted_stream_does_not_recover_and_the_stream_comes_back() {
    let nats = Nats::start_js().await;
    let a = pod(&nats, "pod-a", &[]).await;
    // A session that stays open while the stream goes away and comes back.
    let (mut kept, _) = connect(&url(&a, "u1", "")).await;
    let c0 = publish(&a, "u1", 0, None).await;
    publish(&a, "u1", 1, None).await;
    assert_eq!(ns(&read_messages(&mut kept, 2).await), vec![0, 1]);
    let js = nats.js().await;
    let created = stream_created(&js)
        .await
        .expect("herald created the stream");
    tokio::time::timeout(WAIT, js.delete_stream(STREAM))
        .await
        .expect("delete answered")
        .expect("stream deleted");
    // Herald re-creates it (~2 s): wait for a stream with a new creation time.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if stream_created(&js).await.is_some_and(|c| c != created) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "herald did not re-create the deleted stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The pod may learn the new epoch a moment after the stream exists; a publish whose
    // cursor carries the new epoch shows it has.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut probe = 1000;
    let c1 = loop {
        let c = publish(&a, "u1", probe, None).await;
        probe += 1;
        if cursor_parts(&c).0 != cursor_parts(&c0).0 {
            break c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publish answers still carry the old epoch: {c}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (mut ws, welcome) = connect(&url(&a, "u1", &since(&c0))).await;
    assert_not_recovered(&welcome);
    let c2 = publish(&a, "u1", 2, None).await;
    let m = next_message(&mut ws).await;
    assert_eq!(n_of(&m), 2, "only live traffic: {m}");
    assert_eq!(cursor_of(&m), c2);
    let (status, body) =
        get_text(&a, &format!("/api/v1/history/u1?since={c0}"), Some(API_KEY)).await;
    assert_eq!(status, 410, "history since a foreign cursor: {body}");
    // Cursors of the new stream resume.
    leave(ws).await;
    publish(&a, "u1", 3, None).await;
    let (mut ws, welcome) = connect(&url(&a, "u1", &since(&c1))).await;
    assert_recovered(&welcome, 2);
    assert_eq!(ns(&read_messages(&mut ws, 2).await), vec![2, 3]);
    // The session that stayed open got everything the new stream kept, once, in order.
    let mut expected: Vec<i64> = (1000..probe).collect();
    expected.extend([2, 3]);
    let got = read_messages(&mut kept, expected.len()).await;
    assert_eq!(
        ns(&got),
        expected,
        "live delivery across the re-created stream"
    );
    expect_silence(&mut kept, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_garbage_cursor_does_not_recover() {
    let nats = Nats::start_js().await;
    let a = pod(&nats, "pod-a", &[]).await;
    // Kept messages a wrong replay would show.
    publish(&a, "u1", 0, None).await;
    publish(&a, "u1", 1, None).await;
    for (n, bad) in (10..).zip(["abc", "zz-1", "-", "1-2-3"]) {
        let (mut ws, welcome) = connect(&url(&a, "u1", &since(bad))).await;
        assert_not_recovered(&welcome);
        publish(&a, "u1", n, None).await;
        let m = next_message(&mut ws).await;
        assert_eq!(n_of(&m), n, "since={bad}: only live traffic, got {m}");
        leave(ws).await;
    }
}

// 6 -------------------------------------------------------------------------------------

#[tokio::test]
async fn more_than_max_replay_missing_recovers_nothing_and_exactly_max_replay_recovers() {
    let nats = Nats::start_js().await;
    let a = pod(&nats, "pod-a", &["--max-replay", "5"]).await;
    // u1 misses 6 after its first, u2 misses 5; interleaved, so the count is per user.
    let mut c1 = Vec::new();
    let mut c2 = Vec::new();
    for n in 0..7 {
        c1.push(publish(&a, "u1", n, None).await);
        if n < 6 {
            c2.push(publish(&a, "u2", n, None).await);
        }
    }
    let (mut ws, welcome) = connect(&url(&a, "u1", &since(&c1[0]))).await;
    assert_not_recovered(&welcome);
    publish(&a, "u1", 7, None).await;
    assert_eq!(
        n_of(&next_message(&mut ws).await),
        7,
        "nothing replayed, not even a part"
    );

    let (mut ws, welcome) = connect(&url(&a, "u2", &since(&c2[0]))).await;
    assert_recovered(&welcome, 5);
    assert_eq!(ns(&read_messages(&mut ws, 5).await), vec![1, 2, 3, 4, 5]);
    publish(&a, "u2", 6, None).await;
    assert_eq!(n_of(&next_message(&mut ws).await), 6);
}

// 7 -------------------------------------------------------------------------------------

#[tokio::test]
async fn a_device_message_is_replayed_only_to_that_device() {
    let nats = Nats::start_js().await;
    // Four messages follow the cursor, but no session is sent more than three: the limit
    // counts what the session gets.
    let a = pod(&nats, "pod-a", &["--max-replay", "3"]).await;
    let c0 = publish(&a, "u1", 0, None).await;
    publish(&a, "u1", 1, Some("d1")).await;
    publish(&a, "u1", 2, None).await;
    publish(&a, "u1", 3, Some("d2")).await;
    publish(&a, "u1", 4, Some("d1")).await;

    let (mut d1, w) = connect(&url(&a, "u1", &format!("&device=d1{}", since(&c0)))).await;
    assert_recovered(&w, 3);
    assert_eq!(ns(&read_messages(&mut d1, 3).await), vec![1, 2, 4]);
    let (mut d2, w) = connect(&url(&a, "u1", &format!("&device=d2{}", since(&c0)))).await;
    assert_recovered(&w, 2);
    assert_eq!(ns(&read_messages(&mut d2, 2).await), vec![2, 3]);
    let (mut plain, w) = connect(&url(&a, "u1", &since(&c0))).await;
    assert_recovered(&w, 1);
    assert_eq!(ns(&read_messages(&mut plain, 1).await), vec![2]);

    // Live, the same filter.
    publish(&a, "u1", 5, Some("d1")).await;
    publish(&a, "u1", 6, None).await;
    assert_eq!(ns(&read_messages(&mut d1, 2).await), vec![5, 6]);
    assert_eq!(ns(&read_messages(&mut d2, 1).await), vec![6]);
    assert_eq!(ns(&read_messages(&mut plain, 1).await), vec![6]);
    for ws in [&mut d1, &mut d2, &mut plain] {
        expect_silence(ws, Duration::from_millis(200)).await;
    }
}

// 8 -------------------------------------------------------------------------------------

#[tokio::test]
async fn history_pages_through_kept_messages() {
    let nats = Nats::start_js().await;
    let a = pod(&nats, "pod-a", &["--max-replay", "5"]).await;
    let (mut ws, _) = connect(&url(&a, "u1", "&device=d1")).await;
    let mut c = Vec::new();
    for n in 0..7 {
        c.push(publish(&a, "u1", n, None).await);
    }
    publish(&a, "u2", 100, None).await;
    let live = read_messages(&mut ws, 7).await;

    // From the oldest kept; the default limit (100) is clamped to --max-replay.
    let h = history(&a, "u1", "").await;
    assert_eq!(
        history_messages(&h),
        live[..5],
        "history frames are the live frames: {h}"
    );
    assert_eq!(h["more"], true, "{h}");
    assert_eq!(h["cursor"], c[4].as_str(), "{h}");
    let h = history(&a, "u1", &format!("?since={}", c[4])).await;
    assert_eq!(history_messages(&h), live[5..], "{h}");
    assert_eq!(h["more"], false, "{h}");
    assert_eq!(h["cursor"], c[6].as_str(), "{h}");
    let h = history(&a, "u1", &format!("?since={}", c[6])).await;
    assert_eq!(history_messages(&h), Vec::<Value>::new(), "{h}");
    assert_eq!(h["more"], false, "{h}");
    assert_eq!(
        h["cursor"],
        c[6].as_str(),
        "nothing new: the given since: {h}"
    );
    let h = history(&a, "u1", &format!("?since={}&limit=2", c[1])).await;
    assert_eq!(history_messages(&h), live[2..4], "{h}");
    assert_eq!(h["more"], true, "{h}");
    assert_eq!(h["cursor"], c[3].as_str(), "{h}");
    let h = history(&a, "u1", &format!("?since={}&limit=5", c[1])).await;
    assert_eq!(history_messages(&h), live[2..], "{h}");
    assert_eq!(
        h["more"], false,
        "exactly the rest: nothing more follows: {h}"
    );
    let h = history(&a, "u1", "?limit=1000").await;
    assert_eq!(
        history_messages(&h).len(),
        5,
        "limit clamped to --max-replay: {h}"
    );
    assert_eq!(h["more"], true, "{h}");
    let h = history(&a, "u2", "").await;
    assert_eq!(ns(&history_messages(&h)), vec![100], "per user: {h}");

    // Device filter.
    let c7 = publish(&a, "u1", 7, Some("d1")).await;
    publish(&a, "u1", 8, Some("d2")).await;
    let c9 = publish(&a, "u1", 9, None).await;
    let live_d1 = read_messages(&mut ws, 2).await;
    assert_eq!(ns(&live_d1), vec![7, 9]);
    let h = history(&a, "u1", &format!("?since={c7}&device=d2&limit=1")).await;
    assert_eq!(ns(&history_messages(&h)), vec![8], "{h}");
    assert_eq!(h["more"], true, "9 is for d2 too: {h}");
    let h = history(&a, "u1", &format!("?since={}", c[6])).await;
    assert_eq!(
        ns(&history_messages(&h)),
        vec![7, 8, 9],
        "without device=, all: {h}"
    );
    let h = history(&a, "u1", &format!("?since={}&device=d1", c[6])).await;
    assert_eq!(history_messages(&h), live_d1, "{h}");
    assert_eq!(h["cursor"], c9.as_str(), "{h}");
    let h = history(&a, "u1", &format!("?since={}&device=d2", c[6])).await;
    assert_eq!(ns(&history_messages(&h)), vec![8, 9], "{h}");
    // A page that ends where only another device's messages follow has no more.
    publish(&a, "u1", 10, Some("d2")).await;
    let h = history(&a, "u1", &format!("?since={c7}&device=d1&limit=1")).await;
    assert_eq!(ns(&history_messages(&h)), vec![9], "{h}");
    assert_eq!(h["more"], false, "only d2's message 10 follows: {h}");

    // A since that cannot be continued.
    for bad in ["abc", "zz-1"] {
        let (status, body) = get_text(
            &a,
            &format!("/api/v1/history/u1?since={bad}"),
            Some(API_KEY),
        )
        .await;
        assert_eq!(status, 410, "since={bad}: {body}");
    }
    // The API key is required on a secured hub.
    let (status, body) = get_text(&a, "/api/v1/history/u1", None).await;
    assert_eq!(status, 401, "no key: {body}");
    let (status, body) = get_text(&a, "/api/v1/history/u1", Some("wrong-key")).await;
    assert_eq!(status, 401, "wrong key: {body}");

    // Without --durable there is no history.
    let nats_url = nats.url();
    let plain = Hub::secured(&["--nats-url", &nats_url, "--pod-name", "plain"]).await;
    let (status, body) = get_text(&plain, "/api/v1/history/u1", Some(API_KEY)).await;
    assert_eq!(status, 404, "history without --durable: {body}");
    // Standalone keeps recent messages in memory, unless told to keep none.
    let standalone = Hub::secured(&[]).await;
    let (status, body) = get_text(&standalone, "/api/v1/history/u1", Some(API_KEY)).await;
    assert_eq!(status, 200, "history in standalone mode: {body}");
    let keeps_none = Hub::secured(&["--history-memory", "0"]).await;
    let (status, body) = get_text(&keeps_none, "/api/v1/history/u1", Some(API_KEY)).await;
    assert_eq!(status, 404, "history with --history-memory 0: {body}");
}

#[tokio::test]
async fn without_durable_frames_carry_a_cursor_and_since_never_recovers() {
    let nats = Nats::start().await;
    let nats_url = nats.url();
    let a = Hub::secured(&["--nats-url", &nats_url, "--pod-name", "pod-a"]).await;
    let (mut ws, _) = connect(&url(&a, "u1", "")).await;
    let (status, answer) = a.publish(json!({"user": "u1", "data": {"n": 0}})).await;
    assert_eq!(status, 202, "{answer}");
    let m = next_message(&mut ws).await;
    let c0 = cursor_of(&m);
    leave(ws).await;
    let (status, _) = a.publish(json!({"user": "u1", "data": {"n": 1}})).await;
    assert_eq!(status, 202);
    let (mut ws, welcome) = connect(&url(&a, "u1", &since(&c0))).await;
    assert_not_recovered(&welcome);
    expect_silence(&mut ws, Duration::from_millis(300)).await;
}

// 9 -------------------------------------------------------------------------------------

#[tokio::test]
async fn durable_mode_refuses_to_start_without_jetstream() {
    let nats = Nats::start().await; // no -js
    let listen = format!("127.0.0.1:{}", free_port());
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "serve",
            "--listen",
            &listen,
            "--nats-url",
            &nats.url(),
            "--durable",
            "--jwt-secret",
            SECRET,
        ])
        .env("HERALD_LOG", "info")
        .env_remove("HERALD_JWT_SECRET")
        .env_remove("HERALD_API_KEY")
        .env_remove("HERALD_NATS_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("herald starts");
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("herald --durable without JetStream must exit, not wait")
        .expect("herald output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status {:?}: {text}",
        out.status
    );
    assert!(
        text.contains("JetStream"),
        "the error names JetStream: {text}"
    );
}

// 10 ------------------------------------------------------------------------------------

/// What one client saw, checked as it arrives.
#[derive(Default)]
struct Seen {
    ns: Vec<i64>,
    cursor: Option<String>,
}

impl Seen {
    fn take(&mut self, m: &Value) {
        assert_eq!(m["type"], "message", "{m}");
        let n = n_of(m);
        assert_eq!(m["id"], format!("storm-{n}"), "{m}");
        self.ns.push(n);
        self.cursor = Some(cursor_of(m));
    }
}

#[tokio::test]
async fn a_publish_storm_through_reconnects_and_a_killed_pod_loses_and_repeats_nothing() {
    const TOTAL: i64 = 300;
    const PER_ROUND: usize = 40;
    let nats = Nats::start_js().await;
    let mut pods = [
        pod(&nats, "pod-a", &[]).await,
        pod(&nats, "pod-b", &[]).await,
    ];
    let mut at = 0;
    let (mut ws, _) = connect(&url(&pods[at], "u1", "")).await;

    let js = nats.js().await;
    let (published_tx, mut published) = tokio::sync::watch::channel(0i64);
    let publisher = tokio::spawn(async move {
        for n in 0..TOTAL {
            js_publish_retry(
                &js,
                "herald.user.u1",
                &format!("storm-{n}"),
                json!({"n": n}).to_string(),
                WAIT,
            )
            .await;
            let _ = published_tx.send(n + 1);
            // A steady rate (~60/s), so the storm spans every reconnect.
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });

    let mut seen = Seen::default();
    let mut welcomes = Vec::new();
    for round in 0..5 {
        for _ in 0..PER_ROUND {
            seen.take(&next_json(&mut ws).await);
        }
        if round == 2 {
            // The pod dies under the client: what its socket still delivers counts.
            pods[at].signal("KILL");
            loop {
                match next_event(&mut ws, WAIT).await {
                    WsEvent::Frame(m) => seen.take(&m),
                    WsEvent::Closed(_) | WsEvent::Gone(_) => break,
                    WsEvent::Quiet => panic!("socket of a killed pod stayed open"),
                }
            }
        } else {
            leave(ws).await;
        }
        // Away while at least 10 more messages are stored, so the reconnect has to replay.
        let last = *seen.ns.last().expect("a message");
        tokio::time::timeout(WAIT, published.wait_for(|&p| p >= last + 1 + 10))
            .await
            .expect("publisher progresses")
            .expect("publisher alive");
        let cursor = seen.cursor.clone().expect("a cursor");
        let dead = at;
        at = 1 - at;
        let (next, welcome) = connect(&url(&pods[at], "u1", &since(&cursor))).await;
        assert_eq!(welcome["recovered"], true, "round {round}: {welcome}");
        assert!(
            welcome["replayed"].as_u64().unwrap_or(0) >= 10,
            "round {round}: 10 or more were missed: {welcome}"
        );
        welcomes.push(welcome);
        ws = next;
        if round == 2 {
            // A replacement on a fresh port, so the client can alternate again.
            pods[dead] = pod(&nats, "pod-r", &[]).await;
        }
    }
    while seen.ns.last() != Some(&(TOTAL - 1)) {
        seen.take(&next_json(&mut ws).await);
        assert!(seen.ns.len() <= TOTAL as usize, "more frames than messages");
    }
    tokio::time::timeout(WAIT, publisher)
        .await
        .expect("publisher done")
        .expect("publisher ok");
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    let replayed: Vec<&Value> = welcomes.iter().map(|w| &w["replayed"]).collect();
    eprintln!("replayed per reconnect: {replayed:?}");
    let mut dups = seen.ns.clone();
    dups.sort_unstable();
    dups.dedup();
    assert_eq!(
        seen.ns,
        (0..TOTAL).collect::<Vec<_>>(),
        "every message once, in order ({} received, {} distinct); welcomes: {welcomes:?}",
        seen.ns.len(),
        dups.len()
    );
}

// Live gap fill -------------------------------------------------------------------------

#[tokio::test]
async fn a_message_missing_from_the_live_feed_is_filled_from_the_stream() {
    let nats = Nats::start_js().await;
    let a = pod(&nats, "pod-a", &[]).await;
    let (mut ws, _) = connect(&url(&a, "u1", "")).await;
    publish(&a, "u1", 0, None).await;
    assert_eq!(n_of(&next_message(&mut ws).await), 0);
    // Republishing off for one message: it is stored but never reaches the live subject.
    let js = nats.js().await;
    let mut stream = js.get_stream(STREAM).await.expect("the durable stream");
    let config = stream.info().await.expect("stream info").config.clone();
    let mut silent = config.clone();
    silent.republish = None;
    if let Err(e) = js.update_stream(silent).await {
        // nats-server 2.9 refuses to change RePublish on a stream: the scenario cannot be
        // set up there (2.10 and later allow it).
        assert!(
            e.to_string().contains("can not change RePublish"),
            "republish off: {e}"
        );
        eprintln!("skipped: this nats-server cannot turn republishing off ({e})");
        return;
    }
    let lost = publish(&a, "u1", 1, None).await;
    js.update_stream(config).await.expect("republish back on");
    // The next live message names the lost one as its predecessor: the pod fills it in.
    let c2 = publish(&a, "u1", 2, None).await;
    let got = read_messages(&mut ws, 2).await;
    assert_eq!(ns(&got), vec![1, 2], "the gap is filled, in order");
    assert_eq!(cursor_of(&got[0]), lost);
    assert_eq!(cursor_of(&got[1]), c2);
    expect_silence(&mut ws, Duration::from_millis(300)).await;
}

// NATS reconnect ------------------------------------------------------------------------

#[tokio::test]
async fn messages_stored_while_a_pod_was_cut_off_from_nats_arrive_after_it_reconnects() {
    let nats = Nats::start_js().await;
    let mut proxy = TcpProxy::start(nats.port).await;
    let proxy_url = proxy.url();
    let a = Hub::secured(&["--nats-url", &proxy_url, "--pod-name", "pod-a", "--durable"]).await;
    a.wait_ready(200).await;
    let (mut ws, _) = connect(&url(&a, "u1", "")).await;
    publish(&a, "u1", 0, None).await;
    assert_eq!(n_of(&next_message(&mut ws).await), 0);

    proxy.cut();
    a.wait_ready(503).await;
    // Stored (and republished to nobody on this pod) while the pod is cut off.
    let js = nats.js().await;
    for n in 1..4 {
        js_publish_retry(
            &js,
            "herald.user.u1",
            &format!("cut-{n}"),
            json!({"n": n}).to_string(),
            WAIT,
        )
        .await;
    }
    proxy.open().await;
    a.wait_ready(200).await;
    publish(&a, "u1", 4, None).await;
    let got = read_messages(&mut ws, 4).await;
    assert_eq!(
        ns(&got),
        vec![1, 2, 3, 4],
        "the missed ones first, in order, once"
    );
    expect_silence(&mut ws, Duration::from_millis(300)).await;
}

// Replay/live boundary ------------------------------------------------------------------

#[tokio::test]
async fn reconnecting_again_and_again_during_a_fast_stream_never_loses_or_repeats() {
    const TOTAL: i64 = 400;
    let nats = Nats::start_js().await;
    let pods = [
        pod(&nats, "pod-a", &[]).await,
        pod(&nats, "pod-b", &[]).await,
    ];
    let (mut ws, _) = connect(&url(&pods[0], "u1", "")).await;
    // Another session of the user stays on pod A while the first one keeps joining it
    // (and leaving) with replays.
    let (mut watcher, _) = connect(&url(&pods[0], "u1", "&device=watch")).await;
    let js = nats.js().await;
    // As fast as acknowledgements come back: publishes land during every handshake.
    let publisher = tokio::spawn(async move {
        for n in 0..TOTAL {
            js_publish_retry(
                &js,
                "herald.user.u1",
                &format!("fast-{n}"),
                json!({"n": n}).to_string(),
                WAIT,
            )
            .await;
        }
    });
    let mut got: Vec<i64> = Vec::new();
    let mut reconnects = 0;
    while got.last() != Some(&(TOTAL - 1)) {
        let m = next_message(&mut ws).await;
        got.push(n_of(&m));
        let cursor = cursor_of(&m);
        assert!(got.len() <= TOTAL as usize, "more frames than messages");
        if got.len().is_multiple_of(15) {
            reconnects += 1;
            leave(ws).await;
            let hub = &pods[reconnects % 2];
            let (next, welcome) = connect(&url(hub, "u1", &since(&cursor))).await;
            assert_eq!(welcome["recovered"], true, "{welcome}");
            ws = next;
        }
    }
    tokio::time::timeout(WAIT, publisher)
        .await
        .unwrap()
        .unwrap();
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    assert!(reconnects >= 20, "{reconnects} reconnects");
    assert_eq!(
        got,
        (0..TOTAL).collect::<Vec<_>>(),
        "after {reconnects} reconnects"
    );
    let watched = ns(&read_messages(&mut watcher, TOTAL as usize).await);
    assert_eq!(
        watched,
        (0..TOTAL).collect::<Vec<_>>(),
        "the session that stayed"
    );
    expect_silence(&mut watcher, Duration::from_millis(200)).await;
}

// Stream set-up -------------------------------------------------------------------------

#[tokio::test]
async fn pods_starting_at_once_share_one_stream_and_a_restart_updates_its_retention() {
    let nats = Nats::start_js().await;
    let nats_url = nats.url();
    let args = |name| {
        [
            "--nats-url",
            nats_url.as_str(),
            "--pod-name",
            name,
            "--durable",
            "--retention",
            "1h",
        ]
    };
    let (a_args, b_args, c_args) = (args("pod-a"), args("pod-b"), args("pod-c"));
    // Three pods racing to create the stream.
    let (a, b, c) = tokio::join!(
        Hub::secured(&a_args),
        Hub::secured(&b_args),
        Hub::secured(&c_args)
    );
    let js = nats.js().await;
    let names: Vec<String> = {
        use futures_util::StreamExt;
        js.stream_names()
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(|n| n.expect("stream name"))
            .collect()
    };
    assert_eq!(
        names,
        vec![STREAM.to_string()],
        "one stream (no revocation made: no access bucket)"
    );
    let mut stream = js.get_stream(STREAM).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    assert_eq!(info.config.subjects, vec!["herald.user.>".to_string()]);
    // Every pod works with it.
    let (mut ws, _) = connect(&url(&c, "u1", "")).await;
    publish(&a, "u1", 0, None).await;
    let c1 = publish(&b, "u1", 1, None).await;
    assert_eq!(ns(&read_messages(&mut ws, 2).await), vec![0, 1]);
    // A pod started with another retention updates the same stream (same epoch).
    let d = pod(&nats, "pod-d", &["--retention", "2h"]).await;
    let mut stream = js.get_stream(STREAM).await.unwrap();
    let updated = stream.info().await.unwrap().clone();
    assert_eq!(updated.config.max_age, Duration::from_secs(7200));
    assert_eq!(updated.created, info.created, "updated, not re-created");
    publish(&a, "u1", 2, None).await;
    let (mut ws2, welcome) = connect(&url(&d, "u1", &since(&c1))).await;
    assert_recovered(&welcome, 1);
    assert_eq!(ns(&read_messages(&mut ws2, 1).await), vec![2]);
}

#[tokio::test]
async fn hubs_with_different_subject_prefixes_keep_separate_streams() {
    let nats = Nats::start_js().await;
    let herald_pod = pod(&nats, "pod-h", &[]).await;
    let acme = pod(&nats, "pod-acme", &["--subject-prefix", "acme"]).await;
    let h0 = publish(&herald_pod, "u1", 0, None).await;
    let a0 = publish(&acme, "u1", 100, None).await;
    publish(&herald_pod, "u1", 1, None).await;
    publish(&acme, "u1", 101, None).await;
    let h = history(&herald_pod, "u1", "").await;
    assert_eq!(ns(&history_messages(&h)), vec![0, 1], "{h}");
    let h = history(&acme, "u1", "").await;
    assert_eq!(ns(&history_messages(&h)), vec![100, 101], "{h}");
    let (mut ws, welcome) = connect(&url(&acme, "u1", &since(&a0))).await;
    assert_recovered(&welcome, 1);
    assert_eq!(ns(&read_messages(&mut ws, 1).await), vec![101]);
    let (mut ws, welcome) = connect(&url(&herald_pod, "u1", &since(&h0))).await;
    assert_recovered(&welcome, 1);
    assert_eq!(ns(&read_messages(&mut ws, 1).await), vec![1]);
    // A cursor of one hub's stream is foreign to the other.
    let (_ws, welcome) = connect(&url(&acme, "u1", &since(&h0))).await;
    assert_not_recovered(&welcome);
}
