//! Clients exchanging direct messages through the real client path (the load test's driver:
//! resolve, connect, send on a schedule, follow `move`, reconnect, re-send), for tests that break
//! something under traffic and then count what was lost.

use rtc_client::Endpoints;
use rtc_loadtest::{run_client, Ledger, MsgKey, Pattern, Peers, Phase, Plan, Report};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Running clients; see [`Traffic::start`] and [`Traffic::finish`].
pub struct Traffic {
    /// Everything the clients sent and received so far.
    pub ledger: Arc<Mutex<Ledger>>,
    phase: watch::Sender<Phase>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How a run of traffic ended.
pub struct Outcome {
    pub report: Report,
    /// Whether every message was answered and every acked one delivered in time.
    pub settled: anyhow::Result<()>,
    /// Acked messages not delivered to a connected recipient (the first few).
    pub lost: Vec<MsgKey>,
}

impl Traffic {
    /// Starts one client per id, each sending a direct message to a peer every `interval`
    /// through `ep`; returns once every client is connected.
    pub async fn start(ep: Endpoints, ids: &[String], interval: Duration) -> Traffic {
        let ledger = Arc::new(Mutex::new(Ledger::new()));
        let (phase, phase_rx) = watch::channel(Phase::Sending);
        let start = Arc::new(tokio::sync::Barrier::new(ids.len() + 1));
        let plan = Plan {
            ep,
            peers: Arc::new(Peers::new(ids.to_vec())),
            pattern: Pattern::Direct,
            interval,
            pad: Arc::from(""),
            rooms: 1,
            handshakes: Arc::new(tokio::sync::Semaphore::new(64)),
            sources: Arc::new(Vec::new()),
        };
        let tasks = (0..ids.len())
            .map(|k| {
                tokio::spawn(run_client(
                    plan.clone(),
                    k,
                    phase_rx.clone(),
                    ledger.clone(),
                    start.clone(),
                ))
            })
            .collect();
        start.wait().await;
        Traffic {
            ledger,
            phase,
            tasks,
        }
    }

    /// Stops sending, waits up to `settle` until every message sent is answered and every acked
    /// one has arrived (an ack or a delivery still on its way is not a loss), ends the clients.
    pub async fn finish(self, settle: Duration) -> Outcome {
        self.phase.send(Phase::Quiet).expect("clients are running");
        let ledger = self.ledger.clone();
        let settled = crate::wait_settled(&ledger, settle).await;
        self.phase.send(Phase::Done).expect("clients are running");
        for t in self.tasks {
            t.await.expect("a client task ends cleanly");
        }
        let l = self.ledger.lock().expect("ledger lock");
        Outcome {
            report: l.report((0.0, 0.0)),
            settled,
            lost: l.lost().into_iter().take(10).collect(),
        }
    }
}
