//! `surgeguard demo`: the seed's Monday-morning surge against a simulated backend, twice —
//! without protection, then through surgeguard — on librdkafka's in-process mock cluster, using
//! the same `surgeguard run` path as production.
//!
//! The demo plays the gateway, in lockstep with event time: for each simulated second it sends
//! that second's requests to the requests topic, waits for their decisions, lets through the
//! allowed ones (to the fallback plan while the AI dependency's breaker is open), has the
//! simulated backend (`sim.rs`) serve them, and sends the backend's outcomes and telemetry back
//! to surgeguard. Both runs see exactly the same demand. Everything in the comparison table is
//! measured by the demo as it runs.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compact_str::CompactString;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::apps::run::{self, RunError};
use crate::apps::scenario::{Demand, Surge};
use crate::apps::sim::{Admitted, Backend, Second};
use crate::config::{Config, Guarantee};
use crate::kafka::topics;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("surgeguard run: {0}")]
    Run(#[from] RunError),
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("no decision for {missing} requests of second {second} within 30 s")]
    Stalled { second: i64, missing: usize },
}

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub seed: u64,
    /// Simulated seconds per wall-clock second; 0 runs as fast as it can.
    pub speed: f64,
}

/// One run's measurements.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunReport {
    pub requests: u64,
    pub throttled: u64,
    pub admitted: u64,
    pub ok: u64,
    pub degraded: u64,
    pub failed: u64,
    pub timed_out: u64,
    /// Seconds in which at least 95 % of the admitted requests succeeded.
    pub available_seconds: u64,
    pub seconds: u64,
    /// The longest run of consecutive bad seconds (under 95 % served), None if there was none.
    pub outage_s: Option<u64>,
    /// Whether the run ended outside an outage: fewer than `OUTAGE_S` bad seconds in a row at its
    /// end (one unlucky last second of a healthy run is not an outage).
    pub recovered: bool,
    /// Consecutive bad seconds up to now.
    streak: u64,
    pub alerts: u64,
    pub breaker_trips: u64,
}

impl RunReport {
    pub fn success_rate(&self) -> f64 {
        if self.admitted == 0 { 1.0 } else { self.ok as f64 / self.admitted as f64 }
    }

    /// Answered requests of all requests made (throttled ones count as not served).
    pub fn served_share(&self) -> f64 {
        if self.requests == 0 { 1.0 } else { self.ok as f64 / self.requests as f64 }
    }

    pub fn availability(&self) -> f64 {
        if self.seconds == 0 { 1.0 } else { self.available_seconds as f64 / self.seconds as f64 }
    }

    fn record(&mut self, second: &Second, admitted: u64) {
        self.seconds += 1;
        self.admitted += admitted;
        self.ok += u64::from(second.ok);
        self.degraded += u64::from(second.degraded);
        self.failed += u64::from(second.failed);
        self.timed_out += u64::from(second.timed_out);
        let good = admitted == 0 || f64::from(second.ok) >= 0.95 * admitted as f64;
        if good {
            self.available_seconds += 1;
            self.streak = 0;
        } else {
            self.streak += 1;
            self.outage_s = Some(self.outage_s.unwrap_or(0).max(self.streak));
        }
        self.recovered = self.streak < OUTAGE_S;
    }
}

/// Bad seconds in a row that make an outage the run has not recovered from at its end.
const OUTAGE_S: u64 = 3;

async fn pace(started: Instant, t: i64, speed: f64) {
    if speed > 0.0 {
        let due = started + Duration::from_secs_f64(t as f64 / speed);
        tokio::time::sleep_until(due.into()).await;
    }
}

/// The surge straight into the backend: every request admitted, no breaker, no fallback.
pub async fn unprotected(opts: &DemoOptions) -> RunReport {
    let surge = Surge { seed: opts.seed, ..Surge::default() };
    let mut demand = Demand::new(surge.seed, 1, surge.start);
    let mut backend = Backend::new(opts.seed);
    let mut report = RunReport::default();
    let started = Instant::now();
    for t in 0..Demand::SECONDS {
        pace(started, t, opts.speed).await;
        let requests = demand.second(t);
        report.requests += requests.len() as u64;
        let admitted: Vec<Admitted> = requests.into_iter().map(|r| Admitted { id: r.id }).collect();
        let second = backend.step(surge.start.plus_ms(t * 1000), &admitted, None);
        report.record(&second, admitted.len() as u64);
    }
    report
}

