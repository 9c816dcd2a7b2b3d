//! The usage topic's reader: every instance reads every owner's usage records
//! (`core/usage.rs`) and folds them with its own, so the monitor's minutes and the predictor's
//! steps count every instance's decisions. Owners publish with their changelog flushes
//! (`Shared::take_changelog_of`); a partition whose records stop coming (its owner gone, the
//! group not yet rebalanced) is excused after a few commit intervals, until its next record.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::core::topology::Views;
use crate::core::usage::{MAX_CELLS, UsageRecord};
use crate::kafka::changelog::VIEWS_KEY;
use crate::kafka::shared::Shared;
use crate::kafka::topics;
use crate::wire::outputs::Output;
use crate::wire::time::Millis;

const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(2);

/// How far back a starting reader begins: each record holds every cell its partition has not
/// closed, so the latest one per partition is all it needs.
const LOOKBACK: Duration = Duration::from_secs(120);

/// The most records taken per call, so the loop is not held up.
const MAX_PER_POLL: usize = 10_000;

/// A record larger than this is not folded (an owner's record holds a few minutes' cells).
const MAX_RECORD_BYTES: usize = 1 << 20;

/// The leader's views: a day of predictor counts and the monitor's window.
const MAX_VIEWS_BYTES: usize = 8 << 20;

pub(crate) struct UsageReader {
    consumer: BaseConsumer,
    topic: String,
    /// Each partition's end when the reader started: `catch_up` reads to there.
    ends: Vec<(i32, i64)>,
    heard: HashMap<i32, Instant>,
    since: Instant,
    excuse_after: Duration,
    pub(crate) records: u64,
    pub(crate) refused: u64,
}

impl UsageReader {
    /// Assigned every partition of `topic`, from `LOOKBACK` ago (blocking: metadata and offsets
    /// by time). A partition silent for `excuse_after` is excused.
    pub(crate) fn new(client: &ClientConfig, topic: &str, excuse_after: Duration) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = client
            .clone()
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "latest")
            .set("group.id", "surgeguard-usage-reader")
            .create()?;
        let md = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
        let n = md.topics().first().map_or(0, |t| t.partitions().len()) as i32;
        let since = crate::kafka::clock::wall_clock().0 - LOOKBACK.as_millis() as i64;
        let mut by_time = TopicPartitionList::new();
        for p in 0..n {
            by_time.add_partition_offset(topic, p, Offset::Offset(since))?;
        }
        let mut start = TopicPartitionList::new();
        // A topic just created may not answer yet (its leader is being elected): then from its
        // start, which is where its records are anyway.
        let found = consumer.offsets_for_times(by_time, WATERMARKS_TIMEOUT).unwrap_or_else(|e| {
            tracing::warn!(error = %e, topic, "usage topic: offsets by time unavailable, reading from the start");
            TopicPartitionList::new()
        });
        let mut ends = Vec::new();
        for p in 0..n {
            // Briefly: a topic just created may not know its leader yet, and start-up must not
            // wait on it (its records come with the ticks anyway).
            let high = topics::watermarks(&consumer, topic, p, WATERMARKS_TIMEOUT).map(|(_, h)| h).unwrap_or(0);
            let offset = match found.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => Offset::Offset(o),
                // Nothing that new: from the end.
                Some(_) if high > 0 => Offset::Offset(high),
                _ => Offset::Beginning,
            };
            start.add_partition_offset(topic, p, offset)?;
            ends.push((p, high));
        }
        consumer.assign(&start)?;
        Ok(UsageReader { consumer, topic: topic.to_string(), ends, heard: HashMap::new(), since: Instant::now(), excuse_after, records: 0, refused: 0 })
    }

    /// Before the instance decides anything (blocking): reads what the topic held when the reader
    /// started, folding the records, and takes over the latest of the leader's views (the
    /// monitor's minutes and cool-downs, the predictor's counts), so that a joining or restarted
    /// instance goes on from the others' global views instead of from its history alone.
    /// Returns whether it took views over.
    pub(crate) fn catch_up(&mut self, sh: &mut Shared, timeout: Duration) -> bool {
        let started = Instant::now();
        let mut latest: Option<Views> = None;
        let mut outs = Vec::new();
        let mut folded_to = None;
        while started.elapsed() < timeout {
            let done = self.ends.iter().all(|&(p, end)| topics::position(&self.consumer, &self.topic, p).is_some_and(|at| at >= end) || end == 0);
            if done {
                break;
            }
            let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) else { continue };
            let m = m.detach();
            if m.key() == Some(VIEWS_KEY.as_bytes()) {
                match m.payload().filter(|v| v.len() <= MAX_VIEWS_BYTES).map(serde_json::from_slice::<Views>) {
                    Some(Ok(v)) if latest.as_ref().is_none_or(|l| v.closed_to >= l.closed_to) => latest = Some(v),
                    Some(Ok(_)) => {}
                    _ => self.refused += 1,
                }
                continue;
            }
            self.take(&m, sh, &mut outs, &mut folded_to);
        }
        let Some(v) = latest else { return false };
        let taken = sh.topology.take_over_views(&v);
        tracing::info!(at = %v.closed_to, taken, "took over the leader's global views (monitor, predictor)");
        taken
    }

    /// One record of the topic into the fold.
    fn take(&mut self, m: &rdkafka::message::OwnedMessage, sh: &mut Shared, out: &mut Vec<Output>, folded_to: &mut Option<Millis>) {
        let r = match m.payload().filter(|v| v.len() <= MAX_RECORD_BYTES).map(serde_json::from_slice::<UsageRecord>) {
            Some(Ok(r)) if r.cells.len() <= MAX_CELLS => r,
            _ => {
                self.refused += 1;
                tracing::warn!(partition = m.partition(), offset = m.offset(), "usage record refused (not one, or too large)");
                return;
            }
        };
        self.records += 1;
        self.heard.insert(r.partition, Instant::now());
        if let Some(t) = r.folded_to {
            *folded_to = Some(folded_to.map_or(t, |f| f.max(t)));
        }
        if !sh.owns(r.partition) {
            sh.topology.on_usage_record(&r, out);
        }
    }

    /// Takes the records that have come (without waiting) into the fold of `sh`'s topology,
    /// and excuses the partitions nobody has spoken for lately; outputs go to `out`. Returns
    /// the furthest fold position a leader said it published the global views' outputs to.
    pub(crate) fn poll(&mut self, sh: &mut Shared, out: &mut Vec<Output>) -> Option<Millis> {
        let mut folded_to: Option<Millis> = None;
        for _ in 0..MAX_PER_POLL {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "usage topic");
                    break;
                }
                // The leader's views are for instances starting (`catch_up`).
                Some(Ok(m)) if m.key() == Some(VIEWS_KEY.as_bytes()) => {}
                Some(Ok(m)) => {
                    let m = m.detach();
                    self.take(&m, sh, out, &mut folded_to);
                }
            }
        }
        let n = i32::try_from(sh.requests_partitions).unwrap_or(0);
        for p in 0..n {
            if sh.owns(p) {
                continue;
            }
            let last = self.heard.get(&p).copied().unwrap_or(self.since);
            if last.elapsed() >= self.excuse_after {
                sh.topology.excuse_usage(p, out);
            }
        }
        folded_to
    }
}
