//! The scaling simulation: the leader's pure decision function (`rtc_balancer::scaler::decide`)
//! replayed over synthetic load curves, with no cluster. It is how the thresholds are tuned and
//! how we show they do not oscillate.
//!
//! Model (one step = one SCALE_INTERVAL_SECS): demand is a number of connections; it spreads
//! evenly over the pods that heartbeat. A pod added by a scale-out heartbeats `startup` seconds
//! later; a pod removed by a scale-in is emptied first (`drain` seconds, during which its
//! clients move to the others) and stops counting. Reported per curve: replicas over time (an
//! ASCII plot), the time over capacity (demand above what the heartbeating pods are sized for),
//! scale events, flaps (a change of direction within 10 minutes) and pod-hours.
//!
//! Run: `bench/scale-sim.sh` (or `cargo run --release -p rtc-balancer --example scale_sim`).

use rtc_balancer::scaler::{decide, Direction, PodCapacity, Policy, State, Workload};
use rtc_protocol::record::Heartbeat;

const CONN_PER_POD: f64 = 5000.0;
const INTERVAL: f64 = 15.0;
const STARTUP: f64 = 30.0;
const DRAIN: f64 = 60.0;
const FLAP_WINDOW: f64 = 600.0;

/// A deterministic pseudo-random sequence (xorshift), so runs are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal, mean 0, deviation 1 (sum of uniforms).
    fn gauss(&mut self) -> f64 {
        (0..12).map(|_| self.next()).sum::<f64>() - 6.0
    }
}

struct Curve {
    name: &'static str,
    hours: f64,
    demand: Box<dyn FnMut(f64) -> f64>,
}

fn curves() -> Vec<Curve> {
    let mut noise = Rng(0x9e3779b97f4a7c15);
    let mut flap = Rng(0x2545f4914f6cdd1d);
    vec![
        Curve {
            name: "steady",
            hours: 2.0,
            demand: Box::new(|_| 18_000.0),
        },
        Curve {
            name: "ramp",
            hours: 2.0,
            demand: Box::new(|t| 5_000.0 + 55_000.0 * (t / 3600.0).min(1.0)),
        },
        Curve {
            name: "spike",
            hours: 2.0,
            demand: Box::new(|t| {
                if (1800.0..2400.0).contains(&t) {
                    80_000.0
                } else {
                    10_000.0
                }
            }),
        },
        Curve {
            name: "diurnal",
            hours: 24.0,
            demand: Box::new(|t| {
                let day = (t / 86_400.0) * std::f64::consts::TAU;
                10_000.0 + 40_000.0 * (1.0 - day.cos()) / 2.0
            }),
        },
        Curve {
            name: "noisy",
            hours: 4.0,
            demand: Box::new(move |_| 20_000.0 * (1.0 + 0.15 * noise.gauss()).max(0.0)),
        },
        Curve {
            name: "flapping",
            hours: 4.0,
            // Around the edge of 2 pods' capacity: up and down by 10 % every 2 minutes, plus noise.
            demand: Box::new(move |t| {
                let base = if ((t / 120.0) as u64).is_multiple_of(2) {
                    9_200.0
                } else {
                    10_800.0
                };
                base * (1.0 + 0.03 * flap.gauss())
            }),
        },
    ]
}

fn heartbeats(pods: usize, demand: f64) -> Vec<Heartbeat> {
    (0..pods)
        .map(|i| Heartbeat {
            node_id: format!("n{i}"),
            connections: (demand / pods as f64).round() as u64,
            ready: true,
            ..Heartbeat::default()
        })
        .collect()
}

struct Outcome {
    series: Vec<(f64, f64, u32)>,
    over_secs: f64,
    outs: u32,
    ins: u32,
    flaps: u32,
    pod_hours: f64,
    max_replicas: u32,
}

