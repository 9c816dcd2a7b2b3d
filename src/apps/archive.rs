//! `surgeguard archive`: a consumer group on the requests topic that writes request history as
//! Parquet (`archive.rs` for the files and the crash rules). Per partition, records are buffered
//! and flushed when the buffer holds `max_rows` or its oldest record waited `flush_every`; after a
//! flush's files are in place the partition's offset is committed. A revoked partition's buffer
//! is dropped (its new owner reads it again from the committed offset); on shutdown every buffer
//! is flushed and committed. Messages that fail to decode are counted and skipped (`surgeguard
//! run` sends them to the DLQ).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::history::archive::{PartitionBuffer, Scan};
use crate::history::parquet::HistoryError;
use crate::kafka::shared::lock;
use crate::wire::decode;
use crate::wire::events::{InputEvent, InputTopic};

#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    pub dir: PathBuf,
    pub group: String,
    pub flush_every: Duration,
    pub max_rows: usize,
    /// How long an incomplete flush is left alone before a scan removes it as a crash's
    /// remains (its writer may still be renaming its files).
    pub incomplete_grace: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    pub consumed: u64,
    pub archived: u64,
    /// Records already in the archive (read again after a crash or a rebalance), skipped.
    pub already_archived: u64,
    pub undecodable: u64,
    pub files: u64,
    pub removed_incomplete: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("archive: {0}")]
    History(#[from] HistoryError),
    #[error(
        "the archive holds {topic} partition {partition} up to offset {archived}, but the partition ends at {end}: was the topic recreated? Archive it into another directory"
    )]
    Ahead { topic: String, partition: i32, archived: i64, end: i64 },
}

/// Fault injection for tests: exit abruptly after this many archive files have been renamed
/// into place (mid-flush or before the commit), as a crash would.
const FAULT_EXIT_AFTER_FILES: &str = "SURGEGUARD_FAULT_EXIT_AFTER_FILES";

/// Tells the loop which partitions the group took away and which it owns.
struct ArchiveContext {
    owned: Arc<Mutex<HashSet<i32>>>,
    revoked: Arc<Mutex<Vec<i32>>>,
    /// Bumped on every assignment: the loop's scan of the directory is then out of date.
    assignments: Arc<std::sync::atomic::AtomicU64>,
}

impl ClientContext for ArchiveContext {}

impl ConsumerContext for ArchiveContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut owned = lock(&self.owned);
            let mut revoked = lock(&self.revoked);
            for e in tpl.elements() {
                owned.remove(&e.partition());
                revoked.push(e.partition());
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut owned = lock(&self.owned);
            owned.extend(tpl.elements().iter().map(|e| e.partition()));
            self.assignments.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tracing::info!(partitions = ?owned, "archiving partitions");
        }
    }
}

struct Archiver<'a> {
    consumer: &'a StreamConsumer<ArchiveContext>,
    topic: String,
    limits: crate::wire::limits::InputLimits,
    opts: ArchiveOptions,
    buffers: HashMap<i32, (PartitionBuffer, Instant)>,
    /// The last offset already archived per partition (records at or below are skipped), from
    /// the scan when the partition was first seen.
    archived: HashMap<i32, Option<i64>>,
    /// The last offset seen per partition (archived, buffered or skipped), for the commit.
    seen: HashMap<i32, i64>,
    committed: HashMap<i32, i64>,
    stats: ArchiveStats,
    /// The directory's files as of the assignment `scanned_at` (rescanned after each).
    scan: Option<(u64, Scan)>,
    assignments: Arc<std::sync::atomic::AtomicU64>,
    files_renamed: u64,
    exit_after_files: Option<u64>,
}