/// The config as the demo runs it on the mock cluster.
fn on_mock_cluster(mut cfg: Config) -> Config {
    cfg.kafka.create_topics = false; // the mock cluster has no CreateTopics API
    // Nor read_committed isolation or transactional offset commits: exactly-once would not hold.
    if cfg.kafka.guarantee != Guarantee::AtLeastOnce {
        tracing::warn!("the demo's mock cluster has no read_committed isolation or transactional offset commits: running at_least_once");
        cfg.kafka.guarantee = Guarantee::AtLeastOnce;
    }
    // The surge runs on simulated time, ahead of or behind the wall clock: event time only.
    cfg.kafka.wall_clock_after_idle_ms = 0;
    // The demo's gateway waits for each second's decisions before it sends that second's
    // outcomes: an idle wait for the outcomes would hold every second back by it. Inputs with
    // messages left to read are still waited for, so a backlog is aligned as in `run`.
    cfg.kafka.max_idle_ms = 0;
    cfg
}

/// `surgeguard run` on an embedded mock cluster, with its HTTP API, started before the surge.
pub struct Embedded {
    /// The mock cluster lives as long as this.
    _cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub brokers: String,
    /// Where the HTTP API answers (`None`: `api.listen` is empty).
    pub api: Option<std::net::SocketAddr>,
    cfg: Arc<Config>,
    stop: tokio::sync::oneshot::Sender<()>,
    /// Taken once awaited.
    service: Option<tokio::task::JoinHandle<Result<run::RunStats, RunError>>>,
}

impl Embedded {
    /// Starts the mock cluster, creates the topics and starts the service; returns once its API
    /// listens (or at once when the API is off).
    pub async fn start(cfg: Config) -> Result<Embedded, DemoError> {
        let cluster = MockCluster::new(1)?;
        let brokers = cluster.bootstrap_servers();
        let cfg = on_mock_cluster(cfg);
        for spec in topics::specs(&cfg) {
            cluster.create_topic(&spec.name, spec.partitions, 1)?;
        }
        let cfg = Arc::new(cfg);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (on_api, api) = tokio::sync::oneshot::channel();
        let mut service = {
            let (cfg, brokers) = (cfg.clone(), brokers.clone());
            tokio::spawn(async move {
                let options = run::RunOptions { consumer_overrides: &[("fetch.wait.max.ms", "5")], on_api: Some(on_api), ..run::RunOptions::default() };
                run::run_with(cfg, &brokers, options, async {
                    stopped.await.ok();
                })
                .await
            })
        };
        // The API's address, or the service's failure (a taken port, say) before it listened.
        let api = tokio::select! {
            addr = api => addr.ok(),
            ended = &mut service => return Err(match ended {
                Ok(Err(e)) => e.into(),
                _ => DemoError::Stalled { second: 0, missing: 0 },
            }),
        };
        Ok(Embedded { _cluster: cluster, brokers, api, cfg, stop, service: Some(service) })
    }

    /// Stops the service and waits for it.
    pub async fn stop(self) -> Result<(), DemoError> {
        self.stop.send(()).ok();
        match self.service {
            Some(service) => match service.await {
                Ok(r) => {
                    r?;
                }
                Err(e) => tracing::warn!(error = %e, "the service task ended abnormally"),
            },
            None => {}
        }
        Ok(())
    }
}

/// The surge through surgeguard on the mock cluster. `on_ready` is told the bootstrap address.
pub async fn protected(cfg: Config, opts: &DemoOptions, on_ready: impl FnOnce(&str)) -> Result<RunReport, DemoError> {
    let mut embedded = Embedded::start(cfg).await?;
    on_ready(&embedded.brokers);
    let report = embedded.surge(opts).await;
    embedded.stop().await?;
    report
}

