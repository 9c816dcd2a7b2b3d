//! The limiter's changelog: per-user state in a compacted topic, so a partition's users keep
//! their quota when the partition moves to another instance or the service restarts.
//!
//! Requests that change a user's state mark it dirty (`Pending`); every commit interval
//! (`kafka.commit_interval_ms` at-least-once, each partition at its own turn of the interval:
//! `FlushSchedule`; each transaction exactly-once) the latest state of every dirty user goes to
//! the changelog partition with the same number as the requests'
//! input partition (the requests topic is keyed by `user_id`, so a user's requests and state
//! always share a partition number). This is Kafka Streams' record cache: a user who sends fifty
//! requests in an interval costs one changelog record, not fifty. The key is
//! `REQUEST_TYPE/USER_ID`; the value is JSON with the user, the request type, the input offset of
//! the last request the state counts, and the state. The topic is compacted (the latest state
//! per key) and deleted by age as well, so users idle past eviction leave it.
//!
//! Input offsets wait for the flush: the first request of a partition dirtied after a flush holds
//! one more output, released only when every record of the next flush is delivered, so no
//! offset is committed before the state that counts it is in the changelog.
//!
//! An instance that is assigned a requests partition reads the changelog partition of the same
//! number from its start to its end before it decides any request of that partition. A restored
//! record says exactly which requests of its user its state counts (those up to its offset), so a
//! request processed again after a crash is decided without being counted twice, however much
//! of the last flush arrived (`CountedUpTo`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use compact_str::CompactString;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::core::limiter::SavedState;
use crate::core::topology::Topology;
use crate::core::usage::UsageRecord;
use crate::kafka::offsets::FastMap;
use crate::kafka::topics;

/// One changelog record's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub user_id: CompactString,
    pub request_type: CompactString,
    /// The input offset of the request whose processing left this state.
    pub offset: i64,
    pub state: SavedState,
}

/// The changelog key of a user's state for one request type.
pub fn key(request_type: &str, user_id: &str) -> String {
    let mut k = String::new();
    key_into(request_type, user_id, &mut k);
    k
}

/// `key` written into `buf` (cleared first).
pub fn key_into(request_type: &str, user_id: &str, buf: &mut String) {
    buf.clear();
    buf.push_str(request_type);
    buf.push('/');
    buf.push_str(user_id);
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("restoring {topic} partition {partition} did not reach offset {target} within {timeout:?} (at {at})")]
    Timeout { topic: String, partition: i32, target: i64, at: i64, timeout: Duration },
}

/// What a restore did, per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    pub records: u64,
    /// Records that could not be applied (not decodable, or for a window or request type the
    /// config no longer has): logged and skipped.
    pub skipped: u64,
    /// Which requests of the input partition the restored state already counts.
    pub counted: CountedUpTo,
}

/// Which requests of one input partition a limiter's state already counts: those a restart or a
/// rebalance brings again are decided without being counted twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CountedUpTo {
    /// Every request up to this offset (the state stayed in memory while it was processed).
    pub all: Option<i64>,
    /// Per changelog key, the offset of the last request the restored state counts.
    pub per_key: HashMap<String, i64>,
    /// The highest offset in `per_key`.
    pub max: Option<i64>,
}

impl CountedUpTo {
    /// Whether the request at `offset` by `user_id` is already counted.
    pub fn counts(&self, offset: i64, request_type: &str, user_id: &str) -> bool {
        if self.all.is_some_and(|a| offset <= a) {
            return true;
        }
        self.max.is_some_and(|m| offset <= m) && self.per_key.get(&key(request_type, user_id)).is_some_and(|&o| offset <= o)
    }

    /// The offset after which nothing is counted already.
    pub fn through(&self) -> Option<i64> {
        match (self.all, self.max) {
            (Some(a), Some(m)) => Some(a.max(m)),
            (a, m) => a.or(m),
        }
    }

    /// Records that a restored record counts `key`'s requests up to `offset`.
    pub fn record(&mut self, key: String, offset: i64) {
        self.max = Some(self.max.map_or(offset, |m| m.max(offset)));
        // The highest wins (records of one key only ever move forward; keep it so regardless).
        let o = self.per_key.entry(key).or_insert(offset);
        *o = (*o).max(offset);
    }
}

