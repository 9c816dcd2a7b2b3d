//! The service's own settings: the HTTP API (`[api]`), topic names (`[topics]`) and the Kafka
//! clients (`[kafka]`). Part of `Config` (re-exported from `config/mod.rs`); split out to keep the
//! pipeline's settings in one file and the deployment's in another.

use std::collections::BTreeMap;

use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;

use crate::wire::events::InputTopic;

/// The HTTP API that `surgeguard run` and the demo serve.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// host:port to listen on; empty turns the API off; port 0 takes a free one.
    pub listen: String,
    /// The partitioner the producers of the requests topic use (librdkafka's names): which
    /// partition, and so which instance's limiter, holds a user.
    pub partitioner: Partitioner,
    /// The environment variable holding the admin endpoints' bearer token; unset or empty turns
    /// the admin endpoints off.
    pub admin_token_env: String,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// `POST /v1/decide` answers a request id it decided less than this long ago (the same user)
    /// with the same decision, counting it once (`idempotency.rs`); 0 turns that off.
    pub idempotency_window_s: u32,
    /// The most decisions held for that, in two generations dropped whole: a decision is
    /// remembered for the window unless half this many newer ones came first.
    pub idempotency_capacity: usize,
    /// And at most about this many bytes of them (estimated), whichever comes first.
    pub idempotency_max_bytes: u64,
    /// `POST /v1/decide` decides at the body's `ts` (receive time when it has none); a `ts`
    /// further than this many seconds from the stream's event time is refused with 422.
    pub max_clock_skew_s: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8480".into(),
            partitioner: Partitioner::default(),
            admin_token_env: "SURGEGUARD_ADMIN_TOKEN".into(),
            max_body_bytes: 16 * 1024,
            // A client's retries come within seconds; at 25 000 decisions/s half the capacity
            // is 2 s of decisions, at 1 000/s 50 s (a few hundred bytes each).
            idempotency_window_s: 60,
            idempotency_capacity: 100_000,
            idempotency_max_bytes: 64 << 20,
            max_clock_skew_s: 300,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    pub requests: String,
    pub outcomes: String,
    pub telemetry: String,
    /// Operators' actions on breakers (force open, disable, metrics only, reset).
    pub admin: String,
    pub decisions: String,
    pub limits: String,
    pub breakers: String,
    pub predictions: String,
    pub alerts: String,
    pub dlq: String,
    /// Per-user limiter state (compacted), one partition per requests partition.
    pub changelog: String,
    /// Every instance's usage cells per requests partition, read by every instance (the
    /// monitor's and the predictor's global view).
    pub usage: String,
}

impl TopicsConfig {
    /// The configured name of an input topic.
    pub fn name(&self, topic: InputTopic) -> &str {
        match topic {
            InputTopic::Requests => &self.requests,
            InputTopic::Outcomes => &self.outcomes,
            InputTopic::Telemetry => &self.telemetry,
            InputTopic::Admin => &self.admin,
        }
    }

    /// Which input a topic of this pipeline is, by its configured name.
    pub fn input_topic(&self, name: &str) -> Option<InputTopic> {
        InputTopic::ALL.into_iter().find(|&t| self.name(t) == name)
    }
}

impl Default for TopicsConfig {
    fn default() -> Self {
        let t = |s: &str| format!("surgeguard.{s}");
        TopicsConfig {
            requests: t("requests"),
            outcomes: t("outcomes"),
            telemetry: t("telemetry"),
            admin: t("admin"),
            decisions: t("decisions"),
            limits: t("limits"),
            breakers: t("breakers"),
            predictions: t("predictions"),
            alerts: t("alerts"),
            dlq: t("dlq"),
            changelog: t("limiter-changelog"),
            usage: t("usage"),
        }
    }
}

/// What `surgeguard run` promises about its outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[cfg_attr(test, derive(Serialize))]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

