//! The wire protocol between clients and socket nodes (JSON text frames), and the record formats
//! on Kafka. Every frame, field, error code and close code here is documented in docs/protocol.md.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Longest clientId or room name, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest client-chosen frame `id`, in bytes.
pub const MAX_FRAME_ID_BYTES: usize = 64;

/// WebSocket close codes the server uses (1000–1011 are RFC 6455; 4000+ are ours).
pub mod close {
    /// The node is shutting down; reconnect through resolve.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame over the message-size limit.
    pub const TOO_BIG: u16 = 1009;
    /// An unexpected server error.
    pub const INTERNAL: u16 = 1011;
    /// The client did not read fast enough; its send queue passed its byte bound.
    pub const SLOW_CONSUMER: u16 = 4001;
    /// The client ignored a `move` past its deadline, or its slot left this node.
    pub const MOVED: u16 = 4002;
    /// The same clientId connected again; the newer connection wins.
    pub const REPLACED: u16 = 4003;
    /// Binary frames are not part of the protocol.
    pub const UNSUPPORTED: u16 = 1003;
}

/// Why an identifier is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_ID_BYTES} bytes")]
    TooLong,
    #[error("contains a control character")]
    Control,
    #[error("contains a quote or a backslash")]
    Escaped,
}

/// Checks a clientId or room name: 1–256 bytes of UTF-8 without control characters.
impl IdError {
    /// The reason given when a clientId is refused (HTTP 400 at resolve and connect).
    pub fn client_id_reason(self) -> &'static str {
        match self {
            IdError::Empty => "clientId is empty",
            IdError::TooLong => "clientId is longer than 256 bytes",
            IdError::Control => "clientId contains a control character",
            IdError::Escaped => "clientId contains a quote or a backslash",
        }
    }
}

pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        Err(IdError::Empty)
    } else if id.len() > MAX_ID_BYTES {
        Err(IdError::TooLong)
    } else if id.chars().any(char::is_control) {
        Err(IdError::Control)
    } else if id.contains(['"', '\\']) {
        // Identifiers travel as plain JSON strings; a quote or backslash would need escaping.
        Err(IdError::Escaped)
    } else {
        Ok(())
    }
}

/// A frame from a client, validated.
#[derive(Debug, Clone)]
pub enum ClientFrame<'a> {
    Send {
        id: &'a str,
        to: &'a str,
        data: &'a RawValue,
    },
    Publish {
        id: &'a str,
        room: &'a str,
        data: &'a RawValue,
    },
    Join {
        id: Option<&'a str>,
        room: &'a str,
    },
    Leave {
        id: Option<&'a str>,
        room: &'a str,
    },
    Ping {
        id: Option<&'a str>,
    },
}

/// The flat shape every client frame is read through (serde cannot put `RawValue` in a tagged
/// enum), so a missing field gets a precise error.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default, borrow)]
    id: Option<&'a str>,
    #[serde(default, borrow)]
    to: Option<&'a str>,
    #[serde(default, borrow)]
    room: Option<&'a str>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// A client frame that cannot be served; sent back as an `error` frame with code `bad_request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FrameError(pub String);

impl<'a> ClientFrame<'a> {
    /// Parses one text frame. Strings with JSON escapes in `id`, `to` or `room` are refused
    /// (identifiers travel as plain text).
    pub fn parse(text: &'a str) -> Result<Self, FrameError> {
        let raw: RawFrame<'a> =
            serde_json::from_str(text).map_err(|e| FrameError(format!("invalid frame: {e}")))?;
        let id = raw.id;
        if let Some(i) = id {
            if i.is_empty() || i.len() > MAX_FRAME_ID_BYTES {
                return Err(FrameError(format!(
                    "`id` must be 1..={MAX_FRAME_ID_BYTES} bytes"
                )));
            }
        }
        let need = |v: Option<&'a str>, field: &str| -> Result<&'a str, FrameError> {
            let v = v.ok_or_else(|| FrameError(format!("`{}` needs `{field}`", raw.kind)))?;
            validate_id(v).map_err(|e| FrameError(format!("`{field}` {e}")))?;
            Ok(v)
        };
        let need_id = || id.ok_or_else(|| FrameError(format!("`{}` needs `id`", raw.kind)));
        let need_data = || {
            raw.data
                .ok_or_else(|| FrameError(format!("`{}` needs `data`", raw.kind)))
        };
        Ok(match raw.kind {
            "send" => ClientFrame::Send {
                id: need_id()?,
                to: need(raw.to, "to")?,
                data: need_data()?,
            },
            "publish" => ClientFrame::Publish {
                id: need_id()?,
                room: need(raw.room, "room")?,
                data: need_data()?,
            },
            "join" => ClientFrame::Join {
                id,
                room: need(raw.room, "room")?,
            },
            "leave" => ClientFrame::Leave {
                id,
                room: need(raw.room, "room")?,
            },
            "ping" => ClientFrame::Ping { id },
            other => return Err(FrameError(format!("unknown frame type `{other}`"))),
        })
    }

