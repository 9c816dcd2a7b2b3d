//! Loading and validating a pipeline file: phase one of the two-phase config (parse and check
//! everything, then build the processors from the checked values).
//!
//! Every error names its key path and what was expected. Structural errors are collected by
//! deserialising each section and map entry on its own and, after an error, removing the bad key
//! and trying again, so one run of `check-config` reports them all.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::config::{BreakerConfig, Config, ErrorWeights, Step, ThrottleRule};
use crate::wire::limits::InputLimits;
use crate::wire::outputs::LoadSeverity;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `tiers.pro.baseline_rpm` (empty for file-level problems).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() { write!(f, "{}", self.message) } else { write!(f, "{}: {}", self.key, self.message) }
    }
}

/// All problems found in one file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    pub origin: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} error(s)", self.origin, self.errors.len())?;
        for e in &self.errors {
            write!(f, "\n  {}: {e}", self.origin)?;
        }
        Ok(())
    }
}

/// The default pipeline, `pipelines/default.toml`, built into the binary: `run`, `demo` and
/// `replay` use it when no `--config` (or `SURGEGUARD_CONFIG`) names a file, so they work from
/// any directory. A unit test checks that it loads to `Config::default()`.
pub const DEFAULT_PIPELINE: &str = include_str!("../../pipelines/default.toml");

/// Reads and validates a pipeline file.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors { origin: origin.clone(), errors: vec![ConfigError { key: String::new(), message: format!("cannot read file: {e}") }] })?;
    load_str(&text, &origin)
}

/// Parses and validates pipeline TOML. `origin` names the source in errors.
pub fn load_str(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let config = match text.parse::<toml::Table>() {
        Ok(table) => Some(from_table(table, &mut errors)),
        Err(e) => {
            errors.push(ConfigError { key: String::new(), message: format!("not valid TOML: {}", e.to_string().trim()) });
            None
        }
    };
    let Some(c) = config else { return Err(ConfigErrors { origin: origin.into(), errors }) };
    // Semantic checks run even after structural errors, so one run reports both; a section that
    // failed to parse holds defaults, so checks that read it are skipped (no false errors).
    let failed: BTreeSet<String> = errors.iter().map(|e| section_of(&e.key).to_string()).collect();
    let mut semantic = Vec::new();
    validate(&c, &mut semantic);
    errors.extend(semantic.into_iter().filter(|e| !depends_on(&e.key).iter().any(|s| failed.contains(*s))));
    if errors.is_empty() { Ok(c) } else { Err(ConfigErrors { origin: origin.into(), errors }) }
}

/// The top-level section of a key path (`tiers` for `tiers.pro.baseline_rpm`).
fn section_of(key: &str) -> &str {
    key.split(['.', '[']).next().unwrap_or(key)
}

/// The sections a semantic check on `key` reads.
fn depends_on(key: &str) -> Vec<&str> {
    let own = section_of(key);
    let mut sections = vec![own];
    match own {
        "limiter" if key.ends_with("default_tier") || key.ends_with("evict_idle_after_s") => sections.push("tiers"),
        "limiter" if key.ends_with("default_request_type") => sections.push("request_types"),
        "tiers" if key.ends_with("grace_window_s") => sections.push("limiter"),
        "throttle" => sections.extend(["tiers", "request_types"]),
        "dependencies" => sections.push("breaker"),
        _ => {}
    }
    sections
}

fn push(errors: &mut Vec<ConfigError>, key: impl Into<String>, message: impl Into<String>) {
    errors.push(ConfigError { key: key.into(), message: message.into() });
}

fn join(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty() || rest == ".") {
        (_, true) => prefix.to_string(),
        (true, false) => rest.to_string(),
        (false, false) if rest.starts_with('[') => format!("{prefix}{rest}"),
        (false, false) => format!("{prefix}.{rest}"),
    }
}

