//! Usage: what the limiter decided, counted per requests partition and per cell of event time,
//! and the fold of every partition's cells into the totals the monitor and the predictor take.
//!
//! The owner of a requests partition counts each decision into the partition's cell of its event
//! time (`PartitionUsage`); a request more than the lateness behind the partition's time counts
//! in the partition's current cell instead (its own cell may be closed already). Cells are
//! additive integer counts, so totals do not depend on the order they are summed in.
//!
//! `UsageFold` closes a cell when every requests partition's time (`through`: its own event
//! time, or the pipeline's when it has nothing left to read) has passed the cell's end plus the
//! lateness; a partition whose owner is silent can be excused (the shell decides when). Its
//! totals are then final, whichever instance decided which partition: with N instances each
//! instance folds its own partitions' cells and the others' (published to `surgeguard.usage`),
//! and gets the same totals, in the same event-time order, as one instance owning them all.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::wire::outputs::{Decision, DecisionKind};
use crate::wire::time::Millis;

/// The most cells one partition holds: past it, the oldest is dropped (counted, and said in the
/// records so every fold drops it too): a partition whose time runs a day of cells ahead of
/// the slowest.
pub const MAX_CELLS: usize = 1440;

/// One partition's decisions in one cell of event time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    pub decisions: u64,
    pub allowed: u64,
    pub graced: u64,
    pub throttled: u64,
    /// Seconds of the strategies given to throttled requests, summed.
    pub throttle_s: u64,
    /// The limiter's grace share (millionths) summed over decisions that drew on grace or were
    /// throttled, and how many those were.
    pub grace_ppm: u64,
    pub grace_n: u64,
    /// Decisions per tier and per request type (configured names only, so bounded).
    pub tiers: BTreeMap<Arc<str>, u64>,
    pub request_types: BTreeMap<Arc<str>, u64>,
}

fn bump(map: &mut BTreeMap<Arc<str>, u64>, key: &Arc<str>, n: u64) {
    match map.get_mut(key) {
        Some(v) => *v += n,
        None => {
            map.insert(key.clone(), n);
        }
    }
}

impl Cell {
    /// Counts one decision; `grace_used` is the limiter's grace share for graced or throttled ones.
    pub fn count(&mut self, d: &Decision, grace_used: Option<f64>) {
        self.decisions += 1;
        bump(&mut self.tiers, &d.tier, 1);
        bump(&mut self.request_types, &d.request_type, 1);
        match d.decision {
            DecisionKind::Allow => self.allowed += 1,
            DecisionKind::AllowWithGrace => self.graced += 1,
            DecisionKind::Throttle => {
                self.throttled += 1;
                self.throttle_s += d.strategy.map_or(0, |s| u64::from(s.seconds()));
            }
        }
        if let Some(g) = grace_used {
            self.grace_ppm += (g.clamp(0.0, 1e6) * 1e6).round() as u64;
            self.grace_n += 1;
        }
    }

    /// Adds another cell's counts.
    pub fn add(&mut self, o: &Cell) {
        self.decisions += o.decisions;
        self.allowed += o.allowed;
        self.graced += o.graced;
        self.throttled += o.throttled;
        self.throttle_s += o.throttle_s;
        self.grace_ppm += o.grace_ppm;
        self.grace_n += o.grace_n;
        for (k, v) in &o.tiers {
            bump(&mut self.tiers, k, *v);
        }
        for (k, v) in &o.request_types {
            bump(&mut self.request_types, k, *v);
        }
    }
}

/// The width of a cell: a divisor of the minute and of the predictor's step (a minute without
/// a predictor), so that minutes and steps are whole cells.
pub fn cell_ms(step_ms: Option<i64>) -> i64 {
    fn gcd(a: i64, b: i64) -> i64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    match step_ms {
        Some(s) if s > 0 => gcd(60_000, s).max(1),
        _ => 60_000,
    }
}

