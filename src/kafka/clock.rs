//! The one place the wall clock is read into event time's unit. Decisions never read it; the
//! shell does, to move an idle pipeline's event time on, to pick the control topics' lookback,
//! and to time the benchmark's records.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::wire::time::Millis;

/// Now, by the wall clock (0 before 1970).
pub fn wall_clock() -> Millis {
    Millis(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64))
}
