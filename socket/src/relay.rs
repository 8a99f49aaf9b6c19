//! Kafka on a socket node: producing client messages, and the three readers — owned slots of
//! `rtc.deliver` (manual assignment following ring epochs), every partition of `rtc.rooms`, and
//! ring epochs on `rtc.control`.

use crate::node::Node;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rtc_protocol::{Envelope, ServerFrame};
use rtc_serverkit::kafka::{self, DELIVER_TOPIC, ROOMS_PARTITIONS, ROOMS_TOPIC};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

pub use rtc_serverkit::kafka::{produce_direct, produce_room, Produced};

fn record_ms(m: &impl Message) -> u64 {
    m.timestamp()
        .to_millis()
        .map(|t| t.max(0) as u64)
        .unwrap_or_else(rtc_serverkit::telemetry::now_ms)
}

/// Builds the `msg` frame of a record, or None for a record that is not ours to parse; with the
/// message's identity for `recipient` (see `history::message_key`).
pub(crate) fn frame_of(
    payload: Option<&[u8]>,
    offset: Option<i64>,
    recipient: &str,
) -> Option<(Utf8Bytes, u64)> {
    let env: Envelope = serde_json::from_slice(payload?).ok()?;
    let key = crate::history::message_key(recipient, &env.from, &env.id);
    Some((
        Utf8Bytes::from(ServerFrame::msg(&env, offset).to_json()),
        key,
    ))
}

/// The `member` frame of a presence record on `rtc.rooms`, with its room.
fn presence_frame(payload: Option<&[u8]>) -> Option<(String, Utf8Bytes)> {
    let rec: rtc_protocol::record::PresenceRecord = serde_json::from_slice(payload?).ok()?;
    let frame = ServerFrame::Member {
        room: rec.room.clone(),
        client_id: rec.client_id,
        event: rec.presence,
    }
    .to_json();
    Some((rec.room.into_owned(), Utf8Bytes::from(frame)))
}

/// A tick on which a reader polls its consumer afresh even if it was not woken: rust-rdkafka's
/// `StreamConsumer` is woken only when librdkafka's queue turns from empty to non-empty
/// (fede1024/rust-rdkafka#665 was a lost wake-up of that kind). Cheap insurance: a lost wake-up
/// would cost at most 200 ms. The deliver reader has its own 1 s retry tick.
const REPOLL: Duration = Duration::from_millis(200);

