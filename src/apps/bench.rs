//! `surgeguard bench`: end-to-end throughput and produce→decision latency of `surgeguard run` on
//! a real broker, beside passthroughs (consume → produce the same bytes, no processing) on the
//! same broker in the same run, so the ratio says what the processing costs: the lean
//! passthrough (`lean_passthrough`: one thread, `BaseConsumer` → `BaseProducer`, tuned), the
//! practical limit of the broker and machine, and kcat's (`kcat -C | kcat -P`) when kcat is
//! installed, a reference anyone can run without this code.
//!
//! Each side gets its own topics. Throughput: N request events are produced first, then the
//! processor starts; the rate is measured from its first output to its last. Latency: events are
//! then produced at a fixed rate, each stamped with its send time as its event time, and the
//! latency of an output is the time it is read minus that stamp (same clock: one machine).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::apps::run::{self, RunError};
use crate::apps::scenario::{Demand, Surge};
use crate::config::Config;
use crate::kafka::topics;
use crate::wire::events::RequestEvent;
use crate::wire::time::Millis;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("surgeguard run: {0}")]
    Run(#[from] RunError),
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the reader task failed: {0}")]
    Task(String),
    #[error("only {got} of {want} outputs arrived within {secs} s")]
    Incomplete { got: usize, want: usize, secs: u64 },
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events for the throughput phase.
    pub events: usize,
    /// Events per second in the latency phase.
    pub rate: u32,
    /// Seconds of the latency phase.
    pub seconds: u32,
    /// Rounds run before the measured ones, their figures shown but not measured.
    pub warmup: u32,
    /// Measured rounds (at least one); the summary gives their medians.
    pub rounds: u32,
    pub side: Side,
}

/// One side's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    pub events_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub latency_samples: usize,
    /// Events per second actually produced in the latency phase.
    pub offered_per_s: f64,
}

fn now_ms() -> i64 {
    crate::kafka::clock::wall_clock().0
}

/// Request events for the benchmark: the surge's users and mix, at any volume.
fn requests(n: usize, seed: u64) -> Vec<RequestEvent> {
    let surge = Surge { seed, scale: 20, ..Surge::default() };
    let mut demand = Demand::new(surge.seed, surge.scale, surge.start);
    let mut out = Vec::with_capacity(n);
    let mut second = 0;
    while out.len() < n {
        out.extend(demand.second(second % Demand::SECONDS));
        second += 1;
    }
    out.truncate(n);
    out
}

async fn produce(producer: &FutureProducer, topic: &str, events: &[RequestEvent], stamp_now: bool, rate: Option<u32>) -> Result<f64, BenchError> {
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    let mut buf = Vec::with_capacity(256);
    for (i, e) in events.iter().enumerate() {
        if let Some(r) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / f64::from(r));
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let mut e = e.clone();
        if stamp_now {
            e.ts = Millis(now_ms());
        }
        buf.clear();
        serde_json::to_writer(&mut buf, &e)?;
        let mut record = FutureRecord::to(topic).key(e.user_id.as_bytes()).payload(&buf[..]);
        loop {
            match producer.send_result(record) {
                Ok(f) => {
                    acks.push(f);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    if let Some(r) = acks.next().await {
                        r.map_err(|_| KafkaError::Canceled)?.map_err(|(e, _)| e)?;
                    }
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        while acks.len() > 100_000 {
            if let Some(r) = acks.next().await {
                r.map_err(|_| KafkaError::Canceled)?.map_err(|(e, _)| e)?;
            }
        }
    }
    while let Some(r) = acks.next().await {
        r.map_err(|_| KafkaError::Canceled)?.map_err(|(e, _)| e)?;
    }
    Ok(events.len() as f64 / started.elapsed().as_secs_f64())
}

/// Reads `want` outputs from `topic`; returns the first and last arrival and the latencies (ms)
/// of outputs whose `ts` is at or after `stamped_from`.
async fn read(consumer: &StreamConsumer, want: usize, stamped_from: i64, timeout: Duration) -> Result<(Instant, Instant, Vec<f64>), BenchError> {
    let deadline = Instant::now() + timeout;
    let (mut first, mut last) = (None, Instant::now());
    let mut latencies = Vec::new();
    let mut got = 0;
    while got < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(m) = tokio::time::timeout(left.max(Duration::from_millis(1)), consumer.recv()).await else {
            return Err(BenchError::Incomplete { got, want, secs: timeout.as_secs() });
        };
        let Some(m) = unless_just_created(m)? else { continue };
        let at = Instant::now();
        first.get_or_insert(at);
        last = at;
        got += 1;
        if let Some(ts) = m.payload().and_then(|p| serde_json::from_slice::<Stamped<'_>>(p).ok()).and_then(|v| Millis::parse_rfc3339(v.ts).ok()) {
            if ts.0 >= stamped_from {
                latencies.push((now_ms() - ts.0) as f64);
            }
        }
    }
    Ok((first.unwrap_or(last), last, latencies))
}

/// The throughput phase's reader: counts `want` outputs of `topic` from its start, on a thread
/// of its own polling a `BaseConsumer` (a `StreamConsumer` with a future per record took most of
/// a core, on the two the processor and the broker share); returns the first and last arrival.
async fn count_outputs(brokers: &str, topic: &str, want: usize) -> Result<(Instant, Instant), BenchError> {
    use rdkafka::consumer::BaseConsumer;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-count"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    consumer.subscribe(&[topic])?;
    let timeout = Duration::from_secs(300);
    let counted = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + timeout;
        let (mut first, mut last, mut got) = (None, Instant::now(), 0usize);
        while got < want {
            if Instant::now() >= deadline {
                return Err(BenchError::Incomplete { got, want, secs: timeout.as_secs() });
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(m) => {
                    if unless_just_created(m)?.is_some() {
                        let at = Instant::now();
                        first.get_or_insert(at);
                        last = at;
                        got += 1;
                    }
                }
            }
        }
        Ok((first.unwrap_or(last), last))
    });
    counted.await.map_err(|e| BenchError::Task(e.to_string()))?
}

