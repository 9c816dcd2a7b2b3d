//! Deterministic re-decisions under at-least-once: the first decisions of a requests partition's
//! uncommitted tail, read back from the decisions topic when the partition is assigned.
//!
//! At-least-once commits a request's offset only after its outputs are delivered, so after a
//! crash (or a revocation whose flush timed out) the next owner processes again the requests
//! after the last commit. Many of them were decided already, and their decisions are in the
//! decisions topic: deciding them again at the limits and usage of the restart could give
//! another answer, and a consumer that takes the first decision per request id would then see a
//! user let through more than limit + grace. So the decisions topic is the dedupe store: every
//! decision of a streamed request carries the header `surgeguard.input_offset` (its request's
//! offset) and goes to the decisions partition with the number of its requests partition
//! (co-partitioned, as Kafka Streams requires of joined topics; a user's requests and decisions
//! then share a partition number). On assignment the new owner reads that decisions partition
//! back from its end until it meets a decision of a request before the committed offset, and
//! keeps, per input offset at or after it, the first decision read. A request found there is
//! decided as it was then (`Counted::Decided`), counted that way in the limiter unless the
//! restored changelog holds it, and not published again.
//!
//! Bounded: at most `MAX_SCAN` decisions are read back per partition and `MAX_KEPT` kept; a
//! request beyond them is decided again, as before. Requests whose first decision never reached
//! the topic are decided for the first time, from a state that counts every earlier one as it
//! was decided.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::kafka::changelog::RestoreError;
use crate::kafka::topics;
use crate::wire::outputs::DecisionKind;

/// The header on every decision of a streamed request: the request's offset in its partition.
pub const INPUT_OFFSET: &str = "surgeguard.input_offset";

/// The most decisions read back per partition (a tail of ~10 s at 100 000 decisions/s).
pub const MAX_SCAN: usize = 1_000_000;

/// The most first decisions kept per partition (16 bytes each).
pub const MAX_KEPT: usize = 1_000_000;

/// The decisions read back at a time, going back from the end.
const CHUNK: i64 = 32_768;

/// One partition's first decisions of the requests after its committed offset, in offset order;
/// taken as the requests come again.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tail {
    entries: VecDeque<(i64, DecisionKind)>,
}

impl Tail {
    /// The first decision of each input offset at or after `from` among `read` (decisions in the
    /// order of the log: the first one read for an offset wins), at most `MAX_KEPT`, the lowest.
    pub fn from_read(read: impl IntoIterator<Item = (i64, DecisionKind)>, from: i64) -> Self {
        let mut first = BTreeMap::new();
        for (offset, kind) in read {
            if offset >= from {
                first.entry(offset).or_insert(kind);
            }
        }
        Tail { entries: first.into_iter().take(MAX_KEPT).collect() }
    }