impl Embedded {
    /// The surge through the running service, as the gateway in front of the simulated backend.
    pub async fn surge(&mut self, opts: &DemoOptions) -> Result<RunReport, DemoError> {
        let (cfg, brokers, service) = (&self.cfg, &self.brokers, &mut self.service);
        let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers.as_str()).set("linger.ms", "1").create()?;
        let gateway: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers.as_str())
            .set("group.id", "surgeguard-demo-gateway")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "5")
            .create()?;
        let t = &cfg.topics;
        gateway.subscribe(&[t.decisions.as_str(), t.breakers.as_str(), t.alerts.as_str()])?;

        let surge = Surge { seed: opts.seed, ..Surge::default() };
        let mut demand = Demand::new(surge.seed, 1, surge.start);
        let mut backend = Backend::new(opts.seed);
        let mut report = RunReport::default();
        let mut breakers: BTreeMap<String, (String, u32)> = BTreeMap::new();
        let mut allowed: HashSet<CompactString> = HashSet::new();
        let started = Instant::now();
        let mut buf = Vec::new();
        for second in 0..Demand::SECONDS {
            pace(started, second, opts.speed).await;
            let requests = demand.second(second);
            report.requests += requests.len() as u64;
            let mut pending: HashSet<CompactString> = requests.iter().map(|r| r.id.clone()).collect();
            let mut sends = Vec::with_capacity(requests.len());
            for r in &requests {
                buf.clear();
                serde_json::to_writer(&mut buf, r)?;
                let record = FutureRecord::to(&t.requests).key(r.user_id.as_bytes()).payload(&buf[..]);
                sends.push(producer.send_result(record).map_err(|(e, _)| e)?);
            }
            for s in sends {
                s.await.map_err(|_| DemoError::Stalled { second, missing: pending.len() })?.map_err(|(e, _)| e)?;
            }
            tracing::debug!(second, requests = pending.len(), "requests produced");
            // Read decisions (and breaker states and alerts on the way) until this second is decided.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !pending.is_empty() {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(msg) = tokio::time::timeout(left.max(Duration::from_millis(1)), gateway.recv()).await else {
                    // The service may have stopped on an error (a taken API port, say): report that.
                    if service.as_ref().is_some_and(|s| s.is_finished())
                        && let Some(s) = service.take()
                        && let Ok(Err(e)) = s.await
                    {
                        return Err(e.into());
                    }
                    return Err(DemoError::Stalled { second, missing: pending.len() });
                };
                let m = msg?;
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(m.payload().unwrap_or(b"{}")) else { continue };
                if m.topic() == t.decisions {
                    let id = v["request_id"].as_str().unwrap_or_default();
                    if pending.remove(id) && v["decision"] != "throttle" {
                        allowed.insert(id.into());
                    }
                } else if m.topic() == t.breakers {
                    let state = v["state"].as_str().unwrap_or_default().to_string();
                    if state == "open" && v["previous"] != "open" {
                        report.breaker_trips += 1;
                    }
                    let probes = v["half_open_probes"].as_u64().unwrap_or(0) as u32;
                    tracing::debug!(second, dependency = %v["dependency"], %state, previous = %v["previous"], "breaker");
                    breakers.insert(v["dependency"].as_str().unwrap_or_default().to_string(), (state, probes));
                } else {
                    report.alerts += 1;
                }
            }
            // The gateway: allowed requests go to the backend; while the AI breaker refuses calls the
            // backend may not call the provider (misses get the fallback plan), and while it is
            // half-open only its probes may.
            let mut admitted = Vec::new();
            for r in requests {
                if allowed.remove(&r.id) {
                    admitted.push(Admitted { id: r.id });
                } else {
                    report.throttled += 1;
                }
            }
            let budget = match breakers.get("ai_primary").map(|(s, p)| (s.as_str(), *p)) {
                Some(("open" | "forced_open", _)) => Some(0),
                Some(("half_open", probes)) => Some(probes),
                _ => None,
            };
            let result = backend.step(surge.start.plus_ms(second * 1000), &admitted, budget);
            if let (Some(b), Some(_)) = (breakers.get_mut("ai_primary"), budget) {
                b.1 = b.1.saturating_sub(result.outcomes.len() as u32);
            }
            report.record(&result, admitted.len() as u64);
            let mut sends = Vec::new();
            for o in &result.outcomes {
                buf.clear();
                serde_json::to_writer(&mut buf, o)?;
                sends.push(producer.send_result(FutureRecord::to(&t.outcomes).key(o.dependency.as_bytes()).payload(&buf[..])).map_err(|(e, _)| e)?);
            }
            for s in &result.telemetry {
                buf.clear();
                serde_json::to_writer(&mut buf, s)?;
                sends.push(producer.send_result(FutureRecord::to(&t.telemetry).key(s.source.as_bytes()).payload(&buf[..])).map_err(|(e, _)| e)?);
            }
            for s in sends {
                s.await.map_err(|_| DemoError::Stalled { second, missing: 0 })?.map_err(|(e, _)| e)?;
            }
        }
        Ok(report)
    }
}

