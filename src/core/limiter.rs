//! Per-user quota check in event time: a conservative sliding window over sub-buckets, plus a
//! grace allowance with its own window.
//!
//! The window (`limiter.window_s`, 60 s by default) is split into six sub-buckets; a request at
//! time t is checked against the cost counted in the current bucket and the six before it, a span
//! that always covers (t − window, t]. So in *any* window-long interval a user never gets more
//! than `limit` quota units allowed, however requests are timed: the guarantee GCRA or a
//! two-window estimate cannot give (GCRA admits up to twice its rate in a sliding window). The
//! price is that usage is forgotten up to one sub-bucket (10 s) later than an exact log would.
//! Grace works the same way over halves of its grace window: the current half and the two
//! before it always cover the grace window, so graced units in any grace window never exceed the
//! allowance (grace is forgotten up to half a grace window late). See the README, "How the
//! limiter counts".
//!
//! State is 52 bytes per (user, request type) (64 with its key, as stored), keyed by a keyed 64-bit hash of both (collisions
//! are negligible and cannot be crafted without the per-process key). Time only moves forward
//! per key: an event older than the user's newest is counted as of the newest. The limiter holds
//! no clock: `now` is the event's time.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use crate::wire::outputs::DecisionKind;
use crate::wire::time::Millis;

/// Sub-buckets per window.
pub const SUB_BUCKETS: u32 = 6;
const SLOTS: usize = SUB_BUCKETS as usize + 1;

/// The quota that applies to one request: its tier's and request type's current limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Units allowed per window.
    pub limit: u32,
    /// Extra units allowed per grace window once the limit is reached.
    pub grace_allowance: u32,
    pub grace_window_ms: i64,
}

/// The limiter's answer; the shell turns it into a `Decision`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub kind: DecisionKind,
    /// Units still available in the window after this request.
    pub remaining: u32,
    /// Seconds until the window's usage has fully expired, if no more requests come.
    pub reset_s: u64,
    /// Share of the grace allowance used in the current grace span, when grace was drawn on or
    /// the request was throttled (none when the tier has no grace allowance).
    pub grace_used: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct UserState {
    /// Units counted per sub-bucket, a ring indexed by bucket number modulo `SLOTS`.
    counts: [u32; SLOTS],
    /// Number of the newest bucket this key has seen (wrapping; differences are what matter).
    head: u32,
    /// Grace units used in the current half grace window and in the two before it.
    grace_cur: u32,
    grace_prev: u32,
    grace_prev2: u32,
    /// Number of the current half grace window (wrapping).
    grace_half: u32,
    /// Length of the half grace windows the numbers above count in, in ms (tiers differ).
    grace_half_ms: u32,
}

/// One key's state as the changelog topic carries it. Bucket and half-window numbers are absolute
/// (event time divided by their length, wrapped to 32 bits), so the state means the same in any
/// process with the same window config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub bucket_ms: i64,
    pub head: u32,
    pub counts: [u32; SLOTS],
    /// Grace units of the current half grace window and of the two before it.
    pub grace: [u32; 3],
    pub grace_half: u32,
    pub grace_half_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("state counted in {saved} ms buckets, but the window now has {current} ms buckets")]
    Window { saved: i64, current: i64 },
}

/// Hashes a key that is already a keyed 64-bit hash: pass it through.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Per-user sliding-window limiter over all users of one processor.
pub struct Limiter {
    bucket_ms: i64,
    evict_after_ms: i64,
    users: HashMap<u64, UserState, BuildHasherDefault<PassThrough>>,
    keys: ahash::RandomState,
    /// The most keys tracked (`with_cap`): a new key at the cap first displaces the least
    /// recently seen eighth.
    max_keys: usize,
    /// Keys dropped to make room at the cap (not idle: the time rule had kept them).
    pub displaced: u64,
}

