//! Balancer leader election on a real control plane: two `rtc-balancer` processes, one Lease.
//! - an isolated leader (its apiserver connection cut by a proxy this test controls) stops
//!   writing before the other starts;
//! - kill -9 of the leader: the other leads within lease + retry;
//! - SIGTERM of the leader: the Lease is released and the other leads within about a retry;
//! - followers answer resolve from the published ring, and the ring terms on `rtc.control` never
//!   go back (fencing), and the socket node ends on the newest term.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use rtc_protocol::ring::Ring;
use rtc_testkit::proc::Owned;
use std::path::Path;
use std::time::{Duration, Instant};

const NS: &str = "rtc";
const SLOTS: u32 = 16;

struct Balancer {
    name: &'static str,
    addr: String,
    proc: Owned,
}

fn spawn_balancer(
    name: &'static str,
    kubeconfig: &Path,
    kafka: &rtc_testkit::kafka::Kafka,
    redis: &str,
) -> Balancer {
    let addr = format!("127.0.0.1:{}", rtc_testkit::free_port());
    let child = std::process::Command::new(rtc_e2e::workspace_bin("rtc-balancer"))
        .envs([
            ("LISTEN_ADDR", addr.clone()),
            ("KAFKA_BOOTSTRAP", kafka.bootstrap.clone()),
            ("KAFKA_FETCH_WAIT_MS", kafka.fetch_wait_ms().to_string()),
            ("REDIS_URL", redis.into()),
            ("SLOTS", SLOTS.to_string()),
            ("RING_INTERVAL_MS", "200".into()),
            ("ENABLE_LEADER_ELECTION", "true".into()),
            ("ENABLE_SCALER", "false".into()),
            ("KUBERNETES_NAMESPACE", NS.into()),
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("POD_NAME", name.into()),
            ("RUST_LOG", "info".into()),
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("rtc-balancer starts");
    Balancer {
        name,
        addr,
        proc: Owned(child),
    }
}

impl Balancer {
    async fn metric(&self, name: &str) -> Option<f64> {
        let r = rtc_client::http::get(&self.addr, "/metrics").await.ok()?;
        metric(&r.body, name)
    }

    async fn leads(&self) -> bool {
        self.metric("rtc_lb_is_leader").await == Some(1.0)
    }

    async fn epoch(&self) -> u64 {
        self.metric("rtc_lb_ring_epoch").await.unwrap_or(0.0) as u64
    }
}

/// The value of the first sample of `name` in a Prometheus text exposition.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            return None;
        }
        rest.rsplit(' ').next()?.trim().parse().ok()
    })
}

