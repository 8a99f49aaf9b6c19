//! Room history and resume on real Redis and Kafka: `join` with `last` and `since`, message
//! offsets, `recovered:false` past the bounds, and the Rust SDK rejoining each room after a
//! reconnect with exactly the room messages it missed.

use rtc_client::{Client, Connection, Event, Options};
use rtc_e2e::stack::Stack;
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Publishes `ids` to `room` from `c`, each acked before the next; returns the acked offsets.
async fn publish_acked(c: &mut Connection, room: &str, ids: &[&str]) -> Vec<i64> {
    let mut offsets = Vec::new();
    for id in ids {
        c.send_text(json!({"type":"publish","id":id,"room":room,"data":id}).to_string())
            .await
            .unwrap();
        let ack = c
            .until(T, |f| f["type"] == "ack" && f["id"] == *id)
            .await
            .unwrap();
        offsets.push(ack["offset"].as_i64().unwrap());
    }
    offsets
}

/// Joins with `extra` fields; returns the `joined` frame and the next `n` room messages' ids.
async fn join(c: &mut Connection, room: &str, extra: Value, n: usize) -> (Value, Vec<String>) {
    let mut frame = json!({"type":"join","id":"j","room":room});
    for (k, v) in extra.as_object().unwrap() {
        frame[k] = v.clone();
    }
    c.send_text(frame.to_string()).await.unwrap();
    let joined = c.until(T, |f| f["type"] == "joined").await.unwrap();
    (joined, join_ids(c, room, n).await)
}

/// The ids of the next `n` messages of `room` on `c`.
async fn join_ids(c: &mut Connection, room: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..n {
        let m = c
            .until(T, |f| f["type"] == "msg" && f["room"] == room)
            .await
            .unwrap();
        ids.push(m["id"].as_str().unwrap().to_string());
    }
    ids
}

