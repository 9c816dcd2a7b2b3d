//! `POST /v1/decide` is idempotent by request id: a caller that sends a request again (it timed
//! out, the connection dropped) gets the decision it was given the first time, and the limiter
//! counts the request once. The same id for the same user with another tier, request type or
//! cost is a mistake, refused (as the IETF's Idempotency-Key draft answers a reused key with a
//! different payload).
//!
//! Pure: the caller passes the time. A decision is remembered for `window` or until `capacity`
//! newer ones push it out, whichever comes first. Each instance remembers its own decisions only
//! (a user's decisions come from the instance owning the user's partition; after a rebalance the
//! new owner has not seen the old one's).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use compact_str::CompactString;

use crate::events::RequestEvent;
use crate::outputs::Decision;
use crate::time::Millis;

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

/// The API's recent decisions by (user, request id). `window_ms` 0 or `capacity` 0 turns it off.
#[derive(Debug, Default)]
pub struct RecentDecisions {
    window_ms: i64,
    capacity: usize,
    by_key: HashMap<Arc<str>, Entry, ahash::RandomState>,
    /// Keys in the order they were decided, each with its time: the oldest go first.
    order: VecDeque<(Millis, Arc<str>)>,
    /// The key being looked up, built here so a lookup allocates nothing.
    scratch: String,
}

impl RecentDecisions {
    pub fn new(window_s: u32, capacity: usize) -> Self {
        RecentDecisions { window_ms: i64::from(window_s) * 1000, capacity, ..Self::default() }
    }

    fn on(&self) -> bool {
        self.window_ms > 0 && self.capacity > 0
    }

    /// `len:user` then the id: the user's length makes the split unambiguous, whatever the
    /// strings hold.
    fn key_into(scratch: &mut String, user_id: &str, id: &str) {
        use std::fmt::Write;
        scratch.clear();
        let _ = write!(scratch, "{}:{user_id}{id}", user_id.len());
    }

    /// Forgets what is older than the window at `now`, and what is over capacity.
    fn expire(&mut self, now: Millis) {
        while let Some((at, _)) = self.order.front() {
            let old = now.0 - at.0 >= self.window_ms;
            if !old && self.order.len() <= self.capacity {
                break;
            }
            if let Some((at, key)) = self.order.pop_front()
                && self.by_key.get(&key).is_some_and(|e| e.at == at)
            {
                self.by_key.remove(&key);
            }
        }
    }

    /// Whether `ev` (its user and id) was decided within the window before `now`.
    pub fn seen(&mut self, ev: &RequestEvent, now: Millis) -> Seen<'_> {
        if !self.on() || ev.id.is_empty() {
            return Seen::New;
        }
        self.expire(now);
        Self::key_into(&mut self.scratch, &ev.user_id, &ev.id);
        match self.by_key.get(self.scratch.as_str()) {
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
        let key: Arc<str> = self.scratch.as_str().into();
        let entry = Entry { at: now, tier: ev.tier.clone(), request_type: ev.request_type.clone(), cost: ev.cost, decision: decision.clone() };
        self.by_key.insert(key.clone(), entry);
        self.order.push_back((now, key));
        self.expire(now);
    }

    /// Decisions remembered now.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::DecisionKind;
    use crate::topology::Topology;

    fn request(id: &str, user: &str, ts: i64) -> RequestEvent {
        RequestEvent { id: id.into(), ts: Millis(ts), user_id: user.into(), tier: "free".into(), request_type: "standard".into(), cost: 1 }
    }

    /// A real decision for `ev`, from the default config's limiter.
    fn decided(ev: &RequestEvent) -> Decision {
        let mut t = Topology::new(Arc::new(crate::config::Config::default()));
        let mut outs = Vec::new();
        t.process(crate::events::InputEvent::Request(ev.clone()), &mut outs);
        outs.into_iter()
            .find_map(|o| match o {
                crate::outputs::Output::Decision(d) => Some(d),
                _ => None,
            })
            .expect("a decision")
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
        // Another user's request with the same id is another request.
        assert_eq!(r.seen(&request("r1", "u2", 31_000), Millis(31_000)), Seen::New);
        assert_eq!(r.seen(&request("r2", "u1", 31_000), Millis(31_000)), Seen::New);
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
    fn decisions_are_forgotten_after_the_window_or_beyond_capacity() {
        let mut r = RecentDecisions::new(60, 3);
        let evs: Vec<_> = (0..4).map(|i| request(&format!("r{i}"), "u", 1_000 * i)).collect();
        let d = decided(&evs[0]);
        for (i, ev) in evs.iter().take(3).enumerate() {
            r.remember(ev, &d, Millis(1_000 * i as i64));
        }
        assert!(matches!(r.seen(&evs[0], Millis(59_999)), Seen::Again(_)));
        // 60 s after r0: r0 is gone, r1 (decided at 1 s) is not.
        assert_eq!(r.seen(&evs[0], Millis(60_000)), Seen::New);
        assert!(matches!(r.seen(&evs[1], Millis(60_000)), Seen::Again(_)));
        assert_eq!(r.len(), 2);
        // Capacity 3: two more push r1 out.
        r.remember(&evs[3], &d, Millis(60_000));
        r.remember(&request("r4", "u", 0), &d, Millis(60_000));
        assert_eq!(r.len(), 3);
        assert_eq!(r.seen(&evs[1], Millis(60_000)), Seen::New);
    }

    #[test]
    fn a_decision_remembered_again_after_expiry_is_not_lost_to_its_old_place_in_line() {
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
        let anonymous = request("", "u", 0);
        r.remember(&anonymous, &d, Millis(0));
        assert_eq!(r.seen(&anonymous, Millis(1)), Seen::New);
    }
}