/// Where a predictor step ending at `end`, due (its end plus the predictor's lateness) at `due`,
/// closes in the fold: the first fold position (a cell boundary) at or after both its end and
/// `due` less the fold's lateness, and the stamp, that position plus the fold's lateness (the
/// earliest pipeline time at which a fold can be there), never before `due`.
pub fn step_close(end: Millis, due: Millis, cell_ms: i64, lateness_ms: i64) -> (Millis, Millis) {
    let ceil = |t: i64| t.div_euclid(cell_ms) + i64::from(t.rem_euclid(cell_ms) != 0);
    let from = ceil(due.0.saturating_sub(lateness_ms)).max(ceil(end.0)).saturating_mul(cell_ms);
    (Millis(from), Millis(from.saturating_add(lateness_ms).max(due.0)))
}

/// What one partition's owner publishes: how far the partition has got, and its cells not yet
/// published since they closed (cumulative: a later record replaces an earlier one's cells).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub partition: i32,
    /// The partition's time: its own event time, or the pipeline's when it had nothing to read.
    pub through: Option<Millis>,
    /// The cell width the counts are in.
    pub cell_ms: i64,
    /// The input offset of the last request counted (-1: none), for a new owner.
    pub offset: i64,
    /// (cell start, counts), oldest first.
    pub cells: Vec<(Millis, Cell)>,
    /// Set by the instance that publishes the global views' outputs (the leader): it has
    /// published every output of its fold up to this position (a new leader publishes those
    /// after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded_to: Option<Millis>,
    /// Cells before this were dropped by the owner over `MAX_CELLS`: folds drop theirs too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_to: Option<Millis>,
}

/// One requests partition's cells, as its owner counts them.
#[derive(Debug, Clone, Default)]
pub struct PartitionUsage {
    /// Cells by index, each with whether its counts are in a record taken since they changed.
    cells: BTreeMap<i64, (Cell, bool)>,
    /// The latest event time counted or stated (`reach`).
    through: Option<Millis>,
    /// Decisions counted in a cell after their own (late).
    pub late: u64,
    /// Cells dropped over `MAX_CELLS` (their decisions are lost to the views), and the first
    /// cell index after the last one dropped.
    pub dropped: u64,
    dropped_to: Option<i64>,
}

impl PartitionUsage {
    pub fn new() -> Self {
        PartitionUsage::default()
    }

    /// A new owner's start: the cells and time of the last record its predecessor published.
    pub fn restored(r: &UsageRecord, cell_ms: i64) -> Self {
        let mut u = PartitionUsage::new();
        if r.cell_ms == cell_ms {
            u.cells = r.cells.iter().map(|(start, c)| (start.0.div_euclid(cell_ms), (c.clone(), true))).collect();
        }
        u.through = r.through;
        u
    }

    /// Cells of the former owner's last record this instance read that are older than any the
    /// restored record holds (its owner forgot them once its fold closed them; another fold may
    /// not have closed them yet).
    pub fn add_older(&mut self, cells: impl IntoIterator<Item = (i64, Cell)>, cell_ms: i64) {
        let bound = match (self.cells.first_key_value(), self.through) {
            (Some((&i, _)), _) => i,
            (None, Some(t)) => t.0.div_euclid(cell_ms),
            (None, None) => return,
        };
        for (i, c) in cells {
            if i < bound && self.dropped_to.is_none_or(|d| i >= d) {
                self.cells.entry(i).or_insert((c, true));
            }
        }
    }

    pub fn through(&self) -> Option<Millis> {
        self.through
    }

