//! One WebSocket to the node that serves a client: resolve, connect with the token, send frames,
//! receive them typed (or as JSON values), track the resume offset and `move`. No reconnecting
//! by itself: [`crate::Client`] builds that on top.

use crate::backoff::Backoff;
use crate::error::{Error, HttpReply};
use crate::event::Event;
use crate::http::{open, query_escape, resolve, Endpoints};
use futures_util::{SinkExt, StreamExt};
use rtc_protocol::{close, ClientFrame, ServerFrame};
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The WebSocket stream of a connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// tungstenite's default 128 KiB read buffer stays resident per connection; 2 KiB is plenty for
/// our frames and lets one process hold many clients.
const READ_BUFFER_BYTES: usize = 2048;

/// A connected client: one WebSocket to the node that owns its slot.
pub struct Connection {
    /// Who this client is.
    pub client_id: String,
    /// Where it resolves and connects (kept for reconnecting).
    pub ep: Endpoints,
    /// The raw stream, for tools that drive frames themselves (the load test).
    pub ws: Ws,
    /// The node serving this connection (from `welcome`).
    pub node: String,
    /// The ring epoch of the welcome.
    pub epoch: u64,
    /// The welcome frame's `recovered`.
    pub recovered: bool,
    /// The resume point: offset of the newest direct message received (or the welcome's).
    pub offset: Option<i64>,
    /// Per room: the newest room offset received (a `msg` of the room, or a `joined`), the
    /// point a rejoin asks `since`.
    pub room_offsets: std::collections::BTreeMap<String, i64>,
    /// Set when the server sent `move`, with the delay it asked for.
    pub moved: bool,
    /// The delay the `move` asked for, milliseconds.
    pub move_delay_ms: u64,
}

