//! The imperative part of `surgeguard run` around one message: decode it (or dead-letter it),
//! run it through the topology, publish its outputs with their origin, and keep the at-least-once
//! bookkeeping (committable offsets, the changelog flush, the control side's leadership).
//! `apps/run.rs` owns the clients, `event_loop.rs` the loop that feeds the `Shell`; `shell/publish.rs` sends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::core::topology::{Counted, TooFarAheadError};
use crate::kafka::deliveries::{Deliveries, Origin, OutputProducer};
pub use crate::kafka::error::{RunError, RunStats};
use crate::kafka::leadership::{Change, Leadership, Transactions};
use crate::kafka::merge::{Ready, Source};
use crate::kafka::offsets::{Partition, StoredOffsets};
use crate::kafka::quarantine::Quarantine;
use crate::kafka::rebalance::{self, RunContext};
use crate::kafka::shared::{Shared, lock};
use crate::wire::decode::DecodeError;
use crate::wire::dlq;
use crate::wire::events::InputEvent;
use crate::wire::outputs::Output;
use crate::wire::time::Millis;

mod publish;
mod views;

/// The header on a decision made after an input's idle wait ran out: how far (ms) that input's
/// event time was behind the request's.
pub const CONTROL_BEHIND: &str = "surgeguard.control_behind_ms";

/// The origin of outputs no input offset waits for (the offset tracker knows no such partition).
pub(super) const UNTRACKED: (String, i32) = (String::new(), -1);

/// The DLQ reason of an input whose outputs failed `kafka.quarantine_after` restarts in a row.
pub const QUARANTINED: &str = "quarantined";

/// At-least-once: the most dirty users kept before the changelog is flushed early.
const MAX_DIRTY: usize = 100_000;

pub(crate) struct Shell<'a> {
    cfg: &'a Config,
    consumer: &'a StreamConsumer<RunContext>,
    producer: &'a OutputProducer,
    shared: Arc<Mutex<Shared>>,
    deliveries: Arc<Mutex<Deliveries>>,
    pub(crate) stats: RunStats,
    /// Offsets of delivered requests, handed to librdkafka in batches (`flush_offsets`).
    stored: StoredOffsets,
    /// Whether this instance publishes the control side's outputs, and what goes with it.
    leadership: Leadership,
    /// Exactly-once: when the open transaction commits.
    transactions: Transactions,
    outs: Vec<Output>,
    buf: Vec<u8>,
    /// At-least-once: when each partition's dirty limiter state goes to the changelog, in
    /// milliseconds from `changelog_epoch`.
    changelog_schedule: crate::kafka::changelog::FlushSchedule,
    changelog_epoch: Instant,
    metrics: Arc<crate::kafka::metrics::Metrics>,
    /// At-least-once with `kafka.keep_first_decisions` on a co-partitioned decisions topic:
    /// streamed decisions go to their request's partition number with its offset.
    first_decisions: bool,
    /// Scratch for a header value.
    header_buf: String,
    /// Every owner's usage records, for the global views (`kafka/usage.rs`).
    usage: Option<crate::kafka::usage::UsageReader>,
    /// What `Shared::published_fold_to` says (kept here to skip the lock when it stays).
    published_fold_to: Option<Millis>,
    /// Inputs whose outputs failed restart after restart: dead-lettered, not processed.
    quarantine: &'a Quarantine,
}

