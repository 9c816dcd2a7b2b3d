//! Inputs whose outputs keep failing: after `kafka.quarantine_after` restarts in a row caused
//! by the same input (an output of it the producer or the broker failed for a reason no other
//! rule handles), that input is quarantined: the next time it comes it goes to the DLQ
//! (`quarantined`) instead of being processed, and its partition goes on. Without this, one such
//! record would restart the pipeline for ever, each time from the same uncommitted offset.
//!
//! The supervisor in `apps/run.rs` feeds it the input named by each restart's error; the shell
//! asks it about every input. It is kept across restarts (the pipeline's state is not), bounded
//! by `MAX_HELD`, oldest first out.

use std::collections::{HashMap, VecDeque};

use crate::kafka::offsets::Partition;

/// The most quarantined inputs remembered: beyond it the oldest is forgotten (its partition has
/// long moved past it, or the same failure quarantines it again).
pub const MAX_HELD: usize = 10_000;

/// Quarantined inputs, and the run of failures that leads to the next one.
#[derive(Debug)]
pub struct Quarantine {
    after: u32,
    /// The input the last restarts named, and how many in a row.
    streak: Option<((Partition, i64), u32)>,
    /// Quarantined input → why (the last error).
    held: HashMap<(Partition, i64), String>,
    order: VecDeque<(Partition, i64)>,
}

impl Quarantine {
    /// Quarantines an input after it caused `after` restarts in a row (at least 1).
    pub fn new(after: u32) -> Self {
        Quarantine { after: after.max(1), streak: None, held: HashMap::new(), order: VecDeque::new() }
    }

    /// A restart, caused by an output of `input` (none: not tied to one input, which neither
    /// counts nor breaks a run). Returns true when this quarantines `input`.
    pub fn failed(&mut self, input: Option<&(Partition, i64)>, error: &str) -> bool {
        let Some(input) = input else { return false };
        let n = match &mut self.streak {
            Some((last, n)) if last == input => {
                *n += 1;
                *n
            }
            _ => {
                self.streak = Some((input.clone(), 1));
                1
            }
        };
        if n < self.after || self.held.contains_key(input) {
            return false;
        }
        self.streak = None;
        if self.order.len() >= MAX_HELD
            && let Some(oldest) = self.order.pop_front()
        {
            self.held.remove(&oldest);
        }
        self.order.push_back(input.clone());
        self.held.insert(input.clone(), error.to_string());
        true
    }

    /// Why `offset` of `tp` is quarantined, if it is.
    pub fn reason(&self, tp: &Partition, offset: i64) -> Option<&str> {
        if self.held.is_empty() {
            return None;
        }
        self.held.get(&(tp.clone(), offset)).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// How many restarts in a row quarantine an input.
    pub fn after(&self) -> u32 {
        self.after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(p: i32, o: i64) -> (Partition, i64) {
        (("requests".to_string(), p), o)
    }

    #[test]
    fn the_same_input_failing_n_times_in_a_row_is_quarantined() {
        let mut q = Quarantine::new(3);
        let a = input(0, 7);
        assert!(!q.failed(Some(&a), "e1"));
        assert!(!q.failed(Some(&a), "e2"));
        assert_eq!(q.reason(&a.0, a.1), None);
        assert!(q.failed(Some(&a), "e3"));
        assert_eq!(q.reason(&a.0, a.1), Some("e3"));
        assert_eq!(q.reason(&a.0, 8), None);
        assert_eq!(q.len(), 1);
        // Already held: a further failure quarantines nothing new.
        assert!(!q.failed(Some(&a), "e4"));
        assert!(!q.failed(Some(&a), "e5"));
        assert!(!q.failed(Some(&a), "e6"));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn another_input_breaks_the_run() {
        let mut q = Quarantine::new(2);
        let (a, b) = (input(0, 7), input(1, 7));
        assert!(!q.failed(Some(&a), "e"));
        assert!(!q.failed(Some(&b), "e"));
        assert!(!q.failed(Some(&a), "e"));
        // A failure tied to no input neither counts nor breaks the run.
        assert!(!q.failed(None, "e"));
        assert!(q.failed(Some(&a), "e"));
        assert!(q.reason(&b.0, b.1).is_none());
    }

    #[test]
    fn one_failure_is_enough_with_after_1_and_0_means_1() {
        let mut q = Quarantine::new(0);
        assert_eq!(q.after(), 1);
        assert!(q.failed(Some(&input(2, 1)), "e"));
    }

    #[test]
    fn the_oldest_is_forgotten_beyond_the_cap() {
        let mut q = Quarantine::new(1);
        for o in 0..=MAX_HELD as i64 {
            assert!(q.failed(Some(&input(0, o)), "e"));
        }
        assert_eq!(q.len(), MAX_HELD);
        assert!(q.reason(&input(0, 0).0, 0).is_none());
        assert!(q.reason(&input(0, 1).0, 1).is_some());
        assert!(q.reason(&input(0, MAX_HELD as i64).0, MAX_HELD as i64).is_some());
    }
}
