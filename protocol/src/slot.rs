//! The slot of a clientId: which partition of `rtc.deliver` holds its messages and which node owns it.
//!
//! `slot(id) = (murmur2(utf8(id)) & 0x7fffffff) mod SLOTS`, the same function as the Java Kafka
//! client's default partitioner, so any producer in any language can compute it.

/// Default number of slots (and partitions of `rtc.deliver`).
pub const DEFAULT_SLOTS: u32 = 256;

/// Kafka's murmur2 (seed `0x9747b28c`), returning the same signed value as `Utils.murmur2` in Java.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The slot of `client_id` among `slots` slots.
pub fn slot_of(client_id: &str, slots: u32) -> u32 {
    debug_assert!(slots > 0, "slot count is validated at start");
    ((murmur2(client_id.as_bytes()) as u32) & 0x7fff_ffff) % slots
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from the Java client's `UtilsTest.testMurmur2`; matching them means our slots
    /// agree with any Kafka client's default partitioner.
    #[test]
    fn murmur2_matches_kafka_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, want) in cases {
            assert_eq!(
                murmur2(input),
                want,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    /// Documented vectors for SLOTS=256 (docs/protocol.md repeats them), computed by an
    /// independent implementation.
    #[test]
    fn slot_vectors() {
        let table = [
            ("21", 236),
            ("abc", 27),
            ("alice", 149),
            ("bob", 206),
            ("carol", 178),
            ("user-42", 44),
            ("", 217),
        ];
        for (id, want) in table {
            assert_eq!(slot_of(id, 256), want, "slot({id:?})");
        }
    }
}
