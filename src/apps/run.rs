//! `surgeguard run`: the Kafka clients, the restarts in place around one run of the pipeline,
//! and the run itself (its loop is `kafka/event_loop.rs`; each message goes through `shell.rs`).
//!
//! The configured group's consumer reads the requests topic; each message is decoded (or sent
//! to the DLQ with KIP-1034 headers), processed by the same `Topology` replay uses, and its
//! outputs are produced keyed as docs/topics.md says. Offsets are stored for commit only once every
//! output of a message, and of every earlier message of its partition, is acknowledged by the
//! broker (`OffsetTracker`): at-least-once. The producer's own thread applies each delivery
//! report to that bookkeeping as it arrives (`deliveries::DeliveryContext`); the main loop takes the
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
//! Time: processors run on event time; after `kafka.wall_clock_after_idle_ms` without input, event
//! time moves on to the wall clock so timers still fire (`Shell::wall_clock`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;

use crate::kafka::usage::UsageReader;

use crate::kafka::client::client_config;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaErrorCode;

use crate::api::server::ApiState;
use crate::config::{Config, Guarantee};
use crate::core::topology::Topology;
use crate::kafka::control;
use crate::kafka::deliveries::{Deliveries, DeliveryContext, OutputProducer};
use crate::kafka::event_loop::{Inputs, event_loop};
use crate::kafka::metrics::Metrics;
use crate::kafka::quarantine::Quarantine;
use crate::kafka::reach;
use crate::kafka::rebalance::RunContext;
use crate::kafka::shared::{Shared, lock};
use crate::kafka::shell::Shell;
pub use crate::kafka::shell::{RunError, RunStats};
use crate::kafka::topics;

/// Marks the shared state "commit nothing" when `run_with` leaves with an error.
struct NoCommitOnError<'p> {
    shared: Arc<Mutex<Shared>>,
    armed: bool,
    /// Exactly-once: the producer whose open transaction an error exit aborts at once (rather
    /// than leave it to time out, holding read_committed readers back meanwhile).
    transactional: Option<&'p OutputProducer>,
}

impl Drop for NoCommitOnError<'_> {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.shared).no_commit = true;
            if let Some(producer) = self.transactional
                && let Err(e) = producer.abort_transaction(Duration::from_secs(5))
            {
                tracing::warn!(error = %e, "aborting the open transaction on the way out failed: it times out instead");
            }
        }
    }
}

/// How long a starting instance reads the control topics' recent past before it goes on.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);

/// How long reading a partition's changelog may take before the service gives up.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long shutdown waits for the deliveries in flight before giving up on them (their offsets
/// are then not committed, so they are processed again after the restart).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// What a caller of `run_with` may add to the config.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// Extra consumer properties (the embedded demo shortens fetch waits: the mock cluster holds
    /// every fetch for the full `fetch.wait.max.ms`).
    pub consumer_overrides: &'a [(&'a str, &'a str)],
    /// Configs to apply while running (`config::reload::watch`): tier limits, the throttle
    /// table, breaker thresholds and alert rules.
    pub reload: Option<tokio::sync::mpsc::Receiver<Arc<Config>>>,
    /// Told the HTTP API's address once it listens (dropped unsent when the API is off).
    pub on_api: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
}

/// Runs the pipeline against `brokers` until `shutdown` completes, then finishes the work in
/// flight, commits and leaves the group.
pub async fn run(cfg: Arc<Config>, brokers: &str, shutdown: impl Future<Output = ()>) -> Result<RunStats, RunError> {
    run_with(cfg, brokers, RunOptions::default(), shutdown).await
}

