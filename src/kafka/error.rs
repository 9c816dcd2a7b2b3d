//! How `surgeguard run` stops on an error, and what a run did.

use std::time::Duration;

use rdkafka::error::KafkaError;

use crate::kafka::offsets::Partition;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Unreachable(#[from] crate::kafka::reach::Unreachable),
    #[error("encoding an output: {0}")]
    Encode(#[from] serde_json::Error),
    /// An output was not delivered (or not even enqueued) for a reason no other rule handles:
    /// `input` is the input it came from (none for outputs tied to no input).
    #[error("an output{} could not be delivered: {error}", input.as_ref().map(|((t, p), o)| format!(" of {t}[{p}]@{o}")).unwrap_or_default())]
    Delivery { error: KafkaError, input: Option<(Partition, i64)> },
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

impl RunError {
    /// Whether the pipeline may start again in this process after this error (new clients,
    /// state restored as after a crash) rather than stop: failures of the clients, the broker or
    /// a rebalance. Errors in the set-up itself (the config, the topics, the API's address)
    /// would come again the same.
    pub fn restartable(&self) -> bool {
        match self {
            RunError::Kafka(_)
            | RunError::Unreachable(_)
            | RunError::Delivery { .. }
            | RunError::ConsumerDown(..)
            | RunError::Rebalance(_)
            | RunError::Transaction(_) => true,
            RunError::Encode(_) | RunError::Prediction(_) | RunError::Api(_) | RunError::ChangelogPartitions { .. } | RunError::NoUsageTopic(_) => false,
        }
    }

    /// The input whose output failed, when the error is tied to one (`quarantine.rs`).
    pub fn input(&self) -> Option<&(Partition, i64)> {
        match self {
            RunError::Delivery { input, .. } => input.as_ref(),
            _ => None,
        }
    }
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
    /// Times the pipeline started again in the process after an error (`RunError::restartable`).
    pub restarts: u64,
    /// Inputs sent to the DLQ as `quarantined` (`quarantine.rs`).
    pub quarantined: u64,
}

impl RunStats {
    /// Adds what one run of the pipeline did (a restarted service runs it several times).
    pub fn add(&mut self, run: &RunStats) {
        self.consumed += run.consumed;
        self.dead_lettered += run.dead_lettered;
        self.already_counted += run.already_counted;
        self.decided_before += run.decided_before;
        self.produced += run.produced;
        self.restarts += run.restarts;
        self.quarantined += run.quarantined;
    }
}
