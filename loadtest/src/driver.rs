//! One client's life in a run: connect within the handshake limit, send on the open-loop
//! schedule, book everything received in the ledger, follow `move` and reconnect, re-sending
//! what was not answered.

use crate::ledger::{Delivery, Ledger, Stamp};
use crate::plan::{Pattern, Peers, Phase, Plan};
use futures_util::StreamExt;
use rtc_client::Connection as Client;
use rtc_protocol::server_frame::ParseError;
use rtc_protocol::{ClientFrame, ServerFrame};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// One client's whole life: connect (within the handshake limit), wait for `start`, send on the
/// schedule while sending, account for everything received, follow moves; ends on `Done`.
pub async fn run_client(
    plan: Plan,
    index: usize,
    phase: watch::Receiver<Phase>,
    ledger: Arc<Mutex<Ledger>>,
    start: Arc<tokio::sync::Barrier>,
) {
    let me = plan.peers.name(index as u32).to_string();
    let me_idx = index as u32;
    let mut ep = plan.ep.clone();
    if !plan.sources.is_empty() {
        ep.bind = Some(plan.sources[index % plan.sources.len()]);
    }
    let room = format!("room-{}", index % plan.rooms.max(1));
    let connected = {
        let _permit = plan
            .handshakes
            .acquire()
            .await
            .expect("the semaphore is never closed");
        // Boxed: the handshake's state is large and needed only briefly; inline it would sit in
        // every client's task for the whole run.
        Box::pin(Client::connect(&ep, &me, None, Duration::from_secs(60))).await
    };
    let mut c = match connected {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(client = %me, error = %e, "could not connect");
            {
                let mut l = ledger.lock().expect("ledger lock");
                l.connect_failures += 1;
                l.gone.insert(index as u32);
            }
            start.wait().await;
            return;
        }
    };
    if plan.pattern == Pattern::Room {
        let _ = c.send_text(join_frame(&room)).await;
    }
    ledger.lock().expect("ledger lock").connected += 1;
    // Until every client is connected this one keeps reading (answering the node's pings: a
    // client that stops reading is dropped as dead), and waits at the barrier in the loop.
    let mut started = false;
    let mut barrier = Box::pin(start.wait());
    let mut seq = 0u64;
    let mut generation = 0u32;
    let mut pending = Pending::default();
    // Spread clients over the interval so sends do not come in bursts.
    let offset = Duration::from_micros(
        u64::from(rtc_protocol::slot::murmur2(me.as_bytes()) as u32)
            % plan.interval.as_micros().max(1) as u64,
    );
    // Open loop: ticks that fall due while the client is busy (reconnecting, blocked on a full
    // socket) fire late, back to back, and carry their intended time — so the wait counts.
    let (mut base_at, mut base_us) = (tokio::time::Instant::now(), crate::now_us());
    let mut tick = tokio::time::interval_at(base_at + offset, plan.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // One long-lived future per phase change instead of a new waiter on every frame.
    let mut sending = *phase.borrow() == Phase::Sending;
    let mut changed = Box::pin(next_phase(phase));
    loop {
        tokio::select! {
            _ = &mut barrier, if !started => {
                // The schedule starts now.
                started = true;
                (base_at, base_us) = (tokio::time::Instant::now(), crate::now_us());
                tick.reset_at(base_at + offset);
            }
            (p, rx) = &mut changed => {
                match p {
                    Phase::Done => break,
                    p => sending = p == Phase::Sending,
                }
                changed = Box::pin(next_phase(rx));
            }
            due = tick.tick(), if sending && started => {
                let intended = base_us + due.duration_since(base_at).as_micros() as u64;
                seq += 1;
                let id = seq.to_string();
                let stamp = Stamp { seq: Some(seq), g: Some(generation), at: Some(intended), ts: Some(crate::now_us()), pad: Some(&plan.pad) };
                let data = serde_json::value::to_raw_value(&stamp).expect("stamps serialize");
                let out = match plan.pattern {
                    Pattern::Direct | Pattern::SelfSend => {
                        let to = if plan.pattern == Pattern::SelfSend {
                            me_idx
                        } else {
                            ((index + 1 + (seq as usize * 7919) % (plan.peers.len() - 1).max(1)) % plan.peers.len()) as u32
                        };
                        ledger.lock().expect("ledger lock").sent.insert((me_idx, seq), to);
                        ClientFrame::Send { id: &id, to: plan.peers.name(to), data: &data }
                    }
                    Pattern::Room => ClientFrame::Publish { id: &id, room: &room, data: &data },
                    Pattern::Ping => {
                        pending.pings.insert(seq, (intended, crate::now_us()));
                        ClientFrame::Ping { id: Some(id.as_str()) }
                    }
                };
                let text = out.to_json();
                if matches!(out, ClientFrame::Send { .. }) {
                    pending.sends.insert(seq, text.clone());
                }
                ledger.lock().expect("ledger lock").sent_one();
                if c.send_text(text).await.is_err() {
                    generation += 1;
                    if !reconnect(&mut c, &plan, &room, &mut pending, &ledger).await {
                        break;
                    }
                }
            }
            m = c.ws.next() => {
                let must_reconnect = match m {
                    Some(Ok(Message::Text(t))) => handle(me_idx, &t, &mut c, &plan.peers, &mut pending, &ledger),
                    Some(Ok(Message::Close(f))) => {
                        let code = f.map_or(1005, |f| u16::from(f.code));
                        ledger.lock().expect("ledger lock").closed(code.to_string());
                        true
                    }
                    Some(Err(e)) => {
                        ledger.lock().expect("ledger lock").closed(format!("error: {e}"));
                        true
                    }
                    None => {
                        ledger.lock().expect("ledger lock").closed("eof".into());
                        true
                    }
                    Some(Ok(_)) => false,
                };
                if must_reconnect {
                    if c.moved {
                        tokio::time::sleep(Duration::from_millis(c.move_delay_ms)).await;
                    }
                    generation += 1;
                    if !reconnect(&mut c, &plan, &room, &mut pending, &ledger).await { break; }
                }
            }
        }
    }
    if !started {
        // Gave up before the start: the others still wait for this client at the barrier.
        barrier.await;
    }
    let mut l = ledger.lock().expect("ledger lock");
    l.connected -= 1;
    l.final_node.insert(me, c.node.clone());
}