/// As `run`, with the caller's `options`. A failure of the clients, the broker or a rebalance
/// (`RunError::restartable`) does not stop the service once it has started: the pipeline starts
/// again in the process, as Kafka Streams replaces a failed stream thread, with new clients
/// (a new transactional producer under exactly-once) and its state restored as after a crash
/// (the control topics read again, each partition's limiter state from the changelog), after
/// `kafka.restart_backoff_ms` (doubling up to `kafka.restart_backoff_max_ms` while restarts
/// come quickly). The HTTP API stays up meanwhile and answers "not ready". An input whose
/// outputs cause `kafka.quarantine_after` restarts in a row is quarantined (`quarantine.rs`).
pub async fn run_with(cfg: Arc<Config>, brokers: &str, options: RunOptions<'_>, shutdown: impl Future<Output = ()>) -> Result<RunStats, RunError> {
    let RunOptions { consumer_overrides, mut reload, mut on_api } = options;
    tokio::pin!(shutdown);
    let mut cfg = cfg;
    let mut service: Option<Service> = None;
    let mut quarantine = Quarantine::new(cfg.kafka.quarantine_after);
    let mut total = RunStats::default();
    let mut backoff = Backoff::new(&cfg);
    loop {
        let started = Instant::now();
        let mut stats = RunStats::default();
        let mut reloaded = None;
        let pipeline = Pipeline {
            cfg: cfg.clone(),
            brokers,
            consumer_overrides,
            reload: &mut reload,
            reloaded: &mut reloaded,
            on_api: &mut on_api,
            quarantine: &quarantine,
        };
        let result = run_pipeline(pipeline, &mut service, &mut stats, shutdown.as_mut()).await;
        total.add(&stats);
        if let Some(new) = reloaded {
            cfg = new;
        }
        let e = match result {
            Ok(()) => break,
            Err(e) => e,
        };
        let Some(svc) = service.as_ref().filter(|_| e.restartable()) else {
            stop_api(service.take()).await;
            return Err(e);
        };
        svc.ready.store(false, Ordering::SeqCst);
        svc.metrics.restarts.inc();
        total.restarts += 1;
        if quarantine.failed(e.input(), &e.to_string()) {
            tracing::error!(input = ?e.input(), restarts = quarantine.after(), "an input's outputs failed restart after restart: it goes to the DLQ as quarantined");
        }
        svc.metrics.set_table_entries("quarantine", quarantine.len());
        // (A run of failures of one input is counted however long each run lasted: a delivery
        // that times out fails only after librdkafka's message.timeout.ms, 300 s.)
        let wait = backoff.next(started.elapsed()).max(backoff.first);
        tracing::error!(error = %e, restart_in = ?wait, restarts = total.restarts, "the pipeline failed: starting it again (new clients, state restored from Kafka)");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.as_mut() => break,
        }
    }
    stop_api(service.take()).await;
    tracing::info!(
        consumed = total.consumed,
        produced = total.produced,
        dead_lettered = total.dead_lettered,
        already_counted = total.already_counted,
        decided_before = total.decided_before,
        restarts = total.restarts,
        quarantined = total.quarantined,
        "stopped"
    );
    Ok(total)
}

/// How long to wait before the next restart: `restart_backoff_ms`, doubling while restarts
/// come within a minute of each other, up to `restart_backoff_max_ms`.
struct Backoff {
    first: Duration,
    max: Duration,
    current: Duration,
}

/// A run at least this long was not part of a run of failures: the backoff starts afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

impl Backoff {
    fn new(cfg: &Config) -> Self {
        let first = Duration::from_millis(u64::from(cfg.kafka.restart_backoff_ms));
        Backoff { first, max: Duration::from_millis(u64::from(cfg.kafka.restart_backoff_max_ms)).max(first), current: first }
    }

    /// The wait after a run that lasted `ran`; zero when that run was healthy (then the first
    /// wait follows).
    fn next(&mut self, ran: Duration) -> Duration {
        if ran >= HEALTHY_RUN {
            self.current = self.first;
            return Duration::ZERO;
        }
        let wait = self.current;
        self.current = (self.current * 2).min(self.max);
        wait
    }
}

/// What outlives a restart of the pipeline: the HTTP API (with the shared state it reads,
/// replaced in place by each run), the metrics and the readiness flag.
struct Service {
    shared: Arc<Mutex<Shared>>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    api: Option<ApiTask>,
}

