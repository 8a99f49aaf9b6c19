//! The balancer's ring loop: read heartbeats, weigh nodes, compute the next ring with the sticky
//! assignment, publish each new epoch to Kafka `rtc.control` and mirror it in Redis.

use crate::weights::{self, Capacity, Weights};
use crate::Balancer;
use anyhow::Context;
use rdkafka::producer::{FutureProducer, FutureRecord};
use redis::aio::ConnectionManager;
use rtc_protocol::ring::{plan, Ring};
use rtc_serverkit::kafka::{CONTROL_TOPIC, RING_KEY};
use rtc_serverkit::store::{self, Heartbeat};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Nodes that may own slots: heartbeating and not draining.
pub fn live(heartbeats: &[Heartbeat]) -> impl Iterator<Item = &Heartbeat> {
    heartbeats.iter().filter(|h| !h.draining)
}

/// One recompute by a leader of `term`: returns the new ring when it differs from `current`, or
/// when `current` is from an older term (a new leader publishes once at once, so that nodes stop
/// taking rings from its predecessor). None as well when `current` is from a newer term: this
/// leader has been deposed.
pub fn next_ring(
    current: &Ring,
    heartbeats: &[Heartbeat],
    weights: &mut Weights,
    cap: Capacity,
    hysteresis: f64,
    max_moves: usize,
    term: u64,
) -> Option<(Ring, rtc_protocol::ring::Plan)> {
    let epoch = current.next_epoch(term)?;
    let cap = weights::relative_latency(cap, heartbeats);
    let targets: BTreeMap<String, u64> = live(heartbeats)
        .map(|h| (h.node_id.clone(), weights::target(weights::load(h, cap))))
        .collect();
    weights.update(&targets, 0.3, hysteresis);
    let p = plan(&current.owners, &weights.current, max_moves);
    if p.owners == current.owners && current.term() == term {
        return None;
    }
    Some((
        Ring {
            epoch,
            owners: p.owners.clone(),
        },
        p,
    ))
}

/// Publishes `ring` on `rtc.control` and waits for Kafka to confirm it.
pub async fn publish(producer: &FutureProducer, ring: &Ring) -> anyhow::Result<()> {
    let json = serde_json::to_string(ring)?;
    let rec = FutureRecord::to(CONTROL_TOPIC)
        .partition(0)
        .key(RING_KEY)
        .payload(&json);
    producer
        .send(rec, Duration::from_secs(5))
        .await
        .map_err(|(e, _)| e)
        .context("publishing the ring to rtc.control")?;
    Ok(())
}

/// Probes every heartbeating node and leaves out the dead ones (see `liveness`): their slots
/// move at once instead of a heartbeat TTL later.
async fn without_dead(
    liveness: &mut crate::liveness::Liveness,
    heartbeats: Vec<Heartbeat>,
    timeout: Duration,
) -> Vec<Heartbeat> {
    let probes = futures_util::future::join_all(
        heartbeats
            .iter()
            .map(|h| crate::liveness::probe(&h.addr, timeout)),
    )
    .await;
    liveness.retain(|n| heartbeats.iter().any(|h| h.node_id == n));
    for (h, p) in heartbeats.iter().zip(probes) {
        if liveness.observe(&h.node_id, p, h.ts_ms) {
            tracing::warn!(node = %h.node_id, addr = %h.addr, probe = ?p, "node is dead; moving its slots");
        }
    }
    heartbeats
        .into_iter()
        .filter(|h| !liveness.is_dead(&h.node_id))
        .collect()
}

