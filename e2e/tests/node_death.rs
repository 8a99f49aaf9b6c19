//! kill -9 of a socket node under traffic: the balancer notices in about a second (its
//! connection probe is refused) instead of a heartbeat TTL, the node's slots move at once, the
//! gateway stops sending upgrades to the dead address, and its clients are connected elsewhere
//! with nothing lost and nothing twice.

use rtc_client::Endpoints;
use rtc_e2e::stack::{GatewayHandle, Stack};
use rtc_e2e::traffic::Traffic;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_replaced_in_seconds_and_nothing_is_lost() {
    let mut stack = Stack::start(2, |_| {}).await;
    let doomed = stack.spawn_process_node("doomed").await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let ids: Vec<String> = (0..150).map(|i| format!("victim-{i}")).collect();
    let on_doomed = ids
        .iter()
        .filter(|c| stack.owner_of(c).as_deref() == Some("doomed"))
        .count();
    assert!(on_doomed >= 20, "the doomed node has clients ({on_doomed})");
    let traffic = Traffic::start(
        Endpoints::gateway(&gw.addr),
        &ids,
        Duration::from_millis(300),
    )
    .await;
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
            let back = traffic.ledger.lock().unwrap().reconnects >= on_doomed;
            async move { back }
        },
    )
    .await
    .unwrap();
    let reconnected_after = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = traffic.finish(Duration::from_secs(30)).await;
    let report = out.report;
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
    out.settled.unwrap();
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
