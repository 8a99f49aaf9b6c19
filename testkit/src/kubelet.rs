//! A test kubelet: plays the node for the pods of one label selector on a real control plane.
//! The ReplicaSet, Deployment and EndpointSlice controllers stay the real ones; this does what a
//! kubelet (and the scheduler) would do for those pods:
//!
//! - binds each new pod to its Node (which it keeps Ready with heartbeats);
//! - starts the pod's program as a real process with the env the pod spec gives it (`value`
//!   with `$(VAR)` expansion, and the downward API's `fieldRef`: metadata.name,
//!   metadata.namespace, spec.nodeName, status.podIP, status.hostIP), on an address of its own
//!   (`<subnet>.N`; see [`crate::netns`] for why not 127.0.0.x);
//! - reports the pod Running with its podIP, and Ready following its `readinessProbe.httpGet`;
//!   restarts the process if it exits (restartPolicy Always);
//! - when the pod is deleted: runs the `preStop` `httpGet` hook (a GET, as a kubelet sends),
//!   then SIGTERM, waits up to terminationGracePeriodSeconds from the deletion, then SIGKILL,
//!   and removes the pod (a delete with grace 0, as a kubelet does last).
//!
//! The program is the same binary for every pod (the image is not pulled: `Config::program`).

use crate::proc::Owned;
use k8s_openapi::api::core::v1::{Container, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What the kubelet runs and where.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Node object's name (created if missing).
    pub node: String,
    pub namespace: String,
    /// Label selector of the pods it plays the node for, e.g. `app=socket`.
    pub selector: String,
    /// The program every pod runs.
    pub program: PathBuf,
    /// The first three octets of the pod addresses (pods get .10, .11, ...).
    pub subnet: String,
}

/// What happened to the pods, for tests to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Started {
        pod: String,
        ip: String,
    },
    PreStop {
        pod: String,
        status: Option<u16>,
    },
    Terminated {
        pod: String,
        killed: bool,
        secs: u64,
    },
}

struct Running {
    ip: String,
    child: Arc<Mutex<Option<Owned>>>,
    ready: Option<bool>,
    terminating: bool,
    env: Vec<(String, String)>,
}

