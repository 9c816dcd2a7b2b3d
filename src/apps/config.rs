//! `surgeguard check-config` and `surgeguard config print-default`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, DeliveryResult, ProducerContext};

use crate::config::Config;
use crate::config::load::{ConfigError, ConfigErrors, DEFAULT_PIPELINE, load_file};
use crate::config::secrets;

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The pipeline TOML file.
    pub file: PathBuf,
}

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Write the built-in default pipeline (pipelines/default.toml, every key with its default)
    /// to stdout, to start a pipeline file of your own from.
    PrintDefault,
}

/// Validates a pipeline file: 0 when valid, 1 with every error and its key path when not. A file
/// that loads has its `kafka.properties` checked by librdkafka too. Errors are printed with the
/// file's secret values redacted.
pub fn check(args: &CheckArgs) -> ExitCode {
    let checked = load_file(&args.file).and_then(|cfg| match kafka_refusals(&cfg) {
        refused if refused.is_empty() => Ok(cfg),
        refused => Err(ConfigErrors { origin: args.file.display().to_string(), errors: refused }),
    });
    match checked {
        Ok(_) => {
            println!("{}: ok", args.file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}", secrets::redact_for_file(&e.to_string(), &args.file));
            ExitCode::from(1)
        }
    }
}

/// What librdkafka refuses in `kafka.properties`, which the loader passes through unread: each
/// property set on its own, so every refused one is named; then, if all pass, a producer and a
/// consumer created with them all, as `run` creates its clients (librdkafka checks some settings
/// only then: combinations, the SASL mechanism against this build, TLS files). The clients get no
/// brokers, so nothing is contacted. Secret values are redacted from librdkafka's reasons.
fn kafka_refusals(cfg: &Config) -> Vec<ConfigError> {
    let properties = &cfg.kafka.properties;
    if properties.is_empty() {
        return Vec::new();
    }
    let hidden = secrets::config_secrets(cfg);
    let refused = |key: String, e: KafkaError| ConfigError { key, message: format!("refused by librdkafka: {}", reason(e, &hidden)) };
    let mut errors: Vec<ConfigError> = properties
        .iter()
        .filter_map(|(k, v)| ClientConfig::new().set(k, v).create_native_config().err().map(|e| refused(format!("kafka.properties.\"{k}\""), e)))
        .collect();
    if errors.is_empty() {
        let client: ClientConfig = properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        // Idempotent, as `run`'s producers are: librdkafka checks some settings against it
        // (`max.in.flight.requests.per.connection`, `retries`).
        let producer: KafkaResult<BaseProducer<Quiet>> = client.clone().set("enable.idempotence", "true").set("acks", "all").create_with_context(Quiet);
        let consumer = producer.and_then(|_| client.create_with_context::<Quiet, BaseConsumer<Quiet>>(Quiet));
        if let Err(e) = consumer {
            errors.push(refused("kafka.properties".into(), e));
        }
    }
    errors
}

/// librdkafka's reason for refusing a setting, `hidden` redacted (the key path names the property).
fn reason(e: KafkaError, hidden: &[&str]) -> String {
    match secrets::redact_kafka_error(e, hidden) {
        KafkaError::ClientConfig(_, why, ..) | KafkaError::ClientCreation(why) => why,
        other => other.to_string(),
    }
}

/// The context of the check's clients: they have no brokers, and librdkafka's warning about that
/// (and any other line) is not the check's to print.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}
    fn error(&self, _: KafkaError, _: &str) {}
}

impl ConsumerContext for Quiet {}

impl ProducerContext for Quiet {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

pub fn main(command: &ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::PrintDefault => {
            let mut out = std::io::stdout().lock();
            out.write_all(DEFAULT_PIPELINE.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}