/// The phase once it changes (Done when the sender is gone), and the receiver to wait again.
async fn next_phase(mut phase: watch::Receiver<Phase>) -> (Phase, watch::Receiver<Phase>) {
    let p = match phase.changed().await {
        Ok(()) => *phase.borrow_and_update(),
        Err(_) => Phase::Done,
    };
    (p, phase)
}

fn join_frame(room: &str) -> String {
    ClientFrame::Join {
        id: None,
        room,
        since: None,
        last: None,
        presence: false,
    }
    .to_json()
}

/// Books one text frame; true when the client must reconnect (a `move`).
fn handle(
    me: u32,
    text: &str,
    c: &mut Client,
    peers: &Peers,
    pending: &mut Pending,
    ledger: &Mutex<Ledger>,
) -> bool {
    let f = match ServerFrame::parse(text) {
        Ok(f) => f,
        Err(ParseError::Unknown(_)) => return false,
        Err(_) => {
            tracing::warn!(client = peers.name(me), frame = text, "unparseable frame");
            ledger.lock().expect("ledger lock").errors += 1;
            return false;
        }
    };
    c.observe(&f);
    // Every id this run sends is its sequence number.
    let seq: Option<u64> = match &f {
        ServerFrame::Ack { id, .. } | ServerFrame::Msg { id, .. } => id.parse().ok(),
        ServerFrame::Error { id, .. } | ServerFrame::Pong { id } => {
            id.as_deref().and_then(|i| i.parse().ok())
        }
        _ => None,
    };
    let mut l = ledger.lock().expect("ledger lock");
    match f {
        ServerFrame::Ack { .. } => {
            if let Some(n) = l.ack(me, seq) {
                pending.sends.remove(&n);
            }
        }
        ServerFrame::Pong { .. } => {
            if let Some((intended, actual)) = seq.and_then(|i| pending.pings.remove(&i)) {
                l.pong(intended, actual);
            }
        }
        ServerFrame::Error { .. } => {
            if let Some(n) = l.error(me, seq) {
                pending.sends.remove(&n);
            }
        }
        ServerFrame::Msg {
            from,
            room,
            offset,
            data,
            ..
        } => {
            let stamp: Stamp = serde_json::from_str(data.get()).unwrap_or_default();
            if room.is_some() {
                l.room_delivery(stamp.at, stamp.ts);
                return false;
            }
            let offset = offset.unwrap_or(-1);
            if let Delivery::Duplicate { first_offset } =
                l.delivery(me, peers.index_of(&from), seq, offset, &stamp)
            {
                // Same offset twice would be a server bug; two offsets mean the record is in
                // Kafka twice (a producer retry the broker did not deduplicate).
                tracing::warn!(
                    recipient = peers.name(me),
                    from = &*from,
                    id = seq,
                    first_offset,
                    offset,
                    "duplicate delivery"
                );
            }
        }
        ServerFrame::Move { .. } => {
            l.closed("move".into());
            return true;
        }
        ServerFrame::Welcome { .. }
        | ServerFrame::Joined { .. }
        | ServerFrame::Presence { .. }
        | ServerFrame::Online { .. }
        | ServerFrame::Member { .. } => {}
    }
    false
}

/// What one client still waits to hear about.
#[derive(Default)]
struct Pending {
    /// Ping id → (intended, actual) send times, waiting for the pong.
    pings: HashMap<u64, (u64, u64)>,
    /// Direct messages neither acked nor refused yet, by sequence number, as sent. After a
    /// reconnect they are sent again with the same id, as a real client does: the answer to the
    /// first copy died with the old connection, and the owner delivers an id once.
    sends: BTreeMap<u64, String>,
}

async fn reconnect(
    c: &mut Client,
    plan: &Plan,
    room: &str,
    pending: &mut Pending,
    ledger: &Mutex<Ledger>,
) -> bool {
    {
        let mut l = ledger.lock().expect("ledger lock");
        l.connected -= 1;
        l.disconnects += 1;
    }
    let r = {
        let _permit = plan
            .handshakes
            .acquire()
            .await
            .expect("the semaphore is never closed");
        Box::pin(c.reconnect(Duration::from_secs(60))).await
    };
    if r.is_ok() && plan.pattern == Pattern::Room {
        let _ = c.send_text(join_frame(room)).await;
    }
    let mut resent = 0;
    if r.is_ok() {
        // A failure here closes the new connection too; the next read sees it and reconnects.
        for text in pending.sends.values() {
            if c.send_text(text.clone()).await.is_err() {
                break;
            }
            resent += 1;
        }
    }
    let mut l = ledger.lock().expect("ledger lock");
    // Counted as connected either way: the task's end takes it off once.
    l.connected += 1;
    l.resent += resent;
    match r {
        Ok(()) => {
            l.reconnects += 1;
            true
        }
        Err(e) => {
            tracing::warn!(client = %c.client_id, error = %e, "could not reconnect");
            l.connect_failures += 1;
            if let Some(i) = plan.peers.index_of(&c.client_id) {
                l.gone.insert(i);
            }
            false
        }
    }
}
