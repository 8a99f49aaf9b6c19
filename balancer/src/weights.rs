//! Node weights from load relative to capacity, smoothed and with hysteresis so the ring does
//! not oscillate. Pure logic.

use rtc_common::store::Heartbeat;
use std::collections::BTreeMap;

/// Weight of a node with no load, in the ring's milli-units.
pub const FULL: u64 = 1000;
/// The least weight a live node gets, so a loaded node keeps some slots.
pub const MIN: u64 = 100;

/// Capacity a node is sized for.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    pub conns: f64,
    pub mps: f64,
    pub slo_ms: f64,
}

/// The load of a node as the worst of its ratios to capacity (1.0 = at capacity).
pub fn load(hb: &Heartbeat, cap: Capacity) -> f64 {
    let ratios = [hb.connections as f64 / cap.conns, hb.msgs_per_sec / cap.mps, hb.p95_ms / cap.slo_ms, hb.cpu];
    ratios.into_iter().filter(|r| r.is_finite()).fold(0.0, f64::max)
}

/// Target weight for a load: full headroom below half of capacity, then falling linearly to MIN.
pub fn target(load: f64) -> u64 {
    let headroom = if load <= 0.5 { 1.0 } else { (1.5 - load).clamp(0.0, 1.0) };
    ((headroom * FULL as f64).round() as u64).clamp(MIN, FULL)
}

/// Weights in use, updated from new targets with hysteresis: a node's weight changes only when
/// the smoothed target differs from it by more than `hysteresis` (relative).
#[derive(Debug, Default, Clone)]
pub struct Weights {
    smoothed: BTreeMap<String, f64>,
    pub current: BTreeMap<String, u64>,
}

impl Weights {
    /// Folds in one round of targets for the live nodes; returns whether `current` changed.
    pub fn update(&mut self, targets: &BTreeMap<String, u64>, alpha: f64, hysteresis: f64) -> bool {
        let before = self.current.clone();
        self.smoothed.retain(|n, _| targets.contains_key(n));
        self.current.retain(|n, _| targets.contains_key(n));
        for (n, &t) in targets {
            let s = self.smoothed.entry(n.clone()).or_insert(t as f64);
            *s += alpha * (t as f64 - *s);
            let cur = self.current.entry(n.clone()).or_insert(t);
            let rel = (*s - *cur as f64).abs() / (*cur as f64);
            if rel > hysteresis {
                *cur = (s.round() as u64).clamp(MIN, FULL);
            }
        }
        before != self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(conns: u64, cpu: f64) -> Heartbeat {
        Heartbeat {
            node_id: "n".into(),
            addr: String::new(),
            connections: conns,
            msgs_per_sec: 0.0,
            p95_ms: 0.0,
            cpu,
            mem_bytes: 0,
            draining: false,
            ready: true,
            slots: vec![],
            epoch: 0,
            ts_ms: 0,
        }
    }

    const CAP: Capacity = Capacity { conns: 1000.0, mps: 100.0, slo_ms: 500.0 };

    #[test]
    fn load_is_the_worst_ratio() {
        assert_eq!(load(&hb(500, 0.1), CAP), 0.5);
        assert_eq!(load(&hb(100, 0.9), CAP), 0.9);
    }

    #[test]
    fn target_falls_with_load_and_keeps_a_floor() {
        assert_eq!(target(0.2), FULL);
        assert_eq!(target(1.0), 500);
        assert_eq!(target(3.0), MIN);
    }

    #[test]
    fn hysteresis_ignores_noise_and_follows_real_change() {
        let mut w = Weights::default();
        let t = |v: u64| BTreeMap::from([("a".to_string(), v), ("b".to_string(), FULL)]);
        assert!(w.update(&t(FULL), 0.5, 0.25), "first sight sets weights");
        for v in [950, 1000, 900, 980] {
            assert!(!w.update(&t(v), 0.5, 0.25), "noise of {v} does not move the ring");
        }
        let mut changed = false;
        for _ in 0..5 {
            changed |= w.update(&t(300), 0.5, 0.25);
        }
        assert!(changed && w.current["a"] < 700, "a sustained load lowers the weight: {:?}", w.current);
        assert!(w.update(&BTreeMap::from([("b".to_string(), FULL)]), 0.5, 0.25), "a node leaving is a change");
        assert_eq!(w.current.len(), 1);
    }
}
