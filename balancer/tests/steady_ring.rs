//! No rebalancing on noise, on heartbeats recorded from a real steady run (bench/steady-ring.sh:
//! the local stack, 3 socket nodes, constant load; one round of heartbeats per second). Replayed
//! through the ring computation with the default settings, the ring is placed once and never
//! changes after.

use clap::Parser;
use rtc_balancer::ring::next_ring;
use rtc_balancer::weights::{Capacity, Weights};
use rtc_protocol::record::Heartbeat;
use rtc_protocol::ring::Ring;

#[test]
fn recorded_steady_heartbeats_place_the_ring_once() {
    let cfg = rtc_balancer::config::Config::parse_from(["rtc-balancer"]);
    let cap = Capacity {
        conns: cfg.conn_per_pod as f64,
        mps: cfg.mps_per_pod as f64,
        slo_ms: cfg.l_slo_ms as f64,
        cpu: cfg.cpu_per_pod,
    };
    let text = include_str!("data/steady-heartbeats.jsonl");
    let rounds: Vec<Vec<Heartbeat>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a round of heartbeats"))
        .collect();
    assert!(rounds.len() >= 60, "a recording of at least a minute");
    let mut ring = Ring::empty(cfg.shared.slots);
    let mut weights = Weights::default();
    let mut decisions = vec![];
    for (i, hbs) in rounds.iter().enumerate() {
        if let Some((next, plan)) = next_ring(
            &ring,
            hbs,
            &mut weights,
            cap,
            cfg.weight_hysteresis,
            cfg.max_moves_per_interval,
            0,
        ) {
            decisions.push((i, plan.moved));
            ring = next;
        }
    }
    let peak_cpu = rounds.iter().flatten().map(|h| h.cpu).fold(0.0, f64::max);
    println!(
        "{} rounds, {} nodes, peak node CPU {peak_cpu:.2}; decisions (round, slots moved): {decisions:?}",
        rounds.len(),
        rounds[0].len()
    );
    assert_eq!(decisions.len(), 1, "placement only: {decisions:?}");
}
