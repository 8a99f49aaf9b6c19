//! The leader's scaling decision: a pure function of the socket nodes' heartbeats, the
//! Deployment's state and the scaler's memory of its own last decisions. No I/O; the actuator
//! (`actuator.rs`) carries decisions out, the simulation (`examples/scale_sim.rs`) replays them
//! over synthetic load curves.
//!
//! The rules:
//! - **Utilisation** `u` is the worst dimension of the live (heartbeating, not draining) nodes
//!   against their capacity: connections / CONN_PER_POD, messages/s / MPS_PER_POD, CPU /
//!   CPU_PER_POD, memory / MEM_PER_POD_MIB, Kafka lag / LAG_PER_POD (each summed over the nodes and
//!   divided by the node count), and the mean p95 / L_SLO_MS.
//! - **Urgency** 0–3: 0 below capacity (`u < 1`), 1 up to 1.2, 2 up to 1.5, 3 beyond.
//! - **Scale out** when urgency ≥ 1 (urgency 1 only when it held for two decisions in a row, so
//!   one noisy heartbeat does not add a pod), by enough replicas to bring `u` to
//!   [`SCALE_OUT_TO`] or less, at least 1 and at most 1, 3 or 5 by urgency. While an earlier
//!   scale-out has pods that do not heartbeat yet, only urgency 3 adds more, and only if the
//!   pending pods would not be enough.
//! - **Scale in** by exactly one replica when urgency is 0, the *peak* load of the last
//!   `in_window` (600 s) would stay under `headroom` (0.9) of capacity on one pod fewer, every
//!   pod is ready, no rollout runs, and no scale-out happened in the last `cooldown` (300 s).
//!   Using the window's peak, not the last heartbeat, is what keeps noisy load from adding a pod
//!   on a peak and removing it in the next trough (see the simulation's `noisy` curve).
//! - **Bounds**: SOCKET_MIN_REPLICAS..SOCKET_MAX_REPLICAS, and never below a backup HPA's
//!   desired replicas.
//!
//! Why it cannot flap at constant load: a scale-out stops at the fewest replicas with `u ≤ 0.9`,
//! so removing one more would put `u` above 0.9, which a scale-in refuses; and a scale-in leaves
//! `u < 0.9 < 1`, which a scale-out refuses. The property tests check both.

use rtc_protocol::record::Heartbeat;
use std::collections::VecDeque;

/// A scale-out stops at the fewest replicas whose utilisation is at most this.
pub const SCALE_OUT_TO: f64 = 0.9;

/// What one socket node is sized for.
#[derive(Clone, Copy, Debug)]
pub struct PodCapacity {
    pub conns: f64,
    pub mps: f64,
    pub cpu: f64,
    pub mem_bytes: f64,
    pub lag: f64,
    pub slo_ms: f64,
}

/// The scaler's settings.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    /// Scale in only if the remaining pods stay under this fraction of capacity.
    pub headroom: f64,
    /// No scale-in within this many seconds of a scale-out.
    pub cooldown_secs: f64,
    /// A scale-in must fit the peak load of this many seconds (and that much history is needed).
    pub in_window_secs: f64,
}

/// What the Deployment looks like now.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// `spec.replicas`.
    pub replicas: u32,
    /// Every socket pod exists and is Ready.
    pub all_ready: bool,
    /// A rollout (new template) is in progress.
    pub rolling: bool,
    /// A backup HPA's desired replicas, if one exists.
    pub hpa_desired: Option<u32>,
}

/// The scaler's memory between decisions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// Time (seconds, any fixed origin) of the last scale-out.
    pub last_out: Option<f64>,
    /// Consecutive decisions at urgency 1 or more.
    pub over_streak: u32,
    /// (time, load in pods' worth) of the decisions within the scale-in window, oldest first.
    pub window: VecDeque<(f64, f64)>,
    /// When this scaler's first measurement was taken (a scale-in needs a whole window).
    pub since: Option<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
    Hold,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
            Direction::Hold => "hold",
        }
    }
}

/// One decision, with everything that explains it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub direction: Direction,
    /// The replicas to run (equal to the current ones for `Hold`).
    pub replicas: u32,
    pub urgency: u8,
    /// Worst utilisation and the dimension it comes from.
    pub utilisation: f64,
    pub dimension: &'static str,
    pub live: usize,
    pub reason: String,
}

