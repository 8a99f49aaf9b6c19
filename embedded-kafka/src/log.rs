//! One partition's log: record batches (Kafka's v2 format) kept as the producer sent them, with
//! the broker's offsets written in, in a deque ordered by offset. A fetch finds its batch by binary
//! search, so reading does not get slower as the log grows (librdkafka's mock cluster walks a
//! list from the start on every fetch).

use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};

/// Kafka error codes this module answers with.
pub mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
}

/// The fixed part of a v2 record batch, up to and including the record count.
const HEADER_LEN: usize = 61;
/// Bytes before the batch length field ends: base offset (8) and length (4).
const LENGTH_END: usize = 12;

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// What a produced batch's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    /// Bytes of the whole batch.
    len: usize,
    /// Records in it (last offset delta + 1).
    count: i64,
    max_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
}

/// Reads the header of the batch at the start of `b`; `None` when it is not a whole v2 batch.
fn header(b: &[u8]) -> Option<Header> {
    if b.len() < HEADER_LEN || b[16] != 2 {
        return None;
    }
    let len = LENGTH_END + usize::try_from(be_i32(b, 8)).ok()?;
    let delta = be_i32(b, 23);
    if len < HEADER_LEN || len > b.len() || delta < 0 {
        return None;
    }
    Some(Header {
        len,
        count: i64::from(delta) + 1,
        max_timestamp: be_i64(b, 35),
        producer_id: be_i64(b, 43),
        producer_epoch: be_i16(b, 51),
        base_sequence: be_i32(b, 53),
    })
}

/// A stored batch.
#[derive(Debug)]
pub struct Batch {
    pub base: i64,
    /// One past its last offset.
    pub next: i64,
    pub max_timestamp: i64,
    pub data: Bytes,
}

/// The last batch an idempotent producer wrote here, to answer a resend with the first offset.
#[derive(Debug, Clone, Copy)]
struct Sequence {
    epoch: i16,
    first: i32,
    last: i32,
    base: i64,
}

/// Where an append landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record (of the earlier copy, for a resend).
    pub base: i64,
    /// The base offset of each batch added (none for a resend).
    pub batches: Vec<i64>,
    /// Bytes added.
    pub bytes: usize,
}

/// Batches per producer remembered for resends, as a Kafka broker does (librdkafka keeps at
/// most 5 requests in flight per partition with idempotence).
const SEQUENCES_KEPT: usize = 5;

#[derive(Debug, Default)]
pub struct Log {
    /// The first offset still held.
    pub start: i64,
    /// The next offset to assign (the high watermark: every append is committed at once).
    pub end: i64,
    batches: VecDeque<Batch>,
    producers: HashMap<i64, VecDeque<Sequence>>,
}

impl Log {
    /// Appends the record batches of one produce request for this partition.
    pub fn append(&mut self, records: &[u8]) -> Result<Appended, i16> {
        // Check every batch before storing any, so a bad request stores nothing.
        let mut headers = Vec::new();
        let mut at = 0;
        while at < records.len() {
            let h = header(&records[at..]).ok_or(code::CORRUPT_MESSAGE)?;
            headers.push((at, h));
            at += h.len;
        }
        let Some(&(_, first)) = headers.first() else {
            return Err(code::CORRUPT_MESSAGE);
        };
        if first.producer_id >= 0 && first.base_sequence >= 0 {
            if let Some(kept) = self.producers.get(&first.producer_id) {
                let last = kept.back().expect("never empty");
                if last.epoch == first.producer_epoch {
                    if let Some(s) = kept.iter().find(|s| s.first == first.base_sequence) {
                        return Ok(Appended {
                            base: s.base,
                            batches: Vec::new(),
                            bytes: 0,
                        });
                    }
                    if first.base_sequence != last.last.wrapping_add(1) {
                        return Err(if first.base_sequence < kept[0].first {
                            code::DUPLICATE_SEQUENCE_NUMBER
                        } else {
                            code::OUT_OF_ORDER_SEQUENCE_NUMBER
                        });
                    }
                }
            }
        }
        let base = self.end;
        let mut bytes = 0;
        let mut batches = Vec::with_capacity(headers.len());
        for &(at, h) in &headers {
            let mut data = BytesMut::from(&records[at..at + h.len]);
            data[0..8].copy_from_slice(&self.end.to_be_bytes());
            // The partition leader epoch: this broker's partitions never change leader.
            data[12..16].copy_from_slice(&0i32.to_be_bytes());
            let b = Batch {
                base: self.end,
                next: self.end + h.count,
                max_timestamp: h.max_timestamp,
                data: data.freeze(),
            };
            self.end = b.next;
            bytes += h.len;
            if h.producer_id >= 0 && h.base_sequence >= 0 {
                let kept = self.producers.entry(h.producer_id).or_default();
                if kept.back().is_some_and(|s| s.epoch != h.producer_epoch) {
                    kept.clear();
                }
                if kept.len() == SEQUENCES_KEPT {
                    kept.pop_front();
                }
                kept.push_back(Sequence {
                    epoch: h.producer_epoch,
                    first: h.base_sequence,
                    last: h.base_sequence.wrapping_add((h.count - 1) as i32),
                    base: b.base,
                });
            }
            batches.push(b.base);
            self.batches.push_back(b);
        }
        Ok(Appended {
            base,
            batches,
            bytes,
        })
    }

