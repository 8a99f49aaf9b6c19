//! A socket node on Kubernetes is stopped the way a kubelet does it: the preStop hook
//! (`GET /drain`, which answers once the drain is over), then SIGTERM; or SIGTERM alone, which
//! drains too. Either way readiness fails first, clients are told to `move` (not cut off with
//! 1001), they reconnect elsewhere, nothing is lost, and the process exits by itself.

use rtc_client::Endpoints;
use rtc_e2e::stack::{GatewayHandle, Stack};
use rtc_e2e::traffic::Traffic;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prestop_get_drain_then_sigterm_and_sigterm_alone_both_move_clients_first() {
    let mut stack = Stack::start(1, |_| {}).await;
    let hooked = stack.spawn_process_node("hooked").await;
    let termed = stack.spawn_process_node("termed").await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let ids: Vec<String> = (0..120).map(|i| format!("drained-{i}")).collect();
    let on = |node: &str| {
        ids.iter()
            .filter(|c| stack.owner_of(c).as_deref() == Some(node))
            .count()
    };
    let (on_hooked, on_termed) = (on("hooked"), on("termed"));
    assert!(
        on_hooked >= 10 && on_termed >= 10,
        "{on_hooked} / {on_termed}"
    );
    let traffic = Traffic::start(
        Endpoints::gateway(&gw.addr),
        &ids,
        Duration::from_millis(300),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The preStop hook: GET /drain answers once the node is empty; then SIGTERM.
    let hooked_addr = (stack.endpoints().ws)("hooked").unwrap();
    let t = Instant::now();
    let r = rtc_client::http::get(&hooked_addr, "/drain").await.unwrap();
    let hook_took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"state\":\"drained\""), "{}", r.body);
    hooked.signal(15);
    // SIGTERM alone: readiness fails at once, then the node drains and exits.
    termed.signal(15);
    let termed_addr = (stack.endpoints().ws)("termed").unwrap();
    // The signal arrives asynchronously; readiness fails while the node still serves its
    // clients (it has some to move).
    rtc_testkit::wait_for(
        "readiness to fail after SIGTERM",
        Duration::from_secs(5),
        || {
            let addr = termed_addr.clone();
            async move {
                rtc_client::http::get(&addr, "/readyz")
                    .await
                    .is_ok_and(|r| r.status == 503 && r.body.contains("draining"))
            }
        },
    )
    .await
    .unwrap();
    let mut exits = Vec::new();
    for (name, mut child) in [("hooked", hooked), ("termed", termed)] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(status.success(), "{name} exits cleanly: {status}");
        exits.push((name, t.elapsed()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = traffic.finish(Duration::from_secs(30)).await;
    let report = out.report;
    println!(
        "preStop + SIGTERM: {on_hooked} + {on_termed} clients; GET /drain answered after {hook_took:?}; exits {exits:?}; closes {:?}; lost {} duplicated {}",
        report.closes, report.lost, report.duplicated
    );
    out.settled.unwrap();
    assert_eq!(
        (report.lost, report.duplicated, report.connect_failures),
        (0, 0, 0)
    );
    assert!(
        report.closes.get("move").copied().unwrap_or(0) >= (on_hooked + on_termed) as u64,
        "clients were moved: {:?}",
        report.closes
    );
    assert_eq!(
        report.closes.get("1001"),
        None,
        "no client was cut off with 1001: {:?}",
        report.closes
    );
    assert!(report
        .per_node
        .keys()
        .all(|n| n != "hooked" && n != "termed"));
    gw.shutdown().await;
    stack.shutdown().await;
}