/// Worst utilisation over the dimensions, and which one it is; None without live nodes.
pub fn utilisation(heartbeats: &[Heartbeat], cap: PodCapacity) -> Option<(f64, &'static str)> {
    let live: Vec<&Heartbeat> = heartbeats.iter().filter(|h| !h.draining).collect();
    if live.is_empty() {
        return None;
    }
    let n = live.len() as f64;
    let sum = |f: fn(&Heartbeat) -> f64| live.iter().map(|h| f(h)).sum::<f64>();
    let dims = [
        (
            "connections",
            sum(|h| h.connections as f64) / (n * cap.conns),
        ),
        ("messages", sum(|h| h.msgs_per_sec) / (n * cap.mps)),
        ("cpu", sum(|h| h.cpu) / (n * cap.cpu)),
        ("memory", sum(|h| h.mem_bytes as f64) / (n * cap.mem_bytes)),
        ("kafka_lag", sum(|h| h.kafka_lag as f64) / (n * cap.lag)),
        ("latency", sum(|h| h.p95_ms) / (n * cap.slo_ms)),
    ];
    dims.into_iter().filter(|(_, u)| u.is_finite()).fold(
        None,
        |best: Option<(f64, &'static str)>, (d, u)| match best {
            Some((b, _)) if b >= u => best,
            _ => Some((u, d)),
        },
    )
}

/// Urgency 0–3 of a utilisation.
pub fn urgency(u: f64) -> u8 {
    match u {
        u if u < 1.0 => 0,
        u if u < 1.2 => 1,
        u if u < 1.5 => 2,
        _ => 3,
    }
}

/// The most replicas one scale-out adds at an urgency.
pub fn max_step(urgency: u8) -> u32 {
    match urgency {
        0 => 0,
        1 => 1,
        2 => 3,
        _ => 5,
    }
}

