//! How `surgeguard run` stops on an error, and what a run did.

use std::time::Duration;

use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Unreachable(#[from] crate::kafka::reach::Unreachable),
    #[error("encoding an output: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("an output could not be delivered: {0}")]
    Delivery(KafkaError),
    #[error("the consumer has failed for {0:?} without a single message: {1}")]
    ConsumerDown(Duration, KafkaError),
    /// A rebalance callback failed (restoring state, committing or aborting on revocation).
    #[error("{0}")]
    Rebalance(String),
    #[error("exactly-once transaction failed (aborted; a restart resumes from the last committed one): {0}")]
    Transaction(KafkaError),
    #[error(transparent)]
    Prediction(#[from] crate::history::prediction_setup::PredictionSetupError),
    #[error("HTTP API: {0}")]
    Api(String),
    #[error(
        "topic {changelog} has {has} partitions, fewer than {requests} ({needs}): each requests partition keeps its state in the changelog partition of the same number"
    )]
    ChangelogPartitions { changelog: String, has: usize, requests: String, needs: usize },
    #[error("topic {0} does not exist: instances publish and read their usage there (create it, or set kafka.create_topics = true)")]
    NoUsageTopic(String),
}

/// What a run did, for its final log line and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub consumed: u64,
    pub dead_lettered: u64,
    /// Requests decided again without being counted: the restored changelog state held them.
    pub already_counted: u64,
    /// Requests processed again whose first decision was read back from the decisions topic.
    pub decided_before: u64,
    pub produced: u64,
}
