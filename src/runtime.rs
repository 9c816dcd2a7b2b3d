//! `surgeguard run`: the Kafka shell around the topology.
//!
//! The configured group's consumer reads the requests topic; each message is decoded (or sent
//! to the DLQ with KIP-1034 headers), processed by the same `Topology` replay uses, and its
//! outputs are produced keyed as DESIGN.md says. Offsets are stored for commit only once every
//! output of a message, and of every earlier message of its partition, is acknowledged by the
//! broker (`OffsetTracker`): at-least-once. The producer's own thread applies each delivery
//! report to that bookkeeping as it arrives (`rebalance::DeliveryContext`); the main loop takes the
//! committable offsets from it every second. When the producer queue is full, consumption waits
//! for deliveries to make room instead of dropping anything, so the messages in flight stay
//! bounded by the producer queue.
//!
//! Scale-out: requests count in the limiter of their input partition, and changed user state goes
//! to the changelog topic once per commit interval (`changelog.rs`); when partitions move between instances,
//! `rebalance.rs` commits what was done and restores what arrives before it is processed.
//! Control events (outcomes, telemetry, admin) are read in full by every instance (`control.rs`).
//! With `kafka.guarantee = "exactly_once"` outputs, changelog records and input offsets go in one
//! transaction instead of offsets being committed after delivery.
//!
//! Not yet here (see the README's status): timers that fire on wall-clock time when no events
//! arrive.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::{Config, Guarantee};
use crate::decode::{self, DecodeError};
use crate::dlq;
use crate::kafka_topics;
use crate::offsets::Partition;
use crate::outputs::Output;
use crate::rebalance::{self, Deliveries, DeliveryContext, Origin, OutputProducer, RunContext, Shared};
use crate::events::InputEvent;
use crate::topology::{Counted, Topology};
use crate::control;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("encoding an output: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("an output could not be delivered: {0}")]
    Delivery(KafkaError),
    #[error("the consumer has failed for {0:?} without a single message: {1}")]
    ConsumerDown(Duration, KafkaError),
    #[error("restoring limiter state from the changelog: {0}")]
    Restore(String),
    #[error("exactly-once transaction failed (aborted; a restart resumes from the last committed one): {0}")]
    Transaction(KafkaError),
    #[error("topic {changelog} has {has} partitions, fewer than {requests} ({needs}): each requests partition keeps its state in the changelog partition of the same number")]
    ChangelogPartitions { changelog: String, has: usize, requests: String, needs: usize },
}

/// How long consumer errors may go on, without any message in between, before the service stops
/// (librdkafka retries transient errors by itself; this catches the ones that never end).
const CONSUMER_GIVE_UP: Duration = Duration::from_secs(300);

/// What a run did, for its final log line and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub consumed: u64,
    pub dead_lettered: u64,
    /// Requests decided again without being counted: the restored changelog state held them.
    pub already_counted: u64,
    pub produced: u64,
}

/// The client settings shared by every client: the brokers and the pass-through properties.
pub fn client_config(cfg: &Config, brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in &cfg.kafka.properties {
        c.set(k, v);
    }
    c
}

fn output_topic<'a>(cfg: &'a Config, o: &Output) -> &'a str {
    let t = &cfg.topics;
    match o {
        Output::Decision(_) => &t.decisions,
        Output::Limit(_) => &t.limits,
        Output::Breaker(_) => &t.breakers,
        Output::Prediction(_) => &t.predictions,
        Output::Alert(_) => &t.alerts,
    }
}

/// The most of a bad input's value kept in its DLQ record (the producer refuses records over
/// `message.max.bytes`, 1 MB by default).
const DLQ_MAX_VALUE: usize = 512 * 1024;

/// How many request messages in a row may go before a waiting control message.
const CONTROL_EVERY: u32 = 16;

/// Marks the shared state "commit nothing" when `run_with` leaves with an error.
struct NoCommitOnError {
    shared: Arc<Mutex<Shared>>,
    armed: bool,
}

impl Drop for NoCommitOnError {
    fn drop(&mut self) {
        if self.armed {
            rebalance::lock(&self.shared).no_commit = true;
        }
    }
}

