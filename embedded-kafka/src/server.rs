//! The Kafka protocol over TCP: length-prefixed requests answered in order on each connection,
//! as a Kafka broker does. Encoding and decoding come from the `kafka-protocol` crate.

use crate::log::code;
use crate::Shared;
use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    api_versions_response::ApiVersion, create_topics_response::CreatableTopicResult,
    fetch_response::FetchableTopicResponse, fetch_response::PartitionData,
    list_offsets_response::ListOffsetsPartitionResponse,
    list_offsets_response::ListOffsetsTopicResponse, metadata_response::MetadataResponseBroker,
    metadata_response::MetadataResponsePartition, metadata_response::MetadataResponseTopic,
    produce_response::PartitionProduceResponse, produce_response::TopicProduceResponse, ApiKey,
    ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse, FetchRequest,
    FetchResponse, FindCoordinatorResponse, InitProducerIdResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    RequestHeader, RequestKind, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// This broker's node id.
const NODE: i32 = 1;
/// The largest request accepted (Kafka's socket.request.max.bytes).
const MAX_REQUEST: usize = 100 << 20;

/// The requests served, with the versions offered: the ranges librdkafka 2.x negotiates down
/// from, before topic ids replaced names (Fetch 13, Produce 13, Metadata 10).
const APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 4, 9),
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 4),
    (ApiKey::InitProducerId, 0, 4),
];

