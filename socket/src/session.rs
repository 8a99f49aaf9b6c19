//! Client sessions and presence in Redis, written from a bounded queue off the connection path.
//!
//! - Sessions (`rtc:session:<clientId>`: node, connected-at) say which node a client is on.
//! - Presence (`rtc:presence:room:<room>`: clientId → nodeId) says who is in a room.
//!
//! Neither has a TTL per member: an entry counts only while its node's heartbeat key
//! (`rtc:node:<nodeId>`, HEARTBEAT_TTL_SECS) exists, so everything a node wrote dies with it
//! within the TTL, however many members it had. Survivors then delete a dead node's presence
//! entries and publish a `leave` for each (each entry is removed by exactly one of them: the
//! removal is one script), and a node that starts again under the same id first clears what it
//! left behind. Join and leave changes are published on `rtc.rooms` for members that asked for
//! `member` events. Losing a queued write (queue full) loses a presence change, never a message.

use crate::conn::Conn;
use crate::node::Node;
use redis::aio::ConnectionManager;
use rtc_protocol::record::PresenceRecord;
use rtc_protocol::{ErrorCode, ServerFrame};
use rtc_serverkit::store;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A change to a client's session or presence, or a question about presence.
pub enum SessionEvent {
    Connected {
        client_id: Box<str>,
        at_ms: u64,
    },
    Disconnected {
        client_id: Box<str>,
    },
    Joined {
        room: Box<str>,
        client_id: Box<str>,
    },
    Left {
        room: Box<str>,
        client_id: Box<str>,
    },
    /// `presence` frame: who is in `room`.
    Members {
        conn: Arc<Conn>,
        id: Box<str>,
        room: Box<str>,
    },
    /// `online` frame: which of `ids` are connected.
    Online {
        conn: Arc<Conn>,
        id: Box<str>,
        ids: Vec<Box<str>>,
    },
}

/// Queue of session and presence work; bounded.
pub fn session_channel() -> (mpsc::Sender<SessionEvent>, mpsc::Receiver<SessionEvent>) {
    mpsc::channel(16_384)
}

/// Sets a presence entry; 1 if it is new for this node (a `join` to announce).
const JOIN: &str = "local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[2])
if old == ARGV[2] then return 0 end
return 1";
/// Removes a presence entry if this node wrote it; 1 if removed (a `leave` to announce).
const LEAVE: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
redis.call('HDEL', KEYS[1], ARGV[1]) return 1 end return 0";
/// Removes the given clientIds (ARGV[2..]) from a room where node ARGV[1] still holds them;
/// returns those removed. Called with one page of a scan at a time, so a huge room never holds
/// Redis for long.
const SWEEP: &str = "local out = {}
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then
    redis.call('HDEL', KEYS[1], ARGV[i]) out[#out + 1] = ARGV[i]
  end
end
return out";
/// Removes a session record if it still names this node.
const END_SESSION: &str =
    "if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

fn room_key(room: &str) -> String {
    format!("{}{room}", store::PRESENCE_ROOM_PREFIX)
}

fn node_rooms_key(node: &str) -> String {
    format!("{}{node}", store::PRESENCE_NODE_ROOMS_PREFIX)
}

/// Writes sessions and presence as events arrive (batching what is queued), answers presence
/// questions, and cleans up after dead nodes every `sweep_every`.
pub async fn run_sessions(
    node: Arc<Node>,
    mut redis: ConnectionManager,
    mut rx: mpsc::Receiver<SessionEvent>,
    sweep_every: Duration,
) {
    // Entries a previous process with our id left behind (their clients are gone).
    if let Err(e) = sweep_node(&node, &mut redis, &node.id).await {
        tracing::warn!(error = %e, "could not clear this node's old presence");
    }
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(256);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, 256) => {
                if n == 0 {
                    return;
                }
                write_batch(&node, &mut redis, &mut batch).await;
            }
            _ = sweep.tick() => {
                if let Err(e) = sweep_dead(&node, &mut redis).await {
                    tracing::debug!(error = %e, "presence sweep failed");
                }
            }
        }
    }
}

