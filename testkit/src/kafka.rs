//! Kafka for tests and the local stack: the project's embedded broker (`rtc-embedded-kafka`, the
//! default), librdkafka's mock cluster (owned by a thread of its own, since its handle cannot
//! cross threads; kept for comparison) or a real Apache Kafka broker (KRaft, one node) run by
//! `tools/kafka/kafka.sh` from jars cached outside the clone.

use rdkafka::mocking::MockCluster;
use rtc_serverkit::kafka::{CONTROL_TOPIC, DELIVER_TOPIC, ROOMS_PARTITIONS, ROOMS_TOPIC};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

enum Cmd {
    /// Brokers down (true) or up; the sender is told once it is done.
    Outage(bool, mpsc::Sender<()>),
}

enum Inner {
    Embedded(rtc_embedded_kafka::EmbeddedKafka),
    Mock {
        tx: mpsc::Sender<Cmd>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Broker {
        /// The broker's directory (config, data, pid file, log); removed on drop.
        dir: PathBuf,
    },
}

pub struct Kafka {
    pub bootstrap: String,
    pub kind: &'static str,
    inner: Inner,
}

/// The script that installs, starts and stops the real broker.
pub fn broker_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/kafka/kafka.sh")
}

/// Waits until every partition of the project's topics has a leader.
fn wait_for_leaders(bootstrap: &str, limit: Duration) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rtc_serverkit::kafka::base_config(bootstrap).create()?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        let md = c.fetch_metadata(None, Duration::from_secs(5))?;
        let settled = [DELIVER_TOPIC, ROOMS_TOPIC, CONTROL_TOPIC].iter().all(|t| {
            md.topics().iter().any(|mt| {
                mt.name() == *t
                    && !mt.partitions().is_empty()
                    && mt
                        .partitions()
                        .iter()
                        .all(|p| p.leader() >= 0 && p.error().is_none())
            })
        });
        if settled {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "partitions without a leader after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `kafka.sh ARGS`, failing with its output.
fn broker_cmd(args: &[&str]) -> anyhow::Result<String> {
    crate::proc::run_script(&broker_script(), args)
}

impl Kafka {
    /// KAFKA_FETCH_WAIT_MS for clients of this Kafka: the mock holds every fetch that long (the
    /// embedded broker and a real one answer as soon as data arrives).
    pub fn fetch_wait_ms(&self) -> u32 {
        if self.kind == "mock" {
            rtc_serverkit::config::MOCK_KAFKA_FETCH_WAIT_MS
        } else {
            rtc_serverkit::config::DEFAULT_KAFKA_FETCH_WAIT_MS
        }
    }

    /// The Kafka named by `RTC_TEST_KAFKA`: `embedded` (the default), `mock` or `broker`.
    pub async fn from_env(slots: u32) -> anyhow::Result<Self> {
        match std::env::var("RTC_TEST_KAFKA").as_deref() {
            Ok("broker") => Self::broker(slots).await,
            Ok("mock") => Self::mock(slots),
            Ok("embedded") | Err(_) => Self::embedded(slots, Default::default()),
            Ok(other) => {
                anyhow::bail!("RTC_TEST_KAFKA={other}: expected embedded, mock or broker")
            }
        }
    }

    /// The project's embedded broker on a free loopback port, with the project's topics.
    pub fn embedded(slots: u32, cfg: rtc_embedded_kafka::Config) -> anyhow::Result<Self> {
        let k = rtc_embedded_kafka::EmbeddedKafka::start("127.0.0.1:0".parse()?, cfg)?;
        k.create_topic(DELIVER_TOPIC, slots as i32, false);
        k.create_topic(ROOMS_TOPIC, ROOMS_PARTITIONS, false);
        k.create_topic(CONTROL_TOPIC, 1, true);
        k.create_topic(rtc_serverkit::kafka::SCALE_TOPIC, 1, false);
        Ok(Kafka {
            bootstrap: k.bootstrap(),
            kind: "embedded",
            inner: Inner::Embedded(k),
        })
    }

    /// An embedded mock cluster of 3 brokers with the project's topics.
    pub fn mock(slots: u32) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<String>>();
        let thread = std::thread::Builder::new()
            .name("kafka-mock".into())
            .spawn(move || {
                let setup = || -> anyhow::Result<MockCluster<'static, _>> {
                    let c = MockCluster::new(3)?;
                    c.create_topic(DELIVER_TOPIC, slots as i32, 1)?;
                    c.create_topic(ROOMS_TOPIC, ROOMS_PARTITIONS, 1)?;
                    c.create_topic(CONTROL_TOPIC, 1, 1)?;
                    c.create_topic(rtc_serverkit::kafka::SCALE_TOPIC, 1, 1)?;
                    Ok(c)
                };
                let cluster = match setup() {
                    Ok(c) => {
                        let _ = ready_tx.send(Ok(c.bootstrap_servers()));
                        c
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Serve commands until every sender is gone, then drop the cluster on this thread.
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Cmd::Outage(down, done) => {
                            for b in 1..=3 {
                                let _ = if down {
                                    cluster.broker_down(b)
                                } else {
                                    cluster.broker_up(b)
                                };
                            }
                            let _ = done.send(());
                        }
                    }
                }
            })?;
        let bootstrap = ready_rx.recv()??;
        Ok(Kafka {
            bootstrap,
            kind: "mock",
            inner: Inner::Mock {
                tx,
                thread: Some(thread),
            },
        })
    }

    /// A real Apache Kafka broker on a free port with the project's topics, its data in
    /// memory (`/dev/shm` when there is one). The jars are installed on first use.
    pub async fn broker(slots: u32) -> anyhow::Result<Self> {
        let base = ["/dev/shm"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "rtc-kafka-{}-{}",
            std::process::id(),
            crate::free_port()
        ));
        std::fs::create_dir_all(&dir)?;
        let port = crate::free_port();
        let (d, p) = (dir.display().to_string(), port.to_string());
        // Owned from here on: a failed start still stops whatever started, and removes the dir.
        let kafka = Kafka {
            bootstrap: format!("127.0.0.1:{port}"),
            kind: "broker",
            inner: Inner::Broker { dir },
        };
        tokio::task::spawn_blocking(move || broker_cmd(&["start", &d, &p])).await??;
        rtc_serverkit::kafka::ensure_topics(&kafka.bootstrap, slots, Duration::from_secs(60))
            .await?;
        // A real broker answers the create before every new partition has its leader; a
        // deployment's topics are long settled, so the tests start from there too.
        let bootstrap = kafka.bootstrap.clone();
        tokio::task::spawn_blocking(move || wait_for_leaders(&bootstrap, Duration::from_secs(60)))
            .await??;
        Ok(kafka)
    }

    /// Stops the real broker (SIGTERM, as an orderly broker restart does); its data stays.
    pub async fn stop_broker(&self) -> anyhow::Result<()> {
        let Inner::Broker { dir } = &self.inner else {
            anyhow::bail!("only the real broker can be stopped");
        };
        let d = dir.display().to_string();
        tokio::task::spawn_blocking(move || broker_cmd(&["stop", &d])).await??;
        Ok(())
    }

    /// Starts the stopped real broker again, on the same port with the same data.
    pub async fn start_broker(&self) -> anyhow::Result<()> {
        let Inner::Broker { dir } = &self.inner else {
            anyhow::bail!("only the real broker can be started");
        };
        let (d, port) = (
            dir.display().to_string(),
            self.bootstrap
                .rsplit(':')
                .next()
                .unwrap_or_default()
                .to_string(),
        );
        tokio::task::spawn_blocking(move || broker_cmd(&["start", &d, &port])).await??;
        Ok(())
    }

    /// The broker's pid (the real broker only).
    fn broker_pid(&self) -> Option<i32> {
        let Inner::Broker { dir } = &self.inner else {
            return None;
        };
        let pid: i32 = std::fs::read_to_string(dir.join("kafka.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // Only while that pid is still this broker: after a broker died its number can be
        // reused, by another test's broker too, which a signal must not reach.
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let conf = dir.join("server.properties");
        let ours = cmdline
            .split(|&b| b == 0)
            .any(|arg| arg == conf.as_os_str().as_encoded_bytes());
        ours.then_some(pid)
    }

    /// Whether the real broker is frozen by `outage` (its process stopped); `None` for the
    /// embedded ones or when it does not run.
    pub fn frozen(&self) -> Option<bool> {
        crate::proc::state(self.broker_pid()?).map(|s| s == 'T')
    }

    /// Makes every broker unreachable (`true`) or brings them back; done when it returns.
    pub fn outage(&self, down: bool) {
        match &self.inner {
            Inner::Embedded(k) => k.set_down(down),
            Inner::Mock { tx, .. } => {
                let (done_tx, done_rx) = mpsc::channel();
                if tx.send(Cmd::Outage(down, done_tx)).is_ok() {
                    let _ = done_rx.recv_timeout(Duration::from_secs(10));
                }
            }
            Inner::Broker { .. } => {
                // Frozen, not stopped: connections stay open and requests time out, as with a
                // broker that hangs; SIGCONT brings it back with everything it had.
                let pid = self
                    .broker_pid()
                    .expect("the real broker has a pid file while it runs");
                crate::proc::signal(pid, if down { libc::SIGSTOP } else { libc::SIGCONT });
                // Done only when the kernel says so: every thread stopped, or running again.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while self.frozen() != Some(down) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "broker pid {pid} did not {} (state {:?})",
                        if down { "stop" } else { "continue" },
                        crate::proc::state(pid)
                    );
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        let pid = self.broker_pid();
        match &mut self.inner {
            Inner::Embedded(_) => {}
            Inner::Mock { tx, thread } => {
                let (dead_tx, _) = mpsc::channel();
                drop(std::mem::replace(tx, dead_tx));
                if let Some(t) = thread.take() {
                    let _ = t.join();
                }
            }
            Inner::Broker { dir } => {
                // A frozen broker cannot shut down: thaw it first.
                if let Some(pid) = pid {
                    crate::proc::signal(pid, libc::SIGCONT);
                }
                let _ = broker_cmd(&["stop", &dir.display().to_string()]);
                let _ = std::fs::remove_dir_all(&*dir);
            }
        }
    }
}