impl<'a> Shell<'a> {
    pub(crate) fn new(
        cfg: &'a Config,
        consumer: &'a StreamConsumer<RunContext>,
        producer: &'a OutputProducer,
        shared: Arc<Mutex<Shared>>,
        deliveries: Arc<Mutex<Deliveries>>,
        metrics: Arc<crate::kafka::metrics::Metrics>,
        quarantine: &'a Quarantine,
    ) -> Self {
        Shell {
            cfg,
            consumer,
            producer,
            shared,
            deliveries,
            stats: RunStats::default(),
            stored: StoredOffsets::default(),
            leadership: Leadership::default(),
            transactions: Transactions::new(cfg.kafka.guarantee == crate::config::Guarantee::ExactlyOnce),
            outs: Vec::new(),
            buf: Vec::with_capacity(1024),
            changelog_schedule: crate::kafka::changelog::FlushSchedule::new(u64::from(cfg.kafka.commit_interval_ms)),
            changelog_epoch: Instant::now(),
            metrics,
            first_decisions: false,
            header_buf: String::new(),
            usage: None,
            published_fold_to: None,
            quarantine,
        }
    }

    /// Requests partitions caught up (nothing buffered or left to read).
    pub(crate) fn requests_caught_up(&self, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        let mut sh = lock(&self.shared);
        for &p in partitions {
            sh.topology.requests_caught_up(p);
        }
    }

    /// Streamed decisions are kept for a later owner (`first_decisions.rs`).
    pub(crate) fn keep_first_decisions(&mut self) {
        self.first_decisions = true;
    }

    pub(crate) fn exactly_once(&self) -> bool {
        self.transactions.exactly_once()
    }

    pub(crate) fn leading(&self) -> bool {
        self.leadership.leading()
    }

    /// Whether the group has given this instance its partitions yet (until then it leaves the
    /// control topics unread: it cannot know whether it leads).
    pub(crate) fn assigned(&self) -> bool {
        lock(&self.shared).assigned()
    }

