//! Circuit breaker for one dependency, in event time.
//!
//! Closed: outcomes go into a sliding window; the breaker trips when the summed failure weight
//! reaches `weight_threshold` (the seed's rule) or, once `minimum_calls` calls are in the window,
//! when the failure rate or the slow-call rate reaches its threshold (Resilience4j's rule: ≥, and
//! no rate decision below the minimum). Open: calls are refused until `retry_at`; each trip
//! straight out of half-open multiplies the open time by `backoff_multiplier` (capped). Half-open:
//! `half_open_probes` calls are let through; when they have all reported, the breaker reopens if
//! their failure or slow rate reaches the threshold, else it closes; with
//! `max_wait_in_half_open_s` set, a half-open breaker whose probes have not all reported by then
//! reopens (Resilience4j's `maxWaitDurationInHalfOpenState`). Forced-open refuses
//! everything and disabled lets everything through, both without transitions; metrics-only
//! records but never opens. Time comes only from the arguments.

use crate::config::BreakerConfig;
use crate::core::breaker_window::{Counts, OutcomeWindow};
use crate::wire::events::ErrorClass;
use crate::wire::outputs::BreakerStateKind;
use crate::wire::time::Millis;

use BreakerStateKind::*;

/// Whether a call may go to the dependency now.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Permitted,
    /// Refused; `retry_at` is when the breaker will let probes through, if it will.
    Refused {
        retry_at: Option<Millis>,
    },
}

/// A state change, stamped with the event time at which it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerStateKind,
    pub to: BreakerStateKind,
    pub at: Millis,
}

/// The window's figures, for `BreakerState` outputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerMetrics {
    pub failure_weight: f64,
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    pub calls: u32,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: BreakerStateKind,
    window: OutcomeWindow,
    /// Probe figures while half-open.
    probes: Counts,
    probes_permitted: u32,
    /// Consecutive trips without closing in between (drives the backoff).
    trips: u32,
    opened_at: Option<Millis>,
    retry_at: Option<Millis>,
    /// Half-open: when it gives up waiting for the probes and reopens.
    half_open_until: Option<Millis>,
    /// The figures as of the last trip or outcome, for reporting.
    last: Counts,
}

impl Breaker {
    pub fn new(cfg: &BreakerConfig) -> Self {
        Breaker {
            cfg: cfg.clone(),
            state: Closed,
            window: OutcomeWindow::new(cfg.window_s),
            probes: Counts::default(),
            probes_permitted: 0,
            trips: 0,
            opened_at: None,
            retry_at: None,
            half_open_until: None,
            last: Counts::default(),
        }
    }

    pub fn state(&self) -> BreakerStateKind {
        self.state
    }

    pub fn opened_at(&self) -> Option<Millis> {
        self.opened_at
    }

    /// The probe budget while half-open.
    pub fn half_open_probes(&self) -> Option<u32> {
        (self.state == HalfOpen).then_some(self.cfg.half_open_probes)
    }

    pub fn retry_at(&self) -> Option<Millis> {
        if self.state == Open { self.retry_at } else { None }
    }

    /// When `advance` will next change something: an open breaker's `retry_at`, a half-open
    /// one's end of waiting for its probes; none when no timer runs.
    pub fn next_timer(&self) -> Option<Millis> {
        match self.state {
            Open => self.retry_at,
            HalfOpen => self.half_open_until,
            _ => None,
        }
    }

    pub fn metrics(&self) -> BreakerMetrics {
        let c = if self.state == HalfOpen { self.probes } else { self.last };
        BreakerMetrics { failure_weight: c.weight(), failure_rate: c.failure_rate(), slow_call_rate: c.slow_call_rate(), calls: c.calls }
    }

    fn weight(&self, error: ErrorClass) -> f64 {
        let w = &self.cfg.weights;
        match error {
            ErrorClass::Timeout => w.timeout,
            ErrorClass::RateLimit => w.rate_limit,
            ErrorClass::ServerError => w.server_error,
            ErrorClass::ClientError => w.client_error,
            ErrorClass::Other => w.other,
        }
    }

