//! Node weights from load relative to capacity, smoothed and with hysteresis so the ring does
//! not oscillate. Pure logic.

use rtc_serverkit::store::Heartbeat;
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
    pub cpu: f64,
}

/// The load of a node as the worst of its ratios to capacity (1.0 = at capacity).
pub fn load(hb: &Heartbeat, cap: Capacity) -> f64 {
    let ratios = [
        hb.connections as f64 / cap.conns,
        hb.msgs_per_sec / cap.mps,
        hb.p95_ms / cap.slo_ms,
        hb.cpu / cap.cpu,
    ];
    ratios
        .into_iter()
        .filter(|r| r.is_finite())
        .fold(0.0, f64::max)
}

/// The capacity to weigh nodes by, with latency made relative: a node's p95 counts against the
/// larger of L_SLO_MS and twice the median p95 of the live nodes. Latency that every node shares
/// (a slow broker, a saturated machine) then weighs nothing — moving slots cannot fix it, and
/// its noise would move them back and forth — while a node much slower than its peers still
/// sheds. (Scaling looks at absolute latency; see `scaler.rs`.)
pub fn relative_latency(cap: Capacity, heartbeats: &[Heartbeat]) -> Capacity {
    let mut p95: Vec<f64> = heartbeats
        .iter()
        .filter(|h| !h.draining && h.p95_ms.is_finite())
        .map(|h| h.p95_ms)
        .collect();
    if p95.is_empty() {
        return cap;
    }
    p95.sort_by(f64::total_cmp);
    let median = p95[p95.len() / 2];
    Capacity {
        slo_ms: cap.slo_ms.max(2.0 * median),
        ..cap
    }
}

/// Up to this load a node keeps its full weight: below capacity, load differences between nodes
/// are noise (CPU of processes sharing a machine, latency spikes of a shared broker) and moving
/// slots for them costs clients a reconnect each and buys nothing.
pub const KNEE: f64 = 0.9;

/// Target weight for a load: full up to [`KNEE`], then falling linearly (1000 at 0.9, 900 at
/// capacity, 400 at 1.5) to MIN at 1.8.
pub fn target(load: f64) -> u64 {
    let headroom = if load <= KNEE {
        1.0
    } else {
        (1.0 - (load - KNEE)).clamp(0.0, 1.0)
    };
    ((headroom * FULL as f64).round() as u64).clamp(MIN, FULL)
}

/// Weights in use, updated from new targets with hysteresis on each node's *share*: the ring
/// follows only when some node's smoothed share of the total differs from its share in use by
/// more than `hysteresis` (relative), or the set of nodes changed. Nodes whose load rises
/// together keep their shares, so nothing moves.
#[derive(Debug, Default, Clone)]
pub struct Weights {
    smoothed: BTreeMap<String, f64>,
    pub current: BTreeMap<String, u64>,
}

impl Weights {
    /// Folds in one round of targets for the live nodes; returns whether `current` changed.
    pub fn update(&mut self, targets: &BTreeMap<String, u64>, alpha: f64, hysteresis: f64) -> bool {
        self.smoothed.retain(|n, _| targets.contains_key(n));
        for (n, &t) in targets {
            let s = self.smoothed.entry(n.clone()).or_insert(t as f64);
            *s += alpha * (t as f64 - *s);
        }
        let proposed: BTreeMap<String, u64> = self
            .smoothed
            .iter()
            .map(|(n, &s)| (n.clone(), (s.round() as u64).clamp(MIN, FULL)))
            .collect();
        let same_nodes = proposed.len() == self.current.len()
            && proposed.keys().all(|n| self.current.contains_key(n));
        if same_nodes {
            let total = |m: &BTreeMap<String, u64>| m.values().sum::<u64>().max(1) as f64;
            let (tp, tc) = (total(&proposed), total(&self.current));
            let drift = proposed.iter().map(|(n, &w)| {
                let (sp, sc) = (w as f64 / tp, self.current[n] as f64 / tc);
                (sp - sc).abs() / sc
            });
            if drift.fold(0.0, f64::max) <= hysteresis {
                return false;
            }
        }
        self.current = proposed;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(conns: u64, cpu: f64) -> Heartbeat {
        Heartbeat {
            node_id: "n".into(),
            connections: conns,
            cpu,
            ready: true,
            ..Heartbeat::default()
        }
    }

    const CAP: Capacity = Capacity {
        conns: 1000.0,
        mps: 100.0,
        slo_ms: 500.0,
        cpu: 1.0,
    };

    #[test]
    fn shared_latency_weighs_nothing_a_slow_node_still_counts() {
        let slow = |p95: f64| Heartbeat {
            p95_ms: p95,
            ..hb(0, 0.0)
        };
        let all_slow = [slow(3000.0), slow(3300.0), slow(2800.0)];
        let cap = relative_latency(CAP, &all_slow);
        assert_eq!(cap.slo_ms, 6000.0);
        assert!(all_slow.iter().all(|h| load(h, cap) <= KNEE));
        let one_slow = [slow(100.0), slow(120.0), slow(2000.0)];
        let cap = relative_latency(CAP, &one_slow);
        assert_eq!(cap.slo_ms, CAP.slo_ms);
        assert!(load(&one_slow[2], cap) > 1.5);
    }

    #[test]
    fn load_is_the_worst_ratio() {
        assert_eq!(load(&hb(500, 0.1), CAP), 0.5);
        assert_eq!(load(&hb(100, 0.9), CAP), 0.9);
    }

    #[test]
    fn target_falls_with_load_and_keeps_a_floor() {
        assert_eq!(target(0.2), FULL);
        assert_eq!(target(KNEE), FULL);
        assert_eq!(target(1.0), 900);
        assert_eq!(target(1.5), 400);
        assert_eq!(target(3.0), MIN);
    }

    #[test]
    fn hysteresis_ignores_noise_and_follows_real_change() {
        let mut w = Weights::default();
        let t = |v: u64| BTreeMap::from([("a".to_string(), v), ("b".to_string(), FULL)]);
        assert!(w.update(&t(FULL), 0.5, 0.25), "first sight sets weights");
        for v in [950, 1000, 900, 980] {
            assert!(
                !w.update(&t(v), 0.5, 0.25),
                "noise of {v} does not move the ring"
            );
        }
        let mut changed = false;
        for _ in 0..5 {
            changed |= w.update(&t(300), 0.5, 0.25);
        }
        let both = |v: u64| BTreeMap::from([("a".to_string(), v), ("b".to_string(), v)]);
        let mut together = Weights::default();
        together.update(&both(FULL), 0.5, 0.25);
        for _ in 0..10 {
            assert!(
                !together.update(&both(200), 0.5, 0.25),
                "equal load everywhere keeps equal shares"
            );
        }
        assert!(
            changed && w.current["a"] < 700,
            "a sustained load lowers the weight: {:?}",
            w.current
        );
        assert!(
            w.update(&BTreeMap::from([("b".to_string(), FULL)]), 0.5, 0.25),
            "a node leaving is a change"
        );
        assert_eq!(w.current.len(), 1);
    }
}