/// The name inside the first pair of backticks of a serde message (`unknown field `x``).
fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// Removes the value at a serde_path_to_error path from `value`; false if it is not there.
fn remove_at(value: &mut toml::Value, segments: &[String]) -> bool {
    let Some((last, parents)) = segments.split_last() else { return false };
    let mut cur = value;
    for seg in parents {
        cur = match (cur, seg.parse::<usize>()) {
            (toml::Value::Array(a), Ok(i)) if i < a.len() => &mut a[i],
            (toml::Value::Table(t), _) => match t.get_mut(seg) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (cur, last.parse::<usize>()) {
        // Removing an array element would shift the others' paths: replace it by an empty table,
        // which re-reports as a missing field at the same index; the caller stops at repeats.
        (toml::Value::Array(_), Ok(_)) => false,
        (toml::Value::Table(t), _) => t.remove(last).is_some(),
        _ => false,
    }
}

/// Deserialises `value` as `T`, recording every error it can find under `prefix`.
fn parse<T: DeserializeOwned>(mut value: toml::Value, prefix: &str, errors: &mut Vec<ConfigError>) -> Option<T> {
    let mut seen = BTreeSet::new();
    // Keys removed after an error: a required one then reads as missing, which is not news.
    let mut removed = BTreeSet::new();
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return if seen.is_empty() { Some(v) } else { None },
            Err(e) => {
                let segments: Vec<String> = e
                    .path()
                    .iter()
                    .map(|s| match s {
                        serde_path_to_error::Segment::Seq { index } => index.to_string(),
                        serde_path_to_error::Segment::Map { key } => key.clone(),
                        serde_path_to_error::Segment::Enum { variant } => variant.clone(),
                        serde_path_to_error::Segment::Unknown => "?".into(),
                    })
                    .collect();
                // The toml deserializer appends "in `path`" lines; the key path says that already.
                let full = e.inner().to_string();
                let message = full.lines().take_while(|l| !l.starts_with("in `")).collect::<Vec<_>>().join(" ").trim().to_string();
                let mut target = segments.clone();
                if message.starts_with("unknown field") {
                    if let Some(name) = backticked(&message) {
                        if target.last().map(String::as_str) != Some(name) {
                            target.push(name.to_string());
                        }
                    }
                }
                let path = target.iter().fold(String::new(), |acc, s| if s.parse::<usize>().is_ok() { format!("{acc}[{s}]") } else { join(&acc, s) });
                let key = join(prefix, &path);
                if message.starts_with("missing field") && backticked(&message).is_some_and(|name| removed.contains(&join(&key, name))) {
                    return None;
                }
                if !seen.insert((key.clone(), message.clone())) {
                    return None;
                }
                push(errors, key.clone(), message);
                if !remove_at(&mut value, &target) {
                    return None;
                }
                removed.insert(key);
            }
        }
    }
    None
}

fn parse_map<T: DeserializeOwned>(value: toml::Value, prefix: &str, errors: &mut Vec<ConfigError>) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    match value {
        toml::Value::Table(t) => {
            for (name, v) in t {
                if let Some(parsed) = parse(v, &format!("{prefix}.{name}"), errors) {
                    out.insert(name, parsed);
                }
            }
        }
        other => push(errors, prefix, format!("invalid type: {}, expected a table", other.type_str())),
    }
    out
}

fn set<T: DeserializeOwned>(slot: &mut T, value: toml::Value, prefix: &str, errors: &mut Vec<ConfigError>) {
    if let Some(v) = parse(value, prefix, errors) {
        *slot = v;
    }
}

const SECTIONS: &str = "limiter, tiers, request_types, throttle, health, adaptive, breaker, dependencies, learned_dependencies, fallback, monitor, alerts, prediction, event_time, limits, api, topics, kafka";

/// librdkafka properties surgeguard sets itself; a pipeline file may not override them.
pub const MANAGED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.idempotence",
    "acks",
    "isolation.level",
    "transactional.id",
];

fn from_table(table: toml::Table, errors: &mut Vec<ConfigError>) -> Config {
    let mut c = Config::default();
    let mut breaker_table = toml::Table::new();
    for (key, value) in table {
        match key.as_str() {
            "limiter" => set(&mut c.limiter, value, "limiter", errors),
            "tiers" => c.tiers = parse_map(value, "tiers", errors),
            "request_types" => c.request_types = parse_map(value, "request_types", errors),
            "throttle" => set(&mut c.throttle, value, "throttle", errors),
            "health" => set(&mut c.health, value, "health", errors),
            "adaptive" => set(&mut c.adaptive, value, "adaptive", errors),
            "breaker" => {
                if let toml::Value::Table(t) = &value {
                    breaker_table = t.clone();
                }
                set(&mut c.breaker, value, "breaker", errors)
            }
            "dependencies" => c.dependencies = parse_map(value, "dependencies", errors),
            "learned_dependencies" => set(&mut c.learned_dependencies, value, "learned_dependencies", errors),
            "fallback" => set(&mut c.fallback, value, "fallback", errors),
            "monitor" => set(&mut c.monitor, value, "monitor", errors),
            "alerts" => set(&mut c.alerts, value, "alerts", errors),
            "prediction" => set(&mut c.prediction, value, "prediction", errors),
            "event_time" => set(&mut c.event_time, value, "event_time", errors),
            "limits" => set(&mut c.limits, value, "limits", errors),
            "api" => set(&mut c.api, value, "api", errors),
            "topics" => set(&mut c.topics, value, "topics", errors),
            "kafka" => set(&mut c.kafka, value, "kafka", errors),
            other => push(errors, other, format!("unknown section, expected one of {SECTIONS}")),
        }
    }
    // Each dependency's breaker: [breaker] with the dependency's overrides on top.
    c.resolved_breakers.clear();
    for (name, dep) in &c.dependencies {
        let mut merged = breaker_table.clone();
        for (k, v) in &dep.breaker {
            match (merged.get_mut(k), v) {
                (Some(toml::Value::Table(base)), toml::Value::Table(over)) => {
                    base.extend(over.iter().map(|(a, b)| (a.clone(), b.clone())));
                }
                _ => {
                    merged.insert(k.clone(), v.clone());
                }
            }
        }
        let prefix = format!("dependencies.{name}.breaker");
        let mut found = Vec::new();
        if let Some(b) = parse::<BreakerConfig>(toml::Value::Table(merged), &prefix, &mut found) {
            c.resolved_breakers.insert(name.clone(), b);
        }
        // Errors in keys inherited from [breaker] were reported once, under `breaker.`; report
        // here only those in keys the dependency itself writes.
        errors.extend(found.into_iter().filter(|e| {
            let own = e.key.strip_prefix(&prefix).map(|rest| rest.trim_start_matches('.'));
            own.is_none_or(|rest| written_in(&dep.breaker, rest))
        }));
    }
    c
}

