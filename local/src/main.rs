//! rtc-local: the whole system on one machine — Redis, Kafka (the embedded broker, Apache Kafka, or the
//! broker in KAFKA_BOOTSTRAP), one balancer, N socket nodes and the gateway, each a child process
//! with its log lines prefixed. Ctrl-C stops everything, children first; a child that exits on
//! its own stops the stack too, and rtc-local then exits non-zero saying which one.

use anyhow::Context;
use clap::Parser;
use rtc_client::http::get as http_get;
use rtc_testkit::proc::Owned;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "rtc-local", about = "Run Reactive RTC locally", version)]
struct Args {
    /// Socket nodes to start.
    #[arg(long, env = "NODES", default_value_t = 3)]
    nodes: usize,
    /// Public gateway port (clients connect here).
    #[arg(long, env = "GATEWAY_PORT", default_value_t = 8080)]
    gateway_port: u16,
    /// Gateway admin port.
    #[arg(long, env = "GATEWAY_ADMIN_PORT", default_value_t = 9090)]
    admin_port: u16,
    /// Balancer port.
    #[arg(long, env = "BALANCER_PORT", default_value_t = 8081)]
    balancer_port: u16,
    /// First socket node port; node i listens on this + i.
    #[arg(long, env = "SOCKET_BASE_PORT", default_value_t = 8090)]
    socket_base_port: u16,
    /// An external Kafka; when unset, the one LOCAL_KAFKA names is started.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    kafka_bootstrap: Option<String>,
    /// Kafka to start when KAFKA_BOOTSTRAP is unset: `embedded` (the project's in-memory broker,
    /// inside this process: starts at once, keeps the newest EMBEDDED_KAFKA_MAX_MB), `broker`
    /// (Apache Kafka, KRaft, one node, started and stopped by this launcher; needs Java, its jars
    /// are fetched from Maven Central once into ~/.cache/rtc) or `mock` (librdkafka's mock
    /// cluster, for comparison: it slows down as it fills — it scans every stored batch of a
    /// partition on each fetch — and drops a partition's oldest records past 5 MiB).
    #[arg(long, env = "LOCAL_KAFKA", default_value = "embedded", value_parser = ["embedded", "broker", "mock"])]
    kafka: String,
    /// Megabytes of records the embedded Kafka holds; past it the oldest batches are dropped
    /// (a warning says so) and a node or client further behind cannot read them any more.
    #[arg(long, env = "EMBEDDED_KAFKA_MAX_MB", default_value_t = 512)]
    embedded_kafka_max_mb: usize,
    /// An external Redis; when unset a redis-server is started (installed with apt if missing).
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Slots (partitions of rtc.deliver).
    #[arg(long, env = "SLOTS", default_value_t = rtc_protocol::slot::DEFAULT_SLOTS)]
    slots: u32,
    /// API key of the publish API on this local stack (its name, the default sender, is
    /// `local`). For local use only: deployments take PUBLISH_API_KEYS from a Secret.
    #[arg(
        long,
        env = "LOCAL_PUBLISH_API_KEY",
        default_value = "local-dev-publish-key"
    )]
    publish_api_key: String,
}

const COLORS: [&str; 6] = ["36", "33", "35", "32", "34", "31"];

