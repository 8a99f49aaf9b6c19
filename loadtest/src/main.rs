//! rtc-loadtest: clients that resolve and connect like real ones, messages on an open-loop
//! schedule, a progress line each second, and an exact account of every message. Past the
//! per-process open-file cap it shards itself into worker processes and merges their reports.
//! Exits non-zero if an acked message was lost, duplicated or reordered, or a `--fail-if`
//! threshold is breached.

use anyhow::Context;
use clap::Parser;
use rtc_devkit::client::{http_get, Endpoints};
use rtc_loadtest::{html, run_client, threshold, Ledger, Pattern, Peers, Phase, Plan, Report};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

fn soft_open_files() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Refuses a run the machine cannot hold, and says what to change.
fn check_limits(per_process: usize, sources: usize, direct_targets: usize) -> anyhow::Result<()> {
    if let Some(soft) = soft_open_files() {
        anyhow::ensure!(
            per_process + 64 <= soft,
            "{per_process} connections in one process need more open files than allowed ({soft}): use more --workers or raise `ulimit -n`"
        );
    }
    if let Ok(range) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
        let v: Vec<usize> = range
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [lo, hi] = v[..] {
            let per_pair = per_process / (sources.max(1) * direct_targets.max(1));
            anyhow::ensure!(
                per_pair < hi - lo,
                "about {per_pair} connections per source address and target exceed the local port range {lo}-{hi}: add --source-addrs (127.0.0.x) or widen net.ipv4.ip_local_port_range"
            );
        }
    }
    Ok(())
}

