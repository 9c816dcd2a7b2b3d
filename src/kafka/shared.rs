//! The pipeline's state shared by the main loop, the rebalance callbacks and the HTTP API: the
//! topology, the requests partitions owned (with what their restored state already counts), the
//! offsets processed, and the API's decisions waiting to be published.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::core::topology::{Counted, Topology};
use crate::kafka::changelog::{self, CountedUpTo, Outgoing};
use crate::kafka::deliveries::Deliveries;
use crate::kafka::first_decisions::Tail;
use crate::kafka::offsets::{FastMap, Partition};

/// The pipeline's state, shared by the main loop and the rebalance callbacks.
pub struct Shared {
    pub topology: Topology,
    /// Requests partitions owned now, each with the requests its restored state already counts.
    pub(super) owned: FastMap<i32, CountedUpTo>,
    /// Partitions revoked in the last eager rebalance, with what `owned` had for them.
    pub(super) revoked: HashMap<i32, CountedUpTo>,
    /// Per requests partition assigned since the last crash or rebalance, the first decisions
    /// of the requests after its committed offset, read back from the decisions topic
    /// (`first_decisions.rs`); emptied as those requests come again.
    pub(super) first: FastMap<i32, Tail>,
    /// Limiter state changed since the last changelog flush.
    pub changelog: changelog::Pending,
    /// As the leader, the fold position up to which this instance has published the global
    /// views' outputs (said in its usage records); none as a follower.
    pub(crate) published_fold_to: Option<crate::wire::time::Millis>,
    /// The position of the last views written (`take_changelog_of`).
    views_written_to: Option<crate::wire::time::Millis>,
    /// The last offset processed per input partition: committed when the partition is revoked.
    pub(super) processed: FastMap<Partition, i64>,
    /// A failure inside a callback, which the main loop turns into an error.
    pub failed: Option<String>,
    /// Assignments received so far (an empty one counts).
    pub(super) assignments: u64,
    /// Requests partitions revoked since the main loop last looked (`take_revoked`): its
    /// buffered messages of those are the next owner's (or come again from the committed offset).
    pub(super) revoked_since: Vec<i32>,
    /// Set when the pipeline stops on an error: outputs of processed messages may not have been
    /// delivered, so the revocation that closing the consumer brings commits nothing.
    pub no_commit: bool,
    /// The requests topic's partition count (0: unknown): the usage fold waits for every one.
    pub requests_partitions: usize,
    /// Outputs of the API's decisions (`POST /v1/decide`), for the main loop to publish.
    pub api_outputs: Vec<crate::wire::outputs::Output>,
    /// The API's recent decisions by request id (off until the runtime configures it).
    pub api_recent: crate::core::idempotency::RecentDecisions,
}

impl Shared {
    pub fn new(topology: Topology) -> Self {
        Shared {
            topology,
            owned: FastMap::default(),
            first: FastMap::default(),
            revoked: HashMap::new(),
            changelog: changelog::Pending::default(),
            processed: FastMap::default(),
            failed: None,
            assignments: 0,
            revoked_since: Vec::new(),
            no_commit: false,
            requests_partitions: 0,
            published_fold_to: None,
            views_written_to: None,
            api_outputs: Vec::new(),
            api_recent: crate::core::idempotency::RecentDecisions::default(),
        }
    }

    /// After the owned partitions changed: the usage fold waits for every requests partition.
    pub(super) fn partitions_changed(&mut self) {
        if self.requests_partitions > 0 {
            self.topology.set_requests_partitions(self.requests_partitions);
        }
    }

    /// How a request at `offset` of requests partition `partition` by `user` (user_id,
    /// request_type) counts; `None` when this instance does not own the partition (a message
    /// fetched before it was revoked).
    pub fn counted(&mut self, partition: i32, offset: i64, user: Option<(&str, &str)>) -> Option<Counted> {
        let up_to = self.owned.get_mut(&partition)?;
        let first = match self.first.get_mut(&partition) {
            Some(tail) => {
                let kind = tail.take(offset);
                if tail.is_empty() {
                    self.first.remove(&partition);
                }
                kind
            }
            None => None,
        };
        let already = if up_to.through().is_none_or(|t| offset > t) {
            // Past everything restored: nothing further is counted already, so the per-key
            // offsets can go.
            if up_to.through().is_some() {
                *up_to = CountedUpTo::default();
            }
            false
        } else {
            matches!(user, Some((u, rt)) if up_to.counts(offset, rt, u))
        };
        Some(match (first, already) {
            // Only a request has a decision (a dead-lettered one never had one).
            (Some(kind), counted) if user.is_some() => Counted::Decided { kind, counted },
            (_, true) => Counted::Already,
            _ => Counted::No,
        })
    }

    /// The first decisions still waiting for their requests, over all partitions.
    pub fn first_decisions_held(&self) -> usize {
        self.first.values().map(Tail::len).sum()
    }

    /// Takes the dirty limiter state for the changelog: the records to send, each to be
    /// acknowledged as an output of its partition's holding message (the tracker learns how many
    /// each hold waits for). A hold whose users all left the limiter (evicted as idle) is
    /// released at once: partitions whose delivered prefix moved are returned with it.
    pub fn take_changelog(&mut self, deliveries: &Mutex<Deliveries>, requests_topic: &str) -> Vec<Outgoing> {
        self.take_changelog_of(deliveries, requests_topic, |_| true)
    }

