//! Dead-letter records: what goes to `surgeguard.dlq` for an input that failed to decode, or that
//! was refused (an event stamped too far ahead).
//!
//! The raw key and value are kept as they were; headers name the error and where the input came
//! from, with the names Kafka Streams uses for its dead-letter queue (KIP-1034), so tools built
//! for those read ours too. Pure: the runtime turns this into a Kafka record.

use crate::wire::decode::DecodeError;

/// Header names (KIP-1034).
pub const EXCEPTION: &str = "__streams.errors.exception";
pub const MESSAGE: &str = "__streams.errors.message";
pub const TOPIC: &str = "__streams.errors.topic";
pub const PARTITION: &str = "__streams.errors.partition";
pub const OFFSET: &str = "__streams.errors.offset";
/// Set when the value was cut to fit the DLQ: the original length in bytes.
pub const TRUNCATED: &str = "__surgeguard.dlq.original_length";

/// Why an input went to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// A short, stable name (`invalid_json`, `too_far_ahead`, …).
    pub kind: &'static str,
    pub message: String,
}

impl From<&DecodeError> for Reason {
    fn from(e: &DecodeError) -> Self {
        Reason { kind: e.kind(), message: e.to_string() }
    }
}

/// The headers of the dead-letter record for `reason` on the input at `topic`/`partition`/`offset`.
pub fn headers(reason: &Reason, topic: &str, partition: i32, offset: i64) -> Vec<(&'static str, String)> {
    vec![
        (EXCEPTION, reason.kind.to_string()),
        (MESSAGE, reason.message.clone()),
        (TOPIC, topic.to_string()),
        (PARTITION, partition.to_string()),
        (OFFSET, offset.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decode::decode_request;

    #[test]
    fn headers_name_the_error_and_the_source() {
        let err = decode_request(b"{oops").unwrap_err();
        let h = headers(&Reason::from(&err), "surgeguard.requests", 3, 42);
        assert_eq!(h[0], (EXCEPTION, "invalid_json".to_string()));
        assert!(h[1].1.starts_with("invalid JSON"));
        assert_eq!(&h[2..], &[(TOPIC, "surgeguard.requests".into()), (PARTITION, "3".into()), (OFFSET, "42".into())]);
    }
}
