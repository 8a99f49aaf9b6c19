//! Limits and refusals on a real stack: no nodes, wrong node, connection cap, rate limit, a
//! slow consumer closed with 4001 that loses nothing, and a resume across records Kafka deleted
//! before the node read them.

use futures_util::StreamExt;
use rtc_client::http::get as http_get;
use rtc_client::Connection;
use rtc_e2e::stack::Stack;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_without_nodes_is_503_with_retry_after() {
    let stack = Stack::start(0, |_| {}).await;
    let r = http_get(
        &stack.balancer.to_string(),
        "/api/v1/resolve?clientId=alice",
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.retry_after.as_deref()),
        (503, Some("1")),
        "{}",
        r.body
    );
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        (body["error"].as_str(), body["retryable"].as_bool()),
        (Some("no_nodes"), Some(true))
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_refuses_other_nodes_paths_and_enforces_its_connection_cap() {
    let stack = Stack::start(1, |c| c.max_connections = 2).await;
    let addr = stack.nodes[0].addr.to_string();
    let r = http_get(&addr, "/ws/some-other-node/connect?clientId=a&token=x")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.body.contains("wrong_node"), "{}", r.body);

    let ep = stack.endpoints();
    let _a = Connection::connect(&ep, "cap-a", None, T).await.unwrap();
    let _b = Connection::connect(&ep, "cap-b", None, T).await.unwrap();
    rtc_e2e::expect_refusal(&ep, "cap-c", 503, Some("5"), "too_many_connections").await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_rate_get_rate_limited_errors() {
    let stack = Stack::start(1, |c| {
        c.rate_limit_per_sec = 1;
        c.rate_limit_burst = 3;
    })
    .await;
    let ep = stack.endpoints();
    let mut c = Connection::connect(&ep, "fast", None, T).await.unwrap();
    for i in 0..10 {
        c.send_text(json!({"type":"ping","id":format!("p{i}")}).to_string())
            .await
            .unwrap();
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 10 {
        let f = c.next(T).await.unwrap().unwrap();
        match f["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => {
                assert_eq!(
                    (f["code"].as_str(), f["retryable"].as_bool()),
                    (Some("rate_limited"), Some(true)),
                    "{f}"
                );
                limited += 1;
            }
            _ => {}
        }
    }
    assert!(
        (3..=4).contains(&pongs),
        "the burst passes ({pongs}), the rest is refused"
    );
    stack.shutdown().await;
}

/// A client that stops reading is closed as a slow consumer once its queue passes
/// SEND_QUEUE_BYTES; reconnecting with its resume offset it still gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_and_loses_nothing() {
    let stack = Stack::start(1, |c| {
        c.send_queue_bytes = 16 * 1024;
        c.max_message_bytes = 8 * 1024;
        c.rate_limit_per_sec = 1_000_000;
        c.rate_limit_burst = 1_000_000;
        c.history_max_messages = 20_000;
    })
    .await;
    let ep = stack.endpoints();
    let mut alice = Connection::connect(&ep, "alice", None, T).await.unwrap();
    let bob = Connection::connect(&ep, "bob", None, T).await.unwrap();
    let resume = bob.offset;
    let node = stack.nodes[0].node.clone();
    // bob reads nothing; alice sends until the node gives up on him (at most 20,000 messages of
    // 2 KB). Each batch is acked and read by the node before the next: the embedded mock keeps
    // only 5 MiB of a partition, and must not drop what the node has not read yet (the node's
    // history holds it all, HISTORY_MAX_MESSAGES 20,000).
    let slot = rtc_protocol::slot::slot_of("bob", rtc_e2e::stack::SLOTS);
    let pad = "x".repeat(2000);
    let mut sent = 0;
    while node.metrics.closed.with_label_values(&["4001"]).get() == 0 {
        assert!(sent < 20_000, "bob was never closed as a slow consumer");
        let mut newest = -1;
        for _ in 0..200 {
            sent += 1;
            alice
                .send(&sent.to_string(), "bob", json!({"pad": pad}))
                .await
                .unwrap();
        }
        let mut acked = 0;
        while acked < 200 {
            let f = alice.next(T).await.unwrap().unwrap();
            if f["type"] == "ack" {
                acked += 1;
                newest = newest.max(f["offset"].as_i64().unwrap());
            }
        }
        rtc_testkit::wait_for("the node to read the batch", T, || {
            let read = node.last_offset(slot);
            async move { read >= newest }
        })
        .await
        .unwrap();
    }
    // Whatever bob's socket still holds, then the end of that connection.
    let mut got: HashSet<String> = HashSet::new();
    let mut ws = bob.ws;
    let mut offset = resume;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let f: serde_json::Value = serde_json::from_str(&t).unwrap();
            if f["type"] == "msg" {
                got.insert(f["id"].as_str().unwrap().to_string());
                offset = f["offset"].as_i64().or(offset);
            }
        }
    }
    assert!(
        got.len() < sent,
        "the connection ended before everything arrived"
    );
    let mut bob = Connection::connect(&ep, "bob", offset, T).await.unwrap();
    assert!(bob.recovered);
    while got.len() < sent {
        let f = bob.until(T, |f| f["type"] == "msg").await.unwrap();
        assert!(
            got.insert(f["id"].as_str().unwrap().to_string()),
            "no message twice: {}",
            f["id"]
        );
    }
    assert_eq!(got.len(), sent);
    stack.shutdown().await;
}