pub(crate) async fn accept(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    // The age bound applies while nothing is appended too.
    let mut age = tokio::time::interval(Duration::from_secs(1));
    age.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = age.tick() => shared.state().trim(&shared.cfg, std::time::Instant::now()),
            r = listener.accept() => match r {
                Ok((sock, _)) if !*shared.down.borrow() => {
                    let _ = sock.set_nodelay(true);
                    tokio::spawn(connection(shared.clone(), sock));
                }
                Ok(_) => {} // down: closed at once, as a refused connection
                Err(e) => {
                    tracing::warn!("embedded Kafka accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

async fn connection(shared: Arc<Shared>, mut sock: TcpStream) {
    let mut down = shared.down.subscribe();
    loop {
        let frame = tokio::select! {
            f = read_frame(&mut sock) => f,
            _ = down.wait_for(|d| *d) => return,
        };
        let answer = match frame {
            Ok(Some(f)) => answer(&shared, f, &mut down).await,
            Ok(None) => return,
            Err(e) => Err(e),
        };
        match answer {
            Ok(Some(out)) => {
                if sock.write_all(&out).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!("embedded Kafka closes a connection: {e:#}");
                return;
            }
        }
    }
}

/// One request, or `None` at a clean end of the connection.
async fn read_frame(sock: &mut TcpStream) -> anyhow::Result<Option<Bytes>> {
    let len = match sock.read_i32().await {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|n| (4..=MAX_REQUEST).contains(n));
    let Some(len) = len else {
        bail!("request size {len:?} out of bounds");
    };
    let mut buf = BytesMut::zeroed(len);
    sock.read_exact(&mut buf).await?;
    Ok(Some(buf.freeze()))
}

/// A response with its size and header, ready to write.
fn encode<R: Encodable + HeaderVersion>(
    correlation: i32,
    version: i16,
    r: &R,
) -> anyhow::Result<Bytes> {
    let mut b = BytesMut::with_capacity(128);
    b.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut b, R::header_version(version))?;
    r.encode(&mut b, version)?;
    let len = i32::try_from(b.len() - 4)?;
    b[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(b.freeze())
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn api_versions(error: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error)
        .with_api_keys(
            APIS.iter()
                .map(|&(k, min, max)| {
                    ApiVersion::default()
                        .with_api_key(k as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
}

async fn answer(
    shared: &Shared,
    mut frame: Bytes,
    down: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<Bytes>> {
    if frame.len() < 8 {
        bail!("request too short for a header");
    }
    let (key, version) = (
        i16::from_be_bytes([frame[0], frame[1]]),
        i16::from_be_bytes([frame[2], frame[3]]),
    );
    let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api = ApiKey::try_from(key).map_err(|_| anyhow::anyhow!("unknown API key {key}"))?;
    let Some(&(_, min, max)) = APIS.iter().find(|(k, _, _)| *k == api) else {
        bail!("{api:?} is not served");
    };
    if !(min..=max).contains(&version) {
        if api == ApiKey::ApiVersions {
            // Answered in version 0, which every client reads, listing what is offered.
            return encode(correlation, 0, &api_versions(code::UNSUPPORTED_VERSION)).map(Some);
        }
        bail!("{api:?} v{version} is not served");
    }
    RequestHeader::decode(&mut frame, api.request_header_version(version))?;
    let request = RequestKind::decode(api, &mut frame, version)
        .with_context(|| format!("decoding {api:?} v{version}"))?;
    let out = match request {
        RequestKind::ApiVersions(_) => encode(correlation, version, &api_versions(code::NONE))?,
        RequestKind::Metadata(r) => encode(correlation, version, &metadata(shared, r))?,
        RequestKind::CreateTopics(r) => encode(correlation, version, &create_topics(shared, r))?,
        RequestKind::InitProducerId(_) => {
            let id = {
                let mut s = shared.state();
                s.next_producer_id += 1;
                s.next_producer_id
            };
            let r = InitProducerIdResponse::default()
                .with_producer_id(id.into())
                .with_producer_epoch(0);
            encode(correlation, version, &r)?
        }
        RequestKind::FindCoordinator(_) => {
            let r = FindCoordinatorResponse::default()
                .with_node_id(BrokerId(NODE))
                .with_host(StrBytes::from_string(shared.addr.ip().to_string()))
                .with_port(i32::from(shared.addr.port()));
            encode(correlation, version, &r)?
        }
        RequestKind::Produce(r) => {
            let acks = r.acks;
            let resp = produce(shared, r);
            if acks == 0 {
                return Ok(None);
            }
            encode(correlation, version, &resp)?
        }
        RequestKind::ListOffsets(r) => {
            encode(correlation, version, &list_offsets(shared, r, version))?
        }
        RequestKind::Fetch(r) => match fetch(shared, r, down).await {
            Some(resp) => encode(correlation, version, &resp)?,
            None => bail!("went down while a fetch waited"),
        },
        other => bail!("unexpected request {other:?}"),
    };
    Ok(Some(out))
}

fn metadata(shared: &Shared, r: MetadataRequest) -> MetadataResponse {
    let s = shared.state();
    let wanted: Vec<String> = match r.topics {
        None => s.topics.iter().map(|t| t.name.clone()).collect(),
        Some(ts) => ts
            .into_iter()
            .filter_map(|t| t.name.map(|n| n.0.to_string()))
            .collect(),
    };
    let topics = wanted
        .into_iter()
        .map(|n| match s.by_name.get(&n) {
            Some(&i) => MetadataResponseTopic::default()
                .with_name(Some(name(&n)))
                .with_partitions(
                    (0..s.topics[i].partitions.len())
                        .map(|p| {
                            MetadataResponsePartition::default()
                                .with_partition_index(p as i32)
                                .with_leader_id(BrokerId(NODE))
                                .with_leader_epoch(0)
                                .with_replica_nodes(vec![BrokerId(NODE)])
                                .with_isr_nodes(vec![BrokerId(NODE)])
                        })
                        .collect(),
                ),
            None => MetadataResponseTopic::default()
                .with_name(Some(name(&n)))
                .with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION),
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(vec![MetadataResponseBroker::default()
            .with_node_id(BrokerId(NODE))
            .with_host(StrBytes::from_string(shared.addr.ip().to_string()))
            .with_port(i32::from(shared.addr.port()))])
        .with_cluster_id(Some(StrBytes::from_static_str("rtc-embedded-kafka")))
        .with_controller_id(BrokerId(NODE))
        .with_topics(topics)
}

fn create_topics(shared: &Shared, r: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut s = shared.state();
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            let compacted = t.configs.iter().any(|c| {
                c.name.as_str() == "cleanup.policy"
                    && c.value
                        .as_ref()
                        .is_some_and(|v| v.as_str().contains("compact"))
            });
            let partitions = if t.num_partitions == -1 {
                1
            } else {
                t.num_partitions
            };
            let error = if r.validate_only {
                if s.by_name.contains_key(t.name.0.as_str()) {
                    code::TOPIC_ALREADY_EXISTS
                } else {
                    code::NONE
                }
            } else {
                s.create_topic(t.name.0.as_str(), partitions, compacted)
            };
            CreatableTopicResult::default()
                .with_name(t.name)
                .with_error_code(error)
        })
        .collect();
    CreateTopicsResponse::default().with_topics(topics)
}

fn produce(shared: &Shared, r: ProduceRequest) -> ProduceResponse {
    let mut appended = false;
    let responses = {
        let mut s = shared.state();
        r.topic_data
            .into_iter()
            .map(|t| {
                let partitions = t
                    .partition_data
                    .iter()
                    .map(|p| {
                        let records = p.records.as_deref().unwrap_or_default();
                        let out = PartitionProduceResponse::default().with_index(p.index);
                        match s.append(t.name.0.as_str(), p.index, records, &shared.cfg) {
                            Ok((base, start)) => {
                                appended = true;
                                out.with_base_offset(base).with_log_start_offset(start)
                            }
                            Err(e) => out.with_error_code(e).with_base_offset(-1),
                        }
                    })
                    .collect();
                TopicProduceResponse::default()
                    .with_name(t.name)
                    .with_partition_responses(partitions)
            })
            .collect()
    };
    if appended {
        shared.appended.send_modify(|n| *n = n.wrapping_add(1));
    }
    ProduceResponse::default().with_responses(responses)
}

fn list_offsets(shared: &Shared, r: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    /// Kafka's special timestamps: the latest offset, the earliest.
    const LATEST: i64 = -1;
    const EARLIEST: i64 = -2;
    let s = shared.state();
    let topics = r
        .topics
        .into_iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let out = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_timestamp(-1);
                    match s.log(t.name.0.as_str(), p.partition_index) {
                        Ok(log) => {
                            let offset = match p.timestamp {
                                LATEST => log.end,
                                EARLIEST => log.start,
                                // Other special lookups (the record with the largest
                                // timestamp, tiered storage) are answered as the latest.
                                ts if ts < 0 => log.end,
                                // None at or after the time: -1, as Kafka answers.
                                ts => log.offset_for_time(ts).unwrap_or(-1),
                            };
                            let out = out.with_offset(offset);
                            // Leader epochs exist from version 4 on.
                            if version >= 4 {
                                out.with_leader_epoch(0)
                            } else {
                                out
                            }
                        }
                        Err(e) => out.with_error_code(e).with_offset(-1),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// Answers at once when there is something to return, or else when something is appended or
/// the wait is over; `None` when the broker went down meanwhile.
async fn fetch(
    shared: &Shared,
    r: FetchRequest,
    down: &mut watch::Receiver<bool>,
) -> Option<FetchResponse> {
    let wait = Duration::from_millis(u64::try_from(r.max_wait_ms).unwrap_or(0));
    let deadline = tokio::time::Instant::now() + wait;
    let mut appended = shared.appended.subscribe();
    loop {
        appended.borrow_and_update();
        let (resp, size, errors) = fetch_now(shared, &r);
        // As a Kafka broker does: data or an error (out of range after records were dropped,
        // an unknown partition) is answered at once, so the client can act on it.
        if size > 0 || errors || tokio::time::Instant::now() >= deadline {
            return Some(resp);
        }
        tokio::select! {
            _ = tokio::time::timeout_at(deadline, appended.changed()) => {}
            _ = down.wait_for(|d| *d) => return None,
        }
    }
}

fn fetch_now(shared: &Shared, r: &FetchRequest) -> (FetchResponse, usize, bool) {
    let s = shared.state();
    let mut left = usize::try_from(r.max_bytes).unwrap_or(usize::MAX);
    let mut size = 0;
    let mut errors = false;
    let responses = r
        .topics
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|p| {
                    let out = PartitionData::default().with_partition_index(p.partition);
                    let log = match s.log(t.topic.0.as_str(), p.partition) {
                        Ok(log) => log,
                        Err(e) => {
                            errors = true;
                            return out.with_error_code(e);
                        }
                    };
                    let out = out
                        .with_high_watermark(log.end)
                        .with_last_stable_offset(log.end)
                        .with_log_start_offset(log.start);
                    let limit = usize::try_from(p.partition_max_bytes)
                        .unwrap_or(0)
                        .min(left);
                    // Past the byte budget of the response, a partition gets nothing this time.
                    let batches = if limit == 0 && size > 0 {
                        Ok(Vec::new())
                    } else {
                        log.read(p.fetch_offset, limit)
                    };
                    match batches {
                        Ok(batches) if batches.is_empty() => out,
                        Ok(batches) => {
                            let n: usize = batches.iter().map(|b| b.len()).sum();
                            let mut records = BytesMut::with_capacity(n);
                            for b in &batches {
                                records.put_slice(b);
                            }
                            size += n;
                            left = left.saturating_sub(n);
                            out.with_records(Some(records.freeze()))
                        }
                        Err(e) => {
                            errors = true;
                            out.with_error_code(e)
                        }
                    }
                })
                .collect();
            FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_partitions(partitions)
        })
        .collect();
    (
        FetchResponse::default().with_responses(responses),
        size,
        errors,
    )
}
