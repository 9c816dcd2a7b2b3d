//! Whether this instance publishes the control side's outputs, and what goes with it (see
//! `control.rs`): as a follower, the control outputs it computed but did not publish (a new
//! leader publishes those the old one may not have); as the leader, the control offsets whose
//! outputs it delivered, committed to the group now and then.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rdkafka::topic_partition_list::TopicPartitionList;

use crate::kafka::offsets::{Partition, StoredOffsets};
use crate::wire::outputs::Output;
use crate::wire::time::Millis;

/// The most control outputs a follower keeps for the day it leads.
const MAX_BACKLOG: usize = 10_000;

/// How often the leader commits the delivered control offsets (asynchronously).
const CONTROL_COMMIT_EVERY: Duration = Duration::from_secs(1);

/// What changed when the shared state said who leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Gained,
    Lost,
    Same,
}

pub(crate) struct Leadership {
    leading: bool,
    /// Control outputs computed as a follower, with their input partition and offset.
    backlog: VecDeque<(Partition, i64, Output)>,
    backlog_dropped: u64,
    /// Control partitions: the last offset whose outputs this instance (as leader) has
    /// delivered, to commit; never moving back.
    control: StoredOffsets,
    last_control_commit: Instant,
    /// The global views' outputs computed as a follower, with their fold position
    /// (`Topology::take_fold_outputs`).
    fold_backlog: VecDeque<(Millis, Output)>,
    /// The fold position up to which a leader said it published (its usage records).
    leader_folded_to: Option<Millis>,
}

impl Default for Leadership {
    fn default() -> Self {
        Leadership {
            leading: false,
            backlog: VecDeque::new(),
            backlog_dropped: 0,
            control: StoredOffsets::default(),
            last_control_commit: Instant::now(),
            fold_backlog: VecDeque::new(),
            leader_folded_to: None,
        }
    }
}

impl Leadership {
    pub(crate) fn leading(&self) -> bool {
        self.leading
    }

    /// Takes in whether this instance leads now (the shared state's `is_leader`).
    pub(crate) fn set(&mut self, leading: bool) -> Change {
        let change = match (self.leading, leading) {
            (false, true) => Change::Gained,
            (true, false) => Change::Lost,
            _ => Change::Same,
        };
        if change == Change::Lost {
            tracing::info!("no longer leading");
        }
        self.leading = leading;
        change
    }

    /// A gain taken back before anything was published (the message that brought it is not
    /// this instance's): it leads from the next message or tick on. Not a loss: nothing is logged.
    pub(crate) fn defer_gain(&mut self) {
        self.leading = false;
    }

    /// A follower keeps the control side's outputs it computed but did not publish (alerts,
    /// breaker transitions, predictions; limits are republished whole by a new leader), so that
    /// if it becomes leader it can publish those the old leader may not have. The oldest go
    /// first beyond `MAX_BACKLOG`.
    pub(crate) fn suppress(&mut self, tp: &Partition, offset: i64, outs: &[Output]) {
        for o in outs.iter().filter(|o| !matches!(o, Output::Decision(_) | Output::Limit(_))) {
            if self.backlog.len() >= MAX_BACKLOG {
                self.backlog.pop_front();
                self.backlog_dropped += 1;
            }
            self.backlog.push_back((tp.clone(), offset, o.clone()));
        }
    }

    /// The global views' outputs (alerts of closed minutes, predictions, predicted limits), each
    /// with the fold position it came at: what to publish now. The leader publishes those a
    /// leader has not published already (an old leader whose fold was ahead); a follower keeps
    /// them, bounded, for the day it leads.
    pub(crate) fn fold_outputs(&mut self, outs: Vec<(Millis, Output)>) -> Vec<Output> {
        let done = self.leader_folded_to;
        let new = outs.into_iter().filter(|(at, _)| done.is_none_or(|d| *at > d));
        if self.leading {
            return new.map(|(_, o)| o).collect();
        }
        for o in new {
            if self.fold_backlog.len() >= MAX_BACKLOG {
                self.fold_backlog.pop_front();
                self.backlog_dropped += 1;
            }
            self.fold_backlog.push_back(o);
        }
        Vec::new()
    }

    /// A leader's usage record said it published the global views' outputs up to `at`.
    pub(crate) fn leader_folded_to(&mut self, at: Millis) {
        if self.leader_folded_to.is_none_or(|d| at > d) {
            self.leader_folded_to = Some(at);
        }
        while self.fold_backlog.front().is_some_and(|(p, _)| *p <= at) {
            self.fold_backlog.pop_front();
        }
    }

    /// The global views' outputs kept as a follower that no leader has published, for a new
    /// leader to publish; empties the backlog.
    pub(crate) fn take_fold_backlog(&mut self) -> Vec<Output> {
        let done = self.leader_folded_to;
        std::mem::take(&mut self.fold_backlog).into_iter().filter(|(at, _)| done.is_none_or(|d| *at > d)).map(|(_, o)| o).collect()
    }

