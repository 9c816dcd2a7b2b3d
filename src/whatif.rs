//! `whatif`: the batch backtest of limit policies. Request history, in time order, goes through
//! one topology per policy (the same one replay and `run` use, on event time), and each policy's
//! report counts what it decided: allowed, graced and throttled requests per tier, the minutes in
//! which the requests it let through exceeded a capacity, the alerts it raised and the limit
//! updates it made. The same history with no limits at all is the baseline for the capacity.
//!
//! Plain state: the caller reads the history and feeds it here (`cli` in main.rs).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::events::{InputEvent, RequestEvent};
use crate::outputs::{DecisionKind, Output};
use crate::time::Millis;
use crate::topology::Topology;

const MINUTE_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TierCounts {
    pub allowed: u64,
    pub graced: u64,
    pub throttled: u64,
}

impl TierCounts {
    pub fn total(&self) -> u64 {
        self.allowed + self.graced + self.throttled
    }
}

/// Requests let through per event-time minute, against a capacity.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CapacityUse {
    /// Minutes from the history's first request to its last (the same for every policy).
    pub minutes: u64,
    /// Minutes in which more than the capacity went through (with a capacity).
    pub minutes_above: Option<u64>,
    /// The busiest minute: requests let through.
    pub peak_per_minute: u64,
    #[serde(skip)]
    open: Option<(i64, u64)>,
    #[serde(skip)]
    first: Option<i64>,
}

impl CapacityUse {
    fn add(&mut self, ts: Millis, capacity: Option<f64>) {
        let minute = ts.0.div_euclid(MINUTE_MS);
        self.first.get_or_insert(minute);
        match self.open.as_mut() {
            Some((m, n)) if *m == minute => *n += 1,
            // Time order holds (the reader sorts), so an earlier minute does not come back.
            Some((m, _)) if minute < *m => {}
            _ => {
                self.close(capacity);
                self.open = Some((minute, 1));
            }
        }
    }

    fn close(&mut self, capacity: Option<f64>) {
        if let Some((m, n)) = self.open.take() {
            self.peak_per_minute = self.peak_per_minute.max(n);
            if let Some(c) = capacity {
                *self.minutes_above.get_or_insert(0) += u64::from(n as f64 > c);
            }
            self.minutes = (m - self.first.unwrap_or(m) + 1) as u64;
            // (For a policy this spans only its admitted requests; `finish` sets the history's.)
        }
    }
}

/// What one policy did with the history.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PolicyReport {
    pub name: String,
    pub requests: u64,
    pub by_tier: BTreeMap<String, TierCounts>,
    pub total: TierCounts,
    /// Allowed and graced requests per minute.
    pub admitted: CapacityUse,
    pub alerts: BTreeMap<String, u64>,
    pub limit_updates: u64,
    /// Limit updates with a predictive cut in force (with a demand model).
    pub predictive_cut_updates: u64,
    pub predictions: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WhatifReport {
    pub capacity_per_minute: Option<f64>,
    pub from: Option<Millis>,
    pub to: Option<Millis>,
    /// Every request let through: the history's own demand.
    pub unlimited: CapacityUse,
    pub policies: Vec<PolicyReport>,
}

struct Run {
    topology: Topology,
    report: PolicyReport,
    outs: Vec<Output>,
}

impl Run {
    fn feed(&mut self, batch: &[RequestEvent], capacity: Option<f64>) {
        for r in batch {
            self.report.requests += 1;
            self.topology.process(InputEvent::Request(r.clone()), &mut self.outs);
            Self::count(&mut self.report, &mut self.outs, capacity);
        }
    }

    fn count(report: &mut PolicyReport, outs: &mut Vec<Output>, capacity: Option<f64>) {
        for o in outs.drain(..) {
            match o {
                Output::Decision(d) => {
                    let t = report.by_tier.entry(d.tier.to_string()).or_default();
                    let admitted = match d.decision {
                        DecisionKind::Allow => {
                            t.allowed += 1;
                            true
                        }
                        DecisionKind::AllowWithGrace => {
                            t.graced += 1;
                            true
                        }
                        DecisionKind::Throttle => {
                            t.throttled += 1;
                            false
                        }
                    };
                    if admitted {
                        report.admitted.add(d.ts, capacity);
                    }
                }
                Output::Alert(a) => *report.alerts.entry(a.rule.to_string()).or_default() += 1,
                Output::Limit(l) => {
                    report.limit_updates += 1;
                    report.predictive_cut_updates += u64::from(l.multipliers.predicted < 1.0);
                }
                Output::Prediction(_) => report.predictions += 1,
                Output::Breaker(_) => {}
            }
        }
    }
}

/// Policies side by side over one pass of the history.
pub struct Whatif {
    runs: Vec<Run>,
    report: WhatifReport,
}

