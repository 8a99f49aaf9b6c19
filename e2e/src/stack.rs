//! An in-process stack on real Redis and Kafka: one balancer and N socket nodes on ephemeral
//! ports, optionally a gateway in front, plus helpers to wait for the ring to settle.

use rtc_client::Endpoints;
use rtc_socket::node::{Node, Phase};
use rtc_testkit::kafka::Kafka;
use rtc_testkit::redis::RedisServer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const SLOTS: u32 = 32;

pub struct NodeHandle {
    pub id: String,
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    cancel: CancellationToken,
    join: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub struct Stack {
    pub redis: RedisServer,
    pub kafka: Kafka,
    pub balancer: SocketAddr,
    pub bal: Arc<rtc_balancer::Balancer>,
    bal_cancel: CancellationToken,
    pub nodes: Vec<NodeHandle>,
    /// Ids of the nodes started as processes (`spawn_process_node`).
    process_nodes: Vec<String>,
    addrs: Arc<Mutex<HashMap<String, String>>>,
    tweak: Arc<dyn Fn(&mut rtc_socket::config::Config) + Send + Sync>,
    next: usize,
}

/// Logs to the test output when RUST_LOG is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        rtc_serverkit::telemetry::init("test");
    }
}

impl Stack {
    pub async fn start(
        nodes: usize,
        tweak: impl Fn(&mut rtc_socket::config::Config) + Send + Sync + 'static,
    ) -> Stack {
        let kafka = Kafka::from_env(SLOTS).await.expect("kafka starts");
        Self::start_on(kafka, nodes, tweak).await
    }

    /// [`Stack::start`] on the given Kafka (a test that needs the real broker).
    pub async fn start_on(
        kafka: Kafka,
        nodes: usize,
        tweak: impl Fn(&mut rtc_socket::config::Config) + Send + Sync + 'static,
    ) -> Stack {
        Self::start_full(kafka, nodes, |_| {}, tweak).await
    }

    /// [`Stack::start_on`] with the balancer's settings adjusted by `bal_tweak`.
    pub async fn start_full(
        kafka: Kafka,
        nodes: usize,
        bal_tweak: impl FnOnce(&mut rtc_balancer::config::Config),
        tweak: impl Fn(&mut rtc_socket::config::Config) + Send + Sync + 'static,
    ) -> Stack {
        init_logs();
        let redis = RedisServer::start().await.expect("redis starts");
        let mut bcfg = rtc_balancer::config::Config::for_tests(&kafka.bootstrap, &redis.url);
        bcfg.shared.slots = SLOTS;
        // Every node of an in-process stack shares one process (and, in the test suite, the
        // machine with other stacks): its CPU and delivery latency say nothing per node, and
        // weights following them would move clients in the middle of a test.
        bcfg.cpu_per_pod = 1e6;
        bcfg.l_slo_ms = 3_600_000;
        bal_tweak(&mut bcfg);
        let server = rtc_balancer::build(bcfg).await.expect("balancer builds");
        let balancer = server.addr;
        let bal = server.bal.clone();
        let bal_cancel = CancellationToken::new();
        tokio::spawn(server.run(bal_cancel.clone()));
        let mut s = Stack {
            redis,
            kafka,
            balancer,
            bal,
            bal_cancel,
            nodes: Vec::new(),
            process_nodes: Vec::new(),
            addrs: Arc::new(Mutex::new(HashMap::new())),
            tweak: Arc::new(tweak),
            next: 0,
        };
        for _ in 0..nodes {
            s.add_node().await;
        }
        s.settle().await;
        s
    }

