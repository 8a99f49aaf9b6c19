//! Kafka for tests and the local stack: librdkafka's embedded mock cluster (owned by a thread of
//! its own, since its handle cannot cross threads) or a tansu broker process.

use crate::proc::Owned;
use rdkafka::mocking::MockCluster;
use rtc_serverkit::kafka::{CONTROL_TOPIC, DELIVER_TOPIC, ROOMS_PARTITIONS, ROOMS_TOPIC};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The version of tansu the tests use, installed by scripts/test.sh.
pub const TANSU_VERSION: &str = "0.6.0";

enum Cmd {
    /// Brokers down (true) or up; the sender is told once it is done.
    Outage(bool, mpsc::Sender<()>),
}

enum Inner {
    Mock {
        tx: mpsc::Sender<Cmd>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Tansu {
        proc: Owned,
    },
}

pub struct Kafka {
    pub bootstrap: String,
    pub kind: &'static str,
    inner: Inner,
}

/// Where scripts/test.sh installs tansu, unless TANSU_BIN says otherwise.
pub fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU_BIN") {
        return p.into();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(format!(".cache/rtc/tansu-{TANSU_VERSION}/bin/tansu"))
}

impl Kafka {
    /// The broker named by `RTC_TEST_KAFKA` (`mock`, the default, or `tansu`).
    pub async fn from_env(slots: u32) -> anyhow::Result<Self> {
        match std::env::var("RTC_TEST_KAFKA").as_deref() {
            Ok("tansu") => Self::tansu(slots).await,
            _ => Self::mock(slots),
        }
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

    /// A tansu broker with in-memory storage on a free port, with the project's topics.
    pub async fn tansu(slots: u32) -> anyhow::Result<Self> {
        let bin = tansu_bin();
        anyhow::ensure!(
            bin.is_file(),
            "tansu not found at {} (scripts/test.sh installs it; or set TANSU_BIN)",
            bin.display()
        );
        let port = crate::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let proc = Owned(child);
        crate::wait_for("tansu", Duration::from_secs(20), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await?;
        let bootstrap = format!("127.0.0.1:{port}");
        rtc_serverkit::kafka::ensure_topics(&bootstrap, slots, Duration::from_secs(30)).await?;
        Ok(Kafka {
            bootstrap,
            kind: "tansu",
            inner: Inner::Tansu { proc },
        })
    }

    /// Makes every broker unreachable (`true`) or brings them back; done when it returns.
    pub fn outage(&self, down: bool) {
        match &self.inner {
            Inner::Mock { tx, .. } => {
                let (done_tx, done_rx) = mpsc::channel();
                if tx.send(Cmd::Outage(down, done_tx)).is_ok() {
                    let _ = done_rx.recv_timeout(Duration::from_secs(10));
                }
            }
            Inner::Tansu { proc } => proc.signal(if down { libc::SIGSTOP } else { libc::SIGCONT }),
        }
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if let Inner::Mock { tx, thread } = &mut self.inner {
            let (dead_tx, _) = mpsc::channel();
            drop(std::mem::replace(tx, dead_tx));
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
    }
}