/// Nothing more arrives on `c` for a while (no room message twice).
async fn quiet(c: &mut Connection) {
    match c.next(Duration::from_millis(700)).await {
        Err(rtc_client::Error::Timeout(_)) | Ok(None) => {}
        other => panic!("nothing more expected: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_gives_room_history_by_count_or_since_an_offset() {
    let stack = Stack::start(2, |c| c.room_history_max_messages = 5).await;
    let ep = stack.endpoints();
    let mut bob = Connection::connect(&ep, &stack.client_on(1, "bob"), None, T)
        .await
        .unwrap();
    // A member on node 0 shows when that node has consumed the messages (an ack means Kafka has
    // a message; each node's rooms reader gets it a little later).
    let mut watcher = Connection::connect(&ep, &stack.client_on(0, "watcher"), None, T)
        .await
        .unwrap();
    join(&mut watcher, "chat", json!({}), 0).await;
    let offsets = publish_acked(&mut bob, "chat", &["m1", "m2", "m3"]).await;
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    join_ids(&mut watcher, "chat", 3).await;

    // History on join: the last two, then live messages, each with its room offset.
    let mut alice = Connection::connect(&ep, &stack.client_on(0, "alice"), None, T)
        .await
        .unwrap();
    let (joined, ids) = join(&mut alice, "chat", json!({"last": 2}), 2).await;
    assert_eq!(ids, ["m2", "m3"]);
    assert_eq!(joined["recovered"], true);
    assert!(joined["offset"].as_i64().unwrap() >= offsets[2], "{joined}");
    quiet(&mut alice).await;
    let o4 = publish_acked(&mut bob, "chat", &["m4"]).await[0];
    let live = alice.until(T, |f| f["type"] == "msg").await.unwrap();
    assert_eq!(
        (live["id"].as_str(), live["offset"].as_i64()),
        (Some("m4"), Some(o4))
    );

    // Offline: alice misses m5..m7 and comes back with the newest offset she had.
    alice.close().await.unwrap();
    publish_acked(&mut bob, "chat", &["m5", "m6", "m7"]).await;
    let mut alice = Connection::connect(&ep, &stack.client_on(0, "alice"), None, T)
        .await
        .unwrap();
    let (joined, ids) = join(&mut alice, "chat", json!({"since": o4}), 3).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(ids, ["m5", "m6", "m7"]);
    quiet(&mut alice).await;

    // Past the bound (5 per room here): m1 is gone, so a resume from before it is not recovered;
    // it still gets what the node holds.
    let mut carol = Connection::connect(&ep, &stack.client_on(1, "carol"), None, T)
        .await
        .unwrap();
    let (joined, ids) = join(&mut carol, "chat", json!({"since": offsets[0] - 1}), 5).await;
    assert_eq!(joined["recovered"], false, "{joined}");
    assert_eq!(ids, ["m3", "m4", "m5", "m6", "m7"]);
    // A bad `since` is refused with a reason.
    carol
        .send_text(json!({"type":"join","id":"bad","room":"chat","since":-5}).to_string())
        .await
        .unwrap();
    let err = carol.until(T, |f| f["type"] == "error").await.unwrap();
    assert_eq!(
        (err["id"].as_str(), err["code"].as_str()),
        (Some("bad"), Some("bad_request"))
    );
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_later_has_the_room_history_from_kafka() {
    let mut stack = Stack::start(1, |_| {}).await;
    let ep = stack.endpoints();
    let mut bob = Connection::connect(&ep, &stack.client_on(0, "bob"), None, T)
        .await
        .unwrap();
    publish_acked(&mut bob, "lobby", &["a", "b", "c"]).await;
    let i = stack.add_node().await;
    stack.settle().await;
    let mut dave = Connection::connect(&ep, &stack.client_on(i, "dave"), None, T)
        .await
        .unwrap();
    assert_eq!(dave.node, stack.nodes[i].id);
    let (joined, ids) = join(&mut dave, "lobby", json!({"last": 10}), 3).await;
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(joined["recovered"], true);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_rejoins_after_a_reconnect_with_exactly_the_room_messages_it_missed() {
    let mut stack = Stack::start(2, |_| {}).await;
    let ep = stack.endpoints();
    let mut opts = Options::new("unused:0", &stack.client_on(0, "erin"));
    opts.endpoints = ep.clone();
    let mut erin = Client::connect(opts).await.unwrap();
    erin.join("news").await.unwrap();
    let mut joined = false;
    while !joined {
        joined = matches!(erin.next_event(T).await.unwrap(), Event::Joined { .. });
    }
    let mut bob = Connection::connect(&ep, &stack.client_on(1, "bob"), None, T)
        .await
        .unwrap();
    publish_acked(&mut bob, "news", &["n1"]).await;
    match erin.next_event(T).await.unwrap() {
        Event::Msg(m) => assert_eq!(m.id, "n1"),
        other => panic!("{other:?}"),
    }
    // Erin's node stops while bob keeps publishing; she reconnects elsewhere and rejoins.
    stack.stop_node(0).await;
    publish_acked(&mut bob, "news", &["n2", "n3", "n4"]).await;
    let mut got = Vec::new();
    let mut rejoined = None;
    while got.len() < 3 || rejoined.is_none() {
        match erin.next_event(T).await.unwrap() {
            Event::Msg(m) => got.push(m.id),
            Event::Joined { recovered, .. } => rejoined = Some(recovered),
            _ => {}
        }
    }
    publish_acked(&mut bob, "news", &["n5"]).await;
    match erin.next_event(T).await.unwrap() {
        Event::Msg(m) => got.push(m.id),
        other => panic!("{other:?}"),
    }
    assert_eq!(rejoined, Some(true));
    assert_eq!(got, ["n2", "n3", "n4", "n5"]);
    assert!(erin.reconnects() >= 1);
    assert_ne!(erin.node(), stack.nodes[0].id);
    let extra = erin.next_event(Duration::from_millis(700)).await;
    assert!(extra.is_err(), "no room message twice: {extra:?}");
    stack.shutdown().await;
}
