//! End-to-end tests' harness: the whole system in one process on real Redis and Kafka (a
//! balancer, socket nodes, optionally the gateway) and assertions shared by the tests in
//! `tests/`, which are every test that crosses services.

pub mod kube;
pub mod offline;
pub mod stack;
pub mod traffic;

use rtc_client::{Connection, Endpoints, Error, HttpReply};

/// Asserts that connecting `client_id` now is refused with `status`, `Retry-After` and `code`
/// (the documented JSON body), and returns the reply.
pub async fn expect_refusal(
    ep: &Endpoints,
    client_id: &str,
    status: u16,
    retry_after: Option<&str>,
    code: &str,
) -> HttpReply {
    let r = match Connection::connect_once(ep, client_id, None).await {
        Ok(_) => panic!("{client_id} was accepted; expected {status} {code}"),
        Err(Error::Refused(r)) => r,
        Err(e) => panic!("not an HTTP refusal: {e}"),
    };
    assert_eq!(
        (r.status, r.retry_after.as_deref()),
        (status, retry_after),
        "{}",
        r.body
    );
    assert!(r.body.contains(code), "{}", r.body);
    r
}

/// The path of a binary of this workspace built next to the running test (`cargo build --bins`
/// puts them there; scripts/test.sh builds them first).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("tests run from target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --bins` first",
        bin.display()
    );
    bin
}

/// Waits up to `limit` until the ledger owes nothing (see `Ledger::settled`).
pub async fn wait_settled(
    ledger: &std::sync::Mutex<rtc_loadtest::Ledger>,
    limit: std::time::Duration,
) -> anyhow::Result<()> {
    rtc_testkit::wait_for("every message to settle", limit, || {
        let ok = ledger.lock().expect("ledger lock").settled();
        async move { ok }
    })
    .await
}

/// Every record of partition 0 of `topic` so far, in log order: (Kafka timestamp ms, payload).
pub fn read_topic(bootstrap: &str, topic: &str) -> Vec<(i64, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    use std::time::{Duration, Instant};
    let c: BaseConsumer = rtc_serverkit::kafka::base_config(bootstrap)
        .set("group.id", "rtc-e2e-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
        .expect("partition 0");
    c.assign(&tpl).expect("assigned");
    let (_, high) = c
        .fetch_watermarks(topic, 0, Duration::from_secs(5))
        .expect("watermarks");
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(20);
    while out.len() < high as usize && Instant::now() < end {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            out.push((
                m.timestamp().to_millis().unwrap_or(0),
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    assert_eq!(out.len(), high as usize, "read the whole of {topic}");
    out
}