impl Connection {
    /// Resolves and connects once, resuming after `resume` when given. A refusal comes back as
    /// [`Error::Refused`] with its status and body.
    pub async fn connect_once(
        ep: &Endpoints,
        client_id: &str,
        resume: Option<i64>,
    ) -> Result<Connection, Error> {
        let res = resolve(ep, client_id).await?;
        let addr = (ep.ws)(&res.node_id)
            .ok_or_else(|| Error::Invalid(format!("no address for node {}", res.node_id)))?;
        let mut url = format!(
            "{}://{addr}{}?clientId={}&token={}",
            if ep.tls.is_some() { "wss" } else { "ws" },
            res.url,
            query_escape(client_id),
            query_escape(&res.token)
        );
        if let Some(r) = resume {
            url.push_str(&format!("&resumeOffset={r}"));
        }
        let req = url.into_client_request()?;
        let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES);
        let stream = open(&addr, ep.bind, ep.tls.as_ref()).await?;
        let ws = match tokio_tungstenite::client_async_with_config(req, stream, Some(cfg)).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                return Err(Error::Refused(HttpReply {
                    status: resp.status().as_u16(),
                    retry_after: resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string),
                    body: resp
                        .body()
                        .as_ref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default(),
                }));
            }
            Err(e) => return Err(e.into()),
        };
        let mut c = Connection {
            client_id: client_id.to_string(),
            ep: ep.clone(),
            ws,
            node: String::new(),
            epoch: 0,
            recovered: false,
            offset: resume,
            room_offsets: Default::default(),
            moved: false,
            move_delay_ms: 0,
        };
        match c.recv(Duration::from_secs(10)).await? {
            Some(Event::Welcome {
                node,
                epoch,
                recovered,
                offset,
            }) => {
                c.node = node;
                c.epoch = epoch;
                c.recovered = recovered;
                if c.offset.is_none() {
                    c.offset = Some(offset);
                }
                Ok(c)
            }
            Some(Event::Closed { code, reason }) => Err(Error::Closed { code, reason }),
            other => Err(Error::Protocol(format!(
                "the first frame is not welcome: {other:?}"
            ))),
        }
    }

    /// Connects, retrying what is retryable (after resolving again) with full-jitter backoff
    /// until `deadline` has passed.
    pub async fn connect(
        ep: &Endpoints,
        client_id: &str,
        resume: Option<i64>,
        deadline: Duration,
    ) -> Result<Connection, Error> {
        let until = tokio::time::Instant::now() + deadline;
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            match Self::connect_once(ep, client_id, resume).await {
                Ok(c) => return Ok(c),
                Err(e) if !e.retryable() || tokio::time::Instant::now() >= until => return Err(e),
                Err(_) => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
    }

    /// Reconnects through resolve, resuming from the tracked offset.
    pub async fn reconnect(&mut self, deadline: Duration) -> Result<(), Error> {
        let _ = self.ws.close(None).await;
        let fresh = Connection::connect(&self.ep, &self.client_id, self.offset, deadline).await?;
        let offset = self.offset;
        let rooms = std::mem::take(&mut self.room_offsets);
        *self = fresh;
        if offset.is_some() {
            self.offset = offset.max(self.offset);
        }
        self.room_offsets = rooms;
        Ok(())
    }

    /// Sends one text frame as it is.
    pub async fn send_text(&mut self, text: String) -> Result<(), Error> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// Sends one frame.
    pub async fn send_frame(&mut self, frame: &ClientFrame<'_>) -> Result<(), Error> {
        self.send_text(frame.to_json()).await
    }

    /// Sends a direct message `data` to `to` with the id `id`.
    pub async fn send(
        &mut self,
        id: &str,
        to: &str,
        data: impl serde::Serialize,
    ) -> Result<(), Error> {
        let data = serde_json::value::to_raw_value(&data)
            .map_err(|e| Error::Invalid(format!("data does not serialize: {e}")))?;
        self.send_frame(&ClientFrame::Send {
            id,
            to,
            data: &data,
        })
        .await
    }

    /// The next text frame or close, within `timeout`; None when the stream ended.
    async fn next_message(&mut self, timeout: Duration) -> Result<Option<Message>, Error> {
        loop {
            let m = tokio::time::timeout(timeout, self.ws.next())
                .await
                .map_err(|_| Error::Timeout("a frame"))?;
            match m {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(m @ (Message::Text(_) | Message::Close(_)))) => return Ok(Some(m)),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame, typed, tracking the resume offset and `move` (a close is
    /// [`Event::Closed`]; None when the stream ended without one). Frame types this version does
    /// not know are skipped.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Option<Event>, Error> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.next_message(left).await? {
                None => return Ok(None),
                Some(Message::Close(c)) => return Ok(Some(closed_event(c))),
                Some(Message::Text(t)) => match ServerFrame::parse(&t) {
                    Ok(f) => {
                        self.observe(&f);
                        return Ok(Some(f.into()));
                    }
                    Err(rtc_protocol::server_frame::ParseError::Unknown(kind)) => {
                        tracing::debug!(kind, "skipping a frame type this client does not know");
                    }
                    Err(e) => return Err(Error::Protocol(e.to_string())),
                },
                Some(_) => unreachable!("next_message returns text and close only"),
            }
        }
    }

    /// The next frame as a JSON value, untracked (a close is `{"type":"close","code":…,
    /// "reason":…}`); for tools that look at frames this version does not type.
    pub async fn next_raw(&mut self, timeout: Duration) -> Result<Option<Value>, Error> {
        self.next_json(timeout, false).await
    }

    /// [`Self::next_raw`], tracking the resume offset and `move` like [`Self::recv`].
    pub async fn next(&mut self, timeout: Duration) -> Result<Option<Value>, Error> {
        self.next_json(timeout, true).await
    }

    async fn next_json(&mut self, timeout: Duration, track: bool) -> Result<Option<Value>, Error> {
        Ok(match self.next_message(timeout).await? {
            None => None,
            Some(Message::Text(t)) => {
                if track {
                    if let Ok(f) = ServerFrame::parse(&t) {
                        self.observe(&f);
                    }
                }
                Some(serde_json::from_str(&t).map_err(|e| Error::Protocol(format!("{e}: {t}")))?)
            }
            Some(Message::Close(c)) => {
                let (code, reason) = close_parts(c);
                Some(serde_json::json!({"type":"close","code":code,"reason":reason}))
            }
            Some(_) => unreachable!("next_message returns text and close only"),
        })
    }

    /// JSON frames until one matches `pred` (returned), within `timeout` overall.
    pub async fn until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value, Error> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Some(v) if pred(&v) => return Ok(v),
                Some(_) => {}
                None => return Err(Error::Protocol("connection closed while waiting".into())),
            }
        }
    }

    /// Books what a received frame means for reconnecting: the offset of a direct message
    /// becomes the resume point, that of a room message (or a `joined`) the room's `since`
    /// point, a `move` asks to reconnect after its delay.
    pub fn observe(&mut self, frame: &ServerFrame<'_>) {
        match *frame {
            ServerFrame::Msg {
                offset: Some(o),
                room: None,
                ..
            } => self.offset = Some(self.offset.map_or(o, |x| x.max(o))),
            ServerFrame::Msg {
                offset: Some(o),
                room: Some(ref r),
                ..
            }
            | ServerFrame::Joined {
                offset: o,
                room: ref r,
                ..
            } => {
                let at = self.room_offsets.entry(r.to_string()).or_insert(o);
                *at = (*at).max(o);
            }
            ServerFrame::Move { delay_ms, .. } => {
                self.moved = true;
                self.move_delay_ms = delay_ms;
            }
            _ => {}
        }
    }

    /// Closes with 1000 and waits (bounded) for the server's close in answer.
    pub async fn close(mut self) -> Result<(), Error> {
        let frame = CloseFrame {
            code: CloseCode::from(close::NORMAL),
            reason: "bye".into(),
        };
        self.ws.close(Some(frame)).await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
        Ok(())
    }
}

fn close_parts(c: Option<CloseFrame>) -> (u16, String) {
    c.map(|c| (u16::from(c.code), c.reason.to_string()))
        .unwrap_or((close::NO_STATUS, String::new()))
}

fn closed_event(c: Option<CloseFrame>) -> Event {
    let (code, reason) = close_parts(c);
    Event::Closed { code, reason }
}
