//! Deterministic re-decisions under at-least-once: the first decisions of a requests partition's
//! uncommitted tail, read back from the decisions topic when the partition is assigned.
//!
//! At-least-once commits a request's offset only after its outputs are delivered, so after a
//! crash (or a revocation whose flush timed out) the next owner processes again the requests
//! after the last commit. Many of them were decided already, and their decisions are in the
//! decisions topic: deciding them again at the limits and usage of the restart could give
//! another answer, and a consumer that takes the first decision per request id would then see a
//! user let through more than limit + grace. So the decisions topic is the dedupe store: every
//! decision of a streamed request carries the header `surgeguard.input`
//! (`GROUP/PARTITION/OFFSET`: the consumer group, its request's partition and offset) and goes to
//! the decisions partition with the number of its requests partition
//! (co-partitioned, as Kafka Streams requires of joined topics; a user's requests and decisions
//! then share a partition number). On assignment the new owner reads that decisions partition
//! back from its end until it meets a decision of a request before the committed offset, and
//! keeps, per input offset at or after it, the first decision read. A request found there is
//! decided as it was then (`Counted::Decided`), counted that way in the limiter unless the
//! restored changelog holds it, and not published again.
//!
//! Bounded: at most `MAX_SCAN` decisions are read back per partition and `MAX_KEPT` kept, within
//! `READ_BACK_TIMEOUT` for the whole assignment; a request beyond them is decided again, as
//! before. Decisions of another consumer group (or another requests partition) sharing the topic
//! are skipped. Requests whose first decision never reached
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

/// The header on every decision of a streamed request: `GROUP/PARTITION/OFFSET`, the consumer
/// group that decided it and its request's partition and offset.
pub const INPUT: &str = "surgeguard.input";

/// The longest an assignment spends reading decisions back, all partitions together (the
/// assignment callback blocks the group's consumer meanwhile).
pub const READ_BACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The most decisions read back per partition (a tail of ~10 s at 100 000 decisions/s).
pub const MAX_SCAN: usize = 1_000_000;

/// The most first decisions kept per partition (16 bytes each).
pub const MAX_KEPT: usize = 1_000_000;

/// The decisions read back at a time, going back from the end.
const CHUNK: i64 = 65_536;

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

/// Writes `INPUT`'s value for the request at `offset` of `partition` into `buf` (cleared first).
pub fn input_value(group: &str, partition: i32, offset: i64, buf: &mut String) {
    buf.clear();
    buf.push_str(group);
    buf.push('/');
    buf.push_str(itoa::Buffer::new().format(partition));
    buf.push('/');
    buf.push_str(itoa::Buffer::new().format(offset));
}

/// The group, partition and offset of an `INPUT` value.
fn parse_input(value: &[u8]) -> Option<(&str, i32, i64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (rest, offset) = text.rsplit_once('/')?;
    let (group, partition) = rest.rsplit_once('/')?;
    Some((group, partition.parse().ok()?, offset.parse().ok()?))
}

/// The input offset and decision kind of one decision record of `group`'s requests partition
/// `partition`, when it is one.
fn input_and_kind(msg: &impl Message, group: &str, partition: i32) -> Option<(i64, DecisionKind)> {
    let headers = msg.headers()?;
    let value = headers.iter().find(|h| h.key == INPUT)?.value?;
    let (g, p, offset) = parse_input(value)?;
    if g != group || p != partition {
        return None;
    }
    let kind = serde_json::from_slice::<KindOnly>(msg.payload()?).ok()?.decision;
    Some((offset, kind))
}

/// Reads each `(partition, committed)` of the decisions topic `topic` back from its end until a
/// decision of `group`'s requests before `committed` (or the partition's start), and keeps the
/// first decisions of the requests from `committed` on, all within `timeout` (blocking: call it
/// off the async workers). Each partition's result stands on its own.
pub fn read_tails(client: &ClientConfig, topic: &str, group: &str, from: &[(i32, i64)], timeout: Duration) -> HashMap<i32, Result<ReadBack, RestoreError>> {
    read_tails_by(client, topic, group, from, timeout, CHUNK)
}

/// `read_tails` in chunks of `chunk` decisions.
fn read_tails_by(
    client: &ClientConfig,
    topic: &str,
    group: &str,
    from: &[(i32, i64)],
    timeout: Duration,
    chunk: i64,
) -> HashMap<i32, Result<ReadBack, RestoreError>> {
    let started = Instant::now();
    from.iter().map(|&(p, committed)| (p, read_back(client, topic, group, p, committed, timeout.saturating_sub(started.elapsed()), chunk))).collect()
}

/// A consumer of its own for one read (a reassigned consumer reports its previous position for
/// a while: a fresh one starts where it is told).
fn reader(client: &ClientConfig) -> Result<BaseConsumer, RestoreError> {
    Ok(client.clone().set("enable.auto.commit", "false").set("enable.partition.eof", "false").set("group.id", "surgeguard-decisions-read-back").create()?)
}