    fn open_duration_ms(&self) -> i64 {
        let base = f64::from(self.cfg.recovery_timeout_s);
        let exp = self.cfg.backoff_multiplier.powi(self.trips.saturating_sub(1).min(64) as i32);
        let secs = (base * exp).min(f64::from(self.cfg.max_recovery_timeout_s));
        (secs * 1000.0) as i64
    }

    fn go(&mut self, to: BreakerStateKind, at: Millis) -> Transition {
        let from = self.state;
        self.state = to;
        self.half_open_until = None;
        match to {
            Open => {
                self.trips += 1;
                self.opened_at = Some(at);
                self.retry_at = Some(at.plus_ms(self.open_duration_ms()));
            }
            HalfOpen => {
                self.probes = Counts::default();
                self.probes_permitted = 0;
                let wait = i64::from(self.cfg.max_wait_in_half_open_s) * 1000;
                self.half_open_until = (wait > 0).then(|| at.plus_ms(wait));
            }
            Closed => {
                self.trips = 0;
                self.opened_at = None;
                self.retry_at = None;
                self.window.clear();
                self.last = Counts::default();
            }
            ForcedOpen | Disabled | MetricsOnly => {
                self.retry_at = None;
                if to == ForcedOpen {
                    self.opened_at = Some(at);
                }
            }
        }
        Transition { from, to, at }
    }

    /// Moves time forward to `now`: an open breaker whose `retry_at` has come goes half-open,
    /// stamped at `retry_at`; a half-open one whose wait for its probes has run out reopens,
    /// stamped then. (Time jumping past both in one step takes the first; the next call to
    /// `advance` takes the other.)
    pub fn advance(&mut self, now: Millis) -> Option<Transition> {
        match (self.state, self.retry_at, self.half_open_until) {
            (Open, Some(at), _) if now >= at => Some(self.go(HalfOpen, at)),
            (HalfOpen, _, Some(until)) if now >= until => Some(self.go(Open, until)),
            _ => None,
        }
    }

    /// Asks to make a call at `now` (Resilience4j `tryAcquirePermission`). The live path asks
    /// through the fallback policy instead; the tests drive a breaker this way.
    #[cfg(test)]
    pub fn try_acquire(&mut self, now: Millis) -> (Permission, Option<Transition>) {
        let t = self.advance(now);
        let p = match self.state {
            Closed | Disabled | MetricsOnly => Permission::Permitted,
            Open => Permission::Refused { retry_at: self.retry_at },
            ForcedOpen => Permission::Refused { retry_at: None },
            HalfOpen if self.probes_permitted < self.cfg.half_open_probes => {
                self.probes_permitted += 1;
                Permission::Permitted
            }
            HalfOpen => Permission::Refused { retry_at: None },
        };
        (p, t)
    }

    /// Records the outcome of a call that finished at `now`. Returns the transitions it caused
    /// (at most two: a timer firing first, then the outcome's own).
    pub fn on_outcome(&mut self, now: Millis, ok: bool, error: Option<ErrorClass>, latency_ms: f64) -> [Option<Transition>; 2] {
        let timer = self.advance(now);
        let weight = if ok { 0.0 } else { self.weight(error.unwrap_or(ErrorClass::Other)) };
        let c = Counts {
            calls: 1,
            failures: u32::from(weight > 0.0),
            // Slower than the threshold, as Resilience4j counts it.
            slow: u32::from(latency_ms > f64::from(self.cfg.slow_call_duration_ms)),
            weight_milli: (weight * 1000.0).round() as u64,
        };
        let own = match self.state {
            Disabled | ForcedOpen => None,
            Closed | MetricsOnly => {
                self.window.record(now, c);
                let totals = self.window.totals(now);
                self.last = totals;
                (self.state == Closed && self.should_trip(&totals)).then(|| self.go(Open, now))
            }
            // Calls that were already in flight when the breaker opened: counted, no decision.
            Open => {
                self.window.record(now, c);
                None
            }
            HalfOpen => {
                self.probes.add(c);
                if self.probes.calls >= self.cfg.half_open_probes {
                    let p = self.probes;
                    self.last = p;
                    let bad = p.failure_rate() >= self.cfg.failure_rate_threshold || p.slow_call_rate() >= self.cfg.slow_call_rate_threshold;
                    Some(self.go(if bad { Open } else { Closed }, now))
                } else {
                    None
                }
            }
        };
        [timer, own]
    }