/// The latency phase's reader: assigned every partition of `topic` at its current end, so it
/// reads only what comes after the throughput phase (no group to join, nothing missed).
fn reader_at_end(brokers: &str, topic: &str) -> Result<StreamConsumer, BenchError> {
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let (metadata, mut tpl) = (tokio::task::block_in_place(|| reader.fetch_metadata(Some(topic), Duration::from_secs(10)))?, TopicPartitionList::new());
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = tokio::task::block_in_place(|| reader.fetch_watermarks(topic, p.id(), Duration::from_secs(10)))?;
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(high))?;
    }
    reader.assign(&tpl)?;
    Ok(reader)
}

/// The message; none for the error a topic created a moment ago gives until the client's
/// metadata knows it (librdkafka retries by itself).
fn unless_just_created<M>(m: Result<M, KafkaError>) -> Result<Option<M>, KafkaError> {
    match m {
        Ok(m) => Ok(Some(m)),
        Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The one field of an output the latency phase reads.
#[derive(serde::Deserialize)]
struct Stamped<'a> {
    ts: &'a str,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The lean passthrough: the fastest plain consume → produce loop we know how to write with
/// librdkafka, the practical limit `surgeguard run` is measured against. One thread polls a
/// `BaseConsumer` and hands each record's key and value to a `BaseProducer` as they are (no
/// futures, no async, no per-record allocation of ours), serving delivery reports every few
/// thousand records; offsets are auto-committed. Tuned: large fetches that return at once, a
/// 5 ms linger with 1 MB batches, a producer queue of a million records.
fn lean_passthrough(brokers: &str, input: &str, output: &str, group: &str, stop: &std::sync::atomic::AtomicBool) -> Result<(), BenchError> {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use std::sync::atomic::Ordering;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "4194304")
        .set("queued.min.messages", "200000")
        .create()?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("batch.num.messages", "100000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()?;
    consumer.subscribe(&[input])?;
    let mut since_poll = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let m = match consumer.poll(Duration::from_millis(50)) {
            None => {
                producer.poll(Duration::ZERO);
                continue;
            }
            Some(m) => m,
        };
        let Some(m) = unless_just_created(m)? else { continue };
        let mut record = BaseRecord::to(output).payload(m.payload().unwrap_or(&[]));
        if let Some(k) = m.key() {
            record = record.key(k);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
        since_poll += 1;
        if since_poll >= 4096 {
            since_poll = 0;
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

/// kcat's passthrough, when kcat is installed: `kcat -C -e … | kcat -P …`, two processes, keys
/// kept (a tab between key and value: the events are JSON without tabs), the consumer exiting at
/// the end of the input and the producer at the end of its stdin, as one would run it by hand.
/// Throughput only: kept running for the latency phase, kcat -P lost the last few records that
/// sat in the pipe (999 988–999 995 of a million).
fn kcat_passthrough(brokers: &str, input: &str, output: &str) -> Result<(), BenchError> {
    use std::process::{Command, Stdio};
    let spawn = |e: std::io::Error| BenchError::Task(format!("kcat: {e}"));
    let mut consume = Command::new("kcat")
        .args(["-C", "-b", brokers, "-t", input, "-o", "beginning", "-e", "-q", "-K", "\t"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(spawn)?;
    let pipe = consume.stdout.take().ok_or_else(|| BenchError::Task("kcat: no stdout".into()))?;
    let mut produce = Command::new("kcat").args(["-P", "-b", brokers, "-t", output, "-K", "\t"]).stdin(pipe).stderr(Stdio::null()).spawn().map_err(spawn)?;
    let (c, p) = (consume.wait().map_err(spawn)?, produce.wait().map_err(spawn)?);
    if !c.success() || !p.success() {
        return Err(BenchError::Task(format!("kcat exited with {c} (consumer) and {p} (producer)")));
    }
    Ok(())
}

/// Whether kcat is on the PATH.
fn kcat_installed() -> bool {
    std::process::Command::new("kcat").arg("-V").stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Measures one side: `start` launches the processor (reading `input`, writing `output`) and
/// returns its handle; the returned sender stops it.
async fn measure<F>(brokers: &str, input: &str, output: &str, opts: &BenchOptions, events: &[RequestEvent], start: F) -> Result<Figures, BenchError>
where
    F: FnOnce(tokio::sync::oneshot::Receiver<()>) -> tokio::task::JoinHandle<Result<(), BenchError>>,
{
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create()?;
    let (throughput_events, latency_events) = events.split_at(opts.events);
    produce(&producer, input, throughput_events, false, None).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let handle = start(stopped);
    let (first, last) = count_outputs(brokers, output, throughput_events.len()).await?;
    let events_per_s = (throughput_events.len().saturating_sub(1)) as f64 / (last - first).as_secs_f64().max(1e-9);
    // The latency phase reads from where the throughput phase's outputs end.
    let reader = reader_at_end(brokers, output)?;

    let stamped_from = now_ms();
    // The reader gets a task of its own, so reading never delays the paced producer.
    let want = latency_events.len();
    let timeout = Duration::from_secs(u64::from(opts.seconds) + 120);
    let reading = tokio::spawn(async move { read(&reader, want, stamped_from, timeout).await });
    let offered_per_s = produce(&producer, input, latency_events, true, Some(opts.rate)).await?;
    let (_, _, mut latencies) = match reading.await {
        Ok(r) => r?,
        Err(e) => return Err(BenchError::Task(e.to_string())),
    };
    stop.send(()).ok();
    match handle.await {
        Ok(r) => r?,
        Err(e) => tracing::warn!(error = %e, "processor task ended abnormally"),
    }
    latencies.sort_by(f64::total_cmp);
    Ok(Figures { events_per_s, p50_ms: percentile(&latencies, 0.50), p99_ms: percentile(&latencies, 0.99), latency_samples: latencies.len(), offered_per_s })
}

/// Which sides a bench run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Side {
    /// The lean passthrough, kcat's (when kcat is installed) and `surgeguard run`, one after
    /// the other in each round.
    #[default]
    All,
    /// The lean passthrough only.
    Passthrough,
    /// kcat's passthrough only.
    Kcat,
    Surgeguard,
}

/// One round's figures; a side not measured is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Round {
    pub warmup: bool,
    pub passthrough: Option<Figures>,
    pub kcat: Option<Figures>,
    pub surgeguard: Option<Figures>,
}

async fn measure_passthrough(cfg: &Config, brokers: &str, opts: &BenchOptions, events: &[RequestEvent], run_id: &str) -> Result<Figures, BenchError> {
    let admin_cfg = crate::kafka::client::client_config(cfg, brokers);
    let (input, output) = (format!("{run_id}.pt.in"), format!("{run_id}.pt.out"));
    let specs: Vec<topics::TopicSpec> = [&input, &output].iter().map(|name| topics::TopicSpec::new(name, cfg.kafka.partitions.requests)).collect();
    topics::create(&admin_cfg, &specs, cfg.kafka.replication_factor).await?;
    let (b, i, o, g) = (brokers.to_string(), input.clone(), output.clone(), format!("{run_id}.pt"));
    let figures = measure(brokers, &input, &output, opts, events, |stopped| {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || lean_passthrough(&b, &i, &o, &g, &flag));
        tokio::spawn(async move {
            stopped.await.ok();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| BenchError::Task(e.to_string()))?
                .map_err(|_| BenchError::Task("the passthrough thread panicked".into()))?
        })
    })
    .await;
    drop_topics(&admin_cfg, &[&input, &output]).await;
    figures
}

/// kcat's throughput: `N` events produced first, then `kcat -C -e | kcat -P` from its first
/// output to its last (no latency phase: see `kcat_passthrough`).
async fn measure_kcat(cfg: &Config, brokers: &str, opts: &BenchOptions, events: &[RequestEvent], run_id: &str) -> Result<Figures, BenchError> {
    let admin_cfg = crate::kafka::client::client_config(cfg, brokers);
    let (input, output) = (format!("{run_id}.kcat.in"), format!("{run_id}.kcat.out"));
    let specs: Vec<topics::TopicSpec> = [&input, &output].iter().map(|name| topics::TopicSpec::new(name, cfg.kafka.partitions.requests)).collect();
    topics::create(&admin_cfg, &specs, cfg.kafka.replication_factor).await?;
    let figures = async {
        let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "5").create()?;
        let throughput_events = &events[..opts.events];
        produce(&producer, &input, throughput_events, false, None).await?;
        let (b, i, o) = (brokers.to_string(), input.clone(), output.clone());
        let kcat = tokio::task::spawn_blocking(move || kcat_passthrough(&b, &i, &o));
        let (first, last) = count_outputs(brokers, &output, throughput_events.len()).await?;
        kcat.await.map_err(|e| BenchError::Task(e.to_string()))??;
        let events_per_s = (throughput_events.len().saturating_sub(1)) as f64 / (last - first).as_secs_f64().max(1e-9);
        Ok::<_, BenchError>(Figures { events_per_s, p50_ms: f64::NAN, p99_ms: f64::NAN, latency_samples: 0, offered_per_s: f64::NAN })
    }
    .await;
    drop_topics(&admin_cfg, &[&input, &output]).await;
    figures
}

/// Deletes a side's topics once it is measured (a round of a million events leaves about a
/// gigabyte on the broker); says so if it cannot.
async fn drop_topics(client: &ClientConfig, names: &[&str]) {
    if let Err(e) = topics::delete(client, names).await {
        tracing::warn!(error = %e, topics = ?names, "bench topics not deleted");
    }
}

async fn measure_surgeguard(cfg: &Config, brokers: &str, opts: &BenchOptions, events: &[RequestEvent], run_id: &str) -> Result<Figures, BenchError> {
    // Every topic of the pipeline under the run's prefix.
    let mut sg = cfg.clone();
    for (name, slot) in [
        ("requests", &mut sg.topics.requests),
        ("outcomes", &mut sg.topics.outcomes),
        ("telemetry", &mut sg.topics.telemetry),
        ("admin", &mut sg.topics.admin),
        ("decisions", &mut sg.topics.decisions),
        ("limits", &mut sg.topics.limits),
        ("breakers", &mut sg.topics.breakers),
        ("predictions", &mut sg.topics.predictions),
        ("alerts", &mut sg.topics.alerts),
        ("dlq", &mut sg.topics.dlq),
        ("limiter-changelog", &mut sg.topics.changelog),
        ("usage", &mut sg.topics.usage),
    ] {
        *slot = format!("{run_id}.sg.{name}");
    }
    sg.kafka.group_id = format!("{run_id}.sg");
    // The pipeline alone: no HTTP API (its port may be taken by a service on this machine).
    sg.api.listen = String::new();
    // Created here, before the clock starts, not by the service.
    sg.kafka.create_topics = false;
    let admin_cfg = crate::kafka::client::client_config(cfg, brokers);
    topics::ensure(&admin_cfg, &sg).await?;
    let names: Vec<String> = topics::specs(&sg).into_iter().map(|s| s.name).collect();
    let sg = Arc::new(sg);
    let (i, o) = (sg.topics.requests.clone(), sg.topics.decisions.clone());
    let b = brokers.to_string();
    let figures = measure(brokers, &i, &o, opts, events, |stopped| {
        tokio::spawn(async move {
            run::run(sg, &b, async {
                stopped.await.ok();
            })
            .await?;
            Ok(())
        })
    })
    .await;
    drop_topics(&admin_cfg, &names.iter().map(String::as_str).collect::<Vec<_>>()).await;
    figures
}

/// Runs `opts.warmup` rounds whose figures are only shown (a fresh broker's JVM compiles its hot
/// paths during the first minute of load, and whichever side runs first pays for it), then
/// `opts.rounds` measured ones. Each round gives each side fresh topics; `progress` sees every
/// round. Returns the measured rounds.
pub async fn bench(cfg: &Config, brokers: &str, opts: &BenchOptions, mut progress: impl FnMut(&Round)) -> Result<Vec<Round>, BenchError> {
    let events = requests(opts.events + (opts.rate as usize * opts.seconds as usize), 11);
    let mut measured = Vec::new();
    let kcat = kcat_installed();
    if opts.side == Side::All && !kcat {
        tracing::warn!("kcat is not installed: its passthrough is not measured");
    }
    for round in 0..opts.warmup + opts.rounds.max(1) {
        let run_id = format!("bench-{}-{round}", now_ms());
        let mut r = Round { warmup: round < opts.warmup, ..Round::default() };
        if matches!(opts.side, Side::All | Side::Passthrough) {
            r.passthrough = Some(measure_passthrough(cfg, brokers, opts, &events, &run_id).await?);
        }
        if (opts.side == Side::All && kcat) || opts.side == Side::Kcat {
            // A reference, not the baseline: a failure of kcat's is said and the round goes on.
            r.kcat = match measure_kcat(cfg, brokers, opts, &events, &run_id).await {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(error = %e, "kcat's passthrough not measured");
                    None
                }
            };
        }
        if matches!(opts.side, Side::All | Side::Surgeguard) {
            r.surgeguard = Some(measure_surgeguard(cfg, brokers, opts, &events, &run_id).await?);
        }
        progress(&r);
        if !r.warmup {
            measured.push(r);
        }
    }
    Ok(measured)
}

/// The median of some figures (the mean of the two middle ones for an even count).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.retain(|x| !x.is_nan());
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 }
}

