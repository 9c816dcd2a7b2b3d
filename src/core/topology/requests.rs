//! The topology's requests: each one decided by its user's limiter at its own time, counted in
//! the predictor's demand and the monitor's minute; and the quota state the API shows a user.

use std::sync::Arc;

use crate::core::limiter::{Quota, Verdict};
use crate::core::topology::{Topology, index_of};
use crate::wire::events::RequestEvent;
use crate::wire::outputs::{Decision, DecisionKind, Output};
use crate::wire::time::Millis;

/// Whether a request is already counted in the limiter's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    No,
    /// Processed again after a restart or rebalance, and the state restored from the changelog
    /// already holds it.
    Already,
    /// Processed again after a restart or rebalance, and decided before: its first decision
    /// (`kind`) reached the decisions topic. It is decided as it was then, and counted that way
    /// unless the restored state holds it already (`counted`).
    Decided {
        kind: DecisionKind,
        counted: bool,
    },
}

/// A user's quota state (`GET /v1/users/{user_id}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UserQuota {
    pub user_id: String,
    pub tier: Arc<str>,
    /// The tier asked for when it is not configured (the default tier was applied).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_tier: Option<String>,
    /// The requests partition whose limiter holds the user.
    pub partition: i32,
    pub ts: Millis,
    pub quotas: Vec<QuotaState>,
}

/// One request type's quota for a user: the IETF RateLimit fields and the grace allowance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QuotaState {
    pub request_type: Arc<str>,
    pub limit: u32,
    pub remaining: u32,
    pub reset_s: u64,
    pub window_s: u32,
    pub policy: Arc<str>,
    pub grace_allowance: u32,
    pub grace_window_s: u64,
}

impl Topology {
    /// A user's quota for each request type (or just `request_type`) in `tier`, as the limiter
    /// of `partition` holds it at `now`, counting nothing. An unknown tier or request type gets
    /// the default, as a request naming it would.
    pub fn user_quota(&self, partition: i32, user_id: &str, tier: &str, request_type: Option<&str>, now: Millis) -> UserQuota {
        let (t, unknown_tier) = match index_of(&self.tiers, tier) {
            Some(i) => (i, false),
            None => (self.default_tier, true),
        };
        let rts: Vec<usize> = match request_type {
            None => (0..self.request_types.len()).collect(),
            Some(rt) => vec![index_of(&self.request_types, rt).unwrap_or(self.default_request_type)],
        };
        let limiter = usize::try_from(partition).ok().and_then(|i| self.limiters.get(i)).and_then(Option::as_ref);
        let quotas = rts
            .into_iter()
            .map(|rt| {
                let k = self.limits.limit(t, rt);
                let quota = Quota { limit: k.window_limit, grace_allowance: k.grace_allowance, grace_window_ms: k.grace_window_ms };
                // A cost of 0 reads the state as of `now` without counting anything; a partition
                // with no limiter yet has no usage.
                let (remaining, reset_s) = limiter.map_or((k.window_limit, 0), |l| {
                    let v = l.peek(user_id, rt as u16, now, 0, quota);
                    (v.remaining, v.reset_s)
                });
                QuotaState {
                    request_type: self.request_types[rt].clone(),
                    limit: k.window_limit,
                    remaining,
                    reset_s,
                    window_s: self.window_s,
                    policy: k.policy.clone(),
                    grace_allowance: k.grace_allowance,
                    grace_window_s: (k.grace_window_ms / 1000) as u64,
                }
            })
            .collect();
        UserQuota {
            user_id: user_id.to_string(),
            tier: self.tiers[t].clone(),
            unknown_tier: unknown_tier.then(|| tier.to_string()),
            partition,
            ts: now,
            quotas,
        }
    }

    pub(super) fn on_request(&mut self, partition: i32, counted: Counted, ev: RequestEvent, out: &mut Vec<Output>) {
        self.limit_request(partition, counted, true, ev, out);
    }

    /// Decides one request on its own (`POST /v1/decide`): at its own time for the user's
    /// limiter, without moving the pipeline's time once it has one (before any event, the first
    /// request starts it, publishing every limit, as a first streamed event would). It counts in
    /// its partition's usage (the monitor's and the predictor's demand) without moving that
    /// partition's time; no timer fires, nothing else moves. Its outputs go to `out`.
    pub fn decide(&mut self, partition: i32, ev: RequestEvent, out: &mut Vec<Output>) {
        if self.watermark.is_none() {
            self.advance(ev.ts, out);
        }
        self.limit_request(partition, Counted::No, false, ev, out);
    }

    /// Decides a request; `streamed` ones move their partition's time in the usage.
    fn limit_request(&mut self, partition: i32, counted: Counted, streamed: bool, ev: RequestEvent, out: &mut Vec<Output>) {
        self.counters.requests += 1;
        let (tier, unknown_tier) = match index_of(&self.tiers, &ev.tier) {
            Some(i) => (i, None),
            None => (self.default_tier, Some(ev.tier)),
        };
        let (rt, unknown_request_type) = match index_of(&self.request_types, &ev.request_type) {
            Some(i) => (i, None),
            None => (self.default_request_type, Some(ev.request_type)),
        };
        self.counters.unknown_tier += u64::from(unknown_tier.is_some());
        let k = self.limits.limit(tier, rt);
        let (limit, policy) = (k.window_limit, k.policy.clone());
        let quota = Quota { limit, grace_allowance: k.grace_allowance, grace_window_ms: k.grace_window_ms };
        let limiter = self.limiter(partition);
        let v = match counted {
            Counted::No => limiter.check(&ev.user_id, rt as u16, ev.ts, ev.cost, quota),
            Counted::Already => limiter.peek(&ev.user_id, rt as u16, ev.ts, ev.cost, quota),
            Counted::Decided { kind, counted: false } => limiter.count_as(&ev.user_id, rt as u16, ev.ts, ev.cost, quota, kind),
            Counted::Decided { kind, counted: true } => Verdict { kind, ..limiter.peek(&ev.user_id, rt as u16, ev.ts, ev.cost, quota) },
        };
        let severity = self.limits.severity();
        let strategy = match v.kind {
            DecisionKind::Allow => {
                self.counters.allowed += 1;
                None
            }
            DecisionKind::AllowWithGrace => {
                self.counters.graced += 1;
                None
            }
            DecisionKind::Throttle => {
                self.counters.throttled += 1;
                Some(self.strategies.lookup(severity, tier, rt))
            }
        };
        let d = Decision {
            request_id: ev.id,
            ts: ev.ts,
            user_id: ev.user_id,
            tier: self.tiers[tier].clone(),
            request_type: self.request_types[rt].clone(),
            decision: v.kind,
            strategy,
            limit,
            remaining: v.remaining,
            reset_s: v.reset_s,
            policy,
            severity,
            unknown_tier,
            unknown_request_type,
        };
        // Counted once: a request the restored state already holds was counted before, in the
        // usage restored with it.
        if matches!(counted, Counted::No | Counted::Decided { counted: false, .. }) {
            self.count_usage(partition, streamed, &d, v.grace_used);
        }
        out.push(Output::Decision(d));
    }
}
