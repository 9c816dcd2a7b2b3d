//! The CLI edge of demand prediction: the history options `aggregate`, `fit` and `backtest`
//! share, and `surgeguard fit` and `surgeguard backtest`. Reads the history (DataFusion), runs
//! the pure fit and backtest, writes the model and the reports.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::forecast::backtest::{BacktestOptions, Report, backtest};
use crate::forecast::features::{EventSpan, parse_events};
use crate::forecast::intervals::IntervalScale;
use crate::forecast::model::{Family, FitOptions, fit};
use crate::forecast::series::{Series, parse_resolution};
use crate::history::aggregate::{DemandSource, aggregate};
use anyhow::Context;

/// The history files and how to read them (shared by aggregate, fit and backtest).
#[derive(clap::Args, Debug)]
pub struct SourceArgs {
    /// A directory, file or glob of Parquet or Arrow IPC request events; with --series, a CSV or
    /// Parquet file of pre-aggregated rows.
    #[arg(long)]
    history: String,
    /// The input is a pre-aggregated series (timestamp and value columns).
    #[arg(long)]
    series: bool,
    /// Bucket width: 30s, 5m, 1h, 1d, …
    #[arg(long, default_value = "5m")]
    resolution: String,
    /// The timestamp column.
    #[arg(long, default_value = "ts")]
    ts_column: String,
    /// With --series: the value column.
    #[arg(long, default_value = "value")]
    value_column: String,
}

impl SourceArgs {
    /// What to read, counting per value of `group_column` (events only); and the step.
    pub fn source(&self, group_column: Option<String>) -> anyhow::Result<(DemandSource, i64)> {
        let step = parse_resolution(&self.resolution)?;
        let source = if self.series {
            anyhow::ensure!(group_column.is_none(), "--group-by applies to events, not to --series input");
            DemandSource::Series { path: self.history.clone(), ts_column: self.ts_column.clone(), value_column: self.value_column.clone() }
        } else {
            DemandSource::Events { path: self.history.clone(), ts_column: self.ts_column.clone(), group_column }
        };
        Ok((source, step))
    }
}

/// Where the demand series comes from (fit and backtest).
#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Events only: model the demand of one value of this column (with --group).
    #[arg(long, requires = "group")]
    group_by: Option<String>,
    /// With --group-by: the value whose demand is modelled.
    #[arg(long, requires = "group_by")]
    group: Option<String>,
    /// Known external factors: a CSV of `start,end,label` rows (RFC 3339 times), such as the
    /// events.csv that `gen history` writes. Each label becomes an indicator feature.
    #[arg(long)]
    events: Option<PathBuf>,
}

/// The model to fit.
#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    /// ols, elastic-net or poisson; several, comma-separated, to compare (backtest) or to keep
    /// the one the backtest prefers (fit: `auto` tries all three).
    #[arg(long, default_value = "poisson")]
    model: String,
    /// The forecast horizon (the intervals are calibrated for it).
    #[arg(long, default_value = "1h")]
    horizon: String,
    /// elastic-net: the penalty's strength.
    #[arg(long, default_value_t = 0.1)]
    penalty: f64,
    /// elastic-net: the L1 share of the penalty (0 ridge … 1 lasso).
    #[arg(long, default_value_t = 0.5)]
    l1_ratio: f64,
    /// How forecast errors scale: sqrt-level (Poisson-like, wider at busy times) or constant.
    #[arg(long, value_enum, default_value_t = Scale::SqrtLevel)]
    interval_scale: Scale,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Scale {
    SqrtLevel,
    Constant,
}

impl ModelArgs {
    fn families(&self) -> anyhow::Result<Vec<Family>> {
        let mut out = Vec::new();
        for name in self.model.split(',').map(str::trim) {
            match name {
                "ols" => out.push(Family::Ols),
                "elastic-net" | "elastic_net" | "elasticnet" => {
                    anyhow::ensure!(self.penalty > 0.0 && (0.0..=1.0).contains(&self.l1_ratio), "--penalty must be > 0 and --l1-ratio in [0, 1]");
                    out.push(Family::ElasticNet { penalty: self.penalty, l1_ratio: self.l1_ratio })
                }
                "poisson" => out.push(Family::Poisson),
                "auto" | "all" => {
                    anyhow::ensure!(self.penalty > 0.0 && (0.0..=1.0).contains(&self.l1_ratio), "--penalty must be > 0 and --l1-ratio in [0, 1]");
                    out.extend([Family::Ols, Family::ElasticNet { penalty: self.penalty, l1_ratio: self.l1_ratio }, Family::Poisson]);
                }
                other => anyhow::bail!("--model {other:?}: expected ols, elastic-net, poisson or auto"),
            }
        }
        let mut seen = Vec::new();
        out.retain(|f| {
            let new = !seen.contains(f);
            seen.push(*f);
            new
        });
        Ok(out)
    }