    /// The client's `id`, when the frame has one.
    pub fn id(&self) -> Option<&'a str> {
        match *self {
            ClientFrame::Send { id, .. } | ClientFrame::Publish { id, .. } => Some(id),
            ClientFrame::Join { id, .. }
            | ClientFrame::Leave { id, .. }
            | ClientFrame::Ping { id } => id,
        }
    }
}

/// Error codes in `error` frames and HTTP refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    InvalidToken,
    TokenExpired,
    WrongNode,
    SlotNotOwned,
    SlotLoading,
    Draining,
    TooManyConnections,
    NoNodes,
    NotFound,
    NotReady,
    RateLimited,
    MessageTooBig,
    KafkaUnavailable,
    Overloaded,
    UpstreamUnavailable,
    Internal,
}

impl ErrorCode {
    /// Whether the same request may succeed if retried later.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::SlotNotOwned
                | ErrorCode::SlotLoading
                | ErrorCode::Draining
                | ErrorCode::TooManyConnections
                | ErrorCode::NoNodes
                | ErrorCode::NotReady
                | ErrorCode::RateLimited
                | ErrorCode::KafkaUnavailable
                | ErrorCode::Overloaded
                | ErrorCode::UpstreamUnavailable
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::WrongNode => "wrong_node",
            ErrorCode::SlotNotOwned => "slot_not_owned",
            ErrorCode::SlotLoading => "slot_loading",
            ErrorCode::Draining => "draining",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::NoNodes => "no_nodes",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::MessageTooBig => "message_too_big",
            ErrorCode::KafkaUnavailable => "kafka_unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

/// The JSON body of every HTTP refusal: `{"error":code,"message":…,"retryable":bool}`.
#[derive(Debug, Serialize)]
pub struct HttpError<'a> {
    pub error: ErrorCode,
    pub message: &'a str,
    pub retryable: bool,
}

impl<'a> HttpError<'a> {
    pub fn new(error: ErrorCode, message: &'a str) -> Self {
        HttpError {
            error,
            message,
            retryable: error.retryable(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("error bodies always serialize")
    }
}

/// The answer to `GET /api/v1/resolve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    pub node_id: String,
    pub url: String,
    pub token: String,
    pub epoch: u64,
}

/// The path a client connects to for `node_id`.
pub fn connect_path(node_id: &str) -> String {
    format!("/ws/{node_id}/connect")
}

/// Frames the server sends. Each serializes to one JSON text frame.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// First frame on every connection.
    Welcome {
        node: &'a str,
        #[serde(rename = "clientId")]
        client_id: &'a str,
        epoch: u64,
        /// Whether every message after `resumeOffset` will be delivered.
        recovered: bool,
        /// A resume point: the offset of the newest record in the client's slot at connect time.
        offset: i64,
    },
    Ack {
        id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<i64>,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        code: ErrorCode,
        message: &'a str,
        retryable: bool,
    },
    Move {
        reason: &'a str,
        #[serde(rename = "delayMs")]
        delay_ms: u64,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
}

impl ServerFrame<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }

    pub fn error(id: Option<&str>, code: ErrorCode, message: &str) -> String {
        ServerFrame::Error {
            id,
            code,
            message,
            retryable: code.retryable(),
        }
        .to_json()
    }
}

/// The value of a record on `rtc.deliver` (key = recipient) or `rtc.rooms` (key = room).
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<'a> {
    /// `Cow`: records produced by other backends may carry escaped strings.
    #[serde(borrow)]
    pub from: Cow<'a, str>,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none", borrow)]
    pub room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub data: &'a RawValue,
}