impl Whatif {
    /// `policies`: each a name and its topology; `capacity`: requests per minute the backend can
    /// take (optional).
    pub fn new(policies: Vec<(String, Topology)>, capacity: Option<f64>) -> Self {
        let runs =
            policies.into_iter().map(|(name, topology)| Run { topology, report: PolicyReport { name, ..PolicyReport::default() }, outs: Vec::new() }).collect();
        Whatif { runs, report: WhatifReport { capacity_per_minute: capacity, ..WhatifReport::default() } }
    }

    /// Feeds a batch of requests, in time order, to every policy (on a thread each when there
    /// are several).
    pub fn feed(&mut self, batch: &[RequestEvent]) {
        let capacity = self.report.capacity_per_minute;
        for r in batch {
            self.report.from.get_or_insert(r.ts);
            self.report.to = Some(r.ts);
            self.report.unlimited.add(r.ts, capacity);
        }
        if self.runs.len() == 1 {
            self.runs[0].feed(batch, capacity);
        } else {
            std::thread::scope(|s| {
                for run in &mut self.runs {
                    s.spawn(move || run.feed(batch, capacity));
                }
            });
        }
    }

    /// Closes the last minute of every policy (and their monitors) and returns the report.
    pub fn finish(mut self) -> WhatifReport {
        let capacity = self.report.capacity_per_minute;
        self.report.unlimited.close(capacity);
        for mut run in self.runs {
            run.topology.finish(&mut run.outs);
            Run::count(&mut run.report, &mut run.outs, capacity);
            run.report.admitted.close(capacity);
            let r = &mut run.report;
            r.admitted.minutes = self.report.unlimited.minutes;
            r.total = r.by_tier.values().fold(TierCounts::default(), |a, t| TierCounts {
                allowed: a.allowed + t.allowed,
                graced: a.graced + t.graced,
                throttled: a.throttled + t.throttled,
            });
            self.report.policies.push(run.report);
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;

    fn burst(user: &str, tier: &str, minute: i64, n: u32) -> Vec<RequestEvent> {
        (0..n)
            .map(|k| RequestEvent {
                id: format!("{user}-{minute}-{k}").into(),
                ts: Millis(minute * MINUTE_MS + i64::from(k) * 100),
                user_id: user.into(),
                tier: tier.into(),
                request_type: "standard".into(),
                cost: 1,
            })
            .collect()
    }

    fn policy(free_rpm: u32) -> Topology {
        let mut cfg = Config::default();
        if let Some(t) = cfg.tiers.get_mut("free") {
            t.baseline_rpm = free_rpm;
        }
        Topology::new(Arc::new(cfg))
    }

    #[test]
    fn counts_by_tier_and_minutes_above_capacity_by_hand() {
        // Minute 0: a free user makes 75 requests: 60 allowed, 10 graced (the hour's allowance),
        // 5 throttled. Minute 5: 20 more, under a fresh window: all allowed. A pro user's 30 in
        // minute 5 are all allowed.
        let mut batch = burst("u1", "free", 0, 75);
        batch.extend(burst("u1", "free", 5, 20));
        let mut pro = burst("p1", "pro", 5, 30);
        batch.append(&mut pro);
        batch.sort_by_key(|r| r.ts);
        let mut w = Whatif::new(vec![("default".into(), policy(60)), ("strict".into(), policy(30))], Some(60.0));
        w.feed(&batch[..40]);
        w.feed(&batch[40..]);
        let r = w.finish();
        assert_eq!(r.unlimited.minutes, 6);
        assert_eq!(r.unlimited.peak_per_minute, 75);
        assert_eq!(r.unlimited.minutes_above, Some(1));
        let d = &r.policies[0];
        assert_eq!(d.requests, 125);
        assert_eq!(d.by_tier["free"], TierCounts { allowed: 80, graced: 10, throttled: 5 });
        assert_eq!(d.by_tier["pro"], TierCounts { allowed: 30, graced: 0, throttled: 0 });
        assert_eq!(d.total.total(), 125);
        // 70 went through in minute 0 (above 60), 50 in minute 5.
        assert_eq!((d.admitted.peak_per_minute, d.admitted.minutes_above), (70, Some(1)));
        // Strict: 30 allowed and 10 graced in minute 0, 20 in minute 5.
        let s = &r.policies[1];
        assert_eq!(s.by_tier["free"], TierCounts { allowed: 50, graced: 10, throttled: 35 });
        assert_eq!((s.admitted.peak_per_minute, s.admitted.minutes_above), (50, Some(0)));
        assert_eq!((d.admitted.minutes, s.admitted.minutes), (6, 6));
        assert_eq!(s.name, "strict");
    }

    #[test]
    fn without_a_capacity_no_minutes_are_judged() {
        let mut w = Whatif::new(vec![("p".into(), policy(60))], None);
        w.feed(&burst("u", "free", 0, 3));
        let r = w.finish();
        assert_eq!(r.unlimited.minutes_above, None);
        assert_eq!(r.policies[0].admitted.minutes_above, None);
        assert_eq!(r.policies[0].admitted.minutes, 1);
    }
}
