//! rtc-loadtest: N clients through the gateway (resolve, then connect), messages on an open-loop
//! schedule, a progress line each second, and an exact account: sent, acked, delivered, lost,
//! duplicated. Exits non-zero if anything acked was lost or delivered twice, or a `--fail-if`
//! threshold is breached.

use anyhow::Context;
use clap::Parser;
use rtc_devkit::client::Endpoints;
use rtc_loadtest::{run_client, threshold, Ledger, Pattern, Phase};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "rtc-loadtest",
    about = "Drive Reactive RTC like real clients and account for every message",
    version
)]
struct Args {
    /// Gateway `host:port` (resolve and WebSockets go through it).
    #[arg(long, env = "TARGET", default_value = "127.0.0.1:8080")]
    target: String,
    /// Clients to open.
    #[arg(long, env = "CONNECTIONS", default_value_t = 100)]
    connections: usize,
    /// Seconds over which clients connect.
    #[arg(long, env = "RAMP_UP", default_value_t = 5)]
    ramp_up: u64,
    /// Seconds of sending once everyone is connected.
    #[arg(long, env = "DURATION", default_value_t = 10)]
    duration: u64,
    /// Milliseconds between one client's messages (the schedule is open-loop).
    #[arg(long, env = "MSG_INTERVAL", default_value_t = 1000)]
    msg_interval: u64,
    /// Whom messages go to.
    #[arg(long, env = "PATTERN", value_enum, default_value_t = Pattern::Direct)]
    pattern: Pattern,
    /// Prefix of the clientIds.
    #[arg(long, env = "CLIENT_PREFIX", default_value = "load")]
    prefix: String,
    /// Conditions the run must meet, e.g. 'p99<50ms,lost==0' (metrics: p50 p90 p99 p999 max in
    /// ms; lost duplicated errors reconnects connect_failures).
    #[arg(long, env = "FAIL_IF")]
    fail_if: Option<String>,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Refuses a run the machine cannot hold, and says what to change.
fn check_limits(connections: usize) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft {
        anyhow::ensure!(
            connections + 64 <= soft,
            "{connections} connections need more open files than this process may have ({soft}); raise it with `ulimit -n {}` (the hard limit caps it), or run several processes",
            connections + 1024
        );
    }
    if let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
        let v: Vec<usize> = range
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [lo, hi] = v[..] {
            anyhow::ensure!(
                connections < hi - lo,
                "{connections} connections to one address exceed the local port range {lo}-{hi}; widen net.ipv4.ip_local_port_range"
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    rtc_common::telemetry::init("loadtest");
    anyhow::ensure!(args.connections > 0, "CONNECTIONS must be positive");
    let thresholds = args
        .fail_if
        .as_deref()
        .map(threshold::parse)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--fail-if")?;
    check_limits(args.connections)?;
    let ep = Endpoints::gateway(&args.target);
    let ids: Arc<Vec<String>> = Arc::new(
        (0..args.connections)
            .map(|i| format!("{}-{i}", args.prefix))
            .collect(),
    );
    let ledger = Arc::new(Mutex::new(Ledger::new()));
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(Phase::Sending);
    let start = Arc::new(tokio::sync::Barrier::new(ids.len() + 1));
    let began = Instant::now();
    let progress = tokio::spawn(progress_line(ledger.clone(), args.connections, began));
    let gap = Duration::from_secs(args.ramp_up) / args.connections as u32;
    let mut tasks = Vec::new();
    for me in ids.iter() {
        let interval = Duration::from_millis(args.msg_interval.max(1));
        tasks.push(tokio::spawn(run_client(
            ep.clone(),
            me.clone(),
            ids.clone(),
            args.pattern,
            interval,
            phase_rx.clone(),
            ledger.clone(),
            start.clone(),
        )));
        tokio::time::sleep(gap).await;
    }
    start.wait().await;
    eprintln!(
        "{} clients connected in {:.1} s; sending for {} s",
        args.connections,
        began.elapsed().as_secs_f64(),
        args.duration
    );
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let send_secs = started.elapsed().as_secs_f64();
    phase_tx.send(Phase::Quiet)?;
    // Let acks land, then wait (bounded) until every acked message has been delivered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = rtc_devkit::wait_for("acked messages to arrive", Duration::from_secs(15), || {
        let done = ledger.lock().expect("ledger lock").lost().is_empty();
        async move { done }
    })
    .await;
    phase_tx.send(Phase::Done)?;
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    let report = ledger.lock().expect("ledger lock").report();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let r = &report;
        println!(
            "connections: {} ended on nodes {:?}; reconnects {}, connect failures {}",
            r.clients, r.per_node, r.reconnects, r.connect_failures
        );
        println!(
            "messages:    sent {} ({:.0}/s), acked {}, delivered {}, lost {}, duplicated {}, errors {}",
            r.sent,
            r.sent as f64 / send_secs,
            r.acked,
            r.delivered,
            r.lost,
            r.duplicated,
            r.errors
        );
        println!(
            "latency ms (from intended send): p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2}; service p50 {:.2} p99 {:.2}",
            r.latency_ms_p50, r.latency_ms_p90, r.latency_ms_p99, r.latency_ms_p999, r.latency_ms_max, r.service_ms_p50, r.service_ms_p99
        );
    }
    let mut breaches: Vec<String> = Vec::new();
    if report.lost > 0 || report.duplicated > 0 {
        breaches.push(format!(
            "{} lost, {} duplicated",
            report.lost, report.duplicated
        ));
    }
    for t in thresholds.iter().flatten().filter(|t| !t.holds(&report)) {
        breaches.push(t.describe(&report));
    }
    anyhow::ensure!(breaches.is_empty(), "failed: {}", breaches.join("; "));
    Ok(())
}

/// One line a second on stderr: connections, rates, errors, p99 so far.
async fn progress_line(ledger: Arc<Mutex<Ledger>>, want: usize, began: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (conns, (delivered, sent, errors), p99) = {
            let mut l = ledger.lock().expect("ledger lock");
            let p99 = l
                .latency_us
                .as_ref()
                .map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0);
            (l.connected, std::mem::take(&mut l.window), p99)
        };
        eprintln!(
            "[{:>4.0}s] connections {conns}/{want} | sent {sent}/s delivered {delivered}/s | errors {errors} | p99 {p99:.1} ms",
            began.elapsed().as_secs_f64()
        );
    }
}