    fn options(&self, family: Family, step_ms: i64) -> anyhow::Result<FitOptions> {
        let horizon = parse_resolution(&self.horizon)?;
        anyhow::ensure!(horizon % step_ms == 0, "--horizon {} is not a whole number of {} ms steps", self.horizon, step_ms);
        let mut o = FitOptions::new(family, (horizon / step_ms) as usize);
        o.scale = match self.interval_scale {
            Scale::SqrtLevel => IntervalScale::SqrtLevel,
            Scale::Constant => IntervalScale::Constant,
        };
        Ok(o)
    }
}

/// Reads the history into one series (and the events file).
fn load(h: &HistoryArgs) -> anyhow::Result<(Series, Vec<EventSpan>)> {
    let (source, step) = h.source.source(h.group_by.clone())?;
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let mut groups = runtime.block_on(aggregate(&source, step))?;
    let series = match &h.group {
        Some(g) => {
            let names: Vec<String> = groups.keys().take(20).cloned().collect();
            groups.remove(g).with_context(|| format!("--group {g:?}: no such value (some that exist: {})", names.join(", ")))?
        }
        None => groups.into_values().next().context("the history has no rows")?,
    };
    eprintln!(
        "read {} steps of {} from {} to {} in {:.2} s",
        series.values.len(),
        h.source.resolution,
        series.start,
        series.time_of(series.values.len().saturating_sub(1)),
        started.elapsed().as_secs_f64()
    );
    let events = match &h.events {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            parse_events(&text).with_context(|| p.display().to_string())?
        }
        None => Vec::new(),
    };
    Ok((series, events))
}

fn bar(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    let template = format!("{{bar:40}} {{pos}}/{{len}} {what} {{elapsed}} (eta {{eta}})");
    bar.set_style(indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    bar
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
}

/// The windows `fit --model auto` compares families on: up to 10, a day apart, as many as the
/// history allows after the first two weeks.
fn selection_windows(series: &Series, horizon: usize) -> (usize, usize) {
    let day = (86_400_000 / series.step_ms.max(1)).max(1) as usize;
    let spare = series.values.len().saturating_sub(14 * day + horizon);
    (((spare / day) + 1).min(10), day)
}

pub fn run_fit(h: &HistoryArgs, m: &ModelArgs, out: &Path) -> anyhow::Result<()> {
    let (series, events) = load(h)?;
    let families = m.families()?;
    let family = if families.len() == 1 {
        families[0]
    } else {
        let horizon = m.options(families[0], series.step_ms)?.horizon_steps;
        let (windows, step) = selection_windows(&series, horizon);
        eprintln!("choosing among {} models by a {windows}-window backtest (a day apart, {horizon}-step horizon):", families.len());
        let mut best: Option<(f64, Family)> = None;
        for f in families {
            let opts = BacktestOptions { fit: m.options(f, series.step_ms)?, windows, step, spike_threshold: 2.0, min_confidence: 0.8, threads: threads() };
            let r = backtest(&series, &events, &opts, &|| {}).with_context(|| format!("backtesting {}", f.label()))?;
            eprintln!("  {:<12} MAE {:>9.3}  MASE {:>6}", f.label(), r.model.mae, fmt_opt(r.model.mase, 3));
            if best.is_none_or(|(mae, _)| r.model.mae < mae) {
                best = Some((r.model.mae, f));
            }
        }
        let (_, f) = best.context("no model to choose from")?;
        eprintln!("keeping {} (lowest MAE)", f.label());
        f
    };
    let started = Instant::now();
    let model = fit(&series, &events, &m.options(family, series.step_ms)?)?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, model.to_json() + "\n").with_context(|| format!("writing {}", out.display()))?;
    let a = &model.in_sample;
    eprintln!(
        "fitted {} on {} steps ({} … {}) in {:.2} s: in-sample one-step MAE {:.3}, RMSE {:.3}, sMAPE {:.2} %, MASE {}; intervals from {} held-out forecasts; wrote {}",
        model.family.label(),
        model.training.steps,
        model.training.start,
        model.training.end,
        started.elapsed().as_secs_f64(),
        a.mae,
        a.rmse,
        a.smape,
        fmt_opt(a.mase, 3),
        model.intervals.origins,
        out.display()
    );
    Ok(())
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The backtest's own options.
#[derive(clap::Args, Debug)]
pub struct BacktestArgs {
    /// Forecast origins (cutoffs), the last one a horizon before the history ends.
    #[arg(long, default_value_t = 20)]
    pub windows: usize,
    /// Time between cutoffs.
    #[arg(long, default_value = "1d")]
    pub step: String,
    /// A spike: the actual mean over the horizon above this many times the baseline.
    #[arg(long, default_value_t = 2.0)]
    pub spike_threshold: f64,
    /// The model alerts when the probability of a spike exceeds this.
    #[arg(long, default_value_t = 0.8)]
    pub min_confidence: f64,
    /// The report directory.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run_backtest(h: &HistoryArgs, m: &ModelArgs, b: &BacktestArgs) -> anyhow::Result<()> {
    let (series, events) = load(h)?;
    let step_ms = parse_resolution(&b.step)?;
    anyhow::ensure!(step_ms % series.step_ms == 0, "--step {} is not a whole number of {} steps", b.step, h.source.resolution);
    anyhow::ensure!(b.windows >= 1, "--windows must be at least 1");
    anyhow::ensure!(b.spike_threshold.is_finite() && b.spike_threshold > 0.0, "--spike-threshold must be a positive number");
    anyhow::ensure!((0.0..=1.0).contains(&b.min_confidence), "--min-confidence must be between 0 and 1");
    let families = m.families()?;
    std::fs::create_dir_all(&b.out).with_context(|| format!("creating {}", b.out.display()))?;
    let mut rows = Vec::new();
    for family in &families {
        let opts = BacktestOptions {
            fit: m.options(*family, series.step_ms)?,
            windows: b.windows,
            step: (step_ms / series.step_ms) as usize,
            spike_threshold: b.spike_threshold,
            min_confidence: b.min_confidence,
            threads: threads(),
        };
        let progress = bar(b.windows, &format!("{} windows", family.label()));
        let started = Instant::now();
        let report = backtest(&series, &events, &opts, &|| progress.inc(1))?;
        progress.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        let dir = if families.len() == 1 { b.out.clone() } else { b.out.join(family.label()) };
        write_reports(&series, &report, &dir)?;
        eprintln!("{}: {} windows in {secs:.2} s; reports in {}", family.label(), report.windows, dir.display());
        rows.push(report);
    }
    print_summary(&rows);
    Ok(())
}

fn write_reports(series: &Series, report: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    std::fs::write(dir.join("report.json"), json + "\n").with_context(|| format!("writing {}", dir.join("report.json").display()))?;
    std::fs::write(dir.join("forecasts.csv"), report.to_csv()).with_context(|| format!("writing {}", dir.join("forecasts.csv").display()))?;
    crate::apps::backtest_plot::plot(series, report, &dir.join("plot.png"), 1400, 600)?;
    Ok(())
}

fn print_summary(reports: &[Report]) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{:<14} {:>10} {:>10} {:>8} {:>7} {:>7} {:>7}", "forecast", "MAE", "RMSE", "sMAPE%", "MASE", "cov80", "cov95");
    let mut line = |name: &str, a: &crate::forecast::accuracy::Accuracy, c80: Option<f64>, c95: Option<f64>| {
        let _ = writeln!(
            o,
            "{:<14} {:>10.3} {:>10.3} {:>8.2} {:>7} {:>7} {:>7}",
            name,
            a.mae,
            a.rmse,
            a.smape,
            fmt_opt(a.mase, 3),
            fmt_opt(c80, 3),
            fmt_opt(c95, 3)
        );
    };
    for r in reports {
        line(&r.family, &r.model, Some(r.coverage_80), Some(r.coverage_95));
    }
    if let Some(r) = reports.first() {
        if let Some(a) = &r.naive_daily {
            line("naive_daily", a, None, None);
        }
        if let Some(a) = &r.naive_weekly {
            line("naive_weekly", a, None, None);
        }
    }
    for r in reports {
        let s = &r.spikes;
        let _ = writeln!(
            o,
            "{} spikes (> {}× baseline): {} actual, {} alerts (confidence > {}), {} correct; precision {}, recall {}, mean lead {} min",
            r.family,
            s.threshold,
            s.actual,
            s.alerts,
            s.min_confidence,
            s.true_positives,
            fmt_opt(s.precision, 2),
            fmt_opt(s.recall, 2),
            fmt_opt(s.mean_lead_minutes, 1)
        );
    }
}

