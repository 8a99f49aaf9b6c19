//! Draining a node while 200 clients exchange messages: every client ends on another node, no
//! acked message is lost and none is delivered twice.

use rtc_devkit::client::Client;
use rtc_devkit::stack::{self as support, Stack};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Default)]
struct Ledger {
    /// (sender, id) → recipient, for every message sent.
    sent: HashMap<(String, String), String>,
    acked: HashSet<(String, String)>,
    ack_offset: HashMap<(String, String), i64>,
    /// Every (node, resumeOffset, recovered) a client connected with.
    history: HashMap<String, Vec<(String, Option<i64>, bool)>>,
    errors: usize,
    /// (recipient, sender, id) → times delivered.
    delivered: HashMap<(String, String, String), usize>,
    reconnects: usize,
    final_node: HashMap<String, String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Sending,
    Quiet,
    Done,
}

async fn client_task(
    ep: rtc_devkit::client::Endpoints,
    me: String,
    peers: Arc<Vec<String>>,
    mut phase: watch::Receiver<Phase>,
    ledger: Arc<Mutex<Ledger>>,
    ready: Arc<tokio::sync::Barrier>,
) {
    let t = Duration::from_secs(30);
    let mut c = Client::connect(&ep, &me, None, t).await.expect("connects");
    ready.wait().await;
    let mut seq = 0u64;
    let mut tick =
        tokio::time::interval(Duration::from_millis(400) + Duration::from_millis(rand_ms(&me)));
    loop {
        let sending = *phase.borrow() == Phase::Sending;
        tokio::select! {
            _ = phase.changed() => {
                if *phase.borrow() == Phase::Done { break; }
            }
            _ = tick.tick(), if sending => {
                seq += 1;
                let id = format!("{seq}");
                let to = peers[(seq as usize * 7 + me.len()) % peers.len()].clone();
                ledger.lock().unwrap().sent.insert((me.clone(), id.clone()), to.clone());
                if c.send(&id, &to, json!({"seq": seq})).await.is_err() {
                    reconnect(&mut c, &ledger).await;
                }
            }
            f = c.next(Duration::from_secs(3600)) => match f {
                Ok(Some(f)) => match f["type"].as_str() {
                    Some("ack") => {
                        let key = (me.clone(), f["id"].as_str().unwrap().to_string());
                        let mut l = ledger.lock().unwrap();
                        l.ack_offset.insert(key.clone(), f["offset"].as_i64().unwrap_or(-9));
                        l.acked.insert(key);
                    }
                    Some("error") => ledger.lock().unwrap().errors += 1,
                    Some("msg") => {
                        let key = (me.clone(), f["from"].as_str().unwrap().to_string(), f["id"].as_str().unwrap().to_string());
                        *ledger.lock().unwrap().delivered.entry(key).or_default() += 1;
                    }
                    Some("move") => {
                        tokio::time::sleep(Duration::from_millis(f["delayMs"].as_u64().unwrap_or(0))).await;
                        reconnect(&mut c, &ledger).await;
                    }
                    Some("close") => reconnect(&mut c, &ledger).await,
                    _ => {}
                },
                _ => reconnect(&mut c, &ledger).await,
            }
        }
    }
    ledger.lock().unwrap().final_node.insert(me, c.node.clone());
}

fn rand_ms(s: &str) -> u64 {
    (rtc_common::slot::murmur2(s.as_bytes()) as u32 % 200) as u64
}

