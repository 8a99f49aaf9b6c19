//! A throwaway redis-server on a free loopback port, without persistence.

use crate::proc::Owned;
use std::process::{Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    pub url: String,
    pub port: u16,
    proc: Option<Owned>,
}

impl RedisServer {
    /// Starts redis-server (installing it with apt when missing) and waits until it answers.
    pub async fn start() -> anyhow::Result<Self> {
        crate::proc::ensure_installed("redis-server", &["redis-server"])?;
        let port = crate::free_port();
        let mut r = RedisServer {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            proc: None,
        };
        r.spawn().await?;
        Ok(r)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.proc = Some(Owned(child));
        let port = self.port;
        crate::wait_for("redis-server", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await
    }

    /// Kills the server (clients see it vanish).
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn().await
    }
}
