//! `whatif`: the batch backtest of limit policies. Request history, in time order, goes through
//! one topology per policy (the same one replay and `run` use, on event time), and each policy's
//! report counts what it decided: allowed, graced and throttled requests per tier, the minutes in
//! which the requests it let through exceeded a capacity, the alerts it raised and the limit
//! updates it made. The same history with no limits at all is the baseline for the capacity.
//!
//! Plain state: the caller reads the history and feeds it here (`cli` in main.rs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::core::topology::Topology;
use crate::history::aggregate::RequestReader;
use crate::wire::events::{InputEvent, RequestEvent};
use crate::wire::outputs::{DecisionKind, Output};
use crate::wire::time::Millis;

const MINUTE_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TierCounts {
    pub allowed: u64,
    pub graced: u64,
    pub throttled: u64,
}

impl TierCounts {
    pub fn total(&self) -> u64 {
        self.allowed + self.graced + self.throttled
    }
}

/// Requests let through per event-time minute, against a capacity.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CapacityUse {
    /// Minutes from the history's first request to its last (the same for every policy).
    pub minutes: u64,
    /// Minutes in which more than the capacity went through (with a capacity).
    pub minutes_above: Option<u64>,
    /// The busiest minute: requests let through.
    pub peak_per_minute: u64,
    #[serde(skip)]
    open: Option<(i64, u64)>,
    #[serde(skip)]
    first: Option<i64>,
}

impl CapacityUse {
    fn add(&mut self, ts: Millis, capacity: Option<f64>) {
        let minute = ts.0.div_euclid(MINUTE_MS);
        self.first.get_or_insert(minute);
        match self.open.as_mut() {
            Some((m, n)) if *m == minute => *n += 1,
            // Time order holds (the reader sorts), so an earlier minute does not come back.
            Some((m, _)) if minute < *m => {}
            _ => {
                self.close(capacity);
                self.open = Some((minute, 1));
            }
        }
    }

    fn close(&mut self, capacity: Option<f64>) {
        if let Some((m, n)) = self.open.take() {
            self.peak_per_minute = self.peak_per_minute.max(n);
            if let Some(c) = capacity {
                *self.minutes_above.get_or_insert(0) += u64::from(n as f64 > c);
            }
            self.minutes = (m - self.first.unwrap_or(m) + 1) as u64;
            // (For a policy this spans only its admitted requests; `finish` sets the history's.)
        }
    }
}

/// What one policy did with the history.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PolicyReport {
    pub name: String,
    pub requests: u64,
    pub by_tier: BTreeMap<String, TierCounts>,
    pub total: TierCounts,
    /// Allowed and graced requests per minute.
    pub admitted: CapacityUse,
    pub alerts: BTreeMap<String, u64>,
    pub limit_updates: u64,
    /// Limit updates with a predictive cut in force (with a demand model).
    pub predictive_cut_updates: u64,
    pub predictions: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WhatifReport {
    pub capacity_per_minute: Option<f64>,
    pub from: Option<Millis>,
    pub to: Option<Millis>,
    /// Every request let through: the history's own demand.
    pub unlimited: CapacityUse,
    pub policies: Vec<PolicyReport>,
}

struct Run {
    topology: Topology,
    report: PolicyReport,
    outs: Vec<Output>,
}

impl Run {
    fn feed(&mut self, batch: &[RequestEvent], capacity: Option<f64>) {
        for r in batch {
            self.report.requests += 1;
            self.topology.process(InputEvent::Request(r.clone()), &mut self.outs);
            Self::count(&mut self.report, &mut self.outs, capacity);
        }
    }

    fn count(report: &mut PolicyReport, outs: &mut Vec<Output>, capacity: Option<f64>) {
        for o in outs.drain(..) {
            match o {
                Output::Decision(d) => {
                    let t = report.by_tier.entry(d.tier.to_string()).or_default();
                    let admitted = match d.decision {
                        DecisionKind::Allow => {
                            t.allowed += 1;
                            true
                        }
                        DecisionKind::AllowWithGrace => {
                            t.graced += 1;
                            true
                        }
                        DecisionKind::Throttle => {
                            t.throttled += 1;
                            false
                        }
                    };
                    if admitted {
                        report.admitted.add(d.ts, capacity);
                    }
                }
                Output::Alert(a) => *report.alerts.entry(a.rule.to_string()).or_default() += 1,
                Output::Limit(l) => {
                    report.limit_updates += 1;
                    report.predictive_cut_updates += u64::from(l.multipliers.predicted < 1.0);
                }
                Output::Prediction(_) => report.predictions += 1,
                Output::Breaker(_) => {}
            }
        }
    }
}

/// Policies side by side over one pass of the history.
pub struct Whatif {
    runs: Vec<Run>,
    report: WhatifReport,
}