    /// The batches from the one holding `from` on, up to `max_bytes` (at least one batch, as
    /// Kafka does, so a batch larger than the limit still gets through). Empty at the end.
    pub fn read(&self, from: i64, max_bytes: usize) -> Result<Vec<Bytes>, i16> {
        if from < self.start || from > self.end {
            return Err(code::OFFSET_OUT_OF_RANGE);
        }
        let first = self.batches.partition_point(|b| b.next <= from);
        let mut out = Vec::new();
        let mut size = 0;
        for b in self.batches.range(first..) {
            if !out.is_empty() && size + b.data.len() > max_bytes {
                break;
            }
            size += b.data.len();
            out.push(b.data.clone());
        }
        Ok(out)
    }

    /// The first offset of the first batch holding a record stamped at `ts` or later (`None`
    /// when there is none). Batch granularity: a few earlier records of that batch may come too
    /// (Kafka gives the exact record). A linear scan: timestamps are the producers' and need not
    /// grow with offsets.
    pub fn offset_for_time(&self, ts: i64) -> Option<i64> {
        self.batches
            .iter()
            .find(|b| b.max_timestamp >= ts)
            .map(|b| b.base.max(self.start))
    }

    /// Drops the oldest batch if it starts at `base`; the bytes freed.
    pub fn drop_front(&mut self, base: i64) -> Option<usize> {
        if self.batches.front().is_some_and(|b| b.base == base) {
            let b = self.batches.pop_front()?;
            self.start = b.next;
            Some(b.data.len())
        } else {
            None
        }
    }

    #[cfg(test)]
    pub fn batch_count(&self) -> usize {
        self.batches.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A v2 batch of `count` records (the record bytes are opaque here), stamped `ts`.
    pub fn batch(count: i32, ts: i64, pid: i64, seq: i32, payload: usize) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN + payload];
        let len = (b.len() - LENGTH_END) as i32;
        b[0..8].copy_from_slice(&77i64.to_be_bytes());
        b[8..12].copy_from_slice(&len.to_be_bytes());
        b[16] = 2;
        b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        b[27..35].copy_from_slice(&ts.to_be_bytes());
        b[35..43].copy_from_slice(&ts.to_be_bytes());
        b[43..51].copy_from_slice(&pid.to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        b[57..61].copy_from_slice(&count.to_be_bytes());
        b
    }

    #[test]
    fn offsets_are_assigned_and_written_into_the_batch() {
        let mut log = Log::default();
        let a = log.append(&batch(3, 10, -1, -1, 5)).unwrap();
        let b = log.append(&batch(2, 20, -1, -1, 5)).unwrap();
        assert_eq!((a.base, b.base, log.end), (0, 3, 5));
        let read = log.read(4, 1 << 20).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(
            be_i64(&read[0], 0),
            3,
            "the stored batch carries its broker offset"
        );
        assert_eq!(log.read(5, 1 << 20).unwrap().len(), 0, "nothing at the end");
        assert_eq!(log.read(6, 1 << 20), Err(code::OFFSET_OUT_OF_RANGE));
    }