/// Starts `bin` from the same directory as this executable, prefixing its output.
fn spawn(name: &str, color: &str, bin: &str, envs: &[(&str, String)]) -> anyhow::Result<Owned> {
    let dir: PathBuf = std::env::current_exe()?
        .parent()
        .context("executable has a directory")?
        .to_path_buf();
    let path = dir.join(bin);
    anyhow::ensure!(
        path.is_file(),
        "{} not built; run scripts/local.sh (it builds every binary first)",
        path.display()
    );
    let mut child = Command::new(&path)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {bin}"))?;
    let prefix = format!("\x1b[{color}m{name:>9}\x1b[0m |");
    for out in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as _),
    ]
    .into_iter()
    .flatten()
    {
        let prefix = prefix.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("{prefix} {line}");
            }
        });
    }
    Ok(Owned(child))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    rtc_serverkit::telemetry::init("local");
    let cancel = rtc_serverkit::telemetry::shutdown_on_signal();
    let _redis;
    let redis_url = match &args.redis_url {
        Some(u) => u.clone(),
        None => {
            let r = rtc_testkit::redis::RedisServer::start()
                .await
                .context("starting redis-server")?;
            let url = r.url.clone();
            _redis = r;
            url
        }
    };
    let _kafka;
    let kafka = match &args.kafka_bootstrap {
        Some(b) => b.clone(),
        None => {
            let k = if args.kafka == "broker" {
                println!("starting Apache Kafka (LOCAL_KAFKA=broker)…");
                rtc_testkit::kafka::Kafka::broker(args.slots)
                    .await
                    .context("starting the Apache Kafka broker (needs Java; testkit/tools/kafka)")?
            } else if args.kafka == "mock" {
                rtc_testkit::kafka::Kafka::mock(args.slots)
                    .context("starting librdkafka's mock cluster")?
            } else {
                let cfg = rtc_embedded_kafka::Config {
                    max_bytes: args.embedded_kafka_max_mb << 20,
                    ..Default::default()
                };
                rtc_testkit::kafka::Kafka::embedded(args.slots, cfg)
                    .context("starting the embedded Kafka")?
            };
            let b = k.bootstrap.clone();
            _kafka = k;
            b
        }
    };
    // The embedded mock holds every fetch for the whole wait: keep it short there (unless the
    // environment says otherwise; children inherit it).
    let mock = args.kafka_bootstrap.is_none() && args.kafka == "mock";
    let shared = |extra: Vec<(&'static str, String)>| -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("KAFKA_BOOTSTRAP", kafka.clone()),
            ("REDIS_URL", redis_url.clone()),
            ("SLOTS", args.slots.to_string()),
        ];
        if mock && std::env::var_os("KAFKA_FETCH_WAIT_MS").is_none() {
            v.push((
                "KAFKA_FETCH_WAIT_MS",
                rtc_serverkit::config::MOCK_KAFKA_FETCH_WAIT_MS.to_string(),
            ));
        }
        v.extend(extra);
        v
    };
    let balancer = format!("127.0.0.1:{}", args.balancer_port);
    let mut children = vec![(
        "balancer".to_string(),
        spawn(
            "balancer",
            COLORS[0],
            "rtc-balancer",
            &shared(vec![
                ("LISTEN_ADDR", balancer.clone()),
                (
                    "PUBLISH_API_KEYS",
                    format!("local:{}", args.publish_api_key),
                ),
            ]),
        )?,
    )];
    for i in 0..args.nodes {
        let listen = format!("127.0.0.1:{}", args.socket_base_port + i as u16);
        let env = shared(vec![
            ("NODE_ID", format!("socket-{i}")),
            ("LISTEN_ADDR", listen),
            ("DRAIN_DURATION", "30".into()),
        ]);
        let name = format!("socket-{i}");
        let child = spawn(&name, COLORS[(i + 1) % COLORS.len()], "rtc-socket", &env)?;
        children.push((name, child));
    }
    let gateway = format!("127.0.0.1:{}", args.gateway_port);
    let admin = format!("127.0.0.1:{}", args.admin_port);
    let gw = spawn(
        "gateway",
        COLORS[5],
        "rtc-gateway",
        &[
            ("LISTEN_ADDR", gateway.clone()),
            ("ADMIN_ADDR", admin.clone()),
            ("BALANCER_ADDRS", balancer.clone()),
            ("REDIS_URL", redis_url.clone()),
            ("SHUTDOWN_DELAY_SECS", "0".into()),
        ],
    )?;
    children.push(("gateway".to_string(), gw));

    let nodes = args.nodes;
    let probe = async {
        rtc_testkit::wait_for("the stack", Duration::from_secs(120), || {
            let (admin, balancer) = (admin.clone(), balancer.clone());
            async move {
                let ring = http_get(&balancer, "/readyz")
                    .await
                    .is_ok_and(|r| r.status == 200);
                let gw = http_get(&admin, "/routes")
                    .await
                    .ok()
                    .and_then(|r| serde_json_len(&r.body));
                ring && gw.is_some_and(|n| n >= nodes)
            }
        })
        .await
    };
    // A child that exits on its own (a crash, a port already taken, a bad setting) stops the
    // whole stack, while it comes up as later: it never looks healthy with a part missing.
    let mut died: Option<String> = None;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let mut probe = std::pin::pin!(probe);
    let mut coming_up = true;
    while died.is_none() {
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = &mut probe, if coming_up => {
                coming_up = false;
                match r {
                    Ok(()) => println!(
                        "\n  Reactive RTC is up.\n  Open      http://{gateway}/  (demo page)\n  Resolve   http://{gateway}/api/v1/resolve?clientId=alice\n  Connect   ws://{gateway}/ws/<nodeId>/connect?clientId=…&token=…\n  Publish   curl -H 'Authorization: Bearer {key}' -d '{{\"to\":\"alice\",\"id\":\"1\",\"data\":\"hi\"}}' http://{gateway}/api/v1/publish\n  Admin     http://{admin}/routes  /metrics\n  Kafka     {kafka}   Redis {redis_url}\n  Ctrl-C stops everything.\n",
                        key = args.publish_api_key
                    ),
                    Err(e) => eprintln!("the stack did not come up: {e}"),
                }
            }
            _ = check.tick() => {
                for (name, c) in children.iter_mut() {
                    if let Ok(Some(status)) = c.0.try_wait() {
                        eprintln!("rtc-local: {name} exited ({status}); stopping the stack");
                        died = Some(format!("{name} exited ({status})"));
                        break;
                    }
                }
            }
        }
    }
    println!("stopping…");
    // Gateway first (closes client sockets), then nodes, then the balancer; Kafka and Redis last.
    for (_, c) in children.iter().rev() {
        c.signal(15);
    }
    for (_, mut c) in children.into_iter().rev() {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline && matches!(c.0.try_wait(), Ok(None)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(c);
    }
    match died {
        Some(why) => anyhow::bail!("the stack stopped because {why}"),
        None => Ok(()),
    }
}

/// Number of entries in a JSON object, if `s` is one.
fn serde_json_len(s: &str) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_str(s).ok()?;
    v.as_object().map(|o| o.len())
}