impl Whatif {
    /// `policies`: each a name and its topology; `capacity`: requests per minute the backend can
    /// take (optional).
    pub fn new(policies: Vec<(String, Topology)>, capacity: Option<f64>) -> Self {
        let runs =
            policies.into_iter().map(|(name, topology)| Run { topology, report: PolicyReport { name, ..PolicyReport::default() }, outs: Vec::new() }).collect();
        Whatif { runs, report: WhatifReport { capacity_per_minute: capacity, ..WhatifReport::default() } }
    }

    /// Feeds a batch of requests, in time order, to every policy (on a thread each when there
    /// are several).
    pub fn feed(&mut self, batch: &[RequestEvent]) {
        let capacity = self.report.capacity_per_minute;
        for r in batch {
            self.report.from.get_or_insert(r.ts);
            self.report.to = Some(r.ts);
            self.report.unlimited.add(r.ts, capacity);
        }
        if self.runs.len() == 1 {
            self.runs[0].feed(batch, capacity);
        } else {
            std::thread::scope(|s| {
                for run in &mut self.runs {
                    s.spawn(move || run.feed(batch, capacity));
                }
            });
        }
    }

    /// Closes the last minute of every policy (and their monitors) and returns the report.
    pub fn finish(mut self) -> WhatifReport {
        let capacity = self.report.capacity_per_minute;
        self.report.unlimited.close(capacity);
        for mut run in self.runs {
            run.topology.finish(&mut run.outs);
            Run::count(&mut run.report, &mut run.outs, capacity);
            run.report.admitted.close(capacity);
            let r = &mut run.report;
            r.admitted.minutes = self.report.unlimited.minutes;
            r.total = r.by_tier.values().fold(TierCounts::default(), |a, t| TierCounts {
                allowed: a.allowed + t.allowed,
                graced: a.graced + t.graced,
                throttled: a.throttled + t.throttled,
            });
            self.report.policies.push(run.report);
        }
        self.report
    }
}

// The command-line edge: `surgeguard whatif` reads the history once, in time order, runs it
// through one topology per pipeline file, prints each policy's report and writes it as JSON.

#[derive(clap::Args, Debug)]
pub struct WhatifArgs {
    /// A directory, file or glob of Parquet or Arrow IPC request events (`gen history`'s, or any
    /// with a `user_id` column; `id`, `tier`, `request_type` and `cost` are read when present).
    #[arg(long)]
    history: String,
    /// The timestamp column.
    #[arg(long, default_value = "ts")]
    ts_column: String,
    /// A pipeline file: the policy to try; repeat to compare several.
    #[arg(long = "config", required = true)]
    configs: Vec<PathBuf>,
    /// Requests per minute the backend can take: counts the minutes in which more went through.
    #[arg(long)]
    capacity: Option<f64>,
    /// Writes the report as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn policy_name(path: &Path, all: &[PathBuf]) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    // Two files of the same name in different directories: the full paths tell them apart.
    if all.iter().filter(|p| p.file_stem() == path.file_stem()).count() > 1 { path.display().to_string() } else { stem }
}

