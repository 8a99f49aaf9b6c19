//! Traffic a client misses while it is offline: its own direct messages interleaved with other
//! clients' records of the same slot, stamped as if they were spread over the last `age` (so the
//! owner's in-memory history, bounded by HISTORY_MAX_AGE_SECS, keeps only the newest of them).

use rdkafka::producer::{FutureProducer, FutureRecord};
use rtc_protocol::slot::slot_of;
use std::time::Duration;

/// Clients other than `to` whose slot is `to`'s (the owner scans their records too).
pub fn neighbours(to: &str, slots: u32, n: usize) -> Vec<String> {
    let s = slot_of(to, slots);
    (0..1_000_000)
        .map(|k| format!("other-{k}"))
        .filter(|c| slot_of(c, slots) == s && c != to)
        .take(n)
        .collect()
}

/// Produces `mine` messages to `to` (ids `m0`, `m1`, …, payload = the index) and `fill` to
/// `others`, evenly interleaved, timestamps evenly from `age` ago to now. Returns the offset of
/// the last record.
pub async fn produce(
    bootstrap: &str,
    slots: u32,
    to: &str,
    others: &[String],
    mine: usize,
    fill: usize,
    age: Duration,
) -> anyhow::Result<i64> {
    let producer: FutureProducer =
        rtc_serverkit::kafka::producer_config(bootstrap, Duration::from_secs(30)).create()?;
    let slot = slot_of(to, slots) as i32;
    let total = mine + fill;
    let now = rtc_serverkit::telemetry::now_ms() as i64;
    let start = now - age.as_millis() as i64;
    let mut last = -1;
    let mut sent_mine = 0;
    let mut pending = Vec::new();
    for i in 0..total {
        // Mine at evenly spaced positions among the others.
        let is_mine = sent_mine < mine && (i * mine) / total.max(1) >= sent_mine;
        let (key, value) = if is_mine {
            let v = format!(r#"{{"from":"server","id":"m{sent_mine}","data":{sent_mine}}}"#);
            sent_mine += 1;
            (to.to_string(), v)
        } else {
            let o = &others[i % others.len()];
            (
                o.clone(),
                format!(r#"{{"from":"server","id":"f{i}","data":{i}}}"#),
            )
        };
        let ts = start + (now - start) * i as i64 / total.max(1) as i64;
        let rec = FutureRecord::to(rtc_serverkit::kafka::DELIVER_TOPIC)
            .partition(slot)
            .key(&key)
            .payload(&value)
            .timestamp(ts);
        let fut = producer
            .send_result(rec)
            .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?;
        pending.push(fut);
        if pending.len() == 10_000 || i + 1 == total {
            for f in pending.drain(..) {
                let d = f
                    .await
                    .map_err(|_| anyhow::anyhow!("cancelled"))?
                    .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))?;
                last = last.max(d.offset);
            }
        }
    }
    anyhow::ensure!(sent_mine == mine, "all of the client's messages produced");
    Ok(last)
}
