//! `POST /v1/decide` is idempotent by request id: a caller that sends a request again (it timed
//! out, the connection dropped) gets the decision it was given the first time, and the limiter
//! counts the request once. The same id for the same user with another tier, request type or
//! cost is a mistake, refused (as the IETF's Idempotency-Key draft answers a reused key with a
//! different payload).
//!
//! Pure: the caller passes the time. A decision is remembered for `window` unless half the
//! `capacity` of newer ones came first (`RecentDecisions` says why halves). Each instance
//! remembers its own decisions only (a user's decisions come from the instance owning the user's
//! partition; after a rebalance the new owner has not seen the old one's).

use std::collections::HashMap;

use compact_str::CompactString;

use crate::wire::events::RequestEvent;
use crate::wire::outputs::Decision;
use crate::wire::time::Millis;

/// What a request id is looked up to.
#[derive(Debug, PartialEq)]
pub enum Seen<'a> {
    /// Not decided within the window: decide it.
    New,
    /// Decided before: answer this again, count nothing, publish nothing.
    Again(&'a Decision),
    /// Decided before for another tier, request type or cost.
    Conflict,
}

#[derive(Debug)]
struct Entry {
    at: Millis,
    tier: CompactString,
    request_type: CompactString,
    cost: u32,
    decision: Decision,
}

/// The decisions of one stretch of time. Emptied whole and refilled: the map neither rehashes
/// for deletions nor grows (it is sized for a full generation once), and its memory is reused.
#[derive(Debug, Default)]
struct Generation {
    started: Millis,
    by_key: HashMap<Box<str>, Entry, ahash::RandomState>,
    /// What its entries hold, estimated (`entry_bytes`).
    bytes: usize,
}

/// The memory one remembered decision takes, estimated: the slot, the key, and the strings the
/// entry and its decision hold (ids, tier and request-type names, each bounded by `[limits]`).
fn entry_bytes(key: &str, ev: &RequestEvent) -> usize {
    const SLOT: usize = std::mem::size_of::<(Box<str>, Entry)>() + 16;
    let strings = ev.user_id.len() + ev.id.len() + 2 * (ev.tier.len() + ev.request_type.len());
    SLOT + key.len() + strings
}

/// The API's recent decisions by (user, request id), in two generations: new decisions go into
/// the current one; when it holds half the capacity or is a window old, it becomes the previous
/// one, and the previous one is emptied to be the next current one. So a decision is remembered
/// for the window unless half the capacity of newer ones came first, and no more than the
/// capacity (rounded up to even) is held, without a per-decision eviction. The two tables are
/// reused rather than allocated anew: a table that is still being filled for the first time was
/// the slowest variant in `scripts/bench-decide` (BENCHMARKS.md; page faults under the
/// pipeline's lock are the likely cause, not measured). `window_s` 0 or `capacity` 0 turns it off.
/// A generation also turns over once it holds half of `max_bytes` (`with_max_bytes`), so long ids
/// cannot make the table outgrow its byte budget at the count cap.
#[derive(Debug, Default)]
pub struct RecentDecisions {
    window_ms: i64,
    per_generation: usize,
    bytes_per_generation: usize,
    current: Generation,
    previous: Generation,
    /// The key being looked up, built here so a lookup allocates nothing.
    scratch: String,
}

impl RecentDecisions {
    pub fn new(window_s: u32, capacity: usize) -> Self {
        let per_generation = if capacity == 0 { 0 } else { capacity.div_ceil(2) };
        RecentDecisions { window_ms: i64::from(window_s) * 1000, per_generation, bytes_per_generation: usize::MAX, ..Self::default() }
    }