/// Whether the dotted `key` (empty: the table itself) is written in `table`.
fn written_in(table: &toml::Table, key: &str) -> bool {
    if key.is_empty() {
        return true;
    }
    let (first, rest) = key.split_once('.').unwrap_or((key, ""));
    match table.get(first) {
        None => false,
        Some(toml::Value::Table(inner)) if !rest.is_empty() => written_in(inner, rest),
        Some(_) => true,
    }
}

fn check(errors: &mut Vec<ConfigError>, ok: bool, key: impl Into<String>, message: impl FnOnce() -> String) {
    if !ok {
        push(errors, key, message());
    }
}

fn check_steps(errors: &mut Vec<ConfigError>, key: &str, steps: &[Step]) {
    for (i, s) in steps.iter().enumerate() {
        check(errors, (0.0..1.0).contains(&s.above), format!("{key}[{i}].above"), || format!("expected a utilisation in 0..1, got {}", s.above));
        check(errors, s.multiplier > 0.0 && s.multiplier <= 10.0, format!("{key}[{i}].multiplier"), || {
            format!("expected a factor in (0, 10], got {}", s.multiplier)
        });
    }
}

fn check_breaker(errors: &mut Vec<ConfigError>, key: &str, b: &BreakerConfig) {
    check(errors, (1..=3600).contains(&b.window_s), format!("{key}.window_s"), || format!("expected 1..=3600 seconds, got {}", b.window_s));
    check(errors, b.weight_threshold > 0.0 && b.weight_threshold <= 1e9, format!("{key}.weight_threshold"), || {
        format!("expected a number in (0, 1e9], got {}", b.weight_threshold)
    });
    for (name, v) in [("failure_rate_threshold", b.failure_rate_threshold), ("slow_call_rate_threshold", b.slow_call_rate_threshold)] {
        check(errors, v > 0.0 && v <= 1.0, format!("{key}.{name}"), || format!("expected a rate in (0, 1], got {v}"));
    }
    check(errors, b.minimum_calls >= 1, format!("{key}.minimum_calls"), || "expected ≥ 1".into());
    check(errors, b.half_open_probes >= 1, format!("{key}.half_open_probes"), || "expected ≥ 1".into());
    check(errors, b.recovery_timeout_s >= 1, format!("{key}.recovery_timeout_s"), || "expected ≥ 1 second".into());
    check(errors, (1.0..=100.0).contains(&b.backoff_multiplier), format!("{key}.backoff_multiplier"), || {
        format!("expected a factor in 1..=100, got {}", b.backoff_multiplier)
    });
    check(errors, b.max_recovery_timeout_s >= b.recovery_timeout_s, format!("{key}.max_recovery_timeout_s"), || {
        format!("expected ≥ recovery_timeout_s ({}), got {}", b.recovery_timeout_s, b.max_recovery_timeout_s)
    });
    let ErrorWeights { timeout, rate_limit, server_error, client_error, other } = b.weights;
    for (name, w) in [("timeout", timeout), ("rate_limit", rate_limit), ("server_error", server_error), ("client_error", client_error), ("other", other)] {
        check(errors, (0.0..=1e6).contains(&w), format!("{key}.weights.{name}"), || format!("expected a weight in 0..=1e6, got {w}"));
    }
}

fn check_topic(errors: &mut Vec<ConfigError>, key: &str, name: &str) {
    let valid = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    check(errors, valid, format!("topics.{key}"), || format!("expected a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -), got `{name}`"));
}