    /// After a rebalance: the input buffers drop what was revoked and take what is owned.
    pub(crate) fn sync_merge(&self, merge: &mut crate::kafka::merge::InputMerge) {
        let (owned, revoked) = {
            let mut sh = lock(&self.shared);
            (sh.owned_partitions(), sh.take_revoked())
        };
        // Where the consumer starts the partitions new to the buffers: their committed offsets
        // (so a partition with nothing new is not taken for one with messages left to read).
        let mut fresh: Vec<i32> = merge.new_requests(self.cfg, &owned);
        fresh.extend(revoked.iter().filter(|p| owned.contains(p)));
        let mut from = std::collections::HashMap::new();
        if !fresh.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for &p in &fresh {
                tpl.add_partition(&self.cfg.topics.requests, p);
            }
            let consumer = self.consumer;
            match tokio::task::block_in_place(|| consumer.committed_offsets(tpl, Duration::from_secs(5))) {
                Ok(c) => {
                    for e in c.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            from.insert(e.partition(), o);
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "committed offsets unknown: the buffers start without them"),
            }
        }
        merge.own_requests(self.cfg, &owned, &revoked, |p| from.get(&p).copied());
    }

    pub(crate) fn cfg(&self) -> &'a Config {
        self.cfg
    }

    /// Applies a reloaded config to the topology and publishes the limits it changes.
    pub(crate) async fn reconfigure(&mut self, new: Arc<Config>) -> Result<(), RunError> {
        {
            let mut sh = lock(&self.shared);
            let mut outs = Vec::new();
            sh.topology.reconfigure(new, &mut outs);
            tracing::info!(limit_updates = outs.len(), "reloaded config applied");
            sh.api_outputs.extend(outs);
        }
        self.publish_api_outputs().await
    }

    /// Every second: stops on a failure a rebalance callback saw, publishes at once when this
    /// instance became the leader with no message to handle (a rebalance after the leader died),
    /// takes in the delivery reports, flushes the changelog partitions whose turn has come and
    /// hands the stored offsets to librdkafka.
    pub(crate) async fn tick(&mut self) -> Result<(), RunError> {
        let (leading, snapshot) = {
            let mut sh = lock(&self.shared);
            if let Some(e) = sh.failed.take() {
                return Err(RunError::Rebalance(e));
            }
            // Where event time follows the wall clock when idle, an event far ahead of the wall
            // clock is too far ahead even before any other event came.
            if self.cfg.kafka.wall_clock_after_idle_ms > 0 {
                sh.topology.set_time_floor(crate::kafka::clock::wall_clock());
            }
            let mut snapshot = Vec::new();
            if sh.is_leader() && !self.leadership.leading() {
                sh.topology.snapshot("leader", &mut snapshot);
            }
            self.metrics.first_decisions_held.set(i64::try_from(sh.first_decisions_held()).unwrap_or(i64::MAX));
            (sh.is_leader(), snapshot)
        };
        if self.leadership.set(leading) == Change::Gained {
            self.lead(snapshot).await?;
            self.transactions.touched();
        }
        self.sweep()?;
        self.dead_letter_refused().await?;
        self.take_usage().await?;
        self.maybe_flush_changelog().await?;
        self.flush_offsets();
        Ok(())
    }

    /// After each handled message: exactly-once commits the transaction when it is due;
    /// otherwise the changelog is flushed when due (checked every 64 messages).
    pub(crate) async fn handled(&mut self) -> Result<(), RunError> {
        self.transactions.touched();
        if self.transactions.due() {
            self.commit_transaction().await?;
        } else if self.stats.consumed % 64 == 0 {
            self.maybe_flush_changelog().await?;
        }
        Ok(())
    }

    /// Exactly-once: an idle pipeline commits what it did too.
    pub(crate) async fn commit_if_due(&mut self) -> Result<(), RunError> {
        if self.transactions.due() {
            self.commit_transaction().await?;
        }
        Ok(())
    }

    /// Shutdown, once no message or API decision comes any more: the changelog goes out, the
    /// deliveries in flight get `drain` to finish, exactly-once commits its last transaction,
    /// and the delivered offsets are stored and the control offsets committed.
    pub(crate) async fn finish(&mut self, drain: Duration) -> Result<(), RunError> {
        self.publish_api_outputs().await?;
        if !self.exactly_once() {
            self.flush_changelog().await?;
        }
        tracing::info!(in_flight = self.in_flight(), "shutting down: finishing deliveries");
        let producer = self.producer;
        if let Err(e) = tokio::task::block_in_place(|| producer.flush(drain)) {
            tracing::warn!(error = %e, in_flight = self.in_flight(), "deliveries still in flight after {drain:?}: their inputs will be processed again");
        }
        if self.dead_letter_refused().await? > 0 {
            let _ = tokio::task::block_in_place(|| producer.flush(Duration::from_secs(5)));
        }
        self.sweep()?;
        if self.exactly_once() {
            self.commit_transaction().await?;
        }
        Ok(())
    }

    /// The offsets of what was delivered, for the final commit.
    pub(crate) fn store_final(&mut self) {
        self.flush_offsets();
        self.commit_control(CommitMode::Sync);
    }

    /// Stores the ready offsets with librdkafka (which commits them with the next auto-commit).
    pub(crate) fn flush_offsets(&mut self) {
        // librdkafka's store takes the next offset to consume in a list.
        let Some(tpl) = self.stored.take_list() else { return };
        // A partition revoked in a rebalance cannot take offsets any more; its new owner
        // reprocesses from the last commit, which is what at-least-once allows.
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, "offsets not stored");
        }
    }

    /// Takes in what the delivery reports have done since the last sweep: offsets whose outputs
    /// are all delivered become committable. Stops on a failed delivery.
    pub(crate) fn sweep(&mut self) -> Result<(), RunError> {
        let (moved, forgotten) = {
            let mut d = lock(&self.deliveries);
            if let Some((error, input)) = &d.failed {
                return Err(RunError::Delivery { error: error.clone(), input: input.clone() });
            }
            (d.take_moved(), d.take_forgotten())
        };
        // A partition revoked since the last sweep: what `stored` says of it is an ended
        // ownership's, and would hold back the stores of a new one that starts lower. (`ready`
        // is drained in the same tick it is filled, with no poll, so no rebalance, in between;
        // it is cleared too should that ever change.)
        for tp in &forgotten {
            self.stored.forget(tp);
        }
        for (tp, o) in moved {
            self.done(&tp, o);
        }
        Ok(())
    }

    pub(crate) fn begin(&mut self, tp: &Partition, offset: i64, outputs: u32) {
        lock(&self.deliveries).begin(tp, offset, outputs);
    }

    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.deliveries).tracker.in_flight()
    }

    /// Sends the limiter state dirtied since the last flush to the changelog.
    pub(crate) async fn flush_changelog(&mut self) -> Result<(), RunError> {
        let started = Instant::now();
        let records = {
            let mut sh = lock(&self.shared);
            if !sh.flush_pending() {
                return Ok(());
            }
            sh.take_changelog(&self.deliveries, &self.cfg.topics.requests)
        };
        self.send_changelog(records, started).await
    }

    async fn send_changelog(&mut self, records: Vec<crate::kafka::changelog::Outgoing>, started: Instant) -> Result<(), RunError> {
        let (n, taken) = (records.len(), started.elapsed());
        let (mut key, mut value) = (String::new(), std::mem::take(&mut self.buf));
        for r in records {
            r.encode(&mut key, &mut value)?;
            let origin: Origin = Box::new(match r.hold {
                Some(hold) => ((self.cfg.topics.requests.clone(), r.partition), hold),
                None => (UNTRACKED, -1),
            });
            let (topic, partition) = r.destination(&self.cfg.topics.changelog, &self.cfg.topics.usage);
            let mut record = BaseRecord::with_opaque_to(topic, origin).key(key.as_bytes()).payload(&value[..]);
            if let Some(p) = partition {
                record = record.partition(p);
            }
            self.send(record).await?;
        }
        self.buf = value;
        tracing::debug!(records = n, ?taken, took = ?started.elapsed(), "changelog flushed");
        Ok(())
    }

    /// At-least-once: flushes the partitions whose turn has come (`FlushSchedule`), or every
    /// partition when too much is dirty.
    pub(crate) async fn maybe_flush_changelog(&mut self) -> Result<(), RunError> {
        if self.exactly_once() {
            return Ok(());
        }
        let started = Instant::now();
        let now_ms = u64::try_from(self.changelog_epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let records = {
            let mut sh = lock(&self.shared);
            if !sh.flush_pending() {
                return Ok(());
            }
            if sh.changelog.len() >= MAX_DIRTY {
                sh.take_changelog(&self.deliveries, &self.cfg.topics.requests)
            } else {
                let n = sh.requests_partitions;
                // Owned partitions are due at their turn for their usage too, dirty users or not.
                let mut candidates: Vec<i32> = sh.changelog.dirty_partitions().chain(sh.owned_partitions()).collect();
                candidates.sort_unstable();
                candidates.dedup();
                let due: Vec<i32> = candidates.into_iter().filter(|&p| self.changelog_schedule.due(p, n, now_ms)).collect();
                if due.is_empty() {
                    return Ok(());
                }
                for &p in &due {
                    self.changelog_schedule.flushed(p, n, now_ms);
                }
                sh.take_changelog_of(&self.deliveries, &self.cfg.topics.requests, |p| due.contains(&p))
            }
        };
        self.send_changelog(records, started).await
    }

    /// Exactly-once: commits the open transaction with the dirty limiter state and the processed
    /// offsets, and opens the next. A failure aborts the transaction and stops the service: its
    /// outputs and offsets are dropped together, and a restart resumes from the last committed
    /// transaction with the limiter state of that transaction.
    pub(crate) async fn commit_transaction(&mut self) -> Result<(), RunError> {
        self.flush_changelog().await?;
        self.transactions.committing();
        let processed = lock(&self.shared).processed_offsets().clone();
        let (producer, consumer) = (self.producer, self.consumer);
        let started = Instant::now();
        let result = tokio::task::block_in_place(|| rebalance::commit_transaction(producer, consumer, &processed)).map_err(|e| {
            if let Err(abort) = tokio::task::block_in_place(|| producer.abort_transaction(Duration::from_secs(30))) {
                tracing::warn!(error = %abort, "aborting the failed transaction failed too");
            }
            RunError::Transaction(e)
        });
        tracing::trace!(took = ?started.elapsed(), "transaction committed");
        self.transactions.committed();
        result
    }

    /// Everything up to `offset` of `tp` has its outputs delivered.
    pub(crate) fn done(&mut self, tp: &Partition, offset: i64) {
        if self.exactly_once() {
            // The transaction carries the offsets.
            return;
        }
        if tp.0 == self.cfg.topics.requests {
            self.stored.store(tp, offset);
        } else if self.leadership.delivered(tp, offset) {
            self.commit_control(CommitMode::Async);
        }
    }

    /// Commits the control partitions' delivered offsets to the group (the group's consumer
    /// commits them; the control consumer is not a member).
    pub(crate) fn commit_control(&mut self, mode: CommitMode) {
        let Some(tpl) = self.leadership.take_control_commit() else { return };
        let commit = || self.consumer.commit(&tpl, mode);
        let result = if matches!(mode, CommitMode::Sync) { tokio::task::block_in_place(commit) } else { commit() };
        if let Err(e) = result {
            tracing::warn!(error = %e, "control offsets not committed: a new leader publishes their outputs again");
        }
    }

    /// Processes and publishes one input message whose turn has come (`merge.rs`).
    pub(crate) async fn handle(&mut self, ready: Ready) -> Result<(), RunError> {
        let Ready { topic, partition, source, message, behind_ms } = ready;
        self.stats.consumed += 1;
        let started = Instant::now();
        self.metrics.count_in(&topic);
        let tp: Partition = (topic, partition);
        let offset = message.offset;
        let input = self.cfg.topics.input_topic(&tp.0);
        let decoded = message.decoded;
        if behind_ms.is_some() {
            self.metrics.control_behind.inc();
        }
        let quarantined = self.quarantine.reason(&tp, offset).map(|why| {
            let after = self.quarantine.after();
            dlq::Reason::new(QUARANTINED, &format!("its outputs failed {after} restarts in a row: {why}"))
        });
        let mut outs = std::mem::take(&mut self.outs);
        let mut snapshot = Vec::new();
        let gained;
        let fold;
        let state = {
            let mut sh = lock(&self.shared);
            if let Some(e) = sh.failed.take() {
                return Err(RunError::Rebalance(e));
            }
            let leader = sh.is_leader();
            if leader && !self.leadership.leading() {
                sh.topology.snapshot("leader", &mut snapshot);
            }
            gained = self.leadership.set(leader) == Change::Gained;
            let user = match &decoded {
                Ok(InputEvent::Request(r)) => Some((r.user_id.as_str(), r.request_type.as_str())),
                _ => None,
            };
            let counted = match source {
                Source::Requests => sh.counted(tp.1, offset, user),
                Source::Control => Some(Counted::No),
            };
            // A requests partition this instance no longer owns: its new owner decides the
            // message.
            let Some(counted) = counted else {
                self.outs = outs;
                if gained {
                    self.leadership.defer_gain();
                }
                return Ok(());
            };
            let admitted = match (decoded, input, &quarantined) {
                // A quarantined request is not counted: its decision could not be published.
                (_, _, Some(q)) if source == Source::Requests => Err(q.clone()),
                // An event stamped too far ahead moves nothing and goes to the DLQ.
                (Ok(event), Some(topic), _) => sh
                    .topology
                    .process_from((topic, tp.1), event, counted, &mut outs)
                    .map_err(|e| dlq::Reason { kind: TooFarAheadError::KIND, message: e.to_string() }),
                (Ok(_), None, _) => Err(dlq::Reason::from(&DecodeError::UnknownTopic(tp.0.clone()))),
                (Err(e), _, _) => Err(dlq::Reason::from(&e)),
            };
            fold = (sh.topology.take_fold_outputs(), sh.topology.usage_closed_to());
            match admitted {
                Ok(()) => {
                    self.stats.already_counted += u64::from(matches!(counted, Counted::Already | Counted::Decided { counted: true, .. }));
                    // Exactly-once commits the leader's control positions in its transactions.
                    if source == Source::Requests || (self.exactly_once() && self.leadership.leading()) {
                        sh.processed(&tp, offset);
                    }
                    // The user's state changed: it goes to the changelog with the next flush,
                    // and the first such message since the last flush holds the partition.
                    let holds = match (source, counted, outs.iter().find_map(decision)) {
                        (Source::Requests, Counted::No | Counted::Decided { counted: false, .. }, Some((user, rt))) => {
                            sh.changelog.note(tp.1, offset, user, rt)
                        }
                        _ => false,
                    };
                    // Decided before, and that decision is in the decisions topic: not again.
                    if let Counted::Decided { .. } = counted {
                        outs.retain(|o| !matches!(o, Output::Decision(_)));
                        self.stats.decided_before += 1;
                        self.metrics.decided_before.inc();
                    }
                    Ok(holds)
                }
                Err(e) => Err(e),
            }
        };
        if gained {
            self.lead(snapshot).await?;
        }
        // A quarantined control message moves the state (as on every other instance), but its
        // outputs go nowhere: its dead letter says so.
        let state = match (state, quarantined) {
            (Ok(_), Some(reason)) => {
                outs.clear();
                Err(reason)
            }
            (state, _) => state,
        };
        if let Err(e) = &state
            && e.kind == QUARANTINED
        {
            self.stats.quarantined += 1;
            self.metrics.quarantined.inc();
            tracing::error!(topic = %tp.0, partition = tp.1, offset, reason = %e.message, "quarantined: to the DLQ, and the partition goes on");
        }
        let holds = match state {
            Ok(holds) => holds,
            Err(e) => {
                self.outs = outs;
                // Control messages are every instance's: the leader dead-letters them.
                if source == Source::Requests || self.leadership.leading() {
                    // Exactly-once: its offset goes with the transaction that holds its dead
                    // letter (at the end of a partition, nothing else would carry it).
                    if self.exactly_once() {
                        lock(&self.shared).processed(&tp, offset);
                    }
                    self.dead_letter(message.key.as_deref(), &message.payload, &tp, offset, &e).await?;
                }
                return Ok(());
            }
        };
        let sent = self.publish_outputs(&tp, offset, source, &mut outs, holds, behind_ms).await;
        self.outs = outs;
        self.metrics.processing_seconds.observe(started.elapsed().as_secs_f64());
        sent?;
        self.publish_fold_taken(fold.0, fold.1).await
    }

    /// This instance has just become the leader: publishes the control outputs it computed as a
    /// follower for control messages after the group's committed control offsets (the old
    /// leader may not have published those), then `snapshot`, every current limit and breaker
    /// state, so the compacted topics end with the current state.
    pub(crate) async fn lead(&mut self, snapshot: Vec<Output>) -> Result<(), RunError> {
        let (backlog, dropped) = self.leadership.take_backlog();
        tracing::info!(backlog = backlog.len(), dropped, "leading: publishing the control side's outputs");
        if !backlog.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (tp, _, _) in &backlog {
                if tpl.find_partition(&tp.0, tp.1).is_none() {
                    tpl.add_partition(&tp.0, tp.1);
                }
            }
            let consumer = self.consumer;
            // Without the committed offsets, everything kept is published (duplicates rather
            // than gaps).
            let committed = match tokio::task::block_in_place(|| consumer.committed_offsets(tpl, Duration::from_secs(10))) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "committed control offsets unknown: publishing every kept output");
                    TopicPartitionList::new()
                }
            };
            let mut published = 0usize;
            for (tp, offset, o) in backlog {
                let from = committed.find_partition(&tp.0, tp.1).and_then(|e| match e.offset() {
                    Offset::Offset(n) => Some(n),
                    _ => None,
                });
                if from.is_some_and(|c| offset < c) {
                    continue;
                }
                self.begin(&tp, offset, 1);
                self.publish(&o, Box::new((tp, offset))).await?;
                published += 1;
            }
            tracing::info!(published, "published the control outputs the old leader had not committed");
        }
        // The current state is not tied to an input offset: untracked.
        for o in snapshot {
            self.publish(&o, Box::new((UNTRACKED, -1))).await?;
        }
        // The global views' outputs no leader has said it published.
        let fold = self.leadership.take_fold_backlog();
        if !fold.is_empty() {
            tracing::info!(outputs = fold.len(), "published the global views' outputs the old leader had not");
        }
        for o in fold {
            self.publish(&o, Box::new((UNTRACKED, -1))).await?;
        }
        Ok(())
    }

    /// No input for a while: event time moves on to the wall clock (never back), so timers fire
    /// without events, as Kafka Streams' wall-clock punctuation does: an open breaker turns
    /// half-open (a gateway sends nothing to an open breaker's dependency, so no outcome would
    /// ever come to move it), silent sources go stale in the health view, the monitor closes its
    /// minute. The leader publishes what that changes; the others only apply it.
    pub(crate) async fn wall_clock(&mut self) -> Result<(), RunError> {
        let now = crate::kafka::clock::wall_clock();
        let mut outs = Vec::new();
        {
            let mut sh = lock(&self.shared);
            if sh.topology.watermark().is_none_or(|w| now <= w) {
                return Ok(());
            }
            sh.topology.advance(now, &mut outs);
        }
        if self.leadership.leading() && !outs.is_empty() {
            tracing::debug!(outputs = outs.len(), "wall-clock timers fired");
            for o in &outs {
                self.publish(o, Box::new((UNTRACKED, -1))).await?;
            }
            self.transactions.touched();
        }
        self.publish_fold().await
    }

    /// Publishes outputs no input message caused (`Shared::api_outputs`: the API's decisions,
    /// a reloaded config's limits): decisions always (no input offset waits for them), control
    /// outputs only when leading, as `wall_clock` does.
    pub(crate) async fn publish_api_outputs(&mut self) -> Result<(), RunError> {
        let (mut outs, leader, partitions) = {
            let mut sh = lock(&self.shared);
            (std::mem::take(&mut sh.api_outputs), sh.is_leader(), i32::try_from(sh.requests_partitions).unwrap_or(0))
        };
        if outs.is_empty() {
            return Ok(());
        }
        // (A follower computes the same timer outputs at its own pace; the leader publishes
        // them. They are not kept for a later leader, as control messages' are: no control
        // offset waits for them.)
        if !leader {
            outs.retain(|o| matches!(o, Output::Decision(_)));
        }
        self.metrics.count_outputs(&outs);
        for o in &outs {
            // With the decisions co-partitioned, an API decision goes where the user's streamed
            // ones go: the partition `api.partitioner` gives the user (the one whose limiter
            // decided it), so a user's decisions stay in one partition, in order.
            let partition = match o {
                Output::Decision(d) if self.first_decisions => self.cfg.api.partitioner.partition(d.user_id.as_bytes(), partitions),
                _ => None,
            };
            self.publish_with(o, Box::new((UNTRACKED, -1)), partition, publish::Headers::default()).await?;
        }
        self.transactions.touched();
        Ok(())
    }
}

/// The user and request type of a decision among a request's outputs.
pub(crate) fn decision(o: &Output) -> Option<(&str, &str)> {
    match o {
        Output::Decision(d) => Some((&d.user_id, &d.request_type)),
        _ => None,
    }
}
