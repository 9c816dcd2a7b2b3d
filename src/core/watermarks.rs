//! The pipeline's event time, from the event times of its input partitions (issue 18).
//!
//! Each input partition has its own time: the highest event time read from it. The pipeline's
//! time, the *watermark*, is the lowest of them, as Kafka Streams' stream time is for a task
//! and Flink's watermark is for an operator with several inputs: a partition that lags (a
//! backlog of telemetry behind the requests) holds it back, so nothing is decided in a future
//! the slow input has not reached. A partition with nothing to read is excused once the shell
//! has seen it idle for its wait (`set_idle`), as Kafka Streams' `max.task.idle.ms` and Flink's
//! idle sources do; it counts again with its next record.
//!
//! One record cannot move time far: an event stamped more than `max_future_skew_ms` ahead of
//! its partition's time (or of the watermark, for a partition that has none yet) is refused
//! ([`Admit::TooFarAhead`]); the caller dead-letters it or decides it at the partition's time.
//! An event more than `allowed_lateness_ms` behind the watermark is [`Admit::Late`]: it is
//! processed at the watermark, never rewinding any state. The watermark never goes back.
//!
//! Plain data, no clock: the shell says which partitions are idle and when partitions come and
//! go; replay drives the same type with one partition per input file.

use std::collections::BTreeMap;

use crate::wire::time::Millis;

/// How far from the others' time one event may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkConfig {
    /// An event further ahead than this of its partition's time is refused.
    pub max_future_skew_ms: i64,
    /// An event further behind the watermark than this is late.
    pub allowed_lateness_ms: i64,
}

/// What an event's time means for the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// In order, or behind by no more than the allowed lateness: process it at its own time
    /// (or at the watermark, if that is later).
    OnTime,
    /// Behind the watermark by `behind_ms`, more than the allowed lateness: process it at the
    /// watermark; its partition's time does not move.
    Late { behind_ms: i64 },
    /// Ahead of `reference` (its partition's time, else the watermark) by `ahead_ms`, more than
    /// the allowed skew: time does not move; the caller refuses the event.
    TooFarAhead { ahead_ms: i64, reference: Millis },
}

#[derive(Debug, Clone, Copy, Default)]
struct Partition {
    /// The highest admitted event time, once one is.
    time: Option<Millis>,
    /// Excused from the watermark until its next record.
    idle: bool,
}

/// The event time of every assigned input partition, and the watermark over them.
#[derive(Debug, Clone)]
pub struct Watermarks<K: Ord + Copy> {
    cfg: WatermarkConfig,
    partitions: BTreeMap<K, Partition>,
    watermark: Option<Millis>,
}

impl<K: Ord + Copy> Watermarks<K> {
    pub fn new(cfg: WatermarkConfig) -> Self {
        Watermarks { cfg, partitions: BTreeMap::new(), watermark: None }
    }

    /// A partition is read from now on. Until it has a record, or is idle, it holds the
    /// watermark where it is. Assigning a known partition changes nothing.
    pub fn assign(&mut self, k: K) {
        self.partitions.entry(k).or_default();
    }

    /// A partition is no longer read (revoked, or its input ended): it stops holding the
    /// watermark back. Returns the new watermark.
    pub fn revoke(&mut self, k: K) -> Option<Millis> {
        self.partitions.remove(&k);
        self.advance()
    }

    /// Takes an event of partition `k` stamped `ts` (assigning `k` if it is new) and says how
    /// to process it. The watermark is read with [`Watermarks::watermark`] afterwards.
    pub fn admit(&mut self, k: K, ts: Millis) -> Admit {
        let watermark = self.watermark;
        let part = self.partitions.entry(k).or_default();
        part.idle = false;
        if let Some(reference) = part.time.or(watermark) {
            let ahead_ms = ts.0.saturating_sub(reference.0);
            if ahead_ms > self.cfg.max_future_skew_ms {
                return Admit::TooFarAhead { ahead_ms, reference };
            }
        }
        let verdict = match watermark {
            Some(w) if w.0.saturating_sub(ts.0) > self.cfg.allowed_lateness_ms => Admit::Late { behind_ms: w.0 - ts.0 },
            _ => Admit::OnTime,
        };
        if verdict == Admit::OnTime {
            part.time = Some(part.time.map_or(ts, |t| t.max(ts)));
        }
        self.advance();
        verdict
    }

