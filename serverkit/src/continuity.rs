//! Telling a Redis that lost its data from nodes that died. After a restart without persistence,
//! a flush or a failover to an empty replica every heartbeat is gone at once; reading that as
//! "every node died" would move every client for nothing. A generation marker in Redis changes
//! when that happens, and readers then hold what they knew for a grace period while the nodes
//! heartbeat again.

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use rtc_protocol::record::redis::GENERATION_KEY;
use std::time::{Duration, Instant};

/// The current generation of the Redis data, created (at random) when missing.
pub async fn generation(r: &mut ConnectionManager) -> redis::RedisResult<u64> {
    let fresh: u64 = rand::random::<u64>() >> 1;
    let _: bool = r.set_nx(GENERATION_KEY, fresh).await?;
    r.get(GENERATION_KEY).await
}

/// The heartbeats and the generation they belong to. The generation is read after them: data
/// lost during the read (the heartbeats are scanned in several steps) then shows as a new
/// generation. Read before them, an old generation could be paired with an emptied or partial
/// set and read as nodes that died — which moved every client of a node when a flush fell
/// between the two reads.
pub async fn heartbeats(
    r: &mut ConnectionManager,
) -> redis::RedisResult<(u64, Vec<rtc_protocol::record::Heartbeat>)> {
    let heartbeats = crate::store::heartbeats(r).await?;
    Ok((generation(r).await?, heartbeats))
}

/// Whether to hold: set when the generation changes, for `grace`. Pure.
#[derive(Debug, Clone)]
pub struct Continuity {
    grace: Duration,
    last: Option<u64>,
    hold_until: Option<Instant>,
}

impl Continuity {
    pub fn new(grace: Duration) -> Self {
        Continuity {
            grace,
            last: None,
            hold_until: None,
        }
    }

    /// Books the generation read at `now`; true while the data loss it shows is within grace
    /// (the first generation seen is the baseline, not a loss).
    pub fn observe(&mut self, generation: u64, now: Instant) -> bool {
        if self.last.is_some_and(|l| l != generation) {
            tracing::warn!(
                grace_s = self.grace.as_secs_f64(),
                "Redis lost its data (generation changed): holding what was known while nodes heartbeat again"
            );
            self.hold_until = Some(now + self.grace);
        }
        self.last = Some(generation);
        self.holding(now)
    }

    /// Whether a hold is running at `now`.
    pub fn holding(&self, now: Instant) -> bool {
        self.hold_until.is_some_and(|t| now < t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_generation_holds_for_the_grace_only() {
        let t0 = Instant::now();
        let mut c = Continuity::new(Duration::from_secs(5));
        assert!(!c.observe(7, t0), "the first generation is the baseline");
        assert!(!c.observe(7, t0 + Duration::from_secs(1)));
        assert!(
            c.observe(9, t0 + Duration::from_secs(2)),
            "a new generation holds"
        );
        assert!(c.observe(9, t0 + Duration::from_secs(6)));
        assert!(!c.observe(9, t0 + Duration::from_secs(7)), "the grace ends");
    }
}
