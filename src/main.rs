//! The `surgeguard` command line: the imperative shell around the library.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use surgeguard::config::Config;
use surgeguard::{config_load, replay};

mod cli_demand;
mod cli_whatif;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "surgeguard", version, about = "Keeps API-backed products alive under demand surges")]
struct Cli {
    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a pipeline file; reports every error with its key path. Exit 0 if valid, 1 if not.
    CheckConfig {
        /// The pipeline TOML file.
        file: PathBuf,
    },
    /// Run JSON-lines events through the processors and write the outputs as JSON lines.
    Replay {
        /// The pipeline TOML file.
        #[arg(long, default_value = "pipelines/default.toml")]
        config: PathBuf,
        /// Input: one JSON object per line with a `topic` field (`-` for stdin).
        input: PathBuf,
        /// Output file (default, or `-`: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the pipeline as a Kafka consumer-group service until SIGINT or SIGTERM.
    Run {
        /// The pipeline TOML file.
        #[arg(long, default_value = "pipelines/default.toml")]
        config: PathBuf,
        /// Bootstrap servers (overrides `kafka.brokers`).
        #[arg(long)]
        brokers: Option<String>,
        /// Where the HTTP API listens (overrides `api.listen`; "" turns it off).
        #[arg(long)]
        api_listen: Option<String>,
    },
    /// Archive the requests topic as Parquet request history (date/hour partitions, no
    /// duplicates after a crash) until SIGINT or SIGTERM.
    Archive {
        /// The pipeline TOML file (topics, brokers, Kafka properties).
        #[arg(long, default_value = "pipelines/default.toml")]
        config: PathBuf,
        /// Bootstrap servers (overrides `kafka.brokers`).
        #[arg(long)]
        brokers: Option<String>,
        /// The archive directory.
        #[arg(long)]
        out: PathBuf,
        /// The consumer group (default: `kafka.group_id` + `.archive`).
        #[arg(long)]
        group: Option<String>,
        /// Flush a partition's buffer once its oldest record has waited this long.
        #[arg(long, default_value = "60s")]
        flush_every: String,
        /// Flush a partition's buffer once it holds this many records.
        #[arg(long, default_value_t = 100_000)]
        max_rows: usize,
        /// Leave an incomplete flush (fewer files than its name says) this long before removing
        /// it as a crash's remains: its writer may still be renaming its files.
        #[arg(long, default_value = "30s")]
        incomplete_grace: String,
    },
    /// The seed's Monday-morning surge against a simulated backend, without and with
    /// surgeguard, on an embedded Kafka (librdkafka's mock cluster); prints what it measured.
    Demo {
        /// The pipeline TOML file.
        #[arg(long, default_value = "pipelines/default.toml")]
        config: PathBuf,
        /// Simulated seconds per real second (0: as fast as it goes, under a minute).
        #[arg(long, default_value_t = 0.0)]
        speed: f64,
        /// Random seed of the demand and the backend.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Throughput and produce→decision latency of `surgeguard run` on a broker, beside a
    /// passthrough (consume → produce, no processing) on the same broker in the same run.
    Bench {
        /// The pipeline TOML file.
        #[arg(long, default_value = "pipelines/default.toml")]
        config: PathBuf,
        /// Bootstrap servers of the broker to measure on.
        #[arg(long)]
        brokers: String,
        /// Events for the throughput phase (fewer than about a million give a window of a second
        /// or two, in which the passthrough's rate swings by 2× from round to round).
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Events per second in the latency phase.
        #[arg(long, default_value_t = 50_000)]
        rate: u32,
        /// Seconds of the latency phase.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Rounds before the measured one, shown but not measured: a fresh broker's JVM
        /// compiles its hot paths during its first minute of load.
        #[arg(long, default_value_t = 2)]
        warmup: u32,
        /// Measured rounds; the last lines give their medians.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Which sides to measure.
        #[arg(long, value_enum, default_value_t = surgeguard::bench::Side::Both)]
        side: surgeguard::bench::Side,
    },
    /// Demand per time bucket from history files, as CSV (`ts,value`, or `ts,group,value`
    /// with --group-by), computed by DataFusion SQL with empty buckets filled with zero.
    Aggregate {
        #[command(flatten)]
        source: cli_demand::SourceArgs,
        /// Events only: count per value of this column too.
        #[arg(long)]
        group_by: Option<String>,
        /// Output file (default, or `-`: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Fit a demand model to history and write it as JSON (format in models/README.md).
    Fit {
        #[command(flatten)]
        history: cli_demand::HistoryArgs,
        #[command(flatten)]
        model: cli_demand::ModelArgs,
        /// The model file to write.
        #[arg(long, default_value = "models/demand.json")]
        out: PathBuf,
    },
    /// Rolling-origin evaluation of the demand model beside seasonal-naive forecasts; writes
    /// report.json, forecasts.csv and plot.png to --out.
    Backtest {
        #[command(flatten)]
        history: cli_demand::HistoryArgs,
        #[command(flatten)]
        model: cli_demand::ModelArgs,
        /// Forecast origins (cutoffs), the last one a horizon before the history ends.
        #[arg(long, default_value_t = 20)]
        windows: usize,
        /// Time between cutoffs.
        #[arg(long, default_value = "1d")]
        step: String,
        /// A spike: the actual mean over the horizon above this many times the baseline.
        #[arg(long, default_value_t = 2.0)]
        spike_threshold: f64,
        /// The model alerts when the probability of a spike exceeds this.
        #[arg(long, default_value_t = 0.8)]
        min_confidence: f64,
        /// The report directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Replay request history through one or more pipeline files (limit policies) and compare
    /// what each allows, graces and throttles per tier, and how often it exceeds a capacity.
    Whatif {
        #[command(flatten)]
        args: cli_whatif::WhatifArgs,
    },
    /// Generate synthetic input.
    Gen {
        #[command(subcommand)]
        what: Gen,
    },
}

#[derive(Subcommand)]
enum Gen {
    /// The seed's Monday-morning surge (50 → 150 → 300 users over 15 minutes) as replay input:
    /// requests, upstream outcomes and host telemetry, one JSON object per line.
    Surge {
        /// Multiplies the number of users.
        #[arg(long, default_value_t = 1)]
        scale: u32,
        /// Random seed (the same seed gives the same file).
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Requests only, no outcomes or telemetry.
        #[arg(long)]
        requests_only: bool,
        /// Output file (default, or `-`: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A synthetic request history in Parquet (daily and weekly seasonality, growth, holidays,
    /// Monday-morning surges), partitioned by date and hour, with its holidays and surges in
    /// DIR/events.csv.
    History {
        /// Days of history.
        #[arg(long)]
        days: u32,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Random seed (the same seed gives the same history).
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Requests per minute at a weekday's daily peak, before growth.
        #[arg(long, default_value_t = 600.0)]
        peak_rpm: f64,
        /// First day (UTC), YYYY-MM-DD.
        #[arg(long, default_value = "2026-01-05")]
        start: String,
    },
}

/// Where `--out` sends output: the file, or stdout when absent or `-`.
fn output(out: Option<&Path>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match out {
        Some(p) if p != Path::new("-") => Box::new(BufWriter::new(File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        _ => Box::new(BufWriter::new(io::stdout().lock())),
    })
}

fn run_gen_surge(scale: u32, seed: u64, requests_only: bool, out: Option<&Path>) -> anyhow::Result<()> {
    use surgeguard::scenario::{Surge, monday_surge};
    anyhow::ensure!(scale >= 1, "--scale must be at least 1");
    let events = monday_surge(&Surge { seed, scale, backend: !requests_only, ..Surge::default() });
    let mut writer = output(out)?;
    let mut buf = Vec::with_capacity(1 << 16);
    for e in &events {
        e.write_tagged_line(&mut buf)?;
        if buf.len() > 60_000 {
            writer.write_all(&buf)?;
            buf.clear();
        }
    }
    writer.write_all(&buf)?;
    writer.flush()?;
    eprintln!("generated {} events", events.len());
    Ok(())
}

fn run_gen_history(days: u32, out: &Path, seed: u64, peak_rpm: f64, start: &str) -> anyhow::Result<()> {
    use surgeguard::history_gen::{HistoryOptions, generate};
    anyhow::ensure!(days >= 1, "--days must be at least 1");
    anyhow::ensure!(peak_rpm.is_finite() && peak_rpm > 0.0, "--peak-rpm must be a positive number");
    let start = chrono::NaiveDate::parse_from_str(start, "%Y-%m-%d").with_context(|| format!("--start {start:?}: expected YYYY-MM-DD"))?;
    let start = surgeguard::time::Millis(start.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp_millis()).unwrap_or(0));
    let opts = HistoryOptions { days, start, seed, peak_rpm, ..HistoryOptions::default() };
    let bar = indicatif::ProgressBar::new(u64::from(days));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} days {elapsed} (eta {eta})").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let done = generate(&opts, out, |d| bar.set_position(u64::from(d)))?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} requests in {} files under {} ({} holidays, {} surges listed in events.csv) in {:.1} s",
        done.rows,
        done.files,
        out.display(),
        done.holidays,
        done.surges,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_aggregate(source: &cli_demand::SourceArgs, group_by: Option<String>, out: Option<&Path>) -> anyhow::Result<()> {
    use surgeguard::demand::aggregate;
    let grouped = group_by.is_some();
    let (source, step) = source.source(group_by)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let groups = runtime.block_on(aggregate(&source, step))?;
    let mut w = output(out)?;
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

fn load(path: &Path) -> anyhow::Result<Arc<Config>> {
    config_load::load_file(path).map(Arc::new).map_err(|e| anyhow::anyhow!("{e}"))
}

fn run_replay(config: &Path, input: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let cfg = load(config)?;
    let reader: Box<dyn io::BufRead> = if input == Path::new("-") {
        Box::new(BufReader::with_capacity(1 << 16, io::stdin().lock()))
    } else {
        let f = File::open(input).with_context(|| format!("opening {}", input.display()))?;
        Box::new(BufReader::with_capacity(1 << 16, f))
    };
    let writer = output(out)?;
    let started = std::time::Instant::now();
    let summary = replay::replay(cfg, reader, writer, |line, err| {
        eprintln!("{}:{line}: skipped: {err}", input.display());
    })?;
    let secs = started.elapsed().as_secs_f64();
    let outputs: Vec<String> = summary.outputs.iter().map(|(t, n)| format!("{t} {n}")).collect();
    let c = summary.counters;
    eprintln!(
        "replayed {} events from {} lines in {secs:.2} s ({:.0} events/s); skipped {} undecodable; outputs: {}; decisions: {} allow, {} grace, {} throttle; {} users tracked",
        summary.events,
        summary.lines,
        summary.events as f64 / secs.max(1e-9),
        summary.skipped,
        if outputs.is_empty() { "none".into() } else { outputs.join(", ") },
        c.allowed,
        c.graced,
        c.throttled,
        summary.tracked_users,
    );
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => tracing::info!("SIGTERM: shutting down"),
    }
}

fn run_service(config: &Path, brokers: Option<&str>, api_listen: Option<String>) -> anyhow::Result<()> {
    let mut cfg = load(config)?;
    if let Some(listen) = &api_listen {
        anyhow::ensure!(
            listen.is_empty() || listen.parse::<std::net::SocketAddr>().is_ok(),
            "--api-listen {listen:?}: expected \"\" or an address such as 0.0.0.0:8480"
        );
        let mut c = (*cfg).clone();
        c.api.listen = listen.clone();
        cfg = Arc::new(c);
    }
    let brokers = brokers.map_or_else(|| cfg.kafka.brokers.clone(), str::to_string);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        // Hot reload: SIGHUP or a change of the file (the same --api-listen applies to it).
        let adjust = move |c: &mut surgeguard::config::Config| {
            if let Some(listen) = &api_listen {
                c.api.listen = listen.clone();
            }
        };
        let reload = surgeguard::config_reload::watch(config.to_path_buf(), cfg.clone(), std::time::Duration::from_secs(1), adjust);
        surgeguard::runtime::run_reloading(cfg, &brokers, &[], Some(reload), shutdown_signal()).await
    })?;
    Ok(())
}

fn run_archive(
    config: &Path,
    brokers: Option<&str>,
    dir: PathBuf,
    group: Option<String>,
    flush_every: &str,
    max_rows: usize,
    grace: &str,
) -> anyhow::Result<()> {
    let cfg = load(config)?;
    let brokers = brokers.map_or_else(|| cfg.kafka.brokers.clone(), str::to_string);
    let flush_ms = surgeguard::demand::parse_resolution(flush_every)
        .map_err(|_| anyhow::anyhow!("--flush-every {flush_every:?}: expected a duration such as 500ms, 30s or 5m"))?;
    anyhow::ensure!(max_rows >= 1, "--max-rows must be at least 1");
    let grace_ms = if grace.trim() == "0" {
        0
    } else {
        surgeguard::demand::parse_resolution(grace).map_err(|_| anyhow::anyhow!("--incomplete-grace {grace:?}: expected 0 or a duration such as 30s"))?
    };
    let group = group.unwrap_or_else(|| format!("{}.archive", cfg.kafka.group_id));
    let opts = surgeguard::archive_run::ArchiveOptions {
        dir,
        group,
        flush_every: std::time::Duration::from_millis(flush_ms as u64),
        max_rows,
        incomplete_grace: std::time::Duration::from_millis(grace_ms as u64),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let stats = runtime.block_on(surgeguard::archive_run::archive(cfg, &brokers, opts, shutdown_signal()))?;
    eprintln!(
        "archived {} requests in {} files ({} read again and skipped, {} undecodable skipped, {} files of incomplete flushes removed)",
        stats.archived, stats.files, stats.already_archived, stats.undecodable, stats.removed_incomplete
    );
    Ok(())
}

fn run_demo(config: &Path, speed: f64, seed: u64) -> anyhow::Result<()> {
    use surgeguard::demo;
    anyhow::ensure!(speed >= 0.0 && speed.is_finite(), "--speed must be 0 (as fast as possible) or a positive number");
    let cfg = (*load(config)?).clone();
    let opts = demo::DemoOptions { seed, speed };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let started = std::time::Instant::now();
        eprintln!("1/2 the surge without protection (simulated backend only) …");
        let without = demo::unprotected(&opts).await;
        eprintln!("2/2 the surge through surgeguard run on an embedded Kafka cluster …");
        let with = demo::protected(cfg, &opts, |brokers| {
            println!("embedded Kafka (mock cluster) at {brokers}: try `kcat -b {brokers} -C -t surgeguard.decisions` while it runs");
        })
        .await?;
        println!();
        print!("{}", demo::table(&without, &with));
        eprintln!("\ndone in {:.0} s", started.elapsed().as_secs_f64());
        anyhow::Ok(())
    })
}

fn run_bench(config: &Path, brokers: &str, opts: surgeguard::bench::BenchOptions) -> anyhow::Result<()> {
    let cfg = load(config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let measured = runtime.block_on(surgeguard::bench::bench(&cfg, brokers, &opts, |round| {
        print!("{}", surgeguard::bench::report(round, &opts));
        io::stdout().flush().ok();
    }))?;
    print!("{}", surgeguard::bench::summary(&measured));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(io::IsTerminal::is_terminal(&io::stderr())).init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match cli.command {
        Command::CheckConfig { file } => match config_load::load_file(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        Command::Replay { config, input, out } => run_replay(&config, &input, out.as_deref()),
        Command::Run { config, brokers, api_listen } => run_service(&config, brokers.as_deref(), api_listen),
        Command::Archive { config, brokers, out, group, flush_every, max_rows, incomplete_grace } => {
            run_archive(&config, brokers.as_deref(), out, group, &flush_every, max_rows, &incomplete_grace)
        }
        Command::Demo { config, speed, seed } => run_demo(&config, speed, seed),
        Command::Bench { config, brokers, events, rate, seconds, warmup, rounds, side } => {
            run_bench(&config, &brokers, surgeguard::bench::BenchOptions { events, rate, seconds, warmup, rounds, side })
        }
        Command::Whatif { args } => cli_whatif::run_whatif(&args),
        Command::Gen { what: Gen::Surge { scale, seed, requests_only, out } } => run_gen_surge(scale, seed, requests_only, out.as_deref()),
        Command::Gen { what: Gen::History { days, out, seed, peak_rpm, start } } => run_gen_history(days, &out, seed, peak_rpm, &start),
        Command::Aggregate { source, group_by, out } => run_aggregate(&source, group_by, out.as_deref()),
        Command::Fit { history, model, out } => cli_demand::run_fit(&history, &model, &out),
        Command::Backtest { history, model, windows, step, spike_threshold, min_confidence, out } => {
            cli_demand::run_backtest(&history, &model, &cli_demand::BacktestArgs { windows, step, spike_threshold, min_confidence, out })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