impl Envelope<'_> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("envelopes always serialize")
    }
}

/// A delivered message: `{"type":"msg",…}`. Direct messages carry `offset`; room messages carry
/// `room` and no offset (they are not part of resume).
#[derive(Debug, Serialize)]
pub struct MsgFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub from: &'a str,
    pub id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    pub data: &'a RawValue,
}

impl<'a> MsgFrame<'a> {
    /// The frame delivering `env`, found at `offset` for a direct message.
    pub fn from_envelope(env: &'a Envelope<'_>, offset: Option<i64>) -> Self {
        MsgFrame {
            kind: "msg",
            from: &env.from,
            id: &env.id,
            room: env.room.as_deref(),
            offset,
            data: env.data,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("msg frames always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_client_frame() {
        let f =
            ClientFrame::parse(r#"{"type":"send","id":"1","to":"bob","data":{"t":"hi"}}"#).unwrap();
        match f {
            ClientFrame::Send { id, to, data } => {
                assert_eq!((id, to, data.get()), ("1", "bob", r#"{"t":"hi"}"#));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"publish","id":"2","room":"r","data":1}"#),
            Ok(ClientFrame::Publish { room: "r", .. })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"join","room":"r"}"#),
            Ok(ClientFrame::Join {
                id: None,
                room: "r"
            })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"leave","id":"x","room":"r"}"#),
            Ok(ClientFrame::Leave {
                id: Some("x"),
                room: "r"
            })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping { id: None })
        ));
    }

    #[test]
    fn refuses_bad_frames_with_reasons() {
        let cases = [
            ("not json", "invalid frame"),
            (r#"{"id":"1"}"#, "invalid frame"),
            (r#"{"type":"fly"}"#, "unknown frame type `fly`"),
            (r#"{"type":"send","id":"1","data":1}"#, "`send` needs `to`"),
            (r#"{"type":"send","to":"b","data":1}"#, "`send` needs `id`"),
            (
                r#"{"type":"send","id":"1","to":"b"}"#,
                "`send` needs `data`",
            ),
            (
                r#"{"type":"send","id":"1","to":"","data":1}"#,
                "`to` is empty",
            ),
            (r#"{"type":"join","room":"a\u0001"}"#, "invalid frame"),
            (r#"{"type":"ping","id":""}"#, "`id` must be"),
        ];
        for (text, want) in cases {
            let err = ClientFrame::parse(text).unwrap_err();
            assert!(err.0.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn ids_are_validated() {
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert_eq!(validate_id(&"a".repeat(257)), Err(IdError::TooLong));
        assert_eq!(validate_id("a\nb"), Err(IdError::Control));
        assert_eq!(validate_id("a\"b"), Err(IdError::Escaped));
        assert_eq!(validate_id("a\\b"), Err(IdError::Escaped));
        assert_eq!(validate_id(&"é".repeat(128)), Ok(()));
    }

    #[test]
    fn server_frames_have_documented_shapes() {
        let w = ServerFrame::Welcome {
            node: "n1",
            client_id: "a",
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
                id: "1",
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
                reason: "drain",
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
            MsgFrame::from_envelope(&back, Some(12)).to_json(),
            r#"{"type":"msg","from":"a\"q","id":"7","offset":12,"data":[1,2]}"#
        );
        assert_eq!(
            HttpError::new(ErrorCode::NoNodes, "x").to_json(),
            r#"{"error":"no_nodes","message":"x","retryable":true}"#
        );
    }

    proptest! {
        /// Any send frame a client builds with serde survives parse with its fields intact.
        #[test]
        fn send_roundtrip(id in "[a-zA-Z0-9]{1,64}", to in "[^\\p{Cc}\"\\\\]{1,60}", n in any::<i64>()) {
            let text = serde_json::json!({"type":"send","id":id,"to":to,"data":{"n":n}}).to_string();
            match ClientFrame::parse(&text).unwrap() {
                ClientFrame::Send { id: i, to: t, data } => {
                    prop_assert_eq!(i, id.as_str());
                    prop_assert_eq!(t, to.as_str());
                    prop_assert_eq!(data.get(), format!("{{\"n\":{n}}}"));
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        /// Garbage never panics the parser.
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = ClientFrame::parse(&s);
        }
    }
}