/// Dirty limiter state waiting for the next changelog flush: per input partition, the users (and
/// request types) whose state changed and the offset of their last counted request.
#[derive(Debug, Default)]
pub struct Pending {
    partitions: FastMap<i32, PendingPartition>,
    keys: usize,
}

#[derive(Debug)]
struct PendingPartition {
    /// The first request dirtied since the last flush: it holds the partition's offsets (none
    /// when only API decisions dirtied it: they have no offset to hold).
    hold: Option<i64>,
    last: FastMap<(CompactString, CompactString), i64>,
}

/// One partition's flush: the holding offset and the dirty keys in the order of their last
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flush {
    pub partition: i32,
    pub hold: Option<i64>,
    /// (user_id, request_type, offset of the last counted request), by offset.
    pub users: Vec<(CompactString, CompactString, i64)>,
}

impl Pending {
    /// Notes that the request at `offset` of `partition` changed the state of `user_id` for
    /// `request_type`. Returns true when it is the partition's first since the last flush: that
    /// message then holds one more output, which the flush releases.
    pub fn note(&mut self, partition: i32, offset: i64, user_id: &str, request_type: &str) -> bool {
        let p = self.partitions.entry(partition).or_insert_with(|| PendingPartition { hold: None, last: FastMap::default() });
        let first = p.hold.is_none();
        p.hold.get_or_insert(offset);
        match p.last.get_mut(&(CompactString::from(user_id), CompactString::from(request_type))) {
            Some(o) => *o = (*o).max(offset),
            None => {
                p.last.insert((user_id.into(), request_type.into()), offset);
                self.keys += 1;
            }
        }
        first
    }

    /// Notes that a decision of the API (`POST /v1/decide`) changed the state of `user_id` for
    /// `request_type` in `partition`. It holds no offset; `through` (`Shared::counted_through`:
    /// the last processed offset or what the restored state counts for the user, -1 for none)
    /// is what the record says the state counts up to, which is true.
    pub fn note_untracked(&mut self, partition: i32, through: i64, user_id: &str, request_type: &str) {
        let p = self.partitions.entry(partition).or_insert_with(|| PendingPartition { hold: None, last: FastMap::default() });
        match p.last.get_mut(&(CompactString::from(user_id), CompactString::from(request_type))) {
            Some(o) => *o = (*o).max(through),
            None => {
                p.last.insert((user_id.into(), request_type.into()), through);
                self.keys += 1;
            }
        }
    }

    /// Dirty keys over all partitions.
    pub fn len(&self) -> usize {
        self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// Everything dirty, per partition, and forgets it.
    pub fn take(&mut self) -> Vec<Flush> {
        self.take_where(|_| true)
    }

    /// The partitions with dirty state, in no particular order.
    pub fn dirty_partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }

    /// Everything dirty in the partitions `which` picks, per partition, and forgets it (the
    /// others stay dirty, holding their offsets until their own flush).
    pub fn take_where(&mut self, which: impl Fn(i32) -> bool) -> Vec<Flush> {
        let picked: Vec<i32> = self.partitions.keys().copied().filter(|&p| which(p)).collect();
        let mut out: Vec<Flush> = picked
            .into_iter()
            .filter_map(|partition| {
                let p = self.partitions.remove(&partition)?;
                self.keys -= p.last.len();
                let mut users: Vec<_> = p.last.into_iter().map(|((u, rt), o)| (u, rt, o)).collect();
                // In input order: a flush cut short by a crash leaves each key's record either
                // whole or absent, and `CountedUpTo` trusts only what arrived.
                users.sort_unstable_by_key(|&(_, _, o)| o);
                Some(Flush { partition, hold: p.hold, users })
            })
            .collect();
        out.sort_unstable_by_key(|f| f.partition);
        out
    }

    /// Forgets a partition's dirty state (the partition is lost: its next owner works from the
    /// changelog and the last commit).
    pub fn drop_partition(&mut self, partition: i32) {
        if let Some(p) = self.partitions.remove(&partition) {
            self.keys -= p.last.len();
        }
    }
}

