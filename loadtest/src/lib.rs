//! The load-test client and its ledger: clients resolve and connect like real ones, send on an
//! open-loop schedule, follow `move` and reconnect with their resume offset, and every message
//! is accounted for (sent, acked, delivered, lost, duplicated, out of order). Latency is
//! measured from the *intended* send time, so a stalled client cannot hide queueing
//! (coordinated omission); service time, from the actual send, is kept beside it.

pub mod driver;
pub mod html;
pub mod ledger;
pub mod plan;
pub mod report;
pub mod shard;
pub mod threshold;

pub use driver::run_client;
pub use ledger::Ledger;
pub use plan::{MsgKey, Pattern, Peers, Phase, Plan};
pub use report::{Report, Sample};

/// This process's CPU time so far, seconds: (user, kernel).
pub fn process_cpu() -> (f64, f64) {
    let hz = procfs::ticks_per_second() as f64;
    procfs::process::Process::myself()
        .and_then(|p| p.stat())
        .map(|s| (s.utime as f64 / hz, s.stime as f64 / hz))
        .unwrap_or((0.0, 0.0))
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
