//! A Redis flush and a routine Redis restart (no persistence: it comes back empty) under traffic
//! move nobody:
//! heartbeats vanish all at once, and the balancer and the gateway hold what they knew while the
//! nodes heartbeat again. 0 `move` frames, 0 refusals of new clients, 0 lost, 0 duplicated.

use rtc_client::{Connection, Endpoints};
use rtc_e2e::stack::{GatewayHandle, Stack};
use rtc_e2e::traffic::Traffic;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_moves_no_client_and_refuses_none() {
    // Heartbeats every 3 s: after the data is gone, the balancer (every 200 ms) and the gateway
    // (every second) surely read an empty or partial set before every node wrote again.
    let mut stack = Stack::start(2, |c| c.heartbeat_interval_ms = 3000).await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let ep = Endpoints::gateway(&gw.addr);
    let epoch_before = stack.bal.ring().epoch;
    let ids: Vec<String> = (0..100).map(|i| format!("steady-{i}")).collect();
    let traffic = Traffic::start(ep.clone(), &ids, Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // First a flush (connections stay, the data goes), later a restart (both go).
    let mut admin = rtc_serverkit::store::connect(&stack.redis.url)
        .await
        .unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    let flushed_at = Instant::now();
    let mut restarted = false;
    // New clients keep arriving through both and the grace that follows them.
    let (mut joined, mut refused) = (0, Vec::new());
    let until = Instant::now() + Duration::from_secs(14);
    let mut k = 0;
    while Instant::now() < until {
        if !restarted && flushed_at.elapsed() > Duration::from_secs(5) {
            stack.redis.restart().await.unwrap();
            restarted = true;
        }
        k += 1;
        match Connection::connect_once(&ep, &format!("newcomer-{k}"), None).await {
            Ok(_) => joined += 1,
            Err(e) => refused.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = traffic.finish(Duration::from_secs(20)).await;
    let report = out.report;
    println!(
        "redis restart: {} sent, {} acked, {} delivered, lost {}, duplicated {}, closes {:?}, reconnects {}; newcomers joined {joined}, refused {}; ring epoch {epoch_before} -> {}",
        report.sent,
        report.acked,
        report.delivered,
        report.lost,
        report.duplicated,
        report.closes,
        report.reconnects,
        refused.len(),
        stack.bal.ring().epoch
    );
    out.settled.unwrap();
    assert!(report.acked > 1000, "the clients really exchanged messages");
    assert!(
        report.closes.is_empty() && report.reconnects == 0,
        "no move frame and no dropped connection: {:?}",
        report.closes
    );
    assert!(refused.is_empty(), "refused newcomers: {refused:?}");
    assert!(joined > 20, "newcomers kept connecting ({joined})");
    assert_eq!((report.lost, report.duplicated), (0, 0));
    assert_eq!(
        stack.bal.ring().epoch,
        epoch_before,
        "the ring did not change"
    );
    gw.shutdown().await;
    stack.shutdown().await;
}