/// Exactly-once: how often the open transaction commits (Kafka Streams' default for
/// exactly-once).
const TRANSACTION_EVERY: Duration = Duration::from_millis(100);

/// The most control outputs a follower keeps for the day it leads (`Shell::suppress`).
const MAX_BACKLOG: usize = 10_000;

/// The origin of outputs no input offset waits for (the offset tracker knows no such partition).
const UNTRACKED: (String, i32) = (String::new(), -1);

/// At-least-once: the most dirty users kept before the changelog is flushed early.
const MAX_DIRTY: usize = 100_000;

/// How long a starting instance reads the control topics' recent past before it goes on.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);

/// How long reading a partition's changelog may take before the service gives up.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long shutdown waits for the deliveries in flight before giving up on them (their offsets
/// are then not committed, so they are processed again after the restart).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);


struct Shell<'a> {
    cfg: &'a Config,
    consumer: &'a StreamConsumer<RunContext>,
    producer: &'a OutputProducer,
    shared: Arc<Mutex<Shared>>,
    deliveries: Arc<Mutex<Deliveries>>,
    stats: RunStats,
    /// Offsets ready to store, per partition, handed to librdkafka in batches (`flush_offsets`).
    ready: HashMap<Partition, i64>,
    /// The highest offset stored per partition: a store never moves backwards.
    stored: HashMap<Partition, i64>,
    last_flush: Instant,
    /// Whether this instance publishes the control side's outputs (`control.rs`).
    leader: bool,
    /// Exactly-once: outputs and offsets go in transactions, committed every `TRANSACTION_EVERY`.
    eos: bool,
    last_transaction: Instant,
    /// Messages handled since the last commit.
    in_transaction: bool,
    /// Control partitions: the last offset whose outputs this instance (as leader) has
    /// delivered, committed to the group now and then.
    control_done: HashMap<Partition, i64>,
    last_control_commit: Instant,
    outs: Vec<Output>,
    buf: Vec<u8>,
    /// Control outputs computed as a follower, with their input partition and offset (`suppress`).
    backlog: std::collections::VecDeque<(Partition, i64, Output)>,
    backlog_dropped: u64,
    /// Per control partition, the highest offset handed to `control_done`.
    control_high: HashMap<Partition, i64>,
    /// At-least-once: how often dirty limiter state goes to the changelog.
    changelog_every: Duration,
    last_changelog: Instant,
}

/// Which consumer a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The group's consumer: a requests partition this instance owns.
    Requests,
    /// The control consumer: outcomes, telemetry, admin (every instance reads them all).
    Control,
}