    /// `take_changelog` for the partitions `which` picks only. The records are encoded by the
    /// sender, after `Shared`'s lock is released (`Outgoing::encode`). Each owned partition
    /// picked whose usage changed (its time moved, or decisions counted) also gets its usage
    /// record, after its users' (the latest usage in the changelog never counts a request whose
    /// user's state is missing); an owned partition with no dirty users gets its usage only.
    pub fn take_changelog_of(&mut self, deliveries: &Mutex<Deliveries>, requests_topic: &str, which: impl Fn(i32) -> bool) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let mut deliveries = lock(deliveries);
        let flushes = self.changelog.take_where(&which);
        // The leader's views, when its published position moved (once per fold step at most).
        if self.published_fold_to.is_some() && self.published_fold_to != self.views_written_to {
            if let Some(v) = self.topology.views() {
                self.views_written_to = self.published_fold_to;
                out.push(Outgoing { partition: -1, hold: None, record: changelog::Payload::Views(Box::new(v)) });
            }
        }
        let owned: Vec<i32> = self.owned.keys().copied().collect();
        for p in owned {
            if which(p) && !flushes.iter().any(|f| f.partition == p) {
                let tp: Partition = (requests_topic.to_string(), p);
                self.push_usage(&tp, None, &mut out);
            }
        }
        for flush in flushes {
            let tp: Partition = (requests_topic.to_string(), flush.partition);
            let before = out.len();
            for (user, rt, offset) in flush.users {
                let Some(state) = self.topology.saved_state(flush.partition, &user, &rt) else { continue };
                let record = changelog::Payload::User(changelog::Record { user_id: user, request_type: rt, offset, state });
                out.push(Outgoing { partition: flush.partition, hold: flush.hold, record });
            }
            if self.owned.contains_key(&flush.partition) {
                self.push_usage(&tp, flush.hold, &mut out);
            }
            let records = (out.len() - before) as u32;
            match flush.hold {
                // Only API decisions: nothing waits for these records.
                None => {}
                Some(hold) if records == 0 => deliveries.ack(&tp, hold),
                // The hold counted one output already.
                Some(hold) => deliveries.begin(&tp, hold, records - 1),
            }
        }
        out
    }

    /// The usage record of requests partition `tp` when it changed: to the changelog and to the
    /// usage topic.
    fn push_usage(&mut self, tp: &Partition, hold: Option<i64>, out: &mut Vec<Outgoing>) {
        let offset = self.processed.get(tp).copied().unwrap_or(-1);
        if let Some(mut r) = self.topology.take_usage_record(tp.1, offset) {
            r.folded_to = self.published_fold_to;
            let r = std::sync::Arc::new(r);
            out.push(Outgoing { partition: tp.1, hold, record: changelog::Payload::Usage(r.clone()) });
            out.push(Outgoing { partition: tp.1, hold, record: changelog::Payload::UsageTopic(r) });
        }
    }

    /// Whether a flush may have anything to send: dirty users, or owned partitions (whose usage
    /// goes out when it changed).
    pub fn flush_pending(&self) -> bool {
        !self.changelog.is_empty() || !self.owned.is_empty()
    }

    /// Whether this instance owns requests partition `partition` now.
    pub fn owns(&self, partition: i32) -> bool {
        self.owned.contains_key(&partition)
    }

    /// The requests partitions this instance owns, in order.
    pub fn owned_partitions(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self.owned.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// The offset up to which the state of `user_id` (for `request_type`) in requests partition
    /// `partition` of `topic` counts every request of theirs: the last processed, or what the
    /// restored state already counted, whichever is later (-1: nothing yet). What a changelog
    /// record written for an API decision says it counts.
    pub fn counted_through(&self, topic: &str, partition: i32, user_id: &str, request_type: &str) -> i64 {
        let processed = self.processed.get(&(topic.to_string(), partition)).copied().unwrap_or(-1);
        let restored = self.owned.get(&partition).map_or(-1, |c| {
            let key = c.per_key.get(&changelog::key(request_type, user_id)).copied().unwrap_or(-1);
            c.all.unwrap_or(-1).max(key)
        });
        processed.max(restored)
    }

    /// Whether the group has given this instance its partitions yet. Until then it cannot know
    /// whether it leads, so it leaves the control topics unread.
    pub fn assigned(&self) -> bool {
        self.assignments > 0
    }

    /// The requests partitions revoked since the last call.
    pub(crate) fn take_revoked(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.revoked_since)
    }

    /// Whether this instance owns partition 0 of the requests topic, and so publishes the control
    /// side's outputs (see `control.rs`).
    pub fn is_leader(&self) -> bool {
        self.owned.contains_key(&0)
    }

    /// The positions to commit: the last offset processed per input partition.
    pub fn processed_offsets(&self) -> &FastMap<Partition, i64> {
        &self.processed
    }

    pub fn processed(&mut self, tp: &Partition, offset: i64) {
        match self.processed.get_mut(tp) {
            Some(o) => *o = (*o).max(offset),
            None => {
                self.processed.insert(tp.clone(), offset);
            }
        }
    }
}

pub fn lock<T>(shared: &Mutex<T>) -> MutexGuard<'_, T> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}
