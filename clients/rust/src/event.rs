//! What a connection receives, as owned typed values (the SDK's view of the server frames in
//! `rtc_protocol::ServerFrame`).

use rtc_protocol::{ErrorCode, ServerFrame};
use serde_json::value::RawValue;

/// A delivered message.
#[derive(Debug, Clone)]
pub struct Message {
    /// The sender's clientId.
    pub from: String,
    /// The sender's id for the message (unique per sender).
    pub id: String,
    /// The room, for a room message.
    pub room: Option<String>,
    /// The Kafka offset: of a direct message, the client's resume point; of a room message, the
    /// room's `since` point.
    pub offset: Option<i64>,
    /// The payload, exactly as the sender wrote it.
    pub data: Box<RawValue>,
}

impl Message {
    /// The payload parsed as `T`.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.data.get())
    }
}

/// One thing a connection received.
#[derive(Debug, Clone)]
pub enum Event {
    /// The connection is served (first frame on every connection). `recovered`: every message
    /// after the resume offset will be delivered.
    Welcome {
        /// The node serving the connection.
        node: String,
        /// The ring epoch the node follows.
        epoch: u64,
        /// Whether every message after the resume offset will be delivered.
        recovered: bool,
        /// The resume point: the newest offset of the client's slot (or the client's own).
        offset: i64,
    },
    /// A message for this client, direct or from a room.
    Msg(Message),
    /// The frame with this id was accepted (a direct message: stored in Kafka at `offset`).
    Ack {
        /// The id of the acked frame.
        id: String,
        /// Where Kafka stored a direct message.
        offset: Option<i64>,
    },
    /// The frame with this id failed (no id: a frame the server could not parse).
    Error {
        /// The id of the failed frame.
        id: Option<String>,
        /// The documented error code.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
        /// Whether sending the same frame again may succeed.
        retryable: bool,
    },
    /// The server asks the client to reconnect elsewhere after `delay_ms`.
    Move {
        /// `drain` or `rebalance`.
        reason: String,
        /// How long to wait before reconnecting, milliseconds.
        delay_ms: u64,
    },
    /// The connection joined `room`; its history (if asked for) and live messages follow.
    Joined {
        /// The join's id, if it had one.
        id: Option<String>,
        /// The room.
        room: String,
        /// Whether every room message after the `since` asked for follows.
        recovered: bool,
        /// The newest room offset the node had.
        offset: i64,
    },
    /// Who is in a room (the answer to a presence question).
    Presence {
        /// The question's id.
        id: String,
        /// The room.
        room: String,
        /// Members, sorted.
        members: Vec<String>,
        /// The room had more members than the answer names.
        truncated: bool,
    },
    /// Which of the clientIds asked about are online.
    Online {
        /// The question's id.
        id: String,
        /// The ones connected now.
        online: Vec<String>,
    },
    /// Someone joined (`joined: true`) or left a room this connection joined with presence.
    Member {
        /// The room.
        room: String,
        /// Who.
        client_id: String,
        /// Joined or left.
        joined: bool,
    },
    /// The answer to a `ping`.
    Pong {
        /// The ping's id.
        id: Option<String>,
    },
    /// The server closed the connection with this code.
    Closed {
        /// The close code (docs/protocol.md).
        code: u16,
        /// The reason the server gave.
        reason: String,
    },
}

impl From<ServerFrame<'_>> for Event {
    fn from(f: ServerFrame<'_>) -> Self {
        match f {
            ServerFrame::Welcome {
                node,
                epoch,
                recovered,
                offset,
                ..
            } => Event::Welcome {
                node: node.into_owned(),
                epoch,
                recovered,
                offset,
            },
            ServerFrame::Msg {
                from,
                id,
                room,
                offset,
                data,
            } => Event::Msg(Message {
                from: from.into_owned(),
                id: id.into_owned(),
                room: room.map(|r| r.into_owned()),
                offset,
                data: data.to_owned(),
            }),
            ServerFrame::Ack { id, offset } => Event::Ack {
                id: id.into_owned(),
                offset,
            },
            ServerFrame::Error {
                id,
                code,
                message,
                retryable,
            } => Event::Error {
                id: id.map(|i| i.into_owned()),
                code,
                message: message.into_owned(),
                retryable,
            },
            ServerFrame::Move { reason, delay_ms } => Event::Move {
                reason: reason.into_owned(),
                delay_ms,
            },
            ServerFrame::Pong { id } => Event::Pong {
                id: id.map(|i| i.into_owned()),
            },
            ServerFrame::Joined {
                id,
                room,
                recovered,
                offset,
            } => Event::Joined {
                id: id.map(|i| i.into_owned()),
                room: room.into_owned(),
                recovered,
                offset,
            },
            ServerFrame::Presence {
                id,
                room,
                members,
                truncated,
            } => Event::Presence {
                id: id.into_owned(),
                room: room.into_owned(),
                members: members.into_iter().map(|m| m.into_owned()).collect(),
                truncated,
            },
            ServerFrame::Online { id, online } => Event::Online {
                id: id.into_owned(),
                online: online.into_iter().map(|m| m.into_owned()).collect(),
            },
            ServerFrame::Member {
                room,
                client_id,
                event,
            } => Event::Member {
                room: room.into_owned(),
                client_id: client_id.into_owned(),
                joined: event == "join",
            },
        }
    }
}
