//! Presence on real Redis and Kafka: who is in a room, who is online, join/leave events — and a
//! node killed with SIGKILL takes exactly its members out of presence within HEARTBEAT_TTL_SECS
//! (the node's heartbeat key is their lease), with a `leave` event for each.

use rtc_client::Connection;
use rtc_e2e::stack::Stack;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

async fn ask(c: &mut Connection, frame: Value) -> Value {
    let id = frame["id"].as_str().unwrap().to_string();
    c.send_text(frame.to_string()).await.unwrap();
    c.until(T, |f| f["id"] == id.as_str() && f["type"] != "ack")
        .await
        .unwrap()
}

async fn members(c: &mut Connection, room: &str, n: &mut u32) -> Vec<String> {
    *n += 1;
    let a = ask(
        c,
        json!({"type":"presence","id":format!("q{n}"),"room":room}),
    )
    .await;
    assert_eq!(a["type"], "presence", "{a}");
    assert_eq!(a["truncated"], false);
    serde_json::from_value(a["members"].clone()).unwrap()
}

/// A clientId with `prefix` whose slot `node` owns.
fn client_of(stack: &Stack, node: &str, prefix: &str) -> String {
    (0..100_000)
        .map(|k| format!("{prefix}-{k}"))
        .find(|c| stack.owner_of(c).as_deref() == Some(node))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_takes_exactly_its_members_out_of_presence() {
    let mut stack = Stack::start(2, |_| {}).await;
    let doomed = stack.spawn_process_node("doomed").await;
    let ep = stack.endpoints();
    let (n0, n1) = (stack.nodes[0].id.clone(), stack.nodes[1].id.clone());
    let mut watcher = Connection::connect(&ep, &client_of(&stack, &n0, "watcher"), None, T)
        .await
        .unwrap();
    watcher
        .send_text(json!({"type":"join","id":"w","room":"team","presence":true}).to_string())
        .await
        .unwrap();
    watcher.until(T, |f| f["type"] == "joined").await.unwrap();
    let names = [
        client_of(&stack, "doomed", "ann"),
        client_of(&stack, "doomed", "abe"),
        client_of(&stack, &n0, "ben"),
        client_of(&stack, &n1, "cal"),
    ];
    let mut conns = Vec::new();
    for name in &names {
        let mut c = Connection::connect(&ep, name, None, T).await.unwrap();
        c.send_text(json!({"type":"join","room":"team"}).to_string())
            .await
            .unwrap();
        c.until(T, |f| f["type"] == "joined").await.unwrap();
        conns.push(c);
    }
    assert_eq!(conns[0].node, "doomed");
    // Everyone's join is announced to the watcher.
    let mut joined = BTreeSet::new();
    while joined.len() < names.len() {
        let e = watcher
            .until(T, |f| f["type"] == "member" && f["event"] == "join")
            .await
            .unwrap();
        if e["clientId"] != watcher.client_id.as_str() {
            joined.insert(e["clientId"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(joined, names.iter().cloned().collect());
    let mut everyone: Vec<String> = names.to_vec();
    everyone.push(watcher.client_id.clone());
    everyone.sort();
    let mut q = 0;
    // Presence is written off the connection path: wait for the last writes to land.
    let until = Instant::now() + T;
    while members(&mut watcher, "team", &mut q).await != everyone {
        assert!(Instant::now() < until, "presence never showed everyone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let online = ask(
        &mut watcher,
        json!({"type":"online","id":"o1","clientIds":[names[0], names[2], "nobody"]}),
    )
    .await;
    let mut want = vec![names[0].clone(), names[2].clone()];
    want.sort();
    assert_eq!(online["online"], json!(want));

    // Leaving is announced and taken out at once.
    conns[3]
        .send_text(json!({"type":"leave","id":"l","room":"team"}).to_string())
        .await
        .unwrap();
    let e = watcher
        .until(T, |f| f["type"] == "member" && f["event"] == "leave")
        .await
        .unwrap();
    assert_eq!(e["clientId"], names[3].as_str());
    everyone.retain(|c| *c != names[3]);

    // SIGKILL: no goodbye from the node. Its two members vanish; nobody else does.
    doomed.signal(9);
    let killed = Instant::now();
    let survivors: Vec<String> = everyone
        .iter()
        .filter(|c| **c != names[0] && **c != names[1])
        .cloned()
        .collect();
    let vanished_after = loop {
        let now = members(&mut watcher, "team", &mut q).await;
        for s in &survivors {
            assert!(now.contains(s), "{s} stays present: {now:?}");
        }
        if now == survivors {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "still {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // A survivor cleans up after the dead node and announces each departure once.
    let mut left = BTreeSet::new();
    while left.len() < 2 {
        let e = watcher
            .until(T, |f| f["type"] == "member" && f["event"] == "leave")
            .await
            .unwrap();
        left.insert(e["clientId"].as_str().unwrap().to_string());
    }
    let events_after = killed.elapsed();
    assert_eq!(
        left,
        [names[0].clone(), names[1].clone()].into_iter().collect()
    );
    let online = ask(
        &mut watcher,
        json!({"type":"online","id":"o2","clientIds":[names[0], names[2]]}),
    )
    .await;
    assert_eq!(online["online"], json!([names[2]]));
    println!(
        "presence after kill -9 (HEARTBEAT_TTL_SECS 10): members gone from answers after {vanished_after:?}, leave events after {events_after:?}"
    );
    // The heartbeat TTL bounds it (10 s here), plus the survivors' sweep period.
    assert!(
        vanished_after < Duration::from_secs(12),
        "{vanished_after:?}"
    );
    stack.shutdown().await;
}
