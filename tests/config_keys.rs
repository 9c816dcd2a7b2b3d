//! No dead config, tested by behaviour: every key in `pipelines/default.toml` is perturbed on its
//! own and the replay of a rich scenario must change. Plus `surgeguard check-config` end to end.
//!
//! The scenario is a cut of the Monday surge (normal load, the first breaker trips and closes, the
//! high → critical transition, the peak) followed by hand-made probes for what the surge does not
//! reach: grace bursts per tier (and again 46 minutes on, when a halved grace window has renewed
//! the allowance but the default one has not), unknown tiers and request
//! types, telemetry isolating each multiplier step and severity, throttled requests under each
//! severity, breaker sequences for each threshold and weight, backoff up to the cap, trips of the
//! configured dependencies, throttling that does not follow load, and a late event after which
//! operators' admin actions on a breaker, and idle users are swept. Hand-made events are tagged with the full topic names
//! (`surgeguard.requests`, ...), the surge with the short ones, so both spellings are read.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use surgeguard::apps::replay::ReplaySummary;
use surgeguard::apps::scenario::{Surge, monday_surge};
use surgeguard::config::Config;
use surgeguard::config::load::{self, ConfigErrors};
use surgeguard::wire::events::{AdminAction, AdminEvent, ErrorClass, InputEvent, OutcomeEvent, RequestEvent, TelemetrySample};
use surgeguard::wire::time::Millis;
use toml::Value;

// ------------------------------------------------------------------------------------------------
// Keys that are not expected to change the replay output, each with its reason. Every key listed
// here must still be in default.toml (checked), so the lists cannot rot.