fn validate(c: &Config, errors: &mut Vec<ConfigError>) {
    let l = &c.limiter;
    check(errors, (1..=86_400).contains(&l.window_s), "limiter.window_s", || format!("expected 1..=86400 seconds, got {}", l.window_s));
    check(errors, c.tiers.contains_key(&l.default_tier), "limiter.default_tier", || {
        format!("expected one of the tiers ({}), got `{}`", names(&c.tiers), l.default_tier)
    });
    check(errors, c.request_types.contains_key(&l.default_request_type), "limiter.default_request_type", || {
        format!("expected one of the request types ({}), got `{}`", names(&c.request_types), l.default_request_type)
    });
    check(errors, l.sweep_every_s >= 1, "limiter.sweep_every_s", || "expected ≥ 1 second".into());
    check(errors, (100..=100_000_000).contains(&l.max_keys_per_partition), "limiter.max_keys_per_partition", || {
        format!("expected 100..=100000000 keys, got {}", l.max_keys_per_partition)
    });
    let longest_grace = c.tiers.values().map(|t| t.grace_window_s).max().unwrap_or(0);
    check(errors, l.evict_idle_after_s >= l.window_s.max(longest_grace), "limiter.evict_idle_after_s", || {
        format!("expected ≥ the window and every grace window ({} s), got {}", l.window_s.max(longest_grace), l.evict_idle_after_s)
    });

    check(errors, !c.tiers.is_empty(), "tiers", || "expected at least one tier".into());
    for (name, t) in &c.tiers {
        let key = format!("tiers.{name}");
        check(errors, t.baseline_rpm >= 1, format!("{key}.baseline_rpm"), || "expected ≥ 1".into());
        check(errors, t.maximum_burst >= 1, format!("{key}.maximum_burst"), || "expected ≥ 1".into());
        check(errors, t.minimum_guaranteed <= t.maximum_burst, format!("{key}.minimum_guaranteed"), || {
            format!("expected ≤ maximum_burst ({}), got {}", t.maximum_burst, t.minimum_guaranteed)
        });
        check(errors, t.grace_window_s >= l.window_s && t.grace_window_s <= 2_592_000, format!("{key}.grace_window_s"), || {
            format!("expected ≥ limiter.window_s ({}) and ≤ 2592000 (30 days), got {}", l.window_s, t.grace_window_s)
        });
    }
    check(errors, !c.request_types.is_empty(), "request_types", || "expected at least one request type".into());
    for (name, r) in &c.request_types {
        check(errors, r.share > 0.0 && r.share <= 10.0, format!("request_types.{name}.share"), || format!("expected a factor in (0, 10], got {}", r.share));
    }

    for (i, r) in c.throttle.iter().enumerate() {
        let ThrottleRule { tiers, request_types, seconds, .. } = r;
        for t in tiers {
            check(errors, c.tiers.contains_key(t), format!("throttle[{i}].tiers"), || format!("`{t}` is not a configured tier ({})", names(&c.tiers)));
        }
        for t in request_types {
            check(errors, c.request_types.contains_key(t), format!("throttle[{i}].request_types"), || {
                format!("`{t}` is not a configured request type ({})", names(&c.request_types))
            });
        }
        check(errors, *seconds >= 1, format!("throttle[{i}].seconds"), || "expected ≥ 1".into());
    }
    for sev in [LoadSeverity::Normal, LoadSeverity::High, LoadSeverity::Critical] {
        let has_catch_all = c.throttle.iter().any(|r| r.severity == sev && r.tiers.is_empty() && r.request_types.is_empty());
        check(errors, has_catch_all, "throttle", || format!("expected a rule for severity `{}` with no tiers and no request_types (a catch-all)", sev.name()));
    }

    check(errors, c.health.stale_after_s >= 1, "health.stale_after_s", || "expected ≥ 1 second".into());
    check(errors, (1..=1_000_000).contains(&c.health.max_sources), "health.max_sources", || {
        format!("expected 1..=1000000 sources, got {}", c.health.max_sources)
    });
    let a = &c.adaptive;
    check(errors, a.severity_high > 0.0 && a.severity_high < 1.0, "adaptive.severity_high", || {
        format!("expected a utilisation in (0, 1), got {}", a.severity_high)
    });
    check(errors, a.severity_critical > a.severity_high && a.severity_critical <= 1.0, "adaptive.severity_critical", || {
        format!("expected a utilisation above severity_high ({}) and ≤ 1, got {}", a.severity_high, a.severity_critical)
    });
    check_steps(errors, "adaptive.resource", &a.resource);
    check_steps(errors, "adaptive.db", &a.db);
    check_steps(errors, "adaptive.queue", &a.queue);
    let api = &a.api;
    for (name, v) in [
        ("closed", api.closed),
        ("half_open", api.half_open),
        ("open", api.open),
        ("forced_open", api.forced_open),
        ("disabled", api.disabled),
        ("metrics_only", api.metrics_only),
    ] {
        check(errors, v > 0.0 && v <= 10.0, format!("adaptive.api.{name}"), || format!("expected a factor in (0, 10], got {v}"));
    }

    check_breaker(errors, "breaker", &c.breaker);
    for (name, dep) in &c.dependencies {
        if let Some(b) = c.resolved_breakers.get(name) {
            if !dep.breaker.is_empty() {
                check_breaker(errors, &format!("dependencies.{name}.breaker"), b);
            }
        }
        for alt in &dep.alternatives {
            check(errors, alt != name && c.dependencies.contains_key(alt), format!("dependencies.{name}.alternatives"), || {
                format!("`{alt}` must be another configured dependency ({})", names(&c.dependencies))
            });
        }
    }

    let ld = &c.learned_dependencies;
    check(errors, ld.max <= 1_000_000, "learned_dependencies.max", || format!("expected 0..=1000000 dependencies, got {}", ld.max));
    check(errors, (1..=2_592_000).contains(&ld.evict_idle_after_s), "learned_dependencies.evict_idle_after_s", || {
        format!("expected 1..=2592000 seconds, got {}", ld.evict_idle_after_s)
    });
    let f = &c.fallback;
    let distinct: BTreeSet<_> = f.order.iter().map(|k| *k as u8).collect();
    check(errors, !f.order.is_empty() && distinct.len() == f.order.len(), "fallback.order", || {
        "expected each of alternative, cache, rules, template at most once".into()
    });
    for (name, v) in [("cache_min_similarity", f.cache_min_similarity), ("cache_min_quality", f.cache_min_quality)] {
        check(errors, (0.0..=1.0).contains(&v), format!("fallback.{name}"), || format!("expected a score in 0..1, got {v}"));
    }
    check(errors, c.monitor.correlation_window_minutes >= 3, "monitor.correlation_window_minutes", || "expected ≥ 3 minutes".into());
    check(errors, c.monitor.lateness_s <= 3600, "monitor.lateness_s", || "expected at most 3600 seconds".into());
    let al = &c.alerts;
    let t = al.throttling.threshold;
    check(errors, (0.0..=1e12).contains(&t), "alerts.throttling.threshold", || format!("expected throttled requests per minute in 0..=1e12, got {t}"));
    let g = al.grace_usage.threshold;
    check(errors, (0.0..=1.0).contains(&g), "alerts.grace_usage.threshold", || format!("expected a share in 0..=1, got {g}"));
    let corr = al.throttle_load_correlation.threshold;
    check(errors, (-1.0..=1.0).contains(&corr), "alerts.throttle_load_correlation.threshold", || format!("expected a correlation in -1..1, got {corr}"));

    let p = &c.prediction;
    check(errors, p.spike_factor > 1.0 && p.spike_factor.is_finite(), "prediction.spike_factor", || format!("expected a factor > 1, got {}", p.spike_factor));
    check(errors, (0.0..1.0).contains(&p.min_confidence), "prediction.min_confidence", || format!("expected a probability in 0..1, got {}", p.min_confidence));
    check(errors, p.coverage > 0.0 && p.coverage <= 0.98, "prediction.coverage", || {
        format!("expected a coverage in (0, 0.98] (model files keep score quantiles from 1 % to 99 %), got {}", p.coverage)
    });
    check(errors, p.allowed_lateness_s <= 86_400, "prediction.allowed_lateness_s", || format!("expected 0..=86400 seconds, got {}", p.allowed_lateness_s));
    check(errors, !p.scope.is_empty(), "prediction.scope", || "expected a non-empty key".into());
    check(errors, p.history.is_empty() || !p.model.is_empty(), "prediction.history", || {
        "expected empty while prediction.model is empty (there is no model to seed)".into()
    });
    let et = &c.event_time;
    check(errors, et.max_future_skew_s <= 2_592_000, "event_time.max_future_skew_s", || {
        format!("expected 0 (off) ..= 2592000 seconds (30 days), got {}", et.max_future_skew_s)
    });
    check(errors, et.allowed_lateness_s <= 86_400, "event_time.allowed_lateness_s", || format!("expected 0..=86400 seconds, got {}", et.allowed_lateness_s));
    let lim = &c.limits;
    let most = InputLimits::MAX_RECORD_BYTES;
    check(errors, (256..=most).contains(&lim.record_bytes), "limits.record_bytes", || format!("expected 256..={most} bytes, got {}", lim.record_bytes));
    for (name, v) in [("id_bytes", lim.id_bytes), ("user_id_bytes", lim.user_id_bytes), ("name_bytes", lim.name_bytes), ("text_bytes", lim.text_bytes)] {
        check(errors, v >= 1 && v <= lim.record_bytes, format!("limits.{name}"), || {
            format!("expected 1..=limits.record_bytes ({}) bytes, got {v}", lim.record_bytes)
        });
    }
    let listen = &c.api.listen;
    check(errors, listen.is_empty() || listen.parse::<std::net::SocketAddr>().is_ok(), "api.listen", || {
        format!("expected \"\" (off) or an address such as 127.0.0.1:8480, got `{listen}`")
    });
    let body = c.api.max_body_bytes;
    check(errors, (256..=16 << 20).contains(&body), "api.max_body_bytes", || format!("expected 256..=16777216 bytes, got {body}"));
    // Both tables are sized for half of it on the first decision.
    let remembered = c.api.idempotency_capacity;
    check(errors, remembered <= 10_000_000, "api.idempotency_capacity", || format!("expected 0..=10000000 decisions, got {remembered}"));
    let remembered_bytes = c.api.idempotency_max_bytes;
    check(errors, ((1 << 20)..=(16 << 30)).contains(&remembered_bytes), "api.idempotency_max_bytes", || {
        format!("expected 1048576..=17179869184 bytes (1 MiB to 16 GiB), got {remembered_bytes}")
    });
    let skew = c.api.max_clock_skew_s;
    check(errors, (1..=86_400).contains(&skew), "api.max_clock_skew_s", || format!("expected 1..=86400 seconds, got {skew}"));
    let window = c.api.idempotency_window_s;
    check(errors, window <= 86_400, "api.idempotency_window_s", || format!("expected 0..=86400 seconds, got {window}"));

    check_kafka(c, errors);
    let t = &c.topics;
    let all = [
        ("requests", &t.requests),
        ("outcomes", &t.outcomes),
        ("telemetry", &t.telemetry),
        ("admin", &t.admin),
        ("decisions", &t.decisions),
        ("limits", &t.limits),
        ("breakers", &t.breakers),
        ("predictions", &t.predictions),
        ("alerts", &t.alerts),
        ("dlq", &t.dlq),
    ];
    let mut seen = BTreeMap::new();
    for (key, name) in all {
        check_topic(errors, key, name);
        if let Some(first) = seen.insert(name.as_str(), key) {
            push(errors, format!("topics.{key}"), format!("`{name}` is already the {first} topic"));
        }
    }
}