    /// Counts a decision at event time `ts` (the caller moves the partition's time: `reach`).
    pub fn count(&mut self, ts: Millis, cell_ms: i64, lateness_ms: i64, d: &Decision, grace_used: Option<f64>) {
        let mut i = ts.0.div_euclid(cell_ms);
        if let Some(t) = self.through {
            // Its own cell may have closed: count it in the partition's current one.
            if (i + 1).saturating_mul(cell_ms).saturating_add(lateness_ms) <= t.0 {
                i = t.0.div_euclid(cell_ms);
                self.late += 1;
            }
        }
        let cell = match self.cells.last_entry() {
            Some(e) if *e.key() == i => e.into_mut(),
            _ => self.cells.entry(i).or_default(),
        };
        cell.0.count(d, grace_used);
        cell.1 = false;
        if self.cells.len() > MAX_CELLS
            && let Some((i, (oldest, _))) = self.cells.pop_first()
        {
            self.dropped += oldest.decisions;
            self.dropped_to = Some(i + 1);
        }
    }

    /// The partition has got to `t` (nothing before it left to read).
    pub fn reach(&mut self, t: Millis) {
        if self.through.is_none_or(|th| t > th) {
            self.through = Some(t);
        }
    }

    /// The record to publish now: every cell held (a new owner starts from the latest record);
    /// `offset` is the last input offset processed.
    pub fn take_record(&mut self, partition: i32, cell_ms: i64, offset: i64) -> UsageRecord {
        let cells = self
            .cells
            .iter_mut()
            .map(|(&i, (c, published))| {
                *published = true;
                (Millis(i * cell_ms), c.clone())
            })
            .collect();
        let dropped_to = self.dropped_to.map(|i| Millis(i * cell_ms));
        UsageRecord { partition, through: self.through, cell_ms, offset, cells, folded_to: None, dropped_to }
    }

    /// Forgets the cells before `from` (the fold closed them): those whose counts are in a
    /// record, or all of them when nothing is published (`published_only` false).
    pub fn forget_before(&mut self, from: i64, published_only: bool) {
        self.cells.retain(|&i, (_, published)| i >= from || (published_only && !*published));
    }

    fn cell(&self, i: i64) -> Option<&Cell> {
        self.cells.get(&i).map(|(c, _)| c)
    }

    fn starts_before(&self, upto: i64) -> impl Iterator<Item = i64> + '_ {
        self.cells.range(..upto).map(|(&i, _)| i)
    }

    fn last_start(&self) -> Option<i64> {
        self.cells.last_key_value().map(|(&i, _)| i)
    }
}

/// Another instance's partition, as its records said.
#[derive(Debug, Clone, Default)]
struct Foreign {
    through: Option<Millis>,
    cells: BTreeMap<i64, Cell>,
    offset: i64,
}

/// Every requests partition's cells, closed in event-time order once all partitions are past.
#[derive(Debug, Clone)]
pub struct UsageFold {
    cell_ms: i64,
    lateness_ms: i64,
    /// How many requests partitions there are (0: only those seen).
    partitions: usize,
    foreign: BTreeMap<i32, Foreign>,
    excused: std::collections::BTreeSet<i32>,
    /// The first cell not closed.
    next: Option<i64>,
    /// Cells a record brought after they had closed (not counted).
    pub late_cells: u64,
    /// The last close found a partition of another instance holding it back: nothing closes
    /// before a record or an excuse changes that.
    blocked_by_foreign: bool,
}

/// One closed cell's totals over every partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub start: Millis,
    pub total: Cell,
}

impl UsageFold {
    pub fn new(cell_ms: i64, lateness_ms: i64) -> Self {
        UsageFold {
            cell_ms: cell_ms.max(1),
            lateness_ms: lateness_ms.max(0),
            partitions: 0,
            foreign: BTreeMap::new(),
            excused: Default::default(),
            next: None,
            late_cells: 0,
            blocked_by_foreign: false,
        }
    }

    pub fn cell_ms(&self) -> i64 {
        self.cell_ms
    }

    pub fn lateness_ms(&self) -> i64 {
        self.lateness_ms
    }

    /// The number of requests partitions (every one must be past a cell for it to close).
    pub fn set_partitions(&mut self, n: usize) {
        self.partitions = n;
        self.blocked_by_foreign = false;
        self.foreign.retain(|&p, _| usize::try_from(p).is_ok_and(|p| p < n) || n == 0);
    }

