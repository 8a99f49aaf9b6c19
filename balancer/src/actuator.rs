//! The leader's hands on the socket Deployment: every SCALE_INTERVAL_SECS it reads the
//! Deployment, its pods (a reflector watch), the backup HPA and the nodes' heartbeats, asks the
//! pure [`scaler::decide`] what to do, and does it:
//!
//! - **scale out**: write `deployments/<name>/scale` carrying the resourceVersion it read (a
//!   concurrent writer makes it fail, not overwrite);
//! - **scale in, without disruption**: only when every pod is Ready and no rollout runs (the
//!   decision checks); choose the least-loaded pod; drain it (`POST /drain`: readiness fails,
//!   the ring moves its slots, its clients are told to move) and wait until it is empty; set
//!   `controller.kubernetes.io/pod-deletion-cost` on every pod (the chosen one lowest, the others
//!   by connections) and wait until the watch shows the chosen one's; scale down with the
//!   resourceVersion; then check which pod the ReplicaSet controller deletes. Another pod
//!   deleted is an *unplanned loss*: logged, counted, and the emptied pod is deleted too (it
//!   is drained for good; the ReplicaSet replaces it with a fresh one).
//!
//! Leadership is checked before every write. Every decision that changes something is logged
//! with its reasons (`Scaling Deployment ...`, as the runbook greps), counted in
//! `rtc_lb_scale_signals_total{direction}` and published to `rtc.scale` as an audit record.

use crate::scaler::{self, Decision, Direction, State, Workload};
use crate::Balancer;
use anyhow::{bail, Context};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rtc_serverkit::kafka::SCALE_TOPIC;
use rtc_serverkit::store::Heartbeat;
use serde::Serialize;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The annotation the ReplicaSet controller reads to choose which pods to delete first.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The cost put on the pod chosen for removal.
const CHOSEN_COST: i64 = -1_000_000;
/// Bound of one Kubernetes API call.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// One audit record on `rtc.scale`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Audit {
    pub ts_ms: u64,
    pub leader: String,
    pub term: u64,
    pub workload: String,
    pub direction: &'static str,
    pub from: u32,
    pub to: u32,
    pub urgency: u8,
    pub utilisation: f64,
    pub dimension: &'static str,
    pub live_nodes: usize,
    pub reason: String,
    /// Scale-in: the pod emptied and given the lowest deletion cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chosen: Option<String>,
    /// Scale-in: the pods the ReplicaSet controller deleted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<String>,
    /// `done`, `planned` (scale-in deleted the chosen pod), `unplanned`, or `failed: ...`.
    pub outcome: String,
}

async fn api<T>(
    what: &str,
    f: impl std::future::Future<Output = kube::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(API_TIMEOUT, f)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {API_TIMEOUT:?}"))?
        .with_context(|| what.to_string())
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn name_of(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// The pods being deleted.
fn terminating(pods: &[Arc<Pod>]) -> BTreeSet<String> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .map(|p| name_of(p))
        .collect()
}

/// Which pods a scale-in chose and saw deleted (for its audit record).
#[derive(Default)]
struct ScaleInPods {
    chosen: Option<String>,
    deleted: Vec<String>,
}

pub struct Actuator {
    bal: Arc<Balancer>,
    deployments: Api<Deployment>,
    pods: Api<Pod>,
    hpas: Api<HorizontalPodAutoscaler>,
    store: Store<Pod>,
    producer: FutureProducer,
    origin: Instant,
}

/// Runs the scaler until `cancel` (a no-op round while this balancer does not lead).
pub async fn run(
    bal: Arc<Balancer>,
    client: kube::Client,
    producer: FutureProducer,
    cancel: CancellationToken,
) {
    let cfg = &bal.cfg;
    let ns = cfg.kubernetes_namespace.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // The pods of the Deployment, by its selector (read once; a selector cannot change).
    let selector = loop {
        match api(
            "reading the socket Deployment",
            deployments.get(&cfg.socket_workload_name),
        )
        .await
        {
            Ok(d) => {
                let labels = d.spec.selector.match_labels.unwrap_or_default();
                break labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",");
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "scaler waits for the socket Deployment");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    let (store, writer) = reflector::store();
    let watch = reflector::reflector(
        writer,
        watcher(pods.clone(), watcher::Config::default().labels(&selector)),
    )
    .default_backoff()
    .touched_objects()
    .for_each(|_| async {});
    let watch = tokio::spawn(watch);
    let a = Actuator {
        hpas: Api::namespaced(client, &ns),
        bal: bal.clone(),
        deployments,
        pods,
        store,
        producer,
        origin: Instant::now(),
    };
    let mut state = State::default();
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.scale_interval_secs));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Some(term) = bal.writer_term() else {
            // A new leader starts with a fresh memory (and its own cooldown from now).
            state = State::default();
            continue;
        };
        let round = tokio::select! {
            _ = cancel.cancelled() => break,
            r = a.round(state.clone(), term) => r,
        };
        match round {
            Ok(s) => state = s,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "scaling round failed"),
        }
    }
    watch.abort();
}

