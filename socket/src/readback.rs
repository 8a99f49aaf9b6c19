//! Resume windows as long as Kafka's retention: when a client resumes from an offset older than
//! its slot's in-memory history, the owner reads the partition back from Kafka — from the resume
//! point up to where the history starts — and keeps the client's records. It runs in the
//! connection's own task with a consumer of its own, outside the slot lock, so the slot's other
//! clients are never held up; it is bounded in messages kept, records scanned, time, and in how
//! many run at once on a node. A read-back that cannot be complete (past retention, over a bound)
//! keeps nothing: the client gets `recovered:false` and the history, as before.

use crate::node::Node;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use rtc_serverkit::kafka::{self, DELIVER_TOPIC};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One of the client's records read back: offset, `msg` frame, message identity.
pub type Record = (i64, Utf8Bytes, u64);

/// What a complete read-back found: the client's records in `[from, until)`, oldest first.
#[derive(Debug, Default)]
pub struct ReadBack {
    pub records: Vec<Record>,
    /// The last offset covered (`until - 1`): delivery continues from the history after it.
    pub last: i64,
    /// Records of the partition scanned.
    pub scanned: usize,
}

/// The bounds of one read-back.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_messages: usize,
    pub max_records: usize,
    pub timeout: Duration,
}

/// Why a read-back could not be complete.
#[derive(Debug, thiserror::Error)]
pub enum Incomplete {
    #[error("the resume point is older than Kafka's retention (low watermark {0})")]
    Retention(i64),
    #[error("more than {0} messages to read back")]
    TooManyMessages(usize),
    #[error("more than {0} records to scan")]
    TooManyRecords(usize),
    #[error("not done within {0:?}")]
    Timeout(Duration),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the read-back task failed")]
    Task,
}

/// Reads `rtc.deliver` partition `slot` over `[from, until)` for `recipient` (see module docs),
/// waiting for a turn among the node's read-backs first.
pub async fn read(
    node: &Node,
    slot: u32,
    recipient: &str,
    from: i64,
    until: i64,
) -> Result<ReadBack, Incomplete> {
    let cfg = &node.cfg;
    let limits = Limits {
        max_messages: cfg.readback_max_messages,
        max_records: cfg.readback_max_records,
        timeout: Duration::from_millis(cfg.readback_timeout_ms),
    };
    let _turn = node
        .readbacks
        .acquire()
        .await
        .map_err(|_| Incomplete::Task)?;
    let (bootstrap, group, wait) = (
        cfg.shared.kafka_bootstrap.clone(),
        format!("rtc-socket-{}-readback", node.id),
        cfg.shared.kafka_fetch_wait_ms,
    );
    let recipient = recipient.to_string();
    let started = Instant::now();
    let r = tokio::task::spawn_blocking(move || {
        read_blocking(
            &bootstrap, &group, wait, slot, &recipient, from, until, limits,
        )
    })
    .await
    .map_err(|_| Incomplete::Task)?;
    match &r {
        Ok(rb) => tracing::debug!(
            slot,
            from,
            until,
            kept = rb.records.len(),
            scanned = rb.scanned,
            ms = started.elapsed().as_millis() as u64,
            "read back"
        ),
        Err(e) => {
            tracing::info!(slot, from, until, reason = %e, "read-back incomplete; resuming from the history only")
        }
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn read_blocking(
    bootstrap: &str,
    group: &str,
    fetch_wait_ms: u32,
    slot: u32,
    recipient: &str,
    from: i64,
    until: i64,
    limits: Limits,
) -> Result<ReadBack, Incomplete> {
    let deadline = Instant::now() + limits.timeout;
    let mut cfg = kafka::assigned_consumer_config(bootstrap, group, fetch_wait_ms);
    // Past the last record the consumer says so, instead of waiting for more.
    cfg.set("enable.partition.eof", "true");
    let c: BaseConsumer = cfg.create()?;
    let (low, high) = c.fetch_watermarks(DELIVER_TOPIC, slot as i32, limits.timeout)?;
    if from < low {
        return Err(Incomplete::Retention(low));
    }
    let until = until.min(high);
    let mut rb = ReadBack {
        last: until - 1,
        ..ReadBack::default()
    };
    if from >= until {
        return Ok(rb);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(DELIVER_TOPIC, slot as i32, Offset::Offset(from))?;
    c.assign(&tpl)?;
    // The offset the next record must have: a partition's offsets are consecutive (see
    // `History::follow`), so a record past it means the ones between were deleted meanwhile.
    let mut next = from;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Incomplete::Timeout(limits.timeout));
        }
        match c.poll(left.min(Duration::from_millis(500))) {
            None => continue,
            // The end before `until`: what lay between was deleted meanwhile (the consumer was
            // reset past it).
            Some(Err(KafkaError::PartitionEOF(_))) if next < until => {
                return Err(Incomplete::Retention(next))
            }
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(rb),
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) => {
                return if next < until {
                    Err(Incomplete::Retention(next))
                } else {
                    Ok(rb)
                };
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                let offset = m.offset();
                if offset > next {
                    return Err(Incomplete::Retention(offset));
                }
                next = offset + 1;
                if offset >= until {
                    return Ok(rb);
                }
                rb.scanned += 1;
                if rb.scanned > limits.max_records {
                    return Err(Incomplete::TooManyRecords(limits.max_records));
                }
                if m.key() == Some(recipient.as_bytes()) {
                    if let Some((frame, key)) =
                        crate::relay::frame_of(m.payload(), Some(offset), recipient)
                    {
                        if rb.records.len() == limits.max_messages {
                            return Err(Incomplete::TooManyMessages(limits.max_messages));
                        }
                        rb.records.push((offset, frame, key));
                    }
                }
                if offset + 1 >= until {
                    return Ok(rb);
                }
            }
        }
    }
}
