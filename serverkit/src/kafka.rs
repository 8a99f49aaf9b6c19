//! Kafka names and client settings shared by every binary, and topic set-up.

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rtc_protocol::slot::murmur2;
use std::time::Duration;

pub use rtc_protocol::record::kafka::*;

/// Settings every client shares.
pub fn base_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("socket.keepalive.enable", "true")
        .set("topic.metadata.refresh.interval.ms", "10000")
        .set("log_level", "4");
    c
}

/// An idempotent producer that reports success only once every in-sync replica has the record.
pub fn producer_config(bootstrap: &str, timeout: Duration) -> ClientConfig {
    let mut c = base_config(bootstrap);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .set("queue.buffering.max.messages", "200000");
    c
}

/// Whether `producer` must be replaced after `err`: it hit a fatal error, or the broker refused
/// its producer id or epoch (fenced, epoch bumped elsewhere, id expired, sequence broken). An
/// idempotent producer in that state fails every later send; a new one gets a new producer id.
/// (Seen with the tansu 0.6 broker: after a request timeout librdkafka bumps the epoch and every later send
/// fails with ProducerFenced, without librdkafka marking the producer fatal.)
pub fn needs_new_producer(
    producer: &rdkafka::producer::FutureProducer,
    err: &rdkafka::error::KafkaError,
) -> Option<String> {
    use rdkafka::producer::Producer;
    if let Some((code, reason)) = producer.client().fatal_error() {
        return Some(format!("fatal {code:?}: {reason}"));
    }
    match err.rdkafka_error_code()? {
        c @ (RDKafkaErrorCode::ProducerFenced
        | RDKafkaErrorCode::InvalidProducerEpoch
        | RDKafkaErrorCode::UnknownProducerId
        | RDKafkaErrorCode::InvalidProducerIdMapping
        | RDKafkaErrorCode::OutOfOrderSequenceNumber) => Some(format!("{c:?}")),
        _ => None,
    }
}

/// A consumer used only with manual assignment: no group membership, no commits.
/// `fetch_wait_ms` bounds how long the broker may hold a fetch that found no data (a real broker
/// answers as soon as data arrives; librdkafka's mock cluster always waits the whole time).
pub fn assigned_consumer_config(bootstrap: &str, group: &str, fetch_wait_ms: u32) -> ClientConfig {
    let mut c = base_config(bootstrap);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .set("fetch.error.backoff.ms", "50");
    c
}

/// Creates the three topics when they are missing and checks that `rtc.deliver` has exactly
/// `slots` partitions (a mismatch would send messages to the wrong owners).
pub async fn ensure_topics(bootstrap: &str, slots: u32, timeout: Duration) -> anyhow::Result<()> {
    let wanted = [
        (
            DELIVER_TOPIC,
            slots as i32,
            vec![("retention.ms", "86400000")],
        ),
        (
            ROOMS_TOPIC,
            ROOMS_PARTITIONS,
            vec![("retention.ms", "3600000")],
        ),
        (CONTROL_TOPIC, 1, vec![("cleanup.policy", "compact")]),
        (SCALE_TOPIC, 1, vec![("retention.ms", "604800000")]),
    ];
    let existing = partition_counts(bootstrap, timeout).await?;
    let missing: Vec<_> = wanted
        .iter()
        .filter(|(t, _, _)| !existing.iter().any(|(n, _)| n == t))
        .collect();
    if !missing.is_empty() {
        let admin: AdminClient<DefaultClientContext> = base_config(bootstrap)
            .create()
            .context("creating Kafka admin client")?;
        let topics: Vec<NewTopic> = missing
            .iter()
            .map(|(t, p, cfg)| {
                cfg.iter().fold(
                    NewTopic::new(t, *p, TopicReplication::Fixed(-1)),
                    |nt, (k, v)| nt.set(k, v),
                )
            })
            .collect();
        let opts = AdminOptions::new()
            .operation_timeout(Some(timeout))
            .request_timeout(Some(timeout));
        for r in admin
            .create_topics(&topics, &opts)
            .await
            .context("creating Kafka topics")?
        {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => bail!("creating topic {t}: {e}"),
            }
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let counts = partition_counts(bootstrap, timeout).await?;
        let deliver = counts
            .iter()
            .find(|(n, _)| n == DELIVER_TOPIC)
            .map(|(_, c)| *c);
        let all = wanted
            .iter()
            .all(|(t, _, _)| counts.iter().any(|(n, c)| n == t && *c > 0));
        match deliver {
            Some(c) if all && c == slots as usize => return Ok(()),
            Some(c) if c > 0 && c != slots as usize => {
                bail!("topic {DELIVER_TOPIC} has {c} partitions but SLOTS is {slots}: they must be equal")
            }
            _ if tokio::time::Instant::now() >= deadline => {
                bail!("Kafka topics did not appear within {timeout:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Topic → partition count, from cluster metadata.
pub async fn partition_counts(
    bootstrap: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<(String, usize)>> {
    let bootstrap = bootstrap.to_string();
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = base_config(&bootstrap)
            .create()
            .context("creating Kafka metadata client")?;
        let md = c
            .fetch_metadata(None, timeout)
            .context("fetching Kafka metadata")?;
        Ok(md
            .topics()
            .iter()
            .map(|t| (t.name().to_string(), t.partitions().len()))
            .collect())
    })
    .await
    .context("metadata task")?
}

/// Follows ring epochs on `rtc.control`: the newest record first, then every new one, each handed
/// to `apply` (which keeps only rising epochs). Socket nodes and follower balancers both read the
/// ring this way. `repoll` bounds a lost consumer wake-up (see the socket relay).
pub async fn follow_rings(
    bootstrap: &str,
    group: &str,
    fetch_wait_ms: u32,
    repoll: Duration,
    cancel: tokio_util::sync::CancellationToken,
    mut apply: impl FnMut(rtc_protocol::ring::Ring),
) -> anyhow::Result<()> {
    use rdkafka::consumer::StreamConsumer;
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: StreamConsumer =
        assigned_consumer_config(bootstrap, group, fetch_wait_ms).create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(CONTROL_TOPIC, 0, Offset::OffsetTail(1))?;
    consumer.assign(&tpl)?;
    let mut tick = tokio::time::interval(repoll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return Ok(()),
            r = consumer.recv() => match r {
                Ok(m) if m.key() == Some(RING_KEY.as_bytes()) => {
                    match m.payload().map(serde_json::from_slice::<rtc_protocol::ring::Ring>) {
                        Some(Ok(ring)) => apply(ring),
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

/// Where a produced record landed, or why it did not.
pub type Produced = Result<i64, rdkafka::error::KafkaError>;

/// Produces a direct message to `slot(to)`; the returned future resolves once Kafka confirms.
/// Enqueueing happens before this returns, so records of one sender keep their order.
pub fn produce_direct(
    producer: &FutureProducer,
    slot: u32,
    to: &str,
    value: &str,
) -> Result<impl std::future::Future<Output = Produced>, rdkafka::error::KafkaError> {
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
) -> Result<impl std::future::Future<Output = Produced>, rdkafka::error::KafkaError> {
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
) -> Result<impl std::future::Future<Output = Produced>, rdkafka::error::KafkaError> {
    let fut = producer.send_result(rec).map_err(|(e, _)| e)?;
    Ok(async move {
        match fut.await {
            Ok(Ok(d)) => Ok(d.offset),
            Ok(Err((e, _))) => Err(e),
            Err(_) => Err(rdkafka::error::KafkaError::Canceled),
        }
    })
}
