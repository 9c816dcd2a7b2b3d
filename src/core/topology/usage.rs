//! The topology's global views: each decision counted into its requests partition's usage cell
//! (`core/usage.rs`), and the fold of every partition's cells (this instance's and, live, the
//! others' records from `surgeguard.usage`) driving the monitor's minutes and the predictor's
//! steps. Replay, the demo and one instance owning every partition take the same path: a
//! minute's totals, alerts and forecasts do not depend on who decided which partition.

use crate::core::monitor::MonitorState;
use crate::core::predictor::{Predictor, PredictorState};
use crate::core::topology::Topology;
use crate::core::usage::{self, Closed, PartitionUsage, UsageRecord};
use crate::wire::events::InputTopic;
use crate::wire::outputs::{Decision, Output};
use crate::wire::time::Millis;

/// The global views' state at a fold position: what the leader publishes (key `views` in the
/// usage topic) so that a new instance goes on from it instead of from its history alone.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Views {
    pub closed_to: Millis,
    pub predictor: Option<PredictorState>,
    pub monitor: MonitorState,
}

impl Topology {
    /// The global views' state now (none before the fold closed anything).
    pub fn views(&self) -> Option<Views> {
        Some(Views { closed_to: self.fold.closed_to()?, predictor: self.predictor.as_ref().map(Predictor::state), monitor: self.monitor.state() })
    }

    /// Takes over the leader's views before this instance's fold has closed anything: its fold
    /// goes on from their position, its predictor and monitor from their state. False when it
    /// is too late (or the predictor's scope or step differ: it keeps its own).
    pub fn take_over_views(&mut self, v: &Views) -> bool {
        if self.fold.closed_to().is_some() {
            return false;
        }
        self.fold.start_at(v.closed_to);
        let predictor = match (self.predictor.as_mut(), v.predictor.as_ref()) {
            (Some(p), Some(s)) => p.take_over(s),
            _ => true,
        };
        self.monitor.take_over(&v.monitor);
        predictor
    }

    fn usage_of(&mut self, partition: i32) -> &mut PartitionUsage {
        let i = usize::try_from(partition).unwrap_or(0);
        if self.usage.len() <= i {
            self.usage.resize_with(i + 1, || None);
        }
        let cell_ms = self.fold.cell_ms();
        if self.usage[i].is_none() {
            // A partition taken over without a changelog record of its usage: from the former
            // owner's last published record, if this instance read one.
            let start = self.fold.take_foreign(partition).map_or_else(PartitionUsage::new, |r| PartitionUsage::restored(&r, cell_ms));
            self.usage[i] = Some(start);
        }
        self.usage[i].get_or_insert_with(PartitionUsage::new)
    }

    /// Counts a decision in its partition's usage; a streamed request (`moves`) moves the
    /// partition's time, an API decision does not.
    pub(super) fn count_usage(&mut self, partition: i32, moves: bool, d: &Decision, grace_used: Option<f64>) {
        let (cell_ms, lateness_ms) = (self.fold.cell_ms(), self.fold.lateness_ms());
        let u = self.usage_of(partition);
        if moves {
            u.reach(d.ts);
        }
        u.count(d.ts, cell_ms, lateness_ms, d, grace_used);
    }

    /// Where requests partition `p` has got: its own time, or `now` when it has nothing left
    /// to read (or the input partitions are not tracked).
    pub(super) fn partition_through(&self, p: usize, now: Millis) -> Option<Millis> {
        let tracked = !self.inputs.is_empty();
        match i32::try_from(p).map(|p| (InputTopic::Requests, p)) {
            Ok(k) if tracked && self.inputs.is_idle(k) => Some(now),
            Ok(k) if tracked => self.inputs.partition_time(k).map(|t| t.min(now)),
            _ => Some(now),
        }
    }

    /// Moves the owned partitions' usage to where they have got.
    fn reach_usage(&mut self) {
        let Some(now) = self.watermark else { return };
        for p in 0..self.usage.len() {
            if self.usage[p].is_none() {
                continue;
            }
            if let (Some(t), Some(u)) = (self.partition_through(p, now), self.usage[p].as_mut()) {
                u.reach(t);
            }
        }
    }

