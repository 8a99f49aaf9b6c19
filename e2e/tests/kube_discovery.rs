//! Gateway discovery from Kubernetes (DISCOVERY=kube) on a real control plane: the real
//! ReplicaSet and EndpointSlice controllers turn a socket Deployment into EndpointSlices of its
//! headless Service, and the gateway's routes follow them — scale 3 → 4 → 2, a pod not ready
//! (503), a terminating pod (503), a pod gone (404), an unknown name (404). No process runs:
//! this test binds the pods and sets their status with the test kubelet's own calls. Pod IPs
//! are from 192.0.2.0/24 (TEST-NET-1: the EndpointSlice controller refuses loopback addresses);
//! nothing connects to them here.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use rtc_e2e::kube::create;
use rtc_e2e::stack::{GatewayHandle, Stack};
use rtc_gateway::route::Lookup;
use rtc_testkit::kubelet;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

const NS: &str = "rtc";
const T: Duration = Duration::from_secs(60);

/// What a kubelet would do for the socket pods: bind new ones to the node, then report them
/// running and ready with an address of their own.
async fn play_node(pods: &Api<Pod>, ips: &mut HashMap<String, String>) {
    for p in pods
        .list(&ListParams::default().labels("app=socket"))
        .await
        .unwrap()
    {
        let name = p.metadata.name.clone().unwrap();
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let spec = p.spec.as_ref().unwrap();
        if spec.node_name.is_none() {
            kubelet::bind(pods, &name, "test-node").await.unwrap();
        }
        let running = p
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|ph| ph == "Running");
        if !running {
            let n = ips.len();
            let ip = ips
                .entry(name.clone())
                .or_insert_with(|| format!("192.0.2.{}", 10 + n))
                .clone();
            set_ready(pods, &name, &ip, true).await;
        }
    }
}

async fn set_ready(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    kubelet::set_status(pods, name, ip, ready).await.unwrap();
}

/// Waits until the gateway's table has exactly `want` ready routes (running the node's part as
/// it goes); returns them.
async fn ready_routes(
    gw: &GatewayHandle,
    pods: &Api<Pod>,
    ips: &mut HashMap<String, String>,
    want: usize,
) -> HashMap<String, std::net::SocketAddr> {
    let end = tokio::time::Instant::now() + T;
    loop {
        play_node(pods, ips).await;
        let table: HashMap<String, std::net::SocketAddr> = gw
            .gw
            .routes
            .snapshot()
            .iter()
            .filter(|(_, r)| r.ready)
            .map(|(n, r)| (n.clone(), r.addr))
            .collect();
        if table.len() == want {
            return table;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "wanted {want} ready routes, have {table:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn status_of(gw: &GatewayHandle, pod: &str) -> (u16, Option<String>, String) {
    let r = rtc_client::http::get(&gw.addr, &format!("/ws/{pod}/connect?clientId=a&token=x"))
        .await
        .unwrap();
    (r.status, r.retry_after, r.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_routes_follow_the_socket_deployment_on_a_real_control_plane() {
    let cp = rtc_testkit::kube::ControlPlane::start()
        .await
        .expect("the control plane starts (binaries from testkit/tools/kube/kube.sh install)");
    let client = cp.client().await.unwrap();
    rtc_e2e::kube::namespace_with_socket_service(&client, NS).await;
    create(
        &Api::<Node>::all(client.clone()),
        json!({"metadata": {"name": "test-node"}}),
    )
    .await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), NS);
    create(
        &deployments,
        json!({"metadata": {"name": "socket"}, "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "socket"}},
            "template": {"metadata": {"labels": {"app": "socket"}}, "spec": {
                "containers": [{"name": "socket", "image": "rtc/socket:test", "ports": [{"containerPort": 8090}]}]
            }}
        }}),
    )
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    let mut ips = HashMap::new();

    let stack = Stack::start(0, |_| {}).await;
    let kubeconfig = cp.kubeconfig.clone();
    let gw = GatewayHandle::start(&stack, move |c| {
        c.discovery = "kube".into();
        c.kubernetes_namespace = NS.into();
        c.socket_service_name = "socket".into();
        c.kubeconfig = Some(kubeconfig);
    })
    .await;

    let three = ready_routes(&gw, &pods, &mut ips, 3).await;
    for (pod, addr) in &three {
        assert_eq!(
            (addr.ip().to_string(), addr.port()),
            (ips[pod].clone(), 8090),
            "{pod} is routed to the address its endpoint has"
        );
    }
    let routes = rtc_client::http::get(&gw.admin, "/routes").await.unwrap();
    assert!(routes.body.contains("192.0.2."), "{}", routes.body);

    let scale = |n: i32| {
        let deployments = deployments.clone();
        async move {
            deployments
                .patch_scale(
                    "socket",
                    &PatchParams::default(),
                    &Patch::Merge(&json!({"spec": {"replicas": n}})),
                )
                .await
                .unwrap();
        }
    };
    scale(4).await;
    let four = ready_routes(&gw, &pods, &mut ips, 4).await;

    // A pod that is not ready: 503 with Retry-After, not a guess.
    let (sick, _) = four.iter().next().unwrap();
    let sick = sick.clone();
    set_ready(&pods, &sick, &ips[&sick], false).await;
    rtc_testkit::wait_for("the route to turn not ready", T, || {
        let l = gw.gw.routes.lookup(&sick);
        async move { l == Lookup::NotReady }
    })
    .await
    .unwrap();
    let (s, retry, body) = status_of(&gw, &sick).await;
    assert_eq!((s, retry.as_deref()), (503, Some("1")), "{body}");
    assert!(body.contains("not_ready"), "{body}");

    // Scale in: the ReplicaSet controller deletes two pods (the not-ready one first). Bound to a
    // node, they stay terminating until their kubelet is done: 503 meanwhile.
    scale(2).await;
    let terminating: Vec<String> = loop {
        let t: Vec<String> = pods
            .list(&ListParams::default().labels("app=socket"))
            .await
            .unwrap()
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_some())
            .map(|p| p.metadata.name.unwrap())
            .collect();
        if t.len() == 2 {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(terminating.contains(&sick), "the not-ready pod goes first");
    for pod in &terminating {
        rtc_testkit::wait_for("a terminating pod to be not ready", T, || {
            let l = gw.gw.routes.lookup(pod);
            async move { l == Lookup::NotReady }
        })
        .await
        .unwrap();
        let (s, _, body) = status_of(&gw, pod).await;
        assert_eq!(s, 503, "{pod} while terminating: {body}");
    }
    // The kubelet's part of a deletion is done: the pods go, and so do their routes (404).
    for pod in &terminating {
        pods.delete(pod, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
    }
    let two = ready_routes(&gw, &pods, &mut ips, 2).await;
    for pod in &terminating {
        rtc_testkit::wait_for("a deleted pod's route to go", T, || {
            let l = gw.gw.routes.lookup(pod);
            async move { l == Lookup::Unknown }
        })
        .await
        .unwrap();
        let (s, _, body) = status_of(&gw, pod).await;
        assert_eq!(
            (s, body.contains("not_found")),
            (404, true),
            "{pod}: {body}"
        );
    }
    assert!(two.keys().all(|p| !terminating.contains(p)));
    let (s, _, _) = status_of(&gw, "never-existed").await;
    assert_eq!(s, 404, "never an address it did not learn");
    println!(
        "kube discovery: 3 -> 4 -> 2 pods followed; routes now {:?}",
        two.keys().collect::<Vec<_>>()
    );
    gw.shutdown().await;
    stack.shutdown().await;
}