/// `read_tails` for one partition: chunks of `CHUNK` read forward, going back from the end.
fn read_back(client: &ClientConfig, topic: &str, group: &str, p: i32, committed: i64, timeout: Duration, chunk_len: i64) -> Result<ReadBack, RestoreError> {
    let started = Instant::now();
    let (low, high) = {
        let consumer = reader(client)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::End)?;
        consumer.assign(&tpl)?;
        topics::watermarks(&consumer, topic, p, timeout)?
    };
    // Chunks from the newest back; each holds (offset, kind) in log order.
    let mut chunks: Vec<Vec<(i64, DecisionKind)>> = Vec::new();
    let (mut end, mut read, mut met) = (high, 0usize, false);
    while end > low && !met && read < MAX_SCAN {
        let start = (end - chunk_len).max(low);
        let consumer = reader(client)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(start))?;
        consumer.assign(&tpl)?;
        let mut chunk = Vec::new();
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            // By position as well as by offsets seen: commit markers (a topic once written
            // exactly-once) are never delivered. A fresh consumer's position is unknown until
            // it has fetched, then where it is.
            let at = topics::position(&consumer, topic, p).unwrap_or(start);
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
            if let Some((offset, kind)) = input_and_kind(&msg, group, p) {
                met |= offset < committed;
                chunk.push((offset, kind));
            }
            if msg.offset() + 1 >= end {
                break;
            }
        }
        chunks.push(chunk);
        end = start;
    }
    let cut = !met && end > low;
    let tail = Tail::from_read(chunks.into_iter().rev().flatten(), committed);
    Ok(ReadBack { tail, read, cut })
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

    /// On librdkafka's mock cluster, in chunks of 3 across a tail of two owners' decisions and
    /// another group's: the first decision of each of this group's offsets from the commit on.
    #[test]
    fn the_read_back_crosses_chunks_and_skips_other_groups() {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("decisions", 2, 1).expect("topic");
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", cluster.bootstrap_servers());
        let producer: BaseProducer = client.create().expect("producer");
        let kind = |k: DecisionKind| match k {
            Allow => "allow",
            AllowWithGrace => "allow_with_grace",
            Throttle => "throttle",
        };
        // (group, input offset, decision): offsets 0..=3 committed; a first owner decided 4..=8
        // and died, the second decided 4 and 5 again (differently: it had not read them back),
        // then another group's decisions, and an API decision without the header.
        let mut log = vec![("g", 0, Allow), ("g", 1, Allow), ("g", 2, Throttle), ("g", 3, Allow)];
        log.extend([("g", 4, Throttle), ("g", 5, AllowWithGrace), ("g", 6, Allow), ("g", 7, Throttle), ("g", 8, Allow)]);
        log.extend([("g", 4, Allow), ("other", 9, Throttle), ("g", 5, Throttle), ("other", 2, Allow)]);
        let mut value = String::new();
        for (group, offset, k) in &log {
            input_value(group, 1, *offset, &mut value);
            let payload = format!(r#"{{"request_id":"r{offset}","decision":"{}"}}"#, kind(*k));
            let headers = OwnedHeaders::new().insert(Header { key: INPUT, value: Some(value.as_bytes()) });
            producer.send(BaseRecord::<str, str>::to("decisions").partition(1).key("u").payload(&payload).headers(headers)).expect("enqueue");
        }
        producer.send(BaseRecord::<str, str>::to("decisions").partition(1).key("u").payload(r#"{"decision":"allow"}"#)).expect("enqueue");
        producer.flush(Duration::from_secs(10)).expect("flushed");
        let got = read_tails_by(&client, "decisions", "g", &[(1, 4), (0, 0)], Duration::from_secs(30), 3);
        let back = got.get(&1).expect("partition 1").as_ref().expect("read");
        assert!(!back.cut);
        let mut tail = back.tail.clone();
        let firsts: Vec<_> = (4..=9).map(|o| tail.take(o)).collect();
        assert_eq!(firsts, [Some(Throttle), Some(AllowWithGrace), Some(Allow), Some(Throttle), Some(Allow), None]);
        let empty = got.get(&0).expect("partition 0").as_ref().expect("read");
        assert_eq!((empty.read, empty.tail.len()), (0, 0));
    }

    #[test]
    fn the_input_header_names_group_partition_and_offset() {
        let mut buf = String::new();
        input_value("surge/guard", 3, 1234, &mut buf);
        assert_eq!(buf, "surge/guard/3/1234");
        assert_eq!(parse_input(buf.as_bytes()), Some(("surge/guard", 3, 1234)));
        assert_eq!(parse_input(b"3/1234"), None);
        assert_eq!(parse_input(b"g/x/1"), None);
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