    /// The first decision of the request at `offset`, if it had one. Requests come in offset
    /// order: entries before `offset` go (their requests are past).
    pub fn take(&mut self, offset: i64) -> Option<DecisionKind> {
        while let Some(&(o, kind)) = self.entries.front() {
            if o > offset {
                return None;
            }
            self.entries.pop_front();
            if o == offset {
                return Some(kind);
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What `read_tails` read of one partition.
#[derive(Debug, Default)]
pub struct ReadBack {
    pub tail: Tail,
    /// Decisions read (with and without the header).
    pub read: usize,
    /// Whether the read stopped at `MAX_SCAN` before it met the committed offset.
    pub cut: bool,
}

/// The decision kind of a decision's JSON (the rest is not needed).
#[derive(serde::Deserialize)]
struct KindOnly {
    decision: DecisionKind,
}

/// The input offset and decision kind of one decision record, when it carries them.
fn input_and_kind(msg: &impl Message) -> Option<(i64, DecisionKind)> {
    let headers = msg.headers()?;
    let offset = headers.iter().find(|h| h.key == INPUT_OFFSET)?.value?;
    let offset: i64 = std::str::from_utf8(offset).ok()?.parse().ok()?;
    let kind = serde_json::from_slice::<KindOnly>(msg.payload()?).ok()?.decision;
    Some((offset, kind))
}

/// Reads each `(partition, committed)` of the decisions topic `topic` back from its end until a
/// decision of a request before `committed` (or the partition's start), and keeps the first
/// decisions of the requests from `committed` on (blocking: call it off the async workers).
pub fn read_tails(client: &ClientConfig, topic: &str, from: &[(i32, i64)], timeout: Duration) -> Result<HashMap<i32, ReadBack>, RestoreError> {
    let mut out = HashMap::new();
    if from.is_empty() {
        return Ok(out);
    }
    let consumer: BaseConsumer =
        client.clone().set("enable.auto.commit", "false").set("enable.partition.eof", "false").set("group.id", "surgeguard-decisions-read-back").create()?;
    let started = Instant::now();
    for &(p, committed) in from {
        let back = read_back(&consumer, topic, p, committed, timeout.saturating_sub(started.elapsed()))?;
        out.insert(p, back);
    }
    Ok(out)
}

/// `read_tails` for one partition: chunks of `CHUNK` read forward, going back from the end.
fn read_back(consumer: &BaseConsumer, topic: &str, p: i32, committed: i64, timeout: Duration) -> Result<ReadBack, RestoreError> {
    let started = Instant::now();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, p, Offset::End)?;
    consumer.assign(&tpl)?;
    let (low, high) = topics::watermarks(consumer, topic, p, timeout)?;
    // Chunks from the newest back; each holds (offset, kind) in log order.
    let mut chunks: Vec<Vec<(i64, DecisionKind)>> = Vec::new();
    let (mut end, mut read, mut met) = (high, 0usize, false);
    while end > low && !met && read < MAX_SCAN {
        let start = (end - CHUNK).max(low);
        let mut chunk = Vec::new();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
        consumer.assign(&tpl)?;
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            let at = position(consumer, topic, p).unwrap_or(start);
            if at >= end {
                break;
            }
            if left.is_zero() {
                return Err(RestoreError::Timeout { topic: topic.into(), partition: p, target: end, at, timeout });
            }
            let Some(msg) = consumer.poll(left.min(Duration::from_millis(200))) else { continue };
            let msg = msg?;
            if msg.offset() >= end {
                break;
            }
            read += 1;
            if let Some((offset, kind)) = input_and_kind(&msg) {
                met |= offset < committed;
                chunk.push((offset, kind));
            }
        }
        chunks.push(chunk);
        end = start;
    }
    let cut = !met && end > low;
    let tail = Tail::from_read(chunks.into_iter().rev().flatten(), committed);
    Ok(ReadBack { tail, read, cut })
}

/// The consumer's position in a partition (the next offset it will read), when known.
fn position(consumer: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    let pos = consumer.position().ok()?;
    match pos.find_partition(topic, partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DecisionKind::*;

    #[test]
    fn the_first_decision_read_per_offset_wins_and_offsets_before_the_commit_go() {
        // A first owner decided 10..=12 and died; a second decided 10 and 11 again (the same),
        // then 13, and died too.
        let read = [(9, Allow), (10, Throttle), (11, AllowWithGrace), (12, Allow), (10, Throttle), (11, AllowWithGrace), (13, Throttle)];
        let mut tail = Tail::from_read(read, 10);
        assert_eq!(tail.len(), 4);
        assert_eq!(tail.take(10), Some(Throttle));
        assert_eq!(tail.take(12), Some(Allow), "11's request was dead-lettered this time: its entry goes");
        assert_eq!(tail.len(), 1);
        assert_eq!(tail.take(12), None, "taken once");
        assert_eq!(tail.take(13), Some(Throttle));
        assert!(tail.is_empty());
        assert_eq!(tail.take(14), None);
    }

    #[test]
    fn an_offset_without_a_first_decision_is_not_found_and_keeps_later_ones() {
        let mut tail = Tail::from_read([(5, Allow), (7, Throttle)], 0);
        assert_eq!(tail.take(6), None);
        assert_eq!(tail.len(), 1);
        assert_eq!(tail.take(7), Some(Throttle));
    }

    #[test]
    fn at_most_max_kept_are_kept_the_lowest_offsets() {
        let n = MAX_KEPT as i64 + 10;
        let mut tail = Tail::from_read((0..n).rev().map(|o| (o, Allow)), 0);
        assert_eq!(tail.len(), MAX_KEPT);
        assert_eq!(tail.take(0), Some(Allow));
        assert_eq!(tail.take(n - 1), None, "beyond the cap: decided again");
    }
}