    /// The shell found nothing to read on `k` for its idle wait (`idle`), or it has records
    /// again. Returns the new watermark.
    pub fn set_idle(&mut self, k: K, idle: bool) -> Option<Millis> {
        if let Some(part) = self.partitions.get_mut(&k) {
            part.idle = idle;
        }
        self.advance()
    }

    /// The pipeline's event time: the lowest time of the partitions that count, never lower
    /// than before. `None` until every partition that counts has a time.
    pub fn watermark(&self) -> Option<Millis> {
        self.watermark
    }

    /// The time of partition `k`, once it has admitted an event.
    pub fn partition_time(&self, k: K) -> Option<Millis> {
        self.partitions.get(&k).and_then(|p| p.time)
    }

    /// Whether partition `k` holds the watermark back: it counts (assigned, not idle) and its
    /// time is behind `at` or it has none yet. The shell waits on these before deciding at `at`.
    pub fn holds_back(&self, k: K, at: Millis) -> bool {
        self.partitions.get(&k).is_some_and(|p| !p.idle && p.time.is_none_or(|t| t < at))
    }

    /// How many partitions are assigned (for the gauge).
    pub fn len(&self) -> usize {
        self.partitions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    fn advance(&mut self) -> Option<Millis> {
        let mut counting = self.partitions.values().filter(|p| !p.idle).peekable();
        if counting.peek().is_none() {
            // Every partition idle (or none assigned): time stays where it is.
            return self.watermark;
        }
        let mut lowest: Option<Millis> = None;
        for p in counting {
            match p.time {
                // A partition that counts and has no time yet holds the watermark where it is.
                None => return self.watermark,
                Some(t) => lowest = Some(lowest.map_or(t, |l| l.min(t))),
            }
        }
        if let Some(l) = lowest
            && self.watermark.is_none_or(|w| l > w)
        {
            self.watermark = Some(l);
        }
        self.watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn marks() -> Watermarks<u8> {
        Watermarks::new(WatermarkConfig { max_future_skew_ms: 10 * MIN, allowed_lateness_ms: MIN })
    }

    #[test]
    fn the_watermark_is_the_lowest_partition_time() {
        let mut w = marks();
        w.assign(0);
        w.assign(1);
        assert_eq!(w.admit(0, Millis(5 * MIN)), Admit::OnTime);
        // Partition 1 has nothing yet: time waits for it.
        assert_eq!(w.watermark(), None);
        assert!(w.holds_back(1, Millis(5 * MIN)));
        assert_eq!(w.admit(1, Millis(2 * MIN)), Admit::OnTime);
        assert_eq!(w.watermark(), Some(Millis(2 * MIN)));
        assert_eq!(w.admit(1, Millis(7 * MIN)), Admit::OnTime);
        assert_eq!(w.watermark(), Some(Millis(5 * MIN)));
        assert!(!w.holds_back(1, Millis(5 * MIN)));
    }

    #[test]
    fn an_idle_partition_is_excused_until_its_next_record() {
        let mut w = marks();
        w.assign(0);
        w.assign(1);
        w.admit(0, Millis(3 * MIN));
        assert_eq!(w.set_idle(1, true), Some(Millis(3 * MIN)));
        assert!(!w.holds_back(1, Millis(3 * MIN)));
        w.admit(0, Millis(4 * MIN));
        assert_eq!(w.watermark(), Some(Millis(4 * MIN)));
        // Back with an older record: it counts again but the watermark does not go back.
        assert_eq!(w.admit(1, Millis(4 * MIN - 1_000)), Admit::OnTime);
        assert_eq!(w.watermark(), Some(Millis(4 * MIN)));
        w.admit(0, Millis(6 * MIN));
        assert_eq!(w.watermark(), Some(Millis(4 * MIN)), "partition 1 holds it at its own time");
    }

    #[test]
    fn one_far_future_event_does_not_move_time() {
        let mut w = marks();
        w.admit(0, Millis(MIN));
        let year_2099 = Millis(4_102_444_799_000);
        assert_eq!(w.admit(0, year_2099), Admit::TooFarAhead { ahead_ms: year_2099.0 - MIN, reference: Millis(MIN) });
        assert_eq!(w.partition_time(0), Some(Millis(MIN)));
        assert_eq!(w.watermark(), Some(Millis(MIN)));
        // A new partition's first event is held against the watermark.
        assert!(matches!(w.admit(1, year_2099), Admit::TooFarAhead { .. }));
        assert_eq!(w.partition_time(1), None);
        // Within the skew it is taken.
        assert_eq!(w.admit(0, Millis(9 * MIN)), Admit::OnTime);
    }

    #[test]
    fn a_late_event_is_counted_and_rewinds_nothing() {
        let mut w = marks();
        w.admit(0, Millis(10 * MIN));
        assert_eq!(w.admit(0, Millis(10 * MIN - 30_000)), Admit::OnTime, "within the allowed lateness");
        assert_eq!(w.admit(0, Millis(5 * MIN)), Admit::Late { behind_ms: 5 * MIN });
        assert_eq!(w.partition_time(0), Some(Millis(10 * MIN)));
        assert_eq!(w.watermark(), Some(Millis(10 * MIN)));
    }

    #[test]
    fn revoking_the_slowest_partition_lets_time_go_on() {
        let mut w = marks();
        w.admit(0, Millis(2 * MIN));
        w.admit(1, Millis(8 * MIN));
        assert_eq!(w.watermark(), Some(Millis(2 * MIN)));
        assert_eq!(w.revoke(0), Some(Millis(8 * MIN)));
        assert_eq!(w.len(), 1);
        // Every partition idle: time stays.
        assert_eq!(w.set_idle(1, true), Some(Millis(8 * MIN)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(u8, i64),
        Idle(u8),
        Revoke(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (0u8..4, 0i64..(60 * MIN)).prop_map(|(k, t)| Op::Admit(k, t)),
            1 => (0u8..4, 0i64..(20 * 365 * 24 * 60 * MIN)).prop_map(|(k, t)| Op::Admit(k, t)),
            1 => (0u8..4).prop_map(Op::Idle),
            1 => (0u8..4).prop_map(Op::Revoke),
        ]
    }

    proptest::proptest! {
        /// Whatever arrives, the watermark never goes back, and a refused event moves nothing.
        #[test]
        fn time_never_goes_back_and_a_refused_event_moves_nothing(ops in proptest::collection::vec(op(), 1..200)) {
            let mut w = marks();
            let mut last = None;
            for op in ops {
                match op {
                    Op::Admit(k, t) => {
                        let before = (w.partition_time(k), w.watermark());
                        if let Admit::TooFarAhead { ahead_ms, .. } = w.admit(k, Millis(t)) {
                            proptest::prop_assert!(ahead_ms > 10 * MIN);
                            proptest::prop_assert_eq!(before, (w.partition_time(k), w.watermark()));
                        }
                    }
                    Op::Idle(k) => {
                        w.set_idle(k, true);
                    }
                    Op::Revoke(k) => {
                        w.revoke(k);
                    }
                }
                let now = w.watermark();
                proptest::prop_assert!(now >= last, "went back from {:?} to {:?}", last, now);
                last = now;
            }
        }
    }
}