impl Actuator {
    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    /// Fails unless this balancer still leads in `term`.
    fn still_leader(&self, term: u64) -> anyhow::Result<()> {
        if self.bal.writer_term() != Some(term) {
            bail!("no longer the leader of term {term}");
        }
        Ok(())
    }

    /// The Deployment's pods that are not being deleted.
    fn pods(&self) -> Vec<Arc<Pod>> {
        self.store
            .state()
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    async fn round(&self, state: State, term: u64) -> anyhow::Result<State> {
        let cfg = &self.bal.cfg;
        let name = &cfg.socket_workload_name;
        let d = api("reading the socket Deployment", self.deployments.get(name)).await?;
        let replicas = d.spec.replicas.unwrap_or(1).max(0) as u32;
        let status = d.status.clone().unwrap_or_default();
        let rolling = status.observed_generation < d.metadata.generation
            || (status.updated_replicas.unwrap_or(0) as u32) < replicas;
        let pods = self.pods();
        let all_ready = pods.len() as u32 == replicas && pods.iter().all(|p| is_ready(p));
        let hpa_desired = if cfg.backup_hpa_name.is_empty() {
            None
        } else {
            api(
                "reading the backup HPA",
                self.hpas.get_opt(&cfg.backup_hpa_name),
            )
            .await?
            .and_then(|h| h.status)
            .map(|s| s.desired_replicas.max(0) as u32)
        };
        let names: BTreeSet<String> = pods.iter().map(|p| name_of(p)).collect();
        let heartbeats: Vec<Heartbeat> = self
            .bal
            .heartbeats()
            .into_iter()
            .filter(|h| names.contains(&h.node_id))
            .collect();
        let w = Workload {
            replicas,
            all_ready,
            rolling,
            hpa_desired,
        };
        let (decision, next) = scaler::decide(
            &heartbeats,
            w,
            cfg.pod_capacity(),
            cfg.scale_policy(),
            state,
            self.now(),
        );
        match decision.direction {
            Direction::Hold => {
                tracing::debug!(reason = %decision.reason, replicas, "scaler holds");
                Ok(next)
            }
            Direction::Out => {
                self.still_leader(term)?;
                let outcome = self.write_scale(replicas, decision.replicas).await;
                self.record(&decision, replicas, term, ScaleInPods::default(), &outcome)
                    .await;
                outcome.map(|_| next)
            }
            Direction::In => {
                let mut pods = ScaleInPods::default();
                let outcome = self
                    .scale_in(&decision, replicas, &heartbeats, term, &mut pods)
                    .await;
                self.record(&decision, replicas, term, pods, &outcome).await;
                outcome.map(|_| next)
            }
        }
    }

    /// Writes `to` replicas through the scale subresource, compare-and-set on the
    /// resourceVersion read with `from`.
    async fn write_scale(&self, from: u32, to: u32) -> anyhow::Result<&'static str> {
        let name = &self.bal.cfg.socket_workload_name;
        let mut scale = api("reading the scale", self.deployments.get_scale(name)).await?;
        let spec = scale.spec.get_or_insert_with(Default::default);
        if spec.replicas.unwrap_or(0) as u32 != from {
            bail!(
                "the Deployment changed meanwhile ({} replicas, not {from})",
                spec.replicas.unwrap_or(0)
            );
        }
        spec.replicas = Some(to as i32);
        api(
            "writing the scale",
            self.deployments
                .replace_scale(name, &PostParams::default(), &scale),
        )
        .await?;
        tracing::info!(
            deployment = %name, from, to,
            "Scaling Deployment {name} from {from} to {to} replicas"
        );
        Ok("done")
    }

