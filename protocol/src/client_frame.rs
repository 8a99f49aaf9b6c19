//! Frames a client sends (`send`, `publish`, `join`, `leave`, `presence`, `online`, `ping`):
//! parsed by the socket node (borrowed, validated), built by clients (serialized from the same
//! type).

use crate::id::{validate_id, MAX_FRAME_ID_BYTES};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A frame from a client. Parsing validates it; serializing gives the documented JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientFrame<'a> {
    /// A direct message to `to`, acked once Kafka has it.
    Send {
        id: &'a str,
        to: &'a str,
        data: &'a RawValue,
    },
    /// A message to every member of `room`.
    Publish {
        id: &'a str,
        room: &'a str,
        data: &'a RawValue,
    },
    /// Joins `room`; answered by `joined`. With `since` (the newest room `offset` the client
    /// has), the room messages after it are sent first; with `last`, the last N the node holds.
    /// `presence`: this connection also gets `member` events (join/leave) of the room.
    Join {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        last: Option<u32>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        presence: bool,
    },
    Leave {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        room: &'a str,
    },
    /// Who is in `room` (answered by `presence`, at most MAX_PRESENCE_MEMBERS names).
    Presence { id: &'a str, room: &'a str },
    /// Which of `client_ids` are connected (answered by `online`).
    Online {
        id: &'a str,
        #[serde(rename = "clientIds")]
        client_ids: Vec<&'a str>,
    },
    Ping {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
}

