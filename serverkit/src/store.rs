//! What socket nodes, balancers and the gateway keep in Redis: key names, node heartbeats, the
//! ring mirror and client sessions.

use anyhow::Context;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use rtc_protocol::ring::Ring;

pub use rtc_protocol::record::redis::*;
pub use rtc_protocol::record::Heartbeat;

/// Connects with reconnection handled by the manager.
pub async fn connect(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).with_context(|| format!("invalid REDIS_URL {url}"))?;
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
        .set_response_timeout(Some(std::time::Duration::from_secs(2)))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, cfg)
        .await
        .with_context(|| format!("connecting to Redis at {url}"))
}

/// Writes `hb` with a TTL so a dead node vanishes by itself.
pub async fn put_heartbeat(
    r: &mut ConnectionManager,
    hb: &Heartbeat,
    ttl_secs: u64,
) -> redis::RedisResult<()> {
    let json = serde_json::to_string(hb).expect("heartbeats always serialize");
    r.set_ex(format!("{NODE_PREFIX}{}", hb.node_id), json, ttl_secs)
        .await
}

/// Removes a node's heartbeat at once (clean shutdown).
pub async fn delete_heartbeat(r: &mut ConnectionManager, node_id: &str) -> redis::RedisResult<()> {
    r.del(format!("{NODE_PREFIX}{node_id}")).await
}

/// Every live node's latest heartbeat, sorted by nodeId.
pub async fn heartbeats(r: &mut ConnectionManager) -> redis::RedisResult<Vec<Heartbeat>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{NODE_PREFIX}*"))
            .arg("COUNT")
            .arg(500)
            .query_async(r)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(r).await?;
    let mut out: Vec<Heartbeat> = values
        .into_iter()
        .flatten()
        .filter_map(|v| serde_json::from_str(&v).ok())
        .collect();
    out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(out)
}

/// Mirrors `ring` unless Redis already has a newer epoch.
pub async fn put_ring(r: &mut ConnectionManager, ring: &Ring) -> redis::RedisResult<()> {
    // Compare-and-set in one script so two writers never move the mirror backwards.
    let script = redis::Script::new(
        r#"local cur = redis.call('GET', KEYS[1])
          if cur then
            local e = tonumber(string.match(cur, '\"epoch\":(%d+)'))
            if e and e >= tonumber(ARGV[1]) then return 0 end
          end
          redis.call('SET', KEYS[1], ARGV[2])
          return 1"#,
    );
    let json = serde_json::to_string(ring).expect("rings always serialize");
    let _: i32 = script
        .key(RING_KEY)
        .arg(ring.epoch)
        .arg(json)
        .invoke_async(r)
        .await?;
    Ok(())
}

/// The mirrored ring, if any.
pub async fn get_ring(r: &mut ConnectionManager) -> anyhow::Result<Option<Ring>> {
    let v: Option<String> = r.get(RING_KEY).await?;
    v.map(|s| serde_json::from_str(&s).context("ring mirror in Redis is not valid"))
        .transpose()
}