impl Archiver<'_> {
    fn forget(&mut self, revoked: Vec<i32>) {
        for p in revoked {
            if let Some((b, _)) = self.buffers.remove(&p) {
                tracing::info!(partition = p, dropped = b.len(), "partition revoked: its buffered records are its new owner's");
            }
            self.archived.remove(&p);
            self.seen.remove(&p);
            self.committed.remove(&p);
        }
    }

    fn on_message(&mut self, partition: i32, offset: i64, payload: &[u8]) -> Result<(), ArchiveError> {
        self.stats.consumed += 1;
        // The position went back (a seek, a reset): records from here on come again.
        if self.seen.get(&partition).is_some_and(|&seen| offset <= seen) {
            tracing::warn!(partition, offset, "offsets went back: dropping the buffered records from here on");
            if let Some((b, _)) = self.buffers.get_mut(&partition) {
                b.truncate_from(offset);
            }
            self.seen.insert(partition, offset - 1);
        }
        let archived = match self.archived.get(&partition) {
            Some(a) => *a,
            None => {
                let a = self.recover(partition)?;
                self.archived.insert(partition, a);
                a
            }
        };
        let seen = self.seen.entry(partition).or_insert(offset);
        *seen = (*seen).max(offset);
        if archived.is_some_and(|a| offset <= a) {
            self.stats.already_archived += 1;
            return Ok(());
        }
        match decode::decode(InputTopic::Requests, payload, &self.limits) {
            Ok(InputEvent::Request(r)) => {
                let (b, _) = self.buffers.entry(partition).or_insert_with(|| (PartitionBuffer::default(), Instant::now()));
                b.push(offset, r);
                if b.len() >= self.opts.max_rows {
                    self.flush(partition)?;
                }
            }
            Ok(_) => self.stats.undecodable += 1,
            Err(e) => {
                self.stats.undecodable += 1;
                tracing::debug!(partition, offset, error = %e, "skipped an undecodable request");
            }
        }
        Ok(())
    }

    /// What the archive holds of `partition`, from the directory's files (scanned once per
    /// assignment); waits while another writer's incomplete flush is younger than the grace
    /// period.
    fn recover(&mut self, partition: i32) -> Result<Option<i64>, ArchiveError> {
        let (dir, topic) = (self.opts.dir.clone(), self.topic.clone());
        loop {
            let generation = self.assignments.load(std::sync::atomic::Ordering::SeqCst);
            if self.scan.as_ref().is_none_or(|(g, _)| *g != generation) {
                let scan = tokio::task::block_in_place(|| Scan::of(&dir, &topic))?;
                self.scan = Some((generation, scan));
            }
            let Some((_, scan)) = self.scan.as_mut() else { continue };
            let grace = self.opts.incomplete_grace;
            let r = tokio::task::block_in_place(|| scan.recover(partition, grace))?;
            for f in &r.removed {
                tracing::warn!(file = %f.display(), "removed a file of an incomplete flush (a crash between its renames)");
            }
            self.stats.removed_incomplete += r.removed.len() as u64;
            if r.wait {
                tracing::info!(partition, grace = ?grace, "an incomplete flush is younger than the grace period: waiting for its writer");
                tokio::task::block_in_place(|| std::thread::sleep(Duration::from_secs(1)));
                self.scan = None;
                continue;
            }
            if let Some(a) = r.archived_up_to {
                let consumer = self.consumer;
                let (_, end) = tokio::task::block_in_place(|| consumer.fetch_watermarks(&topic, partition, Duration::from_secs(30)))?;
                if a >= end {
                    return Err(ArchiveError::Ahead { topic, partition, archived: a, end });
                }
            }
            tracing::info!(partition, archived_up_to = ?r.archived_up_to, "archive scanned");
            return Ok(r.archived_up_to);
        }
    }

    /// Writes one partition's buffer, then commits everything seen in it.
    fn flush(&mut self, partition: i32) -> Result<(), ArchiveError> {
        if let Some((mut b, _)) = self.buffers.remove(&partition) {
            let rows = b.len() as u64;
            let (dir, topic) = (self.opts.dir.clone(), self.topic.clone());
            let (renamed, exit_after) = (&mut self.files_renamed, self.exit_after_files);
            let mut on_file = |path: &std::path::Path| {
                *renamed += 1;
                if exit_after.is_some_and(|n| *renamed >= n) {
                    eprintln!("fault injection: exiting after {renamed} files ({})", path.display());
                    std::process::exit(86);
                }
            };
            let written = tokio::task::block_in_place(|| b.flush(&dir, &topic, partition, &mut on_file));
            match written {
                Ok(Some((files, last))) => {
                    self.stats.archived += rows;
                    self.stats.files += files.len() as u64;
                    self.archived.insert(partition, Some(last));
                    tracing::debug!(partition, rows, files = files.len(), last, "flushed");
                }
                Ok(None) => {}
                Err(e) => {
                    // The archive stops: its renamed files, if any, are an incomplete flush that
                    // the next start removes, and the offsets were not committed.
                    self.buffers.insert(partition, (b, Instant::now()));
                    return Err(e.into());
                }
            }
        }
        self.commit(partition)
    }

    fn commit(&mut self, partition: i32) -> Result<(), ArchiveError> {
        let Some(&seen) = self.seen.get(&partition) else { return Ok(()) };
        // Records after the last flushed one are still buffered: commit up to the flush only.
        let upto = match self.buffers.get(&partition) {
            Some((b, _)) if !b.is_empty() => return Ok(()),
            _ => seen,
        };
        if self.committed.get(&partition) == Some(&upto) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(upto + 1))?;
        let consumer = self.consumer;
        match tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync)) {
            Ok(()) => {
                self.committed.insert(partition, upto);
            }
            // The files hold the truth; the next sweep commits again.
            Err(e) => tracing::warn!(partition, error = %e, "commit failed; retrying with the next sweep"),
        }
        Ok(())
    }

    /// Flushes the buffers that are full or old enough; commits partitions with only skipped
    /// records since their last commit.
    fn sweep(&mut self, all: bool) -> Result<(), ArchiveError> {
        let due: Vec<i32> = self.buffers.iter().filter(|(_, (_, since))| all || since.elapsed() >= self.opts.flush_every).map(|(p, _)| *p).collect();
        for p in due {
            self.flush(p)?;
        }
        let idle: Vec<i32> = self.seen.keys().copied().filter(|p| !self.buffers.contains_key(p)).collect();
        for p in idle {
            self.commit(p)?;
        }
        Ok(())
    }
}

