//! `surgeguard whatif`: reads request history once, in time order, and runs it through one
//! topology per pipeline file (`whatif.rs`); prints each policy's report and writes it as JSON.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use surgeguard::demand::RequestReader;
use surgeguard::topology::Topology;
use surgeguard::whatif::{CapacityUse, Whatif, WhatifReport};

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

pub fn run_whatif(args: &WhatifArgs) -> anyhow::Result<()> {
    if let Some(c) = args.capacity {
        anyhow::ensure!(c.is_finite() && c > 0.0, "--capacity must be a positive number of requests per minute");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let mut policies = Vec::new();
    for path in &args.configs {
        let cfg = surgeguard::config_load::load_file(path).map(Arc::new).map_err(|e| anyhow::anyhow!("{e}"))?;
        let predictor = runtime.block_on(surgeguard::prediction_setup::load(&cfg.prediction)).with_context(|| format!("{}", path.display()))?;
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
