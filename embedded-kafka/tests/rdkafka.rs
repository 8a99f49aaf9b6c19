//! The embedded broker driven by librdkafka with the settings the socket nodes use
//! (rtc-serverkit): topic set-up, idempotent produce, assigned consumers, watermarks, lookups by
//! time, an outage, and the byte bound.

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use rtc_embedded_kafka::{Config, EmbeddedKafka};
use rtc_serverkit::kafka::{
    assigned_consumer_config, ensure_topics, partition_counts, producer_config, DELIVER_TOPIC,
};
use std::collections::BTreeMap;
use std::time::Duration;

const SLOTS: u32 = 8;

fn start(cfg: Config) -> EmbeddedKafka {
    EmbeddedKafka::start("127.0.0.1:0".parse().unwrap(), cfg).expect("embedded Kafka starts")
}

fn producer(k: &EmbeddedKafka, timeout: Duration) -> FutureProducer {
    producer_config(&k.bootstrap(), timeout).create().unwrap()
}

/// Sends `n` keyed messages over `partitions` and returns partition → [(offset, payload)].
async fn send(p: &FutureProducer, n: usize, size: usize) -> BTreeMap<i32, Vec<(i64, String)>> {
    let mut acked: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let body = format!("{i:06}{}", "x".repeat(size.saturating_sub(6)));
            let partition = (i % SLOTS as usize) as i32;
            let f = p.send_result(
                FutureRecord::to(DELIVER_TOPIC)
                    .partition(partition)
                    .key("k")
                    .payload(&body),
            );
            let f = f.map_err(|(e, _)| e).expect("queued");
            (body, f)
        })
        .collect();
    for (body, f) in sends {
        let d = f.await.unwrap().map_err(|(e, _)| e).expect("acked");
        acked.entry(d.partition).or_default().push((d.offset, body));
    }
    acked
}

