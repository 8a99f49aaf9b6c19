//! The local launcher (`scripts/local.sh` runs `rtc-local`): when one of its children dies, it
//! says which, stops the rest and exits non-zero — the stack never looks healthy with a part
//! missing, and no child is left behind.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; it is dead for our purpose.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

/// A port `p` with `p + 1` free too (rtc-local gives node i the port SOCKET_BASE_PORT + i).
fn two_free_ports() -> u16 {
    loop {
        let p = rtc_testkit::free_port();
        if p < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

#[test]
fn a_child_that_dies_stops_the_stack_and_is_reported() {
    let port = || rtc_testkit::free_port().to_string();
    let mut local = Command::new(rtc_e2e::workspace_bin("rtc-local"))
        .envs([
            ("NODES", "2".to_string()),
            ("GATEWAY_PORT", port()),
            ("GATEWAY_ADMIN_PORT", port()),
            ("BALANCER_PORT", port()),
            ("SOCKET_BASE_PORT", two_free_ports().to_string()),
            ("SLOTS", "16".to_string()),
            ("RUST_LOG", "warn".to_string()),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rtc-local starts");
    let local_pid = local.id();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for out in [
        Box::new(local.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(local.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !seen
        .iter()
        .any(|l: &String| l.contains("Reactive RTC is up"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => {
                let _ = local.kill();
                panic!("the stack did not come up: {}", seen.join("\n"));
            }
        }
    }
    let kids = children(local_pid);
    let socket = *kids
        .iter()
        .find(|&&p| cmdline(p).contains("rtc-socket"))
        .unwrap_or_else(|| panic!("no rtc-socket child among {kids:?}"));
    rtc_testkit::proc::signal(socket as i32, 9);

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = local.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = local.kill();
            panic!("rtc-local kept running after its child died");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(l) = rx.recv_timeout(Duration::from_secs(2)) {
        seen.push(l);
    }
    assert!(!status.success(), "rtc-local exits non-zero: {status}");
    let log = seen.join("\n");
    assert!(
        log.contains("socket-") && log.contains("exited") && log.contains("stopping the stack"),
        "it says which child died: {log}"
    );
    for k in kids {
        assert!(!alive(k), "child {k} ({}) was left running", cmdline(k));
    }
}