/// Recomputes the ring every interval until `cancel`.
pub async fn run(
    bal: Arc<Balancer>,
    mut redis: ConnectionManager,
    mut producer: FutureProducer,
    cancel: CancellationToken,
) {
    let cfg = &bal.cfg;
    let cap = Capacity {
        conns: cfg.conn_per_pod as f64,
        mps: cfg.mps_per_pod as f64,
        slo_ms: cfg.l_slo_ms as f64,
        cpu: cfg.cpu_per_pod,
    };
    let mut weights = Weights::default();
    let mut liveness = crate::liveness::Liveness::default();
    let probe_timeout = Duration::from_millis(cfg.node_probe_timeout_ms);
    let mut continuity =
        rtc_serverkit::continuity::Continuity::new(Duration::from_secs(cfg.redis_loss_grace_secs));
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.ring_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (generation, heartbeats) = match rtc_serverkit::continuity::heartbeats(&mut redis).await
        {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read heartbeats; keeping the current ring");
                continue;
            }
        };
        if continuity.observe(generation, std::time::Instant::now()) {
            // Redis lost its data, not its nodes: keep the ring and the live set (resolve keeps
            // answering) and put the mirror back, while the nodes heartbeat again.
            if let Err(e) = store::put_ring(&mut redis, &bal.ring()).await {
                tracing::debug!(error = %e, "ring mirror not restored yet");
            }
            continue;
        }
        let heartbeats = without_dead(&mut liveness, heartbeats, probe_timeout).await;
        bal.set_nodes(&heartbeats);
        let current = bal.ring();
        // Followers keep the live set (resolve) and take rings from `rtc.control`.
        let Some(term) = bal.writer_term() else {
            continue;
        };
        let Some((ring, p)) = next_ring(
            &current,
            &heartbeats,
            &mut weights,
            cap,
            cfg.weight_hysteresis,
            cfg.max_moves_per_interval,
            term,
        ) else {
            continue;
        };
        // Checked again right before the write: the heartbeat reads and probes took time.
        if bal.writer_term() != Some(term) {
            continue;
        }
        if let Err(e) = publish(&producer, &ring).await {
            // Not applied locally either: resolve must never hand out an epoch nodes cannot see.
            tracing::warn!(error = %e, epoch = ring.epoch, "ring not published; will retry");
            if let Some(why) = e
                .downcast_ref()
                .and_then(|k| rtc_serverkit::kafka::needs_new_producer(&producer, k))
            {
                // An idempotent producer that hit a fatal error never recovers: start afresh.
                match rtc_serverkit::kafka::producer_config(
                    &cfg.shared.kafka_bootstrap,
                    Duration::from_secs(5),
                )
                .create()
                {
                    Ok(p) => {
                        producer = p;
                        tracing::warn!(reason = %why, "ring producer replaced after a fatal error");
                    }
                    Err(e) => tracing::error!(error = %e, "could not replace the ring producer"),
                }
            }
            continue;
        }
        if let Err(e) = store::put_ring(&mut redis, &ring).await {
            tracing::warn!(error = %e, "ring mirror in Redis not updated");
        }
        tracing::info!(
            epoch = ring.epoch,
            moved = p.moved,
            forced = p.forced,
            deferred = p.deferred,
            nodes = weights.current.len(),
            term,
            weights = ?weights.current,
            "ring decision"
        );
        bal.metrics
            .moves
            .with_label_values(&["forced"])
            .inc_by(p.forced as u64);
        bal.metrics
            .moves
            .with_label_values(&["load"])
            .inc_by((p.moved - p.forced) as u64);
        bal.adopt(ring);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: &str, conns: u64, draining: bool) -> Heartbeat {
        Heartbeat {
            node_id: id.into(),
            addr: "127.0.0.1:1".into(),
            connections: conns,
            draining,
            ready: !draining,
            ..Heartbeat::default()
        }
    }

    const CAP: Capacity = Capacity {
        conns: 100.0,
        mps: 100.0,
        slo_ms: 500.0,
        cpu: 1.0,
    };

    #[test]
    fn draining_node_loses_every_slot_at_once_and_quiet_rounds_publish_nothing() {
        let mut w = Weights::default();
        let hbs = vec![hb("a", 0, false), hb("b", 0, false), hb("c", 0, false)];
        let (r1, _) =
            next_ring(&Ring::empty(64), &hbs, &mut w, CAP, 0.25, 0, 0).expect("first ring");
        assert_eq!(r1.epoch, 1);
        assert!(
            next_ring(&r1, &hbs, &mut w, CAP, 0.25, 0, 0).is_none(),
            "nothing changed"
        );
        let hbs = vec![hb("a", 0, false), hb("b", 0, false), hb("c", 0, true)];
        let (r2, p) = next_ring(&r1, &hbs, &mut w, CAP, 0.25, 0, 0).expect("drain moves slots");
        assert!(r2.slots_of("c").is_empty());
        assert_eq!(p.forced, r1.slots_of("c").len());
        assert_eq!(r2.epoch, 2);
    }

    #[test]
    fn a_new_term_publishes_at_once_and_a_deposed_leader_never_does() {
        let mut w = Weights::default();
        let hbs = vec![hb("a", 0, false), hb("b", 0, false)];
        let (r1, _) = next_ring(&Ring::empty(64), &hbs, &mut w, CAP, 0.25, 0, 3).expect("first");
        assert_eq!(
            (r1.term(), r1.epoch),
            (3, rtc_protocol::ring::first_epoch(3))
        );
        assert!(next_ring(&r1, &hbs, &mut w, CAP, 0.25, 0, 3).is_none());
        let (r2, p) = next_ring(&r1, &hbs, &mut w, CAP, 0.25, 0, 4).expect("new term publishes");
        assert_eq!((r2.term(), p.moved), (4, 0));
        assert_eq!(r2.owners, r1.owners, "nothing moves for a new term alone");
        let gone = vec![hb("a", 0, false)];
        assert!(
            next_ring(&r2, &gone, &mut w, CAP, 0.25, 0, 3).is_none(),
            "the leader of term 3 is deposed once term 4 has published"
        );
    }

    fn loaded(id: &str, conns: u64, cpu: f64, p95: f64) -> Heartbeat {
        Heartbeat {
            cpu,
            p95_ms: p95,
            ..hb(id, conns, false)
        }
    }

    proptest::proptest! {
        /// No rebalancing on noise: however the loads of nodes below the knee jump around from
        /// round to round (connections, CPU, latency), the ring changes once (placement) and
        /// never again.
        #[test]
        fn noise_below_capacity_never_moves_a_slot(
            rounds in proptest::collection::vec(
                proptest::collection::vec((0u64..=90, 0.0f64..=0.9, 0.0f64..=450.0), 3), 1..80),
            max_moves in 1usize..20,
        ) {
            let mut w = Weights::default();
            let mut ring = Ring::empty(64);
            let mut decisions = 0;
            for r in rounds {
                let hbs: Vec<Heartbeat> = r.iter().enumerate()
                    .map(|(i, &(c, cpu, p95))| loaded(["a", "b", "c"][i], c, cpu, p95))
                    .collect();
                if let Some((next, _)) = next_ring(&ring, &hbs, &mut w, CAP, 0.25, max_moves, 0) {
                    ring = next;
                    decisions += 1;
                }
            }
            proptest::prop_assert_eq!(decisions, 1, "placement only");
        }

        /// A node far over capacity sheds slots, noise or not.
        #[test]
        fn a_node_far_over_capacity_sheds_despite_noise(
            noise in proptest::collection::vec((0u64..=60, 0.0f64..=0.6), 30),
            hot in 160u64..400,
        ) {
            let mut w = Weights::default();
            let idle = vec![hb("a", 0, false), hb("b", 0, false), hb("c", 0, false)];
            let (mut ring, _) = next_ring(&Ring::empty(64), &idle, &mut w, CAP, 0.25, 4, 0).unwrap();
            let before = ring.slots_of("a").len();
            for &(c, cpu) in &noise {
                let hbs = vec![
                    loaded("a", hot, cpu, 0.0),
                    loaded("b", c, cpu, 0.0),
                    loaded("c", 60 - c, 0.6 - cpu, 0.0),
                ];
                if let Some((next, _)) = next_ring(&ring, &hbs, &mut w, CAP, 0.25, 4, 0) {
                    ring = next;
                }
            }
            proptest::prop_assert!(ring.slots_of("a").len() < before, "a still has {} of {}", ring.slots_of("a").len(), before);
        }
    }

    #[test]
    fn an_overloaded_node_sheds_slots_within_the_cap() {
        let mut w = Weights::default();
        let idle = vec![hb("a", 0, false), hb("b", 0, false)];
        let (r1, _) =
            next_ring(&Ring::empty(64), &idle, &mut w, CAP, 0.25, 4, 0).expect("first ring");
        let hot = vec![hb("a", 140, false), hb("b", 0, false)];
        let mut ring = r1.clone();
        let mut changes = 0;
        for _ in 0..60 {
            if let Some((r, p)) = next_ring(&ring, &hot, &mut w, CAP, 0.25, 4, 0) {
                assert!(p.moved <= 4, "cap respected");
                ring = r;
                changes += 1;
            }
        }
        assert!(
            changes > 1 && changes < 30,
            "sheds in a few capped steps, then stays: {changes}"
        );
        assert!(
            next_ring(&ring, &hot, &mut w, CAP, 0.25, 4, 0).is_none(),
            "stable under steady load"
        );
        assert!(
            ring.slots_of("a").len() < r1.slots_of("a").len(),
            "a lost slots"
        );
    }
}
