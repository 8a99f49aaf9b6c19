//! `POST /api/v1/publish` (through the gateway): backends send to a client or a room without a
//! Kafka client. Authenticated with an API key from PUBLISH_API_KEYS (`name:key,…`, a Secret),
//! given as `Authorization: Bearer <key>` or `X-Api-Key: <key>`. The answer comes once Kafka has
//! stored the message, with its offset — the same guarantee as a client's `ack`.
//!
//! One message: `{"to":"bob"|"room":"lobby","id":"m1","data":…,"from"?:"billing"}`; a batch:
//! `{"messages":[…]}` (at most MAX_BATCH). A batch is checked whole before anything is produced
//! (one bad message refuses it all with 400 and the index), then every message gets its own
//! result. `from` defaults to the key's name. A direct message retried with the same (`from`,
//! `id`) is delivered once, as for clients.

use crate::Balancer;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::future::join_all;
use rtc_protocol::{
    slot::slot_of, validate_id, Envelope, ErrorCode, HttpError, MAX_FRAME_ID_BYTES,
};
use rtc_serverkit::http::json_response;
use rtc_serverkit::kafka;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Most messages in one batch.
pub const MAX_BATCH: usize = 1000;

/// API keys by name.
pub struct ApiKeys(Vec<(String, Vec<u8>)>);

