//! The `surgeguard` command line: parses the arguments and dispatches to the command's module
//! in `src/apps/`, where its glue lives.

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use surgeguard::apps;

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
    CheckConfig(apps::config::CheckArgs),
    /// The built-in default pipeline.
    Config {
        #[command(subcommand)]
        what: apps::config::ConfigCommand,
    },
    /// Run JSON-lines events through the processors and write the outputs as JSON lines.
    Replay(apps::replay::ReplayArgs),
    /// Run the pipeline as a Kafka consumer-group service until SIGINT or SIGTERM.
    Run(apps::run::RunArgs),
    /// Archive the requests topic as Parquet request history (date/hour partitions, no
    /// duplicates after a crash) until SIGINT or SIGTERM.
    Archive(apps::archive::ArchiveArgs),
    /// The seed's Monday-morning surge against a simulated backend, without and with
    /// surgeguard, on an embedded Kafka (librdkafka's mock cluster); prints what it measured.
    Demo(apps::demo::DemoArgs),
    /// Throughput and produce→decision latency of `surgeguard run` on a broker, beside
    /// passthroughs (consume → produce, no processing: a lean one, and kcat's when installed)
    /// on the same broker in the same run.
    Bench(apps::bench::BenchArgs),
    /// Demand per time bucket from history files, as CSV (`ts,value`, or `ts,group,value`
    /// with --group-by), computed by DataFusion SQL with empty buckets filled with zero.
    Aggregate(apps::demand::AggregateArgs),
    /// Fit a demand model to history and write it as JSON (format in models/README.md).
    Fit(apps::demand::FitArgs),
    /// Rolling-origin evaluation of the demand model beside seasonal-naive forecasts; writes
    /// report.json, forecasts.csv and plot.png to --out.
    Backtest(apps::demand::BacktestCommand),
    /// Replay request history through one or more pipeline files (limit policies) and compare
    /// what each allows, graces and throttles per tier, and how often it exceeds a capacity.
    Whatif(apps::whatif::WhatifArgs),
    /// Generate synthetic input.
    Gen {
        #[command(subcommand)]
        what: apps::generate::GenCommand,
    },
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
        Command::CheckConfig(args) => return apps::config::check(&args),
        Command::Config { what } => apps::config::main(&what),
        Command::Replay(args) => apps::replay::main(&args),
        Command::Run(args) => apps::run::main(args),
        Command::Archive(args) => apps::archive::main(&args),
        Command::Demo(args) => apps::demo::main(&args),
        Command::Bench(args) => apps::bench::main(&args),
        Command::Aggregate(args) => apps::demand::aggregate_main(&args),
        Command::Fit(args) => apps::demand::fit_main(&args),
        Command::Backtest(args) => apps::demand::backtest_main(&args),
        Command::Whatif(args) => apps::whatif::main(&args),
        Command::Gen { what } => apps::generate::main(&what),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Kafka clients' errors may quote a property's value: the config's secrets go.
            eprintln!("error: {}", surgeguard::config::secrets::redact_known(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}
