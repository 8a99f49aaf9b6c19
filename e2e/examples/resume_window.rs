//! Resume after a long time offline: how long the replay of N missed direct messages takes when
//! they must be read back from Kafka, and what it costs in memory. One socket node (in this
//! process) with the default history (1,000 messages / 300 s); the client's messages are
//! interleaved with other clients' records of its slot and stamped over the last hour.
//!
//!   cargo run -p rtc-e2e --example resume_window -- [MINE] [FILL]     (bench/resume-window.sh)
//!
//! RTC_TEST_KAFKA=broker uses the real Kafka broker (testkit), mock the embedded one.

use rtc_client::Connection;
use rtc_e2e::stack::{Stack, SLOTS};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("counts"))
        .collect();
    let mine = args.first().copied().unwrap_or(10_000);
    let fill = args.get(1).copied().unwrap_or(90_000);
    let stack = Stack::start(1, move |c| c.readback_max_messages = mine.max(10_000)).await;
    let ep = stack.endpoints();
    let phone = stack.client_on(0, "phone");
    let c = Connection::connect(&ep, &phone, None, Duration::from_secs(20)).await?;
    let start = c.offset.unwrap_or(-1);
    drop(c);
    let others = rtc_e2e::offline::neighbours(&phone, SLOTS, 50);
    let t = Instant::now();
    let last = rtc_e2e::offline::produce(
        &stack.kafka.bootstrap,
        SLOTS,
        &phone,
        &others,
        mine,
        fill,
        Duration::from_secs(3600),
    )
    .await?;
    let produced_in = t.elapsed();
    let node = stack.nodes[0].node.clone();
    let slot = rtc_protocol::slot::slot_of(&phone, SLOTS);
    rtc_testkit::wait_for("the owner to consume", Duration::from_secs(300), || {
        let done = node.last_offset(slot) >= last;
        async move { done }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Peak RSS while the phone comes back.
    let base = rss_kib();
    let peak = Arc::new(AtomicU64::new(base));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let t = Instant::now();
    let mut back = Connection::connect(&ep, &phone, Some(start), Duration::from_secs(60)).await?;
    let welcome_after = t.elapsed();
    let mut got = 0usize;
    let mut in_order = true;
    while got < mine {
        let m = back
            .until(Duration::from_secs(60), |f| f["type"] == "msg")
            .await?;
        in_order &= m["id"].as_str() == Some(format!("m{got}").as_str());
        got += 1;
    }
    let all_after = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    sampler.join().ok();
    let peak = peak.load(Ordering::Relaxed);
    let records = (last - start) as f64;
    println!(
        "resume-window kafka={} missed={mine} records_in_slot_since={} recovered={} in_order={in_order}",
        std::env::var("RTC_TEST_KAFKA").unwrap_or_else(|_| "mock".into()),
        records as u64,
        back.recovered
    );
    println!(
        "resume-window welcome_ms={} (read-back done)",
        welcome_after.as_millis()
    );
    println!(
        "resume-window replay_all_ms={} ({mine} messages delivered)",
        all_after.as_millis()
    );
    println!(
        "resume-window scan_records_per_sec={:.0}",
        records / welcome_after.as_secs_f64()
    );
    println!(
        "resume-window peak_rss_delta_kib={} (base {base} KiB)",
        peak.saturating_sub(base)
    );
    println!("resume-window produce_ms={}", produced_in.as_millis());
    let cfg = &stack.nodes[0].node.cfg;
    for total_rate in [1_000.0, 10_000.0] {
        let per_partition = total_rate / 256.0;
        let by_records = cfg.readback_max_records as f64 / per_partition / 3600.0;
        let by_time = records / welcome_after.as_secs_f64()
            * (cfg.readback_timeout_ms as f64 / 1000.0)
            / per_partition
            / 3600.0;
        println!(
            "resume-window longest_window_hours at {total_rate} msgs/s over 256 slots: {:.1} (READBACK_MAX_RECORDS {}) / {:.1} (READBACK_TIMEOUT_MS {} at the measured scan rate) / 24 (retention)",
            by_records, cfg.readback_max_records, by_time, cfg.readback_timeout_ms
        );
    }
    anyhow::ensure!(
        back.recovered && in_order,
        "the run did not recover everything in order"
    );
    stack.shutdown().await;
    Ok(())
}