/// Polls every 50 ms until `b` leads; returns when it was first seen leading.
async fn until_leads(b: &Balancer, limit: Duration) -> Instant {
    let end = Instant::now() + limit;
    loop {
        if b.leads().await {
            return Instant::now();
        }
        assert!(
            Instant::now() < end,
            "{} did not lead within {limit:?}",
            b.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every ring on `rtc.control`, in log order, with its Kafka timestamp.
fn control_log(bootstrap: &str) -> Vec<(i64, Ring)> {
    rtc_e2e::read_topic(bootstrap, rtc_serverkit::kafka::CONTROL_TOPIC)
        .into_iter()
        .map(|(ts, p)| (ts, serde_json::from_slice(&p).expect("a ring")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_rings_of_a_deposed_leader_are_fenced() {
    rtc_e2e::stack::init_logs();
    let cp = rtc_testkit::kube::ControlPlane::start()
        .await
        .expect("the control plane starts (binaries from testkit/tools/kube/kube.sh install)");
    let client = cp.client().await.unwrap();
    rtc_e2e::kube::namespace(&client, NS).await;
    let leases = Api::<Lease>::namespaced(client.clone(), NS);
    let redis = rtc_testkit::redis::RedisServer::start().await.unwrap();
    let kafka = rtc_testkit::kafka::Kafka::from_env(SLOTS).await.unwrap();
    let proxy = rtc_testkit::proxy::Proxy::start(cp.api_addr().unwrap())
        .await
        .unwrap();
    let via_proxy = cp.kubeconfig_via(proxy.addr, "a.kubeconfig").unwrap();

    // One socket node, so that rings have an owner and resolve has an answer.
    let node_addr = format!("127.0.0.1:{}", rtc_testkit::free_port());
    let _node = Owned(
        std::process::Command::new(rtc_e2e::workspace_bin("rtc-socket"))
            .envs([
                ("NODE_ID", "node-0".to_string()),
                ("LISTEN_ADDR", node_addr.clone()),
                ("KAFKA_BOOTSTRAP", kafka.bootstrap.clone()),
                ("KAFKA_FETCH_WAIT_MS", kafka.fetch_wait_ms().to_string()),
                ("REDIS_URL", redis.url.clone()),
                ("SLOTS", SLOTS.to_string()),
                ("HEARTBEAT_INTERVAL_MS", "200".into()),
                ("RUST_LOG", "warn".into()),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("rtc-socket starts"),
    );

    // a leads first (term 1); b follows and answers resolve from a's ring.
    let a = spawn_balancer("lb-a", &via_proxy, &kafka, &redis.url);
    until_leads(&a, Duration::from_secs(60)).await;
    let b = spawn_balancer("lb-b", &cp.kubeconfig, &kafka, &redis.url);
    rtc_testkit::wait_for("b to take a's ring", Duration::from_secs(60), || async {
        let (ea, eb) = (a.epoch().await, b.epoch().await);
        ea > 0 && ea == eb
    })
    .await
    .unwrap();
    assert_eq!(a.epoch().await >> 32, 1, "a's first term");
    let r = rtc_client::http::get(&b.addr, "/api/v1/resolve?clientId=alice")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "a follower answers resolve: {}", r.body);
    assert!(r.body.contains("node-0"), "{}", r.body);
    assert!(!b.leads().await, "one leader at a time");

    // Isolation: a cannot reach the apiserver. It must stop writing before b starts.
    let cut = Instant::now();
    proxy.cut();
    let mut a_stopped = None;
    let b_started;
    loop {
        if a_stopped.is_none() && !a.leads().await {
            a_stopped = Some(Instant::now());
        }
        if b.leads().await {
            b_started = Instant::now();
            break;
        }
        assert!(cut.elapsed() < Duration::from_secs(40), "b never took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a_stopped = a_stopped.expect("a stopped leading before b started");
    assert!(a_stopped < b_started);
    println!(
        "isolation: a stopped writing {:.1} s after the cut, b led {:.1} s after it ({:.1} s apart)",
        (a_stopped - cut).as_secs_f64(),
        (b_started - cut).as_secs_f64(),
        (b_started - a_stopped).as_secs_f64()
    );
    proxy.heal();

    // kill -9 of the leader (b): a, reconnected, takes over within lease + retry.
    rtc_testkit::wait_for("b to publish its term", Duration::from_secs(30), || async {
        a.epoch().await >> 32 == 2
    })
    .await
    .unwrap();
    let killed = Instant::now();
    b.proc.signal(9);
    let led = until_leads(&a, Duration::from_secs(40)).await;
    let kill_failover = (led - killed).as_secs_f64();
    println!("kill -9: a led {kill_failover:.1} s after b was killed");
    assert!(
        kill_failover <= 15.0 + 2.4 + 5.0,
        "within lease + jittered retry (+ slack for a loaded machine): {kill_failover:.1} s"
    );

    // SIGTERM of the leader (a): it releases the Lease; a new b leads within about a retry.
    let b2 = spawn_balancer("lb-b", &cp.kubeconfig, &kafka, &redis.url);
    rtc_testkit::wait_for("b2 to follow", Duration::from_secs(60), || async {
        b2.epoch().await >> 32 == 3
    })
    .await
    .unwrap();
    let termed = Instant::now();
    a.proc.signal(15);
    let led = until_leads(&b2, Duration::from_secs(30)).await;
    let term_failover = (led - termed).as_secs_f64();
    println!("SIGTERM: b led {term_failover:.1} s after a was told to stop");
    assert!(
        term_failover < 15.0,
        "a released the Lease, so b did not wait out its 15 s: {term_failover:.1} s"
    );
    let lease = leases.get("load-balancer-leader").await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("lb-b"));
    assert_eq!(
        spec.lease_transitions,
        Some(4),
        "terms 1 (a), 2 (b), 3 (a), 4 (b)"
    );

    // Fencing, as the log shows it: terms never go back, epochs only rise, and each term's
    // first ring comes after the previous term's last.
    rtc_testkit::wait_for("term 4 on rtc.control", Duration::from_secs(30), || async {
        b2.epoch().await >> 32 == 4
    })
    .await
    .unwrap();
    let log = control_log(&kafka.bootstrap);
    let terms: Vec<u64> = log.iter().map(|(_, r)| r.term()).collect();
    assert!(
        log.windows(2).all(|w| w[0].1.epoch < w[1].1.epoch),
        "epochs rise along the log: {:?}",
        log.iter().map(|(_, r)| r.epoch).collect::<Vec<_>>()
    );
    let mut seen: Vec<u64> = terms.clone();
    seen.dedup();
    assert_eq!(
        seen,
        vec![1, 2, 3, 4],
        "every leader published its term once it led"
    );
    for t in 1..4 {
        let last = log
            .iter()
            .filter(|(_, r)| r.term() == t)
            .map(|(ts, _)| *ts)
            .max();
        let first = log
            .iter()
            .filter(|(_, r)| r.term() == t + 1)
            .map(|(ts, _)| *ts)
            .min();
        assert!(
            last <= first,
            "term {t} wrote nothing after term {} began",
            t + 1
        );
    }
    // The socket node applied the newest term.
    rtc_testkit::wait_for("the node to apply term 4", Duration::from_secs(30), || {
        let addr = node_addr.clone();
        async move {
            rtc_client::http::get(&addr, "/metrics")
                .await
                .is_ok_and(|r| {
                    metric(&r.body, "rtc_socket_ring_epoch").is_some_and(|e| (e as u64) >> 32 == 4)
                })
        }
    })
    .await
    .unwrap();
    // A deposed leader's ring that still reaches Kafka late is never applied: a term-1 ring
    // that takes every slot away from node-0.
    let stale = Ring {
        epoch: rtc_protocol::ring::first_epoch(1) + 1000,
        owners: vec![None; SLOTS as usize],
    };
    let producer: rdkafka::producer::FutureProducer =
        rtc_serverkit::kafka::producer_config(&kafka.bootstrap, Duration::from_secs(5))
            .create()
            .unwrap();
    rtc_balancer::ring::publish(&producer, &stale)
        .await
        .unwrap();
    let before = b2.epoch().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        b2.epoch().await,
        before,
        "the follower-turned-leader ignores it"
    );
    let m = rtc_client::http::get(&node_addr, "/metrics")
        .await
        .unwrap()
        .body;
    assert_eq!(
        metric(&m, "rtc_socket_ring_epoch").map(|e| e as u64 >> 32),
        Some(4)
    );
    assert_eq!(
        metric(&m, "rtc_socket_owned_slots"),
        Some(SLOTS as f64),
        "node-0 keeps its slots"
    );
    println!(
        "election: {} rings on rtc.control, terms {seen:?}; failover kill -9 {kill_failover:.1} s, SIGTERM {term_failover:.1} s",
        log.len()
    );
}
