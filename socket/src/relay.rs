//! Kafka on a socket node: producing client messages, and the three readers — owned slots of
//! `rtc.deliver` (manual assignment following ring epochs), every partition of `rtc.rooms`, and
//! ring epochs on `rtc.control`.

use crate::node::Node;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use rtc_common::kafka::{
    self, CONTROL_TOPIC, DELIVER_TOPIC, RING_KEY, ROOMS_PARTITIONS, ROOMS_TOPIC,
};
use rtc_common::protocol::{Envelope, MsgFrame};
use rtc_common::ring::Ring;
use rtc_common::slot::murmur2;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// Where a produced record landed, or why it did not.
pub type Produced = Result<i64, KafkaError>;

/// Produces a direct message to `slot(to)`; the returned future resolves once Kafka confirms.
/// Enqueueing happens before this returns, so records of one sender keep their order.
pub fn produce_direct(
    producer: &FutureProducer,
    slot: u32,
    to: &str,
    value: &str,
) -> Result<impl std::future::Future<Output = Produced>, KafkaError> {
    let rec = FutureRecord::to(DELIVER_TOPIC)
        .partition(slot as i32)
        .key(to)
        .payload(value);
    enqueue(producer, rec)
}

/// Produces a room message, partitioned by room.
pub fn produce_room(
    producer: &FutureProducer,
    room: &str,
    value: &str,
) -> Result<impl std::future::Future<Output = Produced>, KafkaError> {
    let p = ((murmur2(room.as_bytes()) as u32) & 0x7fff_ffff) % ROOMS_PARTITIONS as u32;
    let rec = FutureRecord::to(ROOMS_TOPIC)
        .partition(p as i32)
        .key(room)
        .payload(value);
    enqueue(producer, rec)
}

fn enqueue(
    producer: &FutureProducer,
    rec: FutureRecord<'_, str, str>,
) -> Result<impl std::future::Future<Output = Produced>, KafkaError> {
    let fut = producer.send_result(rec).map_err(|(e, _)| e)?;
    Ok(async move {
        match fut.await {
            Ok(Ok(d)) => Ok(d.offset),
            Ok(Err((e, _))) => Err(e),
            Err(_) => Err(KafkaError::Canceled),
        }
    })
}

fn record_ms(m: &impl Message) -> u64 {
    m.timestamp()
        .to_millis()
        .map(|t| t.max(0) as u64)
        .unwrap_or_else(rtc_common::telemetry::now_ms)
}

/// Builds the `msg` frame of a record, or None for a record that is not ours to parse; with the
/// message's identity for `recipient` (see `history::message_key`).
fn frame_of(
    payload: Option<&[u8]>,
    offset: Option<i64>,
    recipient: &str,
) -> Option<(Utf8Bytes, u64)> {
    let env: Envelope = serde_json::from_slice(payload?).ok()?;
    let key = crate::history::message_key(recipient, env.from, env.id);
    Some((
        Utf8Bytes::from(MsgFrame::from_envelope(&env, offset).to_json()),
        key,
    ))
}

/// Reads the owned slots of `rtc.deliver` until `cancel`.
pub async fn run_deliver(
    node: Arc<Node>,
    bootstrap: String,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: Arc<StreamConsumer> = Arc::new(
        kafka::assigned_consumer_config(&bootstrap, &format!("rtc-socket-{}", node.id)).create()?,
    );
    // Loading slots whose start is unknown (Kafka unreachable at takeover) are retried on this tick.
    let mut retry = tokio::time::interval(Duration::from_secs(1));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = true;
    loop {
        if dirty {
            dirty = false;
            if let Err(e) = reassign(&node, &consumer).await {
                tracing::warn!(error = %format!("{e:#}"), "re-assigning deliver partitions failed; retrying");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = node.reassign.notified() => dirty = true,
            _ = retry.tick() => dirty = !node.unstarted().is_empty(),
            r = consumer.recv() => match r {
                Ok(m) => {
                    let recipient = m.key().and_then(|k| std::str::from_utf8(k).ok());
                    let Some((recipient, (frame, key))) = recipient.and_then(|r| Some((r, frame_of(m.payload(), Some(m.offset()), r)?))) else {
                        tracing::warn!(partition = m.partition(), offset = m.offset(), "skipping a malformed deliver record");
                        continue;
                    };
                    node.deliver(m.partition() as u32, m.offset(), recipient, key, frame, record_ms(&m));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "deliver consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Finds where newly owned slots start (the last `history_max_messages` records, from the
/// broker's watermarks), then assigns every partition the node reads at its next offset.
async fn reassign(node: &Arc<Node>, consumer: &Arc<StreamConsumer>) -> anyhow::Result<()> {
    let unstarted = node.unstarted();
    if !unstarted.is_empty() {
        let (c, keep) = (consumer.clone(), node.cfg.history_max_messages as i64);
        let marks = tokio::task::spawn_blocking(move || {
            unstarted
                .into_iter()
                .map(|s| {
                    c.fetch_watermarks(DELIVER_TOPIC, s as i32, Duration::from_secs(5))
                        .map(|(lo, hi)| (s, (hi - keep).max(lo), hi))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await??;
        for (s, start, high) in marks {
            node.begin_load(s, start, high);
        }
    }
    let mut tpl = TopicPartitionList::new();
    for (slot, next) in node.consumer_plan() {
        tpl.add_partition_offset(DELIVER_TOPIC, slot as i32, Offset::Offset(next))?;
    }
    consumer.assign(&tpl)?;
    tracing::debug!(partitions = tpl.count(), "deliver consumer assigned");
    Ok(())
}

/// Reads every partition of `rtc.rooms` from now on and fans out to local members. "Now" is the
/// high watermark read from the broker before assigning (not `Offset::End`, which librdkafka
/// resolves lazily at the first fetch and could place after a message published once the node
/// said it was ready); the node takes no client before this is done.
pub async fn run_rooms(
    node: Arc<Node>,
    bootstrap: String,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: Arc<StreamConsumer> = Arc::new(
        kafka::assigned_consumer_config(&bootstrap, &format!("rtc-rooms-{}", node.id)).create()?,
    );
    let tpl = loop {
        let c = consumer.clone();
        let ends = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for p in 0..ROOMS_PARTITIONS {
                let (_, high) = c.fetch_watermarks(ROOMS_TOPIC, p, Duration::from_secs(5))?;
                tpl.add_partition_offset(ROOMS_TOPIC, p, Offset::Offset(high))?;
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
    node.rooms_ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = consumer.recv() => match r {
                Ok(m) => {
                    let Some(room) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else { continue };
                    if let Some((frame, _)) = frame_of(m.payload(), None, room) {
                        node.fan_out(room, frame);
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
    let consumer: StreamConsumer =
        kafka::assigned_consumer_config(&bootstrap, &format!("rtc-control-{}", node.id))
            .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(CONTROL_TOPIC, 0, Offset::OffsetTail(1))?;
    consumer.assign(&tpl)?;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            r = consumer.recv() => match r {
                Ok(m) if m.key() == Some(RING_KEY.as_bytes()) => {
                    match m.payload().map(serde_json::from_slice::<Ring>) {
                        Some(Ok(ring)) => { node.apply_ring(ring); }
                        _ => tracing::warn!(offset = m.offset(), "skipping a malformed ring record"),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "control consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}
