//! Headless Chromium (Debian's package) loads the demo page through the gateway, and a second
//! page's message arrives on it. Driven over the DevTools protocol with our WebSocket client.

use futures_util::{SinkExt, StreamExt};
use rtc_client::http::get as http_get;
use rtc_e2e::stack::{GatewayHandle, Stack};
use rtc_testkit::proc::Owned;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

struct Browser {
    proc: Owned,
    port: u16,
    _profile: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    fn open(url: &str) -> Browser {
        let port = rtc_testkit::free_port();
        let profile =
            std::env::temp_dir().join(format!("rtc-chromium-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                &format!("--user-data-dir={}", profile.display()),
                &format!("--remote-debugging-port={port}"),
                url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromium starts");
        Browser {
            proc: Owned(child),
            port,
            _profile: TempDir(profile),
        }
    }

    /// Evaluates `expr` in the page and returns its value.
    async fn eval(&self, expr: &str) -> anyhow::Result<Value> {
        let list = http_get(&format!("127.0.0.1:{}", self.port), "/json/list").await?;
        let targets: Vec<Value> = serde_json::from_str(&list.body)?;
        let page = targets
            .iter()
            .find(|t| t["type"] == "page")
            .ok_or_else(|| anyhow::anyhow!("no page yet"))?;
        let url = page["webSocketDebuggerUrl"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no debugger url"))?;
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        let req = json!({"id": 1, "method": "Runtime.evaluate", "params": {"expression": expr, "returnByValue": true}});
        ws.send(Message::Text(req.to_string().into())).await?;
        while let Some(m) = ws.next().await {
            if let Message::Text(t) = m? {
                let v: Value = serde_json::from_str(&t)?;
                if v["id"] == 1 {
                    return Ok(v["result"]["result"]["value"].clone());
                }
            }
        }
        anyhow::bail!("devtools closed")
    }

    async fn wait_text(&self, selector: &str, needle: &str, timeout: Duration) -> String {
        let expr = format!("document.querySelector('{selector}') ? document.querySelector('{selector}').innerText : ''");
        let end = tokio::time::Instant::now() + timeout;
        let mut last = String::new();
        while tokio::time::Instant::now() < end {
            if let Ok(v) = self.eval(&expr).await {
                last = v.as_str().unwrap_or_default().to_string();
                if last.contains(needle) {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("{selector} never contained {needle:?}; last text: {last:?}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.proc.signal(15);
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_receives_a_message_from_a_second_page() {
    rtc_testkit::proc::ensure_installed("chromium", &["chromium"]).unwrap();
    let stack = Stack::start(2, |_| {}).await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let (alice, bob) = (stack.client_on(0, "alice"), stack.client_on(1, "bob"));
    let page_a = Browser::open(&format!("http://{}/?clientId={alice}", gw.addr));
    let status = page_a
        .wait_text("#status", "node ", Duration::from_secs(60))
        .await;
    assert!(
        status.contains(&stack.nodes[0].id),
        "alice's page shows her node: {status}"
    );
    let page_b = Browser::open(&format!(
        "http://{}/?clientId={bob}&to={alice}&say=hello-from-bob",
        gw.addr
    ));
    page_b
        .wait_text("#log", "ack", Duration::from_secs(60))
        .await;
    let log = page_a
        .wait_text("#log", "hello-from-bob", Duration::from_secs(60))
        .await;
    assert!(log.contains(&bob), "the message names its sender: {log}");
    drop(page_b);
    drop(page_a);
    gw.shutdown().await;
    stack.shutdown().await;
}