/// When each partition's dirty state goes to the changelog (at-least-once). Every partition is
/// flushed once per commit interval, at its own phase: partition `p` of `n` at `p/n` of the
/// interval. A flush then encodes and sends one partition's users instead of every partition's
/// at once, so the loop that processes requests stops for a fraction as long (a whole flush of
/// 10 000 users stopped it for 10–100 ms, every interval). Times are milliseconds from any fixed
/// start; the caller owns the clock.
#[derive(Debug)]
pub struct FlushSchedule {
    interval_ms: u64,
    /// Per partition, the last turn it was flushed in or first seen dirty in.
    last_turn: HashMap<i32, u64>,
}

impl FlushSchedule {
    pub fn new(interval_ms: u64) -> Self {
        FlushSchedule { interval_ms: interval_ms.max(1), last_turn: HashMap::new() }
    }

    /// Partition `partition`'s turn number at `now_ms`: it moves on at `p/n` of each interval.
    fn turn(&self, partition: i32, partitions: usize, now_ms: u64) -> u64 {
        let n = partitions.max(1) as u64;
        let phase = self.interval_ms * (u64::from(partition.unsigned_abs()) % n) / n;
        (now_ms + self.interval_ms - phase) / self.interval_ms
    }

    /// Whether dirty `partition` (of `partitions`) is due at `now_ms`: its turn has come since
    /// it was last flushed. A partition first seen dirty waits for its next turn (at most an
    /// interval).
    pub fn due(&mut self, partition: i32, partitions: usize, now_ms: u64) -> bool {
        let turn = self.turn(partition, partitions, now_ms);
        match self.last_turn.get(&partition) {
            Some(&last) => turn > last,
            None => {
                self.last_turn.insert(partition, turn);
                false
            }
        }
    }

    /// `partition` was flushed at `now_ms`.
    pub fn flushed(&mut self, partition: i32, partitions: usize, now_ms: u64) {
        let turn = self.turn(partition, partitions, now_ms);
        self.last_turn.insert(partition, turn);
    }
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
    let consumer: BaseConsumer =
        client.clone().set("enable.auto.commit", "false").set("enable.partition.eof", "false").set("group.id", "surgeguard-changelog-restore").create()?;
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
        let (low, high) = topics::watermarks(&consumer, topic, p, timeout.saturating_sub(started.elapsed()))?;
        if high > low {
            targets.insert(p, high);
        }
    }
    while !targets.is_empty() {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            let (&partition, &target) = targets.iter().next().unwrap_or((&-1, &-1));
            let at = topics::position(&consumer, topic, partition).unwrap_or(-1);
            return Err(RestoreError::Timeout { topic: topic.into(), partition, target, at, timeout });
        }
        if let Some(msg) = consumer.poll(left.min(Duration::from_millis(200))) {
            let msg = msg?;
            apply(topology, &msg, out.entry(msg.partition()).or_default());
        }
        // Done by position, not by the last message: with transactions (exactly-once) the last
        // offsets may be commit markers or aborted records, which are never delivered.
        targets.retain(|&p, &mut high| topics::position(&consumer, topic, p).is_none_or(|at| at < high));
    }
    Ok(out)
}