/// One run of the pipeline's inputs.
struct Pipeline<'a> {
    cfg: Arc<Config>,
    brokers: &'a str,
    consumer_overrides: &'a [(&'a str, &'a str)],
    reload: &'a mut Option<tokio::sync::mpsc::Receiver<Arc<Config>>>,
    /// The last config reloaded during the run: the next run starts with it.
    reloaded: &'a mut Option<Arc<Config>>,
    on_api: &'a mut Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
    quarantine: &'a Quarantine,
}

/// One run of the pipeline: client set-up, the control state rebuilt, the event loop, then
/// shutdown. The first run starts the service (`service`); later ones reuse it. What the run
/// did goes to `stats`, whether it ends well or not.
async fn run_pipeline(p: Pipeline<'_>, service: &mut Option<Service>, stats: &mut RunStats, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let Pipeline { cfg, brokers, consumer_overrides, reload, reloaded, on_api, quarantine } = p;
    let clients = Clients::connect(&cfg, brokers, consumer_overrides).await?;
    let (fresh, control, control_from) = rebuild_control_state(&cfg, &clients).await?;
    let svc = match service {
        Some(svc) => {
            let mut fresh = fresh;
            let mut sh = lock(&svc.shared);
            // What the API answered stays answered: its decisions not yet published go out with
            // this run, and a retried request id gets the same answer.
            fresh.api_outputs = std::mem::take(&mut sh.api_outputs);
            fresh.api_recent = std::mem::take(&mut sh.api_recent);
            *sh = fresh;
            drop(sh);
            svc
        }
        None => service.insert(start_service(&cfg, &clients, fresh, on_api).await?),
    };
    let (shared, metrics, ready) = (svc.shared.clone(), svc.metrics.clone(), svc.ready.clone());
    let rebalances = Arc::new(AtomicU64::new(0));
    let context = RunContext {
        shared: shared.clone(),
        deliveries: clients.deliveries.clone(),
        requests_topic: cfg.topics.requests.clone(),
        changelog_topic: cfg.topics.changelog.clone(),
        usage_topic: cfg.topics.usage.clone(),
        decisions_topic: clients.keep_first_decisions.then(|| cfg.topics.decisions.clone()),
        group_id: cfg.kafka.group_id.clone(),
        restore_client: clients.consumer_config.clone(),
        producer: clients.producer.clone(),
        restore_timeout: RESTORE_TIMEOUT,
        flush_timeout: DRAIN_TIMEOUT,
        exactly_once: clients.exactly_once,
        ready: ready.clone(),
        metrics: metrics.clone(),
        rebalances: rebalances.clone(),
    };
    let consumer = clients.group_consumer(&cfg, context, svc.api.as_ref().map(|(_, addr)| *addr))?;
    let t = &cfg.topics;
    tracing::info!(brokers, group = %cfg.kafka.group_id, requests = %t.requests, control = ?[&t.outcomes, &t.telemetry, &t.admin], "consuming");
    let mut shell = Shell::new(&cfg, &consumer, &clients.producer, shared.clone(), clients.deliveries.clone(), metrics, quarantine);
    if clients.keep_first_decisions {
        shell.keep_first_decisions();
    }
    // Silent this long: its owner is gone (owners send a record every commit interval).
    let excuse_after = Duration::from_millis(u64::from(cfg.kafka.usage_silence_ms).max(u64::from(cfg.kafka.commit_interval_ms).saturating_mul(3)));
    let mut reader = tokio::task::block_in_place(|| UsageReader::new(&clients.consumer_config, &cfg.topics.usage, excuse_after))?;
    tokio::task::block_in_place(|| reader.catch_up(&mut crate::kafka::shared::lock(&shared), USAGE_CATCH_UP_TIMEOUT));
    shell.read_usage(reader);
    crate::kafka::shared::lock(&shared).topology.publish_usage();
    // Declared after the consumer, so dropped before it: an error exit marks the state so that
    // the revocation closing the consumer brings commits nothing.
    let transactional = clients.exactly_once.then_some(&clients.producer);
    let mut exit_guard = NoCommitOnError { shared: shared.clone(), armed: true, transactional };
    let idle_after = Duration::from_millis(u64::from(cfg.kafka.wall_clock_after_idle_ms));
    let inputs = Inputs { requests: &consumer, control: &control, control_from, wake: &svc.wake, reload, reloaded, rebalances };
    let result = async {
        event_loop(&mut shell, inputs, idle_after, shutdown).await?;
        // No more API decisions (they check readiness under the lock), then what they queued
        // goes out before the changelog and the final flush.
        ready.store(false, Ordering::SeqCst);
        shell.finish(DRAIN_TIMEOUT).await
    }
    .await;
    *stats = shell.stats;
    result?;
    exit_guard.armed = false;
    *stats = leave(shell, &consumer).await?;
    Ok(())
}

