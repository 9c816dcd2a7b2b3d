//! Commit-after-delivery bookkeeping: which input offsets may be committed.
//!
//! Each consumed message is `begin`-ed with the number of output records it caused; each
//! delivery report `ack`s one of them. An offset may be stored for commit only when the message
//! and every earlier message of its partition have all their outputs acknowledged, so a crash
//! never skips an input whose outputs were not written (at-least-once). Pure: no Kafka types.

use std::collections::{BTreeMap, HashMap};

use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// A topic partition, by topic name and partition number.
pub type Partition = (String, i32);

/// A hash map with a fast hasher, for the maps touched once or more per message (partition keys
/// are not attacker-chosen).
pub type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// Outputs still unacknowledged, per partition and offset (0 = done, waiting for earlier ones).
    pending: FastMap<Partition, BTreeMap<i64, u32>>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a consumed message that caused `outputs` records. Returns the last offset of the
    /// partition's fully delivered prefix when that moved (a message without outputs with
    /// nothing pending before it is done at once). librdkafka's `offset_store` takes exactly
    /// this offset and commits the one after it.
    pub fn begin(&mut self, tp: &Partition, offset: i64, outputs: u32) -> Option<i64> {
        let p = self.pending.entry(tp.clone()).or_default();
        // A message consumed again (the partition came back after a rebalance) while its first
        // outputs are still in flight needs both sets delivered: the counts add up.
        *p.entry(offset).or_insert(0) += outputs;
        if outputs == 0 { Self::drain(p) } else { None }
    }

    /// Acknowledges one delivered output of the message at `offset`. Returns the last offset of
    /// the partition's fully delivered prefix, if it moved.
    pub fn ack(&mut self, tp: &Partition, offset: i64) -> Option<i64> {
        let p = self.pending.get_mut(tp)?;
        if let Some(n) = p.get_mut(&offset) {
            *n = n.saturating_sub(1);
        }
        Self::drain(p)
    }

    fn drain(p: &mut BTreeMap<i64, u32>) -> Option<i64> {
        let mut next = None;
        while let Some((&off, &n)) = p.first_key_value() {
            if n > 0 {
                break;
            }
            p.pop_first();
            next = Some(off);
        }
        next
    }

    /// Messages with outputs still in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.values().map(BTreeMap::len).sum()
    }

    /// Forgets a partition (revoked in a rebalance): its pending work will be redone by the new
    /// owner from the last committed offset.
    pub fn forget(&mut self, tp: &Partition) {
        self.pending.remove(tp);
    }

    /// Drops what is pending below `offset` (an ended ownership's messages, when the partition
    /// comes back starting at `offset`): nothing of the new ownership waits for them.
    pub fn drop_below(&mut self, tp: &Partition, offset: i64) {
        if let Some(p) = self.pending.get_mut(tp) {
            *p = p.split_off(&offset);
        }
    }
}

/// The offsets handed to librdkafka's offset store (which commits them with the next
/// auto-commit): the highest stored per partition, so a store never moves backwards, and those
/// waiting for the next batch.
#[derive(Debug, Default)]
pub struct StoredOffsets {
    ready: HashMap<Partition, i64>,
    stored: HashMap<Partition, i64>,
}

impl StoredOffsets {
    /// Everything up to `offset` of `tp` may be committed.
    pub fn store(&mut self, tp: &Partition, offset: i64) {
        if self.stored.get(tp).is_some_and(|&s| s >= offset) {
            return;
        }
        self.stored.insert(tp.clone(), offset);
        self.ready.insert(tp.clone(), offset);
    }

    /// The offsets stored since the last batch as the list librdkafka stores or commits (the
    /// next offset to read, per partition), emptied; `None` when there are none.
    pub fn take_list(&mut self) -> Option<TopicPartitionList> {
        if self.ready.is_empty() {
            return None;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in self.ready.drain() {
            if let Err(e) = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset + 1)) {
                tracing::warn!(%topic, partition, offset, error = %e, "offset left out of the list");
            }
        }
        Some(tpl)
    }

    /// A partition revoked: what was stored of it is an ended ownership's, and would hold back
    /// the stores of a new one that starts lower.
    pub fn forget(&mut self, tp: &Partition) {
        self.ready.remove(tp);
        self.stored.remove(tp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Partition {
        ("requests".to_string(), p)
    }

    #[test]
    fn stores_only_a_fully_delivered_prefix() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.begin(&tp(0), 10, 2), None);
        assert_eq!(t.begin(&tp(0), 11, 1), None);
        // 11's output arrives first: nothing may be stored, 10 is still pending.
        assert_eq!(t.ack(&tp(0), 11), None);
        assert_eq!(t.ack(&tp(0), 10), None);
        assert_eq!(t.ack(&tp(0), 10), Some(11));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn messages_without_outputs_pass_straight_through_unless_blocked() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.begin(&tp(0), 5, 0), Some(5));
        assert_eq!(t.begin(&tp(0), 6, 1), None);
        assert_eq!(t.begin(&tp(0), 7, 0), None, "blocked behind 6");
        assert_eq!(t.ack(&tp(0), 6), Some(7));
    }

    #[test]
    fn a_redelivered_message_waits_for_both_deliveries() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.begin(&tp(0), 10, 3), None);
        // Consumed again before its first outputs were acknowledged: one more output.
        assert_eq!(t.begin(&tp(0), 10, 1), None);
        for _ in 0..3 {
            assert_eq!(t.ack(&tp(0), 10), None);
        }
        assert_eq!(t.ack(&tp(0), 10), Some(10));
    }

    #[test]
    fn partitions_are_independent_and_can_be_forgotten() {
        let mut t = OffsetTracker::new();
        t.begin(&tp(0), 1, 1);
        assert_eq!(t.begin(&tp(1), 1, 0), Some(1));
        t.forget(&tp(0));
        assert_eq!(t.ack(&tp(0), 1), None);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_store_never_moves_back_until_the_partition_is_forgotten() {
        let mut s = StoredOffsets::default();
        let tp: Partition = ("t".into(), 0);
        let next =
            |s: &mut StoredOffsets| s.take_list().map(|l| l.elements().iter().map(|e| (e.topic().to_string(), e.partition(), e.offset())).collect::<Vec<_>>());
        s.store(&tp, 10);
        s.store(&tp, 7);
        assert_eq!(next(&mut s), Some(vec![("t".to_string(), 0, Offset::Offset(11))]));
        s.store(&tp, 9);
        assert_eq!(next(&mut s), None);
        s.forget(&tp);
        s.store(&tp, 3);
        assert_eq!(next(&mut s), Some(vec![("t".to_string(), 0, Offset::Offset(4))]));
    }
}
