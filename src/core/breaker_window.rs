//! The breaker's time-based sliding window: one bucket per second of event time, holding calls,
//! failures, slow calls and the summed failure weight (in thousandths, so sums are exact and
//! order-independent).

use crate::wire::time::Millis;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
    /// Failure weight × 1000.
    pub weight_milli: u64,
}

impl Counts {
    pub fn add(&mut self, other: Counts) {
        self.calls = self.calls.saturating_add(other.calls);
        self.failures = self.failures.saturating_add(other.failures);
        self.slow = self.slow.saturating_add(other.slow);
        self.weight_milli = self.weight_milli.saturating_add(other.weight_milli);
    }

    pub fn failure_rate(&self) -> f64 {
        if self.calls == 0 { 0.0 } else { f64::from(self.failures) / f64::from(self.calls) }
    }

    pub fn slow_call_rate(&self) -> f64 {
        if self.calls == 0 { 0.0 } else { f64::from(self.slow) / f64::from(self.calls) }
    }

    pub fn weight(&self) -> f64 {
        self.weight_milli as f64 / 1000.0
    }
}

#[derive(Debug, Clone)]
pub struct OutcomeWindow {
    buckets: Vec<Counts>,
    /// Second (since the epoch) of the newest bucket.
    head: i64,
}

impl OutcomeWindow {
    pub fn new(window_s: u32) -> Self {
        OutcomeWindow { buckets: vec![Counts::default(); window_s.max(1) as usize], head: i64::MIN }
    }

    fn advance(&mut self, now: Millis) -> usize {
        let sec = now.0.div_euclid(1000);
        let n = self.buckets.len() as i64;
        if self.head == i64::MIN || sec - self.head >= n {
            self.buckets.iter_mut().for_each(|b| *b = Counts::default());
            self.head = sec;
        } else if sec > self.head {
            for s in self.head + 1..=sec {
                self.buckets[s.rem_euclid(n) as usize] = Counts::default();
            }
            self.head = sec;
        }
        // Late outcomes are counted in the newest bucket.
        self.head.rem_euclid(n) as usize
    }

    pub fn record(&mut self, now: Millis, c: Counts) {
        let i = self.advance(now);
        self.buckets[i].add(c);
    }

    /// Totals over the window ending at `now`.
    pub fn totals(&mut self, now: Millis) -> Counts {
        self.advance(now);
        let mut t = Counts::default();
        for b in &self.buckets {
            t.add(*b);
        }
        t
    }

    pub fn clear(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = Counts::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(weight_milli: u64) -> Counts {
        Counts { calls: 1, failures: u32::from(weight_milli > 0), slow: 0, weight_milli }
    }

    #[test]
    fn counts_slide_out_after_the_window() {
        let mut w = OutcomeWindow::new(10);
        w.record(Millis(0), one(2000));
        w.record(Millis(5_500), one(1500));
        assert_eq!(w.totals(Millis(9_999)).weight_milli, 3500);
        assert_eq!(w.totals(Millis(10_000)).weight_milli, 1500);
        assert_eq!(w.totals(Millis(15_999)).weight_milli, 0);
        assert_eq!(w.totals(Millis(100_000)).calls, 0);
    }

    #[test]
    fn late_outcomes_land_in_the_newest_bucket() {
        let mut w = OutcomeWindow::new(10);
        w.record(Millis(20_000), one(1000));
        w.record(Millis(1_000), one(1000));
        assert_eq!(w.totals(Millis(20_000)).calls, 2);
        assert_eq!(w.totals(Millis(30_000)).calls, 0);
    }
}
