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
//! the latest event time taken, or of what the caller knows (the wall clock in `run`), is refused ([`Admit::TooFarAhead`]); the caller dead-letters it or decides it at that
//! time. Real time can jump too (every input silent for longer than the skew, in a replay or a
//! test), and then the events after the silence go on from the new time: when the events right
//! after a refused one are as far ahead, within the skew of it, and one of them is stamped at
//! another time than the first, the jump is taken ([`Admit::Jumped`]); replay then processes the
//! events it held, a live shell has dead-lettered them. So one record alone never moves time, nor
//! do copies of one stamp (the same far-future event on every topic), and a silence costs the
//! events of the new time's first millisecond in `run` without the wall clock, none in replay.
//! An event more than `allowed_lateness_ms` behind the latest event time taken (Kafka Streams'
//! stream time) is [`Admit::Late`]: it is processed (its user's or dependency's state takes it at
//! its own time), counted, and never rewinds the pipeline's time. The watermark never goes back.
//!
//! Plain data, no clock: the shell says which partitions are idle and when partitions come and
//! go; replay drives the same type with one partition per input topic. (The topology's timers
//! still run on the latest event time; the watermark is kept for input alignment, issue 18.)

use std::collections::BTreeMap;

use crate::wire::time::Millis;

/// How far from the others' time one event may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkConfig {
    /// An event further ahead than this of its partition's time is refused.
    pub max_future_skew_ms: i64,
    /// An event further behind the latest event time taken than this is late.
    pub allowed_lateness_ms: i64,
}

/// What an event's time means for the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// In order, or behind by no more than the allowed lateness: process it at its own time
    /// (or at the watermark, if that is later).
    OnTime,
    /// Behind the latest event time taken by `behind_ms`, more than the allowed lateness:
    /// process it; the pipeline's time does not move back.
    Late { behind_ms: i64 },
    /// Ahead of `reference` (the latest event time taken, or the caller's floor) by `ahead_ms`, more than the allowed skew: time does not move; the caller
    /// refuses the event (or processes it at `reference`).
    TooFarAhead { ahead_ms: i64, reference: Millis },
    /// Too far ahead too, but so were the events just before it (on any partition), within the
    /// skew of this one and at another time: time really jumped (every input was silent for
    /// longer than the skew), and this event moves it. The events refused just before were
    /// real: a caller that held them processes them first.
    Jumped,
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
    /// The latest event time taken, on any partition.
    latest: Option<Millis>,
    /// The time of the first of the events refused in a row, if the last event was refused:
    /// the next ones confirm a jump or end it.
    jump: Option<Millis>,
}

