//! rtc-loadtest: clients that resolve and connect like real ones, messages on an open-loop
//! schedule, a progress line each second, and an exact account of every message. Past the
//! per-process open-file cap it shards itself into worker processes and merges their reports.
//! Exits non-zero if an acked message was lost, duplicated or reordered, or a `--fail-if`
//! threshold is breached.

use anyhow::Context;
use clap::Parser;
use rtc_loadtest::shard::{self, RunSpec};
use rtc_loadtest::{html, threshold, Pattern};
use std::time::Instant;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "rtc-loadtest",
    about = "Drive Reactive RTC like real clients and account for every message",
    version
)]
struct Args {
    /// Gateway `host:port`: resolve, and WebSockets unless --node-routes is given.
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
    /// Approximate size of each message's data, bytes.
    #[arg(long, env = "MSG_SIZE", default_value_t = 64)]
    msg_size: usize,
    /// Whom messages go to.
    #[arg(long, env = "PATTERN", value_enum, default_value_t = Pattern::Direct)]
    pattern: Pattern,
    /// Rooms for the room pattern.
    #[arg(long, env = "ROOMS", default_value_t = 10)]
    rooms: usize,
    /// Handshakes (resolve + upgrade) in flight at once, per process.
    #[arg(long, env = "HANDSHAKES", default_value_t = 256)]
    handshakes: usize,
    /// Local source addresses, rotated per client: `127.0.0.1,127.0.0.2` or `127.0.0.1-127.0.0.8`.
    #[arg(long, env = "SOURCE_ADDRS")]
    source_addrs: Option<String>,
    /// Worker processes (0: as many as the open-file limit needs).
    #[arg(long, env = "WORKERS", default_value_t = 0)]
    workers: usize,
    /// Open WebSockets straight to the nodes listed by this gateway admin address's /routes
    /// (resolve still goes through --target): for more connections than one gateway can hold.
    #[arg(long, env = "NODE_ROUTES")]
    node_routes: Option<String>,
    /// Resolve over https:// and open WebSockets over wss:// on --target (the gateway's
    /// TLS_LISTEN_ADDR), trusting the CA certificates in this PEM file. Not with --node-routes
    /// (nodes speak plain ws://).
    #[arg(long, env = "TLS_CA", conflicts_with = "node_routes")]
    tls_ca: Option<std::path::PathBuf>,
    /// Prefix of the clientIds.
    #[arg(long, env = "CLIENT_PREFIX", default_value = "load")]
    prefix: String,
    /// Conditions the run must meet, e.g. 'p99<50ms,lost==0' (metrics: p50 p90 p99 p999 max in
    /// ms; lost unacked undeliverable duplicated out_of_order errors reconnects connect_failures).
    #[arg(long, env = "FAIL_IF")]
    fail_if: Option<String>,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write an HTML report with plots to this file.
    #[arg(long, env = "HTML_REPORT")]
    html: Option<std::path::PathBuf>,
    /// Runtime threads per process (1: a single-threaded runtime, the leanest per message;
    /// 0: one per core).
    #[arg(long, env = "THREADS", default_value_t = 1)]
    threads: usize,
    /// Internal: run as worker i of --workers.
    #[arg(long, hide = true)]
    worker_index: Option<usize>,
}

impl Args {
    fn spec(&self) -> anyhow::Result<RunSpec> {
        Ok(RunSpec {
            target: self.target.clone(),
            connections: self.connections,
            ramp_up: self.ramp_up,
            duration: self.duration,
            msg_interval: self.msg_interval,
            msg_size: self.msg_size,
            pattern: self.pattern,
            rooms: self.rooms,
            handshakes: self.handshakes,
            sources: self
                .source_addrs
                .as_deref()
                .map(shard::parse_sources)
                .transpose()?
                .unwrap_or_default(),
            node_routes: self.node_routes.clone(),
            tls: self
                .tls_ca
                .as_ref()
                .map(|ca| -> anyhow::Result<rtc_client::Tls> {
                    let pem = std::fs::read(ca)
                        .map_err(|e| anyhow::anyhow!("--tls-ca {}: {e}", ca.display()))?;
                    Ok(rtc_client::Tls::with_ca_pem(&pem)?)
                })
                .transpose()?,
            prefix: self.prefix.clone(),
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = match args.threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b.enable_all().build()?
        }
    };
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    init_logs();
    anyhow::ensure!(args.connections > 0, "CONNECTIONS must be positive");
    let thresholds = args
        .fail_if
        .as_deref()
        .map(threshold::parse)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--fail-if")?;
    let spec = args.spec()?;
    let workers = shard::worker_count(args.connections, args.workers);
    let started = Instant::now();
    let report = match args.worker_index {
        Some(i) => shard::run_shard(&spec, i, workers).await?,
        None if workers <= 1 => shard::run_shard(&spec, 0, 1).await?,
        None => shard::run_workers(args.connections, workers).await?,
    };
    if args.worker_index.is_some() {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.summary_json(workers))?
        );
    } else {
        report.print_summary(workers, args.duration);
    }
    if let Some(path) = &args.html {
        let title = format!(
            "rtc-loadtest: {} clients, {:?}, {} s",
            args.connections, args.pattern, args.duration
        );
        std::fs::write(path, html::render(&title, &report))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "HTML report: {} (run took {:.0} s)",
            path.display(),
            started.elapsed().as_secs_f64()
        );
    }
    let mut breaches: Vec<String> = Vec::new();
    if report.lost > 0 || report.duplicated > 0 || report.out_of_order > 0 {
        breaches.push(format!(
            "{} lost, {} duplicated, {} out of order",
            report.lost, report.duplicated, report.out_of_order
        ));
    }
    for t in thresholds.iter().flatten().filter(|t| !t.holds(&report)) {
        breaches.push(t.describe(&report));
    }
    anyhow::ensure!(breaches.is_empty(), "failed: {}", breaches.join("; "));
    Ok(())
}

/// Logs to stderr (stdout carries the report); level from RUST_LOG, warnings by default.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
