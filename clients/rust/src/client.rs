//! The client applications use: a connection that stays up. It reconnects with full-jitter
//! backoff when the connection drops or the server sends `move`, resumes from the newest offset
//! it received, joins its rooms again from the newest room message it received (so it gets
//! what it missed in them, or `recovered: false` on the `joined` event), and re-sends every direct message not yet answered with
//! the same id — the owner delivers a (recipient, sender, id) once, so a retry is never a
//! duplicate.

use crate::backoff::Backoff;
use crate::connection::Connection;
use crate::error::{close_is_retryable, Error};
use crate::event::Event;
use crate::http::Endpoints;
use rtc_protocol::ClientFrame;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::time::Duration;

/// How a [`Client`] connects and reconnects.
#[derive(Clone)]
pub struct Options {
    /// Where to resolve and connect.
    pub endpoints: Endpoints,
    /// Who this client is.
    pub client_id: String,
    /// Resume after this offset on the first connection (a previous session's newest offset).
    pub resume_offset: Option<i64>,
    /// Waits between reconnect attempts.
    pub backoff: Backoff,
    /// How long one (re)connect may keep retrying before it gives up.
    pub connect_deadline: Duration,
}

impl Options {
    /// Connect `client_id` through the gateway at `gateway` (`host:port`).
    pub fn new(gateway: &str, client_id: &str) -> Self {
        Options {
            endpoints: Endpoints::gateway(gateway),
            client_id: client_id.to_string(),
            resume_offset: None,
            backoff: Backoff::default(),
            connect_deadline: Duration::from_secs(60),
        }
    }

    /// Sends `jwt` with every resolve (`Authorization: Bearer`), for deployments that require
    /// one; its `sub` must be the clientId. A client whose token expires gets a non-retryable
    /// 401 on its next reconnect: build the client again with a fresh token.
    pub fn bearer(mut self, jwt: &str) -> Self {
        self.endpoints.bearer = Some(jwt.to_string());
        self
    }

    /// Resolves over `https://` and connects over `wss://` (the gateway's TLS_LISTEN_ADDR),
    /// trusting what `tls` trusts: `Tls::system_roots()` for a public certificate,
    /// `Tls::with_ca_pem` for a private CA. A certificate it does not trust is
    /// `Error::Tls`, which is not retried.
    pub fn tls(mut self, tls: crate::http::Tls) -> Self {
        self.endpoints.tls = Some(tls);
        self
    }
}

/// A client that stays connected; see the module docs for what it does on its own.
pub struct Client {
    opts: Options,
    conn: Connection,
    next_id: u64,
    /// Direct messages sent and not yet answered, by id, as sent.
    pending: BTreeMap<String, String>,
    /// Rooms joined, with whether member events were asked for.
    rooms: BTreeMap<String, bool>,
    reconnects: u64,
}

impl Client {
    /// Connects (retrying what is retryable until the connect deadline).
    pub async fn connect(opts: Options) -> Result<Client, Error> {
        let conn = Connection::connect(
            &opts.endpoints,
            &opts.client_id,
            opts.resume_offset,
            opts.connect_deadline,
        )
        .await?;
        Ok(Client {
            opts,
            conn,
            next_id: 0,
            pending: BTreeMap::new(),
            rooms: BTreeMap::new(),
            reconnects: 0,
        })
    }

    /// The node serving the current connection.
    pub fn node(&self) -> &str {
        &self.conn.node
    }

    /// The resume point: the offset of the newest direct message received.
    pub fn offset(&self) -> Option<i64> {
        self.conn.offset
    }

    /// Whether the current connection's resume recovered every missed message.
    pub fn recovered(&self) -> bool {
        self.conn.recovered
    }

    /// How many times the client reconnected.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Direct messages sent and not yet acked or refused.
    pub fn unanswered(&self) -> usize {
        self.pending.len()
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        format!("{}", self.next_id)
    }

    fn raw(data: &impl serde::Serialize) -> Result<Box<RawValue>, Error> {
        serde_json::value::to_raw_value(data)
            .map_err(|e| Error::Invalid(format!("data does not serialize: {e}")))
    }

    /// Sends `data` to the client `to`; returns the id its `ack` (or `error`) will carry. Kept
    /// until answered and re-sent with the same id after a reconnect.
    pub async fn send(&mut self, to: &str, data: &impl serde::Serialize) -> Result<String, Error> {
        let id = self.new_id();
        let data = Self::raw(data)?;
        let text = ClientFrame::Send {
            id: &id,
            to,
            data: &data,
        }
        .to_json();
        self.pending.insert(id.clone(), text.clone());
        // A failed write is repaired by the reconnect in `next_event`, which re-sends it.
        let _ = self.conn.send_text(text).await;
        Ok(id)
    }