/// The medians over the measured rounds: throughputs, the per-round throughput ratios, p50 and
/// p99 latencies.
pub fn summary(rounds: &[Round]) -> String {
    let med = |f: &dyn Fn(&Round) -> Option<f64>| median(rounds.iter().filter_map(f).collect());
    let cell = |x: f64, digits: usize| if x.is_nan() { "-".to_string() } else { format!("{x:.digits$}") };
    let ratio = med(&|r| Some(r.surgeguard?.events_per_s / r.passthrough?.events_per_s));
    let kcat_ratio = med(&|r| Some(r.surgeguard?.events_per_s / r.kcat?.events_per_s));
    let row = |pick: fn(&Figures) -> f64, digits: usize| {
        [med(&|r| Some(pick(&r.passthrough?))), med(&|r| Some(pick(&r.kcat?))), med(&|r| Some(pick(&r.surgeguard?)))].map(|x| cell(x, digits))
    };
    let [pt, kc, sg] = row(|f| f.events_per_s, 0);
    let [pt50, kc50, sg50] = row(|f| f.p50_ms, 1);
    let [pt99, kc99, sg99] = row(|f| f.p99_ms, 1);
    format!(
        "median of {} measured round(s):\n\
         \x20                        passthrough   kcat   surgeguard run   ratio to passthrough   to kcat (medians of the rounds' ratios)\n\
         throughput (events/s)    {pt:>11}   {kc:>4}   {sg:>14}   {:>20}   {}\n\
         latency p50 (ms)         {pt50:>11}   {kc50:>4}   {sg50:>14}\n\
         latency p99 (ms)         {pt99:>11}   {kc99:>4}   {sg99:>14}\n",
        rounds.len(),
        cell(ratio, 2),
        cell(kcat_ratio, 2),
    )
}

