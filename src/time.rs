//! Event time: milliseconds since the Unix epoch, parsed from and written as RFC 3339 UTC.
//!
//! Every state machine takes time as an argument of this type; nothing below the shell reads a
//! clock. Parsing is RFC 3339 (an explicit offset is required; a space may stand for the `T`, as
//! RFC 3339 §5.6 allows); output is always UTC with
//! millisecond precision (`2026-11-29T13:47:00.123Z`), so a replay writes byte-identical text.
//! Finer input precision is truncated to the millisecond.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDateTime, Timelike};
use serde::{Serialize, Serializer};

/// Earliest accepted event time: 1970-01-01T00:00:00Z.
pub const MIN_MS: i64 = 0;
/// Latest accepted event time: 2100-01-01T00:00:00Z. (The limiter's window numbers wrap in `u32`
/// and only their differences are used, which stay small.)
pub const MAX_MS: i64 = 4_102_444_800_000;

/// A point in event time, in milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub i64);

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("`{0}` is not an RFC 3339 timestamp (expected e.g. 2026-11-29T13:47:00Z)")]
    NotRfc3339(String),
    #[error("`{0}` is outside the supported range 1970-01-01..2100-01-01")]
    OutOfRange(String),
}

impl Millis {
    pub const fn from_secs(s: i64) -> Self {
        Millis(s * 1000)
    }

    /// Parses a strict RFC 3339 timestamp with any offset and converts it to UTC.
    pub fn parse_rfc3339(text: &str) -> Result<Self, TimeError> {
        let parsed = DateTime::parse_from_rfc3339(text)
            .map_err(|_| TimeError::NotRfc3339(truncate(text)))?;
        let ms = parsed.timestamp_millis();
        if !(MIN_MS..MAX_MS).contains(&ms) {
            return Err(TimeError::OutOfRange(truncate(text)));
        }
        Ok(Millis(ms))
    }

    pub fn plus_ms(self, ms: i64) -> Self {
        Millis(self.0.saturating_add(ms))
    }

    /// Whole seconds from `self` until `later`, rounded up, never negative.
    pub fn secs_until_ceil(self, later: Millis) -> u64 {
        let d = later.0 - self.0;
        if d <= 0 { 0 } else { ((d + 999) / 1000) as u64 }
    }

    /// Writes the RFC 3339 UTC form with milliseconds into `out` (24 bytes).
    pub fn write_rfc3339(self, out: &mut [u8; 24]) {
        let secs = self.0.div_euclid(1000);
        let ms = self.0.rem_euclid(1000) as u32;
        let dt: NaiveDateTime = DateTime::from_timestamp(secs, 0)
            .map(|d| d.naive_utc())
            .unwrap_or_default();
        let year = dt.year().clamp(0, 9999) as u32;
        let fields = [
            (0, 4, year),
            (5, 2, dt.month()),
            (8, 2, dt.day()),
            (11, 2, dt.hour()),
            (14, 2, dt.minute()),
            (17, 2, dt.second()),
            (20, 3, ms),
        ];
        *out = *b"0000-00-00T00:00:00.000Z";
        for (at, width, mut value) in fields {
            for i in (0..width).rev() {
                out[at + i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 24];
        self.write_rfc3339(&mut buf);
        // The buffer holds only ASCII digits and punctuation.
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 24];
        self.write_rfc3339(&mut buf);
        s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_offsets_to_utc_and_formats_with_millis() {
        // RFC 3339 §5.6 allows a space for the `T`; chrono accepts it, so do we.
        assert!(Millis::parse_rfc3339("2026-11-29 13:47:00Z").is_ok());
        let t = Millis::parse_rfc3339("2026-11-29T14:47:00.1234+01:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-29T13:47:00.123Z");
        assert_eq!(Millis::parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), Millis(0));
    }

    #[test]
    fn refuses_non_rfc3339_and_out_of_range() {
        for bad in ["2026-11-29T13:47:00", "2026-11-29", "yesterday", "", "1969-12-31T23:59:59Z"] {
            assert!(Millis::parse_rfc3339(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Millis::parse_rfc3339("2100-01-01T00:00:00Z"),
            Err(TimeError::OutOfRange(_))
        ));
    }

    #[test]
    fn formatting_round_trips() {
        for ms in [0, 1, 999, 1_764_000_000_123, MAX_MS - 1] {
            let s = Millis(ms).to_string();
            assert_eq!(Millis::parse_rfc3339(&s).unwrap(), Millis(ms), "{s}");
        }
    }

    #[test]
    fn seconds_until_rounds_up() {
        assert_eq!(Millis(0).secs_until_ceil(Millis(1)), 1);
        assert_eq!(Millis(0).secs_until_ceil(Millis(1000)), 1);
        assert_eq!(Millis(5).secs_until_ceil(Millis(0)), 0);
    }
}
