//! Draining a node while 200 clients exchange messages (the load-test client, through the
//! gateway: resolve, then connect): every client ends on another node, no acked message is lost
//! and none is delivered twice.

use rtc_client::Endpoints;
use rtc_e2e::stack::{GatewayHandle, Stack};
use rtc_loadtest::{run_client, Ledger, Pattern, Peers, Phase, Plan};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_every_client_and_loses_nothing() {
    let stack = Stack::start(3, |c| {
        c.drain_duration_secs = 4;
        c.move_jitter_ms = 300;
    })
    .await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let ep = Endpoints::gateway(&gw.addr);
    let ids: Arc<Vec<String>> = Arc::new((0..200).map(|i| format!("user-{i}")).collect());
    let drained_id = stack.nodes[0].id.clone();
    let on_drained = ids
        .iter()
        .filter(|c| stack.owner_of(c).as_deref() == Some(drained_id.as_str()))
        .count();
    assert!(
        on_drained >= 30,
        "the drained node has a real share of clients ({on_drained})"
    );
    let ledger = Arc::new(Mutex::new(Ledger::new()));
    let (phase_tx, phase_rx) = watch::channel(Phase::Sending);
    let start = Arc::new(tokio::sync::Barrier::new(ids.len() + 1));
    let plan = Plan {
        ep,
        peers: Arc::new(Peers::new(ids.to_vec())),
        pattern: Pattern::Direct,
        interval: Duration::from_millis(400),
        pad: Arc::from(""),
        rooms: 1,
        handshakes: Arc::new(tokio::sync::Semaphore::new(64)),
        sources: Arc::new(Vec::new()),
    };
    let mut tasks = Vec::new();
    for k in 0..ids.len() {
        tasks.push(tokio::spawn(run_client(
            plan.clone(),
            k,
            phase_rx.clone(),
            ledger.clone(),
            start.clone(),
        )));
    }
    start.wait().await;
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
    phase_tx.send(Phase::Quiet).unwrap();
    // Wait (bounded) until every message sent is answered and every acked one has arrived: an
    // ack still in flight, or a delivery still on its way, is not a loss.
    let settled = rtc_testkit::wait_for("every message to settle", Duration::from_secs(20), || {
        let ok = ledger.lock().unwrap().settled();
        async move { ok }
    })
    .await;
    phase_tx.send(Phase::Done).unwrap();
    for t in tasks {
        t.await.unwrap();
    }

    let (report, lost) = {
        let l = ledger.lock().unwrap();
        (l.report((0.0, 0.0)), l.lost())
    };
    eprintln!("drain: {report:?} clients-on-drained-node {on_drained}");
    settled.unwrap_or_else(|e| panic!("{e}; lost: {:?}", lost.iter().take(10).collect::<Vec<_>>()));
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
