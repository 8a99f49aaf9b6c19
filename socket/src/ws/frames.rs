//! What each client frame does: `send` and `publish` go to Kafka and are acked once it confirms
//! (never dropped silently), `join`/`leave` change the node's rooms (and presence), `presence`
//! and `online` are answered from Redis, `ping` is answered.

use crate::conn::Conn;
use crate::node::Node;
use crate::relay;
use crate::rooms::Since;
use crate::session::SessionEvent;
use rtc_protocol::{slot::slot_of, ClientFrame, Envelope, ErrorCode, ServerFrame};
use std::collections::HashSet;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Rooms one connection may be in at once.
pub const MAX_ROOMS_PER_CONN: usize = 100;

pub(super) fn handle_frame(
    node: &Arc<Node>,
    conn: &Arc<Conn>,
    text: &str,
    rooms: &mut HashSet<Box<str>>,
) {
    let frame = match ClientFrame::parse(text) {
        Ok(f) => f,
        Err(e) => {
            node.metrics
                .refused
                .with_label_values(&["bad_request"])
                .inc();
            conn.push_unbounded(Utf8Bytes::from(ServerFrame::error(
                ClientFrame::id_of_refused(text),
                ErrorCode::BadRequest,
                &e.0,
            )));
            return;
        }
    };
    let ack = |id: Option<&str>| {
        if let Some(id) = id {
            conn.push_unbounded(Utf8Bytes::from(
                ServerFrame::Ack {
                    id: id.into(),
                    offset: None,
                }
                .to_json(),
            ));
        }
    };
    match frame {
        ClientFrame::Send { id, to, data } => {
            let env = Envelope {
                from: conn.client_id.as_ref().into(),
                id: id.into(),
                room: None,
                data,
            }
            .to_json();
            let producer = node.producer();
            let fut = relay::produce_direct(&producer, slot_of(to, node.slots), to, &env);
            confirm(node, conn, id, producer, fut);
        }
        ClientFrame::Publish { id, room, data } => {
            let env = Envelope {
                from: conn.client_id.as_ref().into(),
                id: id.into(),
                room: Some(room.into()),
                data,
            }
            .to_json();
            let producer = node.producer();
            let fut = relay::produce_room(&producer, room, &env);
            confirm(node, conn, id, producer, fut);
        }
        ClientFrame::Join {
            id,
            room,
            since,
            last,
            presence,
        } => {
            if !rooms.contains(room) && rooms.len() >= MAX_ROOMS_PER_CONN {
                conn.push_unbounded(Utf8Bytes::from(ServerFrame::error(
                    id,
                    ErrorCode::BadRequest,
                    "too many rooms for one connection",
                )));
                return;
            }
            let since = match (since, last) {
                (Some(s), _) => Since::Offset(s),
                (None, Some(n)) => Since::Last(n as usize),
                (None, None) => Since::Now,
            };
            let fresh = rooms.insert(room.into());
            node.join(room, conn, id, since, presence);
            if fresh {
                presence_change(node, conn, room, true);
            }
        }
        ClientFrame::Leave { id, room } => {
            if rooms.remove(room) {
                node.leave(room, conn);
                presence_change(node, conn, room, false);
            }
            ack(id);
        }
        ClientFrame::Presence { id, room } => ask(
            node,
            conn,
            id,
            SessionEvent::Members {
                conn: conn.clone(),
                id: id.into(),
                room: room.into(),
            },
        ),
        ClientFrame::Online { id, client_ids } => ask(
            node,
            conn,
            id,
            SessionEvent::Online {
                conn: conn.clone(),
                id: id.into(),
                ids: client_ids.into_iter().map(Into::into).collect(),
            },
        ),
        ClientFrame::Ping { id } => conn.push_unbounded(Utf8Bytes::from(
            ServerFrame::Pong {
                id: id.map(Into::into),
            }
            .to_json(),
        )),
    }
}

/// Queues the presence write of `conn` joining (or leaving) `room`.
pub(super) fn presence_change(node: &Node, conn: &Conn, room: &str, joined: bool) {
    let (room, client_id) = (room.into(), conn.client_id.clone());
    let ev = if joined {
        SessionEvent::Joined { room, client_id }
    } else {
        SessionEvent::Left { room, client_id }
    };
    if node.sessions.try_send(ev).is_err() {
        node.metrics.presence.with_label_values(&["dropped"]).inc();
    }
}

/// Queues a presence question; answered `overloaded` when the queue is full.
fn ask(node: &Node, conn: &Conn, id: &str, ev: SessionEvent) {
    if node.sessions.try_send(ev).is_err() {
        conn.push_unbounded(Utf8Bytes::from(ServerFrame::error(
            Some(id),
            ErrorCode::Overloaded,
            "the node cannot take presence questions now; retry",
        )));
    }
}

/// Acks `id` once Kafka confirms, or sends a retryable error; never drops silently.
fn confirm(
    node: &Arc<Node>,
    conn: &Arc<Conn>,
    id: &str,
    producer: Arc<rdkafka::producer::FutureProducer>,
    fut: Result<
        impl std::future::Future<Output = relay::Produced> + Send + 'static,
        rdkafka::error::KafkaError,
    >,
) {
    let fut = match fut {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!(error = %e, "produce refused");
            node.renew_producer_if_broken(&producer, &e);
            node.metrics
                .messages
                .with_label_values(&["send_failed"])
                .inc();
            conn.push_unbounded(Utf8Bytes::from(ServerFrame::error(
                Some(id),
                ErrorCode::Overloaded,
                "the node cannot queue more messages now",
            )));
            return;
        }
    };
    let (node, conn, id) = (node.clone(), conn.clone(), id.to_string());
    tokio::spawn(async move {
        let frame = match fut.await {
            Ok(offset) => {
                node.metrics.sent.inc();
                ServerFrame::Ack {
                    id: id.as_str().into(),
                    offset: Some(offset),
                }
                .to_json()
            }
            Err(e) => {
                tracing::debug!(error = %e, "produce failed");
                node.renew_producer_if_broken(&producer, &e);
                node.metrics
                    .messages
                    .with_label_values(&["send_failed"])
                    .inc();
                ServerFrame::error(
                    Some(&id),
                    ErrorCode::KafkaUnavailable,
                    "Kafka did not confirm the message; retry",
                )
            }
        };
        conn.push_unbounded(Utf8Bytes::from(frame));
    });
}