    fn should_trip(&self, t: &Counts) -> bool {
        let by_weight = t.weight_milli > 0 && t.weight() >= self.cfg.weight_threshold;
        let by_rate = t.calls >= self.cfg.minimum_calls
            && (t.failure_rate() >= self.cfg.failure_rate_threshold || t.slow_call_rate() >= self.cfg.slow_call_rate_threshold);
        by_weight || by_rate
    }

    fn admin(&mut self, to: BreakerStateKind, now: Millis) -> Option<Transition> {
        (self.state != to).then(|| self.go(to, now))
    }

    /// New thresholds from a reloaded config, from the next call on. A new window length starts
    /// an empty window (the recorded calls were counted in buckets of the old length).
    pub fn reconfigure(&mut self, cfg: &BreakerConfig) {
        if cfg.window_s != self.cfg.window_s {
            self.window = OutcomeWindow::new(cfg.window_s);
        }
        self.cfg = cfg.clone();
    }

    /// Admin: refuse every call until reset.
    pub fn force_open(&mut self, now: Millis) -> Option<Transition> {
        self.admin(ForcedOpen, now)
    }

    /// Admin: let every call through and stop recording.
    pub fn disable(&mut self, now: Millis) -> Option<Transition> {
        self.admin(Disabled, now)
    }

    /// Admin: record and report, never open.
    pub fn metrics_only(&mut self, now: Millis) -> Option<Transition> {
        self.admin(MetricsOnly, now)
    }