/// A running kubelet; stops its loop and kills its processes when dropped.
pub struct Kubelet {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    pub events: Arc<Mutex<Vec<Event>>>,
    pods: Arc<Mutex<HashMap<String, Running>>>,
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

impl Kubelet {
    pub async fn start(client: kube::Client, cfg: Config) -> anyhow::Result<Kubelet> {
        let nodes: Api<Node> = Api::all(client.clone());
        if nodes.get_opt(&cfg.node).await?.is_none() {
            let node: Node = serde_json::from_value(serde_json::json!({
                "metadata": {"name": cfg.node, "labels": {"kubernetes.io/hostname": cfg.node}}
            }))?;
            nodes.create(&PostParams::default(), &node).await?;
        }
        let cancel = CancellationToken::new();
        let events = Arc::new(Mutex::new(Vec::new()));
        let pods = Arc::new(Mutex::new(HashMap::new()));
        let task = tokio::spawn(run(
            client,
            cfg,
            cancel.clone(),
            events.clone(),
            pods.clone(),
        ));
        Ok(Kubelet {
            cancel,
            task,
            events,
            pods,
        })
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("kubelet lock").clone()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.task.abort();
        // Processes are Owned: killed when the map goes.
        self.pods.lock().map(|mut p| p.clear()).ok();
    }
}

async fn run(
    client: kube::Client,
    cfg: Config,
    cancel: CancellationToken,
    events: Arc<Mutex<Vec<Event>>>,
    running: Arc<Mutex<HashMap<String, Running>>>,
) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &cfg.namespace);
    let nodes: Api<Node> = Api::all(client);
    let mut next_ip = 10u32;
    let mut last_node_beat = Instant::now() - Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if last_node_beat.elapsed() > Duration::from_secs(5) {
            let now = now_rfc3339();
            let patch = serde_json::json!({"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }]}});
            if nodes
                .patch_status(&cfg.node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_ok()
            {
                last_node_beat = Instant::now();
            }
        }
        let Ok(list) = pods
            .list(&ListParams::default().labels(&cfg.selector))
            .await
        else {
            continue;
        };
        for pod in list {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let Some(spec) = pod.spec.clone() else {
                continue;
            };
            let ours = spec.node_name.as_deref() == Some(cfg.node.as_str());
            if pod.metadata.deletion_timestamp.is_some() {
                let start_termination = {
                    let mut r = running.lock().expect("kubelet lock");
                    match r.get_mut(&name) {
                        Some(p) if !p.terminating => {
                            p.terminating = true;
                            Some((p.ip.clone(), p.child.clone()))
                        }
                        Some(_) => None,
                        None => {
                            // Never started here: nothing to stop.
                            let pods = pods.clone();
                            let n = name.clone();
                            tokio::spawn(async move {
                                let _ = pods
                                    .delete(&n, &DeleteParams::default().grace_period(0))
                                    .await;
                            });
                            None
                        }
                    }
                };
                if let Some((ip, child)) = start_termination {
                    tokio::spawn(terminate(
                        pods.clone(),
                        pod.clone(),
                        ip,
                        child,
                        events.clone(),
                        running.clone(),
                    ));
                }
                continue;
            }
            if spec.node_name.is_none() {
                let _ = bind(&pods, &name, &cfg.node).await;
                continue;
            }
            if !ours {
                continue;
            }
            let Some(container) = spec.containers.first().cloned() else {
                continue;
            };
            let known = running.lock().expect("kubelet lock").contains_key(&name);
            if !known {
                let ip = format!("{}.{next_ip}", cfg.subnet);
                next_ip += 1;
                let env = env_of(&container, &pod, &ip, &cfg.node);
                let child = match spawn(&cfg.program, &env) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("test kubelet: cannot start {name}: {e}");
                        continue;
                    }
                };
                running.lock().expect("kubelet lock").insert(
                    name.clone(),
                    Running {
                        ip: ip.clone(),
                        child: Arc::new(Mutex::new(Some(child))),
                        ready: None,
                        terminating: false,
                        env,
                    },
                );
                events.lock().expect("kubelet lock").push(Event::Started {
                    pod: name.clone(),
                    ip: ip.clone(),
                });
                let _ = set_status(&pods, &name, &ip, false).await;
            }
            // Restart a process that exited (restartPolicy Always).
            let (ip, ready_before, exited) = {
                let r = running.lock().expect("kubelet lock");
                let p = &r[&name];
                let exited = p
                    .child
                    .lock()
                    .expect("kubelet lock")
                    .as_mut()
                    .is_some_and(|c| c.0.try_wait().ok().flatten().is_some());
                (p.ip.clone(), p.ready, exited.then(|| p.env.clone()))
            };
            if let Some(env) = exited.clone() {
                eprintln!("test kubelet: {name} exited; restarting it");
                if let Ok(c) = spawn(&cfg.program, &env) {
                    let r = running.lock().expect("kubelet lock");
                    *r[&name].child.lock().expect("kubelet lock") = Some(c);
                }
            }
            let ready = match container
                .readiness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
            {
                Some(get) => {
                    let port = port_of(&container, &get.port);
                    let path = get.path.clone().unwrap_or_else(|| "/".into());
                    crate::http_status(
                        &format!("{ip}:{port}"),
                        "GET",
                        &path,
                        Duration::from_secs(1),
                    )
                    .await
                    .is_some_and(|s| (200..400).contains(&s))
                }
                None => exited.is_none(),
            };
            if ready_before != Some(ready) && set_status(&pods, &name, &ip, ready).await.is_ok() {
                if let Some(p) = running.lock().expect("kubelet lock").get_mut(&name) {
                    p.ready = Some(ready);
                }
            }
        }
    }
}

