//! What `surgeguard run` does when the consumer group moves partitions between instances.
//!
//! - **Revoked:** before the partitions go, every output produced so far is delivered
//!   (`flush`) and the offsets of what was processed are committed synchronously, so the next
//!   owner starts exactly after the last request this instance decided. If the flush times out,
//!   nothing is committed and the next owner processes those requests again (at-least-once).
//! - **Assigned:** before any message of a newly assigned requests partition is fetched, its
//!   limiter state is restored from the changelog (`changelog::restore`). With eager rebalancing
//!   (the default) every partition is revoked and reassigned at each rebalance; a partition this
//!   instance had just before keeps its state, since no one else could own it in between.
//!
//! The callbacks run inside the consumer's poll, on the task that runs the pipeline, so they see
//! the topology between two messages. They block (flush, commit, restore): they run under
//! `block_in_place`, off the async workers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use crate::kafka::changelog;
use crate::kafka::deliveries::{Deliveries, Origin, OutputProducer};
use crate::kafka::first_decisions;
use crate::kafka::offsets::{FastMap, Partition};
use crate::kafka::shared::{Shared, lock};

/// The consumer context of `surgeguard run`.
pub struct RunContext {
    pub shared: Arc<Mutex<Shared>>,
    pub deliveries: Arc<Mutex<Deliveries>>,
    pub requests_topic: String,
    pub changelog_topic: String,
    /// Where owners publish their partitions' usage (`core/usage.rs`).
    pub usage_topic: String,
    /// At-least-once with `kafka.keep_first_decisions` (and the decisions topic co-partitioned
    /// with the requests topic): the decisions topic, read back on assignment
    /// (`first_decisions.rs`).
    pub decisions_topic: Option<String>,
    /// The consumer group: decisions read back are this group's (`first_decisions::INPUT`).
    pub group_id: String,
    /// Client settings for the changelog reader (brokers, pass-through properties).
    pub restore_client: ClientConfig,
    pub producer: OutputProducer,
    pub restore_timeout: Duration,
    pub flush_timeout: Duration,
    /// Exactly-once: a revocation commits the open transaction with the processed offsets.
    pub exactly_once: bool,
    /// Ready (for `/readyz`): partitions assigned and their state restored.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// Where librdkafka's statistics put the consumer lag (`statistics.interval.ms`).
    pub metrics: Arc<crate::kafka::metrics::Metrics>,
    /// Bumped by every revocation and assignment: the main loop syncs its input buffers
    /// (`merge.rs`) before it takes in another message.
    pub rebalances: Arc<std::sync::atomic::AtomicU64>,
}

impl ClientContext for RunContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.metrics.set_consumer_lag(&statistics);
    }
}

