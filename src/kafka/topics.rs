//! Topic set-up for `surgeguard run`: the topics a pipeline reads and writes, with their
//! partitions and cleanup policies, created when missing.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;
use crate::config::secrets;

/// One topic surgeguard uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Topic configs set at creation: compacted topics keep the latest value per key (limits,
    /// breakers, the limiter changelog).
    pub configs: Vec<(&'static str, String)>,
}

impl TopicSpec {
    pub fn new(name: &str, partitions: i32) -> Self {
        TopicSpec { name: name.to_string(), partitions, configs: Vec::new() }
    }

    fn with(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.configs.push((key, value.into()));
        self
    }
}

/// How long the changelog keeps a state no one updates: twice the limiter's idle eviction, and
/// at least a day (record times are wall-clock, event times may lag them).
pub fn changelog_retention_ms(cfg: &Config) -> i64 {
    (2 * i64::from(cfg.limiter.evict_idle_after_s) * 1000).max(86_400_000)
}

/// Every topic of the pipeline, inputs first.
pub fn specs(cfg: &Config) -> Vec<TopicSpec> {
    let t = &cfg.topics;
    let p = &cfg.kafka.partitions;
    let compacted = |name: &str, partitions: i32| TopicSpec::new(name, partitions).with("cleanup.policy", "compact");
    vec![
        TopicSpec::new(&t.requests, p.requests),
        TopicSpec::new(&t.outcomes, p.outcomes),
        TopicSpec::new(&t.telemetry, p.telemetry),
        TopicSpec::new(&t.admin, p.admin),
        TopicSpec::new(&t.decisions, p.decisions),
        compacted(&t.limits, p.limits),
        compacted(&t.breakers, p.breakers),
        TopicSpec::new(&t.predictions, p.predictions),
        TopicSpec::new(&t.alerts, p.alerts),
        TopicSpec::new(&t.dlq, p.dlq),
        // Deleted by age as well, so users idle past eviction leave it.
        TopicSpec::new(&t.changelog, p.requests).with("cleanup.policy", "compact,delete").with("retention.ms", changelog_retention_ms(cfg).to_string()),
        // Small (a record per requests partition per commit interval) and read from a minute
        // back at start-up: an hour is plenty.
        TopicSpec::new(&t.usage, 1).with("retention.ms", "3600000"),
    ]
}

/// Creates the topics that do not exist yet; existing ones are left as they are. Returns the
/// names created.
pub async fn ensure(client: &ClientConfig, cfg: &Config) -> Result<Vec<String>, KafkaError> {
    create(client, &specs(cfg), cfg.kafka.replication_factor).await
}

/// Creates the given topics where missing, with `replication` (-1: the broker's default).
pub async fn create(client: &ClientConfig, specs: &[TopicSpec], replication: i32) -> Result<Vec<String>, KafkaError> {
    let admin = admin_client(client)?;
    let new: Vec<NewTopic> = specs
        .iter()
        .map(|s| s.configs.iter().fold(NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(replication)), |t, (k, v)| t.set(k, v)))
        .collect();
    // Fail within half a minute when no broker answers, instead of waiting without a word.
    let timeout = Some(std::time::Duration::from_secs(30));
    let options = AdminOptions::new().request_timeout(timeout).operation_timeout(timeout);
    let mut created = Vec::new();
    for r in admin.create_topics(&new, &options).await? {
        match r {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                tracing::error!(topic = %name, ?code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(created)
}

/// Deletes the given topics (those already gone are not an error). For the bench, whose topics
/// would otherwise fill the broker's disk: a million events a round is about a gigabyte.
pub async fn delete(client: &ClientConfig, names: &[&str]) -> Result<(), KafkaError> {
    let admin = admin_client(client)?;
    let timeout = Some(std::time::Duration::from_secs(30));
    let options = AdminOptions::new().request_timeout(timeout).operation_timeout(timeout);
    for r in admin.delete_topics(names, &options).await? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => {
                tracing::warn!(topic = %name, ?code, "cannot delete topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// An admin client. librdkafka's refusal of a setting comes back with the secret values redacted:
/// it quotes the value.
fn admin_client(client: &ClientConfig) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    client.create().map_err(|e| secrets::redact_kafka_error(e, &secrets::client_secrets(client)))
}

/// The consumer's position in a partition (the next offset it will read), when known.
pub fn position<C: ConsumerContext>(consumer: &impl Consumer<C>, topic: &str, partition: i32) -> Option<i64> {
    let pos = consumer.position().ok()?;
    match pos.find_partition(topic, partition)?.offset() {
        rdkafka::topic_partition_list::Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// A partition's low and high watermarks. A client that was just assigned a partition may not
/// have its metadata yet (librdkafka answers "unknown partition"): it asks again until `timeout`.
pub fn watermarks<C: ConsumerContext>(consumer: &impl Consumer<C>, topic: &str, partition: i32, timeout: Duration) -> Result<(i64, i64), KafkaError> {
    let started = Instant::now();
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(marks) => return Ok(marks),
            Err(e) if started.elapsed() < timeout => {
                tracing::debug!(topic, partition, error = %e, "watermarks not known yet");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}