/// One round's figures side by side.
pub fn report(round: &Round, opts: &BenchOptions) -> String {
    let cell = |f: Option<&Figures>, pick: fn(&Figures) -> f64, digits: usize| match f.map(pick) {
        Some(x) if !x.is_nan() => format!("{x:.digits$}"),
        _ => "-".to_string(),
    };
    let (pt, kc, sg) = (round.passthrough.as_ref(), round.kcat.as_ref(), round.surgeguard.as_ref());
    let ratio = |base: Option<&Figures>| match (base, sg) {
        (Some(b), Some(s)) => format!("{:.2}", s.events_per_s / b.events_per_s),
        _ => "-".to_string(),
    };
    format!(
        "{}\n\
         \x20                        passthrough   kcat   surgeguard run   ratio to passthrough   to kcat\n\
         throughput (events/s)    {:>11}   {:>4}   {:>14}   {:>20}   {}\n\
         latency p50 (ms)         {:>11}   {:>4}   {:>14}\n\
         latency p99 (ms)         {:>11}   {:>4}   {:>14}\n\
         latency phase: {} events/s asked for {} s; produced at {} (passthrough), {} (kcat) and {} (surgeguard) events/s\n",
        if round.warmup { "warm-up round (not measured):" } else { "measured round:" },
        cell(pt, |f| f.events_per_s, 0),
        cell(kc, |f| f.events_per_s, 0),
        cell(sg, |f| f.events_per_s, 0),
        ratio(pt),
        ratio(kc),
        cell(pt, |f| f.p50_ms, 1),
        cell(kc, |f| f.p50_ms, 1),
        cell(sg, |f| f.p50_ms, 1),
        cell(pt, |f| f.p99_ms, 1),
        cell(kc, |f| f.p99_ms, 1),
        cell(sg, |f| f.p99_ms, 1),
        opts.rate,
        opts.seconds,
        cell(pt, |f| f.offered_per_s, 0),
        cell(kc, |f| f.offered_per_s, 0),
        cell(sg, |f| f.offered_per_s, 0),
    )
}