/// Largest `last` a `join` may ask for.
pub const MAX_JOIN_LAST: u32 = 1000;
/// Most clientIds one `online` frame may ask about.
pub const MAX_ONLINE_IDS: usize = 100;

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
    #[serde(default)]
    since: Option<i64>,
    #[serde(default)]
    last: Option<u32>,
    #[serde(default)]
    presence: Option<bool>,
    #[serde(default, borrow, rename = "clientIds")]
    client_ids: Option<Vec<&'a str>>,
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
            "join" => {
                if raw.since.is_some() && raw.last.is_some() {
                    return Err(FrameError(
                        "`join` takes `since` or `last`, not both".into(),
                    ));
                }
                if raw.since.is_some_and(|s| s < -1) {
                    return Err(FrameError("`since` must be an offset >= -1".into()));
                }
                if raw.last.is_some_and(|n| n == 0 || n > MAX_JOIN_LAST) {
                    return Err(FrameError(format!("`last` must be 1..={MAX_JOIN_LAST}")));
                }
                ClientFrame::Join {
                    id,
                    room: need(raw.room, "room")?,
                    since: raw.since,
                    last: raw.last,
                    presence: raw.presence.unwrap_or(false),
                }
            }
            "presence" => ClientFrame::Presence {
                id: need_id()?,
                room: need(raw.room, "room")?,
            },
            "online" => {
                let ids = raw
                    .client_ids
                    .ok_or_else(|| FrameError("`online` needs `clientIds`".into()))?;
                if ids.is_empty() || ids.len() > MAX_ONLINE_IDS {
                    return Err(FrameError(format!(
                        "`clientIds` must hold 1..={MAX_ONLINE_IDS} ids"
                    )));
                }
                for c in &ids {
                    validate_id(c).map_err(|e| FrameError(format!("`clientIds` entry {e}")))?;
                }
                ClientFrame::Online {
                    id: need_id()?,
                    client_ids: ids,
                }
            }
            "leave" => ClientFrame::Leave {
                id,
                room: need(raw.room, "room")?,
            },
            "ping" => ClientFrame::Ping { id },
            other => return Err(FrameError(format!("unknown frame type `{other}`"))),
        })
    }

    /// The `id` of a frame that was refused, when it is valid JSON with a usable `id` (so the
    /// `error` names the frame it answers).
    pub fn id_of_refused(text: &'a str) -> Option<&'a str> {
        #[derive(Deserialize)]
        struct IdOnly<'a> {
            #[serde(default, borrow)]
            id: Option<&'a str>,
        }
        let i = serde_json::from_str::<IdOnly<'a>>(text).ok()?.id?;
        (!i.is_empty() && i.len() <= MAX_FRAME_ID_BYTES).then_some(i)
    }

    /// The client's `id`, when the frame has one.
    pub fn id(&self) -> Option<&'a str> {
        match self {
            ClientFrame::Send { id, .. }
            | ClientFrame::Publish { id, .. }
            | ClientFrame::Presence { id, .. }
            | ClientFrame::Online { id, .. } => Some(id),
            ClientFrame::Join { id, .. }
            | ClientFrame::Leave { id, .. }
            | ClientFrame::Ping { id } => *id,
        }
    }

    /// The frame as one JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client frames always serialize")
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
                room: "r",
                since: None,
                last: None,
                presence: false,
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
            (
                r#"{"type":"join","room":"r","since":1,"last":2}"#,
                "not both",
            ),
            (
                r#"{"type":"join","room":"r","since":-2}"#,
                "`since` must be",
            ),
            (r#"{"type":"join","room":"r","last":0}"#, "`last` must be"),
            (
                r#"{"type":"join","room":"r","last":1001}"#,
                "`last` must be",
            ),
            (r#"{"type":"presence","room":"r"}"#, "`presence` needs `id`"),
            (r#"{"type":"online","id":"o"}"#, "needs `clientIds`"),
            (r#"{"type":"online","id":"o","clientIds":[]}"#, "1..=100"),
            (
                r#"{"type":"online","id":"o","clientIds":[""]}"#,
                "entry is empty",
            ),
        ];
        for (text, want) in cases {
            let err = ClientFrame::parse(text).unwrap_err();
            assert!(err.0.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn client_frames_serialize_to_documented_shapes() {
        let data = RawValue::from_string(r#"{"t":"hi"}"#.into()).unwrap();
        let cases = [
            (
                ClientFrame::Send {
                    id: "1",
                    to: "bob",
                    data: &data,
                },
                r#"{"type":"send","id":"1","to":"bob","data":{"t":"hi"}}"#,
            ),
            (
                ClientFrame::Publish {
                    id: "2",
                    room: "r",
                    data: &data,
                },
                r#"{"type":"publish","id":"2","room":"r","data":{"t":"hi"}}"#,
            ),
            (
                ClientFrame::Join {
                    id: None,
                    room: "r",
                    since: None,
                    last: None,
                    presence: false,
                },
                r#"{"type":"join","room":"r"}"#,
            ),
            (
                ClientFrame::Join {
                    id: Some("j"),
                    room: "r",
                    since: Some(41),
                    last: None,
                    presence: true,
                },
                r#"{"type":"join","id":"j","room":"r","since":41,"presence":true}"#,
            ),
            (
                ClientFrame::Presence { id: "q", room: "r" },
                r#"{"type":"presence","id":"q","room":"r"}"#,
            ),
            (
                ClientFrame::Online {
                    id: "o",
                    client_ids: vec!["a", "b"],
                },
                r#"{"type":"online","id":"o","clientIds":["a","b"]}"#,
            ),
            (
                ClientFrame::Leave {
                    id: Some("x"),
                    room: "r",
                },
                r#"{"type":"leave","id":"x","room":"r"}"#,
            ),
            (ClientFrame::Ping { id: None }, r#"{"type":"ping"}"#),
        ];
        for (frame, want) in cases {
            let json = frame.to_json();
            assert_eq!(json, want);
            // And the server reads back what a client built.
            assert_eq!(ClientFrame::parse(&json).unwrap().to_json(), want);
        }
    }

    proptest! {
        /// Any send frame a client builds survives parse with its fields intact.
        #[test]
        fn send_roundtrip(id in "[a-zA-Z0-9]{1,64}", to in "[^\\p{Cc}\"\\\\]{1,60}", n in any::<i64>()) {
            let data = RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
            let text = ClientFrame::Send { id: &id, to: &to, data: &data }.to_json();
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