    /// Closes the usage cells every partition is past and gives them to the monitor and the
    /// predictor, in event-time order. `force` skips the check that time moved far enough.
    pub(super) fn fold_usage(&mut self, force: bool, out: &mut Vec<Output>) {
        if !force && (self.watermark.is_none_or(|w| w < self.fold.next_close_at()) || self.fold.blocked_by_foreign()) {
            return;
        }
        self.reach_usage();
        let mut closed = std::mem::take(&mut self.scratch_closed);
        let local: Vec<(i32, Option<Millis>, &PartitionUsage)> =
            self.usage.iter().enumerate().filter_map(|(p, u)| u.as_ref().map(|u| (p as i32, u.through(), u))).collect();
        let upto = self.fold.close(&local, &mut closed);
        self.take_closed(&mut closed, upto, out);
        self.scratch_closed = closed;
    }

    /// The closed cells and the fold's new time go to the monitor and the predictor.
    fn take_closed(&mut self, closed: &mut Vec<Closed>, upto: Option<Millis>, out: &mut Vec<Output>) {
        let mut alerts = Vec::new();
        let mut made = Vec::new();
        for c in closed.drain(..) {
            self.monitor.advance(c.start, &mut alerts);
            self.monitor.on_usage(c.start, &c.total);
            self.push_alerts(std::mem::take(&mut alerts), &mut made);
            self.predict_due(c.start, &mut made);
            self.predict(c.start, Some(c.total.decisions as f64), &mut made);
            self.fold_output(c.start, &mut made, out);
        }
        if let Some(upto) = upto {
            self.monitor.advance(upto, &mut alerts);
            self.push_alerts(alerts, &mut made);
            self.predict_due(upto, &mut made);
            self.fold_output(upto, &mut made, out);
            let from = upto.0.div_euclid(self.fold.cell_ms());
            let published_only = self.publishes_usage;
            for u in self.usage.iter_mut().flatten() {
                u.forget_before(from, published_only);
            }
        }
    }

    /// Closes the predictor's steps that the fold, having closed every cell before `at`, has
    /// completed. Each closes at its own time, from the cells alone: the first fold position
    /// (a cell boundary) at or after both the step's end and its due time less the fold's
    /// lateness, plus that lateness (the earliest pipeline time at which a fold could be
    /// there). Never the time a fold happened to get there, which depends on when the other
    /// instances' records came: so forecasts and cuts are stamped alike by one instance or
    /// several, and in replay the event that closes the cell comes at or after the stamp (and
    /// is decided under what the step changed).
    fn predict_due(&mut self, at: Millis, out: &mut Vec<Output>) {
        let (cell_ms, lateness_ms) = (self.fold.cell_ms(), self.fold.lateness_ms());
        while let Some((end, due)) = self.predictor.as_ref().and_then(Predictor::next_close_at) {
            let (from, stamp) = usage::step_close(end, due, cell_ms, lateness_ms);
            if from.0 > at.0 {
                break;
            }
            let before = self.predictor.as_ref().and_then(Predictor::next_close_at);
            self.predict(stamp, None, out);
            if self.predictor.as_ref().and_then(Predictor::next_close_at) == before {
                // Time did not move the predictor (it is past `stamp` already): nothing more.
                break;
            }
        }
    }

    /// Outputs the fold made at position `at` (it had closed every cell before it): with the
    /// event's outputs, or kept for the shell (`publish_usage`).
    fn fold_output(&mut self, at: Millis, made: &mut Vec<Output>, out: &mut Vec<Output>) {
        match self.fold_outputs.as_mut() {
            Some(kept) => kept.extend(made.drain(..).map(|o| (at, o))),
            None => out.append(made),
        }
    }