pub fn main(args: &WhatifArgs) -> anyhow::Result<()> {
    if let Some(c) = args.capacity {
        anyhow::ensure!(c.is_finite() && c > 0.0, "--capacity must be a positive number of requests per minute");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let mut policies = Vec::new();
    for path in &args.configs {
        let cfg = crate::config::load::load_file(path)
            .map(Arc::new)
            .map_err(|e| anyhow::anyhow!("{}", crate::config::secrets::redact_for_file(&e.to_string(), path)))?;
        let predictor = runtime.block_on(crate::history::prediction_setup::load(&cfg.prediction)).with_context(|| format!("{}", path.display()))?;
        policies.push((policy_name(path, &args.configs), Topology::new(cfg).with_predictor(predictor)));
    }
    let started = Instant::now();
    let report = runtime.block_on(async {
        let mut reader = RequestReader::open(&args.history, &args.ts_column).await?;
        let bar = indicatif::ProgressBar::new(reader.total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {human_pos}/{human_len} requests {elapsed} (eta {eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let mut whatif = Whatif::new(policies, args.capacity);
        let mut batch = Vec::with_capacity(8192);
        while reader.next_batch(&mut batch).await? {
            whatif.feed(&batch);
            bar.inc(batch.len() as u64);
            batch.clear();
        }
        bar.finish_and_clear();
        anyhow::Ok(whatif.finish())
    })?;
    let requests = report.policies.first().map_or(0, |p| p.requests);
    anyhow::ensure!(requests > 0, "{}: no requests", args.history);
    eprintln!("{requests} requests through {} policies in {:.1} s", report.policies.len(), started.elapsed().as_secs_f64());
    print(&report);
    if let Some(out) = &args.out {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(out, json + "\n").with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn capacity_line(c: &CapacityUse) -> String {
    let above = c.minutes_above.map_or(String::new(), |n| format!(", {n} of {} minutes above capacity", c.minutes));
    format!("peak {}/min{above}", c.peak_per_minute)
}

fn print(r: &WhatifReport) {
    let span = match (r.from, r.to) {
        (Some(a), Some(b)) => format!("{a} to {b}"),
        _ => String::new(),
    };
    println!("history: {span}");
    match r.capacity_per_minute {
        Some(c) => println!("capacity: {c}/min; with no limits: {}", capacity_line(&r.unlimited)),
        None => println!("with no limits: {}", capacity_line(&r.unlimited)),
    }
    for p in &r.policies {
        println!();
        println!("policy {}: {} requests; let through {}", p.name, p.requests, capacity_line(&p.admitted));
        println!("  {:<24} {:>12} {:>12} {:>12} {:>10}", "tier", "allowed", "graced", "throttled", "throttled%");
        for (tier, t) in p.by_tier.iter().chain(std::iter::once((&"all".to_string(), &p.total))) {
            let share = if t.total() > 0 { 100.0 * t.throttled as f64 / t.total() as f64 } else { 0.0 };
            println!("  {:<24} {:>12} {:>12} {:>12} {:>9.2}%", tier, t.allowed, t.graced, t.throttled, share);
        }
        let alerts: Vec<String> = p.alerts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("  alerts: {}", if alerts.is_empty() { "none".into() } else { alerts.join(", ") });
        print!("  limit updates: {}", p.limit_updates);
        if p.predictions > 0 {
            print!("; predictions {}, updates under a predictive cut {}", p.predictions, p.predictive_cut_updates);
        }
        println!();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;

    fn burst(user: &str, tier: &str, minute: i64, n: u32) -> Vec<RequestEvent> {
        (0..n)
            .map(|k| RequestEvent {
                id: format!("{user}-{minute}-{k}").into(),
                ts: Millis(minute * MINUTE_MS + i64::from(k) * 100),
                user_id: user.into(),
                tier: tier.into(),
                request_type: "standard".into(),
                cost: 1,
            })
            .collect()
    }

    fn policy(free_rpm: u32) -> Topology {
        let mut cfg = Config::default();
        if let Some(t) = cfg.tiers.get_mut("free") {
            t.baseline_rpm = free_rpm;
        }
        Topology::new(Arc::new(cfg))
    }

    #[test]
    fn counts_by_tier_and_minutes_above_capacity_by_hand() {
        // Minute 0: a free user makes 75 requests: 60 allowed, 10 graced (the hour's allowance),
        // 5 throttled. Minute 5: 20 more, under a fresh window: all allowed. A pro user's 30 in
        // minute 5 are all allowed.
        let mut batch = burst("u1", "free", 0, 75);
        batch.extend(burst("u1", "free", 5, 20));
        let mut pro = burst("p1", "pro", 5, 30);
        batch.append(&mut pro);
        batch.sort_by_key(|r| r.ts);
        let mut w = Whatif::new(vec![("default".into(), policy(60)), ("strict".into(), policy(30))], Some(60.0));
        w.feed(&batch[..40]);
        w.feed(&batch[40..]);
        let r = w.finish();
        assert_eq!(r.unlimited.minutes, 6);
        assert_eq!(r.unlimited.peak_per_minute, 75);
        assert_eq!(r.unlimited.minutes_above, Some(1));
        let d = &r.policies[0];
        assert_eq!(d.requests, 125);
        assert_eq!(d.by_tier["free"], TierCounts { allowed: 80, graced: 10, throttled: 5 });
        assert_eq!(d.by_tier["pro"], TierCounts { allowed: 30, graced: 0, throttled: 0 });
        assert_eq!(d.total.total(), 125);
        // 70 went through in minute 0 (above 60), 50 in minute 5.
        assert_eq!((d.admitted.peak_per_minute, d.admitted.minutes_above), (70, Some(1)));
        // Strict: 30 allowed and 10 graced in minute 0, 20 in minute 5.
        let s = &r.policies[1];
        assert_eq!(s.by_tier["free"], TierCounts { allowed: 50, graced: 10, throttled: 35 });
        assert_eq!((s.admitted.peak_per_minute, s.admitted.minutes_above), (50, Some(0)));
        assert_eq!((d.admitted.minutes, s.admitted.minutes), (6, 6));
        assert_eq!(s.name, "strict");
    }

    #[test]
    fn without_a_capacity_no_minutes_are_judged() {
        let mut w = Whatif::new(vec![("p".into(), policy(60))], None);
        w.feed(&burst("u", "free", 0, 3));
        let r = w.finish();
        assert_eq!(r.unlimited.minutes_above, None);
        assert_eq!(r.policies[0].admitted.minutes_above, None);
        assert_eq!(r.policies[0].admitted.minutes, 1);
    }
}
