//! Hot reload of `surgeguard run`'s config: on SIGHUP, or when the file changes (checked every
//! second), the file is loaded and validated again. What can change without a restart: tier
//! limits (`[tiers]` values, `[request_types]` shares), `[adaptive]`, `[[throttle]]`, breaker
//! thresholds (`[breaker]`, `[dependencies.NAME.breaker]`) and alert rules (`[alerts]`). A file
//! that does not load, or that changes anything else (which tiers, request types and
//! dependencies exist, the window, topics, Kafka, the API, prediction, event time, health, monitor,
//! fallback), is refused as a whole: logged with the reason, and the running config stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::config::Config;
use crate::config::load;
use crate::config::secrets;

/// Why a new config cannot be applied while running: the sections that changed and need a
/// restart.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    let same_keys = |a: Vec<&String>, b: Vec<&String>| a == b;
    if old.limiter != new.limiter {
        out.push("limiter");
    }
    if !same_keys(old.tiers.keys().collect(), new.tiers.keys().collect()) {
        out.push("tiers (which tiers exist)");
    }
    if !same_keys(old.request_types.keys().collect(), new.request_types.keys().collect()) {
        out.push("request_types (which request types exist)");
    }
    let alternatives = |c: &Config| c.dependencies.iter().map(|(k, d)| (k.clone(), d.alternatives.clone())).collect::<Vec<_>>();
    if alternatives(old) != alternatives(new) {
        out.push("dependencies (which exist and their alternatives)");
    }
    for (name, changed) in [
        ("health", old.health != new.health),
        ("fallback", old.fallback != new.fallback),
        ("monitor", old.monitor != new.monitor),
        ("prediction", old.prediction != new.prediction),
        ("event_time", old.event_time != new.event_time),
        ("api", old.api != new.api),
        ("topics", old.topics != new.topics),
        ("kafka", old.kafka != new.kafka),
    ] {
        if changed {
            out.push(name);
        }
    }
    out
}

/// Loads `path`, applies the command line's overrides (`adjust`), and checks it against
/// `current`: the new config, or why it is refused (logged: the file's secret values redacted).
pub fn load_change(path: &Path, current: &Config, adjust: &dyn Fn(&mut Config)) -> Result<Config, String> {
    let mut new = load::load_file(path).map_err(|e| secrets::redact_for_file(&e.to_string(), path))?;
    adjust(&mut new);
    let restart = needs_restart(current, &new);
    if restart.is_empty() { Ok(new) } else { Err(format!("{}: changes that need a restart: {}", path.display(), restart.join(", "))) }
}

/// Watches `path` for SIGHUP and changes of its contents (checked every `every`); sends each
/// valid, hot-reloadable new config. Refusals are logged and the watch goes on.
/// `adjust` applies the command line's overrides to each loaded file.
pub fn watch(path: PathBuf, current: Arc<Config>, every: Duration, adjust: impl Fn(&mut Config) + Send + 'static) -> mpsc::Receiver<Arc<Config>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut current = current;
        let mut seen = fingerprint(&path);
        loop {
            let why = tokio::select! {
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending::<()>().await } } => "SIGHUP",
                _ = tick.tick() => {
                    let now = fingerprint(&path);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "the file changed"
                }
                _ = tx.closed() => return,
            };
            match load_change(&path, &current, &adjust) {
                Ok(new) if new == *current => tracing::info!(reason = why, path = %path.display(), "config reloaded: nothing changed"),
                Ok(new) => {
                    tracing::info!(reason = why, path = %path.display(), "config reloaded: applying tier limits, breaker thresholds, alert rules");
                    let new = Arc::new(new);
                    current = new.clone();
                    if tx.send(new).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(reason = why, "config reload refused, the running config stays: {e}"),
            }
        }
    });
    rx
}

/// With the built-in default pipeline there is no file to load again: SIGHUP is logged and
/// otherwise ignored (instead of ending the process, its default action).
pub fn ignore_hangups() {
    tokio::spawn(async {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            tracing::warn!("SIGHUP: running the built-in default pipeline, nothing to reload (start with --config FILE to reload one)");
        }
    });
}

/// The file's modification time, length and contents' hash (an editor that keeps the time still
/// changes the contents).
fn fingerprint(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::hash::{Hash, Hasher};
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    Some((meta.modified().ok()?, meta.len(), h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_thresholds_and_rules_reload_the_rest_needs_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.tiers.get_mut("free").expect("free").baseline_rpm = 30;
        new.breaker.weight_threshold = 3.0;
        new.alerts.throttling.threshold = 5.0;
        new.adaptive.severity_high = 0.5;
        assert_eq!(needs_restart(&old, &new), Vec::<&str>::new());
        let mut bad = new.clone();
        bad.tiers.remove("free");
        bad.limiter.window_s = 30;
        bad.kafka.group_id = "other".into();
        assert_eq!(needs_restart(&old, &bad), vec!["limiter", "tiers (which tiers exist)", "kafka"]);
    }

    #[test]
    fn a_file_that_does_not_load_is_refused_without_its_secrets() {
        let path = std::env::temp_dir().join(format!("surgeguard-reload-secret-{}.toml", std::process::id()));
        // Unquoted: the TOML error quotes the line.
        std::fs::write(&path, "[kafka.properties]\n\"sasl.password\" = hunter2-reload\n").expect("write");
        let refused = load_change(&path, &Config::default(), &|_: &mut Config| {}).expect_err("not TOML");
        std::fs::remove_file(&path).ok();
        assert!(refused.contains("sasl.password") && !refused.contains("hunter2"), "{refused}");
    }

    #[test]
    fn a_reloaded_topology_trips_on_the_new_threshold_and_keeps_its_state() {
        use crate::core::topology::Topology;
        use crate::wire::events::{ErrorClass, InputEvent, OutcomeEvent};
        use crate::wire::outputs::{BreakerStateKind, Output};
        use crate::wire::time::Millis;
        let old = Arc::new(load::load_str("", "initial").expect("valid"));
        let fail = |t: i64| {
            InputEvent::Outcome(OutcomeEvent {
                ts: Millis(t),
                dependency: "ai_primary".into(),
                ok: false,
                error: Some(ErrorClass::Timeout),
                latency_ms: 5.0,
                request_id: None,
            })
        };
        let opened = |outs: &[Output]| outs.iter().any(|o| matches!(o, Output::Breaker(b) if b.state == BreakerStateKind::Open));
        // Two timeouts (weight 4) stay under the default threshold of 10.
        let mut t = Topology::new(old.clone());
        let mut outs = Vec::new();
        t.process(fail(1_000), &mut outs);
        t.process(fail(2_000), &mut outs);
        assert!(!opened(&outs));
        // Reloaded with a threshold of 5: the third timeout (weight 6, the first two still in the
        // window) trips it. The reload republishes every limit.
        let new = load::load_str("[breaker]\nweight_threshold = 5.0\n", "reloaded").expect("valid");
        assert!(needs_restart(&old, &new).is_empty());
        outs.clear();
        t.reconfigure(Arc::new(new), &mut outs);
        assert_eq!(outs.iter().filter(|o| matches!(o, Output::Limit(_))).count(), 9);
        outs.clear();
        t.process(fail(3_000), &mut outs);
        assert!(opened(&outs), "{outs:?}");
        // The alert compares the failure weight with the threshold now in force.
        let alert = outs.iter().find_map(|o| match o {
            Output::Alert(a) if a.rule == "breaker_tripped" => Some(a),
            _ => None,
        });
        assert!(alert.is_some_and(|a| a.threshold == 5.0 && a.value >= 5.0), "{alert:?}");
    }
}
