//! rtc-loadtest: N clients through the gateway (resolve, then connect), messages on a schedule,
//! and an exact account: sent, acked, delivered, lost, duplicated. Exits non-zero if anything
//! acked was lost or delivered twice.

use clap::Parser;
use rtc_devkit::client::Endpoints;
use rtc_loadtest::{run_client, Ledger, Pattern, Phase};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Milliseconds between one client's messages.
    #[arg(long, env = "MSG_INTERVAL", default_value_t = 1000)]
    msg_interval: u64,
    /// Whom messages go to.
    #[arg(long, env = "PATTERN", value_enum, default_value_t = Pattern::Direct)]
    pattern: Pattern,
    /// Prefix of the clientIds.
    #[arg(long, env = "CLIENT_PREFIX", default_value = "load")]
    prefix: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    rtc_common::telemetry::init("loadtest");
    anyhow::ensure!(args.connections > 0, "CONNECTIONS must be positive");
    let ep = Endpoints::gateway(&args.target);
    let ids: Arc<Vec<String>> = Arc::new(
        (0..args.connections)
            .map(|i| format!("{}-{i}", args.prefix))
            .collect(),
    );
    let ledger = Arc::new(Mutex::new(Ledger::new()));
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(Phase::Sending);
    let start = Arc::new(tokio::sync::Barrier::new(ids.len() + 1));
    let gap = Duration::from_secs(args.ramp_up) / args.connections as u32;
    let mut tasks = Vec::new();
    for me in ids.iter() {
        tasks.push(tokio::spawn(run_client(
            ep.clone(),
            me.clone(),
            ids.clone(),
            args.pattern,
            Duration::from_millis(args.msg_interval.max(1)),
            phase_rx.clone(),
            ledger.clone(),
            start.clone(),
        )));
        tokio::time::sleep(gap).await;
    }
    start.wait().await;
    eprintln!(
        "{} clients connected; sending for {} s",
        args.connections, args.duration
    );
    let started = std::time::Instant::now();
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
    let report = ledger.lock().expect("ledger lock").report();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "clients {} | sent {} ({:.0}/s) acked {} delivered {} | lost {} duplicated {} errors {} reconnects {} connect-failures {}\nlatency ms p50 {:.2} p99 {:.2} max {:.2} | per node {:?}",
            report.clients,
            report.sent,
            report.sent as f64 / send_secs,
            report.acked,
            report.delivered,
            report.lost,
            report.duplicated,
            report.errors,
            report.reconnects,
            report.connect_failures,
            report.latency_ms_p50,
            report.latency_ms_p99,
            report.latency_ms_max,
            report.per_node
        );
    }
    anyhow::ensure!(
        report.lost == 0 && report.duplicated == 0,
        "{} lost, {} duplicated",
        report.lost,
        report.duplicated
    );
    Ok(())
}
