//! The user's path on real Redis and Kafka (RTC_TEST_KAFKA=mock|broker): resolve → connect →
//! send → receive across nodes, rooms, resume, Kafka outages.

use rtc_client::Connection;
use rtc_e2e::stack::{self as support, Stack};
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Sends `n` direct messages with ids `{prefix}{i}` from `from` to `to`, each acked before the
/// next; returns (id, acked offset) in order.
async fn send_acked(from: &mut Connection, to: &str, prefix: &str, n: usize) -> Vec<(String, i64)> {
    let mut sent = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}{i}");
        from.send(&id, to, json!(i)).await.unwrap();
        let ack = from
            .until(T, |f| f["type"] == "ack" && f["id"] == id.as_str())
            .await
            .unwrap();
        sent.push((id, ack["offset"].as_i64().unwrap()));
    }
    sent
}

/// The ids of the next `n` messages `c` receives.
async fn next_msg_ids(c: &mut Connection, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let m = c.until(T, |f| f["type"] == "msg").await.unwrap();
        ids.push(m["id"].as_str().unwrap().to_string());
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_crosses_nodes_with_its_offset() {
    let stack = Stack::start(3, |_| {}).await;
    let ep = stack.endpoints();
    let (alice_id, bob_id) = (stack.client_on(0, "alice"), stack.client_on(1, "bob"));
    let mut alice = Connection::connect(&ep, &alice_id, None, T).await.unwrap();
    let mut bob = Connection::connect(&ep, &bob_id, None, T).await.unwrap();
    assert_eq!(alice.node, stack.nodes[0].id);
    assert_eq!(bob.node, stack.nodes[1].id);
    assert!(alice.recovered);

    alice
        .send("m1", &bob_id, json!({"text":"hi bob"}))
        .await
        .unwrap();
    let ack = alice.until(T, |f| f["type"] == "ack").await.unwrap();
    assert_eq!(ack["id"], "m1");
    let offset = ack["offset"]
        .as_i64()
        .expect("ack carries the Kafka offset");
    let msg = bob.until(T, |f| f["type"] == "msg").await.unwrap();
    assert_eq!(msg["from"], alice_id.as_str());
    assert_eq!(msg["id"], "m1");
    assert_eq!(msg["data"], json!({"text":"hi bob"}));
    assert_eq!(msg["offset"].as_i64(), Some(offset));
    assert!(msg.get("room").is_none());
    stack.shutdown().await;
}

/// DELIVER_FETCH_BATCH_MS has the broker hold each fetch of the owned slots for a batch (on the
/// real broker in CI's broker step; the embedded broker answers at the first record either way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_deliver_fetches_deliver_every_message_once_in_order() {
    let stack = Stack::start(2, |c| c.deliver_fetch_batch_ms = 10).await;
    let ep = stack.endpoints();
    let (alice_id, bob_id) = (stack.client_on(0, "alice"), stack.client_on(1, "bob"));
    let mut alice = Connection::connect(&ep, &alice_id, None, T).await.unwrap();
    let mut bob = Connection::connect(&ep, &bob_id, None, T).await.unwrap();
    let sent = send_acked(&mut alice, &bob_id, "b", 40).await;
    let got = next_msg_ids(&mut bob, sent.len()).await;
    let want: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(got, want, "every message once, in the order sent");
    assert!(
        bob.until(Duration::from_millis(500), |f| f["type"] == "msg")
            .await
            .is_err(),
        "nothing more arrives"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_message_fans_out_to_members_on_every_node() {
    let stack = Stack::start(3, |_| {}).await;
    let ep = stack.endpoints();
    let mut members = Vec::new();
    for i in 0..3 {
        let mut c = Connection::connect(&ep, &stack.client_on(i, "member"), None, T)
            .await
            .unwrap();
        c.send_text(json!({"type":"join","id":"j","room":"lobby"}).to_string())
            .await
            .unwrap();
        c.until(T, |f| f["type"] == "joined" && f["id"] == "j")
            .await
            .unwrap();
        members.push(c);
    }
    let mut outsider = Connection::connect(&ep, &stack.client_on(2, "outsider"), None, T)
        .await
        .unwrap();
    members[0]
        .send_text(json!({"type":"publish","id":"p1","room":"lobby","data":[1,2,3]}).to_string())
        .await
        .unwrap();
    // The publisher is a member too: its copy of the message may arrive before its ack (the
    // node's rooms reader can be faster than the producer's confirmation), so keep it.
    let mut early: Option<serde_json::Value> = None;
    let ack = members[0]
        .until(T, |f| {
            if f["type"] == "msg" {
                early = Some(f.clone());
            }
            f["type"] == "ack" && f["id"] == "p1"
        })
        .await
        .unwrap();
    eprintln!(
        "room test: publish acked {ack} at {:?}",
        std::time::SystemTime::now()
    );
    for (i, m) in members.iter_mut().enumerate() {
        let f = match early.take().filter(|_| i == 0) {
            Some(f) => f,
            None => m
                .until(T, |f| f["type"] == "msg")
                .await
                .unwrap_or_else(|e| panic!("member {i} on {}: no room message: {e:#}", m.node)),
        };
        assert_eq!(
            (f["room"].as_str(), f["id"].as_str(), &f["data"]),
            (Some("lobby"), Some("p1"), &json!([1, 2, 3]))
        );
    }
    // Leaving stops delivery; an outsider never sees room traffic.
    members[1]
        .send_text(json!({"type":"leave","id":"l","room":"lobby"}).to_string())
        .await
        .unwrap();
    members[1]
        .until(T, |f| f["type"] == "ack" && f["id"] == "l")
        .await
        .unwrap();
    members[0]
        .send_text(json!({"type":"publish","id":"p2","room":"lobby","data":2}).to_string())
        .await
        .unwrap();
    members[2]
        .until(T, |f| f["type"] == "msg" && f["id"] == "p2")
        .await
        .unwrap();
    assert!(
        members[1].next(Duration::from_millis(500)).await.is_err(),
        "a member that left gets nothing"
    );
    assert!(
        outsider.next(Duration::from_millis(100)).await.is_err(),
        "a non-member gets nothing"
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_delivers_exactly_the_missed_messages_in_order() {
    let stack = Stack::start(2, |_| {}).await;
    let ep = stack.endpoints();
    let (alice_id, bob_id) = (stack.client_on(0, "alice"), stack.client_on(1, "bob"));
    let mut alice = Connection::connect(&ep, &alice_id, None, T).await.unwrap();
    let mut bob = Connection::connect(&ep, &bob_id, None, T).await.unwrap();
    alice.send("first", &bob_id, json!(0)).await.unwrap();
    alice
        .until(T, |f| f["type"] == "ack" && f["id"] == "first")
        .await
        .unwrap();
    let first = bob.until(T, |f| f["type"] == "msg").await.unwrap();
    let resume = first["offset"].as_i64().unwrap();
    bob.ws.close(None).await.unwrap();
    drop(bob);

    let mut sent = Vec::new();
    for i in 1..=5 {
        let id = format!("m{i}");
        alice.send(&id, &bob_id, json!(i)).await.unwrap();
        let ack = alice
            .until(T, |f| f["type"] == "ack" && f["id"] == id.as_str())
            .await
            .unwrap();
        sent.push((format!("m{i}"), ack["offset"].as_i64().unwrap()));
    }
    let mut bob = Connection::connect(&ep, &bob_id, Some(resume), T)
        .await
        .unwrap();
    assert!(bob.recovered);
    let mut got = Vec::new();
    for _ in 0..5 {
        let f = bob.until(T, |f| f["type"] == "msg").await.unwrap();
        got.push((
            f["id"].as_str().unwrap().to_string(),
            f["offset"].as_i64().unwrap(),
        ));
    }
    assert_eq!(got, sent, "exactly the missed messages, in order");
    assert!(
        bob.next(Duration::from_millis(300)).await.is_err(),
        "nothing more"
    );

    // Live delivery continues after the replay, without duplicates.
    alice.send("live", &bob_id, json!("x")).await.unwrap();
    let live = bob.until(T, |f| f["type"] == "msg").await.unwrap();
    assert_eq!(live["id"], "live");

    // Resuming from the middle replays only what follows.
    drop(bob);
    let mut bob = Connection::connect(&ep, &bob_id, Some(sent[2].1), T)
        .await
        .unwrap();
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(
                bob.until(T, |f| f["type"] == "msg").await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        v
    };
    assert_eq!(ids, vec!["m4", "m5", "live"]);
    stack.shutdown().await;
}

/// bob misses six messages while only three stay in the owner's history; he resumes with
/// `max_readback` as the node's READBACK_MAX_MESSAGES. Returns whether he was recovered and the
/// ids he got.
async fn resume_past_the_history(max_readback: usize) -> (bool, Vec<String>) {
    let stack = Stack::start(1, move |c| {
        c.history_max_messages = 3;
        c.readback_max_messages = max_readback;
    })
    .await;
    let ep = stack.endpoints();
    let bob_id = stack.client_on(0, "bob");
    let mut alice = Connection::connect(&ep, &stack.client_on(0, "alice"), None, T)
        .await
        .unwrap();
    let bob = Connection::connect(&ep, &bob_id, None, T).await.unwrap();
    let start = bob.offset.unwrap();
    drop(bob);
    let last = send_acked(&mut alice, &bob_id, "m", 6).await[5].1;
    // Let the owner consume everything, so the replay (not live delivery) is what is tested.
    let node = stack.nodes[0].node.clone();
    let slot = rtc_protocol::slot::slot_of(&bob_id, support::SLOTS);
    rtc_testkit::wait_for("the owner to consume", T, || {
        let done = node.last_offset(slot) >= last;
        async move { done }
    })
    .await
    .unwrap();
    let mut bob = Connection::connect(&ep, &bob_id, Some(start), T)
        .await
        .unwrap();
    let n = if bob.recovered { 6 } else { 3 };
    let ids = next_msg_ids(&mut bob, n).await;
    // Nothing more arrives (no message twice).
    let extra = bob.next(Duration::from_millis(300)).await;
    assert!(
        !matches!(&extra, Ok(Some(f)) if f["type"] == "msg"),
        "{extra:?}"
    );
    stack.shutdown().await;
    (bob.recovered, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_past_the_history_reads_the_partition_back() {
    let (recovered, ids) = resume_past_the_history(10_000).await;
    assert!(
        recovered,
        "the three not in the history are read back from Kafka"
    );
    assert_eq!(ids, vec!["m0", "m1", "m2", "m3", "m4", "m5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_past_the_read_back_bound_says_not_recovered() {
    let (recovered, ids) = resume_past_the_history(2).await;
    assert!(!recovered, "three to read back, but at most two may be");
    assert_eq!(
        ids,
        vec!["m3", "m4", "m5"],
        "what is kept is still replayed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_gives_senders_retryable_errors_then_recovers() {
    let stack = Stack::start(1, |c| c.kafka_send_timeout_ms = 1500).await;
    let ep = stack.endpoints();
    let mut alice = Connection::connect(&ep, &stack.client_on(0, "alice"), None, T)
        .await
        .unwrap();
    let bob_id = stack.client_on(0, "bob");
    alice.send("ok1", &bob_id, json!(1)).await.unwrap();
    alice.until(T, |f| f["type"] == "ack").await.unwrap();

    stack.kafka.outage(true);
    alice.send("lost?", &bob_id, json!(2)).await.unwrap();
    let f = alice.until(T, |f| f["id"] == "lost?").await.unwrap();
    assert_eq!(
        f["type"],
        "error",
        "{f} (Kafka {}, frozen now: {:?})",
        stack.kafka.kind,
        stack.kafka.frozen()
    );
    assert_eq!(f["code"], "kafka_unavailable");
    assert_eq!(f["retryable"], true);

    stack.kafka.outage(false);
    let mut acked = false;
    for attempt in 0..30 {
        let id = format!("retry{attempt}");
        alice.send(&id, &bob_id, json!(3)).await.unwrap();
        let f = alice.until(T, |f| f["id"] == id.as_str()).await.unwrap();
        if f["type"] == "ack" {
            acked = true;
            break;
        }
    }
    assert!(acked, "sending works again once Kafka is back");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_closes_with_1001_and_its_clients_resume_elsewhere() {
    let mut stack = Stack::start(2, |_| {}).await;
    let ep = stack.endpoints();
    let (alice_id, bob_id) = (stack.client_on(0, "alice"), stack.client_on(1, "bob"));
    let mut alice = Connection::connect(&ep, &alice_id, None, T).await.unwrap();
    let mut bob = Connection::connect(&ep, &bob_id, None, T).await.unwrap();
    alice.send("before", &bob_id, json!(0)).await.unwrap();
    bob.until(T, |f| f["type"] == "msg").await.unwrap();

    stack.stop_node(1).await;
    let close = bob.until(T, |f| f["type"] == "close").await.unwrap();
    assert_eq!(close["code"], 1001, "{close}");
    // Messages sent while bob has no node are kept in Kafka for him.
    let ids: Vec<String> = send_acked(&mut alice, &bob_id, "gap", 5)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    bob.reconnect(T).await.unwrap();
    assert_eq!(
        bob.node, stack.nodes[0].id,
        "bob's slot moved to the remaining node"
    );
    assert!(bob.recovered);
    assert_eq!(next_msg_ids(&mut bob, 5).await, ids);
    stack.shutdown().await;
}

/// A node that gave a slot away and gets it back reads the partition again from the restart
/// point (its deliver consumer paused the partition and now seeks it), with no gap and no
/// duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_given_back_is_read_again_from_its_new_start() {
    let mut stack = Stack::start(1, |_| {}).await;
    stack.settle().await;
    stack.add_node().await;
    stack.settle().await;
    let ep = stack.endpoints();
    let (alice_id, bob_id) = (stack.client_on(0, "alice"), stack.client_on(1, "bob"));
    let mut alice = Connection::connect(&ep, &alice_id, None, T).await.unwrap();
    let mut bob = Connection::connect(&ep, &bob_id, None, T).await.unwrap();
    assert_eq!(bob.node, stack.nodes[1].id);
    for i in 0..3 {
        let id = format!("away{i}");
        alice.send(&id, &bob_id, json!(i)).await.unwrap();
        let m = bob.until(T, |f| f["type"] == "msg").await.unwrap();
        assert_eq!(m["id"], id.as_str());
    }

    stack.stop_node(1).await;
    stack.settle().await;
    let mut ids: Vec<String> = send_acked(&mut alice, &bob_id, "back", 4)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    bob.reconnect(T).await.unwrap();
    assert_eq!(bob.node, stack.nodes[0].id, "the slot came back to node 0");
    assert!(bob.recovered);
    alice.send("live", &bob_id, json!("live")).await.unwrap();
    ids.push("live".into());
    assert_eq!(
        next_msg_ids(&mut bob, ids.len()).await,
        ids,
        "exactly the missed messages, then live"
    );
    assert!(
        bob.until(Duration::from_millis(500), |f| f["type"] == "msg")
            .await
            .is_err(),
        "nothing is delivered twice"
    );
    stack.shutdown().await;
}

/// An unreadable record as the newest of a partition (a foreign producer's garbage) does not
/// keep a slot loading: the node that takes the slot over counts it and becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_last_record_does_not_keep_a_slot_loading() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut stack = Stack::start(1, |_| {}).await;
    stack.settle().await;
    let producer: FutureProducer =
        rtc_serverkit::kafka::producer_config(&stack.kafka.bootstrap, Duration::from_secs(5))
            .create()
            .unwrap();
    for p in 0..support::SLOTS as i32 {
        let rec = FutureRecord::to(rtc_serverkit::kafka::DELIVER_TOPIC)
            .partition(p)
            .key("someone")
            .payload("not an envelope");
        producer
            .send(rec, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    // The new node loads every slot it is given up to a garbage record; settle() waits until
    // it serves all of them.
    stack.add_node().await;
    stack.settle().await;
    let ep = stack.endpoints();
    let (alice_id, bob_id) = (stack.client_on(0, "alice"), stack.client_on(1, "bob"));
    let mut alice = Connection::connect(&ep, &alice_id, None, T).await.unwrap();
    let mut bob = Connection::connect(&ep, &bob_id, None, T).await.unwrap();
    alice.send("after", &bob_id, json!(1)).await.unwrap();
    let m = bob.until(T, |f| f["type"] == "msg").await.unwrap();
    assert_eq!(m["id"], "after");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_twice_in_kafka_is_delivered_once() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let stack = Stack::start(1, |_| {}).await;
    let ep = stack.endpoints();
    let bob_id = stack.client_on(0, "bob");
    let mut bob = Connection::connect(&ep, &bob_id, None, T).await.unwrap();
    let resume = bob.offset;
    // A backend producing to rtc.deliver itself (docs/protocol.md §5), retrying one message.
    let producer: FutureProducer =
        rtc_serverkit::kafka::producer_config(&stack.kafka.bootstrap, Duration::from_secs(5))
            .create()
            .unwrap();
    let slot = rtc_protocol::slot::slot_of(&bob_id, support::SLOTS) as i32;
    for (id, n) in [("dup", 1), ("dup", 1), ("other", 2)] {
        let value = json!({"from":"backend","id":id,"data":n}).to_string();
        let rec = FutureRecord::to(rtc_serverkit::kafka::DELIVER_TOPIC)
            .partition(slot)
            .key(&bob_id)
            .payload(&value);
        producer
            .send(rec, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(
                bob.until(T, |f| f["type"] == "msg").await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        v
    };
    assert_eq!(ids, vec!["dup", "other"], "the second copy is dropped live");
    // And on replay.
    drop(bob);
    let mut bob = Connection::connect(&ep, &bob_id, resume, T).await.unwrap();
    let mut replayed = Vec::new();
    while let Ok(Some(f)) = bob.next(Duration::from_millis(700)).await {
        if f["type"] == "msg" {
            replayed.push(f["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(replayed, vec!["dup", "other"], "and on replay");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offline_for_an_hour_gets_everything_in_order_read_back_from_kafka() {
    // Default history bounds (1,000 messages, 300 s): of an hour of traffic only the last five
    // minutes are in memory; the rest comes back from Kafka.
    let stack = Stack::start(1, |_| {}).await;
    let ep = stack.endpoints();
    let phone = stack.client_on(0, "phone");
    let c = Connection::connect(&ep, &phone, None, T).await.unwrap();
    let start = c.offset.unwrap();
    drop(c);
    let others = rtc_e2e::offline::neighbours(&phone, support::SLOTS, 20);
    let last = rtc_e2e::offline::produce(
        &stack.kafka.bootstrap,
        support::SLOTS,
        &phone,
        &others,
        300,
        3000,
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let node = stack.nodes[0].node.clone();
    let slot = rtc_protocol::slot::slot_of(&phone, support::SLOTS);
    rtc_testkit::wait_for("the owner to consume", T, || {
        let done = node.last_offset(slot) >= last;
        async move { done }
    })
    .await
    .unwrap();
    let mut back = Connection::connect(&ep, &phone, Some(start), T)
        .await
        .unwrap();
    assert!(
        back.recovered,
        "an hour offline is within Kafka's retention"
    );
    let ids = next_msg_ids(&mut back, 300).await;
    let want: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
    assert_eq!(ids, want, "every message, in order");
    let extra = back.next(Duration::from_millis(500)).await;
    assert!(
        !matches!(&extra, Ok(Some(f)) if f["type"] == "msg"),
        "{extra:?}"
    );
    stack.shutdown().await;
}
