//! Frames the server sends (`welcome`, `msg`, `ack`, `joined`, `presence`, `online`, `member`,
//! `error`, `move`, `pong`): serialized by the socket node, parsed by clients (borrowed from the
//! frame's text where it can be).

use crate::error::ErrorCode;
use crate::record::Envelope;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A frame the server sends. Each serializes to one JSON text frame.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// First frame on every connection.
    Welcome {
        node: Cow<'a, str>,
        #[serde(rename = "clientId")]
        client_id: Cow<'a, str>,
        epoch: u64,
        /// Whether every message after `resumeOffset` will be delivered.
        recovered: bool,
        /// A resume point: the offset of the newest record in the client's slot at connect time.
        offset: i64,
    },
    /// A delivered message, with its `offset`: for a direct message the position in the
    /// recipient's slot (the resume point), for a room message (which carries `room`) the
    /// position in the room's `rtc.rooms` partition (the room's `since` point).
    Msg {
        from: Cow<'a, str>,
        id: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<Cow<'a, str>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<i64>,
        data: &'a RawValue,
    },
    /// The frame with this `id` was accepted (for `send`/`publish`: Kafka has it at `offset`).
    Ack {
        id: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<i64>,
    },
    /// The answer to `join`: the connection is a member of `room`. `offset` is the newest room
    /// offset the node had then (-1: none); `recovered` says whether every room message after
    /// the `since` asked for follows (always true without `since`). History, then live messages,
    /// follow this frame.
    Joined {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, str>>,
        room: Cow<'a, str>,
        recovered: bool,
        offset: i64,
    },
    /// The answer to `presence`: who is in `room` (clientIds, sorted); `truncated` when the
    /// room had more members than the answer may name.
    Presence {
        id: Cow<'a, str>,
        room: Cow<'a, str>,
        members: Vec<Cow<'a, str>>,
        truncated: bool,
    },
    /// The answer to `online`: which of the clientIds asked about are connected now.
    Online {
        id: Cow<'a, str>,
        online: Vec<Cow<'a, str>>,
    },
    /// Someone joined or left `room` (to members that joined with `presence: true`). `event` is
    /// `join` or `leave`.
    Member {
        room: Cow<'a, str>,
        #[serde(rename = "clientId")]
        client_id: Cow<'a, str>,
        event: Cow<'a, str>,
    },
    /// The frame with this `id` (absent: an unparseable frame) failed.
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, str>>,
        code: ErrorCode,
        message: Cow<'a, str>,
        retryable: bool,
    },
    /// Reconnect through resolve after `delay_ms`.
    Move {
        reason: Cow<'a, str>,
        #[serde(rename = "delayMs")]
        delay_ms: u64,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Cow<'a, str>>,
    },
}

/// The flat shape server frames are read through (serde cannot put `RawValue` in a tagged enum).
#[derive(Deserialize)]
struct RawServerFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    node: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "clientId")]
    client_id: Option<Cow<'a, str>>,
    #[serde(default)]
    epoch: Option<u64>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default, borrow)]
    from: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    code: Option<ErrorCode>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(default)]
    retryable: Option<bool>,
    #[serde(default, borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(default, rename = "delayMs")]
    delay_ms: Option<u64>,
    #[serde(default, borrow)]
    members: Option<Vec<Cow<'a, str>>>,
    #[serde(default)]
    truncated: Option<bool>,
    #[serde(default, borrow)]
    online: Option<Vec<Cow<'a, str>>>,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
}

/// Why a text frame is not a server frame this version understands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a server frame: {0}")]
    Invalid(String),
    #[error("`{kind}` frame without `{field}`")]
    Missing { kind: String, field: &'static str },
    /// A frame type this version does not know (a newer server); safe to ignore.
    #[error("unknown frame type `{0}`")]
    Unknown(String),
}