    /// Goes on from position `at` (another instance's views) when nothing has closed yet.
    pub fn start_at(&mut self, at: Millis) {
        if self.next.is_none() {
            self.next = Some(at.0.div_euclid(self.cell_ms));
        }
    }

    /// The start of the first cell not closed yet.
    pub fn closed_to(&self) -> Option<Millis> {
        self.next.map(|i| Millis(i * self.cell_ms))
    }

    /// The earliest pipeline time at which another cell could close.
    pub fn next_close_at(&self) -> Millis {
        match self.next {
            None => Millis(i64::MIN),
            Some(i) => Millis((i + 1).saturating_mul(self.cell_ms).saturating_add(self.lateness_ms)),
        }
    }

    /// Takes another instance's record for its partition (cumulative: its cells replace those
    /// held). Records of partitions this instance owns are the caller's to skip.
    pub fn apply(&mut self, r: &UsageRecord) {
        if r.cell_ms != self.cell_ms || r.partition < 0 {
            self.late_cells += r.cells.len() as u64;
            return;
        }
        let f = self.foreign.entry(r.partition).or_default();
        // A record older than one taken (a former owner's, read late) changes nothing.
        if r.through < f.through || (r.through == f.through && r.offset < f.offset) {
            return;
        }
        f.through = r.through;
        f.offset = r.offset;
        if let Some(d) = r.dropped_to {
            let d = d.0.div_euclid(self.cell_ms);
            f.cells.retain(|&i, _| i >= d);
        }
        self.blocked_by_foreign = false;
        for (start, c) in &r.cells {
            let i = start.0.div_euclid(self.cell_ms);
            if self.next.is_some_and(|n| i < n) {
                self.late_cells += 1;
                continue;
            }
            f.cells.insert(i, c.clone());
        }
        self.excused.remove(&r.partition);
    }

    /// The last record taken for `partition`, as cells a new owner starts from.
    pub fn take_foreign(&mut self, partition: i32) -> Option<UsageRecord> {
        self.blocked_by_foreign = false;
        let f = self.foreign.remove(&partition)?;
        let cells = f.cells.into_iter().map(|(i, c)| (Millis(i * self.cell_ms), c)).collect();
        Some(UsageRecord { partition, through: f.through, cell_ms: self.cell_ms, offset: f.offset, cells, folded_to: None, dropped_to: None })
    }

    /// A partition nobody speaks for (no record for a while): closing stops waiting for it
    /// until its next record.
    pub fn excuse(&mut self, partition: i32) {
        self.excused.insert(partition);
        self.blocked_by_foreign = false;
    }

    /// Whether only another instance's record (or an excuse) can let a cell close.
    pub fn blocked_by_foreign(&self) -> bool {
        self.blocked_by_foreign
    }

    pub fn is_excused(&self, partition: i32) -> bool {
        self.excused.contains(&partition)
    }

    /// The partitions' time every cell before which may close: the lowest `through` over the
    /// partitions not excused (`local` gives the owned ones'); `None` while one has none yet.
    /// Also says whether a partition of another instance decided it (the lowest, or one with
    /// no time yet).
    fn completion(&self, local: &[(i32, Option<Millis>, &PartitionUsage)]) -> (Option<Millis>, bool) {
        // (time, local?) per partition; None: excused.
        let through = |p: i32| -> Option<(Option<Millis>, bool)> {
            if let Some(&(_, t, _)) = local.iter().find(|(q, _, _)| *q == p) {
                return Some((t, true));
            }
            if self.excused.contains(&p) {
                return None;
            }
            Some((self.foreign.get(&p).and_then(|f| f.through), false))
        };
        let partitions: Vec<i32> = if self.partitions > 0 {
            (0..self.partitions as i32).collect()
        } else {
            let mut seen: Vec<i32> = local.iter().map(|(p, _, _)| *p).collect();
            seen.extend(self.foreign.keys().copied());
            seen.sort_unstable();
            seen.dedup();
            seen
        };
        let mut min: Option<(Millis, bool)> = None;
        for p in partitions {
            match through(p) {
                None => {}
                Some((None, is_local)) => return (None, !is_local),
                Some((Some(t), is_local)) => {
                    if min.is_none_or(|(m, _)| t < m) {
                        min = Some((t, is_local));
                    }
                }
            }
        }
        match min {
            Some((t, is_local)) => (Some(t), !is_local),
            None => (None, false),
        }
    }

