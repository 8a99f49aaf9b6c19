//! Ring recompute time: `cargo run --release -p rtc-balancer --example ring_bench`. One line per
//! figure: the time of one assignment step at 50 nodes × 256 slots for a fresh ring, a node
//! leaving, a node joining and a weight change.

use rtc_protocol::ring::plan;
use std::collections::BTreeMap;
use std::time::Instant;

fn time(what: &str, runs: u32, mut f: impl FnMut() -> usize) {
    let start = Instant::now();
    let mut moved = 0;
    for _ in 0..runs {
        moved = f();
    }
    let per = start.elapsed() / runs;
    println!(
        "ring recompute, 50 nodes x 256 slots, {what}: {:.1} us ({moved} slots moved)",
        per.as_secs_f64() * 1e6
    );
}

fn main() {
    let weights: BTreeMap<String, u64> =
        (0..50).map(|i| (format!("socket-{i:02}"), 1000)).collect();
    let empty = vec![None; 256];
    let settled = plan(&empty, &weights, usize::MAX).owners;
    let runs = 2000;
    time("fresh", runs, || plan(&empty, &weights, usize::MAX).moved);
    let mut leave = weights.clone();
    leave.remove("socket-07");
    time("one node leaves", runs, || {
        plan(&settled, &leave, usize::MAX).moved
    });
    let mut join = weights.clone();
    join.insert("socket-50".into(), 1000);
    time("one node joins", runs, || {
        plan(&settled, &join, usize::MAX).moved
    });
    let mut reweigh = weights.clone();
    reweigh.insert("socket-03".into(), 400);
    time("one weight change", runs, || {
        plan(&settled, &reweigh, 16).moved
    });
}