/// The first run's set-up of what outlives restarts: the metrics, the HTTP API (started here,
/// its address sent to `on_api`) and the shared state it reads.
async fn start_service(
    cfg: &Arc<Config>,
    clients: &Clients,
    shared: Shared,
    on_api: &mut Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<Service, RunError> {
    let shared = Arc::new(Mutex::new(shared));
    let metrics = Arc::new(Metrics::new(cfg).map_err(|e| RunError::Api(format!("metrics: {e}")))?);
    let ready = Arc::new(AtomicBool::new(false));
    let mut api_state = ApiState::new(cfg, shared.clone(), metrics.clone(), ready.clone());
    api_state.admin = admin_sink(cfg, &clients.base)?;
    let wake = api_state.wake.clone();
    let api = start_api(cfg, api_state).await?;
    if let (Some(tx), Some((_, addr))) = (on_api.take(), &api) {
        tx.send(*addr).ok();
    }
    Ok(Service { shared, metrics, ready, wake, api })
}

/// Stops the HTTP API: open connections get a few seconds to finish.
async fn stop_api(service: Option<Service>) {
    if let Some(((stop, task), _)) = service.and_then(|s| s.api) {
        stop.send(()).ok();
        if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
            tracing::warn!("the HTTP API did not stop within 5 s");
        }
    }
}

/// How long a starting instance reads the usage topic (the others' usage and the leader's views)
/// before it goes on without the rest.
const USAGE_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `run` waits at start-up for the brokers to answer before it gives up.
const REACH_DEADLINE: Duration = Duration::from_secs(30);

/// The clients `run` starts with, before it joins the group.
struct Clients {
    /// The brokers and the pass-through properties: every client's start.
    base: ClientConfig,
    /// Consumers: read_committed, with the caller's overrides.
    consumer_config: ClientConfig,
    producer: OutputProducer,
    deliveries: Arc<Mutex<Deliveries>>,
    exactly_once: bool,
    requests_partitions: usize,
    /// Re-decisions take the first decisions from the decisions topic (`first_decisions.rs`).
    keep_first_decisions: bool,
}