/// Reads every partition from `from` (per partition) up to its high watermark.
fn read_all(k: &EmbeddedKafka, from: &BTreeMap<i32, i64>) -> BTreeMap<i32, Vec<(i64, String)>> {
    let c: BaseConsumer = assigned_consumer_config(&k.bootstrap(), "test", 500)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut want = 0;
    for p in 0..SLOTS as i32 {
        let (_, high) = c
            .fetch_watermarks(DELIVER_TOPIC, p, Duration::from_secs(5))
            .unwrap();
        let start = from.get(&p).copied().unwrap_or(0);
        want += (high - start).max(0);
        tpl.add_partition_offset(DELIVER_TOPIC, p, Offset::Offset(start))
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut got: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    while n < want {
        assert!(std::time::Instant::now() < deadline, "read {n} of {want}");
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.expect("a record, not an error");
            let body = String::from_utf8(m.payload().unwrap().to_vec()).unwrap();
            got.entry(m.partition())
                .or_default()
                .push((m.offset(), body));
            n += 1;
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_settings_create_produce_and_read_back_in_order() {
    let k = start(Config::default());
    ensure_topics(&k.bootstrap(), SLOTS, Duration::from_secs(20))
        .await
        .expect("topics created with the admin API");
    let counts = partition_counts(&k.bootstrap(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(counts.contains(&(DELIVER_TOPIC.to_string(), SLOTS as usize)));
    // Creating them again finds them there.
    ensure_topics(&k.bootstrap(), SLOTS, Duration::from_secs(20))
        .await
        .unwrap();

    let p = producer(&k, Duration::from_secs(10));
    let acked = send(&p, 2000, 100).await;
    for (part, recs) in &acked {
        let offsets: Vec<i64> = recs.iter().map(|r| r.0).collect();
        let mut sorted = offsets.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            (0..offsets.len() as i64).collect::<Vec<_>>(),
            "partition {part}"
        );
    }
    let mut got = read_all(&k, &BTreeMap::new());
    let mut want = acked;
    for v in want.values_mut().chain(got.values_mut()) {
        v.sort();
    }
    assert_eq!(
        got, want,
        "every acked record read back at its acked offset"
    );

    // A lookup by time: records stamped before `t` are skipped, the ones after it are found.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 1;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let later = send(&p, SLOTS as usize, 10).await;
    let c: BaseConsumer = assigned_consumer_config(&k.bootstrap(), "t", 500)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for part in 0..SLOTS as i32 {
        tpl.add_partition_offset(DELIVER_TOPIC, part, Offset::Offset(t))
            .unwrap();
    }
    let found = c.offsets_for_times(tpl, Duration::from_secs(5)).unwrap();
    for e in found.elements() {
        assert_eq!(
            e.offset(),
            Offset::Offset(later[&e.partition()][0].0),
            "partition {}",
            e.partition()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_sends_and_then_it_recovers_with_nothing_lost_or_twice() {
    let k = start(Config::default());
    ensure_topics(&k.bootstrap(), SLOTS, Duration::from_secs(20))
        .await
        .unwrap();
    let p = producer(&k, Duration::from_secs(3));
    let before = send(&p, 100, 20).await;
    k.set_down(true);
    let r = p
        .send(
            FutureRecord::to(DELIVER_TOPIC)
                .partition(0)
                .key("k")
                .payload("lost?"),
            Duration::from_secs(0),
        )
        .await;
    assert!(r.is_err(), "a send during the outage fails: {r:?}");
    k.set_down(false);
    // The producer reconnects after its backoff (up to reconnect.backoff.max.ms); until then a
    // send may time out, as on a real broker.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let probe = loop {
        let r = p
            .send(
                FutureRecord::to(DELIVER_TOPIC)
                    .partition(0)
                    .key("k")
                    .payload("probe"),
                Duration::from_secs(0),
            )
            .await;
        match r {
            Ok(d) => break d,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "never recovered: {e:?}"
            ),
        }
    };
    let after = send(&p, 100, 20).await;
    let got = read_all(&k, &BTreeMap::new());
    for (part, recs) in got {
        let bodies: Vec<&str> = recs.iter().map(|r| r.1.as_str()).collect();
        let mut want: Vec<&str> = before
            .get(&part)
            .into_iter()
            .flatten()
            .map(|r| r.1.as_str())
            .collect();
        if part == probe.partition {
            want.push("probe");
        }
        want.extend(after.get(&part).into_iter().flatten().map(|r| r.1.as_str()));
        assert_eq!(
            bodies, want,
            "partition {part}: every acked record once, in order, and not the failed one"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_it_holds_is_bounded_and_the_oldest_goes_first() {
    let max = 64 << 10;
    let k = start(Config {
        max_bytes: max,
        ..Config::default()
    });
    ensure_topics(&k.bootstrap(), SLOTS, Duration::from_secs(20))
        .await
        .unwrap();
    let p = producer(&k, Duration::from_secs(10));
    let acked = send(&p, 2000, 200).await;
    let (held, dropped) = k.held();
    assert!(held <= max, "held {held} bytes, bound {max}");
    assert!(dropped > 0);
    // What is left of each partition is its newest records, contiguous up to the end.
    let c: BaseConsumer = assigned_consumer_config(&k.bootstrap(), "b", 500)
        .create()
        .unwrap();
    let mut from = BTreeMap::new();
    for part in 0..SLOTS as i32 {
        let (low, high) = c
            .fetch_watermarks(DELIVER_TOPIC, part, Duration::from_secs(5))
            .unwrap();
        assert_eq!(high, acked[&part].len() as i64, "partition {part}");
        from.insert(part, low);
    }
    assert!(
        from.values().any(|low| *low > 0),
        "the oldest records went: {from:?}"
    );
    let got = read_all(&k, &from);
    for (part, recs) in got {
        let want: Vec<_> = acked[&part]
            .iter()
            .filter(|r| r.0 >= from[&part])
            .cloned()
            .collect();
        let mut recs = recs;
        recs.sort();
        assert_eq!(recs, want, "partition {part}");
    }
}