impl Shell<'_> {
    fn store(&mut self, tp: &Partition, offset: i64) {
        if self.stored.get(tp).is_some_and(|&s| s >= offset) {
            return;
        }
        self.stored.insert(tp.clone(), offset);
        self.ready.insert(tp.clone(), offset);
        if self.last_flush.elapsed() >= Duration::from_millis(50) {
            self.flush_offsets();
        }
    }

    /// Stores the ready offsets with librdkafka (which commits them with the next auto-commit).
    fn flush_offsets(&mut self) {
        self.last_flush = Instant::now();
        if self.ready.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in self.ready.drain() {
            // librdkafka's store takes the next offset to consume in a list.
            if let Err(e) = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset + 1)) {
                tracing::warn!(%topic, partition, offset, error = %e, "offset not stored");
            }
        }
        // A partition revoked in a rebalance cannot take offsets any more; its new owner
        // reprocesses from the last commit, which is what at-least-once allows.
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, "offsets not stored");
        }
    }

    /// Takes in what the delivery reports have done since the last sweep: offsets whose outputs
    /// are all delivered become committable. Stops on a failed delivery.
    fn sweep(&mut self) -> Result<(), RunError> {
        let moved = {
            let mut d = rebalance::lock(&self.deliveries);
            if let Some(e) = &d.failed {
                return Err(RunError::Delivery(e.clone()));
            }
            d.take_moved()
        };
        for (tp, o) in moved {
            self.done(&tp, o);
        }
        Ok(())
    }

    fn begin(&mut self, tp: &Partition, offset: i64, outputs: u32) {
        rebalance::lock(&self.deliveries).begin(tp, offset, outputs);
    }

    fn in_flight(&self) -> usize {
        rebalance::lock(&self.deliveries).tracker.in_flight()
    }

    /// Sends the limiter state dirtied since the last flush to the changelog.
    async fn flush_changelog(&mut self) -> Result<(), RunError> {
        self.last_changelog = Instant::now();
        let records = {
            let mut sh = rebalance::lock(&self.shared);
            if sh.changelog.is_empty() {
                return Ok(());
            }
            sh.take_changelog(&self.deliveries, &self.cfg.topics.requests)?
        };
        for r in records {
            let origin: Origin = Box::new(((self.cfg.topics.requests.clone(), r.partition), r.hold));
            let record = BaseRecord::with_opaque_to(&self.cfg.topics.changelog, origin).partition(r.partition).key(r.key.as_bytes()).payload(&r.value[..]);
            self.send(record).await?;
        }
        Ok(())
    }

    /// At-least-once: flushes the changelog when its interval has passed or too much is dirty.
    async fn maybe_flush_changelog(&mut self) -> Result<(), RunError> {
        if !self.eos && (self.last_changelog.elapsed() >= self.changelog_every || rebalance::lock(&self.shared).changelog.len() >= MAX_DIRTY) {
            self.flush_changelog().await?;
        }
        Ok(())
    }

    /// Exactly-once: commits the open transaction with the dirty limiter state and the processed
    /// offsets, and opens the next. A failure aborts the transaction and stops the service: its
    /// outputs and offsets are dropped together, and a restart resumes from the last committed
    /// transaction with the limiter state of that transaction.
    async fn commit_transaction(&mut self, shared: &Mutex<Shared>) -> Result<(), RunError> {
        self.flush_changelog().await?;
        self.in_transaction = false;
        let processed = rebalance::lock(shared).processed_offsets().clone();
        let (producer, consumer) = (self.producer, self.consumer);
        let started = Instant::now();
        let result = tokio::task::block_in_place(|| rebalance::commit_transaction(producer, consumer, &processed)).map_err(|e| {
            if let Err(abort) = tokio::task::block_in_place(|| producer.abort_transaction(Duration::from_secs(30))) {
                tracing::warn!(error = %abort, "aborting the failed transaction failed too");
            }
            RunError::Transaction(e)
        });
        tracing::trace!(took = ?started.elapsed(), "transaction committed");
        // The interval runs from the end of a commit, so a slow commit still leaves time to work.
        self.last_transaction = Instant::now();
        result
    }

    /// Everything up to `offset` of `tp` has its outputs delivered.
    fn done(&mut self, tp: &Partition, offset: i64) {
        if self.eos {
            // The transaction carries the offsets.
            return;
        }
        if tp.0 == self.cfg.topics.requests {
            self.store(tp, offset);
        } else {
            // Outputs published from the backlog (`lead`) belong to earlier offsets than those
            // already delivered: the commit never moves back.
            if self.control_high.get(tp).is_some_and(|&h| h >= offset) {
                return;
            }
            self.control_high.insert(tp.clone(), offset);
            self.control_done.insert(tp.clone(), offset);
            if self.last_control_commit.elapsed() >= Duration::from_secs(1) {
                self.commit_control(CommitMode::Async);
            }
        }
    }

    /// Commits the control partitions' delivered offsets to the group (the group's consumer
    /// commits them; the control consumer is not a member).
    fn commit_control(&mut self, mode: CommitMode) {
        self.last_control_commit = Instant::now();
        if self.control_done.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in self.control_done.drain() {
            if let Err(e) = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset + 1)) {
                tracing::warn!(%topic, partition, offset, error = %e, "control offset not committed");
            }
        }
        let commit = || self.consumer.commit(&tpl, mode);
        let result = if matches!(mode, CommitMode::Sync) { tokio::task::block_in_place(commit) } else { commit() };
        if let Err(e) = result {
            tracing::warn!(error = %e, "control offsets not committed: a new leader publishes their outputs again");
        }
    }

    /// Decodes, processes and publishes one input message.
    async fn handle(&mut self, shared: &Mutex<Shared>, m: &BorrowedMessage<'_>, source: Source) -> Result<(), RunError> {
        self.stats.consumed += 1;
        let tp: Partition = (m.topic().to_string(), m.partition());
        let offset = m.offset();
        let payload = m.payload().unwrap_or(&[]);
        let decoded = match kafka_topics::input_topic(self.cfg, &tp.0) {
            Some(topic) => decode::decode(topic, payload),
            None => Err(DecodeError::UnknownTopic(tp.0.clone())),
        };
        let mut outs = std::mem::take(&mut self.outs);
        let mut snapshot = Vec::new();
        let gained;
        let state = {
            let mut sh = rebalance::lock(shared);
            if let Some(e) = sh.failed.take() {
                return Err(RunError::Restore(e));
            }
            let leader = sh.is_leader();
            if leader && !self.leader {
                sh.topology.snapshot("leader", &mut snapshot);
            }
            gained = leader && !self.leader;
            if !leader && self.leader {
                tracing::info!("no longer leading");
            }
            self.leader = leader;
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
                    // Leads from the next message or tick on.
                    self.leader = false;
                }
                return Ok(());
            };
            match decoded {
                Ok(event) => {
                    self.stats.already_counted += u64::from(counted == Counted::Already);
                    sh.topology.process_in(tp.1, event, counted, &mut outs);
                    // Exactly-once commits the leader's control positions in its transactions.
                    if source == Source::Requests || (self.eos && self.leader) {
                        sh.processed(&tp, offset);
                    }
                    // The user's state changed: it goes to the changelog with the next flush,
                    // and the first such message since the last flush holds the partition.
                    Ok(match (source, counted, outs.iter().find_map(decision)) {
                        (Source::Requests, Counted::No, Some((user, rt))) => sh.changelog.note(tp.1, offset, user, rt),
                        _ => false,
                    })
                }
                Err(e) => Err(e),
            }
        };
        if gained {
            self.lead(snapshot).await?;
        }
        let holds = match state {
            Ok(holds) => holds,
            Err(e) => {
                self.outs = outs;
                // Control messages are every instance's: the leader dead-letters them.
                if source == Source::Requests || self.leader {
                    self.dead_letter(m, &tp, offset, &e).await?;
                }
                return Ok(());
            }
        };
        // Other instances publish the control side's outputs only when they lead.
        if !self.leader {
            if source == Source::Control {
                self.suppress(&tp, offset, &mut outs);
            }
            outs.retain(|o| matches!(o, Output::Decision(_)));
        }
        // Recorded before anything is sent (waiting for queue space may already bring this
        // message's first acknowledgements). Control partitions are committed by the leader.
        if source == Source::Requests || self.leader {
            let n = outs.len() + usize::from(holds);
            self.begin(&tp, offset, n as u32);
        }
        let mut buf = std::mem::take(&mut self.buf);
        for o in outs.drain(..) {
            buf.clear();
            o.write_json(&mut buf)?;
            let origin: Origin = Box::new((tp.clone(), offset));
            let record = BaseRecord::with_opaque_to(output_topic(self.cfg, &o), origin).key(o.key().as_bytes()).payload(&buf[..]);
            self.send(record).await?;
        }
        self.buf = buf;
        self.outs = outs;
        Ok(())
    }

    async fn dead_letter(&mut self, m: &BorrowedMessage<'_>, tp: &Partition, offset: i64, e: &DecodeError) -> Result<(), RunError> {
        self.stats.dead_lettered += 1;
        self.begin(tp, offset, 1);
        tracing::debug!(topic = %tp.0, partition = tp.1, offset, error = %e, "to the DLQ");
        let payload = m.payload().unwrap_or(&[]);
        let mut headers = OwnedHeaders::new();
        for (k, v) in dlq::headers(e, &tp.0, tp.1, offset) {
            headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        // A value too large for the producer would stop the service on every restart: keep its
        // head, and say so.
        let kept = if payload.len() > DLQ_MAX_VALUE {
            headers = headers.insert(Header { key: dlq::TRUNCATED, value: Some(payload.len().to_string().as_bytes()) });
            &payload[..DLQ_MAX_VALUE]
        } else {
            payload
        };
        let origin: Origin = Box::new((tp.clone(), offset));
        let mut record = BaseRecord::with_opaque_to(&self.cfg.topics.dlq, origin).payload(kept).headers(headers);
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        self.send(record).await
    }

    /// A follower keeps the control side's outputs it computed but did not publish (alerts,
    /// breaker transitions, predictions; limits are republished whole by a new leader), so that
    /// if it becomes leader it can publish those the old leader may not have (`lead`).
    fn suppress(&mut self, tp: &Partition, offset: i64, outs: &mut Vec<Output>) {
        for o in outs.iter().filter(|o| !matches!(o, Output::Decision(_) | Output::Limit(_))) {
            if self.backlog.len() >= MAX_BACKLOG {
                self.backlog.pop_front();
                self.backlog_dropped += 1;
            }
            self.backlog.push_back((tp.clone(), offset, o.clone()));
        }
    }

    /// This instance has just become the leader: publishes the control outputs it computed as a
    /// follower for control messages after the group's committed control offsets (the old
    /// leader may not have published those), then `snapshot`, every current limit and breaker
    /// state, so the compacted topics end with the current state.
    async fn lead(&mut self, snapshot: Vec<Output>) -> Result<(), RunError> {
        tracing::info!(backlog = self.backlog.len(), dropped = self.backlog_dropped, "leading: publishing the control side's outputs");
        let backlog = std::mem::take(&mut self.backlog);
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
        self.backlog_dropped = 0;
        Ok(())
    }

    /// Encodes and enqueues one output.
    async fn publish(&mut self, o: &Output, origin: Origin) -> Result<(), RunError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        o.write_json(&mut buf)?;
        let record = BaseRecord::with_opaque_to(output_topic(self.cfg, o), origin).key(o.key().as_bytes()).payload(&buf[..]);
        let sent = self.send(record).await;
        self.buf = buf;
        sent
    }

    /// Enqueues one record; while the producer queue is full, waits for deliveries to make room
    /// (the producer's own thread applies their reports).
    async fn send(&mut self, record: BaseRecord<'_, [u8], [u8], Origin>) -> Result<(), RunError> {
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.stats.produced += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(RunError::Kafka(e)),
            }
        }
    }
}

