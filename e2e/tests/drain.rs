//! Draining a node while 200 clients exchange messages (the load-test client, through the
//! gateway: resolve, then connect): every client ends on another node, no acked message is lost
//! and none is delivered twice.

use rtc_client::Endpoints;
use rtc_e2e::stack::{GatewayHandle, Stack};
use rtc_e2e::traffic::Traffic;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_every_client_and_loses_nothing() {
    let stack = Stack::start(3, |c| {
        c.drain_duration_secs = 4;
        c.move_jitter_ms = 300;
    })
    .await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let ep = Endpoints::gateway(&gw.addr);
    let ids: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let drained_id = stack.nodes[0].id.clone();
    let on_drained = ids
        .iter()
        .filter(|c| stack.owner_of(c).as_deref() == Some(drained_id.as_str()))
        .count();
    assert!(
        on_drained >= 30,
        "the drained node has a real share of clients ({on_drained})"
    );
    let traffic = Traffic::start(ep, &ids, Duration::from_millis(400)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let drained = stack.nodes[0].addr.to_string();
    let r = rtc_client::http::post(&drained, "/drain").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        rtc_client::http::get(&drained, "/readyz")
            .await
            .unwrap()
            .status,
        503,
        "readiness fails at once"
    );
    assert_eq!(
        rtc_client::http::get(&drained, "/healthz")
            .await
            .unwrap()
            .status,
        200,
        "liveness stays"
    );
    rtc_testkit::wait_for("the drain to finish", Duration::from_secs(40), || {
        let addr = drained.clone();
        async move {
            rtc_client::http::get(&addr, "/drain/status")
                .await
                .is_ok_and(|r| r.body.contains("\"state\":\"drained\""))
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = traffic.finish(Duration::from_secs(20)).await;

    let (report, lost) = (out.report, out.lost);
    eprintln!("drain: {report:?} clients-on-drained-node {on_drained}");
    out.settled
        .unwrap_or_else(|e| panic!("{e}; lost: {lost:?}"));
    assert!(report.acked > 500, "the clients really exchanged messages");
    assert_eq!(
        (report.lost, report.duplicated, report.connect_failures),
        (0, 0, 0)
    );
    assert_eq!(
        report.per_node.get(&drained_id),
        None,
        "no client is left on the drained node"
    );
    assert_eq!(report.clients, 200);
    assert!(
        report.reconnects >= on_drained,
        "every client of the drained node reconnected"
    );
    assert_eq!(
        stack.nodes[0]
            .node
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    stack.shutdown().await;
}