/// How `surgeguard run` talks to Kafka.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]` (`--brokers` overrides).
    pub brokers: String,
    /// The consumer group; instances in one group split the requests topic's partitions (each
    /// reads every control partition).
    pub group_id: String,
    /// Create missing topics at start-up with the partitions below and the right cleanup
    /// policies (limits and breakers compacted).
    pub create_topics: bool,
    /// Replication factor of created topics; -1 takes the broker's default.
    pub replication_factor: i32,
    /// Delivery: `at_least_once` (offsets committed after the outputs are acknowledged) or
    /// `exactly_once` (outputs, changelog records and offsets in one Kafka transaction).
    pub guarantee: Guarantee,
    /// How far back (seconds) a starting instance reads outcomes and telemetry to rebuild breakers
    /// and the health view before it decides anything (the admin topic is read from its start).
    pub control_lookback_s: u32,
    /// At-least-once: how often (ms) changed limiter state goes to the changelog, one record per
    /// user and request type (Kafka Streams' record cache); input offsets are committed only
    /// after it. Exactly-once writes it with every transaction (100 ms) instead.
    pub commit_interval_ms: u32,
    /// After this long (ms) without any input, event time follows the wall clock, so timers
    /// fire without events (an open breaker turns half-open); 0 turns it off. Replay is
    /// unaffected.
    pub wall_clock_after_idle_ms: u32,
    /// Input alignment (`kafka/merge.rs`): how long (ms) an input partition with nothing to
    /// read, whose event time is behind the next message, holds it back before it is excused
    /// (Kafka Streams' `max.task.idle.ms`); 0 excuses it at once.
    pub max_idle_ms: u32,
    /// The global views (`core/usage.rs`): how long (ms) a requests partition whose usage
    /// records stop coming (its owner gone, the group rebalancing) holds back the closing of
    /// minutes before it is excused until its next record.
    pub usage_silence_ms: u32,
    /// After a failure of the clients, the broker or a rebalance, how long (ms) `surgeguard run`
    /// waits before it starts the pipeline again in the process; doubled after each restart
    /// that follows within a minute, up to `restart_backoff_max_ms`.
    pub restart_backoff_ms: u32,
    pub restart_backoff_max_ms: u32,
    /// An input whose outputs fail (for a reason no other rule handles) this many restarts in a
    /// row is quarantined: sent to the DLQ as `quarantined`, and its partition goes on.
    pub quarantine_after: u32,
    /// This instance's name in the group (librdkafka's `group.instance.id`, KIP-345 static
    /// membership), unique per instance and stable across its restarts; empty: none.
    pub instance_name: String,
    /// At-least-once: a request processed again after a crash or a rebalance whose first
    /// decision reached the decisions topic is decided as it was then, and not published again
    /// (`kafka/first_decisions.rs`). Needs the decisions topic co-partitioned with the requests
    /// topic (as many partitions): decisions go to their request's partition number and carry
    /// `surgeguard.input` (`GROUP/PARTITION/OFFSET`).
    pub keep_first_decisions: bool,
    /// Partitions of each created topic.
    pub partitions: TopicPartitions,
    /// librdkafka properties for every client, passed through as they are (security.protocol,
    /// sasl.*, ssl.*, client.id, …). The ones surgeguard manages itself are refused. The value of
    /// a property whose name says password, secret, jaas, key or token is never printed
    /// (`secrets.rs`).
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "surgeguard".into(),
            create_topics: true,
            replication_factor: -1,
            guarantee: Guarantee::AtLeastOnce,
            control_lookback_s: 600,
            commit_interval_ms: 1000,
            wall_clock_after_idle_ms: 2000,
            max_idle_ms: 250,
            usage_silence_ms: 30_000,
            restart_backoff_ms: 1000,
            restart_backoff_max_ms: 60_000,
            quarantine_after: 3,
            instance_name: String::new(),
            keep_first_decisions: true,
            partitions: TopicPartitions::default(),
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[cfg_attr(test, derive(Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct TopicPartitions {
    pub requests: i32,
    pub outcomes: i32,
    pub telemetry: i32,
    pub admin: i32,
    pub decisions: i32,
    pub limits: i32,
    pub breakers: i32,
    pub predictions: i32,
    pub alerts: i32,
    pub dlq: i32,
}

impl Default for TopicPartitions {
    fn default() -> Self {
        // Requests and decisions carry the volume and are keyed by user: room to scale out.
        TopicPartitions { requests: 6, outcomes: 3, telemetry: 3, admin: 1, decisions: 6, limits: 1, breakers: 1, predictions: 1, alerts: 1, dlq: 1 }
    }
}

/// A producer partitioner, named as librdkafka's `partitioner` property names it. Keys are never
/// empty here (a request without a user is refused), so each `_random` variant hashes like its
/// plain one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioner {
    /// CRC32 of the key: librdkafka's default.
    #[default]
    ConsistentRandom,
    Consistent,
    /// Java-compatible murmur2 of the key: the Java client's default for keyed records.
    Murmur2Random,
    Murmur2,
    /// FNV-1a of the key (as Sarama's default hash partitioner).
    Fnv1aRandom,
    Fnv1a,
}

impl Partitioner {
    pub fn as_str(self) -> &'static str {
        match self {
            Partitioner::ConsistentRandom => "consistent_random",
            Partitioner::Consistent => "consistent",
            Partitioner::Murmur2Random => "murmur2_random",
            Partitioner::Murmur2 => "murmur2",
            Partitioner::Fnv1aRandom => "fnv1a_random",
            Partitioner::Fnv1a => "fnv1a",
        }
    }
}
