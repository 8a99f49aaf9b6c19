//! Running clients in this process (a shard), or across worker processes past the per-process
//! open-file cap, with the limits of the machine checked first.

use crate::driver::run_client;
use crate::ledger::Ledger;
use crate::plan::{Pattern, Peers, Phase, Plan};
use crate::report::Report;
use anyhow::Context;
use rtc_client::http::get as http_get;
use rtc_client::Endpoints;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to run: the settings of the whole run (every shard computes its part from them).
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub target: String,
    pub connections: usize,
    pub ramp_up: u64,
    pub duration: u64,
    pub msg_interval: u64,
    pub msg_size: usize,
    pub pattern: Pattern,
    pub rooms: usize,
    pub handshakes: usize,
    pub sources: Vec<IpAddr>,
    pub node_routes: Option<String>,
    /// Resolve and WebSockets over TLS to `target`.
    pub tls: Option<rtc_client::Tls>,
    pub prefix: String,
}

/// Worker processes a run needs: as asked, or as many as the open-file limit requires.
pub fn worker_count(connections: usize, asked: usize) -> usize {
    match (asked, soft_open_files()) {
        (0, Some(soft)) => connections.div_ceil(soft.saturating_sub(512).max(1000)),
        (0, None) => 1,
        (n, _) => n,
    }
}

pub fn soft_open_files() -> Option<usize> {
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
pub fn check_limits(
    per_process: usize,
    sources: usize,
    direct_targets: usize,
) -> anyhow::Result<()> {
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

pub fn parse_sources(spec: &str) -> anyhow::Result<Vec<IpAddr>> {
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

/// Spawns `workers` copies of this program, each with a shard of the clients, and merges their
/// reports.
pub async fn run_workers(connections: usize, workers: usize) -> anyhow::Result<Report> {
    eprintln!("{connections} connections over {workers} worker processes");
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
pub async fn run_shard(args: &RunSpec, i: usize, workers: usize) -> anyhow::Result<Report> {
    let sources = &args.sources;
    let (lo, hi) = (
        i * args.connections / workers,
        (i + 1) * args.connections / workers,
    );
    let n = hi - lo;
    let mut ep = Endpoints::gateway(&args.target);
    ep.tls = args.tls.clone();
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
    let cpu_before = crate::process_cpu();
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
    let cpu_after = crate::process_cpu();
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
