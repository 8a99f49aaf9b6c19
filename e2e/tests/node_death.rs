//! kill -9 of a socket node under traffic: the balancer notices in about a second (its
//! connection probe is refused) instead of a heartbeat TTL, the node's slots move at once, the
//! gateway stops sending upgrades to the dead address, and its clients are connected elsewhere
//! with nothing lost and nothing twice.

use rtc_client::Endpoints;
use rtc_e2e::stack::{GatewayHandle, Stack};
use rtc_loadtest::{run_client, Ledger, Pattern, Peers, Phase, Plan};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_replaced_in_seconds_and_nothing_is_lost() {
    let mut stack = Stack::start(2, |_| {}).await;
    let doomed = stack.spawn_process_node("doomed").await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let routes = gw.gw.routes.clone();
    rtc_testkit::wait_for(
        "the gateway to route to the process node",
        Duration::from_secs(20),
        || {
            let ok = matches!(
                routes.lookup("doomed"),
                rtc_gateway::route::Lookup::Ready(_)
            );
            async move { ok }
        },
    )
    .await
    .unwrap();
    let ids: Vec<String> = (0..150).map(|i| format!("victim-{i}")).collect();
    let on_doomed = ids
        .iter()
        .filter(|c| stack.owner_of(c).as_deref() == Some("doomed"))
        .count();
    assert!(on_doomed >= 20, "the doomed node has clients ({on_doomed})");
    let ledger = Arc::new(Mutex::new(Ledger::new()));
    let (phase_tx, phase_rx) = watch::channel(Phase::Sending);
    let start = Arc::new(tokio::sync::Barrier::new(ids.len() + 1));
    let plan = Plan {
        ep: Endpoints::gateway(&gw.addr),
        peers: Arc::new(Peers::new(ids.clone())),
        pattern: Pattern::Direct,
        interval: Duration::from_millis(300),
        pad: Arc::from(""),
        rooms: 1,
        handshakes: Arc::new(tokio::sync::Semaphore::new(64)),
        sources: Arc::new(Vec::new()),
    };
    let tasks: Vec<_> = (0..ids.len())
        .map(|k| {
            tokio::spawn(run_client(
                plan.clone(),
                k,
                phase_rx.clone(),
                ledger.clone(),
                start.clone(),
            ))
        })
        .collect();
    start.wait().await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let epoch = stack.bal.ring().epoch;
    doomed.signal(9);
    let killed = Instant::now();
    rtc_testkit::wait_for(
        "the ring to drop the dead node",
        Duration::from_secs(30),
        || {
            let gone = stack.bal.ring().slots_of("doomed").is_empty();
            async move { gone }
        },
    )
    .await
    .unwrap();
    let slots_moved_after = killed.elapsed();
    rtc_testkit::wait_for(
        "its clients to reconnect elsewhere",
        Duration::from_secs(30),
        || {
            let back = ledger.lock().unwrap().reconnects >= on_doomed;
            async move { back }
        },
    )
    .await
    .unwrap();
    let reconnected_after = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    phase_tx.send(Phase::Quiet).unwrap();
    let settled = rtc_testkit::wait_for("every message to settle", Duration::from_secs(30), || {
        let ok = ledger.lock().unwrap().settled();
        async move { ok }
    })
    .await;
    phase_tx.send(Phase::Done).unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let report = ledger.lock().unwrap().report((0.0, 0.0));
    let upstream_errors = gw
        .gw
        .metrics
        .upgrades
        .with_label_values(&["upstream_error"])
        .get();
    println!(
        "kill -9: {on_doomed} clients on the killed node; slots moved after {slots_moved_after:?} (epoch {epoch} -> {}); all reconnected after {reconnected_after:?}; gateway 502s {upstream_errors}; sent {} acked {} delivered {} lost {} duplicated {} reconnects {} closes {:?}",
        stack.bal.ring().epoch,
        report.sent,
        report.acked,
        report.delivered,
        report.lost,
        report.duplicated,
        report.reconnects,
        report.closes
    );
    settled.unwrap();
    assert_eq!((report.lost, report.duplicated), (0, 0));
    assert_eq!(report.connect_failures, 0);
    // A heartbeat TTL (10 s here) would be the floor without the probe.
    assert!(
        reconnected_after < Duration::from_secs(8),
        "clients of the killed node waited {reconnected_after:?}"
    );
    assert!(
        upstream_errors <= on_doomed as u64,
        "{upstream_errors} upgrades sent to the dead address"
    );
    assert!(report.per_node.keys().all(|n| n != "doomed"));
    gw.shutdown().await;
    stack.shutdown().await;
}