/// Archives the requests topic into `opts.dir` until `shutdown` completes.
pub async fn archive(cfg: Arc<Config>, brokers: &str, opts: ArchiveOptions, shutdown: impl Future<Output = ()>) -> Result<ArchiveStats, ArchiveError> {
    let owned = Arc::new(Mutex::new(HashSet::new()));
    let revoked = Arc::new(Mutex::new(Vec::new()));
    let assignments = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let exit_after_files = std::env::var(FAULT_EXIT_AFTER_FILES).ok().and_then(|v| v.parse().ok());
    let consumer: StreamConsumer<ArchiveContext> = crate::kafka::client::client_config(&cfg, brokers)
        .set("group.id", &opts.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create_with_context(ArchiveContext { owned: owned.clone(), revoked: revoked.clone(), assignments: assignments.clone() })?;
    let topic = cfg.topics.requests.clone();
    consumer.subscribe(&[topic.as_str()])?;
    tracing::info!(brokers, group = %opts.group, topic = %topic, dir = %opts.dir.display(), "archiving");
    let mut a = Archiver {
        consumer: &consumer,
        topic,
        limits: cfg.limits,
        opts: opts.clone(),
        buffers: HashMap::new(),
        archived: HashMap::new(),
        seen: HashMap::new(),
        committed: HashMap::new(),
        stats: ArchiveStats::default(),
        scan: None,
        assignments,
        files_renamed: 0,
        exit_after_files,
    };
    let mut tick = tokio::time::interval(opts.flush_every.clamp(Duration::from_millis(50), Duration::from_secs(1)));
    let mut ticks = 0u64;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                a.forget(std::mem::take(&mut *lock(&revoked)));
                a.sweep(false)?;
                ticks += 1;
                if ticks % 60 == 1 {
                    let s = a.stats;
                    tracing::info!(consumed = s.consumed, archived = s.archived, files = s.files, already_archived = s.already_archived, undecodable = s.undecodable, "progress");
                }
            }
            m = consumer.recv() => {
                a.forget(std::mem::take(&mut *lock(&revoked)));
                match m {
                    Ok(m) => {
                        if !lock(&owned).contains(&m.partition()) {
                            continue;
                        }
                        a.on_message(m.partition(), m.offset(), m.payload().unwrap_or(&[]))?;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
    a.forget(std::mem::take(&mut *lock(&revoked)));
    a.sweep(true)?;
    let stats = a.stats;
    consumer.unsubscribe();
    tracing::info!(
        consumed = stats.consumed,
        archived = stats.archived,
        files = stats.files,
        already_archived = stats.already_archived,
        undecodable = stats.undecodable,
        "stopped"
    );
    Ok(stats)
}

/// `surgeguard archive`.
#[derive(clap::Args, Debug)]
pub struct ArchiveArgs {
    #[command(flatten)]
    pub config: crate::apps::cli::ConfigArg,
    /// Bootstrap servers (overrides `kafka.brokers`).
    #[arg(long)]
    pub brokers: Option<String>,
    /// The archive directory.
    #[arg(long)]
    pub out: std::path::PathBuf,
    /// The consumer group (default: `kafka.group_id` + `.archive`).
    #[arg(long)]
    pub group: Option<String>,
    /// Flush a partition's buffer once its oldest record has waited this long.
    #[arg(long, default_value = "60s")]
    pub flush_every: String,
    /// Flush a partition's buffer once it holds this many records.
    #[arg(long, default_value_t = 100_000)]
    pub max_rows: usize,
    /// Leave an incomplete flush (fewer files than its name says) this long before removing
    /// it as a crash's remains: its writer may still be renaming its files.
    #[arg(long, default_value = "30s")]
    pub incomplete_grace: String,
}

pub fn main(args: &ArchiveArgs) -> anyhow::Result<()> {
    use crate::forecast::series::parse_resolution;
    let cfg = args.config.load()?;
    let brokers = args.brokers.clone().unwrap_or_else(|| cfg.kafka.brokers.clone());
    let (flush_every, grace) = (&args.flush_every, &args.incomplete_grace);
    let flush_ms = parse_resolution(flush_every).map_err(|_| anyhow::anyhow!("--flush-every {flush_every:?}: expected a duration such as 500ms, 30s or 5m"))?;
    anyhow::ensure!(args.max_rows >= 1, "--max-rows must be at least 1");
    let grace_ms = if grace.trim() == "0" {
        0
    } else {
        parse_resolution(grace).map_err(|_| anyhow::anyhow!("--incomplete-grace {grace:?}: expected 0 or a duration such as 30s"))?
    };
    let group = args.group.clone().unwrap_or_else(|| format!("{}.archive", cfg.kafka.group_id));
    let opts = ArchiveOptions {
        dir: args.out.clone(),
        group,
        flush_every: std::time::Duration::from_millis(flush_ms as u64),
        max_rows: args.max_rows,
        incomplete_grace: std::time::Duration::from_millis(grace_ms as u64),
    };
    let rt = crate::apps::cli::runtime()?;
    // The signal handler needs the runtime's reactor.
    let shutdown = {
        let _in = rt.enter();
        crate::apps::cli::shutdown_signal()
    };
    let stats = rt.block_on(archive(cfg, &brokers, opts, shutdown))?;
    eprintln!(
        "archived {} requests in {} files ({} read again and skipped, {} undecodable skipped, {} files of incomplete flushes removed)",
        stats.archived, stats.files, stats.already_archived, stats.undecodable, stats.removed_incomplete
    );
    Ok(())
}