impl ApiKeys {
    /// Parses `name:key,name:key` (names are clientId-like, keys at least 16 bytes).
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, key) = part
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("PUBLISH_API_KEYS entries are name:key"))?;
            anyhow::ensure!(
                validate_id(name).is_ok(),
                "PUBLISH_API_KEYS: the name {name:?} is not a valid sender id"
            );
            anyhow::ensure!(
                key.len() >= 16,
                "PUBLISH_API_KEYS: the key of {name:?} is shorter than 16 bytes"
            );
            keys.push((name.to_string(), key.as_bytes().to_vec()));
        }
        Ok(ApiKeys(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of the key `given` (compared in constant time against every key).
    fn name_of(&self, given: &[u8]) -> Option<&str> {
        let mut found = None;
        for (name, key) in &self.0 {
            if bool::from(key.as_slice().ct_eq(given)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(default, borrow)]
    to: Option<&'a str>,
    #[serde(default, borrow)]
    room: Option<&'a str>,
    #[serde(borrow)]
    id: &'a str,
    #[serde(default, borrow)]
    from: Option<&'a str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    messages: Vec<Item<'a>>,
}

/// The result of one message.
#[derive(Serialize)]
#[serde(untagged)]
enum Outcome<'a> {
    Stored {
        id: &'a str,
        offset: i64,
    },
    Failed {
        id: &'a str,
        error: ErrorCode,
        message: &'static str,
        retryable: bool,
    },
}

fn refuse(code: ErrorCode, message: String) -> Response {
    let status = http::StatusCode::from_u16(code.status()).unwrap_or(http::StatusCode::BAD_REQUEST);
    let mut r = json_response(status, HttpError::new(code, &message).to_json());
    if let Some(s) = code.retry_after() {
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, http::HeaderValue::from(s));
    }
    r
}

fn check(item: &Item<'_>, max_bytes: usize) -> Result<(), String> {
    match (item.to, item.room) {
        (Some(t), None) => validate_id(t).map_err(|e| format!("`to` {e}"))?,
        (None, Some(r)) => validate_id(r).map_err(|e| format!("`room` {e}"))?,
        _ => return Err("needs exactly one of `to` and `room`".into()),
    }
    if item.id.is_empty() || item.id.len() > MAX_FRAME_ID_BYTES || validate_id(item.id).is_err() {
        return Err(format!(
            "`id` must be 1..={MAX_FRAME_ID_BYTES} bytes without control characters, quotes or backslashes"
        ));
    }
    if let Some(f) = item.from {
        validate_id(f).map_err(|e| format!("`from` {e}"))?;
    }
    if item.data.get().len() > max_bytes {
        return Err(format!("`data` is larger than {max_bytes} bytes"));
    }
    Ok(())
}

pub async fn publish(
    State(bal): State<Arc<Balancer>>,
    headers: http::HeaderMap,
    body: Bytes,
) -> Response {
    let count = |r: &str| bal.metrics.publishes.with_label_values(&[r]).inc();
    if bal.api_keys.is_empty() {
        count("unauthorized");
        return refuse(
            ErrorCode::Unauthorized,
            "the publish API is not enabled on this deployment (PUBLISH_API_KEYS)".into(),
        );
    }
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
    let Some(key_name) = given.and_then(|g| bal.api_keys.name_of(g.trim().as_bytes())) else {
        count("unauthorized");
        return refuse(
            ErrorCode::Unauthorized,
            if given.is_none() {
                "publish needs an API key: Authorization: Bearer <key> or X-Api-Key".into()
            } else {
                "the API key is not one of PUBLISH_API_KEYS".into()
            },
        );
    };
    let (items, batch) = match serde_json::from_slice::<Batch>(&body) {
        Ok(b) => (b.messages, true),
        Err(_) => match serde_json::from_slice::<Item>(&body) {
            Ok(i) => (vec![i], false),
            Err(e) => {
                count("bad_request");
                return refuse(ErrorCode::BadRequest, format!("invalid body: {e}"));
            }
        },
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        count("bad_request");
        return refuse(
            ErrorCode::BadRequest,
            format!("`messages` must hold 1..={MAX_BATCH} messages"),
        );
    }
    for (i, item) in items.iter().enumerate() {
        if let Err(e) = check(item, bal.cfg.publish_max_message_bytes) {
            count("bad_request");
            let at = if batch {
                format!("message {i}: ")
            } else {
                String::new()
            };
            return refuse(ErrorCode::BadRequest, format!("{at}{e}"));
        }
    }
    let Some(producer) = bal.producer.get() else {
        count("not_ready");
        return refuse(ErrorCode::NotReady, "the balancer is starting".into());
    };
    let timeout = Duration::from_millis(bal.cfg.publish_timeout_ms);
    let slots = bal.cfg.shared.slots;
    let sends = items.iter().map(|item| {
        let env = Envelope {
            from: item.from.unwrap_or(key_name).into(),
            id: item.id.into(),
            room: item.room.map(Into::into),
            data: item.data,
        }
        .to_json();
        let queued = match (item.to, item.room) {
            (Some(to), _) => kafka::produce_direct(producer, slot_of(to, slots), to, &env)
                .map(futures_util::FutureExt::boxed),
            (None, Some(room)) => {
                kafka::produce_room(producer, room, &env).map(futures_util::FutureExt::boxed)
            }
            (None, None) => unreachable!("checked above"),
        };
        async move {
            match queued {
                Ok(fut) => match tokio::time::timeout(timeout, fut).await {
                    Ok(Ok(offset)) => Ok(offset),
                    _ => Err(ErrorCode::KafkaUnavailable),
                },
                Err(_) => Err(ErrorCode::Overloaded),
            }
        }
    });
    let results = join_all(sends).await;
    let outcomes: Vec<Outcome> = items
        .iter()
        .zip(&results)
        .map(|(item, r)| match *r {
            Ok(offset) => {
                count("stored");
                Outcome::Stored {
                    id: item.id,
                    offset,
                }
            }
            Err(code) => {
                count(code.as_str());
                Outcome::Failed {
                    id: item.id,
                    error: code,
                    message: if code == ErrorCode::Overloaded {
                        "the balancer's Kafka queue is full; retry"
                    } else {
                        "Kafka did not confirm the message; retry with the same id"
                    },
                    retryable: true,
                }
            }
        })
        .collect();
    if batch {
        return axum::Json(serde_json::json!({ "results": outcomes })).into_response();
    }
    match (&outcomes[0], results[0]) {
        (Outcome::Stored { .. }, _) => axum::Json(&outcomes[0]).into_response(),
        (_, Err(code)) => refuse(
            code,
            "Kafka did not confirm the message; retry with the same id".into(),
        ),
        _ => unreachable!("a failed outcome has an error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_parsed_and_matched_by_value() {
        let k = ApiKeys::parse("billing:0123456789abcdef, ops:fedcba9876543210").unwrap();
        assert_eq!(k.name_of(b"fedcba9876543210"), Some("ops"));
        assert_eq!(k.name_of(b"0123456789abcdef"), Some("billing"));
        assert_eq!(k.name_of(b"0123456789abcde"), None);
        assert!(ApiKeys::parse("").unwrap().is_empty());
        assert!(ApiKeys::parse("nokey").is_err());
        assert!(ApiKeys::parse("a:short").is_err());
        assert!(ApiKeys::parse("a\"b:0123456789abcdef").is_err());
    }

    #[test]
    fn messages_are_checked_with_reasons() {
        let bad = [
            (r#"{"id":"1","data":1}"#, "exactly one of"),
            (
                r#"{"to":"a","room":"r","id":"1","data":1}"#,
                "exactly one of",
            ),
            (r#"{"to":"","id":"1","data":1}"#, "`to` is empty"),
            (r#"{"room":"r","id":"","data":1}"#, "`id` must be"),
            (
                r#"{"room":"r","id":"1","from":"","data":1}"#,
                "`from` is empty",
            ),
            (
                r#"{"room":"r","id":"1","data":"aaaaaaaaaaaaaaaaaaaa"}"#,
                "larger than 16",
            ),
        ];
        for (text, want) in bad {
            let item: Item = serde_json::from_str(text).unwrap();
            let err = check(&item, 16).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
        let ok: Item = serde_json::from_str(r#"{"to":"bob","id":"m1","data":{"x":1}}"#).unwrap();
        assert_eq!(check(&ok, 16), Ok(()));
    }
}