/// The seed's comparison table, from what the two runs measured.
pub fn table(without: &RunReport, with: &RunReport) -> String {
    let pct = |x: f64| format!("{:.1} %", x * 100.0);
    let outage = |r: &RunReport| r.outage_s.map_or_else(|| "none".to_string(), |s| format!("{s} s"));
    let end = |r: &RunReport| if r.recovered { "healthy".to_string() } else { format!("down for {} s", r.streak) };
    let rows: Vec<(&str, String, String)> = vec![
        ("requests", without.requests.to_string(), with.requests.to_string()),
        ("throttled by surgeguard", "-".into(), with.throttled.to_string()),
        ("availability (seconds with ≥ 95 % served)", pct(without.availability()), pct(with.availability())),
        ("success rate (of admitted requests)", pct(without.success_rate()), pct(with.success_rate())),
        ("answered (of all requests, throttled = not)", pct(without.served_share()), pct(with.served_share())),
        ("served from the fallback plan", without.degraded.to_string(), with.degraded.to_string()),
        ("failed requests", without.failed.to_string(), with.failed.to_string()),
        ("timed-out requests", without.timed_out.to_string(), with.timed_out.to_string()),
        ("longest outage (consecutive bad seconds)", outage(without), outage(with)),
        ("at the end of the surge", end(without), end(with)),
        ("breaker trips", "-".into(), with.breaker_trips.to_string()),
        ("alerts raised", "-".into(), with.alerts.to_string()),
    ];
    let w0 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max("without".len());
    let mut out = format!("{:w0$}  {:>w1$}  {}\n", "Monday-morning surge (50 → 300 users)", "without", "with surgeguard");
    for (name, a, b) in rows {
        let pad = w0 - name.chars().count();
        out.push_str(&format!("{name}{}  {a:>w1$}  {b}\n", " ".repeat(pad)));
    }
    out
}

/// `surgeguard demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub config: crate::apps::cli::ConfigArg,
    /// Simulated seconds per real second (0: as fast as it goes, under a minute).
    #[arg(long, default_value_t = 0.0)]
    pub speed: f64,
    /// Random seed of the demand and the backend.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Where the HTTP API listens while the demo runs (overrides `api.listen`; port 0 picks a
    /// free one; "" turns it off).
    #[arg(long)]
    pub api_listen: Option<String>,
}

pub fn main(args: &DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.speed >= 0.0 && args.speed.is_finite(), "--speed must be 0 (as fast as possible) or a positive number");
    let mut cfg = (*args.config.load()?).clone();
    if let Some(listen) = &args.api_listen {
        anyhow::ensure!(
            listen.is_empty() || listen.parse::<std::net::SocketAddr>().is_ok(),
            "--api-listen {listen:?}: expected \"\" or an address such as 127.0.0.1:0"
        );
        cfg.api.listen = listen.clone();
    }
    let opts = DemoOptions { seed: args.seed, speed: args.speed };
    crate::apps::cli::runtime()?.block_on(async {
        let started = Instant::now();
        // The service and its API first, so the API answers from the start of the demo.
        let mut embedded = Embedded::start(cfg).await?;
        let brokers = &embedded.brokers;
        println!("embedded Kafka (mock cluster) at {brokers}: try `kcat -b {brokers} -C -t surgeguard.decisions` while it runs");
        match embedded.api {
            Some(addr) => println!("HTTP API at http://{addr}: try `curl http://{addr}/v1/breakers`, or open http://{addr}/ for the dashboard"),
            None => println!("HTTP API off (api.listen is empty)"),
        }
        eprintln!("1/2 the surge without protection (simulated backend only) …");
        let without = unprotected(&opts).await;
        eprintln!("2/2 the surge through surgeguard run on the embedded Kafka cluster …");
        let with = embedded.surge(&opts).await;
        embedded.stop().await?;
        let with = with?;
        println!();
        print!("{}", table(&without, &with));
        eprintln!("\ndone in {:.0} s", started.elapsed().as_secs_f64());
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_the_mock_cluster_the_demo_runs_at_least_once_on_event_time_with_its_own_topics() {
        let mut cfg = Config::default();
        cfg.kafka.guarantee = Guarantee::ExactlyOnce;
        let on = on_mock_cluster(cfg.clone());
        assert_eq!(on.kafka.guarantee, Guarantee::AtLeastOnce);
        assert!(!on.kafka.create_topics);
        assert_eq!((on.kafka.wall_clock_after_idle_ms, on.kafka.max_idle_ms), (0, 0));
        // Nothing else changes.
        let mut back = on.clone();
        (back.kafka.guarantee, back.kafka.create_topics, back.kafka.wall_clock_after_idle_ms, back.kafka.max_idle_ms) =
            (cfg.kafka.guarantee, cfg.kafka.create_topics, cfg.kafka.wall_clock_after_idle_ms, cfg.kafka.max_idle_ms);
        assert_eq!(back, cfg);
    }
}