fn check_kafka(c: &Config, errors: &mut Vec<ConfigError>) {
    let k = &c.kafka;
    check(errors, !k.brokers.trim().is_empty(), "kafka.brokers", || "expected host:port[,host:port…]".into());
    check(errors, !k.group_id.is_empty(), "kafka.group_id", || "expected a consumer group name".into());
    check(errors, k.replication_factor == -1 || k.replication_factor >= 1, "kafka.replication_factor", || {
        format!("expected -1 (the broker's default) or ≥ 1, got {}", k.replication_factor)
    });
    check(errors, k.instance_name.is_empty() || valid_instance_name(&k.instance_name), "kafka.instance_name", || {
        format!("{INSTANCE_NAME_RULE}, got `{}`", k.instance_name)
    });
    check(errors, k.max_idle_ms <= 60_000, "kafka.max_idle_ms", || format!("expected 0..=60000 ms, got {}", k.max_idle_ms));
    check(errors, (1000..=3_600_000).contains(&k.usage_silence_ms), "kafka.usage_silence_ms", || {
        format!("expected 1000..=3600000 ms, got {}", k.usage_silence_ms)
    });
    check(errors, (10..=600_000).contains(&k.restart_backoff_ms), "kafka.restart_backoff_ms", || {
        format!("expected 10..=600000 ms, got {}", k.restart_backoff_ms)
    });
    check(errors, (k.restart_backoff_ms..=3_600_000).contains(&k.restart_backoff_max_ms), "kafka.restart_backoff_max_ms", || {
        format!("expected kafka.restart_backoff_ms ({})..=3600000 ms, got {}", k.restart_backoff_ms, k.restart_backoff_max_ms)
    });
    check(errors, (1..=100).contains(&k.quarantine_after), "kafka.quarantine_after", || format!("expected 1..=100 restarts, got {}", k.quarantine_after));
    let p = &k.partitions;
    for (name, n) in [
        ("requests", p.requests),
        ("outcomes", p.outcomes),
        ("telemetry", p.telemetry),
        ("admin", p.admin),
        ("decisions", p.decisions),
        ("limits", p.limits),
        ("breakers", p.breakers),
        ("predictions", p.predictions),
        ("alerts", p.alerts),
        ("dlq", p.dlq),
    ] {
        check(errors, n >= 1, format!("kafka.partitions.{name}"), || format!("expected ≥ 1, got {n}"));
    }
    for key in k.properties.keys() {
        check(errors, !MANAGED_PROPERTIES.contains(&key.as_str()), format!("kafka.properties.\"{key}\""), || {
            "set by surgeguard itself (use kafka.brokers / kafka.group_id, or leave it out)".into()
        });
    }
}

