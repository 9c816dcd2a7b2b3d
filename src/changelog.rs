//! The limiter's changelog: per-user state in a compacted topic, so a partition's users keep
//! their quota when the partition moves to another instance or the service restarts.
//!
//! After each request that changed a user's state, `surgeguard run` writes that state to the
//! changelog partition with the same number as the request's input partition (the requests topic
//! is keyed by `user_id`, so a user's requests and state always share a partition number). The
//! key is `REQUEST_TYPE/USER_ID`; the value is JSON with the user, the request type, the input
//! offset of the request and the state. The topic is compacted (the latest state per key) and
//! deleted by age as well, so users idle past eviction leave it.
//!
//! An instance that is assigned a requests partition reads the changelog partition of the same
//! number from its start to its end before it decides any request of that partition. Records
//! of one partition are written in input order by an idempotent producer, so what the changelog
//! holds is a prefix of what was processed: every request up to the highest offset restored is
//! already counted in the restored state, and is decided again (if it comes again) without being
//! counted twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::kafka_topics;
use crate::limiter::SavedState;
use crate::topology::Topology;

/// One changelog record's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub user_id: String,
    pub request_type: String,
    /// The input offset of the request whose processing left this state.
    pub offset: i64,
    pub state: SavedState,
}

/// The changelog key of a user's state for one request type.
pub fn key(request_type: &str, user_id: &str) -> String {
    format!("{request_type}/{user_id}")
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("restoring {topic} partition {partition} did not reach offset {target} within {timeout:?} (at {at})")]
    Timeout { topic: String, partition: i32, target: i64, at: i64, timeout: Duration },
}

/// What a restore did, per partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    pub records: u64,
    /// Records that could not be applied (not decodable, or for a window or request type the
    /// config no longer has): logged and skipped.
    pub skipped: u64,
    /// Requests of the input partition up to this offset are already counted in the state.
    pub counted_up_to: Option<i64>,
}

/// Reads the changelog partitions `partitions` from start to end into `topology`'s limiters
/// (blocking: call it off the async workers). Each partition's limiter is replaced.
pub fn restore(
    client: &ClientConfig,
    topic: &str,
    partitions: &[i32],
    topology: &mut Topology,
    timeout: Duration,
) -> Result<HashMap<i32, Restored>, RestoreError> {
    let mut out: HashMap<i32, Restored> = partitions.iter().map(|&p| (p, Restored::default())).collect();
    for &p in partitions {
        topology.drop_partition(p);
    }
    if partitions.is_empty() {
        return Ok(out);
    }
    let consumer: BaseConsumer = client
        .clone()
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("group.id", "surgeguard-changelog-restore")
        .create()?;
    // Assigned first: a client knows a partition (and can ask for its end) once it uses it.
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    // The end of each partition now: what was written before this instance took it over.
    let started = Instant::now();
    let mut targets: HashMap<i32, i64> = HashMap::new();
    for &p in partitions {
        let (low, high) = kafka_topics::watermarks(&consumer, topic, p, timeout.saturating_sub(started.elapsed()))?;
        if high > low {
            targets.insert(p, high);
        }
    }
    while !targets.is_empty() {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            let (&partition, &target) = targets.iter().next().unwrap_or((&-1, &-1));
            let at = position(&consumer, topic, partition).unwrap_or(-1);
            return Err(RestoreError::Timeout { topic: topic.into(), partition, target, at, timeout });
        }
        if let Some(msg) = consumer.poll(left.min(Duration::from_millis(200))) {
            let msg = msg?;
            apply(topology, &msg, out.entry(msg.partition()).or_default());
        }
        // Done by position, not by the last message: with transactions (exactly-once) the last
        // offsets may be commit markers or aborted records, which are never delivered.
        targets.retain(|&p, &mut high| position(&consumer, topic, p).is_none_or(|at| at < high));
    }
    Ok(out)
}

/// The consumer's position in a partition (the next offset it will read), when known.
fn position(consumer: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    let pos = consumer.position().ok()?;
    match pos.find_partition(topic, partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// Puts one changelog record's state back.
fn apply(topology: &mut Topology, msg: &rdkafka::message::BorrowedMessage<'_>, stats: &mut Restored) {
    let p = msg.partition();
    stats.records += 1;
    match msg.payload() {
        // A tombstone: nothing to restore for the key.
        None => {}
        Some(bytes) => match serde_json::from_slice::<Record>(bytes) {
            Ok(r) => match topology.restore(p, &r.user_id, &r.request_type, &r.state) {
                Ok(()) => stats.counted_up_to = Some(stats.counted_up_to.map_or(r.offset, |o| o.max(r.offset))),
                Err(e) => {
                    stats.skipped += 1;
                    tracing::warn!(partition = p, offset = msg.offset(), error = %e, "changelog record not restored");
                }
            },
            Err(e) => {
                stats.skipped += 1;
                tracing::warn!(partition = p, offset = msg.offset(), error = %e, "changelog record not decodable");
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record {
            user_id: "user-1".into(),
            request_type: "standard".into(),
            offset: 42,
            state: SavedState { bucket_ms: 10_000, head: 7, counts: [1, 0, 0, 0, 0, 0, 3], grace: [0, 1, 0], grace_half: 3, grace_half_ms: 1_800_000 },
        };
        let bytes = serde_json::to_vec(&r).expect("serialises");
        assert_eq!(serde_json::from_slice::<Record>(&bytes).expect("parses"), r);
        assert_eq!(key("standard", "user-1"), "standard/user-1");
    }
}