    /// Starts one more socket node.
    pub async fn add_node(&mut self) -> usize {
        let mut cfg = rtc_socket::config::Config::for_tests(&self.kafka.bootstrap, &self.redis.url);
        cfg.shared.slots = SLOTS;
        cfg.node_id = Some(format!("node-{}", self.next));
        self.next += 1;
        cfg.heartbeat_interval_ms = 200;
        // A stopped node deletes its heartbeat at once; the TTL only covers a node that dies,
        // and a short one would declare a node dead whenever a loaded test machine stalls.
        cfg.heartbeat_ttl_secs = 10;
        cfg.move_jitter_ms = 200;
        cfg.move_pace_secs = 1;
        (self.tweak)(&mut cfg);
        let socket = rtc_socket::build(cfg).await.expect("socket builds");
        let (id, addr, node) = (socket.node.id.clone(), socket.addr, socket.node.clone());
        self.addrs
            .lock()
            .unwrap()
            .insert(id.clone(), addr.to_string());
        let cancel = CancellationToken::new();
        let join = tokio::spawn(socket.run(cancel.clone()));
        self.nodes.push(NodeHandle {
            id,
            addr,
            node,
            cancel,
            join: Some(join),
        });
        self.nodes.len() - 1
    }

    /// Starts a socket node as a separate `rtc-socket` process (so a test can kill it with
    /// SIGKILL), configured like the in-process ones; waits until it serves slots of the ring.
    pub async fn spawn_process_node(&mut self, id: &str) -> rtc_testkit::proc::Owned {
        let addr = format!("127.0.0.1:{}", rtc_testkit::free_port());
        let child = std::process::Command::new(crate::workspace_bin("rtc-socket"))
            .envs([
                ("NODE_ID", id.to_string()),
                ("LISTEN_ADDR", addr.clone()),
                ("KAFKA_BOOTSTRAP", self.kafka.bootstrap.clone()),
                (
                    "KAFKA_FETCH_WAIT_MS",
                    self.kafka.fetch_wait_ms().to_string(),
                ),
                ("REDIS_URL", self.redis.url.clone()),
                ("SLOTS", SLOTS.to_string()),
                ("HEARTBEAT_INTERVAL_MS", "200".into()),
                ("HEARTBEAT_TTL_SECS", "10".into()),
                ("MOVE_JITTER_MS", "200".into()),
                ("MOVE_PACE_SECS", "1".into()),
                ("DRAIN_DURATION", "4".into()),
                ("RUST_LOG", "warn".into()),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("rtc-socket starts");
        let child = rtc_testkit::proc::Owned(child);
        self.addrs
            .lock()
            .unwrap()
            .insert(id.to_string(), addr.clone());
        self.process_nodes.push(id.to_string());
        let bal = self.bal.clone();
        let id = id.to_string();
        rtc_testkit::wait_for("the process node to serve", Duration::from_secs(60), || {
            let (bal, id, addr) = (bal.clone(), id.clone(), addr.clone());
            async move {
                !bal.ring().slots_of(&id).is_empty()
                    && rtc_client::http::get(&addr, "/readyz")
                        .await
                        .is_ok_and(|r| r.status == 200)
            }
        })
        .await
        .expect("the process node serves");
        child
    }

    /// Stops node `i` cleanly (as SIGTERM would).
    pub async fn stop_node(&mut self, i: usize) {
        let h = &mut self.nodes[i];
        h.cancel.cancel();
        if let Some(j) = h.join.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), j).await;
        }
    }

    pub fn endpoints(&self) -> Endpoints {
        let addrs = self.addrs.clone();
        Endpoints {
            resolve: self.balancer.to_string(),
            ws: Arc::new(move |n| addrs.lock().unwrap().get(n).cloned()),
            bind: None,
            bearer: None,
            tls: None,
        }
    }

    /// Index of the node owning `client`'s slot in the balancer's ring.
    pub fn owner_of(&self, client: &str) -> Option<String> {
        let ring = self.bal.ring();
        ring.owner(rtc_protocol::slot::slot_of(client, SLOTS))
            .map(str::to_string)
    }

    /// Waits until the balancer's ring gives every slot to a running, non-draining node and
    /// every such node serves exactly its slots.
    pub async fn settle(&self) {
        let live: Vec<&NodeHandle> = self
            .nodes
            .iter()
            .filter(|h| {
                h.join.is_some() && !h.node.draining.load(std::sync::atomic::Ordering::Relaxed)
            })
            .collect();
        let ids: Vec<String> = live.iter().map(|h| h.id.clone()).collect();
        if ids.is_empty() {
            return;
        }
        rtc_testkit::wait_for("the ring to settle", Duration::from_secs(60), || {
            let ring = self.bal.ring();
            let ids = ids.clone();
            let ok = ring
                .owners
                .iter()
                .all(|o| o.as_ref().is_some_and(|o| ids.contains(o)))
                && ids.iter().all(|id| !ring.slots_of(id).is_empty())
                && live.iter().all(|h| {
                    let r = h.node.ring();
                    r.epoch == ring.epoch
                        && h.node.slots_in(Phase::Ready) == ring.slots_of(&h.id)
                        && h.node.ready()
                });
            async move { ok }
        })
        .await
        .expect("ring settles");
    }

    /// A clientId whose slot the ring gives to node `i`.
    pub fn client_on(&self, i: usize, prefix: &str) -> String {
        let id = &self.nodes[i].id;
        (0..100_000)
            .map(|k| format!("{prefix}-{k}"))
            .find(|c| self.owner_of(c).as_deref() == Some(id))
            .expect("some clientId lands on every node")
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop_node(i).await;
        }
        self.bal_cancel.cancel();
    }
}

