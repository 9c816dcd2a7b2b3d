//! Dead-letter records: what goes to `surgeguard.dlq` for an input that failed to decode, or that
//! was refused (an event stamped too far ahead).
//!
//! The raw key and value are kept as they were; headers name the error and where the input came
//! from, with the names Kafka Streams uses for its dead-letter queue (KIP-1034), so tools built
//! for those read ours too. Pure: the runtime turns this into a Kafka record.

use crate::wire::decode::DecodeError;
use crate::wire::limits::{MAX_REASON_BYTES, shorten};

/// Header names (KIP-1034).
pub const EXCEPTION: &str = "__streams.errors.exception";
pub const MESSAGE: &str = "__streams.errors.message";
pub const TOPIC: &str = "__streams.errors.topic";
pub const PARTITION: &str = "__streams.errors.partition";
pub const OFFSET: &str = "__streams.errors.offset";
/// Set when the value was cut to fit the DLQ: the original length in bytes.
pub const TRUNCATED: &str = "__surgeguard.dlq.original_length";
/// Set when the key was cut: the original length in bytes.
pub const KEY_TRUNCATED: &str = "__surgeguard.dlq.original_key_length";

/// librdkafka's default `message.max.bytes`.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room kept in a record for its headers (the reason is cut to `MAX_REASON_BYTES`, a topic name
/// is at most 249 bytes) and framing.
const OVERHEAD_BYTES: usize = 8 * 1024;
/// The most of a key kept.
pub const MAX_KEY_BYTES: usize = 1024;

/// A dead letter's key and value, cut to fit one record of `message_max_bytes`, and the headers
/// that say what was cut.
pub struct Fitted<'a> {
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub cut: Vec<(&'static str, String)>,
}

/// Cuts `key` and `value` so that the dead letter fits a record of `message_max_bytes` (the
/// producer's `message.max.bytes`): a DLQ record is never refused for its size.
pub fn fit<'a>(key: Option<&'a [u8]>, value: &'a [u8], message_max_bytes: usize) -> Fitted<'a> {
    let mut cut = Vec::new();
    let key = key.map(|k| {
        if k.len() > MAX_KEY_BYTES {
            cut.push((KEY_TRUNCATED, k.len().to_string()));
            &k[..MAX_KEY_BYTES]
        } else {
            k
        }
    });
    let room = message_max_bytes.saturating_sub(OVERHEAD_BYTES + MAX_KEY_BYTES);
    let value = if value.len() > room {
        cut.push((TRUNCATED, value.len().to_string()));
        &value[..room]
    } else {
        value
    };
    Fitted { key, value, cut }
}

/// Why an input went to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// A short, stable name (`invalid_json`, `too_far_ahead`, …).
    pub kind: &'static str,
    pub message: String,
}

impl From<&DecodeError> for Reason {
    fn from(e: &DecodeError) -> Self {
        Reason::new(e.kind(), &e.to_string())
    }
}

impl Reason {
    /// A reason whose message is cut to `MAX_REASON_BYTES` (it may quote the input).
    pub fn new(kind: &'static str, message: &str) -> Self {
        Reason { kind, message: shorten(message, MAX_REASON_BYTES).into_owned() }
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

    #[test]
    fn a_dead_letter_always_fits_one_record() {
        let (key, value) = (vec![b'k'; 5000], vec![b'v'; 2_000_000]);
        for max in [1_000_000, 100_000, 20_000] {
            let f = fit(Some(&key), &value, max);
            assert_eq!(f.key.map(<[u8]>::len), Some(MAX_KEY_BYTES));
            assert!(f.value.len() + MAX_KEY_BYTES + OVERHEAD_BYTES <= max);
            assert_eq!(f.cut, [(KEY_TRUNCATED, "5000".to_string()), (TRUNCATED, "2000000".to_string())]);
        }
        let f = fit(Some(b"u1"), b"{}", DEFAULT_MESSAGE_MAX_BYTES);
        assert_eq!((f.key, f.value, f.cut.len()), (Some(&b"u1"[..]), &b"{}"[..], 0));
    }

    #[test]
    fn a_reason_quoting_a_huge_value_is_cut() {
        let line = format!(r#"{{"id":"r","ts":"2026-11-29T09:00:00Z","user_id":"u","tier":"free","request_type":"standard","cost":"{}"}}"#, "9".repeat(60_000));
        let err = decode_request(line.as_bytes()).unwrap_err();
        let r = Reason::from(&err);
        assert!(r.message.len() < MAX_REASON_BYTES + 32, "{} bytes", r.message.len());
        assert!(r.message.contains("cost"), "{}", r.message);
    }
}