    /// Scale-in by one: the least-loaded ready pod is chosen, emptied, given the lowest
    /// deletion cost, and the Deployment scaled down; `planned` when the ReplicaSet controller
    /// then deletes that pod, `unplanned` when it deletes another.
    async fn scale_in(
        &self,
        d: &Decision,
        replicas: u32,
        heartbeats: &[Heartbeat],
        term: u64,
        out: &mut ScaleInPods,
    ) -> anyhow::Result<&'static str> {
        let pods = self.pods();
        let chosen = heartbeats
            .iter()
            .filter(|h| !h.draining)
            .filter(|h| pods.iter().any(|p| name_of(p) == h.node_id && is_ready(p)))
            .min_by(|a, b| {
                a.connections
                    .cmp(&b.connections)
                    .then_with(|| a.node_id.cmp(&b.node_id))
            })
            .cloned()
            .context("no ready pod with a heartbeat to remove")?;
        out.chosen = Some(chosen.node_id.clone());
        tracing::info!(
            pod = %chosen.node_id, connections = chosen.connections, reason = %d.reason,
            "scale-in: emptying the least-loaded pod first"
        );
        self.still_leader(term)?;
        let deleted = match self
            .remove(&chosen, &pods, heartbeats, replicas, d.replicas, term)
            .await
        {
            Ok(deleted) => deleted,
            Err(e) => {
                // From its drain on, the chosen pod never serves again: let it be replaced.
                self.recycle(&chosen.node_id).await;
                return Err(e);
            }
        };
        out.deleted = deleted.clone();
        let planned = deleted == [chosen.node_id.clone()];
        let outcome = if planned { "planned" } else { "unplanned" };
        self.bal
            .metrics
            .scale_in
            .with_label_values(&[outcome])
            .inc();
        if planned {
            tracing::info!(pod = %chosen.node_id, "scale-in: the ReplicaSet controller deleted the chosen pod");
        } else {
            tracing::warn!(
                chosen = %chosen.node_id, deleted = ?deleted,
                "scale-in: an unplanned loss: the ReplicaSet controller deleted another pod"
            );
            self.recycle(&chosen.node_id).await;
        }
        Ok(outcome)
    }

    /// Empties `chosen`, sets the deletion costs (it lowest, the others by connections), waits
    /// until the pod watch shows its cost, scales `from` → `to`, and returns the pods the
    /// ReplicaSet controller then started deleting.
    async fn remove(
        &self,
        chosen: &Heartbeat,
        pods: &[Arc<Pod>],
        heartbeats: &[Heartbeat],
        from: u32,
        to: u32,
        term: u64,
    ) -> anyhow::Result<Vec<String>> {
        self.empty(chosen, term).await?;
        for p in pods {
            let n = name_of(p);
            let cost = if n == chosen.node_id {
                CHOSEN_COST
            } else {
                heartbeats
                    .iter()
                    .find(|h| h.node_id == n)
                    .map_or(0, |h| h.connections.min(i32::MAX as u64) as i64)
            };
            self.still_leader(term)?;
            let patch =
                serde_json::json!({"metadata": {"annotations": {DELETION_COST: cost.to_string()}}});
            api(
                "setting pod-deletion-cost",
                self.pods
                    .patch(&n, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await?;
        }
        let want = CHOSEN_COST.to_string();
        self.watch_until(Duration::from_secs(15), |pods| {
            pods.iter()
                .any(|p| {
                    name_of(p) == chosen.node_id
                        && p.metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(DELETION_COST))
                            == Some(&want)
                })
                .then_some(())
        })
        .await
        .with_context(|| {
            format!(
                "the pod watch never showed the deletion cost of {}",
                chosen.node_id
            )
        })?;
        let before = terminating(&self.store.state());
        self.still_leader(term)?;
        self.write_scale(from, to).await?;
        // Which pod does the ReplicaSet controller delete?
        Ok(self
            .watch_until(Duration::from_secs(30), |pods| {
                let now: Vec<String> = terminating(pods).difference(&before).cloned().collect();
                (!now.is_empty()).then_some(now)
            })
            .await
            .unwrap_or_default())
    }

    /// Polls the pod watch's store until `f` finds something, for at most `limit`.
    async fn watch_until<T>(
        &self,
        limit: Duration,
        mut f: impl FnMut(&[Arc<Pod>]) -> Option<T>,
    ) -> Option<T> {
        tokio::time::timeout(limit, async {
            loop {
                if let Some(x) = f(&self.store.state()) {
                    return x;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .ok()
    }

    /// Drains `pod` and waits until it has no connection and no slot (bounded by its drain
    /// duration plus a margin).
    async fn empty(&self, pod: &Heartbeat, term: u64) -> anyhow::Result<()> {
        let (status, body) = rtc_serverkit::http::call(
            &pod.addr,
            http::Method::POST,
            "/drain",
            Duration::from_secs(5),
        )
        .await?;
        if !status.is_success() {
            bail!("POST /drain on {} answered {status}: {body}", pod.node_id);
        }
        let duration = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["durationSeconds"].as_u64())
            .unwrap_or(300);
        let limit = Duration::from_secs(duration + 30);
        let start = Instant::now();
        loop {
            self.still_leader(term)?;
            let (_, body) = rtc_serverkit::http::call(
                &pod.addr,
                http::Method::GET,
                "/drain/status",
                Duration::from_secs(5),
            )
            .await?;
            let drained = serde_json::from_str::<serde_json::Value>(&body)
                .is_ok_and(|v| v["state"] == "drained");
            if drained && self.bal.ring().slots_of(&pod.node_id).is_empty() {
                tracing::info!(
                    pod = %pod.node_id, secs = start.elapsed().as_secs_f64(),
                    "scale-in: pod emptied"
                );
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("{} not empty after {limit:?}", pod.node_id);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Deletes an emptied pod that will not be removed by the scale-in (the ReplicaSet
    /// replaces it): a drained node never serves again.
    async fn recycle(&self, pod: &str) {
        match api(
            "deleting an emptied pod",
            self.pods.delete(pod, &DeleteParams::default()),
        )
        .await
        {
            Ok(_) => tracing::warn!(pod, "emptied pod deleted; the ReplicaSet replaces it"),
            Err(e) => {
                tracing::warn!(pod, error = %format!("{e:#}"), "could not delete an emptied pod")
            }
        }
    }

    async fn record(
        &self,
        d: &Decision,
        from: u32,
        term: u64,
        pods: ScaleInPods,
        outcome: &anyhow::Result<&'static str>,
    ) {
        let direction = d.direction.as_str();
        self.bal
            .metrics
            .scale_signals
            .with_label_values(&[direction])
            .inc();
        let audit = Audit {
            ts_ms: rtc_serverkit::telemetry::now_ms(),
            leader: self.bal.cfg.identity(),
            term,
            workload: self.bal.cfg.socket_workload_name.clone(),
            direction,
            from,
            to: d.replicas,
            urgency: d.urgency,
            utilisation: d.utilisation,
            dimension: d.dimension,
            live_nodes: d.live,
            reason: d.reason.clone(),
            chosen: pods.chosen,
            deleted: pods.deleted,
            outcome: match outcome {
                Ok(o) => o.to_string(),
                Err(e) => format!("failed: {e:#}"),
            },
        };
        tracing::info!(audit = ?audit, "scaling decision");
        let json = serde_json::to_string(&audit).expect("audit records serialize");
        let rec = FutureRecord::to(SCALE_TOPIC)
            .key(&audit.workload)
            .payload(&json);
        if let Err((e, _)) = self.producer.send(rec, Duration::from_secs(5)).await {
            tracing::warn!(error = %e, "scaling audit record not published");
        }
    }
}