/// A gateway running on its own thread (Pingora runs its own runtimes), stopped on drop.
pub struct GatewayHandle {
    pub addr: String,
    pub admin: String,
    pub gw: Arc<rtc_gateway::Gateway>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GatewayHandle {
    /// Starts a gateway in front of `stack` and waits until it routes to every running node
    /// (in-process nodes and process nodes alike).
    pub async fn start(
        stack: &Stack,
        tweak: impl FnOnce(&mut rtc_gateway::config::Config),
    ) -> GatewayHandle {
        let want: Vec<String> = stack
            .nodes
            .iter()
            .filter(|n| n.join.is_some())
            .map(|n| n.id.clone())
            .chain(stack.process_nodes.iter().cloned())
            .collect();
        Self::start_for(&stack.balancer.to_string(), &stack.redis.url, want, tweak).await
    }

    /// Starts a gateway in front of the balancer at `balancer` and waits until it routes to
    /// every node of `want`.
    pub async fn start_for(
        balancer: &str,
        redis_url: &str,
        want: Vec<String>,
        tweak: impl FnOnce(&mut rtc_gateway::config::Config),
    ) -> GatewayHandle {
        let (addr, admin) = (
            format!("127.0.0.1:{}", rtc_testkit::free_port()),
            format!("127.0.0.1:{}", rtc_testkit::free_port()),
        );
        let mut cfg = rtc_gateway::config::Config::for_tests(&addr, &admin, balancer, redis_url);
        tweak(&mut cfg);
        let (stop, rx) = tokio::sync::watch::channel(false);
        let built =
            rtc_gateway::build(cfg, rtc_gateway::Trigger::Manual(rx)).expect("gateway builds");
        let gw = built.gw.clone();
        let thread = std::thread::spawn(move || built.run());
        let h = GatewayHandle {
            addr,
            admin,
            gw,
            stop,
            thread: Some(thread),
        };
        let routes = h.gw.routes.clone();
        rtc_testkit::wait_for(
            "the gateway to route to every node",
            Duration::from_secs(30),
            || {
                let ok = want
                    .iter()
                    .all(|n| matches!(routes.lookup(n), rtc_gateway::route::Lookup::Ready(_)));
                async move { ok }
            },
        )
        .await
        .expect("gateway sees the nodes");
        let admin = h.admin.clone();
        rtc_testkit::wait_for("the gateway admin port", Duration::from_secs(30), || {
            let admin = admin.clone();
            async move {
                rtc_client::http::get(&admin, "/readyz")
                    .await
                    .is_ok_and(|r| r.status == 200)
            }
        })
        .await
        .expect("gateway ready");
        h
    }

    /// Starts the shutdown sequence (as SIGTERM would) and waits for the gateway to exit.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Starts the shutdown sequence without waiting.
    pub fn trigger_shutdown(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