/// Puts one changelog record's state back.
fn apply(topology: &mut Topology, msg: &rdkafka::message::BorrowedMessage<'_>, stats: &mut Restored) {
    let p = msg.partition();
    stats.records += 1;
    match msg.payload() {
        // A tombstone: nothing to restore for the key.
        None => {
            if let Some(k) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) {
                stats.counted.per_key.remove(k);
            }
        }
        Some(bytes) if msg.key() == Some(USAGE_KEY.as_bytes()) => match serde_json::from_slice::<UsageRecord>(bytes) {
            Ok(r) if r.partition == p => topology.restore_usage(&r),
            Ok(r) => tracing::warn!(partition = p, offset = msg.offset(), record_partition = r.partition, "usage record of another partition, skipped"),
            Err(e) => {
                stats.skipped += 1;
                tracing::warn!(partition = p, offset = msg.offset(), error = %e, "usage record not decodable");
            }
        },
        Some(bytes) => match serde_json::from_slice::<Record>(bytes) {
            Ok(r) => match topology.restore(p, &r.user_id, &r.request_type, &r.state) {
                Ok(()) => stats.counted.record(key(&r.request_type, &r.user_id), r.offset),
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

/// A record to send with a flush: acknowledged as an output of the message at `hold` of requests
/// partition `partition` (nothing waits for it without one). A user's state and the partition's
/// usage go to the changelog partition of the same number; the usage also goes to the usage
/// topic, for every instance's fold.
#[derive(Debug)]
pub struct Outgoing {
    pub partition: i32,
    pub hold: Option<i64>,
    pub record: Payload,
}

#[derive(Debug)]
pub enum Payload {
    User(Record),
    /// The partition's usage cells, to the changelog (key `USAGE_KEY`).
    Usage(std::sync::Arc<UsageRecord>),
    /// The same, to the usage topic (keyed by the partition number).
    UsageTopic(std::sync::Arc<UsageRecord>),
    /// The leader's global views, to the usage topic (key `VIEWS_KEY`).
    Views(Box<crate::core::topology::Views>),
}

/// The usage topic's key of the leader's views (a partition's key is its number).
pub const VIEWS_KEY: &str = "views";

/// The changelog key of a partition's usage cells (a user's keys all have a `/`).
pub const USAGE_KEY: &str = "~usage";

impl Outgoing {
    /// The record's key and JSON value, written into the caller's buffers (cleared first).
    pub fn encode(&self, key: &mut String, value: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        value.clear();
        match &self.record {
            Payload::User(r) => {
                key_into(&r.request_type, &r.user_id, key);
                serde_json::to_writer(&mut *value, r)
            }
            Payload::Usage(u) => {
                key.clear();
                key.push_str(USAGE_KEY);
                serde_json::to_writer(&mut *value, &**u)
            }
            Payload::UsageTopic(u) => {
                key.clear();
                key.push_str(&self.partition.to_string());
                serde_json::to_writer(&mut *value, &**u)
            }
            Payload::Views(v) => {
                key.clear();
                key.push_str(VIEWS_KEY);
                serde_json::to_writer(&mut *value, &**v)
            }
        }
    }

    /// Where it goes: the topic, and the partition when it is not the key's.
    pub fn destination<'t>(&self, changelog: &'t str, usage: &'t str) -> (&'t str, Option<i32>) {
        match self.record {
            Payload::User(_) | Payload::Usage(_) => (changelog, Some(self.partition)),
            Payload::UsageTopic(_) | Payload::Views(_) => (usage, None),
        }
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

    #[test]
    fn pending_keeps_the_last_offset_per_key_and_the_first_as_hold() {
        let mut p = Pending::default();
        assert!(p.note(0, 10, "u1", "standard"), "first of partition 0 holds");
        assert!(!p.note(0, 11, "u2", "standard"));
        assert!(!p.note(0, 12, "u1", "standard"));
        assert!(p.note(3, 5, "u3", "heavy"), "first of partition 3 holds");
        assert!(!p.note(0, 13, "u1", "heavy"), "another request type is another key");
        assert_eq!(p.len(), 4);
        let flushed = p.take();
        assert_eq!(
            flushed,
            vec![
                Flush {
                    partition: 0,
                    hold: Some(10),
                    users: vec![("u2".into(), "standard".into(), 11), ("u1".into(), "standard".into(), 12), ("u1".into(), "heavy".into(), 13)]
                },
                Flush { partition: 3, hold: Some(5), users: vec![("u3".into(), "heavy".into(), 5)] },
            ]
        );
        assert!(p.is_empty());
        assert!(p.note(0, 14, "u1", "standard"), "after a flush the next request holds again");
        p.drop_partition(0);
        assert!(p.is_empty() && p.take().is_empty());
    }

    #[test]
    fn api_decisions_are_noted_without_holding_offsets() {
        let mut p = Pending::default();
        // Only API decisions: the flush holds nothing.
        p.note_untracked(2, 40, "u1", "standard");
        p.note_untracked(2, 35, "u1", "standard");
        assert_eq!(p.take(), vec![Flush { partition: 2, hold: None, users: vec![("u1".into(), "standard".into(), 40)] }]);
        // A streamed request after them holds the partition as usual, and is its first.
        p.note_untracked(2, 40, "u1", "standard");
        assert!(p.note(2, 41, "u2", "standard"));
        assert!(!p.note(2, 42, "u2", "standard"));
        let f = p.take();
        assert_eq!(f[0].hold, Some(41));
        assert_eq!(f[0].users.len(), 2);
        // A record with a lower offset for a key never lowers what the restore counts.
        let mut c = CountedUpTo::default();
        c.record(key("standard", "u1"), 50);
        c.record(key("standard", "u1"), 40);
        assert!(c.counts(50, "standard", "u1"));
    }

    #[test]
    fn counted_up_to_is_exact_per_key() {
        let mut c = CountedUpTo::default();
        c.record(key("standard", "u1"), 12);
        c.record(key("standard", "u2"), 8);
        // u2's record came from an earlier flush than u1's: its request at 10 is not counted,
        // though a lower offset than u1's record.
        assert!(c.counts(12, "standard", "u1"));
        assert!(c.counts(8, "standard", "u2"));
        assert!(!c.counts(10, "standard", "u2"));
        assert!(!c.counts(5, "standard", "u3"), "no record: never counted");
        assert!(!c.counts(13, "standard", "u1"));
        assert_eq!(c.through(), Some(12));
        c.all = Some(20);
        assert!(c.counts(15, "standard", "u3"), "kept in memory up to 20: everything counts");
        assert_eq!(c.through(), Some(20));
    }

    #[test]
    fn some_partitions_flush_and_the_others_keep_their_holds() {
        let mut p = Pending::default();
        assert!(p.note(0, 10, "u1", "standard"));
        assert!(p.note(1, 20, "u2", "standard"));
        assert!(!p.note(1, 21, "u3", "standard"));
        let mut dirty: Vec<i32> = p.dirty_partitions().collect();
        dirty.sort_unstable();
        assert_eq!(dirty, [0, 1]);
        assert_eq!(
            p.take_where(|q| q == 1),
            vec![Flush { partition: 1, hold: Some(20), users: vec![("u2".into(), "standard".into(), 20), ("u3".into(), "standard".into(), 21)] }]
        );
        assert_eq!(p.len(), 1, "partition 0's key stays dirty");
        assert!(!p.note(0, 11, "u4", "standard"), "partition 0 still holds at 10");
        assert!(p.note(1, 22, "u2", "standard"), "partition 1 holds again after its flush");
        assert_eq!(p.take_where(|q| q == 0)[0].hold, Some(10));
        assert_eq!(p.len(), 1);
    }

    /// Each partition is flushed once per interval, at its own phase, so the partitions' flushes
    /// spread over the interval instead of coming together.
    #[test]
    fn flush_turns_spread_partitions_over_the_interval() {
        let (interval, n) = (1000, 4);
        let mut s = FlushSchedule::new(interval);
        // First seen dirty at 0: nobody is due yet.
        for q in 0..4 {
            assert!(!s.due(q, n, 0), "partition {q} waits for its turn");
        }
        // Walk time in 10 ms steps for 3 s, flushing whatever is due; note when.
        let mut flushes: Vec<(i32, u64)> = Vec::new();
        for now in (10..3000).step_by(10) {
            for q in 0..4 {
                if s.due(q, n, now) {
                    s.flushed(q, n, now);
                    flushes.push((q, now));
                }
            }
        }
        for q in 0..4 {
            let at: Vec<u64> = flushes.iter().filter(|f| f.0 == q).map(|f| f.1).collect();
            // Partition q's turns come at q/4 of each second (partition 0 at each full second).
            let phase = 250 * q as u64;
            let expected: Vec<u64> = (0..3).map(|k| k * 1000 + if phase == 0 { 1000 } else { phase }).filter(|&t| t < 3000).collect();
            assert_eq!(at, expected, "partition {q}");
        }
        // A partition dirty again long after its last flush goes at once, then back on its phase.
        let mut s = FlushSchedule::new(interval);
        assert!(!s.due(2, n, 0));
        assert!(s.due(2, n, 5_100));
        s.flushed(2, n, 5_100);
        assert!(!s.due(2, n, 5_400));
        assert!(s.due(2, n, 5_500), "its next turn, at half of the interval");
        // More partitions than the topic says (or none known): still a turn each interval.
        let mut s = FlushSchedule::new(interval);
        assert!(!s.due(7, 0, 0));
        assert!(s.due(7, 0, 1_000));
    }
}