/// What a `kafka.instance_name` may be.
pub const INSTANCE_NAME_RULE: &str = "expected 1 to 249 of A-Z a-z 0-9 . _ - (a pod or host name)";

/// Whether `name` can be a group member's `group.instance.id`.
pub fn valid_instance_name(name: &str) -> bool {
    (1..=249).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn names<T>(map: &BTreeMap<String, T>) -> String {
    map.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = DEFAULT_PIPELINE;

    #[test]
    fn default_toml_is_the_built_in_default() {
        let loaded = load_str(DEFAULT, "default.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded, Config::default());
    }

    /// Every field of the config structs is written out in default.toml (the other direction,
    /// every key in the file is a field, is `deny_unknown_fields` in the test above).
    #[test]
    fn default_toml_writes_out_every_field() {
        fn keys(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        keys(&join(prefix, k), v, out);
                    }
                }
                toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                    for v in a {
                        keys(&format!("{prefix}[]"), v, out);
                    }
                }
                _ => {
                    out.insert(prefix.to_string());
                }
            }
        }
        let from_code = toml::Value::try_from(Config::default()).unwrap();
        let from_file: toml::Value = toml::from_str(DEFAULT).unwrap();
        let (mut a, mut b) = (BTreeSet::new(), BTreeSet::new());
        keys("", &from_code, &mut a);
        keys("", &from_file, &mut b);
        // Empty override tables serialise to nothing in the file.
        let missing: Vec<_> = a.difference(&b).filter(|k| !k.ends_with(".breaker")).collect();
        assert!(missing.is_empty(), "fields not written out in default.toml: {missing:?}");
    }

    fn errors(text: &str) -> Vec<String> {
        match load_str(text, "t.toml") {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let errs = errors(
            r#"
            [limiter]
            window_s = "sixty"
            colour = "blue"
            [tiers.pro]
            baseline_rpm = 600
            minimum_guaranteed = 100
            maximum_burst = -5
            grace_allowance = 1
            grace_window_s = 3600
            [breaker]
            failure_rate_threshold = 0.5
            weights = { timeout = "lots" }
            [extra]
            x = 1
            "#,
        );
        let want = ["limiter.window_s", "limiter.colour", "tiers.pro.maximum_burst", "breaker.weights.timeout", "extra"];
        for key in want {
            assert!(errs.iter().any(|e| e.starts_with(&format!("{key}: "))), "no error for {key}: {errs:#?}");
        }
    }

    #[test]
    fn semantic_errors_name_key_and_expectation() {
        let errs = errors(
            r#"
            [limiter]
            default_tier = "gold"
            [adaptive]
            severity_high = 0.95
            severity_critical = 0.9
            [breaker]
            failure_rate_threshold = 1.5
            [dependencies.a]
            alternatives = ["nope"]
            [dependencies.b]
            breaker = { minimum_calls = 0 }
            [[throttle]]
            severity = "normal"
            tiers = ["gold"]
            strategy = "delay"
            seconds = 1
            [api]
            idempotency_capacity = 1000000000
            idempotency_window_s = 100000
            "#,
        );
        let want = [
            ("api.idempotency_capacity", "0..=10000000 decisions"),
            ("api.idempotency_window_s", "0..=86400 seconds"),
            ("limiter.default_tier", "expected one of the tiers"),
            ("adaptive.severity_critical", "above severity_high"),
            ("breaker.failure_rate_threshold", "(0, 1]"),
            ("dependencies.a.alternatives", "`nope`"),
            ("dependencies.b.breaker.minimum_calls", "≥ 1"),
            ("throttle[0].tiers", "`gold`"),
            ("throttle", "catch-all"),
        ];
        for (key, text) in want {
            assert!(errs.iter().any(|e| e.starts_with(&format!("{key}: ")) && e.contains(text)), "no `{text}` error for {key}: {errs:#?}");
        }
    }

    /// A bad value is one error: not also a "missing field" once it is set aside, nor repeated
    /// under every dependency that inherits it from [breaker].
    #[test]
    fn one_mistake_is_one_error() {
        let errs = errors(
            r#"
            [breaker.weights]
            timeout = "lots"
            [[throttle]]
            severity = "sometimes"
            strategy = "delay"
            seconds = 1
            [dependencies.a]
            [dependencies.b]
            breaker = { weights = { other = "x" } }
            "#,
        );
        assert_eq!(errs.len(), 3, "{errs:#?}");
        assert!(errs[0].starts_with("breaker.weights.timeout: invalid type"), "{errs:#?}");
        assert!(errs[1].starts_with("throttle[0].severity: unknown variant"), "{errs:#?}");
        assert!(errs[2].starts_with("dependencies.b.breaker.weights.other: invalid type"), "{errs:#?}");
    }

    #[test]
    fn structural_and_semantic_errors_come_in_one_report_without_false_ones() {
        let errs = errors(
            r#"
            [limiter]
            window_s = "sixty"
            default_tier = "gold"
            [tiers.gold]
            baseline_rpm = 600
            minimum_guaranteed = 500
            maximum_burst = 120
            grace_allowance = 60
            grace_window_s = 3600
            "#,
        );
        assert!(errs.iter().any(|e| e.starts_with("limiter.window_s: invalid type")), "{errs:#?}");
        assert!(errs.iter().any(|e| e.starts_with("tiers.gold.minimum_guaranteed: expected ≤ maximum_burst")), "{errs:#?}");
        // [limiter] did not parse, so its default `default_tier = "free"` is not held against it.
        assert!(!errs.iter().any(|e| e.starts_with("limiter.default_tier")), "{errs:#?}");
        // The throttle table's references to tiers still are (enterprise is not configured).
        assert!(errs.iter().any(|e| e.starts_with("throttle[0].tiers") && e.contains("`enterprise`")), "{errs:#?}");
    }

    #[test]
    fn restart_and_quarantine_keys_are_range_checked() {
        for (text, key) in [
            ("[kafka]\nrestart_backoff_ms = 0\n", "kafka.restart_backoff_ms"),
            ("[kafka]\nrestart_backoff_ms = 5000\nrestart_backoff_max_ms = 1000\n", "kafka.restart_backoff_max_ms"),
            ("[kafka]\nquarantine_after = 0\n", "kafka.quarantine_after"),
            ("[kafka]\nquarantine_after = 1000\n", "kafka.quarantine_after"),
        ] {
            let errs = load_str(text, "t.toml").err().map(|e| e.errors).unwrap_or_default();
            assert!(errs.iter().any(|e| e.key == key), "{text}: accepted or not named ({errs:?})");
        }
        let ok = load_str("[kafka]\nrestart_backoff_ms = 10\nrestart_backoff_max_ms = 10\nquarantine_after = 1\n", "t.toml");
        assert!(ok.is_ok(), "{:?}", ok.err());
    }

    /// Every float key of default.toml, set to each non-finite value TOML can write, is refused
    /// naming that key (a key added later is covered as soon as default.toml writes it).
    #[test]
    fn every_float_key_refuses_non_finite_values() {
        fn floats(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            match v {
                toml::Value::Float(_) => out.push(prefix.to_string()),
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        floats(&join(prefix, k), v, out);
                    }
                }
                toml::Value::Array(a) => {
                    for (i, v) in a.iter().enumerate() {
                        floats(&format!("{prefix}[{i}]"), v, out);
                    }
                }
                _ => {}
            }
        }
        let doc: toml::Value = toml::from_str(DEFAULT_PIPELINE).expect("default.toml");
        let mut keys = Vec::new();
        floats("", &doc, &mut keys);
        assert!(keys.len() > 30, "{} float keys", keys.len());
        for key in &keys {
            for bad in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
                let mut d = doc.clone();
                let mut slot = &mut d;
                for seg in key.split('.') {
                    let (name, index) = match seg.split_once('[') {
                        Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
                        None => (seg, None),
                    };
                    slot = &mut slot[name];
                    if let Some(i) = index {
                        slot = &mut slot[i];
                    }
                }
                *slot = toml::Value::Float(bad);
                let text = toml::to_string(&d).expect("serialise");
                let errs = load_str(&text, "t.toml").err().map(|e| e.errors).unwrap_or_default();
                assert!(errs.iter().any(|e| e.key == *key), "{key} = {bad}: accepted or not named ({errs:?})");
            }
        }
    }

    #[test]
    fn syntax_errors_are_reported_not_panicked() {
        let errs = errors("[limiter\nwindow_s = 1");
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("not valid TOML"), "{errs:?}");
    }

    #[test]
    fn dependency_overrides_merge_over_the_breaker_defaults() {
        let c = load_str(
            r#"
            [breaker]
            minimum_calls = 7
            [dependencies.db]
            breaker = { window_s = 10, weights = { timeout = 9.0 } }
            "#,
            "t.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let b = c.breaker_for("db");
        assert_eq!((b.window_s, b.minimum_calls, b.weights.timeout, b.weights.other), (10, 7, 9.0, 0.5));
        assert_eq!(c.breaker_for("elsewhere").window_s, 60);
    }
}