/// `surgeguard aggregate`.
#[derive(clap::Args, Debug)]
pub struct AggregateArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Events only: count per value of this column too.
    #[arg(long)]
    pub group_by: Option<String>,
    /// Output file (default, or `-`: stdout).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `surgeguard fit`.
#[derive(clap::Args, Debug)]
pub struct FitArgs {
    #[command(flatten)]
    pub history: HistoryArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// The model file to write.
    #[arg(long, default_value = "models/demand.json")]
    pub out: PathBuf,
}

/// `surgeguard backtest`.
#[derive(clap::Args, Debug)]
pub struct BacktestCommand {
    #[command(flatten)]
    pub history: HistoryArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub backtest: BacktestArgs,
}

pub fn aggregate_main(args: &AggregateArgs) -> anyhow::Result<()> {
    let grouped = args.group_by.is_some();
    let (source, step) = args.source.source(args.group_by.clone())?;
    let groups = crate::apps::cli::runtime()?.block_on(aggregate(&source, step))?;
    let mut w = crate::apps::cli::output(args.out.as_deref())?;
    writeln!(w, "{}", if grouped { "ts,group,value" } else { "ts,value" })?;
    for (group, s) in &groups {
        for (i, v) in s.values.iter().enumerate() {
            if grouped {
                writeln!(w, "{},{},{}", s.time_of(i), group, v)?;
            } else {
                writeln!(w, "{},{}", s.time_of(i), v)?;
            }
        }
    }
    w.flush()?;
    Ok(())
}

pub fn fit_main(args: &FitArgs) -> anyhow::Result<()> {
    run_fit(&args.history, &args.model, &args.out)
}

pub fn backtest_main(args: &BacktestCommand) -> anyhow::Result<()> {
    run_backtest(&args.history, &args.model, &args.backtest)
}