/// A client that stops reading (so never answers pings) is closed with 1001 `ping timeout`
/// after three ping intervals, and can come back with its resume offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_is_closed_with_a_reason() {
    let stack = Stack::start(1, |c| c.ping_interval_secs = 1).await;
    let ep = stack.endpoints();
    let mut bob = Connection::connect(&ep, "bob", None, T).await.unwrap();
    // Not reading: tungstenite answers a ping only while it reads.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let close = bob.until(T, |f| f["type"] == "close").await.unwrap();
    assert_eq!(close["code"], 1001, "{close}");
    assert_eq!(close["reason"], "ping timeout");
    bob.reconnect(T).await.unwrap();
    assert!(bob.recovered);
    stack.shutdown().await;
}

/// A node that falls behind what Kafka still holds (the embedded broker's byte bound here,
/// retention on a real broker) is reset past the deleted records and finds the slot's offsets
/// jumped: a client resuming from before the jump is told `recovered: false` instead of being
/// served the history as if it were whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_before_the_node_read_them_make_a_resume_not_recovered() {
    use rtc_e2e::offline::{neighbours, produce};
    const SLOTS: u32 = rtc_e2e::stack::SLOTS;
    let kafka = rtc_testkit::kafka::Kafka::embedded(
        SLOTS,
        rtc_embedded_kafka::Config {
            max_bytes: 64 << 10,
            ..Default::default()
        },
    )
    .unwrap();
    let mut stack = Stack::start_on(kafka, 1, |_| {}).await;
    // Waits until the process node serves its slots of the ring.
    let lagger = stack.spawn_process_node("lagger").await;
    let ep = stack.endpoints();
    let alice = (0..10_000)
        .map(|k| format!("alice-{k}"))
        .find(|c| stack.owner_of(c).as_deref() == Some("lagger"))
        .expect("a client of the process node");
    let mut near = neighbours(&alice, SLOTS, 21);
    let carol = near.remove(0);
    let a = Connection::connect(&ep, &alice, None, T).await.unwrap();
    let resume = a.offset.expect("a resume point");
    drop(a);
    let mut c = Connection::connect(&ep, &carol, None, T).await.unwrap();

    // The node stands still while the slot gets far more than the broker keeps.
    lagger.signal(libc::SIGSTOP);
    let bootstrap = stack.kafka.bootstrap.clone();
    let last = produce(&bootstrap, SLOTS, &alice, &near, 100, 1400, Duration::ZERO).await;
    let marker = produce(&bootstrap, SLOTS, &carol, &[], 1, 0, Duration::ZERO).await;
    lagger.signal(libc::SIGCONT);
    let (last, marker) = (last.unwrap(), marker.unwrap());
    assert!(marker > last);
    // carol's message is the slot's newest record: once she has it, the node read to the end.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol never got her message"
        );
        if let Ok(Some(f)) = c.next(Duration::from_secs(1)).await {
            if f["type"] == "msg" {
                assert_eq!(f["offset"], marker);
                break;
            }
        }
    }
    let a = Connection::connect(&ep, &alice, Some(resume), T)
        .await
        .unwrap();
    assert!(
        !a.recovered,
        "alice resumed from {resume}, before records deleted unread: not recovered"
    );
    drop(lagger);
    stack.shutdown().await;
}
