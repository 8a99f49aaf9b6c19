//! rtc-echo: a WebSocket echo server and a closed-loop echo client, for measuring a proxy alone
//! at saturation (`bench/gateway-vs-nginx.sh`): every client sends one message, waits for its
//! echo, sends the next — so the rate is what the path can carry, not what was offered.

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{protocol::WebSocketConfig, Message};

#[derive(Parser)]
#[command(about = "WebSocket echo server and closed-loop echo client")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Echo every text or binary message back, on any path.
    Serve {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Runtime worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Closed-loop clients: each keeps exactly one message in flight. Prints a JSON report.
    Run(RunPlan),
    /// Upgrade, one echo, close — `count` times, `concurrency` at once. Prints a JSON report.
    Upgrades {
        #[arg(long)]
        target: String,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = match &args.cmd {
        Cmd::Serve { threads, .. }
        | Cmd::Run(RunPlan { threads, .. })
        | Cmd::Upgrades { threads, .. } => (*threads).max(1),
    };
    // One thread: a current-thread runtime, which runs woken tasks in order (the multi-thread
    // one's LIFO slot lets a closed-loop connection run again and again ahead of the others).
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(async move {
        match args.cmd {
            Cmd::Serve { listen, .. } => serve(&listen).await,
            Cmd::Run(plan) => {
                let report = run(plan).await?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
            Cmd::Upgrades {
                target,
                path,
                count,
                concurrency,
                ..
            } => {
                let report = upgrades(&format!("ws://{target}{path}"), count, concurrency).await;
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
        }
    })
}

/// Small buffers both ways, so the echo side stays cheap at thousands of connections.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

async fn serve(listen: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) =
                tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config())).await
            else {
                return;
            };
            while let Some(Ok(m)) = ws.next().await {
                let echo = match m {
                    Message::Text(_) | Message::Binary(_) => m,
                    Message::Close(_) => return,
                    _ => continue,
                };
                if ws.send(echo).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[derive(clap::Args)]
struct RunPlan {
    /// `host:port` to connect to.
    #[arg(long)]
    target: String,
    /// Request path of the upgrade.
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 15)]
    secs: u64,
    /// Seconds of echoes before the measurement starts (not counted).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Upgrades in flight at once while connecting.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Hold the connections without sending (for memory per idle connection); prints
    /// "clients connected" on stderr once all are open.
    #[arg(long)]
    idle: bool,
}

#[derive(serde::Serialize)]
struct Report {
    connections: usize,
    connected: u64,
    failed_upgrades: u64,
    /// Connections that broke during the run.
    broken: u64,
    echoes: u64,
    secs: f64,
    echoes_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

async fn run(plan: RunPlan) -> anyhow::Result<Report> {
    let url = format!("ws://{}{}", plan.target, plan.path);
    let gate = Arc::new(tokio::sync::Semaphore::new(plan.concurrency.max(1)));
    let connected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let broken = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let all_in = Arc::new(tokio::sync::Barrier::new(plan.connections + 1));
    let payload = "x".repeat(plan.size);
    let mut tasks = Vec::with_capacity(plan.connections);
    let idle = plan.idle;
    for _ in 0..plan.connections {
        let (url, gate, connected, failed, broken, measuring, stop, all_in, payload) = (
            url.clone(),
            gate.clone(),
            connected.clone(),
            failed.clone(),
            broken.clone(),
            measuring.clone(),
            stop.clone(),
            all_in.clone(),
            payload.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds");
            let ws = {
                let _permit = gate.acquire().await.expect("never closed");
                tokio::time::timeout(
                    Duration::from_secs(30),
                    tokio_tungstenite::connect_async_with_config(&url, Some(ws_config()), true),
                )
                .await
            };
            let mut ws = match ws {
                Ok(Ok((ws, _))) => {
                    connected.fetch_add(1, Ordering::Relaxed);
                    ws
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    all_in.wait().await;
                    return hist;
                }
            };
            all_in.wait().await;
            if idle {
                // Keep reading (the peer's pings are answered inside) until the end.
                while !stop.load(Ordering::Relaxed) {
                    if tokio::time::timeout(Duration::from_millis(500), ws.next())
                        .await
                        .is_ok_and(|m| !matches!(m, Some(Ok(_))))
                    {
                        broken.fetch_add(1, Ordering::Relaxed);
                        return hist;
                    }
                }
                let _ = ws.close(None).await;
                return hist;
            }
            let text: tokio_tungstenite::tungstenite::Utf8Bytes = payload.into();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if ws.send(Message::Text(text.clone())).await.is_err() {
                    broken.fetch_add(1, Ordering::Relaxed);
                    return hist;
                }
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(_) | Message::Binary(_))) => break,
                        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                            broken.fetch_add(1, Ordering::Relaxed);
                            return hist;
                        }
                        Some(Ok(_)) => {}
                    }
                }
                if measuring.load(Ordering::Relaxed) {
                    let _ = hist.record(sent.elapsed().as_micros().max(1) as u64);
                }
            }
            let _ = ws.close(None).await;
            hist
        }));
    }
    all_in.wait().await;
    eprintln!("clients connected: {}", connected.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(plan.warmup)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(plan.secs)).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for t in tasks {
        if let Ok(Ok(h)) = tokio::time::timeout(Duration::from_secs(10), t).await {
            total.add(&h)?;
        }
    }
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        connections: plan.connections,
        connected: connected.load(Ordering::Relaxed),
        failed_upgrades: failed.load(Ordering::Relaxed),
        broken: broken.load(Ordering::Relaxed),
        echoes: total.len(),
        secs,
        echoes_per_sec: total.len() as f64 / secs,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: total.max() as f64 / 1000.0,
    })
}

#[derive(serde::Serialize)]
struct UpgradeReport {
    upgrades: usize,
    ok: u64,
    failed: u64,
    /// The first few failures, as the client saw them.
    errors: Vec<String>,
    secs: f64,
}

/// `count` upgrades, each followed by one echo and a close.
async fn upgrades(url: &str, count: usize, concurrency: usize) -> UpgradeReport {
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (url, next, ok, errors) = (url.to_string(), next.clone(), ok.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count as u64 {
                let one = async {
                    let (mut ws, _) =
                        tokio_tungstenite::connect_async_with_config(&url, Some(ws_config()), true)
                            .await?;
                    ws.send(Message::text("hello")).await?;
                    loop {
                        match ws.next().await {
                            Some(Ok(Message::Text(_))) => break,
                            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                            other => anyhow::bail!("no echo: {other:?}"),
                        }
                    }
                    ws.close(None).await?;
                    anyhow::Ok(())
                };
                match tokio::time::timeout(Duration::from_secs(30), one).await {
                    Ok(Ok(())) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => errors.lock().expect("errors lock").push(e.to_string()),
                    Err(_) => errors.lock().expect("errors lock").push("timed out".into()),
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let errors = std::mem::take(&mut *errors.lock().expect("errors lock"));
    UpgradeReport {
        upgrades: count,
        ok: ok.load(Ordering::Relaxed),
        failed: errors.len() as u64,
        errors: errors.into_iter().take(5).collect(),
        secs: started.elapsed().as_secs_f64(),
    }
}