    /// At most about `max_bytes` held (two generations of half of it each).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.bytes_per_generation = max_bytes.div_ceil(2).max(1);
        self
    }

    /// What the remembered decisions take, estimated.
    pub fn bytes(&self) -> usize {
        self.current.bytes + self.previous.bytes
    }

    fn on(&self) -> bool {
        self.window_ms > 0 && self.per_generation > 0
    }

    /// `len:user` then the id: the user's length makes the split unambiguous, whatever the
    /// strings hold.
    fn key_into(scratch: &mut String, user_id: &str, id: &str) {
        use std::fmt::Write;
        scratch.clear();
        let _ = write!(scratch, "{}:{user_id}{id}", user_id.len());
    }

    /// Whether `ev` (its user and id) was decided within the window before `now`.
    pub fn seen(&mut self, ev: &RequestEvent, now: Millis) -> Seen<'_> {
        if !self.on() || ev.id.is_empty() {
            return Seen::New;
        }
        Self::key_into(&mut self.scratch, &ev.user_id, &ev.id);
        let key = self.scratch.as_str();
        let found = self.current.by_key.get(key).or_else(|| self.previous.by_key.get(key));
        match found {
            Some(e) if now.0 - e.at.0 >= self.window_ms => Seen::New,
            None => Seen::New,
            Some(e) if e.tier == ev.tier && e.request_type == ev.request_type && e.cost == ev.cost => Seen::Again(&e.decision),
            Some(_) => Seen::Conflict,
        }
    }

    /// Remembers the decision made for `ev` at `now`.
    pub fn remember(&mut self, ev: &RequestEvent, decision: &Decision, now: Millis) {
        if !self.on() || ev.id.is_empty() {
            return;
        }
        Self::key_into(&mut self.scratch, &ev.user_id, &ev.id);
        let bytes = entry_bytes(&self.scratch, ev);
        let full = self.current.by_key.len() >= self.per_generation || self.current.bytes + bytes > self.bytes_per_generation;
        let old = now.0 - self.current.started.0 >= self.window_ms;
        if full || old || self.current.by_key.capacity() == 0 {
            let mut next = std::mem::take(&mut self.previous);
            next.by_key.clear();
            next.bytes = 0;
            if next.by_key.capacity() < self.per_generation {
                next.by_key = HashMap::with_capacity_and_hasher(self.per_generation, ahash::RandomState::new());
            }
            next.started = now;
            self.previous = std::mem::replace(&mut self.current, next);
        }
        let entry = Entry { at: now, tier: ev.tier.clone(), request_type: ev.request_type.clone(), cost: ev.cost, decision: decision.clone() };
        if self.current.by_key.insert(self.scratch.as_str().into(), entry).is_none() {
            self.current.bytes += bytes;
        }
    }

    /// Forgets every decision (their counts were lost with the partitions' state: a retry must
    /// count again).
    pub fn clear(&mut self) {
        self.current.by_key.clear();
        self.previous.by_key.clear();
        (self.current.bytes, self.previous.bytes) = (0, 0);
    }

    /// Decisions held now (some may be past the window, not yet dropped).
    pub fn len(&self) -> usize {
        self.current.by_key.len() + self.previous.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::topology::Topology;
    use crate::wire::outputs::DecisionKind;

    fn request(id: &str, user: &str, ts: i64) -> RequestEvent {
        RequestEvent { id: id.into(), ts: Millis(ts), user_id: user.into(), tier: "free".into(), request_type: "standard".into(), cost: 1 }
    }

    /// A real decision for `ev`, from the default config's limiter.
    fn decided(ev: &RequestEvent) -> Decision {
        let mut t = Topology::new(std::sync::Arc::new(crate::config::Config::default()));
        let mut outs = Vec::new();
        t.process(crate::wire::events::InputEvent::Request(ev.clone()), &mut outs);
        outs.into_iter()
            .find_map(|o| match o {
                crate::wire::outputs::Output::Decision(d) => Some(d),
                _ => None,
            })
            .expect("a decision")
    }

    #[test]
    fn long_ids_turn_generations_over_by_bytes() {
        // Count cap 100 000, byte budget 1 MB: with ids and users of 256 bytes each entry is
        // over a kilobyte, so bytes, not the count, bound the table.
        let mut r = RecentDecisions::new(3600, 100_000).with_max_bytes(1_000_000);
        let d = decided(&request("x", "u", 0));
        for i in 0..10_000 {
            let ev = request(&format!("{i:0>256}"), &format!("{i:u>256}"), i);
            r.remember(&ev, &d, Millis(i));
            assert!(r.bytes() <= 1_000_000, "{} bytes after {i}", r.bytes());
        }
        assert!(r.len() < 2_000, "{} held", r.len());
        // The newest are remembered.
        let last = request(&format!("{:0>256}", 9_999), &format!("{:u>256}", 9_999), 9_999);
        assert_eq!(r.seen(&last, Millis(10_000)), Seen::Again(&d));
        r.clear();
        assert_eq!((r.len(), r.bytes()), (0, 0));
    }

    #[test]
    fn a_request_sent_again_gets_its_first_decision() {
        let mut r = RecentDecisions::new(60, 100);
        let ev = request("r1", "u1", 1_000);
        assert_eq!(r.seen(&ev, Millis(1_000)), Seen::New);
        let d = decided(&ev);
        assert_eq!(d.decision, DecisionKind::Allow);
        r.remember(&ev, &d, Millis(1_000));
        // Sent again 30 s on, with its original time or any other: the same decision.
        let again = request("r1", "u1", 31_000);
        assert_eq!(r.seen(&again, Millis(31_000)), Seen::Again(&d));
        // Another user's request with the same id is another request, and so is another id.
        assert_eq!(r.seen(&request("r1", "u2", 31_000), Millis(31_000)), Seen::New);
        assert_eq!(r.seen(&request("r2", "u1", 31_000), Millis(31_000)), Seen::New);
        // Keys do not run together: user "u" with id "1r1" is not user "u1" with id "r1".
        assert_eq!(r.seen(&request("1r1", "u", 31_000), Millis(31_000)), Seen::New);
    }

    #[test]
    fn the_same_id_for_another_request_is_a_conflict() {
        let mut r = RecentDecisions::new(60, 100);
        let ev = request("r1", "u1", 1_000);
        r.remember(&ev, &decided(&ev), Millis(1_000));
        for other in [
            RequestEvent { cost: 5, ..ev.clone() },
            RequestEvent { tier: "pro".into(), ..ev.clone() },
            RequestEvent { request_type: "ai_inference".into(), ..ev.clone() },
        ] {
            assert_eq!(r.seen(&other, Millis(2_000)), Seen::Conflict, "{other:?}");
        }
    }

    #[test]
    fn half_the_capacity_of_newer_decisions_pushes_a_generation_out() {
        // Capacity 4: generations of 2.
        let mut r = RecentDecisions::new(60, 4);
        let evs: Vec<_> = (0..5).map(|i| request(&format!("r{i}"), "u", 0)).collect();
        let d = decided(&evs[0]);
        let again = |r: &mut RecentDecisions, i: usize, at: i64| matches!(r.seen(&evs[i], Millis(at)), Seen::Again(_));
        r.remember(&evs[0], &d, Millis(0));
        r.remember(&evs[1], &d, Millis(1_000));
        assert!(again(&mut r, 0, 59_999));
        assert!(!again(&mut r, 0, 60_000), "a window old");
        // r2 starts a new generation; r0 and r1 are still there.
        r.remember(&evs[2], &d, Millis(2_000));
        assert!(again(&mut r, 0, 3_000) && again(&mut r, 1, 3_000));
        r.remember(&evs[3], &d, Millis(3_000));
        // r4 starts the next: r0 and r1 go, r2 and r3 stay.
        r.remember(&evs[4], &d, Millis(4_000));
        assert!(!again(&mut r, 0, 5_000) && !again(&mut r, 1, 5_000));
        assert!(again(&mut r, 2, 5_000) && again(&mut r, 3, 5_000) && again(&mut r, 4, 5_000));
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn a_generation_a_window_old_is_retired_and_what_it_holds_expires() {
        let mut r = RecentDecisions::new(10, 1_000);
        let (a, b, c) = (request("a", "u", 0), request("b", "u", 0), request("c", "u", 0));
        let d = decided(&a);
        r.remember(&a, &d, Millis(0));
        // The first generation is a window old: b starts the next.
        r.remember(&b, &d, Millis(10_000));
        assert_eq!(r.seen(&a, Millis(10_000)), Seen::New);
        assert!(matches!(r.seen(&b, Millis(19_999)), Seen::Again(_)));
        r.remember(&c, &d, Millis(20_000));
        assert_eq!(r.seen(&b, Millis(20_000)), Seen::New);
        assert_eq!(r.len(), 2, "a dropped with its generation");
    }

    #[test]
    fn a_decision_remembered_again_after_expiry_is_found() {
        let mut r = RecentDecisions::new(10, 10);
        let ev = request("r1", "u", 0);
        let d = decided(&ev);
        r.remember(&ev, &d, Millis(0));
        // Expired at 10 s, decided again (a new request as far as the limiter knows).
        assert_eq!(r.seen(&ev, Millis(10_000)), Seen::New);
        r.remember(&ev, &d, Millis(10_000));
        assert!(matches!(r.seen(&ev, Millis(19_999)), Seen::Again(_)));
    }

    #[test]
    fn off_and_without_ids_nothing_is_remembered() {
        let ev = request("r1", "u", 0);
        let d = decided(&ev);
        for mut r in [RecentDecisions::new(0, 10), RecentDecisions::new(10, 0)] {
            r.remember(&ev, &d, Millis(0));
            assert_eq!(r.seen(&ev, Millis(1)), Seen::New);
            assert!(r.is_empty());
        }
        let mut r = RecentDecisions::new(10, 10);
        r.remember(&ev, &d, Millis(0));
        r.clear();
        assert_eq!(r.seen(&ev, Millis(1)), Seen::New, "cleared");
        let anonymous = request("", "u", 0);
        r.remember(&anonymous, &d, Millis(0));
        assert_eq!(r.seen(&anonymous, Millis(1)), Seen::New);
    }
}