/// Keys the replay cannot observe at all.
const NOT_IN_REPLAY: &[(&str, &str)] = &[
    ("topics.decisions", "output topic name: replay tags outputs with the short name; only a Kafka sink uses it"),
    ("topics.limits", "output topic name: replay tags outputs with the short name; only a Kafka sink uses it"),
    ("topics.breakers", "output topic name: replay tags outputs with the short name; only a Kafka sink uses it"),
    ("topics.predictions", "output topic name: replay tags outputs with the short name; only a Kafka sink uses it"),
    ("topics.alerts", "output topic name: replay tags outputs with the short name; only a Kafka sink uses it"),
    ("topics.dlq", "replay reports undecodable lines to its caller instead of writing a DLQ topic"),
    ("topics.usage", "Kafka runtime only: replay folds its one partition's usage in memory, `surgeguard run` publishes and reads it (tests/kafka_run.rs)"),
    ("topics.changelog", "Kafka runtime only: replay keeps limiter state in memory, `surgeguard run` writes it to this topic (tests/kafka_run.rs)"),
    ("kafka.brokers", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("kafka.group_id", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("kafka.create_topics", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("kafka.replication_factor", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("kafka.guarantee", "Kafka runtime only: how `surgeguard run` commits (tests/kafka_run.rs runs both); replay has no broker"),
    ("kafka.control_lookback_s", "Kafka runtime only: where a starting `surgeguard run` begins reading the control topics; replay reads its whole input"),
    (
        "kafka.wall_clock_after_idle_ms",
        "Kafka runtime only: `surgeguard run` moves event time to the wall clock when idle (tests/kafka_run.rs sees a breaker half-open without events); replay has event time only",
    ),
    (
        "kafka.instance_name",
        "Kafka runtime only: the group member's static name (tests/kafka_run.rs restarts a named instance after kill -9); replay has no group",
    ),
    (
        "kafka.keep_first_decisions",
        "Kafka runtime only: how `surgeguard run` decides requests processed again after a crash (tests/kafka_run.rs kills it twice); replay never processes a request twice",
    ),
    (
        "kafka.max_idle_ms",
        "Kafka runtime only: how long `surgeguard run` waits for an input partition with nothing to read (tests/kafka_run.rs produces telemetry late); replay reads one ordered file",
    ),
    (
        "kafka.usage_silence_ms",
        "Kafka runtime only: how long `surgeguard run`'s global views wait for another instance's silent partition (tests/kafka_run.rs runs two instances); replay folds its one partition itself",
    ),
    (
        "kafka.restart_backoff_ms",
        "Kafka runtime only: how long `surgeguard run` waits before it starts a failed pipeline again in the process (tests/mock_cluster.rs restarts it); replay never restarts",
    ),
    (
        "kafka.restart_backoff_max_ms",
        "Kafka runtime only: the longest wait between `surgeguard run`'s restarts in place (tests/mock_cluster.rs, tests/faults.rs); replay never restarts",
    ),
    (
        "kafka.quarantine_after",
        "Kafka runtime only: after how many restarts caused by one input `surgeguard run` quarantines it (tests/mock_cluster.rs; src/kafka/quarantine.rs); replay never restarts",
    ),
    (
        "kafka.commit_interval_ms",
        "Kafka runtime only: how often `surgeguard run` writes coalesced limiter state to the changelog (tests/kafka_run.rs counts the records); replay keeps state in memory",
    ),
    ("kafka.partitions.requests", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("kafka.partitions.outcomes", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("kafka.partitions.telemetry", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("kafka.partitions.admin", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("kafka.partitions.decisions", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("kafka.partitions.limits", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("kafka.partitions.breakers", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("kafka.partitions.predictions", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("kafka.partitions.alerts", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("kafka.partitions.dlq", "Kafka runtime only: `surgeguard run` reads it (tests/kafka_run.rs), replay has no broker"),
    ("api.listen", "Kafka runtime only: where `surgeguard run` serves its HTTP API (tests/api.rs); replay serves none"),
    (
        "api.partitioner",
        "Kafka runtime only: which partition the API looks a user up in (tests/api.rs checks it against librdkafka producers); replay serves no API",
    ),
    ("api.admin_token_env", "Kafka runtime only: the admin endpoints' token (tests/api.rs); replay serves no API"),
    ("api.max_body_bytes", "Kafka runtime only: the API's body limit (tests/api.rs sends a larger body); replay serves no API"),
    (
        "api.idempotency_window_s",
        "Kafka runtime only: how long POST /v1/decide remembers a request id (tests/api_decide.rs sends one twice); replay serves no API",
    ),
    (
        "api.max_clock_skew_s",
        "Kafka runtime only: how far POST /v1/decide's ts may be from the stream's time (tests/api_decide.rs gets a 422); replay serves no API",
    ),
    ("api.idempotency_capacity", "Kafka runtime only: how many request ids POST /v1/decide remembers (src/idempotency.rs); replay serves no API"),
    (
        "api.idempotency_max_bytes",
        "Kafka runtime only: how many bytes of request ids POST /v1/decide remembers (src/core/idempotency.rs); replay serves no API",
    ),
    ("prediction.model", "prediction is off by default (no model); tests/predictive.rs replays with a model file, and with a missing and a bad one"),
    (
        "prediction.history",
        "prediction is off by default; tests/predictive.rs seeds from a history (predictions from the first step) and refuses a history without a model",
    ),
    (
        "prediction.history_kind",
        "prediction is off by default; tests/predictive.rs reads a history as a series, and the same file as events (one request per row) forecasts far less",
    ),
    ("prediction.scope", "prediction is off by default; tests/predictive.rs perturbs it with a model"),
    ("prediction.spike_factor", "prediction is off by default; tests/predictive.rs perturbs it with a model"),
    ("prediction.min_confidence", "prediction is off by default; tests/predictive.rs perturbs it with a model"),
    ("prediction.coverage", "prediction is off by default; tests/predictive.rs perturbs it with a model"),
    (
        "prediction.allowed_lateness_s",
        "prediction is off by default; tests/predictive.rs perturbs it with a model (predictor.rs's unit test counts late requests)",
    ),
    ("alerts.predicted_spike.enabled", "fires only with a demand model; tests/predictive.rs perturbs it with one"),
    ("alerts.predicted_spike.severity", "fires only with a demand model; tests/predictive.rs perturbs it with one"),
    ("alerts.predicted_spike.cooldown_s", "fires only with a demand model; monitor.rs's unit test holds a second spike within the cool-down"),
];

/// Keys whose every strong perturbation fails validation: that failure, naming the key's rule, is
/// the evidence the key is read (the test checks it, and fails if a valid perturbation appears).
const VALIDATION_ONLY: &[(&str, &str)] = &[
    ("throttle[1].severity", "the only catch-all rule for `critical`: any other severity leaves critical without one"),
    ("throttle[1].tiers", "the only catch-all rule for `critical`: naming a tier makes it no longer a catch-all"),
    ("throttle[1].request_types", "the only catch-all rule for `critical`: naming a type makes it no longer a catch-all"),
    ("throttle[3].severity", "the only catch-all rule for `high`: any other severity leaves high without one"),
    ("throttle[3].tiers", "the only catch-all rule for `high`: naming a tier makes it no longer a catch-all"),
    ("throttle[3].request_types", "the only catch-all rule for `high`: naming a type makes it no longer a catch-all"),
    ("throttle[4].severity", "the only catch-all rule for `normal`: any other severity leaves normal without one"),
    ("throttle[4].tiers", "the only catch-all rule for `normal`: naming a tier makes it no longer a catch-all"),
    ("throttle[4].request_types", "the only catch-all rule for `normal`: naming a type makes it no longer a catch-all"),
];

/// Keys whose effect is on memory only: eviction is designed never to change a decision, so the
/// evidence is the replay summary's tracked users and evicted count instead of the output bytes.
const SUMMARY_ONLY: &[(&str, &str)] = &[
    ("limiter.evict_idle_after_s", "eviction forgets only expired state: visible in tracked/evicted users, not in outputs"),
    ("limiter.sweep_every_s", "sweep timing decides when idle users are forgotten: visible in tracked/evicted users only"),
    ("event_time.allowed_lateness_s", "a late event is processed all the same: visible in the count of late events only"),
];

/// Perturbations chosen by hand where the generic ones would be too weak for the scenario.
fn override_candidates(path: &str) -> Option<Vec<Value>> {
    match path {
        // Doubling the sweep interval still sweeps before the late event; a sweep interval longer
        // than the scenario never sweeps.
        "limiter.sweep_every_s" => Some(vec![Value::Integer(7200)]),
        // One source in the view: each new host displaces the one before.
        "health.max_sources" => Some(vec![Value::Integer(1)]),
        // The scenario tracks a few hundred keys at its peak.
        "limiter.max_keys_per_partition" => Some(vec![Value::Integer(100)]),
        // The floods of `hand_events` fill the learned table; with one place, every probe
        // dependency after the first is refused; idle for a second, probes are forgotten between
        // their outcomes.
        "learned_dependencies.max" => Some(vec![Value::Integer(1)]),
        "learned_dependencies.evict_idle_after_s" => Some(vec![Value::Integer(1)]),
        "alerts.table_full.cooldown_s" => Some(vec![Value::Integer(60)]),
        // Halved, each limit refuses one of `limit_probes` (a larger one changes nothing).
        "limits.record_bytes" => Some(vec![Value::Integer(32_768)]),
        "limits.id_bytes" | "limits.user_id_bytes" | "limits.text_bytes" => Some(vec![Value::Integer(128)]),
        "limits.name_bytes" => Some(vec![Value::Integer(64)]),
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------------
// Key paths in a TOML document.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn render(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Every leaf: scalars and arrays of scalars (empty arrays included); tables and non-empty arrays
/// of tables are descended into.
fn leaves(v: &Value, path: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Table(t) => {
            for (k, v) in t {
                path.push(Seg::Key(k.clone()));
                leaves(v, path, out);
                path.pop();
            }
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_table) => {
            for (i, v) in a.iter().enumerate() {
                path.push(Seg::Index(i));
                leaves(v, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> &'a mut Value {
    path.iter().fold(v, |v, seg| match (seg, v) {
        (Seg::Key(k), Value::Table(t)) => t.get_mut(k).expect("key present"),
        (Seg::Index(i), Value::Array(a)) => &mut a[*i],
        (seg, _) => panic!("bad path segment {seg:?}"),
    })
}

fn default_text() -> String {
    std::fs::read_to_string(support::root().join("pipelines/default.toml")).expect("default.toml")
}

fn default_doc() -> Value {
    Value::Table(default_text().parse::<toml::Table>().expect("default.toml parses"))
}

fn table_names(doc: &Value, section: &str) -> Vec<String> {
    doc[section].as_table().expect("section is a table").keys().cloned().collect()
}

/// Strong perturbations of one leaf, in order of preference.
fn candidates(path_segs: &[Seg], v: &Value, doc: &Value) -> Vec<Value> {
    let path = render(path_segs);
    if let Some(c) = override_candidates(&path) {
        return c;
    }
    let last = match path_segs.last() {
        Some(Seg::Key(k)) => k.as_str(),
        _ => "",
    };
    match v {
        Value::Boolean(b) => vec![Value::Boolean(!b)],
        Value::Integer(0) => vec![Value::Integer(1), Value::Integer(10)],
        Value::Integer(n) => vec![Value::Integer(n * 2), Value::Integer(n / 2), Value::Integer(n * 10)],
        Value::Float(f) if *f == 0.0 => vec![Value::Float(1.0)],
        Value::Float(f) if *f < 1.0 => vec![Value::Float(f / 2.0), Value::Float((1.0 + f) / 2.0)],
        Value::Float(f) if *f == 1.0 => vec![Value::Float(0.5), Value::Float(2.0)],
        Value::Float(f) => vec![Value::Float(f * 2.0), Value::Float(f / 2.0)],
        Value::String(s) => {
            let domain: Vec<String> = if path.starts_with("topics.") {
                vec![format!("{s}.v2")]
            } else if path.starts_with("throttle[") && last == "severity" {
                ["normal", "high", "critical"].map(String::from).to_vec()
            } else if path.starts_with("alerts.") && last == "severity" {
                ["info", "warning", "medium", "high", "critical"].map(String::from).to_vec()
            } else if last == "strategy" {
                ["delay", "reject_with_backoff", "queue_with_timeout"].map(String::from).to_vec()
            } else if last == "guarantee" {
                ["at_least_once", "exactly_once"].map(String::from).to_vec()
            } else if last == "cpu_memory_aggregate" {
                ["mean", "max"].map(String::from).to_vec()
            } else if last == "too_far_ahead" {
                ["dead_letter", "clamp"].map(String::from).to_vec()
            } else if last == "default_tier" {
                table_names(doc, "tiers")
            } else if last == "default_request_type" {
                table_names(doc, "request_types")
            } else {
                panic!("no perturbation known for the string key {path}: teach `candidates` one");
            };
            domain.into_iter().filter(|d| d != s).map(Value::String).collect()
        }
        Value::Array(a) if a.is_empty() => {
            let domain = match last {
                "tiers" => table_names(doc, "tiers"),
                "request_types" => table_names(doc, "request_types"),
                "alternatives" => {
                    let own = match &path_segs[path_segs.len() - 2] {
                        Seg::Key(k) => k.clone(),
                        Seg::Index(_) => String::new(),
                    };
                    table_names(doc, "dependencies").into_iter().filter(|d| *d != own).collect()
                }
                _ => panic!("no perturbation known for the empty array {path}: teach `candidates` one"),
            };
            domain.into_iter().map(|d| Value::Array(vec![Value::String(d)])).collect()
        }
        Value::Array(a) => {
            let mut out = Vec::new();
            let reversed: Vec<Value> = a.iter().rev().cloned().collect();
            if reversed != *a {
                out.push(Value::Array(reversed));
            }
            out.push(Value::Array(a[..a.len() - 1].to_vec()));
            if a.len() > 1 {
                out.push(Value::Array(Vec::new()));
            }
            out
        }
        other => panic!("no perturbation known for {path} = {other}"),
    }
}

fn load(doc: &Value, origin: &str) -> Result<Config, ConfigErrors> {
    let text = toml::to_string(doc).expect("serialisable");
    load::load_str(&text, origin)
}

fn with(doc: &Value, path: &[Seg], value: &Value) -> Value {
    let mut d = doc.clone();
    *get_mut(&mut d, path) = value.clone();
    d
}

/// Whether a validation error is about `path`: the same key, or a table or array holding it.
fn names_key(error_key: &str, path: &str) -> bool {
    !error_key.is_empty() && (path == error_key || path.starts_with(&format!("{error_key}.")) || path.starts_with(&format!("{error_key}[")))
}

// ------------------------------------------------------------------------------------------------
// The scenario.

fn start() -> Millis {
    Surge::default().start
}

/// `min` minutes and `ms` milliseconds after the surge's start (Monday 09:00:00Z).
fn at(min: i64, ms: i64) -> Millis {
    start().plus_ms(min * 60_000 + ms)
}

/// Default tier figures the probes are built around: (tier, baseline_rpm, grace_allowance).
const TIERS: [(&str, u32, u32); 3] = [("free", 60, 10), ("pro", 600, 60), ("enterprise", 3000, 300)];

/// Minute (after 09:00) the correlation probe starts.
const CORRELATION: i64 = 70;

/// A cost no limit in any perturbed config reaches: always throttled, never drawn from grace.
const OVERSIZED: u32 = 1_000_000;

#[derive(Default)]
struct Hand {
    events: Vec<InputEvent>,
    n: u64,
}

impl Hand {
    fn req(&mut self, ts: Millis, user: &str, tier: &str, request_type: &str, cost: u32) {
        self.n += 1;
        self.events.push(InputEvent::Request(RequestEvent {
            id: format!("probe-{:06}", self.n).into(),
            ts,
            user_id: user.into(),
            tier: tier.into(),
            request_type: request_type.into(),
            cost,
        }));
    }

    fn outcome(&mut self, ts: Millis, dependency: &str, error: Option<ErrorClass>, latency_ms: f64) {
        self.events.push(InputEvent::Outcome(OutcomeEvent { ts, dependency: dependency.into(), ok: error.is_none(), error, latency_ms, request_id: None }));
    }

    fn admin(&mut self, ts: Millis, dependency: &str, action: AdminAction) {
        self.events.push(InputEvent::Admin(AdminEvent {
            ts,
            dependency: dependency.into(),
            action,
            key: None,
            rpm: None,
            until: None,
            actor: Some("probe-operator".into()),
        }));
    }

    /// A sample from the single probe host (after the surge's hosts went stale).
    fn sample(&mut self, ts: Millis, cpu: f64, db: f64, queue: f64) {
        self.events.push(InputEvent::Telemetry(TelemetrySample {
            ts,
            source: "probe-host".into(),
            cpu,
            memory: 0.1,
            db_connections_in_use: (db * 100.0).round() as u32,
            db_connections_max: 100,
            queue_depth: Some((queue * 1000.0).round() as u64),
            queue_capacity: Some(1000),
        }));
    }

    /// Per tier: fill the standard quota with one request of the baseline's cost, then draw
    /// `grace + 2` unit requests (all graced but two, when grace is fresh).
    fn grace_burst(&mut self, t: Millis) {
        for (i, (tier, baseline, grace)) in TIERS.iter().enumerate() {
            let user = format!("probe-grace-{tier}");
            let t = t.plus_ms(i as i64 * 2000);
            self.req(t, &user, tier, "standard", *baseline);
            for k in 0..grace + 2 {
                self.req(t.plus_ms(1 + i64::from(k)), &user, tier, "standard", 1);
            }
        }
    }

    /// `n` outcomes for `dependency` from `t`, one millisecond apart.
    fn outcomes(&mut self, t: Millis, dependency: &str, n: u32, error: Option<ErrorClass>, latency_ms: f64) {
        for k in 0..n {
            self.outcome(t.plus_ms(i64::from(k)), dependency, error, latency_ms);
        }
    }
}

/// The hand-made events (times are minutes after 09:00 unless said otherwise).
fn hand_events() -> Vec<InputEvent> {
    use ErrorClass::*;
    let mut h = Hand::default();

    // 09:00:01, healthy: a grace burst per tier; requests naming an unknown tier and type.
    h.grace_burst(at(0, 1000));
    h.req(at(0, 8000), "probe-unknown-tier", "platinum", "standard", 1);
    h.req(at(0, 8001), "probe-unknown-type", "pro", "bulk", 1);

    // 09:25: the surge's hosts have gone stale; the upstream recovers and its breaker closes.
    h.sample(at(25, 0), 0.1, 0.1, 0.0);
    h.outcomes(at(25, 10), "ai_primary", 10, None, 100.0);

    // 09:46, healthy again: grace spent at 09:00 still counts within a 3600 s grace window (the
    // limiter counts the current half window and the two before it); within 1800 s it is fresh.
    h.sample(at(46, 0), 0.1, 0.1, 0.0);
    h.grace_burst(at(46, 100));

    // 09:47: one telemetry step every 10 s, each isolating one multiplier step, with throttled
    // requests under critical, high and normal load. (cpu, db, queue) per step:
    let t2 = at(47, 0);
    let steps = [
        (0.92, 0.1, 0.0), // resource > 0.9, critical
        (0.85, 0.1, 0.0), // resource > 0.8, high
        (0.75, 0.1, 0.0), // resource > 0.7, normal
        (0.5, 0.1, 0.0),  // below every step (but above every halved one)
        (0.1, 0.95, 0.0), // db > 0.9, critical
        (0.1, 0.82, 0.0), // db > 0.75, high
        (0.1, 0.5, 0.0),
        (0.1, 0.1, 0.95), // queue > 0.9, critical
        (0.1, 0.1, 0.8),  // queue > 0.7, normal
        (0.1, 0.1, 0.5),
        (0.85, 0.1, 0.0), // the last sample before silence: its expiry is visible
    ];
    for (i, (cpu, db, queue)) in steps.iter().enumerate() {
        h.sample(t2.plus_ms(i as i64 * 10_000), *cpu, *db, *queue);
    }
    let probe = |h: &mut Hand, s: i64, tier: &str, rt: &str| {
        h.req(t2.plus_ms(s * 1000), &format!("probe-throttle-{tier}-{rt}"), tier, rt, OVERSIZED);
    };
    probe(&mut h, 1, "enterprise", "standard"); // critical: enterprise rule
    probe(&mut h, 2, "free", "standard"); // critical: catch-all
    probe(&mut h, 11, "free", "critical_business"); // high: critical-business rule
    probe(&mut h, 12, "free", "standard"); // high: catch-all
    probe(&mut h, 21, "free", "standard"); // normal: catch-all

    // From 09:49:25 (45 s of telemetry silence): breaker probes on their own dependencies.
    let t3 = t2.plus_ms(145_000);
    // Every error class once, then server errors: 6.5, 9.0, 11.5 → trips at 11.5.
    for (k, e) in [Timeout, RateLimit, ServerError, ClientError, Other, ServerError, ServerError].iter().enumerate() {
        h.outcome(t3.plus_ms(k as i64), "probe-weights", Some(*e), 10.0);
    }
    // 8 of 20 fail (weight 4): a 40 % failure rate, under the 50 % threshold.
    for k in 0..20 {
        let error = (k % 5 < 2).then_some(Other);
        h.outcome(t3.plus_ms(5000 + k), "probe-rate", error, 10.0);
    }
    // 10 slow calls then 10 of 3 s: a 50 % slow rate, under the 80 % threshold.
    h.outcomes(t3.plus_ms(10_000), "probe-slow-mixed", 10, None, 6000.0);
    h.outcomes(t3.plus_ms(10_010), "probe-slow-mixed", 10, None, 3000.0);
    // 20 slow calls: trips on the 20th (minimum_calls) at a 100 % slow rate.
    h.outcomes(t3.plus_ms(15_000), "probe-slow-all", 20, None, 6000.0);
    // The configured dependencies trip (ai_primary is closed): their fallback plans.
    h.outcomes(t3.plus_ms(20_000), "ai_secondary", 4, Some(ServerError), 10.0);
    h.outcomes(t3.plus_ms(25_000), "database", 4, Some(ServerError), 10.0);
    // Repeated trips from half-open: open 30, 60, 120, 240, then 480 capped at 300 s.
    let t4 = t3.plus_ms(35_000);
    h.outcomes(t4, "probe-backoff", 4, Some(ServerError), 10.0);
    for s in [31, 92, 213, 454] {
        h.outcomes(t4.plus_ms(s * 1000), "probe-backoff", 5, Some(ServerError), 10.0);
    }

    // 10:10-10:32: throttling that does not follow load: odd minutes low load and 60 throttles,
    // even minutes higher load and none. (Late enough that an earlier firing has cooled down.)
    for m in 0..22 {
        let load = if m % 2 == 1 { 0.1 } else { 0.6 };
        h.sample(at(CORRELATION + m, 0), load, 0.1, 0.0);
        h.sample(at(CORRELATION + m, 30_000), load, 0.1, 0.0);
        if m % 2 == 1 {
            for k in 0..60 {
                h.req(at(CORRELATION + m, 5000 + k * 500), "probe-corr", "free", "standard", OVERSIZED);
            }
        }
    }

    // 10:40: an operator puts a configured dependency (so its state moves the api multiplier)
    // through every admin state, then resets it.
    for (s, action) in [(0, AdminAction::ForceOpen), (10, AdminAction::Disable), (20, AdminAction::MetricsOnly), (30, AdminAction::Reset)] {
        h.admin(at(100, s * 1000), "database", action);
    }

    // 10:20: four server errors two seconds apart trip a learned dependency's breaker (weight
    // 4 × 2.5); dropped whenever idle for a second, it never would.
    for k in 0..4 {
        h.outcome(at(80, k * 2000), "probe-idle", Some(ServerError), 10.0);
    }

    // 10:41 and 10:43, after every breaker probe: outcomes naming 1 001 new dependencies each,
    // more than `learned_dependencies.max` leaves room for: the learned table is full (table_full
    // fires, and again only with a cool-down under two minutes; the second flood is all refused).
    for (m, tag) in [(101, "a"), (103, "b")] {
        for i in 0..1_001 {
            h.outcome(at(m, 0), &format!("probe-flood-{tag}-{i}"), None, 1.0);
        }
    }

    // 10:50: a late request; the sweep forgets users idle for an hour (not for two). Nothing
    // came for more than `event_time.max_future_skew_s`, so the next request, at another time,
    // confirms that time jumped (a lone event after a silence would be skipped).
    h.req(at(110, 0), "probe-late", "free", "standard", 1);
    h.req(at(110, 1000), "probe-late", "free", "standard", 1);
    h.events
}

/// Out-of-order probes, placed by their position in the input rather than by time: (where, the
/// event). A request stamped 7 minutes ahead of the stream (refused by the default
/// `event_time.max_future_skew_s`, taken by a larger one, processed at the stream's time by
/// `too_far_ahead = "clamp"`), and one 90 s behind (late for the default
/// `event_time.allowed_lateness_s`, not for twice it).
fn out_of_order_probes() -> Vec<(Millis, InputEvent)> {
    let mut h = Hand { events: Vec::new(), n: 900_000 };
    h.req(at(8, 0), "probe-future", "free", "standard", 1);
    h.req(at(0, 0), "probe-late-90", "free", "standard", 1);
    let mut events = h.events.into_iter();
    vec![(at(1, 0), events.next().expect("probe")), (at(1, 30_000), events.next().expect("probe"))]
}

/// The surge's parts used: normal load and the first trips; the high → critical transition with
/// trips from half-open; the peak with slow calls. (minutes, seconds) from, to.
const SURGE_CUTS: [((i64, i64), (i64, i64)); 3] = [((0, 0), (2, 0)), ((6, 40), (8, 40)), ((14, 20), (14, 40))];

fn scenario() -> Vec<u8> {
    let in_cut = |ts: Millis| SURGE_CUTS.iter().any(|((m0, s0), (m1, s1))| at(*m0, s0 * 1000) <= ts && ts < at(*m1, s1 * 1000));
    let mut all: Vec<(InputEvent, bool)> = monday_surge(&Surge::default()).into_iter().filter(|e| in_cut(e.ts())).map(|e| (e, false)).collect();
    all.extend(hand_events().into_iter().map(|e| (e, true)));
    all.sort_by_key(|(e, _)| e.ts()); // stable: equal times keep their order
    for (place, e) in out_of_order_probes() {
        let i = all.partition_point(|(x, _)| x.ts() < place);
        all.insert(i, (e, true));
    }
    let mut buf = limit_probes(at(0, 500));
    let mut line = Vec::new();
    const PREFIX: &[u8] = b"{\"topic\":\"";
    for (e, full_topic) in &all {
        line.clear();
        e.write_tagged_line(&mut line).expect("encodable");
        if *full_topic {
            assert!(line.starts_with(PREFIX));
            buf.extend_from_slice(PREFIX);
            buf.extend_from_slice(b"surgeguard.");
            buf.extend_from_slice(&line[PREFIX.len()..]);
        } else {
            buf.extend_from_slice(&line);
        }
    }
    buf
}

/// Inputs within the default `[limits]` and over half of them: each is decided (or, the admin
/// action, published) with the defaults, and refused with that limit halved.
fn limit_probes(ts: Millis) -> Vec<u8> {
    let ts = ts.to_string();
    let req = |id: &str, user: &str, tier: &str, pad: &str| {
        format!(r#"{{"topic":"requests","id":"{id}","ts":"{ts}","user_id":"{user}","tier":"{tier}","request_type":"standard","pad":"{pad}"}}"#)
    };
    [
        req(&"i".repeat(200), "probe-limit-id", "free", ""),
        req("probe-limit-user", &format!("probe-limit-{}", "u".repeat(190)), "free", ""),
        req("probe-limit-name", "probe-limit-name", &"t".repeat(100), ""),
        req("probe-limit-record", "probe-limit-record", "free", &"p".repeat(40_000)),
        format!(r#"{{"topic":"admin","ts":"{ts}","dependency":"probe-limit-actor","action":"force_open","actor":"{}"}}"#, "a".repeat(200)),
    ]
    .iter()
    .flat_map(|l| format!("{l}\n").into_bytes())
    .collect()
}

fn replay(cfg: Config, input: &[u8]) -> (Vec<u8>, ReplaySummary) {
    support::run(Arc::new(cfg), input)
}

/// Checks the unperturbed replay does what the probes were built for, so a perturbation that
/// changes nothing cannot hide behind a scenario that never reaches its key.
fn check_base(out: &[u8], summary: &ReplaySummary) {
    let text = std::str::from_utf8(out).expect("utf-8");
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let of = |topic: &'static str| lines.iter().filter(move |v| v["topic"] == topic);
    assert_eq!((summary.skipped, summary.too_far_ahead), (1, 1), "every line decodes, full topic names included; the future probe is skipped");
    assert_eq!(summary.counters.late, 1, "the probe 90 s behind is late");

    let decisions = |user: &str| -> Vec<&serde_json::Value> { of("decisions").filter(|d| d["user_id"] == user).collect() };
    // Grace bursts: the first has the whole allowance, the second (next half window) none.
    for (tier, _, grace) in TIERS {
        let d = decisions(&format!("probe-grace-{tier}"));
        let kinds = |ds: &[&serde_json::Value]| ds.iter().map(|d| d["decision"].as_str().unwrap().to_string()).collect::<Vec<_>>();
        let n = grace as usize + 3;
        assert_eq!(d.len(), 2 * n, "{tier}");
        let first = kinds(&d[..n]);
        assert_eq!(first[0], "allow", "{tier}");
        assert!(first[1..=grace as usize].iter().all(|k| k == "allow_with_grace"), "{tier}: {first:?}");
        assert!(first[n - 2..].iter().all(|k| k == "throttle"), "{tier}: {first:?}");
        let second = kinds(&d[n..]);
        assert_eq!(second[0], "allow", "{tier}");
        assert!(second[1..].iter().all(|k| k == "throttle"), "{tier}: {second:?}");
    }
    assert_eq!(decisions("probe-unknown-tier")[0]["unknown_tier"], "platinum");
    assert_eq!(decisions("probe-unknown-type")[0]["unknown_request_type"], "bulk");
    // Throttle probes: one cell of the strategy table each.
    for (user, severity, strategy) in [
        ("probe-throttle-enterprise-standard", "critical", r#"{"delay":{"seconds":5}}"#),
        ("probe-throttle-free-standard", "critical", r#"{"reject_with_backoff":{"seconds":30}}"#),
        ("probe-throttle-free-critical_business", "high", r#"{"delay":{"seconds":2}}"#),
        ("probe-throttle-free-standard", "high", r#"{"queue_with_timeout":{"seconds":10}}"#),
        ("probe-throttle-free-standard", "normal", r#"{"delay":{"seconds":1}}"#),
    ] {
        let strategy: serde_json::Value = serde_json::from_str(strategy).unwrap();
        let found = decisions(user).iter().any(|d| d["severity"] == severity && d["decision"] == "throttle" && d["strategy"] == strategy);
        assert!(found, "{user} under {severity} load gets {strategy}");
    }
    // Every multiplier step shows in a limit update's reason.
    for step in ["resource ×0.3", "resource ×0.6", "resource ×0.8", "db ×0.4", "db ×0.7", "queue ×0.5", "queue ×0.8", "api ×0.5", "api ×0.7"] {
        assert!(of("limits").any(|l| l["reason"].as_str().unwrap().contains(step)), "no limit update with {step}");
    }
    // Breakers.
    let transitions = |dep: &str| -> Vec<(String, String)> {
        of("breakers")
            .filter(|b| b["dependency"] == dep)
            .map(|b| (b["previous"].as_str().unwrap().to_string(), b["state"].as_str().unwrap().to_string()))
            .collect()
    };
    let primary = transitions("ai_primary");
    for t in [("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("half_open", "open")] {
        assert!(primary.contains(&(t.0.to_string(), t.1.to_string())), "ai_primary {t:?}: {primary:?}");
    }
    let weights = of("breakers").find(|b| b["dependency"] == "probe-weights").expect("probe-weights trips");
    assert_eq!((weights["failure_weight"].as_f64(), weights["calls"].as_u64()), (Some(11.5), Some(7)));
    assert!(transitions("probe-rate").is_empty() && transitions("probe-slow-mixed").is_empty());
    let slow = of("breakers").find(|b| b["dependency"] == "probe-slow-all").expect("probe-slow-all trips");
    assert_eq!((&slow["state"], slow["calls"].as_u64(), slow["slow_call_rate"].as_f64()), (&"open".into(), Some(20), Some(1.0)));
    let secondary = of("breakers").find(|b| b["dependency"] == "ai_secondary").expect("ai_secondary trips");
    assert_eq!(secondary["fallback"][0]["dependency"], "ai_primary");
    let backoff: Vec<i64> = of("breakers")
        .filter(|b| b["dependency"] == "probe-backoff" && b["state"] == "open")
        .map(|b| {
            let t = |k: &str| Millis::parse_rfc3339(b[k].as_str().unwrap()).unwrap().0;
            (t("retry_at") - t("ts")) / 1000
        })
        .collect();
    assert_eq!(backoff, vec![30, 60, 120, 240, 300]);
    let admin: Vec<String> = transitions("database").into_iter().map(|(_, to)| to).collect();
    assert!(admin.ends_with(&["forced_open", "disabled", "metrics_only", "closed"].map(String::from)), "database: {admin:?}");
    // Alerts: every rule fires, the correlation one twice (after its cool-down).
    let rules: Vec<&str> = of("alerts").map(|a| a["rule"].as_str().unwrap()).collect();
    for rule in ["throttling", "grace_usage", "breaker_tripped"] {
        assert!(rules.contains(&rule), "{rule}: {rules:?}");
    }
    let corr: Vec<Millis> =
        of("alerts").filter(|a| a["rule"] == "throttle_load_correlation").map(|a| Millis::parse_rfc3339(a["ts"].as_str().unwrap()).unwrap()).collect();
    assert!(corr.iter().filter(|ts| **ts >= at(CORRELATION, 0)).count() >= 2, "{corr:?}");
    // The late sweep forgot the surge's users.
    assert!(summary.counters.evicted_users > 0 && summary.tracked_users < 10, "{summary:?}");
}

// ------------------------------------------------------------------------------------------------

#[test]
fn every_key_in_default_toml_changes_behaviour() {
    let doc = default_doc();
    let mut paths = Vec::new();
    leaves(&doc, &mut Vec::new(), &mut paths);
    let names: BTreeSet<String> = paths.iter().map(|p| render(p)).collect();
    assert!(names.len() > 100 && names.contains("throttle[2].seconds") && names.contains("adaptive.resource[0].multiplier"));

    let mut failures = Vec::new();
    let lists = [("NOT_IN_REPLAY", NOT_IN_REPLAY), ("VALIDATION_ONLY", VALIDATION_ONLY), ("SUMMARY_ONLY", SUMMARY_ONLY)];
    let mut listed = BTreeSet::new();
    for (list, keys) in lists {
        for (key, _) in keys {
            if !names.contains(*key) {
                failures.push(format!("{list} names `{key}`, which is no longer in default.toml"));
            }
            if !listed.insert(*key) {
                failures.push(format!("`{key}` is listed twice"));
            }
        }
    }
    let in_list = |list: &[(&str, &str)], key: &str| list.iter().any(|(k, _)| *k == key);

    // Phase 1: choose each key's perturbation: the first candidate that passes validation.
    struct Job {
        key: String,
        value: Value,
        cfg: Config,
    }
    let mut jobs = Vec::new();
    for path in &paths {
        let key = render(path);
        if in_list(NOT_IN_REPLAY, &key) {
            continue;
        }
        let current = get_mut(&mut doc.clone(), path).clone();
        let mut rejected = Vec::new();
        let mut chosen = None;
        for value in candidates(path, &current, &doc) {
            match load(&with(&doc, path, &value), "perturbed.toml") {
                Ok(cfg) => {
                    chosen = Some((value, cfg));
                    break;
                }
                Err(e) => rejected.push((value, e)),
            }
        }
        match (chosen, in_list(VALIDATION_ONLY, &key)) {
            (Some((value, _)), true) => failures.push(format!("{key} = {value} passes validation: take it off VALIDATION_ONLY")),
            (Some((value, cfg)), false) => jobs.push(Job { key, value, cfg }),
            (None, listed) => {
                for (value, e) in &rejected {
                    if !e.errors.iter().any(|err| names_key(&err.key, &key)) {
                        failures.push(format!("{key} = {value} is rejected, but not for this key: {e}"));
                    }
                }
                if !listed {
                    let tried: Vec<String> = rejected.iter().map(|(v, _)| v.to_string()).collect();
                    failures.push(format!("{key}: every perturbation ({}) fails validation; find a valid one or list it in VALIDATION_ONLY", tried.join(", ")));
                }
            }
        }
    }

    // Phase 2: replay the unperturbed config (from the same serialisation path) and every
    // perturbed one, on as many threads as there are cores.
    let input = scenario();
    let base_cfg = load(&doc, "default.toml").unwrap_or_else(|e| panic!("{e}"));
    let (base, base_summary) = replay(base_cfg, &input);
    check_base(&base, &base_summary);
    let (direct, _) = support::run(support::default_config(), &input);
    assert!(direct == base, "re-serialising default.toml changed the replay");
    let evictions = |s: &ReplaySummary| (s.tracked_users, s.counters.evicted_users, s.counters.late);

    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let (out, summary) = replay(job.cfg.clone(), &input);
                    let changed = if in_list(SUMMARY_ONLY, &job.key) { evictions(&summary) != evictions(&base_summary) } else { out != base };
                    results.lock().unwrap().push((job.key.clone(), job.value.clone(), changed));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, value, changed) in &results {
        eprintln!("{key} = {value}: {}", if *changed { "changes the replay" } else { "NO CHANGE" });
        if !changed {
            failures.push(format!("{key} = {value} passes validation but does not change the replay"));
        }
    }
    assert!(failures.is_empty(), "{} problem(s):\n{}", failures.len(), failures.join("\n"));
}

// ------------------------------------------------------------------------------------------------
// `surgeguard check-config` through the binary.

/// A file under the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("surgeguard-config-keys-{}-{n}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `surgeguard check-config FILE`: (exit code, stdout, stderr).
fn check_config(file: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(support::bin()).arg("check-config").arg(file).env("RUST_LOG", "off").output().expect("run surgeguard");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Asserts stderr has a line naming the file, then `key: `, containing every fragment.
fn assert_error(stderr: &str, file: &Path, key: &str, fragments: &[&str]) {
    let prefix = format!("{}: {key}: ", file.display());
    let found = stderr.lines().map(str::trim).any(|l| l.starts_with(&prefix) && fragments.iter().all(|f| l.contains(f)));
    assert!(found, "no error line `{prefix}…` containing {fragments:?} in:\n{stderr}");
}

#[test]
fn check_config_accepts_the_default_pipeline() {
    let file = support::root().join("pipelines/default.toml");
    let (code, stdout, stderr) = check_config(&file);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.trim(), format!("{}: ok", file.display()));
}

#[test]
fn check_config_reports_every_structural_error_with_key_and_expectation() {
    let file = TempFile::new(
        "structural.toml",
        r#"
[limiter]
window_s = "sixty"
colour = "blue"

[tiers.pro]
baseline_rpm = 600
minimum_guaranteed = 100
maximum_burst = -5
grace_allowance = 60
grace_window_s = 3600

[[throttle]]
severity = "sometimes"
strategy = "delay"
seconds = 1

[breaker.weights]
timeout = "lots"

[extras]
x = 1
"#,
    );
    let (code, stdout, stderr) = check_config(&file.0);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(!stdout.contains("ok"), "{stdout}");
    assert!(stderr.contains(&format!("{}: 6 error(s)", file.0.display())), "{stderr}");
    assert_error(&stderr, &file.0, "limiter.window_s", &["invalid type: string \"sixty\"", "expected u32"]);
    assert_error(&stderr, &file.0, "limiter.colour", &["unknown field `colour`", "expected one of", "`window_s`"]);
    assert_error(&stderr, &file.0, "tiers.pro.maximum_burst", &["-5", "expected u32"]);
    assert_error(&stderr, &file.0, "throttle[0].severity", &["unknown variant `sometimes`", "expected one of", "`critical`"]);
    assert_error(&stderr, &file.0, "breaker.weights.timeout", &["invalid type: string \"lots\"", "expected f64"]);
    assert_error(&stderr, &file.0, "extras", &["unknown section", "expected one of", "limiter"]);
}

#[test]
fn check_config_reports_every_semantic_error_with_key_and_expectation() {
    let file = TempFile::new(
        "semantic.toml",
        r#"
[tiers.free]
baseline_rpm = 60
minimum_guaranteed = 10
maximum_burst = 120
grace_allowance = 10
grace_window_s = 3600

[tiers.pro]
baseline_rpm = 600
minimum_guaranteed = 2000
maximum_burst = 1200
grace_allowance = 60
grace_window_s = 3600

[[throttle]]
severity = "critical"
tiers = ["gold"]
strategy = "delay"
seconds = 5

[[throttle]]
severity = "critical"
strategy = "reject_with_backoff"
seconds = 30

[[throttle]]
severity = "high"
strategy = "queue_with_timeout"
seconds = 10

[[throttle]]
severity = "normal"
strategy = "delay"
seconds = 1

[dependencies.ai_primary]
alternatives = ["ai_tertiary"]

[adaptive]
severity_high = 0.95
"#,
    );
    let (code, stdout, stderr) = check_config(&file.0);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(!stdout.contains("ok"), "{stdout}");
    assert!(stderr.contains(&format!("{}: 4 error(s)", file.0.display())), "{stderr}");
    assert_error(&stderr, &file.0, "tiers.pro.minimum_guaranteed", &["expected ≤ maximum_burst (1200), got 2000"]);
    assert_error(&stderr, &file.0, "throttle[0].tiers", &["`gold` is not a configured tier (free, pro)"]);
    assert_error(&stderr, &file.0, "dependencies.ai_primary.alternatives", &["`ai_tertiary`", "another configured dependency (ai_primary)"]);
    assert_error(&stderr, &file.0, "adaptive.severity_critical", &["expected a utilisation above severity_high (0.95)", "got 0.9"]);
}

#[test]
fn check_config_reports_invalid_toml_syntax() {
    let file = TempFile::new("syntax.toml", "[limiter]\nwindow_s = 60\n[tiers.pro\nbaseline_rpm = 1\n");
    let (code, stdout, stderr) = check_config(&file.0);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains(&format!("{}: 1 error(s)", file.0.display())), "{stderr}");
    let line = stderr.lines().map(str::trim).find(|l| l.contains("not valid TOML")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.starts_with(&format!("{}: not valid TOML", file.0.display())), "{line}");
    assert!(stderr.contains("line 3"), "the syntax error's position: {stderr}");
}

#[test]
fn check_config_reports_a_missing_file() {
    let file = std::env::temp_dir().join(format!("surgeguard-config-keys-{}-missing.toml", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let (code, stdout, stderr) = check_config(&file);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains(&format!("{}: cannot read file", file.display())), "{stderr}");
}