    /// Closes every cell all partitions are past (by the lateness), oldest first, into `out`
    /// (cells with no decisions anywhere are left out); `local` gives the owned partitions: their
    /// time and cells. Returns the start of the first cell still open when anything moved.
    pub fn close(&mut self, local: &[(i32, Option<Millis>, &PartitionUsage)], out: &mut Vec<Closed>) -> Option<Millis> {
        let (t, foreign) = self.completion(local);
        let Some(t) = t else {
            self.blocked_by_foreign = foreign;
            return None;
        };
        let upto = (t.0 - self.lateness_ms).div_euclid(self.cell_ms);
        if self.next.is_some_and(|n| upto <= n) {
            self.blocked_by_foreign = foreign;
            return None;
        }
        self.blocked_by_foreign = false;
        let mut starts: Vec<i64> = local.iter().flat_map(|(_, _, u)| u.starts_before(upto)).collect();
        for f in self.foreign.values() {
            starts.extend(f.cells.range(..upto).map(|(&i, _)| i));
        }
        starts.sort_unstable();
        starts.dedup();
        for i in starts {
            if self.next.is_some_and(|n| i < n) {
                continue;
            }
            let mut total = Cell::default();
            // In partition order, local and foreign alike (the sums are integers anyway).
            let mut parts: Vec<(i32, &Cell)> = local.iter().filter_map(|(p, _, u)| u.cell(i).map(|c| (*p, c))).collect();
            parts.extend(self.foreign.iter().filter(|(p, _)| !local.iter().any(|(q, _, _)| q == *p)).filter_map(|(p, f)| f.cells.get(&i).map(|c| (*p, c))));
            parts.sort_unstable_by_key(|(p, _)| *p);
            for (_, c) in parts {
                total.add(c);
            }
            if total.decisions > 0 {
                out.push(Closed { start: Millis(i * self.cell_ms), total });
            }
        }
        for f in self.foreign.values_mut() {
            f.cells.retain(|&i, _| i >= upto);
        }
        self.next = Some(upto);
        Some(Millis(upto * self.cell_ms))
    }