impl ConsumerContext for RunContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.rebalances.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match rebalance {
            Rebalance::Revoke(tpl) => tokio::task::block_in_place(|| self.on_revoke(consumer, tpl)),
            Rebalance::Assign(tpl) => tokio::task::block_in_place(|| self.on_assign(consumer, tpl)),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

impl RunContext {
    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        self.ready.store(false, std::sync::atomic::Ordering::SeqCst);
        self.revoke(consumer, tpl);
        // Cooperative rebalancing revokes some partitions and keeps the others being served;
        // eager rebalancing revokes everything, and the assignment that follows sets it again.
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let (owns, failed) = {
            let sh = lock(&self.shared);
            (!sh.owned.is_empty(), sh.failed.is_some())
        };
        self.ready.store(cooperative && owns && !failed, std::sync::atomic::Ordering::SeqCst);
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let mut shared = lock(&self.shared);
        let revoked: Vec<Partition> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        tracing::info!(partitions = revoked.len(), "partitions revoked: delivering outputs and committing");
        if shared.no_commit || consumer.assignment_lost() {
            // Stopping on an error, or the group gave the partitions away already: commit
            // nothing, keep nothing (the next owner works from the last commit and the changelog).
            tracing::warn!(lost = consumer.assignment_lost(), "revoked without committing");
            // Exactly-once: the open transaction holds decisions of partitions given away; were
            // it committed later (without their offsets, which the group no longer takes from
            // this member), the new owner would decide them again. Aborted, with everything else
            // it holds: every partition goes (a lost assignment is the whole of it) and its state
            // is dropped below, so nothing it counted survives either.
            if self.exactly_once && !shared.no_commit {
                let aborted = self.producer.abort_transaction(Duration::from_secs(30)).and_then(|()| self.producer.begin_transaction());
                match aborted {
                    Ok(()) => tracing::warn!("assignment lost: the open transaction is aborted"),
                    Err(e) => {
                        tracing::error!(error = %e, "aborting the transaction of a lost assignment failed");
                        shared.failed = Some(format!("aborting the transaction of a lost assignment: {e}"));
                    }
                }
            }
            let mut deliveries = lock(&self.deliveries);
            // The API's decisions counted in the state dropped here: a retry must count again.
            shared.api_recent.clear();
            for tp in &revoked {
                deliveries.forget(tp);
                shared.processed.remove(tp);
                if tp.0 == self.requests_topic && shared.owned.remove(&tp.1).is_some() {
                    shared.first.remove(&tp.1);
                    shared.topology.drop_partition(tp.1);
                    shared.changelog.drop_partition(tp.1);
                }
            }
            shared.partitions_changed();
            return;
        }
        // The dirty limiter state goes first: the commit below must not pass it.
        if let Err(e) = self.send_changelog(&mut shared) {
            tracing::error!(error = %e, "writing the changelog on revocation failed");
            shared.failed = Some(format!("writing the changelog on revocation: {e}"));
            return;
        }
        if self.exactly_once {
            if let Err(e) = commit_transaction(&self.producer, consumer, &shared.processed) {
                tracing::error!(error = %e, "committing the transaction on revocation failed");
                shared.failed = Some(format!("committing the transaction on revocation: {e}"));
            }
            self.forget(&mut shared, consumer, &revoked);
            return;
        }
        let mut commit = TopicPartitionList::new();
        // The delivery reports are applied by the producer's callback (it never waits for
        // `Shared`, which this holds): after the flush, `delivered` says what to commit. A report
        // still being applied as the flush returns only makes the commit smaller.
        let flushed = self.producer.flush(Timeout::After(self.flush_timeout));
        let mut deliveries = lock(&self.deliveries);
        match flushed {
            Ok(()) if deliveries.failed.is_none() => {
                for tp in &revoked {
                    if let Some(o) = deliveries.delivered(tp)
                        && let Err(e) = commit.add_partition_offset(&tp.0, tp.1, Offset::Offset(o + 1))
                    {
                        tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "offset not committed");
                    }
                }
            }
            Ok(()) => tracing::warn!("a delivery failed before the revocation: committing nothing"),
            Err(e) => tracing::warn!(error = %e, "outputs not all delivered before the revocation: the next owner processes them again"),
        }
        for tp in &revoked {
            deliveries.forget(tp);
        }
        drop(deliveries);
        if commit.count() > 0 {
            // Stored as well: librdkafka commits the stored offsets of revoked partitions itself,
            // and would otherwise move the commit back to the last one the main loop stored.
            if let Err(e) = consumer.store_offsets(&commit) {
                tracing::warn!(error = %e, "offsets not stored on revocation");
            }
            if let Err(e) = consumer.commit(&commit, CommitMode::Sync) {
                tracing::warn!(error = %e, "commit on revocation failed: the next owner processes those requests again");
            }
        }
        self.forget(&mut shared, consumer, &revoked);
    }

    /// Drops what this instance tracked for revoked partitions (keeping, with eager rebalancing,
    /// the limiter state in case they come back in the same rebalance).
    fn forget(&self, shared: &mut Shared, consumer: &BaseConsumer<Self>, revoked: &[Partition]) {
        let eager = !matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        shared.revoked.clear();
        for tp in revoked {
            if tp.0 == self.requests_topic {
                shared.revoked_since.push(tp.1);
            }
            let processed = shared.processed.remove(tp);
            if tp.0 == self.requests_topic
                && let Some(up_to) = shared.owned.remove(&tp.1)
            {
                shared.first.remove(&tp.1);
                if eager {
                    // Kept state counts everything processed: should the commit have failed,
                    // requests coming again up to there are not counted twice.
                    let mut counted = up_to;
                    counted.all = match (counted.all, processed) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                    shared.revoked.insert(tp.1, counted);
                } else {
                    shared.topology.drop_partition(tp.1);
                }
            }
        }
        shared.partitions_changed();
    }

    /// Sends the dirty limiter state from inside a callback (blocking while the producer queue is
    /// full; its delivery reports are drained after the flush that follows).
    fn send_changelog(&self, shared: &mut Shared) -> Result<(), String> {
        let records = shared.take_changelog(&self.deliveries, &self.requests_topic);
        let (mut key, mut value) = (String::new(), Vec::new());
        for r in records {
            r.encode(&mut key, &mut value).map_err(|e| e.to_string())?;
            let origin: Origin = Box::new(match r.hold {
                Some(hold) => ((self.requests_topic.clone(), r.partition), hold),
                None => ((String::new(), -1), -1),
            });
            let (topic, partition) = r.destination(&self.changelog_topic, &self.usage_topic);
            let mut record = BaseRecord::with_opaque_to(topic, origin).key(key.as_bytes()).payload(&value[..]);
            if let Some(p) = partition {
                record = record.partition(p);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(e.to_string()),
                }
            }
        }
        Ok(())
    }

    fn on_assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        self.ready.store(false, std::sync::atomic::Ordering::SeqCst);
        self.assign(consumer, tpl);
        let failed = lock(&self.shared).failed.is_some();
        self.ready.store(!failed, std::sync::atomic::Ordering::SeqCst);
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let mut shared = lock(&self.shared);
        shared.assignments += 1;
        let assigned: HashSet<i32> = tpl.elements().iter().filter(|e| e.topic() == self.requests_topic).map(|e| e.partition()).collect();
        let mut to_restore = Vec::new();
        for &p in &assigned {
            match shared.revoked.remove(&p) {
                Some(up_to) => {
                    shared.owned.insert(p, up_to);
                }
                None => to_restore.push(p),
            }
        }
        let gone: Vec<i32> = shared.revoked.drain().map(|(p, _)| p).collect();
        for p in gone {
            shared.first.remove(&p);
            shared.topology.drop_partition(p);
        }
        to_restore.sort_unstable();
        if !to_restore.is_empty() && !self.restore(&mut shared, &to_restore) {
            return;
        }
        shared.partitions_changed();
        // Every requests partition assigned, kept ones too: one kept through an eager rebalance
        // whose commit fell behind comes again from the commit as well.
        if let Some(decisions) = &self.decisions_topic {
            let mut all: Vec<i32> = assigned.into_iter().collect();
            all.sort_unstable();
            if !all.is_empty() {
                self.read_first_decisions(consumer, &mut shared, decisions, &self.group_id, &all);
            }
        }
    }

    /// Restores the limiter state of `to_restore` from the changelog; false (and the failure
    /// recorded) when it could not.
    fn restore(&self, shared: &mut Shared, to_restore: &[i32]) -> bool {
        tracing::info!(partitions = ?to_restore, topic = %self.changelog_topic, "restoring limiter state");
        let started = std::time::Instant::now();
        match changelog::restore(&self.restore_client, &self.changelog_topic, to_restore, &mut shared.topology, self.restore_timeout) {
            Ok(done) => {
                for (&p, r) in &done {
                    shared.owned.insert(p, r.counted.clone());
                }
                let records: u64 = done.values().map(|r| r.records).sum();
                let skipped: u64 = done.values().map(|r| r.skipped).sum();
                tracing::info!(partitions = ?to_restore, records, skipped, took = ?started.elapsed(), "limiter state restored");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "restoring limiter state failed");
                shared.failed = Some(format!("restoring limiter state from the changelog: {e}"));
                false
            }
        }
    }

    /// The first decisions of the requests after the committed offsets of `partitions`, read
    /// back from the decisions topic (`first_decisions.rs`). Without them (a failed read), those
    /// requests are decided again, as they were before this existed: logged, not fatal.
    fn read_first_decisions(&self, consumer: &BaseConsumer<Self>, shared: &mut Shared, decisions: &str, group: &str, partitions: &[i32]) {
        let started = std::time::Instant::now();
        let budget = first_decisions::READ_BACK_TIMEOUT;
        let left = || budget.saturating_sub(started.elapsed());
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition(&self.requests_topic, p);
        }
        let committed = match consumer.committed_offsets(tpl, left()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "committed offsets unknown: requests processed again are decided again");
                return;
            }
        };
        let mut from = Vec::new();
        for &p in partitions {
            let c = match committed.find_partition(&self.requests_topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                // Nothing committed yet: the group starts at the earliest offset.
                _ => match consumer.fetch_watermarks(&self.requests_topic, p, left()) {
                    Ok((low, _)) => low,
                    Err(e) => {
                        tracing::warn!(partition = p, error = %e, "requests partition start unknown: its requests are decided again");
                        continue;
                    }
                },
            };
            from.push((p, c));
        }
        let (mut read, mut kept) = (0, 0);
        for (p, back) in first_decisions::read_tails(&self.restore_client, decisions, group, &from, left()) {
            shared.first.remove(&p);
            match back {
                Ok(back) => {
                    read += back.read;
                    kept += back.tail.len();
                    if back.cut {
                        tracing::warn!(
                            partition = p,
                            read = back.read,
                            "decisions read back to the limit without meeting the committed offset: older requests are decided again"
                        );
                    }
                    if !back.tail.is_empty() {
                        shared.first.insert(p, back.tail);
                    }
                }
                Err(e) => tracing::warn!(partition = p, error = %e, "reading the decisions back failed: requests processed again are decided again"),
            }
        }
        tracing::info!(partitions = ?partitions, read, kept, took = ?started.elapsed(), "first decisions of the uncommitted requests read back");
    }
}