impl Clients {
    /// Creates the missing topics (when configured to), the producer (with its transactions
    /// under exactly-once), and checks the changelog's partitions against the requests topic's.
    async fn connect(cfg: &Config, brokers: &str, consumer_overrides: &[(&str, &str)]) -> Result<Clients, RunError> {
        let base = client_config(cfg, brokers);
        let found = reach::wait_for_brokers(&base, brokers, REACH_DEADLINE).await?;
        tracing::debug!(brokers, found, "the cluster answers");
        if cfg.kafka.create_topics {
            tracing::info!(brokers, "checking topics (and creating the missing ones)");
            let created = topics::ensure(&base, cfg).await?;
            if !created.is_empty() {
                tracing::info!(topics = ?created, "created missing topics");
            }
        }
        let mut consumer_config = base.clone();
        for (k, v) in consumer_overrides {
            consumer_config.set(*k, *v);
        }
        // Inputs, changelog and control topics alike: only committed transactions are read.
        consumer_config.set("isolation.level", "read_committed");
        let exactly_once = cfg.kafka.guarantee == Guarantee::ExactlyOnce;
        let mut producer_config = base.clone();
        // linger.ms stays librdkafka's default (5 ms) unless kafka.properties sets it.
        producer_config.set("enable.idempotence", "true").set("acks", "all");
        if exactly_once {
            // Unique per process: with KIP-447 the group's generation fences a zombie instance.
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
            producer_config.set("transactional.id", format!("{}-{}-{nanos}", cfg.kafka.group_id, std::process::id()));
            // A transaction left open by a crashed instance blocks read_committed readers (the
            // changelog restore among them) until it times out: keep that short, as Kafka
            // Streams does.
            producer_config.set("transaction.timeout.ms", "10000");
        }
        let deliveries = Arc::new(Mutex::new(Deliveries::default()));
        let producer: OutputProducer = producer_config.create_with_context(DeliveryContext { deliveries: deliveries.clone() })?;
        if exactly_once {
            tokio::task::block_in_place(|| producer.init_transactions(Duration::from_secs(30)))?;
            producer.begin_transaction()?;
            tracing::info!("exactly-once: outputs, limiter state and offsets commit together");
        }
        let Partitions { requests: requests_partitions, decisions } = check_changelog_partitions(&producer, &cfg.topics)?;
        // Exactly-once needs none of it: a crash aborts the open transaction's decisions.
        let keep_first_decisions = cfg.kafka.keep_first_decisions && !exactly_once && decisions == requests_partitions;
        if cfg.kafka.keep_first_decisions && !exactly_once && !keep_first_decisions {
            tracing::warn!(
                decisions_topic = %cfg.topics.decisions,
                decisions,
                requests = requests_partitions,
                "kafka.keep_first_decisions needs the decisions topic to have as many partitions as the requests topic: requests processed again after a crash are decided again"
            );
        }
        Ok(Clients { base, consumer_config, producer, deliveries, exactly_once, requests_partitions, keep_first_decisions })
    }

    /// The group's consumer of the requests topic, subscribed.
    fn group_consumer(&self, cfg: &Config, context: RunContext, api: Option<std::net::SocketAddr>) -> Result<StreamConsumer<RunContext>, RunError> {
        let mut config = self.consumer_config.clone();
        let set_unless_configured = |config: &mut ClientConfig, key: &str, value: String| {
            if !cfg.kafka.properties.contains_key(key) {
                config.set(key, value);
            }
        };
        // The consumer lag for /metrics comes with librdkafka's statistics.
        set_unless_configured(&mut config, "statistics.interval.ms", "5000".into());
        // The changelog restore runs inside the consumer's poll (the assignment callback): a
        // restore that takes up to RESTORE_TIMEOUT must not count as a consumer that stopped
        // polling (librdkafka's default max.poll.interval.ms is exactly 300 s).
        set_unless_configured(&mut config, "max.poll.interval.ms", (RESTORE_TIMEOUT + Duration::from_secs(60)).as_millis().to_string());
        // The group's member list (kafka-consumer-groups.sh --describe) then shows where each
        // instance's API answers for the partitions it owns.
        if let Some(addr) = api {
            set_unless_configured(&mut config, "client.id", format!("surgeguard-api-{addr}"));
        }
        // Offsets stored (after their outputs and the changelog are delivered) reach the group
        // within a commit interval, not librdkafka's 5 s: less is decided twice after a crash.
        set_unless_configured(&mut config, "auto.commit.interval.ms", cfg.kafka.commit_interval_ms.max(100).to_string());
        // Static membership (KIP-345): a restarted instance with the same name gets its
        // partitions back at once, without a rebalance or waiting out the dead member's session.
        if !cfg.kafka.instance_name.is_empty() {
            config.set("group.instance.id", &cfg.kafka.instance_name);
        }
        let consumer: StreamConsumer<RunContext> = config
            .set("group.id", &cfg.kafka.group_id)
            // Exactly-once commits offsets in the transaction, never on its own.
            .set("enable.auto.commit", if self.exactly_once { "false" } else { "true" })
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create_with_context(context)?;
        consumer.subscribe(&[cfg.topics.requests.as_str()])?;
        Ok(consumer)
    }
}