    /// The kept outputs and how many were dropped, for a new leader to publish; empties both.
    pub(crate) fn take_backlog(&mut self) -> (VecDeque<(Partition, i64, Output)>, u64) {
        (std::mem::take(&mut self.backlog), std::mem::replace(&mut self.backlog_dropped, 0))
    }

    /// The outputs of control message `offset` of `tp` and of every earlier one are delivered;
    /// returns whether a commit of the control offsets is due. Outputs published from the
    /// backlog belong to earlier offsets than those already delivered: the commit never moves
    /// back.
    pub(crate) fn delivered(&mut self, tp: &Partition, offset: i64) -> bool {
        self.control.store(tp, offset);
        self.last_control_commit.elapsed() >= CONTROL_COMMIT_EVERY
    }

    /// The delivered control offsets to commit (the next offset to read, per partition), emptied;
    /// `None` when there are none.
    pub(crate) fn take_control_commit(&mut self) -> Option<TopicPartitionList> {
        self.last_control_commit = Instant::now();
        self.control.take_list()
    }
}

/// Exactly-once: outputs, changelog records and input offsets go in transactions, committed
/// every `TRANSACTION_EVERY` while anything was done since the last commit.
pub(crate) struct Transactions {
    exactly_once: bool,
    /// Something was done since the last commit.
    open: bool,
    last: Instant,
}

/// How often the open transaction commits (Kafka Streams' default for exactly-once).
pub(crate) const TRANSACTION_EVERY: Duration = Duration::from_millis(100);

impl Transactions {
    pub(crate) fn new(exactly_once: bool) -> Self {
        Transactions { exactly_once, open: false, last: Instant::now() }
    }

    pub(crate) fn exactly_once(&self) -> bool {
        self.exactly_once
    }

    /// Something went into the open transaction.
    pub(crate) fn touched(&mut self) {
        self.open = true;
    }

    /// Whether the open transaction should commit now.
    pub(crate) fn due(&self) -> bool {
        self.exactly_once && self.open && self.last.elapsed() >= TRANSACTION_EVERY
    }

    /// A commit is starting: nothing is open any more.
    pub(crate) fn committing(&mut self) {
        self.open = false;
    }

    /// A commit ended: the interval runs from here, so a slow commit still leaves time to work.
    pub(crate) fn committed(&mut self) {
        self.last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::topic_partition_list::Offset;

    use crate::wire::outputs::{DecisionKind, test_decision};
    use crate::wire::time::Millis;

    #[test]
    fn leadership_changes_are_reported_once() {
        let mut l = Leadership::default();
        assert_eq!(l.set(false), Change::Same);
        assert_eq!(l.set(true), Change::Gained);
        assert_eq!(l.set(true), Change::Same);
        assert_eq!(l.set(false), Change::Lost);
    }

    #[test]
    fn the_control_commit_never_moves_back() {
        let mut l = Leadership::default();
        let tp: Partition = ("surgeguard.outcomes".into(), 0);
        l.delivered(&tp, 10);
        l.delivered(&tp, 4);
        let tpl = l.take_control_commit().expect("an offset to commit");
        assert_eq!(tpl.find_partition(&tp.0, 0).map(|e| e.offset()), Some(Offset::Offset(11)));
        assert!(l.take_control_commit().is_none());
        // Older than what was committed: nothing to commit.
        l.delivered(&tp, 9);
        assert!(l.take_control_commit().is_none());
    }

    #[test]
    fn decisions_and_limits_are_not_kept_for_a_later_leader() {
        let mut l = Leadership::default();
        let tp: Partition = ("surgeguard.outcomes".into(), 0);
        l.suppress(&tp, 1, &[Output::Decision(test_decision(Millis(0), DecisionKind::Allow))]);
        let (backlog, dropped) = l.take_backlog();
        assert!(backlog.is_empty());
        assert_eq!(dropped, 0);
    }

    #[test]
    fn a_new_leader_publishes_the_global_views_no_leader_published() {
        let alert = |m: i64| (Millis(m * 60_000), Output::Decision(test_decision(Millis(m * 60_000), DecisionKind::Allow)));
        let mut l = Leadership::default();
        // A follower keeps them; the leader's records say how far it published.
        assert!(l.fold_outputs(vec![alert(1), alert(2), alert(3)]).is_empty());
        l.leader_folded_to(Millis(2 * 60_000));
        assert_eq!(l.set(true), Change::Gained);
        let backlog = l.take_fold_backlog();
        assert_eq!(backlog.len(), 1, "only the one after the old leader's position");
        // Its own fold, behind the old leader's, does not publish those again.
        assert_eq!(l.fold_outputs(vec![alert(2), alert(4)]).len(), 1);
    }

    #[test]
    fn transactions_are_due_only_when_something_is_open() {
        let mut t = Transactions::new(true);
        t.last -= TRANSACTION_EVERY;
        assert!(!t.due());
        t.touched();
        assert!(t.due());
        t.committing();
        t.committed();
        assert!(!t.due());
        let mut off = Transactions::new(false);
        off.touched();
        off.last -= TRANSACTION_EVERY;
        assert!(!off.due());
    }
}