    /// End of input (replay, backtest): closes every cell held.
    pub fn finish(&mut self, local: &[(i32, Option<Millis>, &PartitionUsage)], out: &mut Vec<Closed>) -> Option<Millis> {
        let last =
            local.iter().filter_map(|(_, _, u)| u.last_start()).chain(self.foreign.values().filter_map(|f| f.cells.last_key_value().map(|(&i, _)| i))).max()?;
        let end = Millis((last + 1) * self.cell_ms + self.lateness_ms);
        let local: Vec<(i32, Option<Millis>, &PartitionUsage)> = local.iter().map(|&(p, _, u)| (p, Some(end), u)).collect();
        let partitions = std::mem::take(&mut self.partitions);
        let excused = std::mem::take(&mut self.excused);
        for f in self.foreign.values_mut() {
            f.through = Some(end);
        }
        let r = self.close(&local, out);
        self.partitions = partitions;
        self.excused = excused;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn decision(ts: i64, kind: DecisionKind) -> Decision {
        crate::wire::outputs::test_decision(Millis(ts), kind)
    }

    fn counted(u: &mut PartitionUsage, ts: i64, kind: DecisionKind) {
        u.reach(Millis(ts));
        u.count(Millis(ts), 60_000, 5_000, &decision(ts, kind), None);
    }

    #[test]
    fn a_cell_closes_only_when_every_partition_is_past_it() {
        let mut a = PartitionUsage::new();
        let mut b = PartitionUsage::new();
        counted(&mut a, 1_000, DecisionKind::Allow);
        counted(&mut a, 70_000, DecisionKind::Allow);
        counted(&mut b, 2_000, DecisionKind::Throttle);
        let mut fold = UsageFold::new(60_000, 5_000);
        fold.set_partitions(2);
        let mut out = Vec::new();
        // Partition 1 is at 2 s: minute 0 stays open.
        fold.close(&[(0, a.through(), &a), (1, b.through(), &b)], &mut out);
        assert!(out.is_empty());
        counted(&mut b, 66_000, DecisionKind::Allow);
        assert_eq!(fold.close(&[(0, a.through(), &a), (1, b.through(), &b)], &mut out), Some(Millis(60_000)));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].start, out[0].total.decisions, out[0].total.throttled), (Millis(0), 2, 1));
    }

    #[test]
    fn a_partition_without_news_holds_the_fold_until_excused() {
        let mut a = PartitionUsage::new();
        counted(&mut a, 1_000, DecisionKind::Allow);
        counted(&mut a, 200_000, DecisionKind::Allow);
        let mut fold = UsageFold::new(60_000, 5_000);
        fold.set_partitions(2);
        let mut out = Vec::new();
        assert_eq!(fold.close(&[(0, a.through(), &a)], &mut out), None, "partition 1 never spoke");
        fold.excuse(1);
        assert!(fold.close(&[(0, a.through(), &a)], &mut out).is_some());
        assert_eq!(out.len(), 1);
        // Its record comes: it is waited for again.
        fold.apply(&UsageRecord { partition: 1, through: Some(Millis(130_000)), cell_ms: 60_000, offset: 3, cells: vec![], folded_to: None, dropped_to: None });
        assert!(!fold.is_excused(1));
    }

    #[test]
    fn two_owners_exchanging_records_close_what_one_owner_closes() {
        // The same decisions, one owner of both partitions vs two owners that each fold the
        // other's records.
        let events: Vec<(i32, i64, DecisionKind)> = (0..400)
            .map(|i| {
                let kind = if i % 7 == 0 { DecisionKind::Throttle } else { DecisionKind::Allow };
                (i % 2, i64::from(i) * 997, kind)
            })
            .collect();
        let mut one = [PartitionUsage::new(), PartitionUsage::new()];
        let mut fold_one = UsageFold::new(60_000, 5_000);
        fold_one.set_partitions(2);
        let mut out_one = Vec::new();
        let mut two = [PartitionUsage::new(), PartitionUsage::new()];
        let mut folds = [UsageFold::new(60_000, 5_000), UsageFold::new(60_000, 5_000)];
        let mut outs: [Vec<Closed>; 2] = [Vec::new(), Vec::new()];
        for f in &mut folds {
            f.set_partitions(2);
        }
        for (n, &(p, ts, kind)) in events.iter().enumerate() {
            let p = p as usize;
            counted(&mut one[p], ts, kind);
            let [a, b] = &one;
            fold_one.close(&[(0, a.through(), a), (1, b.through(), b)], &mut out_one);
            counted(&mut two[p], ts, kind);
            // Records go over every few events, in either direction.
            if n % 5 == 0 {
                let r = two[p].take_record(p as i32, 60_000, n as i64);
                folds[1 - p].apply(&r);
            }
            for q in 0..2 {
                let u = &two[q];
                folds[q].close(&[(q as i32, u.through(), u)], &mut outs[q]);
            }
        }
        for q in 0..2 {
            let r = two[q].take_record(q as i32, 60_000, 1000);
            folds[1 - q].apply(&r);
        }
        for q in 0..2 {
            let u = &two[q];
            folds[q].close(&[(q as i32, u.through(), u)], &mut outs[q]);
        }
        assert!(out_one.len() >= 5, "{}", out_one.len());
        for q in 0..2 {
            assert_eq!(outs[q][..out_one.len()], out_one[..], "owner {q}");
        }
    }

    #[test]
    fn a_late_request_counts_in_its_partitions_current_cell() {
        let mut a = PartitionUsage::new();
        counted(&mut a, 130_000, DecisionKind::Allow);
        counted(&mut a, 10_000, DecisionKind::Allow);
        assert_eq!(a.late, 1);
        let r = a.take_record(0, 60_000, 1);
        assert_eq!(r.cells.len(), 1);
        assert_eq!((r.cells[0].0, r.cells[0].1.decisions), (Millis(120_000), 2));
    }

    #[test]
    fn a_step_closes_after_its_cells_whatever_the_latenesses() {
        let m = 60_000;
        // The defaults: 5-minute steps due 60 s after their end, cells closing 5 s after theirs.
        assert_eq!(step_close(Millis(5 * m), Millis(5 * m + 60_000), m, 5_000), (Millis(6 * m), Millis(6 * m + 5_000)));
        // A fold lateness longer than the predictor's: never before the step's own cells close.
        assert_eq!(step_close(Millis(5 * m), Millis(5 * m + 60_000), m, 120_000), (Millis(5 * m), Millis(5 * m + 120_000)));
        // Sub-minute cells.
        assert_eq!(step_close(Millis(30_000), Millis(31_000), 15_000, 0), (Millis(45_000), Millis(45_000)));
    }

    #[test]
    fn a_new_owner_keeps_the_former_owners_older_cells_and_drops_what_it_dropped() {
        let mut a = PartitionUsage::new();
        counted(&mut a, 1_000, DecisionKind::Allow);
        counted(&mut a, 70_000, DecisionKind::Allow);
        let former = a.take_record(0, 60_000, 5);
        // The former owner forgot minute 0 (its fold closed it); its last record holds minute 1.
        a.forget_before(1, true);
        let last = a.take_record(0, 60_000, 6);
        let mut b = PartitionUsage::restored(&last, 60_000);
        b.add_older(former.cells.iter().map(|(s, c)| (s.0 / 60_000, c.clone())), 60_000);
        let r = b.take_record(0, 60_000, 6);
        assert_eq!(r.cells.iter().map(|(s, c)| (s.0, c.decisions)).collect::<Vec<_>>(), [(0, 1), (60_000, 1)]);
        // Over the cap the oldest cell is dropped, and the records say so.
        let mut c = PartitionUsage::new();
        for i in 0..=MAX_CELLS as i64 {
            counted(&mut c, i * 60_000, DecisionKind::Allow);
        }
        let r = c.take_record(0, 60_000, 1);
        assert_eq!((r.cells.len(), r.dropped_to, c.dropped), (MAX_CELLS, Some(Millis(60_000)), 1));
        let mut fold = UsageFold::new(60_000, 0);
        fold.apply(&UsageRecord {
            partition: 0,
            through: Some(Millis(0)),
            cell_ms: 60_000,
            offset: 0,
            cells: vec![(Millis(0), Cell::default())],
            folded_to: None,
            dropped_to: None,
        });
        fold.apply(&r);
        assert_eq!(fold.take_foreign(0).map(|f| f.cells.len()), Some(MAX_CELLS), "minute 0 dropped by the fold too");
    }

    #[test]
    fn records_round_trip_and_cells_are_whole_minutes_and_steps() {
        let mut a = PartitionUsage::new();
        a.reach(Millis(5));
        a.count(Millis(5), 60_000, 0, &decision(5, DecisionKind::AllowWithGrace), Some(0.25));
        let r = a.take_record(3, 60_000, 9);
        let back: UsageRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!((back.offset, back.cells[0].1.grace_ppm), (9, 250_000));
        assert_eq!(cell_ms(None), 60_000);
        assert_eq!(cell_ms(Some(300_000)), 60_000);
        assert_eq!(cell_ms(Some(30_000)), 30_000);
        assert_eq!(cell_ms(Some(45_000)), 15_000);
    }
}
