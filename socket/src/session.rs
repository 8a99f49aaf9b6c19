//! Client sessions in Redis (node, connected-at per clientId), written from a bounded queue off
//! the connection path: losing a write loses debugging data, never a message.

use redis::aio::ConnectionManager;
use rtc_serverkit::store;
use tokio::sync::mpsc;

/// A change to a client's session record.
#[derive(Debug)]
pub enum SessionEvent {
    Connected { client_id: Box<str>, at_ms: u64 },
    Disconnected { client_id: Box<str> },
}

/// Queue of session writes; bounded, and dropping a write only loses debugging data.
pub fn session_channel() -> (mpsc::Sender<SessionEvent>, mpsc::Receiver<SessionEvent>) {
    mpsc::channel(16_384)
}

/// Writes session records as events arrive, batching what is queued.
pub async fn run_sessions(
    node_id: String,
    mut redis: ConnectionManager,
    mut rx: mpsc::Receiver<SessionEvent>,
) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        let mut pipe = redis::pipe();
        for ev in batch.drain(..) {
            match ev {
                SessionEvent::Connected { client_id, at_ms } => {
                    let key = format!("{}{client_id}", store::SESSION_PREFIX);
                    pipe.hset_multiple(
                        &key,
                        &[
                            ("node", node_id.clone()),
                            ("connectedAt", at_ms.to_string()),
                        ],
                    )
                    .ignore();
                    pipe.expire(&key, 86_400).ignore();
                }
                SessionEvent::Disconnected { client_id } => {
                    // Only remove the record if it still names this node (the client may have
                    // connected elsewhere already).
                    let key = format!("{}{client_id}", store::SESSION_PREFIX);
                    pipe.cmd("EVAL")
                        .arg("if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
                        .arg(1)
                        .arg(&key)
                        .arg(&node_id)
                        .ignore();
                }
            }
        }
        if let Err(e) = pipe.query_async::<()>(&mut redis).await {
            tracing::debug!(error = %e, "session write failed");
        }
    }
}