impl<'a> ServerFrame<'a> {
    /// Parses one text frame from the server.
    pub fn parse(text: &'a str) -> Result<Self, ParseError> {
        let r: RawServerFrame<'a> =
            serde_json::from_str(text).map_err(|e| ParseError::Invalid(e.to_string()))?;
        let kind = r.kind;
        let missing = |field: &'static str| ParseError::Missing {
            kind: kind.to_string(),
            field,
        };
        Ok(match &*kind {
            "welcome" => ServerFrame::Welcome {
                node: r.node.ok_or_else(|| missing("node"))?,
                client_id: r.client_id.ok_or_else(|| missing("clientId"))?,
                epoch: r.epoch.unwrap_or(0),
                recovered: r.recovered.unwrap_or(false),
                offset: r.offset.unwrap_or(-1),
            },
            "msg" => ServerFrame::Msg {
                from: r.from.ok_or_else(|| missing("from"))?,
                id: r.id.ok_or_else(|| missing("id"))?,
                room: r.room,
                offset: r.offset,
                data: r.data.ok_or_else(|| missing("data"))?,
            },
            "ack" => ServerFrame::Ack {
                id: r.id.ok_or_else(|| missing("id"))?,
                offset: r.offset,
            },
            "error" => {
                let code = r.code.ok_or_else(|| missing("code"))?;
                ServerFrame::Error {
                    id: r.id,
                    code,
                    message: r.message.unwrap_or_default(),
                    retryable: r.retryable.unwrap_or_else(|| code.retryable()),
                }
            }
            "joined" => ServerFrame::Joined {
                id: r.id,
                room: r.room.ok_or_else(|| missing("room"))?,
                recovered: r.recovered.unwrap_or(false),
                offset: r.offset.unwrap_or(-1),
            },
            "presence" => ServerFrame::Presence {
                id: r.id.ok_or_else(|| missing("id"))?,
                room: r.room.ok_or_else(|| missing("room"))?,
                members: r.members.ok_or_else(|| missing("members"))?,
                truncated: r.truncated.unwrap_or(false),
            },
            "online" => ServerFrame::Online {
                id: r.id.ok_or_else(|| missing("id"))?,
                online: r.online.ok_or_else(|| missing("online"))?,
            },
            "member" => ServerFrame::Member {
                room: r.room.ok_or_else(|| missing("room"))?,
                client_id: r.client_id.ok_or_else(|| missing("clientId"))?,
                event: r.event.ok_or_else(|| missing("event"))?,
            },
            "move" => ServerFrame::Move {
                reason: r.reason.unwrap_or_default(),
                delay_ms: r.delay_ms.unwrap_or(0),
            },
            "pong" => ServerFrame::Pong { id: r.id },
            _ => return Err(ParseError::Unknown(kind.into_owned())),
        })
    }

    /// The frame as one JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }

    /// An `error` frame's text, with `retryable` taken from the code.
    pub fn error(id: Option<&str>, code: ErrorCode, message: &str) -> String {
        ServerFrame::Error {
            id: id.map(Cow::Borrowed),
            code,
            message: message.into(),
            retryable: code.retryable(),
        }
        .to_json()
    }

    /// The `msg` frame delivering `env`, found at `offset` (of its slot or room partition).
    pub fn msg(env: &'a Envelope<'_>, offset: Option<i64>) -> Self {
        ServerFrame::Msg {
            from: Cow::Borrowed(&env.from),
            id: Cow::Borrowed(&env.id),
            room: env.room.as_deref().map(Cow::Borrowed),
            offset,
            data: env.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn server_frames_have_documented_shapes() {
        let w = ServerFrame::Welcome {
            node: "n1".into(),
            client_id: "a".into(),
            epoch: 3,
            recovered: true,
            offset: 9,
        };
        assert_eq!(
            w.to_json(),
            r#"{"type":"welcome","node":"n1","clientId":"a","epoch":3,"recovered":true,"offset":9}"#
        );
        assert_eq!(
            ServerFrame::Ack {
                id: "1".into(),
                offset: Some(5)
            }
            .to_json(),
            r#"{"type":"ack","id":"1","offset":5}"#
        );
        assert_eq!(
            ServerFrame::error(Some("1"), ErrorCode::KafkaUnavailable, "down"),
            r#"{"type":"error","id":"1","code":"kafka_unavailable","message":"down","retryable":true}"#
        );
        assert_eq!(
            ServerFrame::Move {
                reason: "drain".into(),
                delay_ms: 5
            }
            .to_json(),
            r#"{"type":"move","reason":"drain","delayMs":5}"#
        );
        let data = RawValue::from_string("[1,2]".into()).unwrap();
        let env = Envelope {
            from: "a\"q".into(),
            id: "7".into(),
            room: None,
            data: &data,
        };
        let json = env.to_json();
        let back: Envelope = serde_json::from_str(&json).unwrap();
        assert_eq!(
            ServerFrame::msg(&back, Some(12)).to_json(),
            r#"{"type":"msg","from":"a\"q","id":"7","offset":12,"data":[1,2]}"#
        );
    }

    #[test]
    fn clients_read_back_every_server_frame() {
        let data = RawValue::from_string(r#"{"x":"y"}"#.into()).unwrap();
        let frames = [
            ServerFrame::Welcome {
                node: "n".into(),
                client_id: "c".into(),
                epoch: 1,
                recovered: false,
                offset: -1,
            },
            ServerFrame::Msg {
                from: "a\\b".into(),
                id: "1".into(),
                room: Some("r".into()),
                offset: None,
                data: &data,
            },
            ServerFrame::Ack {
                id: "2".into(),
                offset: None,
            },
            ServerFrame::Error {
                id: None,
                code: ErrorCode::BadRequest,
                message: "unknown frame type `\"`".into(),
                retryable: false,
            },
            ServerFrame::Move {
                reason: "drain".into(),
                delay_ms: 7,
            },
            ServerFrame::Pong {
                id: Some("p".into()),
            },
            ServerFrame::Joined {
                id: Some("j".into()),
                room: "r".into(),
                recovered: true,
                offset: 4,
            },
            ServerFrame::Presence {
                id: "q".into(),
                room: "r".into(),
                members: vec!["a".into(), "b".into()],
                truncated: false,
            },
            ServerFrame::Online {
                id: "o".into(),
                online: vec!["a".into()],
            },
            ServerFrame::Member {
                room: "r".into(),
                client_id: "a".into(),
                event: "leave".into(),
            },
        ];
        for f in frames {
            let json = f.to_json();
            let back = ServerFrame::parse(&json).unwrap();
            assert_eq!(back.to_json(), json);
        }
        assert_eq!(
            ServerFrame::parse(r#"{"type":"shout"}"#).unwrap_err(),
            ParseError::Unknown("shout".into())
        );
        assert!(matches!(
            ServerFrame::parse(r#"{"type":"ack"}"#),
            Err(ParseError::Missing { field: "id", .. })
        ));
    }

    proptest! {
        /// Garbage never panics the client's parser.
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = ServerFrame::parse(&s);
        }

        /// A msg frame with any sender and payload reads back unchanged.
        #[test]
        fn msg_roundtrip(from in "\\PC{1,40}", id in "[a-z0-9]{1,20}", offset in proptest::option::of(0i64..i64::MAX), n in any::<i64>()) {
            let data = RawValue::from_string(n.to_string()).unwrap();
            let f = ServerFrame::Msg { from: from.as_str().into(), id: id.as_str().into(), room: None, offset, data: &data };
            let json = f.to_json();
            match ServerFrame::parse(&json).unwrap() {
                ServerFrame::Msg { from: f2, id: i2, offset: o2, data: d2, .. } => {
                    prop_assert_eq!(&*f2, from.as_str());
                    prop_assert_eq!(&*i2, id.as_str());
                    prop_assert_eq!(o2, offset);
                    prop_assert_eq!(d2.get(), n.to_string());
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