/// The decision at time `now` (seconds), and the scaler's state after it.
pub fn decide(
    heartbeats: &[Heartbeat],
    w: Workload,
    cap: PodCapacity,
    p: Policy,
    mut state: State,
    now: f64,
) -> (Decision, State) {
    let floor = p.min.max(w.hpa_desired.unwrap_or(0)).min(p.max);
    let live = heartbeats.iter().filter(|h| !h.draining).count();
    let measured = utilisation(heartbeats, cap);
    let (u, dim) = measured.unwrap_or((0.0, "none"));
    let urg = if measured.is_some() { urgency(u) } else { 0 };
    let n = live as u32;
    let load = u * n as f64;
    if measured.is_some() {
        state.window.push_back((now, load));
        state.since.get_or_insert(now);
    }
    while state
        .window
        .front()
        .is_some_and(|&(t, _)| now - t > p.in_window_secs)
    {
        state.window.pop_front();
    }
    state.over_streak = if urg > 0 { state.over_streak + 1 } else { 0 };
    let decision = |direction, replicas, reason: String| Decision {
        direction,
        replicas,
        urgency: urg,
        utilisation: u,
        dimension: dim,
        live,
        reason,
    };
    let hold = |reason: String| decision(Direction::Hold, w.replicas, reason);
    if w.replicas < floor {
        state.last_out = Some(now);
        let why = format!("{} replicas are below the floor {floor}", w.replicas);
        return (decision(Direction::Out, floor, why), state);
    }
    if w.replicas > p.max {
        let why = format!("{} replicas are above the maximum {}", w.replicas, p.max);
        return (decision(Direction::In, p.max, why), state);
    }
    if measured.is_none() {
        return (hold("no live socket node heartbeats".into()), state);
    }
    if urg > 0 {
        if w.replicas >= p.max {
            let why = format!(
                "{dim} at {u:.2} of capacity but already at the maximum {}",
                p.max
            );
            return (hold(why), state);
        }
        if urg == 1 && state.over_streak < 2 {
            let why = format!("{dim} at {u:.2} of capacity (urgency 1): once more to act");
            return (hold(why), state);
        }
        // The fewest replicas with utilisation ≤ SCALE_OUT_TO, counted from the live nodes'
        // load; pods still starting count as replicas already.
        let needed = ((load / SCALE_OUT_TO).ceil() as u32).saturating_sub(w.replicas);
        let pending = w.replicas.saturating_sub(n);
        if pending > 0 && (urg < 3 || needed == 0) {
            let why = format!(
                "{dim} at {u:.2} of capacity; waiting for {pending} pod(s) of the last scale-out"
            );
            return (hold(why), state);
        }
        let step = needed.clamp(1, max_step(urg));
        let replicas = (w.replicas + step).min(p.max);
        state.last_out = Some(now);
        let why = format!(
            "{dim} at {u:.2} of capacity (urgency {urg}): +{}",
            replicas - w.replicas
        );
        return (decision(Direction::Out, replicas, why), state);
    }
    // Scale in?
    let peak = state.window.iter().map(|&(_, l)| l).fold(0.0, f64::max);
    let history = state.since.map_or(0.0, |t| now - t);
    let after = peak / (n.max(2) - 1) as f64;
    let blocked = if w.replicas <= floor {
        Some(format!("at the floor {floor}"))
    } else if n < w.replicas {
        Some(format!("{} pod(s) not heartbeating", w.replicas - n))
    } else if !w.all_ready {
        Some("not every pod is ready".into())
    } else if w.rolling {
        Some("a rollout is in progress".into())
    } else if let Some(t) = state.last_out.filter(|t| now - t < p.cooldown_secs) {
        Some(format!("{:.0} s since the last scale-out", now - t))
    } else if history + 1e-9 < p.in_window_secs {
        Some(format!(
            "{history:.0} s of history, {:.0} s needed",
            p.in_window_secs
        ))
    } else if after >= p.headroom {
        Some(format!(
            "the peak of {peak:.2} pods' worth would be {after:.2} of capacity on {} pods (headroom {})",
            n - 1,
            p.headroom
        ))
    } else {
        None
    };
    if let Some(why) = blocked {
        return (hold(format!("{dim} at {u:.2}; no scale-in: {why}")), state);
    }
    let why = format!(
        "{dim} at {u:.2}: {} pods would carry the peak of the last {:.0} s at {after:.2} of capacity",
        n - 1,
        p.in_window_secs
    );
    // The window's loads are in pods' worth, so they stay valid for the next decision: after a
    // peak has left the window, the scaler removes one pod per decision while every pod is
    // ready (the actuator empties each one first, which paces it).
    (decision(Direction::In, w.replicas - 1, why), state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub const CAP: PodCapacity = PodCapacity {
        conns: 100.0,
        mps: 1000.0,
        cpu: 1.0,
        mem_bytes: 1e9,
        lag: 1e4,
        slo_ms: 500.0,
    };
    const POLICY: Policy = Policy {
        min: 2,
        max: 50,
        headroom: 0.9,
        cooldown_secs: 300.0,
        in_window_secs: 30.0,
    };

    fn hbs(n: u32, conns_total: f64) -> Vec<Heartbeat> {
        (0..n)
            .map(|i| Heartbeat {
                node_id: format!("n{i}"),
                connections: (conns_total / n as f64).round() as u64,
                ready: true,
                ..Heartbeat::default()
            })
            .collect()
    }

    fn steady(replicas: u32) -> Workload {
        Workload {
            replicas,
            all_ready: true,
            rolling: false,
            hpa_desired: None,
        }
    }

    #[test]
    fn urgency_sets_the_step() {
        let (d, s) = decide(
            &hbs(4, 440.0),
            steady(4),
            CAP,
            POLICY,
            State::default(),
            0.0,
        );
        assert_eq!(
            (d.direction, d.urgency),
            (Direction::Hold, 1),
            "urgency 1 waits once"
        );
        let (d, _) = decide(&hbs(4, 440.0), steady(4), CAP, POLICY, s, 15.0);
        assert_eq!(
            (d.direction, d.urgency, d.replicas),
            (Direction::Out, 1, 5),
            "{}",
            d.reason
        );
        assert_eq!(d.dimension, "connections");
        let (d, _) = decide(
            &hbs(4, 560.0),
            steady(4),
            CAP,
            POLICY,
            State::default(),
            0.0,
        );
        assert_eq!((d.urgency, d.replicas), (2, 7), "{}", d.reason);
        let (d, _) = decide(
            &hbs(4, 4000.0),
            steady(4),
            CAP,
            POLICY,
            State::default(),
            0.0,
        );
        assert_eq!(
            (d.urgency, d.replicas),
            (3, 9),
            "capped at +5: {}",
            d.reason
        );
    }

    #[test]
    fn scale_in_waits_for_cooldown_readiness_and_a_quiet_window() {
        let quiet = hbs(4, 100.0);
        let s = State {
            last_out: Some(0.0),
            ..State::default()
        };
        let (d, s) = decide(&quiet, steady(4), CAP, POLICY, s, 100.0);
        assert_eq!(d.direction, Direction::Hold, "cooldown: {}", d.reason);
        let not_ready = Workload {
            all_ready: false,
            ..steady(4)
        };
        let (d, s) = decide(&quiet, not_ready, CAP, POLICY, s, 400.0);
        assert_eq!(d.direction, Direction::Hold, "{}", d.reason);
        // A peak inside the window blocks it: 300 connections would be 1.0 on 3 pods.
        let (d, s) = decide(&hbs(4, 300.0), steady(4), CAP, POLICY, s, 410.0);
        assert_eq!(d.direction, Direction::Hold, "{}", d.reason);
        let (d, s) = decide(&quiet, steady(4), CAP, POLICY, s, 420.0);
        assert_eq!(
            d.direction,
            Direction::Hold,
            "the peak is 10 s old: {}",
            d.reason
        );
        let (d, s) = decide(&quiet, steady(4), CAP, POLICY, s, 441.0);
        assert_eq!(
            d.direction,
            Direction::In,
            "the peak left the window: {}",
            d.reason
        );
        assert_eq!(d.replicas, 3);
        let backup = Workload {
            hpa_desired: Some(3),
            ..steady(3)
        };
        let (d, _) = decide(&hbs(3, 100.0), backup, CAP, POLICY, s, 500.0);
        assert_eq!(
            d.direction,
            Direction::Hold,
            "never below the backup HPA: {}",
            d.reason
        );
    }

    proptest! {
        /// Bounds always hold, steps are as documented.
        #[test]
        fn decisions_stay_in_bounds(
            replicas in 1u32..60, live in 1u32..60, conns in 0.0f64..20_000.0,
            hpa in proptest::option::of(1u32..60), ready: bool, rolling: bool,
            last_out in proptest::option::of(0.0f64..1000.0), streak in 0u32..5,
            peaks in proptest::collection::vec((900.0f64..1000.0, 0.0f64..100.0), 0..8),
        ) {
            let w = Workload { replicas, all_ready: ready, rolling, hpa_desired: hpa };
            let mut peaks = peaks;
            peaks.sort_by(|a, b| a.0.total_cmp(&b.0));
            let s = State { last_out, over_streak: streak, window: peaks.into_iter().collect(), since: Some(0.0) };
            let (d, s2) = decide(&hbs(live, conns), w, CAP, POLICY, s, 1000.0);
            let floor = POLICY.min.max(hpa.unwrap_or(0)).min(POLICY.max);
            match d.direction {
                Direction::Hold => prop_assert_eq!(d.replicas, replicas),
                Direction::Out => {
                    prop_assert!(d.replicas > replicas && d.replicas <= POLICY.max.max(floor));
                    prop_assert!(d.replicas - replicas <= 5 || replicas < floor);
                    prop_assert_eq!(s2.last_out, Some(1000.0));
                }
                Direction::In => {
                    prop_assert!(d.replicas < replicas);
                    prop_assert!(d.replicas >= floor);
                    if replicas <= POLICY.max {
                        prop_assert_eq!(d.replicas, replicas - 1);
                        prop_assert!(ready && !rolling);
                        prop_assert!(last_out.is_none_or(|t| 1000.0 - t >= POLICY.cooldown_secs));
                    }
                }
            }
        }

        /// At constant load the replica count moves in one direction and then stays: no flaps.
        #[test]
        fn constant_load_never_flaps(start in 2u32..30, conns in 0.0f64..4000.0) {
            let mut replicas = start;
            let mut s = State::default();
            let mut dirs = vec![];
            for step in 0..200 {
                let t = step as f64 * 15.0;
                let (d, next) = decide(&hbs(replicas, conns), steady(replicas), CAP, POLICY, s.clone(), t);
                if d.direction != Direction::Hold {
                    dirs.push(d.direction);
                }
                replicas = d.replicas;
                s = next;
            }
            dirs.dedup();
            prop_assert!(dirs.len() <= 1, "changed direction: {:?}", dirs);
            let u = conns / (replicas as f64 * CAP.conns);
            prop_assert!(u < 1.0 || replicas == POLICY.max, "ends under capacity: {u}");
        }
    }
}
