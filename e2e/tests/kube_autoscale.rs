//! Autoscaling end to end on a real control plane. The socket Deployment's pods are real
//! `rtc-socket` processes run by the test kubelet (each on an address of its own, in a network
//! namespace of the test's own); the ReplicaSet and EndpointSlice controllers are the real ones;
//! the gateway routes by the EndpointSlices; the balancer leads through the Lease and scales.
//!
//! Load from the load test's clients, through the gateway, pushes connections past CONN_PER_POD:
//! the leader scales out and the new pods take slots. The load drops: the leader empties the
//! least-loaded pod, sets its deletion cost, scales in, and the ReplicaSet controller deletes
//! exactly that pod — twice, down to the floor. Across all of it: 0 lost, 0 duplicated.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use rtc_client::Endpoints;
use rtc_e2e::kube::create;
use rtc_e2e::stack::GatewayHandle;
use rtc_e2e::traffic::Traffic;
use rtc_testkit::kubelet::{Event, Kubelet};
use serde_json::json;
use std::time::{Duration, Instant};

const NS: &str = "rtc";
const SLOTS: u32 = 16;
const CONN_PER_POD: u64 = 20;
const NAME: &str = "the_leader_scales_out_under_load_and_in_without_losing_a_message";

#[test]
fn the_leader_scales_out_under_load_and_in_without_losing_a_message() {
    if !rtc_testkit::netns::enter(NAME) {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(scenario());
}

async fn replicas(deployments: &Api<Deployment>) -> i32 {
    deployments
        .get("socket")
        .await
        .unwrap()
        .spec
        .replicas
        .unwrap_or(0)
}

async fn scenario() {
    rtc_e2e::stack::init_logs();
    let t0 = Instant::now();
    let cp = rtc_testkit::kube::ControlPlane::start()
        .await
        .expect("the control plane starts (binaries from testkit/tools/kube/kube.sh install)");
    let client = cp.client().await.unwrap();
    let redis = rtc_testkit::redis::RedisServer::start().await.unwrap();
    let kafka = rtc_testkit::kafka::Kafka::from_env(SLOTS).await.unwrap();

    rtc_e2e::kube::namespace_with_socket_service(&client, NS).await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), NS);
    let env = |k: &str, v: String| json!({"name": k, "value": v});
    create(
        &deployments,
        json!({"metadata": {"name": "socket"}, "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "socket"}},
            "template": {"metadata": {"labels": {"app": "socket"}}, "spec": {
                "terminationGracePeriodSeconds": 20,
                "containers": [{
                    "name": "socket", "image": "rtc/socket:test",
                    "ports": [{"name": "ws", "containerPort": 8090}],
                    "env": [
                        {"name": "NODE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        env("LISTEN_ADDR", "$(POD_IP):8090".into()),
                        env("KAFKA_BOOTSTRAP", kafka.bootstrap.clone()),
                        env("KAFKA_FETCH_WAIT_MS", kafka.fetch_wait_ms().to_string()),
                        env("REDIS_URL", redis.url.clone()),
                        env("SLOTS", SLOTS.to_string()),
                        env("HEARTBEAT_INTERVAL_MS", "500".into()),
                        env("DRAIN_DURATION", "6".into()),
                        env("MOVE_JITTER_MS", "200".into()),
                        env("MOVE_PACE_SECS", "1".into()),
                        env("RUST_LOG", "warn".into()),
                    ],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "ws"}},
                    "lifecycle": {"preStop": {"httpGet": {"path": "/drain", "port": "ws"}}},
                }]
            }}
        }}),
    )
    .await;
    let kubelet = Kubelet::start(
        client.clone(),
        rtc_testkit::kubelet::Config {
            node: "test-node".into(),
            namespace: NS.into(),
            selector: "app=socket".into(),
            program: rtc_e2e::workspace_bin("rtc-socket"),
            subnet: rtc_testkit::netns::POD_SUBNET.into(),
        },
    )
    .await
    .unwrap();

    // The balancer: leader through the Lease, scaler on, sized for 20 connections a pod.
    let mut bcfg = rtc_balancer::config::Config::for_tests(&kafka.bootstrap, &redis.url);
    bcfg.shared.slots = SLOTS;
    bcfg.enable_leader_election = true;
    bcfg.kubeconfig = Some(cp.kubeconfig.clone());
    bcfg.kubernetes_namespace = NS.into();
    bcfg.pod_name = Some("lb-0".into());
    bcfg.conn_per_pod = CONN_PER_POD;
    // Only connections count here: every pod shares this machine with everything else.
    bcfg.mps_per_pod = 1_000_000;
    bcfg.cpu_per_pod = 1e6;
    bcfg.mem_per_pod_mib = 1 << 20;
    bcfg.l_slo_ms = 3_600_000;
    bcfg.scale_interval_secs = 2;
    bcfg.scale_in_cooldown_secs = 20;
    bcfg.scale_in_window_secs = 4;
    bcfg.socket_min_replicas = 2;
    bcfg.socket_max_replicas = 4;
    let server = rtc_balancer::build(bcfg).await.unwrap();
    let bal = server.bal.clone();
    let bal_addr = server.addr.to_string();
    let bal_cancel = tokio_util::sync::CancellationToken::new();
    let bal_task = tokio::spawn(server.run(bal_cancel.clone()));

    let ring_nodes = |n: usize| {
        let bal = bal.clone();
        async move { bal.ring().counts().len() == n }
    };
    rtc_testkit::wait_for("two pods in the ring", Duration::from_secs(90), || {
        ring_nodes(2)
    })
    .await
    .unwrap();
    let first: Vec<String> = bal.ring().counts().keys().map(|k| k.to_string()).collect();
    let kubeconfig = cp.kubeconfig.clone();
    let gw = GatewayHandle::start_for(&bal_addr, &redis.url, first.clone(), move |c| {
        c.discovery = "kube".into();
        c.kubernetes_namespace = NS.into();
        c.socket_service_name = "socket".into();
        c.kubeconfig = Some(kubeconfig);
    })
    .await;
    println!(
        "[{:.0}s] 2 pods serving: {first:?}",
        t0.elapsed().as_secs_f64()
    );

    // Steady load under capacity: 30 connections on 2 pods sized for 20 each (0.75).
    let ids = |p: &str, n: usize| (0..n).map(|i| format!("{p}-{i}")).collect::<Vec<_>>();
    let steady = Traffic::start(
        Endpoints::gateway(&gw.addr),
        &ids("steady", 30),
        Duration::from_millis(500),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        replicas(&deployments).await,
        2,
        "under capacity: no scaling"
    );

    // A burst: 70 connections (1.75 of capacity, urgency 3) → +2, to the maximum of 4.
    let out_at = Instant::now();
    let burst = Traffic::start(
        Endpoints::gateway(&gw.addr),
        &ids("burst", 40),
        Duration::from_millis(500),
    )
    .await;
    rtc_testkit::wait_for("the leader to scale out", Duration::from_secs(60), || {
        let d = deployments.clone();
        async move { replicas(&d).await == 4 }
    })
    .await
    .unwrap();
    let scaled_out = out_at.elapsed().as_secs_f64();
    rtc_testkit::wait_for("four pods in the ring", Duration::from_secs(90), || {
        ring_nodes(4)
    })
    .await
    .unwrap();
    let serving_four = out_at.elapsed().as_secs_f64();
    let four: Vec<String> = bal.ring().counts().keys().map(|k| k.to_string()).collect();
    println!(
        "[{:.0}s] scaled out 2 -> 4 {scaled_out:.1} s after the burst; 4 pods own slots {serving_four:.1} s after it: {four:?}",
        t0.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The burst ends; the leader scales in, one emptied pod at a time, down to the floor of 2.
    let b = burst.finish(Duration::from_secs(60)).await;
    let in_at = Instant::now();
    rtc_testkit::wait_for(
        "the leader to scale in to 2",
        Duration::from_secs(180),
        || {
            let d = deployments.clone();
            async move { replicas(&d).await == 2 }
        },
    )
    .await
    .unwrap();
    rtc_testkit::wait_for(
        "two pods in the ring again",
        Duration::from_secs(60),
        || ring_nodes(2),
    )
    .await
    .unwrap();
    let scaled_in = in_at.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = steady.finish(Duration::from_secs(60)).await;

    // The audit trail: one scale-out, two planned scale-ins, chosen = deleted.
    let audits: Vec<serde_json::Value> =
        rtc_e2e::read_topic(&kafka.bootstrap, rtc_serverkit::kafka::SCALE_TOPIC)
            .into_iter()
            .map(|(_, p)| serde_json::from_slice(&p).unwrap())
            .collect();
    for a in &audits {
        println!("audit: {a}");
    }
    let outs: Vec<_> = audits.iter().filter(|a| a["direction"] == "out").collect();
    let ins: Vec<_> = audits.iter().filter(|a| a["direction"] == "in").collect();
    assert_eq!(outs.len(), 1, "one scale-out: {audits:?}");
    assert_eq!(
        (outs[0]["from"].as_u64(), outs[0]["to"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(ins.len(), 2, "two scale-ins: {audits:?}");
    let mut chosen = vec![];
    for a in &ins {
        assert_eq!(a["outcome"], "planned", "{a}");
        assert_eq!(
            a["deleted"],
            json!([a["chosen"]]),
            "the chosen pod is the deleted one: {a}"
        );
        chosen.push(a["chosen"].as_str().unwrap().to_string());
    }
    // What the kubelet saw: exactly the chosen pods ended, each through its preStop hook and
    // SIGTERM within its grace period.
    let events = kubelet.events();
    let mut ended: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Terminated { pod, killed, .. } => {
                assert!(!killed, "{pod} needed SIGKILL");
                Some(pod.clone())
            }
            _ => None,
        })
        .collect();
    ended.sort();
    let mut want = chosen.clone();
    want.sort();
    assert_eq!(
        ended, want,
        "the pods that ended are the chosen ones: {events:?}"
    );
    for pod in &chosen {
        assert!(
            events.contains(&Event::PreStop {
                pod: pod.clone(),
                status: Some(200)
            }),
            "{pod}'s preStop GET /drain answered 200: {events:?}"
        );
        assert!(four.contains(pod));
    }
    println!(
        "[{:.0}s] scaled in 4 -> 2 in {scaled_in:.1} s; chosen and deleted: {chosen:?}",
        t0.elapsed().as_secs_f64()
    );
    for (what, o) in [("burst", &b), ("steady", &s)] {
        let r = &o.report;
        println!(
            "{what}: {} clients, sent {}, acked {}, delivered {}, lost {}, duplicated {}, reconnects {}, closes {:?}, p99 {:.0} ms",
            r.clients, r.sent, r.acked, r.delivered, r.lost, r.duplicated, r.reconnects, r.closes, r.latency_ms_p99
        );
        assert!(o.settled.is_ok(), "{what}: {:?}", o.settled);
        assert_eq!((r.lost, r.duplicated), (0, 0), "{what}: lost {:?}", o.lost);
        assert!(r.acked > 0 && r.delivered > 0);
    }
    assert!(
        s.report.closes.get("move").copied().unwrap_or(0) > 0,
        "steady clients on the removed pods were moved: {:?}",
        s.report.closes
    );
    gw.shutdown().await;
    bal_cancel.cancel();
    let _ = bal_task.await;
    drop(kubelet);
}