/// Exactly-once: commits the open transaction with the consumer positions after `processed`
/// (blocking), and opens the next one.
pub fn commit_transaction<C: ConsumerContext>(
    producer: &OutputProducer,
    consumer: &impl Consumer<C>,
    processed: &FastMap<Partition, i64>,
) -> Result<(), KafkaError> {
    const TIMEOUT: Duration = Duration::from_secs(30);
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in processed {
        offsets.add_partition_offset(topic, *partition, Offset::Offset(offset + 1))?;
    }
    if offsets.count() > 0 {
        let group = consumer.group_metadata().ok_or(KafkaError::Global(RDKafkaErrorCode::InvalidGroupId))?;
        producer.send_offsets_to_transaction(&offsets, &group, TIMEOUT)?;
    }
    producer.commit_transaction(TIMEOUT)?;
    producer.begin_transaction()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::topology::{Counted, Topology};
    use crate::kafka::changelog::CountedUpTo;
    use crate::wire::events::{InputEvent, RequestEvent};
    use crate::wire::time::Millis;

    fn request(user: &str, ts: i64) -> InputEvent {
        InputEvent::Request(RequestEvent {
            id: format!("{user}-{ts}").into(),
            ts: Millis(ts),
            user_id: user.into(),
            tier: "pro".into(),
            request_type: "standard".into(),
            cost: 1,
        })
    }

    /// What `Shell::handle` does for a request: process, note, begin with its outputs; then
    /// every output but the hold is delivered.
    fn handle(sh: &mut Shared, d: &Mutex<Deliveries>, tp: &Partition, offset: i64, user: &str) -> Vec<(Partition, i64)> {
        let counted = sh.counted(tp.1, offset, Some((user, "standard"))).expect("owned");
        let mut outs = Vec::new();
        sh.topology.process_in(tp.1, request(user, 1_000 + offset), counted, &mut outs);
        let holds = counted == Counted::No && sh.changelog.note(tp.1, offset, user, "standard");
        let mut d = lock(d);
        d.begin(tp, offset, (outs.len() + usize::from(holds)) as u32);
        for _ in 0..outs.len() {
            d.ack(tp, offset);
        }
        d.take_moved()
    }

    fn ack(d: &Mutex<Deliveries>, tp: &Partition, offset: i64) -> Vec<(Partition, i64)> {
        let mut d = lock(d);
        d.ack(tp, offset);
        d.take_moved()
    }

    #[test]
    fn an_api_decision_records_what_the_users_state_counts() {
        let mut sh = Shared::new(Topology::new(std::sync::Arc::new(Config::default())));
        assert_eq!(sh.counted_through("req", 1, "u1", "standard"), -1);
        // Restored: u1 counted up to 500, the partition's stream is back at 481.
        let mut up_to = CountedUpTo::default();
        up_to.record(changelog::key("standard", "u1"), 500);
        sh.owned.insert(1, up_to);
        sh.processed(&("req".to_string(), 1), 481);
        assert_eq!(sh.counted_through("req", 1, "u1", "standard"), 500);
        // Another user's record says nothing about u2: only the processed offset counts.
        assert_eq!(sh.counted_through("req", 1, "u2", "standard"), 481);
        sh.processed(&("req".to_string(), 1), 510);
        assert_eq!(sh.counted_through("req", 1, "u1", "standard"), 510);
    }

    #[test]
    fn offsets_wait_for_the_changelog_flush_that_counts_them() {
        let mut sh = Shared::new(Topology::new(std::sync::Arc::new(Config::default())));
        let d = Mutex::new(Deliveries::default());
        sh.owned.insert(0, CountedUpTo::default());
        let tp: Partition = ("requests".into(), 0);
        // Every decision delivered: still nothing committable, the state is not in the changelog.
        for (offset, user) in [(10, "a"), (11, "b"), (12, "a")] {
            assert_eq!(handle(&mut sh, &d, &tp, offset, user), []);
        }
        sh.processed(&tp, 12);
        let records = sh.take_changelog(&d, "requests");
        assert!(lock(&d).take_moved().is_empty());
        let written: Vec<changelog::Record> = records
            .iter()
            .filter_map(|r| {
                let (mut key, mut value) = (String::new(), Vec::new());
                r.encode(&mut key, &mut value).expect("encodes");
                let changelog::Payload::User(u) = &r.record else { return None };
                assert_eq!(key, changelog::key(&u.request_type, &u.user_id));
                Some(serde_json::from_slice(&value).expect("record"))
            })
            .collect();
        assert_eq!(written.iter().map(|r| (r.user_id.as_str(), r.offset)).collect::<Vec<_>>(), [("b", 11), ("a", 12)], "one record per user, in input order");
        // Then the partition's usage, to the changelog and to the usage topic.
        let usage: Vec<(&str, Option<i32>)> = records[2..].iter().map(|r| r.destination("changelog", "usage")).collect();
        assert_eq!(usage, [("changelog", Some(0)), ("usage", None)]);
        let changelog::Payload::Usage(u) = &records[2].record else { panic!("usage: {:?}", records[2]) };
        assert_eq!((u.offset, u.cells[0].1.decisions), (12, 3), "the usage counts the requests up to the last processed");
        assert!(records.iter().all(|r| r.hold == Some(10) && r.partition == 0));
        // The next message after the flush holds again.
        assert_eq!(handle(&mut sh, &d, &tp, 13, "c"), []);
        for _ in 0..3 {
            assert_eq!(ack(&d, &tp, 10), [], "not all four records yet");
        }
        assert_eq!(ack(&d, &tp, 10), [(tp.clone(), 12)], "the flush counts 10..=12");
        let records = sh.take_changelog(&d, "requests");
        assert_eq!(records.len(), 3);
        for _ in 0..2 {
            assert_eq!(ack(&d, &tp, 13), []);
        }
        assert_eq!(ack(&d, &tp, 13), [(tp.clone(), 13)]);
        assert_eq!(lock(&d).delivered(&tp), Some(13));
    }

    #[test]
    fn restored_state_counts_exactly_the_requests_of_its_records() {
        let mut sh = Shared::new(Topology::new(std::sync::Arc::new(Config::default())));
        let mut counted = CountedUpTo::default();
        counted.record(changelog::key("standard", "a"), 12);
        counted.record(changelog::key("standard", "b"), 8);
        sh.owned.insert(0, counted);
        assert_eq!(sh.counted(0, 10, Some(("a", "standard"))), Some(Counted::Already));
        assert_eq!(sh.counted(0, 10, Some(("b", "standard"))), Some(Counted::No), "b's record stops at 8");
        assert_eq!(sh.counted(0, 13, Some(("a", "standard"))), Some(Counted::No));
        assert_eq!(sh.counted(0, 12, Some(("a", "standard"))), Some(Counted::No), "past the restored offsets the per-key map is gone");
        assert_eq!(sh.counted(1, 1, None), None, "not owned");
    }

    #[test]
    fn a_request_with_a_first_decision_is_decided_as_then_and_counted_once() {
        use crate::kafka::first_decisions::Tail;
        use crate::wire::outputs::DecisionKind::{Allow, Throttle};
        let mut sh = Shared::new(Topology::new(std::sync::Arc::new(Config::default())));
        let mut counted = CountedUpTo::default();
        counted.record(changelog::key("standard", "a"), 11);
        sh.owned.insert(0, counted);
        sh.first.insert(0, Tail::from_read([(10, Allow), (11, Throttle), (12, Allow), (14, Throttle)], 10));
        assert_eq!(sh.counted(0, 10, Some(("a", "standard"))), Some(Counted::Decided { kind: Allow, counted: true }));
        assert_eq!(sh.counted(0, 11, Some(("b", "standard"))), Some(Counted::Decided { kind: Throttle, counted: false }));
        assert_eq!(sh.counted(0, 12, None), Some(Counted::No), "not a request (dead-lettered this time)");
        assert_eq!(sh.counted(0, 13, Some(("a", "standard"))), Some(Counted::No), "never decided");
        assert_eq!(sh.first_decisions_held(), 1);
        assert_eq!(sh.counted(0, 14, Some(("a", "standard"))), Some(Counted::Decided { kind: Throttle, counted: false }));
        assert_eq!(sh.first_decisions_held(), 0);
        assert!(sh.first.is_empty(), "an emptied tail goes");
    }
}
