//! One conformance suite for every Bus engine: MemoryBus in process, NatsBus against a
//! real nats-server. Both must give the hub the same subject semantics.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use herald::bus::memory::MemoryBus;
use herald::bus::nats::NatsBus;
use herald::bus::{Bus, Outbound, Subscription};

async fn recv(sub: &mut Subscription) -> herald::bus::BusMessage {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("message in time")
        .expect("subscription open")
}

async fn nothing(sub: &mut Subscription) {
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_err(),
        "unexpected message"
    );
}

async fn conformance(bus: Arc<dyn Bus>) {
    assert!(bus.is_connected());
    // Exact subjects, headers and payload pass through unchanged.
    let mut exact = bus.subscribe("t.user.u1".into(), None).await.unwrap();
    bus.publish(Outbound::new("t.user.u1", "hello").header("Herald-Event", "order"))
        .await
        .unwrap();
    let m = recv(&mut exact).await;
    assert_eq!(m.subject, "t.user.u1");
    assert_eq!(&m.payload[..], b"hello");
    assert_eq!(m.header("Herald-Event"), Some("order"));
    bus.publish(Outbound::new("t.user.u2", "other"))
        .await
        .unwrap();
    nothing(&mut exact).await;

    // Wildcards: `*` is one token, `>` the rest.
    let mut star = bus.subscribe("t.presence.*".into(), None).await.unwrap();
    let mut rest = bus.subscribe("t.events.>".into(), None).await.unwrap();
    bus.publish(Outbound::new("t.presence.u9", ""))
        .await
        .unwrap();
    bus.publish(Outbound::new("t.events.presence.u9", ""))
        .await
        .unwrap();
    assert_eq!(recv(&mut star).await.subject, "t.presence.u9");
    assert_eq!(recv(&mut rest).await.subject, "t.events.presence.u9");
    nothing(&mut star).await;

    // Queue groups: one member gets each message.
    let mut q1 = bus.subscribe("t.q".into(), Some("g".into())).await.unwrap();
    let mut q2 = bus.subscribe("t.q".into(), Some("g".into())).await.unwrap();
    for _ in 0..4 {
        bus.publish(Outbound::new("t.q", "x")).await.unwrap();
    }
    let mut got = 0;
    for sub in [&mut q1, &mut q2] {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
            got += 1;
        }
    }
    assert_eq!(got, 4, "each queued message delivered exactly once");

    // Dropping a subscription ends delivery.
    drop(exact);
    let mut probe = bus.subscribe("t.user.u1".into(), None).await.unwrap();
    bus.publish(Outbound::new("t.user.u1", "after"))
        .await
        .unwrap();
    assert_eq!(&recv(&mut probe).await.payload[..], b"after");

    // Scatter/gather: every responder answers, the asker collects them.
    for n in 0..2u8 {
        let bus2 = bus.clone();
        let mut responder = bus.subscribe("t.ctl.query".into(), None).await.unwrap();
        tokio::spawn(async move {
            if let Some(req) = responder.next().await {
                let reply = req.reply.expect("reply subject");
                bus2.publish(Outbound::new(reply, vec![n])).await.unwrap();
            }
        });
    }
    let replies = bus
        .request_many("t.ctl.query".into(), Bytes::from_static(b"?"), WAIT, 2)
        .await
        .unwrap();
    let mut answers: Vec<u8> = replies.iter().map(|r| r.payload[0]).collect();
    answers.sort();
    assert_eq!(answers, vec![0, 1]);
    // Fewer replies than expected: returns what came once the timeout passes.
    let none = bus
        .request_many(
            "t.nobody".into(),
            Bytes::new(),
            Duration::from_millis(200),
            1,
        )
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn memory_bus_conforms() {
    conformance(Arc::new(MemoryBus::new())).await;
}

#[tokio::test]
async fn nats_bus_conforms() {
    let nats = Nats::start().await;
    let bus = NatsBus::connect(
        &[nats.url()],
        "conformance",
        Arc::new(herald::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    conformance(Arc::new(bus)).await;
}

#[tokio::test]
async fn nats_bus_refuses_to_publish_while_disconnected() {
    let mut nats = Nats::start().await;
    let bus = NatsBus::connect(
        &[nats.url()],
        "outage",
        Arc::new(herald::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    nats.kill();
    let deadline = tokio::time::Instant::now() + WAIT;
    while bus.is_connected() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never noticed the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        bus.publish(Outbound::new("t.x", "lost?")).await,
        Err(herald::bus::BusError::Disconnected)
    ));
}
