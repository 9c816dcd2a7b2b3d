//! How large an input may be, checked by the decoder before anything keeps a byte of it: the
//! whole record, and each text field that becomes a key of some table (users, breakers, health
//! sources) or is copied into an output. An input over a limit is refused like any other bad
//! input (`DecodeError::TooLarge`: the DLQ, a 400, a skipped replay line), so no output record
//! built from an accepted input can outgrow the producer's `message.max.bytes`.

use serde::Deserialize;

/// The limits, in bytes of UTF-8 (`[limits]` in the pipeline file).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields, default)]
pub struct InputLimits {
    /// A whole input record (a Kafka message's value, a replay line, an HTTP body besides
    /// `api.max_body_bytes`). Checked before it is parsed.
    pub record_bytes: u32,
    /// A request's `id` and an outcome's `request_id`.
    pub id_bytes: u32,
    /// A request's `user_id`.
    pub user_id_bytes: u32,
    /// Names: a request's `tier` and `request_type`, an outcome's or admin action's
    /// `dependency`, a telemetry `source`, an admin action's `key`.
    pub name_bytes: u32,
    /// Free text copied into outputs: an admin action's `actor`.
    pub text_bytes: u32,
}

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits { record_bytes: 65_536, id_bytes: 256, user_id_bytes: 256, name_bytes: 128, text_bytes: 256 }
    }
}

impl InputLimits {
    /// The defaults, as a constant for callers without a configuration (tests, tools).
    pub const DEFAULT: InputLimits = InputLimits { record_bytes: 65_536, id_bytes: 256, user_id_bytes: 256, name_bytes: 128, text_bytes: 256 };

    /// The largest value each key may take (a record must still fit a Kafka message and every
    /// field a record).
    pub const MAX_RECORD_BYTES: u32 = 1_000_000;
}

/// The most of a reason text (an error message quoting the input) that is kept: error texts go
/// into DLQ headers, logs and HTTP problems, and must not carry a whole oversized value.
pub const MAX_REASON_BYTES: usize = 256;

/// `text` cut to at most `max` bytes at a character boundary, with `…` when cut.
pub fn shorten(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constant_is_the_default() {
        assert_eq!(InputLimits::DEFAULT, InputLimits::default());
    }

    #[test]
    fn shorten_cuts_at_a_character_boundary() {
        assert_eq!(shorten("abc", 3), "abc");
        assert_eq!(shorten("abcd", 3), "abc… (4 bytes)");
        // `é` is two bytes: a cut in its middle keeps the byte before it.
        assert_eq!(shorten("aébc", 2), "a… (5 bytes)");
    }
}
