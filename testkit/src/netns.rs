//! Tests that need pods with addresses of their own run in a network namespace of their own.
//! Pod addresses cannot be loopback ones: the apiserver refuses 127.0.0.0/8 in EndpointSlices,
//! so the real EndpointSlice controller would publish nothing for them. Inside a fresh namespace
//! (`unshare --net`, root only) the test routes TEST-NET-1 (192.0.2.0/24, RFC 5737) to its own
//! loopback interface, so every pod can listen on 192.0.2.N and everything else (control plane,
//! Redis, Kafka, balancer, gateway) stays on 127.0.0.1 — nothing leaves the namespace.

/// The subnet pods get addresses from inside the namespace.
pub const POD_SUBNET: &str = "192.0.2";

const INSIDE: &str = "RTC_TEST_NETNS";

/// Runs the test named `test` (this test binary's own) again inside a new network namespace and
/// returns false when that run is over (it panics if the run failed); returns true when called
/// inside the namespace, where the test goes on. Call it first, before any runtime starts.
pub fn enter(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    let status = std::process::Command::new("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg(format!(
            "ip link set lo up && ip route add local {POD_SUBNET}.0/24 dev lo && exec \"$0\" \"$@\""
        ))
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .status()
        .expect("unshare runs (util-linux; root is needed for a network namespace)");
    assert!(
        status.success(),
        "{test} failed inside its network namespace ({status})"
    );
    false
}