async fn reconnect(c: &mut Client, ledger: &Mutex<Ledger>) {
    let resume = c.offset;
    c.reconnect(Duration::from_secs(30))
        .await
        .expect("reconnects within 30 s");
    let mut l = ledger.lock().unwrap();
    l.reconnects += 1;
    l.history
        .entry(c.client_id.clone())
        .or_default()
        .push((c.node.clone(), resume, c.recovered));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_every_client_and_loses_nothing() {
    let stack = Stack::start(3, |c| {
        c.drain_duration_secs = 4;
        c.move_jitter_ms = 300;
    })
    .await;
    let ep = stack.endpoints();
    let ids: Arc<Vec<String>> = Arc::new((0..200).map(|i| format!("user-{i}")).collect());
    let on_drained = ids
        .iter()
        .filter(|c| stack.owner_of(c).as_deref() == Some(stack.nodes[0].id.as_str()))
        .count();
    assert!(
        on_drained >= 30,
        "the drained node has a real share of clients ({on_drained})"
    );
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (phase_tx, phase_rx) = watch::channel(Phase::Sending);
    let ready = Arc::new(tokio::sync::Barrier::new(ids.len() + 1));
    let mut tasks = Vec::new();
    for me in ids.iter() {
        tasks.push(tokio::spawn(client_task(
            ep.clone(),
            me.clone(),
            ids.clone(),
            phase_rx.clone(),
            ledger.clone(),
            ready.clone(),
        )));
    }
    ready.wait().await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let drained = stack.nodes[0].addr.to_string();
    let r = rtc_devkit::client::http_post(&drained, "/drain")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let ready_now = rtc_devkit::client::http_get(&drained, "/readyz")
        .await
        .unwrap();
    assert_eq!(ready_now.status, 503, "readiness fails at once");
    assert_eq!(
        rtc_devkit::client::http_get(&drained, "/healthz")
            .await
            .unwrap()
            .status,
        200,
        "liveness stays"
    );
    rtc_devkit::wait_for("the drain to finish", Duration::from_secs(40), || {
        let addr = drained.clone();
        async move {
            rtc_devkit::client::http_get(&addr, "/drain/status")
                .await
                .is_ok_and(|r| r.body.contains("\"state\":\"drained\""))
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    phase_tx.send(Phase::Quiet).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Wait until acks stop arriving and every acked message has arrived (bounded), then stop:
    // an ack still in flight when sending stops must not be counted before its delivery.
    let mut last_acked = usize::MAX;
    let settled = rtc_devkit::wait_for("acked messages to arrive", Duration::from_secs(20), || {
        let l = ledger.lock().unwrap();
        let stable = std::mem::replace(&mut last_acked, l.acked.len()) == l.acked.len();
        let ok = stable
            && l.acked.iter().all(|(from, id)| {
                let to = &l.sent[&(from.clone(), id.clone())];
                l.delivered
                    .contains_key(&(to.clone(), from.clone(), id.clone()))
            });
        async move { ok }
    })
    .await;
    phase_tx.send(Phase::Done).unwrap();
    for t in tasks {
        t.await.unwrap();
    }

    let l = ledger.lock().unwrap();
    let lost: Vec<_> = l
        .acked
        .iter()
        .filter(|(from, id)| {
            !l.delivered.contains_key(&(
                l.sent[&(from.clone(), id.clone())].clone(),
                from.clone(),
                id.clone(),
            ))
        })
        .collect();
    let duplicated = l.delivered.values().filter(|&&n| n > 1).count();
    let on_old = l
        .final_node
        .values()
        .filter(|n| **n == stack.nodes[0].id)
        .count();
    eprintln!(
        "drain: sent {} acked {} delivered {} lost {} duplicated {} errors {} reconnects {} moved-clients {on_drained}",
        l.sent.len(),
        l.acked.len(),
        l.delivered.len(),
        lost.len(),
        duplicated,
        l.errors,
        l.reconnects
    );
    for (from, id) in lost.iter().take(5) {
        let to = &l.sent[&(from.clone(), id.clone())];
        eprintln!(
            "lost {from}#{id} -> {to} (slot {}) at offset {:?}; recipient connections: {:?}",
            rtc_common::slot::slot_of(to, support::SLOTS),
            l.ack_offset.get(&(from.clone(), id.clone())),
            l.history.get(to)
        );
    }
    settled.unwrap_or_else(|e| panic!("{e}; lost: {:?}", lost.iter().take(10).collect::<Vec<_>>()));
    assert!(l.acked.len() > 500, "the clients really exchanged messages");
    assert_eq!(lost.len(), 0);
    assert_eq!(duplicated, 0);
    assert_eq!(on_old, 0, "no client is left on the drained node");
    assert!(
        l.reconnects >= on_drained,
        "every client of the drained node reconnected"
    );
    assert_eq!(
        stack.nodes[0]
            .node
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    drop(l);
    stack.shutdown().await;
}
