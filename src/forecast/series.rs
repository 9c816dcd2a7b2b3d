//! A demand series: counts per fixed time bucket, and the durations (`5m`, `1h`) that name a
//! bucket or a horizon. Pure: the history layer fills it, the models read it.

use crate::wire::time::Millis;

/// A duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resolution {0:?}: expected a positive number and a unit, such as 30s, 5m, 1h or 1d")]
pub struct BadResolution(pub String);

/// Counts per bucket from `start`, every `step_ms`, with no gaps.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub start: Millis,
    pub step_ms: i64,
    pub values: Vec<f64>,
}

impl Series {
    pub fn time_of(&self, i: usize) -> Millis {
        Millis(self.start.0 + i as i64 * self.step_ms)
    }
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `1d` into milliseconds.
pub fn parse_resolution(s: &str) -> Result<i64, BadResolution> {
    let bad = || BadResolution(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = t.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    match n.checked_mul(unit_ms) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_resolution("5m").expect("5m"), 300_000);
        assert_eq!(parse_resolution("1h").expect("1h"), 3_600_000);
        assert_eq!(parse_resolution("30s").expect("30s"), 30_000);
        assert_eq!(parse_resolution("1d").expect("1d"), 86_400_000);
        assert_eq!(parse_resolution("250ms").expect("250ms"), 250);
        for bad in ["", "5", "m", "0m", "-5m", "5 weeks", "99999999999999999d"] {
            assert!(parse_resolution(bad).is_err(), "{bad:?} accepted");
        }
    }
}