/// The control side rebuilt: the shared state, the control consumer, and where it resumes each
/// partition.
type ControlState = (Shared, StreamConsumer, Vec<(crate::kafka::offsets::Partition, i64)>);

/// The control side first: every partition of the control topics, from the lookback on, folded
/// into the topology before this instance decides anything. Returns the shared state and the
/// control consumer, positioned for the main loop.
async fn rebuild_control_state(cfg: &Arc<Config>, clients: &Clients) -> Result<ControlState, RunError> {
    let group = &cfg.kafka.group_id;
    let control: StreamConsumer = clients.consumer_config.clone().set("group.id", group).set("enable.auto.commit", "false").create()?;
    let predictor = crate::history::prediction_setup::load(&cfg.prediction).await?;
    let mut topology = Topology::new(cfg.clone()).with_predictor(predictor);
    if cfg.kafka.wall_clock_after_idle_ms > 0 {
        topology.set_time_floor(crate::kafka::clock::wall_clock());
    }
    let mut plan = control::assign(&control, cfg)?;
    let resume = std::mem::take(&mut plan.resume);
    let started = Instant::now();
    let catch_up_client = clients.consumer_config.clone().set("group.id", format!("{group}.catch-up")).clone();
    let read = control::catch_up(&catch_up_client, plan, &mut topology, cfg, CATCH_UP_TIMEOUT).await?;
    tracing::info!(messages = read, took = ?started.elapsed(), lookback_s = cfg.kafka.control_lookback_s, "control state rebuilt from the control topics");
    let mut sh = Shared::new(topology);
    sh.requests_partitions = clients.requests_partitions;
    // Before the first assignment too: the fold must wait for every requests partition, not
    // close cells on the partitions whose records it has seen so far.
    sh.topology.set_requests_partitions(clients.requests_partitions);
    sh.api_recent = crate::core::idempotency::RecentDecisions::new(cfg.api.idempotency_window_s, cfg.api.idempotency_capacity)
        .with_max_bytes(cfg.api.idempotency_max_bytes as usize);
    Ok((sh, control, resume))
}

/// The last of shutdown: stores and commits the delivered offsets and leaves the group.
async fn leave(mut shell: Shell<'_>, consumer: &StreamConsumer<RunContext>) -> Result<RunStats, RunError> {
    shell.store_final();
    let stats = shell.stats;
    drop(shell);
    // Synchronous commit blocks: keep it off the async workers. (Exactly-once has committed its
    // offsets in the last transaction; nothing is stored, so this finds no offset.)
    tokio::task::block_in_place(|| match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(e) => Err(e),
    })?;
    consumer.unsubscribe();
    Ok(stats)
}

/// The admin endpoints' token and producer, when `api.admin_token_env` names a set variable.
fn admin_sink(cfg: &Config, base: &ClientConfig) -> Result<Option<Arc<crate::api::state::Admin>>, RunError> {
    let token = std::env::var(&cfg.api.admin_token_env).unwrap_or_default();
    if cfg.api.listen.is_empty() || token.trim().is_empty() {
        tracing::info!(variable = %cfg.api.admin_token_env, "admin endpoints off (no token)");
        return Ok(None);
    }
    let producer = base.clone().set("enable.idempotence", "true").set("acks", "all").create()?;
    tracing::info!(variable = %cfg.api.admin_token_env, "admin endpoints on");
    Ok(Some(Arc::new(crate::api::state::Admin { token: token.trim().to_string(), producer, topic: cfg.topics.admin.clone() })))
}

type ApiTask = ((tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>), std::net::SocketAddr);