fn parse_sources(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            None => out.push(
                part.parse()
                    .with_context(|| format!("--source-addrs: {part:?}"))?,
            ),
            Some((a, b)) => {
                let (a, b): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
                    a.parse()
                        .with_context(|| format!("--source-addrs: {a:?}"))?,
                    b.parse()
                        .with_context(|| format!("--source-addrs: {b:?}"))?,
                );
                anyhow::ensure!(
                    u32::from(a) <= u32::from(b) && u32::from(b) - u32::from(a) < 65536,
                    "--source-addrs: bad range {part}"
                );
                out.extend((u32::from(a)..=u32::from(b)).map(|x| IpAddr::V4(x.into())));
            }
        }
    }
    Ok(out)
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
    rtc_common::telemetry::init("loadtest");
    anyhow::ensure!(args.connections > 0, "CONNECTIONS must be positive");
    let thresholds = args
        .fail_if
        .as_deref()
        .map(threshold::parse)
        .transpose()
        .map_err(anyhow::Error::msg)
        .context("--fail-if")?;
    let sources = args
        .source_addrs
        .as_deref()
        .map(parse_sources)
        .transpose()?
        .unwrap_or_default();
    let workers = match (args.workers, soft_open_files()) {
        (0, Some(soft)) => args
            .connections
            .div_ceil(soft.saturating_sub(512).max(1000)),
        (0, None) => 1,
        (n, _) => n,
    };
    let started = Instant::now();
    let report = match args.worker_index {
        Some(i) => run_shard(&args, i, workers, &sources).await?,
        None if workers <= 1 => run_shard(&args, 0, 1, &sources).await?,
        None => run_workers(&args, workers).await?,
    };
    if args.worker_index.is_some() {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "clients": report.clients, "sent": report.sent, "acked": report.acked, "unacked": report.unacked, "delivered": report.delivered,
                "lost": report.lost, "undeliverable": report.undeliverable, "duplicated": report.duplicated, "out_of_order": report.out_of_order,
                "room_delivered": report.room_delivered, "pongs": report.pongs, "foreign": report.foreign, "resent": report.resent, "closes": report.closes, "errors": report.errors,
                "reconnects": report.reconnects, "disconnects": report.disconnects, "connect_failures": report.connect_failures,
                "latency_ms": {"p50": report.latency_ms_p50, "p90": report.latency_ms_p90, "p99": report.latency_ms_p99, "p999": report.latency_ms_p999, "max": report.latency_ms_max},
                "service_ms": {"p50": report.service_ms_p50, "p99": report.service_ms_p99},
                "client_cpu_us_per_msg": report.client_cpu_us_per_msg,
                "client_user_us_per_msg": report.client_user_us_per_msg, "client_sys_us_per_msg": report.client_sys_us_per_msg,
                "per_node": report.per_node, "workers": workers,
            }))?
        );
    } else {
        print_summary(&report, workers, args.duration);
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

fn print_summary(r: &Report, workers: usize, duration: u64) {
    let peak = r.series.iter().map(|s| s.connections).max().unwrap_or(0);
    println!(
        "connections: {} clients ({} worker processes); peak connected {}; connect failures {}, disconnects {}, reconnects {}",
        r.clients, workers, peak, r.connect_failures, r.disconnects, r.reconnects
    );
    if !r.closes.is_empty() {
        println!("closed by:   {:?}", r.closes);
    }
    let received = r.delivered as u64 + r.room_delivered + r.pongs;
    println!(
        "messages:    sent {} ({:.0}/s, {} resent after a reconnect), acked {} (unacked {}), received {} ({:.0}/s); lost {}, duplicated {}, out of order {}, errors {}",
        r.sent,
        r.sent as f64 / duration.max(1) as f64,
        r.resent,
        r.acked,
        r.unacked,
        received,
        received as f64 / duration.max(1) as f64,
        r.lost,
        r.duplicated,
        r.out_of_order,
        r.errors
    );
    println!(
        "latency ms:  p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} (from intended send); service p50 {:.2} p99 {:.2}",
        r.latency_ms_p50, r.latency_ms_p90, r.latency_ms_p99, r.latency_ms_p999, r.latency_ms_max, r.service_ms_p50, r.service_ms_p99
    );
    let nodes: Vec<_> = r.per_node.iter().collect();
    println!(
        "per node:    {nodes:?}; client CPU {:.1} µs per message ({:.1} user, {:.1} kernel)",
        r.client_cpu_us_per_msg, r.client_user_us_per_msg, r.client_sys_us_per_msg
    );
}

/// Spawns `workers` copies of this program, each with a shard of the clients, and merges their
/// reports.
async fn run_workers(args: &Args, workers: usize) -> anyhow::Result<Report> {
    eprintln!(
        "{} connections over {workers} worker processes",
        args.connections
    );
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for i in 0..workers {
        let mut cmd = tokio::process::Command::new(&exe);
        // Same arguments, so a worker computes the same worker count and its own shard.
        cmd.args(std::env::args().skip(1).filter(|a| a != "--json"))
            .args(["--worker-index", &i.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        children.push(cmd.spawn().context("starting a worker")?);
    }
    let mut merged = Report::default();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .last()
            .with_context(|| format!("worker {i} printed no report (exit {:?})", out.status))?;
        let r: Report = serde_json::from_str(line).with_context(|| format!("worker {i} report"))?;
        merged.merge(&r);
    }
    Ok(merged)
}

/// Runs clients `[i·N/W, (i+1)·N/W)` in this process.
async fn run_shard(
    args: &Args,
    i: usize,
    workers: usize,
    sources: &[IpAddr],
) -> anyhow::Result<Report> {
    let (lo, hi) = (
        i * args.connections / workers,
        (i + 1) * args.connections / workers,
    );
    let n = hi - lo;
    let mut ep = Endpoints::gateway(&args.target);
    let mut direct_targets = 1;
    if let Some(admin) = &args.node_routes {
        let routes: HashMap<String, serde_json::Value> =
            serde_json::from_str(&http_get(admin, "/routes").await?.body).context("/routes")?;
        let addrs: HashMap<String, String> = routes
            .into_iter()
            .filter_map(|(k, v)| Some((k, v["addr"].as_str()?.to_string())))
            .collect();
        direct_targets = addrs.len();
        ep.ws = Arc::new(move |node| addrs.get(node).cloned());
    }
    check_limits(n, sources.len(), direct_targets)?;
    let tag = if workers > 1 {
        format!("w{i} ")
    } else {
        String::new()
    };
    let plan = Plan {
        ep,
        peers: Arc::new(Peers::new(
            (lo..hi).map(|k| format!("{}-{k}", args.prefix)).collect(),
        )),
        pattern: args.pattern,
        interval: Duration::from_millis(args.msg_interval.max(1)),
        pad: Arc::from("x".repeat(args.msg_size.saturating_sub(60))),
        rooms: args.rooms,
        handshakes: Arc::new(tokio::sync::Semaphore::new(args.handshakes.max(1))),
        sources: Arc::new(sources.to_vec()),
    };
    let ledger = Arc::new(Mutex::new(Ledger::new()));
    let (phase_tx, phase_rx) = tokio::sync::watch::channel(Phase::Sending);
    let start = Arc::new(tokio::sync::Barrier::new(n + 1));
    let began = Instant::now();
    let progress = tokio::spawn(progress(ledger.clone(), n, began, tag.clone()));
    let gap = Duration::from_secs(args.ramp_up) / n.max(1) as u32;
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        tasks.push(tokio::spawn(run_client(
            plan.clone(),
            k,
            phase_rx.clone(),
            ledger.clone(),
            start.clone(),
        )));
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    start.wait().await;
    eprintln!(
        "{tag}{n} clients connected in {:.1} s; sending for {} s",
        began.elapsed().as_secs_f64(),
        args.duration
    );
    let cpu_before = rtc_loadtest::process_cpu();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    phase_tx.send(Phase::Quiet)?;
    // Wait until every message sent is answered (acked or refused) and every acked one has
    // arrived — or until answers and deliveries stop coming for 30 s (bounded at 180 s): a
    // late message is not a lost one, and an ack still in flight is not an unacked message.
    let (mut last_count, mut last_change) = (usize::MAX, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (settled, count) = {
            let l = ledger.lock().expect("ledger lock");
            (l.settled(), l.progress())
        };
        if count != last_count {
            (last_count, last_change) = (count, Instant::now());
        }
        if settled || last_change.elapsed() > Duration::from_secs(30) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let cpu_after = rtc_loadtest::process_cpu();
    let cpu = (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1);
    phase_tx.send(Phase::Done)?;
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    let l = ledger.lock().expect("ledger lock");
    for (sender, id) in l.lost().into_iter().take(20) {
        let to = l
            .sent
            .get(&(sender, id))
            .map_or("?", |&t| plan.peers.name(t));
        eprintln!(
            "{tag}not delivered: {} → {to} id {id} (acked)",
            plan.peers.name(sender)
        );
    }
    let report = l.report(cpu);
    Ok(report)
}

/// One line a second on stderr, and a sample for the report.
async fn progress(ledger: Arc<Mutex<Ledger>>, want: usize, began: Instant, tag: String) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let t = began.elapsed().as_secs_f64();
        let s = ledger.lock().expect("ledger lock").sample(t);
        eprintln!(
            "{tag}[{t:>4.0}s] connections {}/{want} | sent {}/s received {}/s | errors {} | p99 {:.1} ms",
            s.connections, s.sent, s.delivered, s.errors, s.p99_ms
        );
    }
}