    /// The global views' outputs made since the last call, each with the fold position it came
    /// at (live only: `publish_usage`).
    pub fn take_fold_outputs(&mut self) -> Vec<(Millis, Output)> {
        self.fold_outputs.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// End of input: every cell held closes.
    pub(super) fn finish_usage(&mut self, out: &mut Vec<Output>) {
        let mut closed = std::mem::take(&mut self.scratch_closed);
        let local: Vec<(i32, Option<Millis>, &PartitionUsage)> =
            self.usage.iter().enumerate().filter_map(|(p, u)| u.as_ref().map(|u| (p as i32, u.through(), u))).collect();
        let upto = self.fold.finish(&local, &mut closed);
        self.take_closed(&mut closed, upto, out);
        self.scratch_closed = closed;
    }

    /// How many requests partitions there are: a cell closes once every one of them is past it.
    pub fn set_requests_partitions(&mut self, n: usize) {
        self.fold.set_partitions(n);
    }

    /// This instance publishes its partitions' usage (`take_usage_record`): a closed cell is
    /// kept until a record has carried its last counts. The global views' outputs are kept for
    /// `take_fold_outputs` instead of going with the event's.
    pub fn publish_usage(&mut self) {
        self.publishes_usage = true;
        self.fold_outputs.get_or_insert_with(Vec::new);
    }

    /// The usage record of owned partition `partition` (`offset`: the last input offset
    /// processed in it). Sent at every flush turn, changed or not: a partition that says
    /// nothing for a while is taken for one nobody owns.
    pub fn take_usage_record(&mut self, partition: i32, offset: i64) -> Option<UsageRecord> {
        if partition < 0 {
            return None;
        }
        self.usage_of(partition);
        self.reach_usage();
        let cell_ms = self.fold.cell_ms();
        let u = self.usage.get_mut(usize::try_from(partition).ok()?)?.as_mut()?;
        Some(u.take_record(partition, cell_ms, offset))
    }

    /// Another instance's usage record (from `surgeguard.usage`); records of partitions this
    /// instance owns are its own (skipped). Closes what it completes.
    pub fn on_usage_record(&mut self, r: &UsageRecord, out: &mut Vec<Output>) {
        if usize::try_from(r.partition).ok().and_then(|i| self.usage.get(i)).is_some_and(Option::is_some) {
            return;
        }
        self.fold.apply(r);
        if self.watermark.is_some() {
            self.fold_usage(true, out);
        }
    }

    /// A partition's usage from the changelog, for its new owner.
    pub fn restore_usage(&mut self, r: &UsageRecord) {
        let Ok(i) = usize::try_from(r.partition) else { return };
        if self.usage.len() <= i {
            self.usage.resize_with(i + 1, || None);
        }
        let cell_ms = self.fold.cell_ms();
        let mut restored = PartitionUsage::restored(r, cell_ms);
        if let Some(former) = self.fold.take_foreign(r.partition) {
            restored.add_older(former.cells.into_iter().map(|(start, c)| (start.0.div_euclid(cell_ms), c)), cell_ms);
        }
        self.usage[i] = Some(restored);
    }

    /// Forgets an owned partition's usage (revoked): what it held stays in the fold as a record
    /// until the new owner's records replace it.
    pub(super) fn drop_usage(&mut self, partition: i32) {
        let cell_ms = self.fold.cell_ms();
        let Some(u) = usize::try_from(partition).ok().and_then(|i| self.usage.get_mut(i)).and_then(Option::take) else { return };
        let mut u = u;
        let r = u.take_record(partition, cell_ms, -1);
        self.fold.apply(&r);
    }

    /// A partition no record has come for lately (its owner gone): closing stops waiting for it
    /// until its next record.
    pub fn excuse_usage(&mut self, partition: i32, out: &mut Vec<Output>) {
        if !self.fold.is_excused(partition) {
            self.fold.excuse(partition);
            if self.watermark.is_some() {
                self.fold_usage(true, out);
            }
        }
    }

    /// The start of the first cell not closed yet (what the global views have reached).
    pub fn usage_closed_to(&self) -> Option<Millis> {
        self.fold.closed_to()
    }

    /// Decisions counted in a later cell than their own or dropped over the cap, and records'
    /// cells that came after their cell closed.
    pub fn usage_late(&self) -> u64 {
        self.usage.iter().flatten().map(|u| u.late + u.dropped).sum::<u64>() + self.fold.late_cells
    }
}