    /// Admin: back to closed with an empty window and no backoff.
    pub fn reset(&mut self, now: Millis) -> Option<Transition> {
        let from = self.state;
        let t = self.go(Closed, now);
        (from != Closed).then_some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ErrorWeights;

    const E: bool = false;
    const S: bool = true;

    /// Rate mode as in Resilience4j's CircuitBreakerStateMachineTest: 50 %, minimum 5 calls,
    /// weights out of the way.
    fn rate_breaker(probes: u32) -> Breaker {
        Breaker::new(&BreakerConfig {
            failure_rate_threshold: 0.5,
            slow_call_rate_threshold: 1.0,
            minimum_calls: 5,
            half_open_probes: probes,
            weight_threshold: 1e9,
            recovery_timeout_s: 5,
            ..BreakerConfig::default()
        })
    }

    fn t(s: i64) -> Millis {
        Millis(1_700_000_000_000 + s * 1000)
    }

    fn call(b: &mut Breaker, now: Millis, ok: bool) -> Option<Transition> {
        let [timer, own] = b.on_outcome(now, ok, (!ok).then_some(ErrorClass::ServerError), 10.0);
        own.or(timer)
    }

    fn feed(b: &mut Breaker, now: Millis, calls: &[bool]) {
        for &ok in calls {
            call(b, now, ok);
        }
    }

    #[test]
    fn opens_at_60_percent_only_once_minimum_calls_reached() {
        let mut b = rate_breaker(4);
        feed(&mut b, t(0), &[E, E, E, S]);
        assert_eq!(b.state(), Closed, "4 calls are below the minimum of 5");
        let tr = call(&mut b, t(0), S).unwrap();
        assert_eq!((tr.from, tr.to), (Closed, Open));
        assert!((b.metrics().failure_rate - 0.6).abs() < 1e-12);
    }

    #[test]
    fn forty_percent_stays_closed_and_fifty_percent_opens() {
        let mut b = rate_breaker(4);
        feed(&mut b, t(0), &[S, S, S, E, E]);
        assert_eq!(b.state(), Closed, "2/5 = 40 %");
        call(&mut b, t(0), E);
        assert_eq!(b.state(), Open, "3/6 = 50 % ≥ 50 %");
    }

    fn half_open(probes: u32) -> Breaker {
        let mut b = rate_breaker(probes);
        feed(&mut b, t(0), &[E, E, E, E, E]);
        assert_eq!(b.state(), Open);
        assert_eq!(b.try_acquire(t(4)).0, Permission::Refused { retry_at: Some(t(5)) });
        let (p, tr) = b.try_acquire(t(5));
        assert_eq!(tr.map(|x| (x.from, x.to, x.at)), Some((Open, HalfOpen, t(5))));
        assert_eq!(p, Permission::Permitted);
        b
    }

    #[test]
    fn half_open_reopens_when_its_probes_do_not_report_in_time() {
        let mut b = Breaker::new(&BreakerConfig { max_wait_in_half_open_s: 10, ..rate_breaker(4).cfg });
        feed(&mut b, t(0), &[E, E, E, E, E]);
        let (_, tr) = b.try_acquire(t(5));
        assert_eq!(tr.map(|x| x.to), Some(HalfOpen));
        call(&mut b, t(6), S);
        assert_eq!(b.advance(t(14)), None, "still waiting at 9 s");
        let tr = b.advance(t(16)).expect("gave up waiting");
        assert_eq!((tr.from, tr.to, tr.at), (HalfOpen, Open, t(15)), "stamped when the wait ran out");
        // A trip straight out of half-open: the backoff doubles the open time.
        assert_eq!(b.retry_at(), Some(t(25)));
        // Without a maximum wait, half-open waits for its probes however long it takes.
        let mut b = half_open(4);
        assert_eq!(b.advance(t(10_000)), None);
        assert_eq!(b.state(), HalfOpen);
    }

    #[test]
    fn half_open_permits_only_the_probes() {
        let mut b = half_open(4);
        for _ in 0..3 {
            assert_eq!(b.try_acquire(t(6)).0, Permission::Permitted);
        }
        assert_eq!(b.try_acquire(t(6)).0, Permission::Refused { retry_at: None }, "a 5th probe is refused");
    }

    #[test]
    fn half_open_e_e_s_e_reopens_and_e_s_s_s_closes() {
        let mut b = half_open(4);
        feed(&mut b, t(6), &[E, E, S]);
        assert_eq!(b.state(), HalfOpen);
        let tr = call(&mut b, t(6), E).unwrap();
        assert_eq!((tr.from, tr.to), (HalfOpen, Open));

        let mut b = half_open(4);
        feed(&mut b, t(6), &[E, S, S]);
        let tr = call(&mut b, t(6), S).unwrap();
        assert_eq!((tr.from, tr.to), (HalfOpen, Closed));
        assert_eq!(b.metrics().calls, 0, "closing starts a fresh window");
    }

    #[test]
    fn repeated_trips_back_off_exponentially_up_to_the_cap() {
        let mut b = Breaker::new(&BreakerConfig {
            minimum_calls: 1,
            half_open_probes: 1,
            recovery_timeout_s: 10,
            backoff_multiplier: 2.0,
            max_recovery_timeout_s: 35,
            ..BreakerConfig::default()
        });
        call(&mut b, t(0), E);
        assert_eq!(b.retry_at(), Some(t(10)));
        let mut now = t(10);
        for expected in [20, 35, 35] {
            call(&mut b, now, E); // the timer fires (half-open), the probe fails: open again
            assert_eq!(b.state(), Open);
            assert_eq!(b.retry_at(), Some(now.plus_ms(expected * 1000)));
            now = b.retry_at().unwrap();
        }
        call(&mut b, now, S);
        assert_eq!(b.state(), Closed);
        call(&mut b, now.plus_ms(1000), E);
        assert_eq!(b.retry_at(), Some(now.plus_ms(11_000)), "closing resets the backoff");
    }

    #[test]
    fn seed_weighted_score_trips_without_a_minimum() {
        let mut b = Breaker::new(&BreakerConfig { weight_threshold: 10.0, minimum_calls: 1000, weights: ErrorWeights::default(), ..BreakerConfig::default() });
        // server_error 2.5 × 3 + timeout 2.0 = 9.5: closed; + rate_limit 1.5 = 11: open.
        for _ in 0..3 {
            b.on_outcome(t(0), false, Some(ErrorClass::ServerError), 1.0);
        }
        b.on_outcome(t(1), false, Some(ErrorClass::Timeout), 1.0);
        b.on_outcome(t(1), false, Some(ErrorClass::ClientError), 1.0);
        assert_eq!(b.state(), Closed);
        assert!((b.metrics().failure_weight - 9.5).abs() < 1e-12);
        b.on_outcome(t(2), false, Some(ErrorClass::RateLimit), 1.0);
        assert_eq!(b.state(), Open);
    }

    #[test]
    fn weights_outside_the_window_do_not_count() {
        let mut b = Breaker::new(&BreakerConfig { window_s: 10, minimum_calls: 1000, ..BreakerConfig::default() });
        // One server error every 4 s: at most 3 × 2.5 = 7.5 in any 10 s window.
        for s in 0..=20 {
            b.on_outcome(t(s * 4), false, Some(ErrorClass::ServerError), 1.0);
        }
        assert_eq!(b.state(), Closed);
        // 80, 83, 86, 89 puts four in one window: 10 ≥ 10.
        for s in [83, 86] {
            b.on_outcome(t(s), false, Some(ErrorClass::ServerError), 1.0);
        }
        assert_eq!(b.state(), Closed);
        b.on_outcome(t(89), false, Some(ErrorClass::ServerError), 1.0);
        assert_eq!(b.state(), Open);
    }

    #[test]
    fn slow_calls_trip_by_rate() {
        let mut b = Breaker::new(&BreakerConfig { minimum_calls: 4, slow_call_rate_threshold: 0.75, slow_call_duration_ms: 1000, ..BreakerConfig::default() });
        for latency in [1500.0, 1000.0, 2000.0] {
            b.on_outcome(t(0), true, None, latency);
        }
        assert_eq!(b.state(), Closed, "exactly the threshold is not slow");
        b.on_outcome(t(0), true, None, 1000.5);
        assert_eq!(b.state(), Open, "3/4 slow ≥ 75 %");
    }

    #[test]
    fn forced_open_refuses_even_after_the_wait() {
        let mut b = rate_breaker(4);
        b.force_open(t(0));
        assert_eq!(b.try_acquire(t(1000)).0, Permission::Refused { retry_at: None });
        assert_eq!(b.advance(t(10_000)), None);
        feed(&mut b, t(10_001), &[S, S, S, S, S]);
        assert_eq!(b.state(), ForcedOpen);
    }

    #[test]
    fn disabled_lets_everything_through_without_transitions() {
        let mut b = rate_breaker(4);
        b.disable(t(0));
        for _ in 0..100 {
            assert_eq!(call(&mut b, t(1), E), None);
            assert_eq!(b.try_acquire(t(1)).0, Permission::Permitted);
        }
        assert_eq!(b.state(), Disabled);
    }

    #[test]
    fn metrics_only_records_but_never_opens() {
        let mut b = rate_breaker(4);
        b.metrics_only(t(0));
        feed(&mut b, t(1), &[E; 10]);
        assert_eq!(b.state(), MetricsOnly);
        assert_eq!(b.metrics().calls, 10);
        assert_eq!(b.metrics().failure_rate, 1.0);
    }

    #[test]
    fn reset_closes_and_forgets() {
        let mut b = rate_breaker(4);
        feed(&mut b, t(0), &[E; 5]);
        let tr = b.reset(t(1)).unwrap();
        assert_eq!((tr.from, tr.to), (Open, Closed));
        feed(&mut b, t(1), &[E, E, E, E]);
        assert_eq!(b.state(), Closed);
    }
}
