//! The topology's time: which events may move it (`[event_time]`, `watermarks.rs`), and what
//! moving it fires (stale sources, breaker timers, closed minutes, ended overrides, idle users
//! swept per requests partition, predictor steps).

use crate::config::{EventTimeConfig, TooFarAhead};
use crate::core::topology::{Counted, Topology};
use crate::core::watermarks::{Admit, WatermarkConfig};
use crate::wire::events::{InputEvent, InputTopic};
use crate::wire::outputs::Output;
use crate::wire::time::Millis;

/// Where an event comes from: its input topic and partition (replay: partition 0).
pub type InputPartition = (InputTopic, i32);

/// An event refused because it is stamped too far ahead of the pipeline's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event time {ts} is {} s ahead of the pipeline's time ({reference}), more than event_time.max_future_skew_s allows", ahead_ms / 1000)]
pub struct TooFarAheadError {
    pub ts: Millis,
    pub ahead_ms: i64,
    pub reference: Millis,
}

impl TooFarAheadError {
    /// The DLQ's name for it.
    pub const KIND: &'static str = "too_far_ahead";
}

pub(super) fn watermark_config(c: &EventTimeConfig) -> WatermarkConfig {
    WatermarkConfig {
        // 0 turns the check off.
        max_future_skew_ms: if c.max_future_skew_s == 0 { i64::MAX } else { i64::from(c.max_future_skew_s) * 1000 },
        allowed_lateness_ms: i64::from(c.allowed_lateness_s) * 1000,
    }
}

impl Topology {
    /// What the caller knows time has reached besides the events: `run` sets the wall clock, so
    /// that an event far ahead of it is refused even before any other event came.
    pub fn set_time_floor(&mut self, floor: Millis) {
        self.time_floor = Some(floor);
    }

    /// Checks the time of an event from input partition `from` before it is processed
    /// (`watermarks.rs`), counting late and too-far-ahead events. `process_from` does this and
    /// the rest; replay calls it itself to hold a refused event until the next one says whether
    /// time really jumped.
    pub fn admit(&mut self, from: InputPartition, ts: Millis) -> Admit {
        let admit = self.inputs.admit(from, ts, self.watermark.max(self.time_floor));
        match admit {
            Admit::Late { .. } => self.counters.late += 1,
            Admit::TooFarAhead { .. } => self.counters.too_far_ahead += 1,
            Admit::OnTime | Admit::Jumped => {}
        }
        admit
    }

    /// What becomes of an event `admit` found too far ahead: refused (`event_time.too_far_ahead
    /// = "dead_letter"`), or restamped with the pipeline's time (`"clamp"`).
    pub fn too_far_ahead(&self, event: &mut InputEvent, ahead_ms: i64, reference: Millis) -> Result<(), TooFarAheadError> {
        match self.too_far_ahead {
            TooFarAhead::DeadLetter => Err(TooFarAheadError { ts: event.ts(), ahead_ms, reference }),
            TooFarAhead::Clamp => {
                event.set_ts(reference);
                Ok(())
            }
        }
    }

    /// Processes one event from input partition `from` (requests count in the limiter of its
    /// partition) once `admit` has taken its time: an event stamped more than
    /// `event_time.max_future_skew_s` ahead moves nothing and is refused (the caller
    /// dead-letters it) or processed at the pipeline's time; a late event is counted and
    /// processed.
    pub fn process_from(&mut self, from: InputPartition, mut event: InputEvent, counted: Counted, out: &mut Vec<Output>) -> Result<(), TooFarAheadError> {
        if let Admit::TooFarAhead { ahead_ms, reference } = self.admit(from, event.ts()) {
            self.too_far_ahead(&mut event, ahead_ms, reference)?;
        }
        self.process_in(from.1, event, counted, out);
        Ok(())
    }

    /// Requests partition `partition` is caught up: nothing buffered, nothing left to read. Until
    /// its next request its users are swept at the pipeline's time, not its own.
    pub fn requests_caught_up(&mut self, partition: i32) {
        self.inputs.set_idle((InputTopic::Requests, partition), true);
    }

    /// The watermark over the input partitions (their lowest event time), and how many there are.
    pub fn input_watermark(&self) -> (Option<Millis>, usize) {
        (self.inputs.watermark(), self.inputs.len())
    }

    /// Per input topic, how far its furthest-behind partition is behind the latest event time
    /// taken (ms): the event-time skew between inputs.
    pub fn input_skew(&self) -> [(InputTopic, Option<i64>); 4] {
        InputTopic::ALL.map(|t| (t, self.inputs.behind().filter(|((topic, _), _)| *topic == t).map(|(_, ms)| ms).max()))
    }

    /// Moves event time to `now` if it is later than the watermark, firing what is due.
    pub fn advance(&mut self, now: Millis, out: &mut Vec<Output>) {
        match self.watermark {
            None => {
                self.watermark = Some(now);
                let mut updates = Vec::new();
                self.limits.snapshot(now, "initial", &mut updates);
                self.limits.started(now);
                self.push_limits(updates, out);
                self.next_sweep = now.plus_ms(self.sweep_every_ms);
                // Starts the predictor (its seed applies up to here) unless it took over
                // another instance's counts.
                if self.predictor.as_ref().is_some_and(|p| p.next_close_at().is_none()) {
                    self.predict(now, None, out);
                }
            }
            Some(w) if now > w => {
                self.watermark = Some(now);
                if self.health.expire(now) {
                    self.health_changed(now, out);
                }
                let mut states = std::mem::take(&mut self.scratch_breakers);
                self.breakers.advance(now, &mut states);
                self.breaker_states(&mut states, out);
                self.scratch_breakers = states;
                let mut updates = Vec::new();
                self.limits.expire_overrides(now, &mut updates);
                self.push_limits(updates, out);
                if now >= self.next_sweep {
                    self.sweep_limiters(now);
                    self.next_sweep = now.plus_ms(self.sweep_every_ms);
                }
                self.fold_usage(false, out);
            }
            Some(_) => {}
        }
    }

    /// Forgets idle users. Each requests partition's limiter is swept at its own time when the
    /// input partitions are tracked (`process_from`): requests partitions do not wait for each
    /// other, and a partition read behind the others (a backlog, a partition just taken over)
    /// must not lose its users as idle at the others' time. One not read yet keeps its
    /// (restored) users until it is; one caught up (`requests_caught_up`) is swept at `now`.
    /// Without tracking (`process`), at `now`.
    fn sweep_limiters(&mut self, now: Millis) {
        let mut evicted = 0;
        for p in 0..self.limiters.len() {
            // Caught up (nothing left to read): not behind, so at the pipeline's time.
            let at = self.partition_through(p, now);
            if let (Some(at), Some(limiter)) = (at, self.limiters[p].as_mut()) {
                evicted += limiter.sweep(at);
            }
        }
        self.counters.evicted_users += evicted as u64;
    }
}