    /// Publishes `data` to `room`; returns the id of its `ack`. Not re-sent after a reconnect
    /// (rooms do not deduplicate): on an `error` or a lost answer, publish again if it matters.
    pub async fn publish(
        &mut self,
        room: &str,
        data: &impl serde::Serialize,
    ) -> Result<String, Error> {
        let id = self.new_id();
        let data = Self::raw(data)?;
        self.conn
            .send_frame(&ClientFrame::Publish {
                id: &id,
                room,
                data: &data,
            })
            .await?;
        Ok(id)
    }

    /// Joins `room` for live messages (and joins it again after every reconnect, from the
    /// newest room message received).
    pub async fn join(&mut self, room: &str) -> Result<(), Error> {
        self.join_with(room, None, false).await
    }

    /// Joins `room`, first getting the last `last` messages the node holds (at most
    /// ROOM_HISTORY_MAX_MESSAGES), with `member` events when `presence`.
    pub async fn join_with(
        &mut self,
        room: &str,
        last: Option<u32>,
        presence: bool,
    ) -> Result<(), Error> {
        self.rooms.insert(room.to_string(), presence);
        let since = self.conn.room_offsets.get(room).copied();
        self.conn
            .send_frame(&ClientFrame::Join {
                id: None,
                room,
                since,
                last: if since.is_some() { None } else { last },
                presence,
            })
            .await
    }

    /// Asks who is in `room`; the answer is an [`Event::Presence`] with the returned id.
    pub async fn presence(&mut self, room: &str) -> Result<String, Error> {
        let id = self.new_id();
        self.conn
            .send_frame(&ClientFrame::Presence { id: &id, room })
            .await?;
        Ok(id)
    }

    /// Asks which of `client_ids` are online; the answer is an [`Event::Online`].
    pub async fn online(&mut self, client_ids: &[&str]) -> Result<String, Error> {
        let id = self.new_id();
        self.conn
            .send_frame(&ClientFrame::Online {
                id: &id,
                client_ids: client_ids.to_vec(),
            })
            .await?;
        Ok(id)
    }

    /// Leaves `room`.
    pub async fn leave(&mut self, room: &str) -> Result<(), Error> {
        self.rooms.remove(room);
        self.conn.room_offsets.remove(room);
        self.conn
            .send_frame(&ClientFrame::Leave { id: None, room })
            .await
    }

    /// The next event, within `timeout`. Moves and dropped connections are handled here: the
    /// client reconnects and reports the new connection as [`Event::Welcome`]. An error means
    /// the client cannot go on (a reconnect failed past its deadline, or was not retryable).
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Event, Error> {
        let ev = match self.conn.recv(timeout).await {
            Ok(Some(ev)) => ev,
            Err(Error::Timeout(w)) => return Err(Error::Timeout(w)),
            Ok(None) | Err(_) => {
                self.reconnect(None).await?;
                return Ok(self.welcome());
            }
        };
        match ev {
            Event::Ack { ref id, .. } => {
                self.pending.remove(id);
            }
            Event::Error {
                id: Some(ref id), ..
            } => {
                self.pending.remove(id);
            }
            Event::Move { delay_ms, .. } => {
                self.reconnect(Some(Duration::from_millis(delay_ms)))
                    .await?;
                return Ok(self.welcome());
            }
            Event::Closed { code, ref reason } => {
                if !close_is_retryable(code) {
                    return Err(Error::Closed {
                        code,
                        reason: reason.clone(),
                    });
                }
                self.reconnect(None).await?;
                return Ok(self.welcome());
            }
            _ => {}
        }
        Ok(ev)
    }

    fn welcome(&self) -> Event {
        Event::Welcome {
            node: self.conn.node.clone(),
            epoch: self.conn.epoch,
            recovered: self.conn.recovered,
            offset: self.conn.offset.unwrap_or(-1),
        }
    }

    /// Reconnects (after `delay`, the server's `move` delay, or a backoff), then joins the
    /// rooms again and re-sends unanswered direct messages with their ids.
    async fn reconnect(&mut self, delay: Option<Duration>) -> Result<(), Error> {
        let mut backoff = self.opts.backoff.clone();
        tokio::time::sleep(delay.unwrap_or_else(|| backoff.next_delay())).await;
        self.conn.reconnect(self.opts.connect_deadline).await?;
        self.reconnects += 1;
        for (room, &presence) in &self.rooms {
            let since = self.conn.room_offsets.get(room).copied();
            self.conn
                .send_frame(&ClientFrame::Join {
                    id: None,
                    room,
                    since,
                    last: None,
                    presence,
                })
                .await?;
        }
        for text in self.pending.values() {
            self.conn.send_text(text.clone()).await?;
        }
        Ok(())
    }

    /// Closes the connection normally (1000) and waits for the server's answer.
    pub async fn close(self) -> Result<(), Error> {
        self.conn.close().await
    }
}