/// Resolves a probe or hook port: a number, or the name of a container port.
fn port_of(c: &Container, port: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString) -> i32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match port {
        IntOrString::Int(p) => *p,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map_or(0, |p| p.container_port),
    }
}

/// The container's environment as a kubelet builds it.
fn env_of(c: &Container, pod: &Pod, ip: &str, node: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for e in c.env.iter().flatten() {
        let value = if let Some(field) = e
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str())
        {
            match field {
                "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                "metadata.namespace" => pod.metadata.namespace.clone().unwrap_or_default(),
                "spec.nodeName" => node.to_string(),
                "status.podIP" => ip.to_string(),
                "status.hostIP" => ip.to_string(),
                _ => String::new(),
            }
        } else {
            let mut v = e.value.clone().unwrap_or_default();
            for (k, val) in &out {
                v = v.replace(&format!("$({k})"), val);
            }
            v
        };
        out.push((e.name.clone(), value));
    }
    out
}

fn spawn(program: &PathBuf, env: &[(String, String)]) -> std::io::Result<Owned> {
    std::process::Command::new(program)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::null())
        .spawn()
        .map(Owned)
}

/// Binds pod `name` to Node `node`, as the scheduler would.
pub async fn bind(pods: &Api<Pod>, name: &str, node: &str) -> kube::Result<serde_json::Value> {
    let binding = serde_json::json!({
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}
    });
    pods.create_subresource::<serde_json::Value, serde_json::Value>(
        "binding",
        name,
        &PostParams::default(),
        &binding,
    )
    .await
}

/// Reports pod `name` running at `ip`, Ready or not, as a kubelet does.
pub async fn set_status(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) -> kube::Result<Pod> {
    let now = now_rfc3339();
    let ready = if ready { "True" } else { "False" };
    let patch = serde_json::json!({"status": {
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": ip,
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
            {"type": "Ready", "status": ready, "lastTransitionTime": now},
        ],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

/// A pod's end, as a kubelet runs it: preStop hook, SIGTERM, the grace period, SIGKILL, and
/// the final delete.
async fn terminate(
    pods: Api<Pod>,
    pod: Pod,
    ip: String,
    child: Arc<Mutex<Option<Owned>>>,
    events: Arc<Mutex<Vec<Event>>>,
    running: Arc<Mutex<HashMap<String, Running>>>,
) {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let grace = Duration::from_secs(
        pod.metadata
            .deletion_grace_period_seconds
            .or(spec.termination_grace_period_seconds)
            .unwrap_or(30)
            .max(0) as u64,
    );
    let start = Instant::now();
    let deadline = start + grace;
    if let Some(container) = spec.containers.first() {
        if let Some(get) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.http_get.as_ref())
        {
            let port = port_of(container, &get.port);
            let path = get.path.clone().unwrap_or_else(|| "/".into());
            let status = crate::http_status(&format!("{ip}:{port}"), "GET", &path, grace).await;
            events.lock().expect("kubelet lock").push(Event::PreStop {
                pod: name.clone(),
                status,
            });
        }
    }
    let pid = child
        .lock()
        .expect("kubelet lock")
        .as_ref()
        .map(|c| c.pid());
    let mut killed = false;
    if let Some(pid) = pid {
        crate::proc::signal(pid, 15);
        loop {
            let gone = child
                .lock()
                .expect("kubelet lock")
                .as_mut()
                .is_none_or(|c| c.0.try_wait().ok().flatten().is_some());
            if gone {
                break;
            }
            if Instant::now() >= deadline {
                crate::proc::signal(pid, 9);
                killed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    child.lock().expect("kubelet lock").take();
    events
        .lock()
        .expect("kubelet lock")
        .push(Event::Terminated {
            pod: name.clone(),
            killed,
            secs: start.elapsed().as_secs(),
        });
    let _ = pods
        .delete(&name, &DeleteParams::default().grace_period(0))
        .await;
    running.lock().expect("kubelet lock").remove(&name);
}