fn repoll_tick() -> tokio::time::Interval {
    let mut t = tokio::time::interval(REPOLL);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// The deliver consumer's context: librdkafka's statistics (every 5 s) give the high watermark and
/// the application's position of each partition, hence the lag of each owned one.
pub(crate) struct LagContext(std::sync::Weak<Node>);

impl rdkafka::ClientContext for LagContext {
    fn stats(&self, stats: rdkafka::Statistics) {
        let Some(node) = self.0.upgrade() else {
            return;
        };
        let owned = node.owned();
        let mut total = 0u64;
        let Some(topic) = stats.topics.get(DELIVER_TOPIC) else {
            return;
        };
        for (&p, st) in &topic.partitions {
            if p < 0 {
                continue;
            }
            let label = p.to_string();
            let position = [st.app_offset, st.next_offset]
                .into_iter()
                .find(|&o| o >= 0);
            match position {
                Some(pos) if owned.contains(&(p as u32)) && st.hi_offset >= 0 => {
                    let lag = (st.hi_offset - pos).max(0);
                    total += lag as u64;
                    node.metrics.kafka_lag.with_label_values(&[&label]).set(lag);
                }
                _ => {
                    let _ = node.metrics.kafka_lag.remove_label_values(&[&label]);
                }
            }
        }
        node.kafka_lag
            .store(total, std::sync::atomic::Ordering::Relaxed);
    }
}

impl rdkafka::consumer::ConsumerContext for LagContext {}

type DeliverConsumer = StreamConsumer<LagContext>;

/// What the deliver consumer asks the broker to gather before it answers a fetch early (see
/// DELIVER_FETCH_BATCH_MS): about two hundred messages of the size the load test sends.
const DELIVER_FETCH_MIN_BYTES: u32 = 64 * 1024;

/// The deliver consumer's settings: statistics for the lag metric, and fetch batching when
/// DELIVER_FETCH_BATCH_MS asks for it.
fn deliver_consumer_config(
    cfg: &crate::config::Config,
    bootstrap: &str,
    node_id: &str,
) -> rdkafka::ClientConfig {
    let wait_ms = cfg.shared.kafka_fetch_wait_ms;
    let mut c =
        kafka::assigned_consumer_config(bootstrap, &format!("rtc-socket-{node_id}"), wait_ms);
    c.set("statistics.interval.ms", "5000");
    if cfg.deliver_fetch_batch_ms > 0 {
        // The broker holds a fetch until DELIVER_FETCH_MIN_BYTES are ready or the batch time is
        // up: one fetch carries many records instead of one, and librdkafka's fetcher, which
        // walks every owned partition per fetch, runs a fraction as often (docs/benchmarks.md).
        c.set("fetch.min.bytes", DELIVER_FETCH_MIN_BYTES.to_string())
            .set(
                "fetch.wait.max.ms",
                cfg.deliver_fetch_batch_ms.min(wait_ms).to_string(),
            );
    }
    c
}

/// Reads the owned slots of `rtc.deliver` until `cancel`.
pub async fn run_deliver(
    node: Arc<Node>,
    bootstrap: String,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: Arc<DeliverConsumer> = Arc::new(
        deliver_consumer_config(&node.cfg, &bootstrap, &node.id)
            .create_with_context(LagContext(Arc::downgrade(&node)))?,
    );
    // Loading slots whose start is unknown (Kafka unreachable at takeover) are retried on this tick.
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = true;
    let mut assigned = Assigned::default();
    loop {
        if dirty {
            dirty = false;
            if let Err(e) = reassign(&node, &consumer, &mut assigned).await {
                tracing::warn!(error = %format!("{e:#}"), "re-assigning deliver partitions failed; retrying");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = node.reassign.notified() => dirty = true,
            _ = retry.tick() => dirty = !node.unstarted().is_empty() || !assigned.unpositioned.is_empty(),
            r = consumer.recv() => match r {
                Ok(m) => {
                    let slot = m.partition() as u32;
                    // A slot with a new start that the consumer has not been moved to yet: what
                    // arrives is from the old position and would leave a gap in its history.
                    if assigned.unpositioned.contains(&slot) {
                        continue;
                    }
                    let recipient = m.key().and_then(|k| std::str::from_utf8(k).ok());
                    let Some((recipient, (frame, key))) = recipient.and_then(|r| Some((r, frame_of(m.payload(), Some(m.offset()), r)?))) else {
                        tracing::warn!(partition = m.partition(), offset = m.offset(), "skipping a malformed deliver record");
                        node.skip(slot, m.offset());
                        continue;
                    };
                    node.deliver(slot, m.offset(), recipient, key, frame, record_ms(&m));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "deliver consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// What the deliver consumer has been told, so each change touches only the partitions that
/// changed.
///
/// Partitions are added once and never removed: a slot the node stops reading is paused, and a
/// slot it reads again is sought to its start and resumed. librdkafka 2.12 (bundled by
/// rdkafka-sys 4.10) aborts the process when a partition is removed from an assignment a second
/// time before the fetcher stop of the first removal has been served (duplicate FETCH_STOP,
/// confluentinc/librdkafka#5573, fixed upstream after 2.15): re-assigning the whole list on
/// every ring change hit it. Pause, resume and seek never stop a fetcher, so they cannot.
#[derive(Default)]
struct Assigned {
    /// Every partition ever added to the assignment.
    added: HashSet<u32>,
    /// Added and not paused.
    active: HashSet<u32>,
    /// Slots whose start was set since the consumer last positioned them.
    unpositioned: HashSet<u32>,
}

/// Finds where newly owned slots start (the last `history_max_messages` records, from the
/// broker's watermarks), then brings the consumer to the node's plan: new partitions are added
/// at their next offset, re-owned ones sought there and resumed, partitions no longer read
/// paused. Partitions read throughout are not touched and keep their position.
async fn reassign(
    node: &Arc<Node>,
    consumer: &Arc<DeliverConsumer>,
    st: &mut Assigned,
) -> anyhow::Result<()> {
    let unstarted = node.unstarted();
    let mut unread = None;
    if !unstarted.is_empty() {
        // Asked through the producer's connection, not the deliver consumer's: a broker answers a
        // connection's requests in order, so behind the consumer's waiting fetch every query
        // would wait up to KAFKA_FETCH_WAIT_MS (500 ms by default), one slot after another
        // (85 slots of a drained node served after 21.7 s instead of 1.8 s; bench/takeover.sh).
        let (p, keep) = (node.producer(), node.cfg.history_max_messages as i64);
        let marks = tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer as _;
            unstarted
                .into_iter()
                .map(|s| {
                    let marks = p.client().fetch_watermarks(
                        DELIVER_TOPIC,
                        s as i32,
                        Duration::from_secs(5),
                    );
                    (s, marks.map(|(lo, hi)| ((hi - keep).max(lo), hi)))
                })
                .collect::<Vec<_>>()
        })
        .await?;
        // Slots whose watermarks came back start now; the others wait for the next round.
        for (s, marks) in marks {
            match marks {
                Ok((start, high)) => {
                    node.begin_load(s, start, high);
                    st.unpositioned.insert(s);
                }
                Err(e) => unread = Some((s, e)),
            }
        }
    }
    let plan = node.consumer_plan();
    let wanted: HashSet<u32> = plan.iter().map(|&(s, _)| s).collect();
    // A slot that left the plan gets a new start (and enters again) when it is owned again.
    st.unpositioned.retain(|s| wanted.contains(s));

    let stop: Vec<u32> = st.active.difference(&wanted).copied().collect();
    if !stop.is_empty() {
        consumer.pause(&deliver_list(stop.iter().map(|&s| (s, None)))?)?;
        for s in &stop {
            st.active.remove(s);
        }
    }

    let (mut add, mut seek) = (Vec::new(), Vec::new());
    for &(s, next) in &plan {
        if !st.added.contains(&s) {
            add.push((s, next));
        } else if !st.active.contains(&s) || st.unpositioned.contains(&s) {
            seek.push((s, next));
        }
    }
    if !add.is_empty() {
        consumer.incremental_assign(&deliver_list(add.iter().map(|&(s, n)| (s, Some(n))))?)?;
        for &(s, _) in &add {
            st.added.insert(s);
            st.active.insert(s);
            st.unpositioned.remove(&s);
        }
    }
    if !seek.is_empty() {
        let tpl = deliver_list(seek.iter().map(|&(s, n)| (s, Some(n))))?;
        let c = consumer.clone();
        let sought =
            tokio::task::spawn_blocking(move || c.seek_partitions(tpl, Duration::from_secs(5)))
                .await??;
        let mut resumed = Vec::new();
        for e in sought.elements() {
            let s = e.partition() as u32;
            match e.error() {
                Ok(()) => {
                    st.unpositioned.remove(&s);
                    if !st.active.contains(&s) {
                        resumed.push(s);
                    }
                }
                Err(err) => {
                    tracing::warn!(slot = s, error = %err, "seeking a deliver partition failed")
                }
            }
        }
        if !resumed.is_empty() {
            consumer.resume(&deliver_list(resumed.iter().map(|&s| (s, None)))?)?;
            st.active.extend(resumed);
        }
        if seek.len() != sought.count() || sought.elements().iter().any(|e| e.error().is_err()) {
            anyhow::bail!("some deliver partitions could not be positioned");
        }
    }
    if let Some((s, e)) = unread {
        anyhow::bail!("reading the watermarks of slot {s} failed: {e}");
    }
    tracing::debug!(
        reading = st.active.len(),
        added = add.len(),
        sought = seek.len(),
        paused = stop.len(),
        "deliver consumer follows the plan"
    );
    Ok(())
}

fn deliver_list(
    slots: impl Iterator<Item = (u32, Option<i64>)>,
) -> anyhow::Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (s, next) in slots {
        match next {
            Some(n) => tpl.add_partition_offset(DELIVER_TOPIC, s as i32, Offset::Offset(n))?,
            None => {
                tpl.add_partition(DELIVER_TOPIC, s as i32);
            }
        }
    }
    Ok(tpl)
}

/// Reads every partition of `rtc.rooms`, stores room history and fans out to local members. Each
/// partition starts ROOM_REPLAY_MAX_RECORDS before the high watermark read from the broker
/// (bounded by the low one) to fill the room history; the high watermark is read before assigning
/// (not `Offset::End`, which librdkafka resolves lazily at the first fetch and could place after
/// a message published once the node said it was ready), so every room message published once
/// the node is serving reaches it. The node takes no client before this is done.
pub async fn run_rooms(
    node: Arc<Node>,
    bootstrap: String,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: Arc<StreamConsumer> = Arc::new(
        kafka::assigned_consumer_config(
            &bootstrap,
            &format!("rtc-rooms-{}", node.id),
            node.cfg.shared.kafka_fetch_wait_ms,
        )
        .create()?,
    );
    let tpl = loop {
        let c = consumer.clone();
        let back = node.cfg.room_replay_max_records;
        let ends = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in 0..ROOMS_PARTITIONS {
                let (low, high) = c.fetch_watermarks(ROOMS_TOPIC, p, Duration::from_secs(5))?;
                let start = (high - back).max(low).max(0);
                tpl.add_partition_offset(ROOMS_TOPIC, p, Offset::Offset(start))?;
            }
            Ok::<_, KafkaError>(tpl)
        });
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = ends => match r? {
                Ok(tpl) => break tpl,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read rtc.rooms positions yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    };
    consumer.assign(&tpl)?;
    let starts: Vec<i64> = tpl
        .elements()
        .iter()
        .map(|e| e.offset().to_raw().unwrap_or(0))
        .collect();
    for (p, &start) in starts.iter().enumerate() {
        node.rooms.start_partition(p, start);
    }
    tracing::info!(node = %node.id, ?starts, "rooms reader placed");
    node.rooms_ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut repoll = repoll_tick();
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = repoll.tick() => {}
            _ = sweep.tick() => {
                node.rooms.sweep(rtc_serverkit::telemetry::now_ms());
                let (rooms, held, bytes) = node.rooms.sizes();
                node.metrics.room_history.with_label_values(&["rooms"]).set(rooms as i64);
                node.metrics.room_history.with_label_values(&["messages"]).set(held as i64);
                node.metrics.room_history.with_label_values(&["bytes"]).set(bytes as i64);
            }
            r = consumer.recv() => match r {
                Ok(m) => {
                    let (p, offset) = (m.partition() as usize, m.offset());
                    let room = m.key().and_then(|k| std::str::from_utf8(k).ok());
                    match room.and_then(|room| Some((room, frame_of(m.payload(), Some(offset), room)?))) {
                        Some((room, (frame, _))) => node.fan_out(room, p, offset, record_ms(&m), frame),
                        None => {
                            node.rooms.advance(p, offset);
                            if let Some(frame) = presence_frame(m.payload()) {
                                node.fan_out_presence(&frame.0, frame.1);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rooms consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Follows ring epochs on `rtc.control` (the newest record first, then every new one).
pub async fn run_control(
    node: Arc<Node>,
    bootstrap: String,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    kafka::follow_rings(
        &bootstrap,
        &format!("rtc-control-{}", node.id),
        node.cfg.shared.kafka_fetch_wait_ms,
        REPOLL,
        cancel,
        |ring| {
            node.apply_ring(ring);
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_batching_is_asked_of_the_broker_only_when_set() {
        let mut cfg = crate::config::Config::for_tests("127.0.0.1:9092", "redis://127.0.0.1/");
        cfg.shared.kafka_fetch_wait_ms = 500;
        let off = deliver_consumer_config(&cfg, "127.0.0.1:9092", "n");
        assert_eq!(
            off.get("fetch.min.bytes"),
            None,
            "answered at the first record"
        );
        assert_eq!(off.get("fetch.wait.max.ms"), Some("500"));

        cfg.deliver_fetch_batch_ms = 10;
        let on = deliver_consumer_config(&cfg, "127.0.0.1:9092", "n");
        assert_eq!(on.get("fetch.min.bytes"), Some("65536"));
        assert_eq!(on.get("fetch.wait.max.ms"), Some("10"));

        cfg.shared.kafka_fetch_wait_ms = 4;
        let bounded = deliver_consumer_config(&cfg, "127.0.0.1:9092", "n");
        assert_eq!(
            bounded.get("fetch.wait.max.ms"),
            Some("4"),
            "never longer than KAFKA_FETCH_WAIT_MS"
        );
    }
}