/// A presence change to publish if its write changed something: (kind, room, clientId).
type Announce = (&'static str, Box<str>, Box<str>);

async fn write_batch(
    node: &Arc<Node>,
    redis: &mut ConnectionManager,
    batch: &mut Vec<SessionEvent>,
) {
    let nid = node.id.as_str();
    let mut pipe = redis::pipe();
    // For each command in the pipe: the presence change it may announce.
    let mut announce: Vec<Option<Announce>> = Vec::new();
    for ev in batch.drain(..) {
        match ev {
            SessionEvent::Connected { client_id, at_ms } => {
                let key = format!("{}{client_id}", store::SESSION_PREFIX);
                pipe.hset_multiple(
                    &key,
                    &[
                        ("node", nid.to_string()),
                        ("connectedAt", at_ms.to_string()),
                    ],
                );
                pipe.expire(&key, 86_400);
                announce.extend([None, None]);
            }
            SessionEvent::Disconnected { client_id } => {
                let key = format!("{}{client_id}", store::SESSION_PREFIX);
                pipe.cmd("EVAL").arg(END_SESSION).arg(1).arg(&key).arg(nid);
                announce.push(None);
            }
            SessionEvent::Joined { room, client_id } => {
                pipe.cmd("EVAL")
                    .arg(JOIN)
                    .arg(3)
                    .arg(room_key(&room))
                    .arg(node_rooms_key(nid))
                    .arg(store::PRESENCE_NODES_KEY)
                    .arg(&*client_id)
                    .arg(nid)
                    .arg(&*room);
                announce.push(Some(("join", room, client_id)));
            }
            SessionEvent::Left { room, client_id } => {
                pipe.cmd("EVAL")
                    .arg(LEAVE)
                    .arg(1)
                    .arg(room_key(&room))
                    .arg(&*client_id)
                    .arg(nid);
                announce.push(Some(("leave", room, client_id)));
            }
            SessionEvent::Members { conn, id, room } => {
                let (node, redis) = (node.clone(), redis.clone());
                tokio::spawn(answer_members(node, redis, conn, id, room));
            }
            SessionEvent::Online { conn, id, ids } => {
                let (node, redis) = (node.clone(), redis.clone());
                tokio::spawn(answer_online(node, redis, conn, id, ids));
            }
        }
    }
    if announce.is_empty() {
        return;
    }
    match pipe.query_async::<Vec<redis::Value>>(redis).await {
        Ok(results) => {
            for (a, r) in announce.into_iter().zip(results) {
                if let Some((kind, room, client)) = a {
                    node.metrics.presence.with_label_values(&[kind]).inc();
                    if r == redis::Value::Int(1) {
                        publish_presence(node, kind, &room, &client);
                    }
                }
            }
        }
        Err(e) => {
            node.metrics.presence.with_label_values(&["failed"]).inc();
            tracing::debug!(error = %e, "session/presence write failed");
        }
    }
}

/// Publishes a presence change on `rtc.rooms` (fire and forget: a lost event is a presence
/// glitch a `presence` query corrects, never a lost message).
fn publish_presence(node: &Arc<Node>, kind: &str, room: &str, client: &str) {
    let rec = serde_json::to_string(&PresenceRecord {
        presence: kind.into(),
        client_id: client.into(),
        room: room.into(),
    })
    .expect("presence records serialize");
    let producer = node.producer();
    match crate::relay::produce_room(&producer, room, &rec) {
        Ok(fut) => {
            tokio::spawn(async move {
                if let Err(e) = fut.await {
                    tracing::debug!(error = %e, "presence event not stored");
                }
            });
        }
        Err(e) => tracing::debug!(error = %e, "presence event not queued"),
    }
}

/// Which of `nodes` have a heartbeat (hold a lease) now.
async fn alive(
    redis: &mut ConnectionManager,
    nodes: &BTreeSet<String>,
) -> redis::RedisResult<BTreeSet<String>> {
    if nodes.is_empty() {
        return Ok(BTreeSet::new());
    }
    let mut pipe = redis::pipe();
    for n in nodes {
        pipe.exists(format!("{}{n}", store::NODE_PREFIX));
    }
    let live: Vec<bool> = pipe.query_async(redis).await?;
    Ok(nodes
        .iter()
        .zip(live)
        .filter(|(_, l)| *l)
        .map(|(n, _)| n.clone())
        .collect())
}

/// One page of a room's presence hash: the next cursor and (clientId, nodeId) pairs.
async fn scan_page(
    redis: &mut ConnectionManager,
    key: &str,
    cursor: u64,
) -> redis::RedisResult<(u64, Vec<(String, String)>)> {
    redis::cmd("HSCAN")
        .arg(key)
        .arg(cursor)
        .arg("COUNT")
        .arg(500)
        .query_async(redis)
        .await
}

/// The members of `room` whose node is alive, sorted, at most `max` (and whether there were
/// more). Reads the hash in pages so a huge room costs a bounded amount.
pub async fn members(
    redis: &mut ConnectionManager,
    room: &str,
    max: usize,
) -> redis::RedisResult<(Vec<String>, bool)> {
    let key = room_key(room);
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut cursor: u64 = 0;
    let mut more = false;
    loop {
        let (next, page) = scan_page(redis, &key, cursor).await?;
        entries.extend(page);
        cursor = next;
        if cursor == 0 {
            break;
        }
        if entries.len() >= max * 4 {
            more = true;
            break;
        }
    }
    let nodes: BTreeSet<String> = entries.iter().map(|(_, n)| n.clone()).collect();
    let live = alive(redis, &nodes).await?;
    let mut out: Vec<String> = entries
        .into_iter()
        .filter(|(_, n)| live.contains(n))
        .map(|(c, _)| c)
        .collect();
    out.sort();
    out.dedup();
    if out.len() > max {
        out.truncate(max);
        more = true;
    }
    Ok((out, more))
}

/// Which of `ids` are connected to a live node now.
pub async fn online(
    redis: &mut ConnectionManager,
    ids: &[Box<str>],
) -> redis::RedisResult<Vec<String>> {
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.hget(format!("{}{id}", store::SESSION_PREFIX), "node");
    }
    let nodes: Vec<Option<String>> = pipe.query_async(redis).await?;
    let distinct: BTreeSet<String> = nodes.iter().flatten().cloned().collect();
    let live = alive(redis, &distinct).await?;
    let mut out: Vec<String> = ids
        .iter()
        .zip(nodes)
        .filter(|(_, n)| n.as_ref().is_some_and(|n| live.contains(n)))
        .map(|(id, _)| id.to_string())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

fn store_error(id: &str) -> Utf8Bytes {
    Utf8Bytes::from(ServerFrame::error(
        Some(id),
        ErrorCode::StoreUnavailable,
        "presence is not available now (Redis did not answer); retry",
    ))
}

async fn answer_members(
    node: Arc<Node>,
    mut redis: ConnectionManager,
    conn: Arc<Conn>,
    id: Box<str>,
    room: Box<str>,
) {
    node.metrics.presence.with_label_values(&["query"]).inc();
    let max = node.cfg.presence_max_members;
    let frame = match tokio::time::timeout(QUERY_TIMEOUT, members(&mut redis, &room, max)).await {
        Ok(Ok((names, truncated))) => Utf8Bytes::from(
            ServerFrame::Presence {
                id: (*id).into(),
                room: (*room).into(),
                members: names.into_iter().map(Into::into).collect(),
                truncated,
            }
            .to_json(),
        ),
        _ => store_error(&id),
    };
    conn.push_unbounded(frame);
}

async fn answer_online(
    node: Arc<Node>,
    mut redis: ConnectionManager,
    conn: Arc<Conn>,
    id: Box<str>,
    ids: Vec<Box<str>>,
) {
    node.metrics.presence.with_label_values(&["query"]).inc();
    let frame = match tokio::time::timeout(QUERY_TIMEOUT, online(&mut redis, &ids)).await {
        Ok(Ok(on)) => Utf8Bytes::from(
            ServerFrame::Online {
                id: (*id).into(),
                online: on.into_iter().map(Into::into).collect(),
            }
            .to_json(),
        ),
        _ => store_error(&id),
    };
    conn.push_unbounded(frame);
}

/// Cleans up after every node that wrote presence and holds no lease any more.
async fn sweep_dead(node: &Arc<Node>, redis: &mut ConnectionManager) -> redis::RedisResult<()> {
    let nodes: BTreeSet<String> = redis::cmd("SMEMBERS")
        .arg(store::PRESENCE_NODES_KEY)
        .query_async(redis)
        .await?;
    let live = alive(redis, &nodes).await?;
    for dead in nodes.difference(&live) {
        if *dead == node.id {
            continue;
        }
        sweep_node(node, redis, dead).await?;
        let _: () = redis::cmd("SREM")
            .arg(store::PRESENCE_NODES_KEY)
            .arg(dead)
            .query_async(redis)
            .await?;
    }
    Ok(())
}

/// Removes every presence entry `dead` wrote and announces a `leave` for each one removed here.
async fn sweep_node(
    node: &Arc<Node>,
    redis: &mut ConnectionManager,
    dead: &str,
) -> redis::RedisResult<()> {
    let set = node_rooms_key(dead);
    let rooms: Vec<String> = redis::cmd("SMEMBERS").arg(&set).query_async(redis).await?;
    let mut removed: HashMap<String, Vec<String>> = HashMap::new();
    for room in rooms {
        let key = room_key(&room);
        let mut gone: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page) = scan_page(redis, &key, cursor).await?;
            let theirs: Vec<String> = page
                .into_iter()
                .filter(|(_, n)| n == dead)
                .map(|(c, _)| c)
                .collect();
            if !theirs.is_empty() {
                let batch: Vec<String> = redis::cmd("EVAL")
                    .arg(SWEEP)
                    .arg(1)
                    .arg(&key)
                    .arg(dead)
                    .arg(&theirs)
                    .query_async(redis)
                    .await?;
                gone.extend(batch);
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let _: () = redis::cmd("SREM")
            .arg(&set)
            .arg(&room)
            .query_async(redis)
            .await?;
        if !gone.is_empty() {
            removed.insert(room, gone);
        }
    }
    for (room, clients) in removed {
        for c in clients {
            node.metrics.presence.with_label_values(&["swept"]).inc();
            publish_presence(node, "leave", &room, &c);
        }
    }
    if dead != node.id {
        tracing::info!(dead, "cleared the presence of a node that is gone");
    }
    Ok(())
}