/// Binds `[api] listen` (unless empty) and serves the API until the returned sender fires.
async fn start_api(cfg: &Config, state: ApiState) -> Result<Option<ApiTask>, RunError> {
    if cfg.api.listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&cfg.api.listen).await.map_err(|e| RunError::Api(format!("api.listen = {:?}: {e}", cfg.api.listen)))?;
    let addr = listener.local_addr().map_err(|e| RunError::Api(e.to_string()))?;
    tracing::info!("HTTP API on http://{addr}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let max_body = cfg.api.max_body_bytes;
    let task = tokio::spawn(async move {
        if let Err(e) = crate::api::server::serve(listener, state, max_body, async {
            stopped.await.ok();
        })
        .await
        {
            tracing::error!(error = %e, "the HTTP API stopped");
        }
    });
    Ok(Some(((stop, task), addr)))
}

/// Refuses to start when the changelog has fewer partitions than the requests topic; returns the
/// requests topic's partition count.
/// Partition counts `run` needs to know.
struct Partitions {
    requests: usize,
    decisions: usize,
}

/// The requests and decisions topics' partition counts; an error when the changelog has fewer
/// partitions than the requests topic, or the usage topic is missing.
fn check_changelog_partitions(producer: &OutputProducer, t: &crate::config::TopicsConfig) -> Result<Partitions, RunError> {
    let count = |topic: &str| -> Result<usize, RunError> {
        let md = tokio::task::block_in_place(|| producer.client().fetch_metadata(Some(topic), Duration::from_secs(30)))?;
        Ok(md.topics().first().map_or(0, |m| m.partitions().len()))
    };
    let (requests, changelog) = (count(&t.requests)?, count(&t.changelog)?);
    if changelog < requests {
        return Err(RunError::ChangelogPartitions { changelog: t.changelog.clone(), has: changelog, requests: t.requests.clone(), needs: requests });
    }
    if count(&t.usage)? == 0 {
        return Err(RunError::NoUsageTopic(t.usage.clone()));
    }
    Ok(Partitions { requests, decisions: count(&t.decisions)? })
}

/// `surgeguard run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: crate::apps::cli::ConfigArg,
    /// Bootstrap servers (overrides `kafka.brokers`).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Where the HTTP API listens (overrides `api.listen`; "" turns it off).
    #[arg(long)]
    pub api_listen: Option<String>,
    /// This instance's name in the group, for fast restarts (overrides `kafka.instance_name`).
    #[arg(long)]
    pub instance_name: Option<String>,
}

pub fn main(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs { config, brokers, api_listen, instance_name } = args;
    let mut cfg = config.load()?;
    if let Some(name) = instance_name {
        anyhow::ensure!(crate::config::load::valid_instance_name(&name), "--instance-name {name:?}: {}", crate::config::load::INSTANCE_NAME_RULE);
        let mut c = (*cfg).clone();
        c.kafka.instance_name = name;
        cfg = Arc::new(c);
    }
    if let Some(listen) = &api_listen {
        anyhow::ensure!(
            listen.is_empty() || listen.parse::<std::net::SocketAddr>().is_ok(),
            "--api-listen {listen:?}: expected \"\" or an address such as 0.0.0.0:8480"
        );
        let mut c = (*cfg).clone();
        c.api.listen = listen.clone();
        cfg = Arc::new(c);
    }
    let brokers = brokers.unwrap_or_else(|| cfg.kafka.brokers.clone());
    let path = config.path();
    crate::apps::cli::runtime()?.block_on(async {
        // Hot reload: SIGHUP or a change of the file (the same --api-listen applies to it).
        let reload = match path {
            Some(path) => {
                let adjust = move |c: &mut Config| {
                    if let Some(listen) = &api_listen {
                        c.api.listen = listen.clone();
                    }
                };
                Some(crate::config::reload::watch(path, cfg.clone(), Duration::from_secs(1), adjust))
            }
            None => {
                crate::config::reload::ignore_hangups();
                None
            }
        };
        run_with(cfg, &brokers, RunOptions { reload, ..RunOptions::default() }, crate::apps::cli::shutdown_signal()).await
    })?;
    Ok(())
}