/// `surgeguard bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub config: crate::apps::cli::ConfigArg,
    /// Bootstrap servers of the broker to measure on.
    #[arg(long)]
    pub brokers: String,
    /// Events for the throughput phase (fewer than about a million give a window of a second
    /// or two, in which the passthrough's rate swings by 2× from round to round).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: usize,
    /// Events per second in the latency phase.
    #[arg(long, default_value_t = 50_000)]
    pub rate: u32,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// Rounds before the measured one, shown but not measured: a fresh broker's JVM
    /// compiles its hot paths during its first minute of load.
    #[arg(long, default_value_t = 2)]
    pub warmup: u32,
    /// Measured rounds; the last lines give their medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Which sides to measure.
    #[arg(long, value_enum, default_value_t = Side::All)]
    pub side: Side,
}

pub fn main(args: &BenchArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let cfg = args.config.load()?;
    let opts = BenchOptions { events: args.events, rate: args.rate, seconds: args.seconds, warmup: args.warmup, rounds: args.rounds, side: args.side };
    let measured = crate::apps::cli::runtime()?.block_on(bench(&cfg, &args.brokers, &opts, |round| {
        print!("{}", report(round, &opts));
        std::io::stdout().flush().ok();
    }))?;
    print!("{}", summary(&measured));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(events_per_s: f64, p99_ms: f64) -> Figures {
        Figures { events_per_s, p50_ms: 1.0, p99_ms, latency_samples: 10, offered_per_s: 1.0 }
    }

    #[test]
    fn the_summary_takes_medians_of_the_measured_rounds() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
        let rounds = [
            Round { warmup: false, passthrough: Some(figures(100.0, 10.0)), kcat: None, surgeguard: Some(figures(90.0, 20.0)) },
            Round { warmup: false, passthrough: Some(figures(200.0, 30.0)), kcat: None, surgeguard: Some(figures(100.0, 40.0)) },
            Round { warmup: false, passthrough: Some(figures(120.0, 50.0)), kcat: None, surgeguard: Some(figures(60.0, 60.0)) },
        ];
        let row = |text: &str, name: &str| -> Vec<String> {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_default();
            line[name.len()..].split_whitespace().skip(1).map(str::to_string).collect()
        };
        let text = summary(&rounds);
        // Ratios 0.9, 0.5 and 0.5: the median ratio is 0.50, not the ratio of the medians (0.75).
        assert_eq!(row(&text, "throughput"), ["120", "-", "90", "0.50", "-"], "{text}");
        assert_eq!(row(&text, "latency p99"), ["30.0", "-", "40.0"], "{text}");
        let one_side = [Round { warmup: false, passthrough: None, kcat: Some(figures(10.0, 1.0)), surgeguard: Some(figures(5.0, 1.0)) }];
        assert_eq!(row(&summary(&one_side), "throughput"), ["-", "10", "5", "-", "0.50"]);
    }
}
