//! `GET /ws/{nodeId}/connect`: the upgrade passes the checks of `handshake`, is counted against
//! the connection cap, and the connection then runs in `connection` (frames in `frames`).

mod connection;
mod frames;
pub mod handshake;

pub use frames::MAX_ROOMS_PER_CONN;

use crate::node::Node;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use rtc_protocol::{ErrorCode, Refusal};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

fn refuse(node: &Node, r: Refusal) -> Response {
    node.metrics
        .refused
        .with_label_values(&[r.code.as_str()])
        .inc();
    let mut resp = rtc_serverkit::http::refusal(r);
    if resp.status() == http::StatusCode::UPGRADE_REQUIRED {
        resp.headers_mut().insert(
            "sec-websocket-version",
            http::HeaderValue::from_static("13"),
        );
    }
    resp
}

/// Releases the connection count when the connection ends, whichever way.
pub(crate) struct CountGuard(Arc<Node>);

impl Drop for CountGuard {
    fn drop(&mut self) {
        let n = self.0.connections.fetch_sub(1, Ordering::Relaxed) - 1;
        self.0.metrics.active_connections.set(n as i64);
        if n == 0 {
            self.0.emptied.notify_waiters();
        }
    }
}

pub async fn connect(
    State(node): State<Arc<Node>>,
    Path(node_id): Path<String>,
    RawQuery(query): RawQuery,
    mut req: axum::extract::Request,
) -> Response {
    let admitted = match handshake::check(&node, &node_id, query.as_deref(), req.headers()) {
        Ok(a) => a,
        Err(r) => return refuse(&node, r),
    };
    // Count now so the cap holds across concurrent handshakes.
    let n = node.connections.fetch_add(1, Ordering::Relaxed) + 1;
    let guard = CountGuard(node.clone());
    if n > node.cfg.max_connections {
        drop(guard);
        return refuse(
            &node,
            Refusal::new(
                ErrorCode::TooManyConnections,
                "this node is at its connection limit",
            ),
        );
    }
    node.metrics.active_connections.set(n as i64);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let handshake::Admitted {
        client_id,
        slot,
        resume,
        accept,
    } = admitted;
    let task_node = node.clone();
    node.connections_tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let cfg = WebSocketConfig::default()
            .read_buffer_size(task_node.cfg.ws_read_buffer_bytes)
            .write_buffer_size(0)
            .max_write_buffer_size(
                task_node.cfg.send_queue_bytes + task_node.cfg.max_message_bytes * 2,
            )
            .max_message_size(Some(task_node.cfg.max_message_bytes))
            .max_frame_size(Some(task_node.cfg.max_message_bytes));
        // Take the raw TCP stream back from hyper: its 8 KiB connection buffer is freed and
        // tungstenite's small buffer is the only one left per connection.
        let ws = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let tcp = parts.io.into_inner();
                if parts.read_buf.is_empty() {
                    WebSocketStream::from_raw_socket(tcp, Role::Server, Some(cfg)).await
                } else {
                    WebSocketStream::from_partially_read(
                        tcp,
                        parts.read_buf.to_vec(),
                        Role::Server,
                        Some(cfg),
                    )
                    .await
                }
            }
            Err(_) => {
                tracing::error!("upgraded connection is not a TCP stream");
                return;
            }
        };
        connection::run(task_node, ws, client_id, slot, resume, guard).await;
    });
    Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header("sec-websocket-accept", accept)
        .body(axum::body::Body::empty())
        .expect("static response parts are valid")
}