impl Limiter {
    /// `window_s`: the quota window; `evict_idle_after_s`: forget users idle this long.
    pub fn new(window_s: u32, evict_idle_after_s: u32) -> Self {
        let window_ms = i64::from(window_s.max(1)) * 1000;
        Limiter {
            // Round up so that SUB_BUCKETS buckets always span at least the window.
            bucket_ms: (window_ms + i64::from(SUB_BUCKETS) - 1) / i64::from(SUB_BUCKETS),
            evict_after_ms: i64::from(evict_idle_after_s) * 1000,
            users: HashMap::default(),
            keys: ahash::RandomState::new(),
            max_keys: usize::MAX,
            displaced: 0,
        }
    }

    /// At most `max_keys` (user, request type) keys: beyond the time rule (`sweep`), a new key
    /// at the cap first displaces the eighth of the keys seen least recently (by the bucket of
    /// their newest request; among keys of one bucket, which go is unspecified). Their users
    /// start again with a fresh quota and grace: the cap bounds memory, at that price.
    pub fn with_cap(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// Makes room for one new key at bucket `idx` when the cap is reached (amortised: one pass
    /// over the keys every `max_keys / 8` new ones).
    fn make_room(&mut self, idx: u32) {
        let evict = (self.max_keys / 8).clamp(1, self.users.len());
        let age = |st: &UserState| idx.wrapping_sub(st.head) as i32;
        let mut ages: Vec<i32> = self.users.values().map(age).collect();
        let (_, &mut threshold, _) = ages.select_nth_unstable_by(evict - 1, |a, b| b.cmp(a));
        let mut ties = evict - ages.iter().filter(|&&a| a > threshold).count();
        self.users.retain(|_, st| {
            let a = age(st);
            if a > threshold {
                return false;
            }
            if a == threshold && ties > 0 {
                ties -= 1;
                return false;
            }
            true
        });
        self.displaced += evict as u64;
    }

    /// Whether a new key `key` at bucket `idx` needs room made first (checked before every insert).
    fn room_for(&mut self, key: u64, idx: u32) {
        if self.users.len() >= self.max_keys && !self.users.contains_key(&key) {
            self.make_room(idx);
        }
    }

    /// Number of (user, request type) keys tracked.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Bytes of one map slot (key and state), excluding the map's control bytes and spare room.
    pub const fn state_bytes() -> usize {
        std::mem::size_of::<(u64, UserState)>()
    }

    fn key(&self, user_id: &str, request_type: u16) -> u64 {
        self.keys.hash_one((user_id, request_type))
    }

    /// Checks one request of `cost` units at event time `now` against `quota`, and counts it if
    /// it is let through.
    pub fn check(&mut self, user_id: &str, request_type: u16, now: Millis, cost: u32, quota: Quota) -> Verdict {
        let key = self.key(user_id, request_type);
        let (idx, half, half_ms) = self.numbers(now, quota);
        self.room_for(key, idx);
        let st = self.users.entry(key).or_insert_with(|| UserState { head: idx, grace_half: half, grace_half_ms: half_ms as u32, ..UserState::default() });
        decide(st, self.bucket_ms, idx, half, half_ms, now, cost, quota)
    }

    /// The bucket number, the half grace window's number and its length at `now`.
    fn numbers(&self, now: Millis, quota: Quota) -> (u32, u32, i64) {
        let idx = now.0.div_euclid(self.bucket_ms) as u32;
        // Half grace windows, rounded up so that two of them always span the grace window.
        let half_ms = ((quota.grace_window_ms + 1) / 2).clamp(1, i64::from(u32::MAX));
        // Both numbers start at the key's first event: they wrap, so only differences are
        // meaningful (a grace half starting at 0 was "in the future" for half numbers ≥ 2^31,
        // i.e. with grace windows under ~1.7 s, and grace then never came back).
        let half = now.0.div_euclid(half_ms) as u32;
        (idx, half, half_ms)
    }

    /// One key's state, for the changelog (`None` when the key is not tracked).
    pub fn export(&self, user_id: &str, request_type: u16) -> Option<SavedState> {
        let st = self.users.get(&self.key(user_id, request_type))?;
        Some(SavedState {
            bucket_ms: self.bucket_ms,
            head: st.head,
            counts: st.counts,
            grace: [st.grace_cur, st.grace_prev, st.grace_prev2],
            grace_half: st.grace_half,
            grace_half_ms: st.grace_half_ms,
        })
    }

    /// Puts back a key's state from the changelog, replacing what is tracked for it. Refused
    /// when it was counted in buckets of another length (the window changed in between).
    pub fn import(&mut self, user_id: &str, request_type: u16, saved: &SavedState) -> Result<(), ImportError> {
        if saved.bucket_ms != self.bucket_ms {
            return Err(ImportError::Window { saved: saved.bucket_ms, current: self.bucket_ms });
        }
        let [grace_cur, grace_prev, grace_prev2] = saved.grace;
        let st = UserState {
            counts: saved.counts,
            head: saved.head,
            grace_cur,
            grace_prev,
            grace_prev2,
            grace_half: saved.grace_half,
            grace_half_ms: saved.grace_half_ms,
        };
        let key = self.key(user_id, request_type);
        self.room_for(key, saved.head);
        self.users.insert(key, st);
        Ok(())
    }

    /// The verdict `check` would give, without counting anything: for a request the state
    /// already counted (one processed again after a restart, whose effect the restored state
    /// holds).
    pub fn peek(&self, user_id: &str, request_type: u16, now: Millis, cost: u32, quota: Quota) -> Verdict {
        let (idx, half, half_ms) = self.numbers(now, quota);
        let mut st = self.users.get(&self.key(user_id, request_type)).copied().unwrap_or(UserState {
            head: idx,
            grace_half: half,
            grace_half_ms: half_ms as u32,
            ..UserState::default()
        });
        decide(&mut st, self.bucket_ms, idx, half, half_ms, now, cost, quota)
    }

    /// Counts a request as it was decided before (`kind`), whatever `check` would say now: for a
    /// request processed again after a crash whose first decision is in the decisions topic but
    /// not in the restored state. `check`'s verdicts, counted this way on the state it started
    /// from, leave the state `check` left.
    pub fn count_as(&mut self, user_id: &str, request_type: u16, now: Millis, cost: u32, quota: Quota, kind: DecisionKind) -> Verdict {
        let key = self.key(user_id, request_type);
        let (idx, half, half_ms) = self.numbers(now, quota);
        self.room_for(key, idx);
        let st = self.users.entry(key).or_insert_with(|| UserState { head: idx, grace_half: half, grace_half_ms: half_ms as u32, ..UserState::default() });
        count(st, self.bucket_ms, idx, half, half_ms, now, cost, quota, kind)
    }

    /// Forgets keys idle for `evict_idle_after_s` as of `now`; returns how many were dropped.
    pub fn sweep(&mut self, now: Millis) -> usize {
        let before = self.users.len();
        let bucket_ms = self.bucket_ms;
        let idx = now.0.div_euclid(bucket_ms) as u32;
        let into_bucket = now.0.rem_euclid(bucket_ms);
        let evict_after_ms = self.evict_after_ms;
        // A key's newest request came before the end of its head bucket, so it has been idle at
        // least this long; only then may its usage (and grace) be forgotten. Counting whole
        // buckets from the head instead forgot users up to two buckets early, while their usage
        // was still inside the window (or the grace window).
        self.users.retain(|_, st| {
            let buckets_since = i64::from(idx.wrapping_sub(st.head) as i32);
            let idle_at_least_ms = (buckets_since - 1) * bucket_ms + into_bucket;
            idle_at_least_ms < evict_after_ms
        });
        before - self.users.len()
    }

    /// Test support: whether the key is tracked.
    pub fn tracks(&self, user_id: &str, request_type: u16) -> bool {
        let key = self.key(user_id, request_type);
        self.users.contains_key(&key)
    }

    /// Makes room for `additional` more keys (benchmarks size the map up front).
    pub fn reserve(&mut self, additional: usize) {
        self.users.reserve(additional);
    }
}

/// The sliding-window check on one key's state (see `Limiter::check`).
#[allow(clippy::too_many_arguments)]
fn decide(st: &mut UserState, bucket_ms: i64, idx: u32, half: u32, half_ms: i64, now: Millis, cost: u32, quota: Quota) -> Verdict {
    advance_ring(st, idx);
    let used: u64 = st.counts.iter().map(|&c| u64::from(c)).sum();
    let limit = u64::from(quota.limit);
    let cost64 = u64::from(cost);

    // A request larger than the whole limit is never let through, not even on grace.
    if cost64 > limit {
        let reset_s = reset_secs(st, now, bucket_ms);
        return Verdict { kind: DecisionKind::Throttle, remaining: limit.saturating_sub(used) as u32, reset_s, grace_used: None };
    }
    if used + cost64 <= limit {
        let slot = &mut st.counts[(st.head as usize) % SLOTS];
        *slot = slot.saturating_add(cost);
        let remaining = (limit - used - cost64) as u32;
        let reset_s = reset_secs(st, now, bucket_ms);
        return Verdict { kind: DecisionKind::Allow, remaining, reset_s, grace_used: None };
    }

    // Over the limit: try the grace allowance, counted over the current half grace window and
    // the two before it, a span that always covers (t − grace window, t].
    advance_grace(st, half, half_ms);
    let grace_used = u64::from(st.grace_cur) + u64::from(st.grace_prev) + u64::from(st.grace_prev2);
    let allowance = u64::from(quota.grace_allowance);
    let remaining = limit.saturating_sub(used) as u32;
    let reset_s = reset_secs(st, now, bucket_ms);
    // No allowance, no share to report (a tier without grace is not "running out" of it).
    let share = |units: u64| (allowance > 0).then(|| (units as f64 / allowance as f64).min(1.0));
    if grace_used + cost64 <= allowance {
        st.grace_cur = st.grace_cur.saturating_add(cost);
        return Verdict { kind: DecisionKind::AllowWithGrace, remaining, reset_s, grace_used: share(grace_used + cost64) };
    }
    Verdict { kind: DecisionKind::Throttle, remaining, reset_s, grace_used: share(grace_used) }
}

/// Moves the ring to bucket `idx` (never backwards), clearing the buckets that fell out.
fn advance_ring(st: &mut UserState, idx: u32) {
    let ahead = idx.wrapping_sub(st.head) as i32;
    if ahead > 0 {
        for k in 1..=ahead.min(SLOTS as i32) as u32 {
            st.counts[(st.head.wrapping_add(k) as usize) % SLOTS] = 0;
        }
        st.head = idx;
    }
}

/// Moves the grace halves to half window `half` of length `half_ms` (never backwards).
fn advance_grace(st: &mut UserState, half: u32, half_ms: i64) {
    if st.grace_half_ms != half_ms as u32 {
        // The user's tier (and so its grace window) changed: the half numbers were counted on
        // another scale. Keep all grace used so far, counted as the previous half of the new
        // scale, so it goes on counting for at least half a new grace window.
        st.grace_prev = st.grace_cur.saturating_add(st.grace_prev).saturating_add(st.grace_prev2);
        st.grace_cur = 0;
        st.grace_prev2 = 0;
        st.grace_half = half;
        st.grace_half_ms = half_ms as u32;
    }
    let ahead = half.wrapping_sub(st.grace_half) as i32;
    if ahead > 0 {
        let (cur, prev) = (st.grace_cur, st.grace_prev);
        st.grace_prev2 = match ahead {
            1 => prev,
            2 => cur,
            _ => 0,
        };
        st.grace_prev = if ahead == 1 { cur } else { 0 };
        st.grace_cur = 0;
        st.grace_half = half;
    }
}

/// Counts a request of `cost` as `kind` decided it (`Limiter::count_as`), moving the state
/// exactly as `decide` did when it gave `kind`, and what the state says after it.
#[allow(clippy::too_many_arguments)]
fn count(st: &mut UserState, bucket_ms: i64, idx: u32, half: u32, half_ms: i64, now: Millis, cost: u32, quota: Quota, kind: DecisionKind) -> Verdict {
    advance_ring(st, idx);
    let used: u64 = st.counts.iter().map(|&c| u64::from(c)).sum();
    let (limit, cost64, allowance) = (u64::from(quota.limit), u64::from(cost), u64::from(quota.grace_allowance));
    let grace_share = |st: &UserState| {
        let g = u64::from(st.grace_cur) + u64::from(st.grace_prev) + u64::from(st.grace_prev2);
        (allowance > 0).then(|| (g as f64 / allowance as f64).min(1.0))
    };
    let mut grace_used = None;
    match kind {
        DecisionKind::Allow => {
            let slot = &mut st.counts[(st.head as usize) % SLOTS];
            *slot = slot.saturating_add(cost);
        }
        DecisionKind::AllowWithGrace => {
            advance_grace(st, half, half_ms);
            st.grace_cur = st.grace_cur.saturating_add(cost);
            grace_used = grace_share(st);
        }
        // `decide` looks at the grace halves (and moves them) only for a request within the limit
        // that the window has no room for.
        DecisionKind::Throttle if cost64 <= limit && used + cost64 > limit => {
            advance_grace(st, half, half_ms);
            grace_used = grace_share(st);
        }
        DecisionKind::Throttle => {}
    }
    let used_after: u64 = st.counts.iter().map(|&c| u64::from(c)).sum();
    let remaining = limit.saturating_sub(used_after) as u32;
    Verdict { kind, remaining, reset_s: reset_secs(st, now, bucket_ms), grace_used }
}

/// Seconds until the newest counted bucket leaves the checked span (full quota again).
fn reset_secs(st: &UserState, now: Millis, bucket_ms: i64) -> u64 {
    let newest = (0..SLOTS as u32).map(|back| st.head.wrapping_sub(back)).find(|&b| st.counts[(b as usize) % SLOTS] > 0);
    match newest {
        None => 0,
        Some(b) => {
            let back = i64::from(st.head.wrapping_sub(b));
            let head_start = now.0.div_euclid(bucket_ms) * bucket_ms;
            let expires = head_start + (SLOTS as i64 - back) * bucket_ms;
            now.secs_until_ceil(Millis(expires))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DecisionKind::*;

    const MIN: i64 = 60_000;

    fn quota(limit: u32, grace: u32) -> Quota {
        Quota { limit, grace_allowance: grace, grace_window_ms: 60 * MIN }
    }

    fn at(ms: i64) -> Millis {
        Millis(1_700_000_000_000 + ms)
    }

    #[test]
    fn allows_up_to_the_limit_then_throttles() {
        let mut l = Limiter::new(60, 3600);
        let q = quota(5, 0);
        for i in 0..5 {
            let v = l.check("u", 0, at(i), 1, q);
            assert_eq!(v.kind, Allow);
            assert_eq!(v.remaining, 4 - i as u32);
        }
        let v = l.check("u", 0, at(10), 1, q);
        assert_eq!(v.kind, Throttle);
        assert_eq!(v.remaining, 0);
        assert!(v.reset_s > 60 && v.reset_s <= 70, "{}", v.reset_s);
    }

    #[test]
    fn users_and_request_types_are_independent() {
        let mut l = Limiter::new(60, 3600);
        let q = quota(1, 0);
        assert_eq!(l.check("a", 0, at(0), 1, q).kind, Allow);
        assert_eq!(l.check("b", 0, at(0), 1, q).kind, Allow);
        assert_eq!(l.check("a", 1, at(0), 1, q).kind, Allow);
        assert_eq!(l.check("a", 0, at(0), 1, q).kind, Throttle);
    }

    #[test]
    fn quota_returns_once_usage_leaves_the_span() {
        let mut l = Limiter::new(60, 3600);
        let q = quota(2, 0);
        assert_eq!(l.check("u", 0, at(0), 2, q).kind, Allow);
        assert_eq!(l.check("u", 0, at(59_999), 1, q).kind, Throttle);
        // Still counted up to one sub-bucket past the window (conservative side).
        assert_eq!(l.check("u", 0, at(65_000), 1, q).kind, Throttle);
        let v = l.check("u", 0, at(70_000), 2, q);
        assert_eq!((v.kind, v.remaining), (Allow, 0));
    }

    #[test]
    fn exported_state_carries_on_in_another_limiter() {
        // Two limiters (another process: another hash key) given the same history decide alike.
        let q = Quota { limit: 5, grace_allowance: 2, grace_window_ms: 20 * 60_000 };
        let (mut a, mut uninterrupted) = (Limiter::new(60, 3600), Limiter::new(60, 3600));
        for i in 0..6 {
            a.check("u", 1, at(i * 7_000), 1, q);
            uninterrupted.check("u", 1, at(i * 7_000), 1, q);
        }
        let saved = a.export("u", 1).expect("tracked");
        assert_eq!(a.export("u", 0), None);
        let mut b = Limiter::new(60, 3600);
        b.import("u", 1, &saved).expect("same window");
        for i in 6..40 {
            let t = at(i * 7_000);
            assert_eq!(b.check("u", 1, t, 1, q), uninterrupted.check("u", 1, t, 1, q), "request {i}");
        }
        assert_eq!(b.export("u", 1), uninterrupted.export("u", 1));
        let mut other_window = Limiter::new(30, 3600);
        assert!(matches!(other_window.import("u", 1, &saved), Err(ImportError::Window { .. })));
    }

    #[test]
    fn peek_decides_like_check_without_counting() {
        let mut l = Limiter::new(60, 3600);
        let q = quota(2, 1);
        for i in 0..4 {
            let peeked = l.peek("u", 0, at(i), 1, q);
            assert_eq!(peeked, l.check("u", 0, at(i), 1, q), "request {i}");
        }
        let before = l.export("u", 0);
        l.peek("u", 0, at(10), 1, q);
        assert_eq!(l.export("u", 0), before);
        assert_eq!(l.peek("nobody", 0, at(10), 1, q).kind, Allow);
        assert!(!l.tracks("nobody", 0));
    }

    #[test]
    fn weighted_cost_counts_units_and_oversized_requests_never_pass() {
        let mut l = Limiter::new(60, 3600);
        let q = quota(10, 0);
        assert_eq!(l.check("u", 0, at(0), 11, q).kind, Throttle);
        let v = l.check("u", 0, at(0), 7, q);
        assert_eq!((v.kind, v.remaining), (Allow, 3));
        assert_eq!(l.check("u", 0, at(1), 4, q).kind, Throttle);
        assert_eq!(l.check("u", 0, at(2), 3, q).kind, Allow);
    }

    #[test]
    fn grace_allows_a_bounded_overflow_per_grace_window() {
        let mut l = Limiter::new(60, 3600);
        let q = quota(1, 2);
        assert_eq!(l.check("u", 0, at(0), 1, q).kind, Allow);
        let g1 = l.check("u", 0, at(1), 1, q);
        assert_eq!((g1.kind, g1.grace_used), (AllowWithGrace, Some(0.5)));
        assert_eq!(l.check("u", 0, at(2), 1, q).kind, AllowWithGrace);
        let t = l.check("u", 0, at(3), 1, q);
        assert_eq!((t.kind, t.grace_used), (Throttle, Some(1.0)));
        // A new minute restores the limit but not the grace.
        assert_eq!(l.check("u", 0, at(2 * MIN), 1, q).kind, Allow);
        assert_eq!(l.check("u", 0, at(2 * MIN + 1), 1, q).kind, Throttle);
        // Grace comes back once the grace span (two half windows) has passed.
        assert_eq!(l.check("u", 0, at(90 * MIN), 1, q).kind, Allow);
        assert_eq!(l.check("u", 0, at(90 * MIN + 1), 1, q).kind, AllowWithGrace);
    }

    #[test]
    fn at_the_cap_the_least_recently_seen_eighth_makes_room() {
        let mut l = Limiter::new(60, 3600).with_cap(16);
        let q = quota(1, 0);
        // 16 users, one per second: the oldest are seen in the earliest buckets.
        for i in 0..16 {
            assert_eq!(l.check(&format!("u{i}"), 0, at(i * 5_000), 1, q).kind, Allow);
        }
        assert_eq!((l.len(), l.displaced), (16, 0));
        // A known user at the cap displaces nobody, and is still counted.
        assert_eq!(l.check("u15", 0, at(80_000), 1, q).kind, Throttle);
        assert_eq!(l.len(), 16);
        // A new one displaces the two (16 / 8) seen least recently.
        l.check("new", 0, at(81_000), 1, q);
        assert_eq!((l.len(), l.displaced), (15, 2));
        assert!(!l.tracks("u0", 0) && !l.tracks("u1", 0) && l.tracks("u2", 0) && l.tracks("new", 0));
        // A displaced user starts again with a fresh quota.
        assert_eq!(l.check("u0", 0, at(82_000), 1, q).kind, Allow);
        // However many keys come, the map stays within the cap.
        let mut big = Limiter::new(60, 3600).with_cap(1000);
        for i in 0..20_000 {
            big.check(&format!("user-{i}"), 0, at(i), 1, q);
            assert!(big.len() <= 1000);
        }
        assert!(big.tracks("user-19999", 0) && !big.tracks("user-0", 0));
        // Restored keys respect it too.
        let saved = big.export("user-19999", 0).expect("tracked");
        let mut restored = Limiter::new(60, 3600).with_cap(8);
        for i in 0..100 {
            restored.import(&format!("r{i}"), 0, &saved).expect("same window");
        }
        assert!(restored.len() <= 8);
    }

    #[test]
    fn requests_larger_than_the_limit_never_pass_even_with_grace() {
        let mut l = Limiter::new(60, 3600);
        let v = l.check("u", 0, at(0), 4, quota(1, 5));
        assert_eq!((v.kind, v.grace_used), (Throttle, None));
        assert_eq!(l.check("u", 0, at(1), 1, quota(1, 5)).kind, Allow);
    }

    #[test]
    fn a_tier_change_keeps_the_grace_used_so_far() {
        let mut l = Limiter::new(60, 3600);
        let a = Quota { limit: 1, grace_allowance: 5, grace_window_ms: 60 * MIN };
        let b = Quota { limit: 1, grace_allowance: 5, grace_window_ms: 120 * MIN };
        assert_eq!(l.check("u", 0, at(0), 1, b).kind, Allow);
        for i in 1..=5 {
            assert_eq!(l.check("u", 0, at(i), 1, b).kind, AllowWithGrace);
        }
        // The same user, now on a tier with another grace window: no fresh allowance.
        assert_eq!(l.check("u", 0, at(10), 1, a).kind, Throttle);
        // ... until it has aged out at the new scale (at most a grace window and a half).
        assert_eq!(l.check("u", 0, at(95 * MIN), 1, a).kind, Allow);
        assert_eq!(l.check("u", 0, at(95 * MIN + 1), 1, a).kind, AllowWithGrace);
    }

    #[test]
    fn out_of_order_events_count_as_of_the_newest() {
        let mut l = Limiter::new(60, 3600);
        let q = quota(2, 0);
        assert_eq!(l.check("u", 0, at(5 * MIN), 1, q).kind, Allow);
        // An event from four minutes earlier must not open a fresh window.
        assert_eq!(l.check("u", 0, at(MIN), 1, q).kind, Allow);
        assert_eq!(l.check("u", 0, at(MIN), 1, q).kind, Throttle);
    }

    #[test]
    fn a_lowered_limit_applies_to_usage_already_counted() {
        let mut l = Limiter::new(60, 3600);
        for i in 0..8 {
            assert_eq!(l.check("u", 0, at(i), 1, quota(10, 0)).kind, Allow);
        }
        let v = l.check("u", 0, at(10), 1, quota(5, 0));
        assert_eq!((v.kind, v.remaining), (Throttle, 0));
    }

    #[test]
    fn idle_users_are_evicted_and_active_ones_kept() {
        let mut l = Limiter::new(60, 600);
        let q = quota(5, 0);
        l.check("idle", 0, at(0), 1, q);
        l.check("busy", 0, at(0), 1, q);
        l.check("busy", 0, at(9 * MIN), 1, q);
        // Not yet: "idle" may have made its request at the end of its 10 s bucket.
        assert_eq!(l.sweep(at(10 * MIN + 1)), 0);
        assert_eq!(l.sweep(at(10 * MIN + 10_000)), 1);
        assert!(!l.tracks("idle", 0));
        assert!(l.tracks("busy", 0));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn state_is_small() {
        assert!(Limiter::state_bytes() <= 64, "{}", Limiter::state_bytes());
    }
}