fn simulate(curve: &mut Curve, policy: Policy) -> Outcome {
    let cap = PodCapacity {
        conns: CONN_PER_POD,
        mps: 2500.0,
        cpu: 1.0,
        mem_bytes: 1e9,
        lag: 1e4,
        slo_ms: 500.0,
    };
    let mut replicas = policy.min;
    // Pods that heartbeat, pods starting (ready at), pods draining (gone at).
    let mut live = replicas as usize;
    let mut starting: Vec<f64> = vec![];
    let mut draining: Vec<f64> = vec![];
    let mut state = State::default();
    let mut o = Outcome {
        series: vec![],
        over_secs: 0.0,
        outs: 0,
        ins: 0,
        flaps: 0,
        pod_hours: 0.0,
        max_replicas: replicas,
    };
    let mut last_change: Option<(f64, Direction)> = None;
    let steps = (curve.hours * 3600.0 / INTERVAL) as usize;
    for k in 0..steps {
        let t = k as f64 * INTERVAL;
        starting.retain(|&at| {
            if at <= t {
                live += 1;
                false
            } else {
                true
            }
        });
        draining.retain(|&at| at > t);
        let demand = (curve.demand)(t);
        if demand > live as f64 * CONN_PER_POD {
            o.over_secs += INTERVAL;
        }
        o.pod_hours += (live + starting.len() + draining.len()) as f64 * INTERVAL / 3600.0;
        let w = Workload {
            replicas,
            all_ready: starting.is_empty(),
            rolling: false,
            hpa_desired: None,
        };
        let (d, next) = decide(&heartbeats(live, demand), w, cap, policy, state.clone(), t);
        state = next;
        match d.direction {
            Direction::Out => {
                o.outs += 1;
                for _ in replicas..d.replicas {
                    starting.push(t + STARTUP);
                }
            }
            Direction::In => {
                o.ins += 1;
                live -= (replicas - d.replicas) as usize;
                for _ in d.replicas..replicas {
                    draining.push(t + DRAIN);
                }
            }
            Direction::Hold => {}
        }
        if d.direction != Direction::Hold {
            if let Some((at, dir)) = last_change {
                if dir != d.direction && t - at < FLAP_WINDOW {
                    o.flaps += 1;
                }
            }
            last_change = Some((t, d.direction));
        }
        replicas = d.replicas;
        o.max_replicas = o.max_replicas.max(replicas);
        o.series.push((t, demand, replicas));
    }
    o
}

/// A small ASCII plot: demand in pods' worth (`·`) and replicas (`#`), `width` columns.
fn plot(series: &[(f64, f64, u32)], width: usize, height: usize) -> String {
    let per_col = series.len().div_ceil(width).max(1);
    let cols: Vec<(f64, u32)> = series
        .chunks(per_col)
        .map(|c| {
            let demand = c.iter().map(|s| s.1).fold(0.0, f64::max) / CONN_PER_POD;
            let replicas = c.iter().map(|s| s.2).max().unwrap_or(0);
            (demand, replicas)
        })
        .collect();
    let top = cols
        .iter()
        .map(|&(d, r)| d.max(r as f64))
        .fold(1.0, f64::max)
        .ceil();
    let mut out = String::new();
    for row in (1..=height).rev() {
        let level = top * row as f64 / height as f64;
        out.push_str(&format!("{level:>5.1} |"));
        for &(d, r) in &cols {
            out.push(if r as f64 >= level {
                '#'
            } else if d >= level {
                '·'
            } else {
                ' '
            });
        }
        out.push('\n');
    }
    out.push_str(&format!("      +{}\n", "-".repeat(cols.len())));
    out
}

fn main() {
    let policy = Policy {
        min: 2,
        max: 50,
        headroom: 0.9,
        cooldown_secs: 300.0,
        in_window_secs: 600.0,
    };
    println!(
        "policy: min {} max {} headroom {} cooldown {} s, scale-in fits the peak of {} s; \
         CONN_PER_POD {CONN_PER_POD}, decision every {INTERVAL} s, pod start {STARTUP} s, drain {DRAIN} s\n",
        policy.min, policy.max, policy.headroom, policy.cooldown_secs, policy.in_window_secs
    );
    println!("| curve | hours | scale-outs | scale-ins | flaps | time over capacity | max replicas | pod-hours | pod-hours at perfect fit |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut plots = vec![];
    for mut c in curves() {
        let o = simulate(&mut c, policy);
        let ideal: f64 = o
            .series
            .iter()
            .map(|s| (s.1 / CONN_PER_POD).ceil().max(policy.min as f64) * INTERVAL / 3600.0)
            .sum();
        println!(
            "| {} | {} | {} | {} | {} | {:.0} s ({:.2} %) | {} | {:.1} | {:.1} |",
            c.name,
            c.hours,
            o.outs,
            o.ins,
            o.flaps,
            o.over_secs,
            100.0 * o.over_secs / (c.hours * 3600.0),
            o.max_replicas,
            o.pod_hours,
            ideal
        );
        plots.push((c.name, plot(&o.series, 72, 10)));
    }
    for (name, p) in plots {
        println!("\n{name} (pods: # replicas, · demand in pods' worth)\n```\n{p}```");
    }
}
