//! Topic set-up for `surgeguard run`: the topics a pipeline reads and writes, with their
//! partitions and cleanup policies, created when missing.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;

/// One topic surgeguard uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Compacted topics keep the latest value per key (limits, breakers).
    pub compacted: bool,
}

/// Every topic of the pipeline, inputs first.
pub fn specs(cfg: &Config) -> Vec<TopicSpec> {
    let t = &cfg.topics;
    let p = &cfg.kafka.partitions;
    let spec = |name: &str, partitions: i32, compacted: bool| TopicSpec { name: name.to_string(), partitions, compacted };
    vec![
        spec(&t.requests, p.requests, false),
        spec(&t.outcomes, p.outcomes, false),
        spec(&t.telemetry, p.telemetry, false),
        spec(&t.admin, p.admin, false),
        spec(&t.decisions, p.decisions, false),
        spec(&t.limits, p.limits, true),
        spec(&t.breakers, p.breakers, true),
        spec(&t.predictions, p.predictions, false),
        spec(&t.alerts, p.alerts, false),
        spec(&t.dlq, p.dlq, false),
    ]
}

/// Creates the topics that do not exist yet; existing ones are left as they are. Returns the
/// names created.
pub async fn ensure(client: &ClientConfig, cfg: &Config) -> Result<Vec<String>, KafkaError> {
    create(client, &specs(cfg), cfg.kafka.replication_factor).await
}

/// Creates the given topics where missing, with `replication` (-1: the broker's default).
pub async fn create(client: &ClientConfig, specs: &[TopicSpec], replication: i32) -> Result<Vec<String>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client.create()?;
    let new: Vec<NewTopic> = specs
        .iter()
        .map(|s| {
            let t = NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(replication));
            if s.compacted { t.set("cleanup.policy", "compact") } else { t }
        })
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