/// Runs the pipeline against `brokers` until `shutdown` completes, then finishes the work in
/// flight, commits and leaves the group.
pub async fn run(cfg: Arc<Config>, brokers: &str, shutdown: impl Future<Output = ()>) -> Result<RunStats, RunError> {
    run_with(cfg, brokers, &[], shutdown).await
}

/// As `run`, with extra consumer properties (the embedded demo shortens fetch waits: the mock
/// cluster holds every fetch for the full `fetch.wait.max.ms`).
pub async fn run_with(
    cfg: Arc<Config>,
    brokers: &str,
    consumer_overrides: &[(&str, &str)],
    shutdown: impl Future<Output = ()>,
) -> Result<RunStats, RunError> {
    let base = client_config(&cfg, brokers);
    if cfg.kafka.create_topics {
        tracing::info!(brokers, "checking topics (and creating the missing ones)");
        let created = kafka_topics::ensure(&base, &cfg).await?;
        if !created.is_empty() {
            tracing::info!(topics = ?created, "created missing topics");
        }
    }
    let mut consumer_config = base.clone();
    for (k, v) in consumer_overrides {
        consumer_config.set(*k, *v);
    }
    let eos = cfg.kafka.guarantee == Guarantee::ExactlyOnce;
    // Inputs, changelog and control topics alike: only committed transactions are read.
    consumer_config.set("isolation.level", "read_committed");
    let mut producer_config = base.clone();
    // linger.ms stays librdkafka's default (5 ms) unless kafka.properties sets it.
    producer_config.set("enable.idempotence", "true").set("acks", "all");
    if eos {
        // Unique per process: with KIP-447 the group's generation fences a zombie instance.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        producer_config.set("transactional.id", format!("{}-{}-{nanos}", cfg.kafka.group_id, std::process::id()));
        // A transaction left open by a crashed instance blocks read_committed readers (the
        // changelog restore among them) until it times out: keep that short, as Kafka Streams does.
        producer_config.set("transaction.timeout.ms", "10000");
    }
    let deliveries = Arc::new(Mutex::new(Deliveries::default()));
    let producer: OutputProducer = producer_config.create_with_context(DeliveryContext { deliveries: deliveries.clone() })?;
    if eos {
        tokio::task::block_in_place(|| producer.init_transactions(Duration::from_secs(30)))?;
        producer.begin_transaction()?;
        tracing::info!("exactly-once: outputs, limiter state and offsets commit together");
    }
    let t = &cfg.topics;
    check_changelog_partitions(&producer, t)?;
    // The control side first: every partition of the control topics, from the lookback on,
    // folded into the topology before this instance decides anything.
    let control: StreamConsumer = consumer_config
        .clone()
        .set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut topology = Topology::new(cfg.clone());
    let plan = control::assign(&control, &cfg)?;
    let started = Instant::now();
    let catch_up_client = consumer_config.clone().set("group.id", format!("{}.catch-up", cfg.kafka.group_id)).clone();
    let read = control::catch_up(&catch_up_client, plan, &mut topology, &cfg, CATCH_UP_TIMEOUT).await?;
    tracing::info!(messages = read, took = ?started.elapsed(), lookback_s = cfg.kafka.control_lookback_s, "control state rebuilt from the control topics");

    let shared = Arc::new(Mutex::new(Shared::new(topology)));
    let context = RunContext {
        shared: shared.clone(),
        deliveries: deliveries.clone(),
        requests_topic: t.requests.clone(),
        changelog_topic: t.changelog.clone(),
        restore_client: consumer_config.clone(),
        producer: producer.clone(),
        restore_timeout: RESTORE_TIMEOUT,
        flush_timeout: DRAIN_TIMEOUT,
        exactly_once: eos,
    };
    let consumer: StreamConsumer<RunContext> = consumer_config
        .set("group.id", &cfg.kafka.group_id)
        // Exactly-once commits offsets in the transaction, never on its own.
        .set("enable.auto.commit", if eos { "false" } else { "true" })
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(context)?;
    consumer.subscribe(&[t.requests.as_str()])?;
    tracing::info!(brokers, group = %cfg.kafka.group_id, requests = %t.requests, control = ?[&t.outcomes, &t.telemetry, &t.admin], "consuming");

    let mut shell = Shell {
        cfg: &cfg,
        consumer: &consumer,
        producer: &producer,
        shared: shared.clone(),
        deliveries: deliveries.clone(),
        stats: RunStats::default(),
        ready: HashMap::new(),
        stored: HashMap::new(),
        last_flush: Instant::now(),
        leader: false,
        control_done: HashMap::new(),
        last_control_commit: Instant::now(),
        eos,
        last_transaction: Instant::now(),
        in_transaction: false,
        outs: Vec::new(),
        buf: Vec::with_capacity(1024),
        backlog: std::collections::VecDeque::new(),
        backlog_dropped: 0,
        control_high: HashMap::new(),
        changelog_every: Duration::from_millis(u64::from(cfg.kafka.commit_interval_ms)),
        last_changelog: Instant::now(),
    };
    // Declared after the consumer, so dropped before it: an error exit marks the state so that
    // the revocation closing the consumer brings commits nothing.
    let mut exit_guard = NoCommitOnError { shared: shared.clone(), armed: true };
    // Every second: stop on a failure a callback saw, hand stored offsets to librdkafka, and poll
    // the delivery reports again (a callback that drained them leaves no waker behind); every
    // 30 s a progress line.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    let mut requests_streak = 0u32;
    let mut transaction_tick = tokio::time::interval(TRANSACTION_EVERY);
    transaction_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing_since: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        // Control events wait until this instance knows whether it leads (see `control.rs`).
        let control_ready = rebalance::lock(&shared).assigned();
        let msg = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                ticks += 1;
                let (leader, snapshot) = {
                    let mut sh = rebalance::lock(&shared);
                    if let Some(e) = sh.failed.take() {
                        return Err(RunError::Restore(e));
                    }
                    let mut snapshot = Vec::new();
                    if sh.is_leader() && !shell.leader {
                        sh.topology.snapshot("leader", &mut snapshot);
                    }
                    (sh.is_leader(), snapshot)
                };
                // Leadership can change with no message to handle (a rebalance after the
                // leader died): the new leader publishes at once.
                if leader && !shell.leader {
                    shell.leader = true;
                    shell.lead(snapshot).await?;
                    shell.in_transaction = true;
                } else if !leader && shell.leader {
                    tracing::info!("no longer leading");
                    shell.leader = false;
                }
                shell.sweep()?;
                shell.maybe_flush_changelog().await?;
                shell.flush_offsets();
                if ticks % 30 == 1 {
                    let s = shell.stats;
                    tracing::info!(consumed = s.consumed, produced = s.produced, dead_lettered = s.dead_lettered, in_flight = shell.in_flight(), leader = shell.leader, "progress");
                }
                continue;
            }
            _ = transaction_tick.tick(), if shell.eos => {
                // An idle pipeline commits what it did too.
                if shell.in_transaction && shell.last_transaction.elapsed() >= TRANSACTION_EVERY {
                    shell.commit_transaction(&shared).await?;
                }
                continue;
            }
            // Fair shares: requests go first, but after CONTROL_EVERY of them in a row a ready
            // control message does (neither consumer starves the other).
            m = control.recv(), if control_ready && requests_streak >= CONTROL_EVERY => m.map(|m| (m, Source::Control)),
            m = consumer.recv() => m.map(|m| (m, Source::Requests)),
            m = control.recv(), if control_ready && requests_streak < CONTROL_EVERY => m.map(|m| (m, Source::Control)),
        };
        match msg {
            Ok((m, source)) => {
                failing_since = None;
                requests_streak = if source == Source::Requests { requests_streak.saturating_add(1) } else { 0 };
                shell.handle(&shared, &m, source).await?;
                shell.in_transaction = true;
                if shell.eos && shell.last_transaction.elapsed() >= TRANSACTION_EVERY {
                    shell.commit_transaction(&shared).await?;
                } else if shell.stats.consumed % 64 == 0 {
                    shell.maybe_flush_changelog().await?;
                }
            }
            Err(e) => {
                // librdkafka retries and reconnects by itself; say so and carry on, unless
                // nothing but errors has come for CONSUMER_GIVE_UP.
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= CONSUMER_GIVE_UP {
                    return Err(RunError::ConsumerDown(since.elapsed(), e));
                }
                tracing::warn!(error = %e, "consumer error");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    if !shell.eos {
        shell.flush_changelog().await?;
    }
    tracing::info!(in_flight = shell.in_flight(), "shutting down: finishing deliveries");
    if let Err(e) = tokio::task::block_in_place(|| producer.flush(DRAIN_TIMEOUT)) {
        tracing::warn!(error = %e, in_flight = shell.in_flight(), "deliveries still in flight after {DRAIN_TIMEOUT:?}: their inputs will be processed again");
    }
    shell.sweep()?;
    if shell.eos {
        shell.commit_transaction(&shared).await?;
    }
    exit_guard.armed = false;
    shell.flush_offsets();
    shell.commit_control(CommitMode::Sync);
    let stats = shell.stats;
    // Synchronous commit blocks: keep it off the async workers. (Exactly-once has committed its
    // offsets in the last transaction; nothing is stored, so this finds no offset.)
    tokio::task::block_in_place(|| match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(e) => Err(e),
    })?;
    consumer.unsubscribe();
    tracing::info!(
        consumed = stats.consumed,
        produced = stats.produced,
        dead_lettered = stats.dead_lettered,
        already_counted = stats.already_counted,
        "stopped"
    );
    Ok(stats)
}

/// The user and request type of a decision among a request's outputs.
fn decision(o: &Output) -> Option<(&str, &str)> {
    match o {
        Output::Decision(d) => Some((&d.user_id, &d.request_type)),
        _ => None,
    }
}

/// Refuses to start when the changelog has fewer partitions than the requests topic.
fn check_changelog_partitions(producer: &OutputProducer, t: &crate::config::TopicsConfig) -> Result<(), RunError> {
    let count = |topic: &str| -> Result<usize, RunError> {
        let md = tokio::task::block_in_place(|| producer.client().fetch_metadata(Some(topic), Duration::from_secs(30)))?;
        Ok(md.topics().first().map_or(0, |m| m.partitions().len()))
    };
    let (requests, changelog) = (count(&t.requests)?, count(&t.changelog)?);
    if changelog < requests {
        return Err(RunError::ChangelogPartitions { changelog: t.changelog.clone(), has: changelog, requests: t.requests.clone(), needs: requests });
    }
    Ok(())
}

