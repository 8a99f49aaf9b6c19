//! The real Kafka broker stopped for about ten seconds under traffic, then started again:
//! senders get retryable `kafka_unavailable` errors (never a silent drop), nothing acked is lost
//! or duplicated, and delivery resumes without restarting any node. Needs the real broker
//! (`testkit/tools/kafka`); scripts/test.sh runs it in the real-broker step.

use rtc_client::Connection;
use rtc_e2e::stack::{Stack, SLOTS};
use rtc_e2e::traffic::Traffic;
use rtc_testkit::kafka::Kafka;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_broker_outage_gives_retryable_errors_and_loses_nothing() {
    let kafka = Kafka::broker(SLOTS).await.expect("the real broker starts");
    let stack = Stack::start_on(kafka, 2, |c| c.kafka_send_timeout_ms = 2000).await;
    let ep = stack.endpoints();
    let ids: Vec<String> = (0..60).map(|i| format!("outage-{i}")).collect();
    let traffic = Traffic::start(ep.clone(), &ids, Duration::from_millis(300)).await;
    let (alice_id, bob_id) = (stack.client_on(0, "alice"), stack.client_on(1, "bob"));
    let mut alice = Connection::connect(&ep, &alice_id, None, T).await.unwrap();
    let mut bob = Connection::connect(&ep, &bob_id, None, T).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    stack.kafka.stop_broker().await.unwrap();
    let down_at = Instant::now();
    // A send while the broker is down is answered with a retryable error, not dropped.
    alice.send("during", &bob_id, 1).await.unwrap();
    let f = alice
        .until(T, |f| f["id"] == "during")
        .await
        .expect("an answer to the send");
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["code"], "kafka_unavailable", "{f}");
    assert_eq!(f["retryable"], true, "{f}");
    let left = Duration::from_secs(10).saturating_sub(down_at.elapsed());
    tokio::time::sleep(left).await;
    stack.kafka.start_broker().await.unwrap();
    let up_at = Instant::now();

    // The same nodes deliver again: a retried send is acked and reaches bob.
    let mut attempt = 0;
    let acked_after = loop {
        attempt += 1;
        let id = format!("after-{attempt}");
        alice.send(&id, &bob_id, 2).await.unwrap();
        let f = alice.until(T, |f| f["id"] == id.as_str()).await.unwrap();
        if f["type"] == "ack" {
            break up_at.elapsed();
        }
        assert_eq!(f["retryable"], true, "{f}");
        assert!(
            up_at.elapsed() < Duration::from_secs(60),
            "sends never recovered"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let m = bob
        .until(T, |f| {
            f["type"] == "msg" && f["id"] == format!("after-{attempt}")
        })
        .await
        .unwrap();
    assert_eq!(m["from"], alice_id.as_str());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = traffic.finish(Duration::from_secs(60)).await;
    let report = out.report;
    println!(
        "broker outage: down {:.1} s; sends acked again {acked_after:?} after the start; load: sent {} acked {} refused (errors) {} delivered {} lost {} duplicated {} reconnects {}",
        up_at.duration_since(down_at).as_secs_f64(),
        report.sent,
        report.acked,
        report.errors,
        report.delivered,
        report.lost,
        report.duplicated,
        report.reconnects
    );
    out.settled.unwrap();
    assert!(report.errors > 0, "senders were told during the outage");
    assert_eq!((report.lost, report.duplicated), (0, 0));
    stack.shutdown().await;
}