impl<K: Ord + Copy> Watermarks<K> {
    pub fn new(cfg: WatermarkConfig) -> Self {
        Watermarks { cfg, partitions: BTreeMap::new(), watermark: None, latest: None, jump: None }
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
    /// to process it. It is too far ahead when it is ahead of the latest event time taken on any
    /// partition, or of `floor` (what else the caller knows time has reached: the wall clock),
    /// by more than the allowed skew; against its own partition's time alone, a sparse
    /// partition's next event would be refused after any pause.
    /// The watermark is read with [`Watermarks::watermark`] afterwards.
    pub fn admit(&mut self, k: K, ts: Millis, floor: Option<Millis>) -> Admit {
        let skew = self.cfg.max_future_skew_ms;
        let part = self.partitions.entry(k).or_default();
        part.idle = false;
        let jump = self.jump.take();
        if let Some(reference) = self.latest.max(floor) {
            let ahead_ms = ts.0.saturating_sub(reference.0);
            if ahead_ms > skew {
                match jump {
                    Some(first) if ts != first && ts.0.abs_diff(first.0) <= skew.unsigned_abs() => {
                        part.time = Some(ts);
                        self.latest = Some(ts);
                        self.advance();
                        return Admit::Jumped;
                    }
                    // The same stamp again: still one time, not a jump yet.
                    Some(first) if ts == first => self.jump = Some(first),
                    _ => self.jump = Some(ts),
                }
                return Admit::TooFarAhead { ahead_ms, reference };
            }
        }
        let verdict = match self.latest {
            Some(w) if w.0.saturating_sub(ts.0) > self.cfg.allowed_lateness_ms => Admit::Late { behind_ms: w.0 - ts.0 },
            _ => Admit::OnTime,
        };
        // A late event is still its partition's progress (a partition read behind the others
        // moves on); only the pipeline's time never goes back.
        part.time = Some(part.time.map_or(ts, |t| t.max(ts)));
        self.latest = self.latest.max(Some(ts));
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

    /// Whether partition `k` is marked idle (`set_idle`) since its last event.
    pub fn is_idle(&self, k: K) -> bool {
        self.partitions.get(&k).is_some_and(|p| p.idle)
    }

    /// The time of partition `k`, once it has admitted an event.
    pub fn partition_time(&self, k: K) -> Option<Millis> {
        self.partitions.get(&k).and_then(|p| p.time)
    }

    /// How far each partition with a time is behind the latest event time taken (for the gauge).
    pub fn behind(&self) -> impl Iterator<Item = (K, i64)> + '_ {
        let latest = self.latest;
        self.partitions.iter().filter_map(move |(k, p)| Some((*k, latest?.0.saturating_sub(p.time?.0))))
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
        assert_eq!(w.admit(0, Millis(5 * MIN), None), Admit::OnTime);
        // Partition 1 has nothing yet: time waits for it.
        assert_eq!(w.watermark(), None);
        // Three minutes behind the latest event: late, and still partition 1's time.
        assert_eq!(w.admit(1, Millis(2 * MIN), None), Admit::Late { behind_ms: 3 * MIN });
        assert_eq!(w.watermark(), Some(Millis(2 * MIN)));
        assert_eq!(w.admit(1, Millis(7 * MIN), None), Admit::OnTime);
        assert_eq!(w.watermark(), Some(Millis(5 * MIN)));
    }

    #[test]
    fn an_idle_partition_is_excused_until_its_next_record() {
        let mut w = marks();
        w.assign(0);
        w.assign(1);
        w.admit(0, Millis(3 * MIN), None);
        assert_eq!(w.set_idle(1, true), Some(Millis(3 * MIN)));
        w.admit(0, Millis(4 * MIN), None);
        assert_eq!(w.watermark(), Some(Millis(4 * MIN)));
        // Back with an older record: it counts again but the watermark does not go back.
        assert_eq!(w.admit(1, Millis(4 * MIN - 1_000), None), Admit::OnTime);
        assert_eq!(w.watermark(), Some(Millis(4 * MIN)));
        w.admit(0, Millis(6 * MIN), None);
        assert_eq!(w.watermark(), Some(Millis(4 * MIN)), "partition 1 holds it at its own time");
    }

    #[test]
    fn one_far_future_event_does_not_move_time() {
        let mut w = marks();
        w.admit(0, Millis(MIN), None);
        let year_2099 = Millis(4_102_444_799_000);
        assert_eq!(w.admit(0, year_2099, None), Admit::TooFarAhead { ahead_ms: year_2099.0 - MIN, reference: Millis(MIN) });
        assert_eq!(w.partition_time(0), Some(Millis(MIN)));
        assert_eq!(w.watermark(), Some(Millis(MIN)));
        // A new partition's first event is held against the watermark.
        assert!(matches!(w.admit(1, year_2099, None), Admit::TooFarAhead { .. }));
        assert_eq!(w.partition_time(1), None);
        // Within the skew it is taken.
        assert_eq!(w.admit(0, Millis(9 * MIN), None), Admit::OnTime);
    }

    #[test]
    fn a_sparse_partition_is_held_against_the_others_time_and_the_floor() {
        let mut w = marks();
        w.admit(0, Millis(MIN), None);
        w.admit(1, Millis(MIN), None);
        w.set_idle(0, true);
        for m in 1..=6 {
            assert_eq!(w.admit(1, Millis(m * 10 * MIN), None), Admit::OnTime);
        }
        // Partition 0 was silent for an hour: its next event is as far from the pipeline's
        // time as from its own, and taken.
        assert_eq!(w.admit(0, Millis(61 * MIN), None), Admit::OnTime);
        // The caller's floor counts too: nothing known yet, but the wall clock is at 100 min.
        let mut fresh = marks();
        assert_eq!(fresh.admit(0, Millis(100 * MIN), Some(Millis(100 * MIN))), Admit::OnTime);
        assert_eq!(fresh.admit(1, Millis(200 * MIN), Some(Millis(100 * MIN))), Admit::TooFarAhead { ahead_ms: 100 * MIN, reference: Millis(100 * MIN) });
    }

    #[test]
    fn a_jump_confirmed_by_the_next_event_is_taken() {
        let mut w = marks();
        w.admit(0, Millis(MIN), None);
        w.admit(1, Millis(MIN), None);
        // Everything silent for two hours: the first events after it are refused, the same
        // stamp on two partitions too…
        assert!(matches!(w.admit(1, Millis(121 * MIN), None), Admit::TooFarAhead { .. }));
        assert!(matches!(w.admit(0, Millis(121 * MIN), None), Admit::TooFarAhead { .. }));
        // …and the next one, on any partition, near them at another time, confirms the jump.
        assert_eq!(w.admit(0, Millis(122 * MIN), None), Admit::Jumped);
        assert_eq!(w.partition_time(0), Some(Millis(122 * MIN)));
        assert_eq!(w.admit(1, Millis(122 * MIN), None), Admit::OnTime);
        assert_eq!(w.watermark(), Some(Millis(122 * MIN)));
        // A far-future event, even on every partition, followed by one in the present: no jump.
        let year_2099 = Millis(4_102_444_799_000);
        assert!(matches!(w.admit(0, year_2099, None), Admit::TooFarAhead { .. }));
        assert!(matches!(w.admit(1, year_2099, None), Admit::TooFarAhead { .. }));
        assert_eq!(w.admit(1, Millis(123 * MIN), None), Admit::OnTime);
        assert!(matches!(w.admit(0, year_2099, None), Admit::TooFarAhead { .. }), "the refused event is forgotten, not a candidate any more");
        // Two far-future events far apart from each other confirm nothing.
        assert!(matches!(w.admit(0, Millis(year_2099.0 + 60 * MIN), None), Admit::TooFarAhead { .. }));
        assert_eq!((w.partition_time(0), w.watermark()), (Some(Millis(122 * MIN)), Some(Millis(122 * MIN))));
    }

    #[test]
    fn a_late_event_is_counted_and_rewinds_nothing() {
        let mut w = marks();
        w.admit(0, Millis(10 * MIN), None);
        assert_eq!(w.admit(0, Millis(10 * MIN - 30_000), None), Admit::OnTime, "within the allowed lateness");
        assert_eq!(w.admit(0, Millis(5 * MIN), None), Admit::Late { behind_ms: 5 * MIN });
        assert_eq!(w.partition_time(0), Some(Millis(10 * MIN)));
        assert_eq!(w.watermark(), Some(Millis(10 * MIN)));
    }

    #[test]
    fn revoking_the_slowest_partition_lets_time_go_on() {
        let mut w = marks();
        w.admit(0, Millis(2 * MIN), None);
        w.admit(1, Millis(8 * MIN), None);
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
            let mut refused = false;
            for op in ops {
                match op {
                    Op::Admit(k, t) => {
                        let before = (w.partition_time(k), w.watermark());
                        match w.admit(k, Millis(t), None) {
                            Admit::TooFarAhead { ahead_ms, .. } => {
                                proptest::prop_assert!(ahead_ms > 10 * MIN);
                                proptest::prop_assert_eq!(before, (w.partition_time(k), w.watermark()));
                                refused = true;
                                continue;
                            }
                            Admit::Jumped => proptest::prop_assert!(refused, "a jump needs a refused event just before"),
                            _ => {}
                        }
                        refused = false;
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
