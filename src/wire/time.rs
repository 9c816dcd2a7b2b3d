//! Event time: milliseconds since the Unix epoch, parsed from and written as RFC 3339 UTC.
//!
//! Every state machine takes time as an argument of this type; nothing below the shell reads a
//! clock. Parsing is RFC 3339 (an explicit offset is required; a space may stand for the `T`, as
//! RFC 3339 §5.6 allows); output is always UTC with
//! millisecond precision (`2026-11-29T13:47:00.123Z`), so a replay writes byte-identical text.
//! Finer input precision is truncated to the millisecond.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};
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
        let ms = match plain_utc_ms(text) {
            Some(ms) => ms,
            None => DateTime::parse_from_rfc3339(text).map_err(|_| TimeError::NotRfc3339(truncate(text)))?.timestamp_millis(),
        };
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
        let dt: NaiveDateTime = DateTime::from_timestamp(secs, 0).map(|d| d.naive_utc()).unwrap_or_default();
        let year = dt.year().clamp(0, 9999) as u32;
        let fields = [(0, 4, year), (5, 2, dt.month()), (8, 2, dt.day()), (11, 2, dt.hour()), (14, 2, dt.minute()), (17, 2, dt.second()), (20, 3, ms)];
        *out = *b"0000-00-00T00:00:00.000Z";
        for (at, width, mut value) in fields {
            for i in (0..width).rev() {
                out[at + i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
    }
}

/// The form surgeguard writes and most producers do, `YYYY-MM-DDTHH:MM:SS[.mmm]Z`, read without
/// the general parser. `None` for any other form, which the general parser then reads (it also
/// takes other offsets, other fraction lengths, a space or lowercase `t`, leap seconds).
fn plain_utc_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |from: usize, to: usize| b.get(from..to)?.iter().try_fold(0u32, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0')));
    let ms = match b.len() {
        20 => 0,
        24 if b[19] == b'.' => num(20, 23)?,
        _ => return None,
    };
    let punctuation = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (b.len() - 1, b'Z')];
    if punctuation.iter().any(|&(at, c)| b[at] != c) {
        return None;
    }
    let year = i32::try_from(num(0, 4)?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, num(5, 7)?, num(8, 10)?)?;
    let at = date.and_hms_milli_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?, ms)?;
    Some(at.and_utc().timestamp_millis())
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

/// Read back from RFC 3339 text (model files, reports).
impl<'de> serde::Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Millis::parse_rfc3339(&text).map_err(serde::de::Error::custom)
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
        assert!(matches!(Millis::parse_rfc3339("2100-01-01T00:00:00Z"), Err(TimeError::OutOfRange(_))));
    }

    #[test]
    fn formatting_round_trips() {
        for ms in [0, 1, 999, 1_764_000_000_123, MAX_MS - 1] {
            let s = Millis(ms).to_string();
            assert_eq!(Millis::parse_rfc3339(&s).unwrap(), Millis(ms), "{s}");
        }
    }

    #[test]
    fn plain_form_reads_as_the_general_parser_does() {
        let general = |t: &str| DateTime::parse_from_rfc3339(t).ok().map(|d| d.timestamp_millis());
        let mut ms = 0i64;
        while ms < MAX_MS {
            let text = Millis(ms).to_string();
            assert_eq!(plain_utc_ms(&text), general(&text), "{text}");
            let whole = &text.replace(&text[19..23], "");
            assert_eq!(plain_utc_ms(whole), general(whole), "{whole}");
            ms += 7_777_777_777;
        }
        for text in [
            "2024-02-29T23:59:59.999Z",
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-31T00:00:00Z",
            "2026-11-29T24:00:00Z",
            "2026-11-29T23:60:00Z",
            "2026-11-29T23:59:60Z",
            "2026-11-29T23:59:60.500Z",
            "2026-11-29T13:47:00.12Z",
            "2026-11-29t13:47:00Z",
            "2026-11-29T13:47:00z",
            "2026-11-29T13:47:0aZ",
            "2026-11-29T13:47:00+00:00",
            "+026-11-29T13:47:00Z",
            "2026-11-29T13:47:00.-12Z",
        ] {
            if let Some(ms) = plain_utc_ms(text) {
                assert_eq!(Some(ms), general(text), "{text}");
            }
            assert_eq!(Millis::parse_rfc3339(text).ok().map(|m| m.0), general(text).filter(|ms| (MIN_MS..MAX_MS).contains(ms)), "{text}");
        }
    }

    #[test]
    fn seconds_until_rounds_up() {
        assert_eq!(Millis(0).secs_until_ceil(Millis(1)), 1);
        assert_eq!(Millis(0).secs_until_ceil(Millis(1000)), 1);
        assert_eq!(Millis(5).secs_until_ceil(Millis(0)), 0);
    }
}