    #[test]
    fn a_resent_batch_of_an_idempotent_producer_is_stored_once() {
        let mut log = Log::default();
        assert_eq!(log.append(&batch(2, 1, 9, 0, 0)).unwrap().base, 0);
        assert_eq!(log.append(&batch(1, 1, 9, 2, 0)).unwrap().base, 2);
        let again = log.append(&batch(1, 1, 9, 2, 0)).unwrap();
        assert_eq!((again.base, again.batches.len(), log.end), (2, 0, 3));
        let first = log.append(&batch(2, 1, 9, 0, 0)).unwrap();
        assert_eq!(
            (first.base, first.batches.len()),
            (0, 0),
            "an older resend too"
        );
        for seq in 3..9 {
            log.append(&batch(1, 1, 9, seq, 0)).unwrap();
        }
        assert_eq!(
            log.append(&batch(1, 1, 9, 1, 0)),
            Err(code::DUPLICATE_SEQUENCE_NUMBER),
            "older than the sequences kept"
        );
        assert_eq!(
            log.append(&batch(1, 1, 9, 10, 0)),
            Err(code::OUT_OF_ORDER_SEQUENCE_NUMBER),
            "a gap after the last sequence"
        );
        assert_eq!(log.append(&batch(1, 1, 9, 9, 0)).unwrap().base, 9);
        assert_eq!(
            log.append(&batch(1, 1, 9, 0, 0)).unwrap_err(),
            code::DUPLICATE_SEQUENCE_NUMBER
        );
        let mut new_epoch = batch(1, 1, 9, 0, 0);
        new_epoch[51..53].copy_from_slice(&1i16.to_be_bytes());
        assert_eq!(
            log.append(&new_epoch).unwrap().base,
            10,
            "a new epoch starts over"
        );
    }

    #[test]
    fn a_truncated_or_foreign_batch_is_refused_and_nothing_is_stored() {
        let mut log = Log::default();
        let mut two = batch(1, 1, -1, -1, 4);
        let mut bad = batch(1, 1, -1, -1, 4);
        bad[16] = 1; // magic 1: the old message format
        two.extend_from_slice(&bad);
        assert_eq!(log.append(&two), Err(code::CORRUPT_MESSAGE));
        let whole = batch(1, 1, -1, -1, 4);
        assert_eq!(
            log.append(&whole[..whole.len() - 1]),
            Err(code::CORRUPT_MESSAGE)
        );
        assert_eq!(log.append(&[]), Err(code::CORRUPT_MESSAGE));
        assert_eq!((log.end, log.batch_count()), (0, 0));
    }

    #[test]
    fn time_lookup_and_dropping_the_front() {
        let mut log = Log::default();
        for (i, ts) in [100, 200, 300].into_iter().enumerate() {
            log.append(&batch(2, ts, -1, -1, i)).unwrap();
        }
        assert_eq!(log.offset_for_time(150), Some(2));
        assert_eq!(log.offset_for_time(301), None);
        assert_eq!(log.drop_front(2), None, "only the oldest batch can go");
        assert!(log.drop_front(0).is_some());
        assert_eq!(log.start, 2);
        assert_eq!(log.read(1, 100), Err(code::OFFSET_OUT_OF_RANGE));
        assert_eq!(log.offset_for_time(0), Some(2));
    }

    proptest! {
        /// Reading from any offset gives the batch holding it first and then every later batch
        /// in order, within the byte limit (always at least one).
        #[test]
        fn reads_start_at_the_batch_holding_the_offset(
            counts in proptest::collection::vec(1i32..5, 1..60),
            drop in 0usize..10,
            limit in 1usize..400,
            pick in any::<proptest::sample::Index>(),
        ) {
            let mut log = Log::default();
            for (i, c) in counts.iter().enumerate() {
                log.append(&batch(*c, i as i64, -1, -1, i % 7)).unwrap();
            }
            for _ in 0..drop.min(counts.len() - 1) {
                let base = log.start;
                log.drop_front(base).unwrap();
            }
            let from = log.start + pick.index((log.end - log.start) as usize) as i64;
            let got = log.read(from, limit).unwrap();
            prop_assert!(!got.is_empty());
            let first = be_i64(&got[0], 0);
            let count = i64::from(be_i32(&got[0], 23)) + 1;
            prop_assert!(first <= from && from < first + count);
            let mut expect = first + count;
            for b in &got[1..] {
                prop_assert_eq!(be_i64(b, 0), expect);
                expect += i64::from(be_i32(b, 23)) + 1;
            }
            let size: usize = got.iter().map(|b| b.len()).sum();
            prop_assert!(got.len() == 1 || size <= limit);
        }
    }
}
