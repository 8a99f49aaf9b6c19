//! Headless Chromium (Debian's package) runs the chat page through the gateway, three pages
//! talking to each other. Driven over the DevTools protocol with our WebSocket client.

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
                "--window-size=1100,700",
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
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await?;
        Ok(r["result"]["value"].clone())
    }

    /// Saves a PNG of the page to `path` (when RTC_SCREENSHOT_DIR asks for screenshots).
    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("RTC_SCREENSHOT_DIR") else {
            return;
        };
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await
            .unwrap();
        use base64::Engine;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        let path = std::path::Path::new(&dir).join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        println!("screenshot: {}", path.display());
    }

    /// One DevTools call on the page; its `result`.
    async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
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
        let req = json!({"id": 1, "method": method, "params": params});
        ws.send(Message::Text(req.to_string().into())).await?;
        while let Some(m) = ws.next().await {
            if let Message::Text(t) = m? {
                let v: Value = serde_json::from_str(&t)?;
                if v["id"] == 1 {
                    return Ok(v["result"].clone());
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

impl Browser {
    /// Runs `js` in the page (statements; the value is ignored).
    async fn run(&self, js: &str) {
        self.eval(&format!("(() => {{ {js} }})()")).await.unwrap();
    }

    /// How often `needle` occurs in `selector`'s text now.
    async fn count(&self, selector: &str, needle: &str) -> usize {
        let t = self
            .eval(&format!("document.querySelector('{selector}').innerText"))
            .await
            .unwrap();
        t.as_str().unwrap_or_default().matches(needle).count()
    }

    /// Types `text` (to `to`, or the current room when empty) and presses Send.
    async fn say(&self, to: &str, text: &str) {
        self.run(&format!(
            "document.getElementById('to').value = '{to}'; document.getElementById('text').value = '{text}'; document.getElementById('send').click();"
        ))
        .await;
    }
}

/// The chat page in headless Chromium, through the gateway, using the JavaScript client it
/// loads from `/sdk/rtc.js`: names, rooms with history on join, who is online (member events),
/// direct messages, the node shown, and a dropped connection that reconnects and resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_page_rooms_presence_history_direct_messages_and_resume() {
    rtc_testkit::proc::ensure_installed("chromium", &["chromium"]).unwrap();
    let stack = Stack::start(2, |_| {}).await;
    let gw = GatewayHandle::start(&stack, |_| {}).await;
    let (alice, bob, carol) = (
        stack.client_on(0, "alice"),
        stack.client_on(1, "bob"),
        stack.client_on(1, "carol"),
    );
    let sdk = http_get(&gw.addr, "/sdk/rtc.js").await.unwrap();
    assert_eq!(sdk.status, 200);
    assert!(sdk.body.contains("export class RtcClient"));

    let a = Browser::open(&format!("http://{}/?clientId={alice}&room=lobby", gw.addr));
    let status = a
        .wait_text("#status", "node ", Duration::from_secs(60))
        .await;
    assert!(
        status.contains(&stack.nodes[0].id),
        "alice's page shows her node: {status}"
    );
    a.wait_text("#log", "joined #lobby", Duration::from_secs(30))
        .await;
    let b = Browser::open(&format!("http://{}/?clientId={bob}&room=lobby", gw.addr));
    b.wait_text("#log", "joined #lobby", Duration::from_secs(60))
        .await;
    // Who is online: alice sees bob arrive, bob sees alice already there.
    a.wait_text("#members", &bob, Duration::from_secs(30)).await;
    b.wait_text("#members", &alice, Duration::from_secs(30))
        .await;

    // A room message and a direct message.
    b.say("", "hello-room").await;
    a.wait_text(
        "#log",
        &format!("#lobby {bob}: hello-room"),
        Duration::from_secs(30),
    )
    .await;
    b.say(&alice, "hello-alice").await;
    a.wait_text(
        "#log",
        &format!("{bob} → you: hello-alice"),
        Duration::from_secs(30),
    )
    .await;

    // History on join: carol arrives later and sees what was said.
    let c = Browser::open(&format!("http://{}/?clientId={carol}&room=lobby", gw.addr));
    c.wait_text(
        "#log",
        &format!("#lobby {bob}: hello-room"),
        Duration::from_secs(60),
    )
    .await;

    // Alice's connection drops: her page shows the reconnect, and what bob said meanwhile
    // arrives once.
    a.run("document.getElementById('drop').click();").await;
    b.say("", "while-you-were-away").await;
    b.say(&alice, "direct-while-away").await;
    a.wait_text("#status", "reconnects 1", Duration::from_secs(30))
        .await;
    a.wait_text("#log", "resumed (nothing missed)", Duration::from_secs(30))
        .await;
    a.wait_text("#log", "while-you-were-away", Duration::from_secs(30))
        .await;
    a.wait_text("#log", "direct-while-away", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(a.count("#log", "while-you-were-away").await, 1);
    assert_eq!(a.count("#log", "direct-while-away").await, 1);
    assert_eq!(
        a.count("#log", "hello-room").await,
        1,
        "history is not replayed twice"
    );
    a.screenshot("chat-alice").await;
    b.screenshot("chat-bob").await;
    c.screenshot("chat-carol").await;
    let status = a
        .eval("document.getElementById('status').innerText")
        .await
        .unwrap();
    println!("chat page after the reconnect: {status}");
    drop((a, b, c));
    gw.shutdown().await;
    stack.shutdown().await;
}
