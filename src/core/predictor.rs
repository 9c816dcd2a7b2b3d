//! The online predictor: counts requests per model step from the request stream, forecasts the
//! next horizon at each step boundary, and says when to cut limits ahead of a spike. A plain
//! struct driven by event time; the topology turns its steps into outputs.
//!
//! At each boundary (the first request or time advance in a new step) the finished steps are
//! appended to the recent counts (gaps count zero), and once the counts reach back as far as
//! the model's longest lag (and at least a day, for the baseline), the model forecasts the horizon
//! from the new step. A forecast is a
//! spike when its mean exceeds `spike_factor` × the baseline (the larger of the last hour's and
//! the last day's mean per step) with a probability above `min_confidence`, that probability
//! taken from the model's conformal predictive distribution ([`crate::forecast::intervals`]). A spike cuts
//! the predicted multiplier to `1 / spike_factor` (the forecast's) until the end of its horizon;
//! a later spike forecast moves the end and the factor; the multiplier returns to 1 when the
//! cut ends.
//!
//! Start-up: `seed` puts the counts of recent history in (the steps it covers are then closed, and
//! requests in them are not counted again); without it, forecasts begin once the stream itself has
//! filled the model's longest lag. The topology gives it every requests partition's demand per
//! usage cell (`usage.rs`), as the fold closes them, and moves it to the time each step could
//! close at (`Topology::predict_due`).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::forecast::model::DemandModel;
use crate::forecast::series::Series;
use crate::wire::outputs::Prediction;
use crate::wire::time::Millis;

#[derive(Debug, Clone, PartialEq)]
pub struct PredictorConfig {
    pub scope: String,
    pub spike_factor: f64,
    pub min_confidence: f64,
    /// The coverage of the published interval.
    pub coverage: f64,
}

impl Default for PredictorConfig {
    fn default() -> Self {
        PredictorConfig { scope: "global".into(), spike_factor: 2.0, min_confidence: 0.8, coverage: 0.95 }
    }
}

/// What one step boundary produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    /// The boundary: the start of the new step.
    pub at: Millis,
    pub prediction: Option<Prediction>,
    /// A new predicted multiplier for the limits (a cut, its change, or 1.0 when it ends).
    pub multiplier: Option<f64>,
    /// Set when this forecast started a cut (for the proactive alert).
    pub spike: Option<Spike>,
    /// A step this boundary closed that an earlier forecast predicted one step ahead: what was
    /// predicted and what came, in requests per minute (the prediction error metric).
    pub observed: Option<Observed>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed {
    pub predicted: f64,
    pub actual: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spike {
    pub spike_factor: f64,
    pub confidence: f64,
    pub until: Millis,
}

pub struct Predictor {
    model: Arc<DemandModel>,
    cfg: PredictorConfig,
    step_ms: i64,
    lateness_ms: i64,
    keep: usize,
    /// Closed steps, oldest first; `first` is the index (time / step) of the oldest.
    counts: VecDeque<f64>,
    first: i64,
    /// The first step not yet closed, and the counts of the open steps from it on.
    open_from: Option<i64>,
    open: VecDeque<f64>,
    watermark: Millis,
    cut: Option<(f64, Millis)>,
    label: String,
    /// Recent history, applied at the first event (only its steps before that event's).
    pending_seed: Option<Series>,
    late: u64,
    /// The latest one-step-ahead forecast: its step and value (requests per step).
    next: Option<(i64, f64)>,
}

/// What a predictor has counted and decided: what a new instance takes from the leader's views
/// (`Topology::views`) instead of starting from its history alone.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PredictorState {
    pub scope: String,
    pub step_ms: i64,
    pub counts: Vec<f64>,
    pub first: i64,
    pub open_from: Option<i64>,
    pub open: Vec<f64>,
    /// Milliseconds (its start is before any time a timestamp can say).
    pub watermark_ms: i64,
    pub cut: Option<(f64, Millis)>,
    pub next: Option<(i64, f64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    #[error("the history is at a step of {history} ms, the model's is {model} ms")]
    Step { history: i64, model: i64 },
}

impl Predictor {
    /// A predictor that counts a request in its own step as long as that step is open: until
    /// event time has passed the step's end by `lateness_ms`.
    pub fn new(model: Arc<DemandModel>, cfg: PredictorConfig, lateness_ms: i64) -> Self {
        let step_ms = model.step_ms().max(1);
        // The longest lag or mean, and a day for the baseline.
        let keep = model.features.warmup().max((86_400_000 / step_ms) as usize).max(1);
        let label = format!("{}-{}", model.family.label(), model.resolution);
        Predictor {
            model,
            cfg,
            step_ms,
            lateness_ms: lateness_ms.max(0),
            keep,
            counts: VecDeque::with_capacity(keep + 1),
            first: 0,
            open_from: None,
            open: VecDeque::new(),
            watermark: Millis(i64::MIN),
            cut: None,
            label,
            pending_seed: None,
            late: 0,
            next: None,
        }
    }

    /// Its counts and cut, to hand over.
    pub fn state(&self) -> PredictorState {
        PredictorState {
            scope: self.cfg.scope.clone(),
            step_ms: self.step_ms,
            counts: self.counts.iter().copied().collect(),
            first: self.first,
            open_from: self.open_from,
            open: self.open.iter().copied().collect(),
            watermark_ms: self.watermark.0,
            cut: self.cut,
            next: self.next,
        }
    }

    /// Takes over another instance's counts and cut (same scope and step; otherwise false and
    /// nothing changes). The seed is not applied then: the counts already cover it.
    pub fn take_over(&mut self, s: &PredictorState) -> bool {
        if s.scope != self.cfg.scope || s.step_ms != self.step_ms || s.counts.len() > self.keep || s.open.len() > 100_000 {
            return false;
        }
        self.counts = s.counts.iter().copied().collect();
        self.first = s.first;
        self.open_from = s.open_from;
        self.open = s.open.iter().copied().collect();
        self.watermark = Millis(s.watermark_ms);
        self.cut = s.cut;
        self.next = s.next;
        self.pending_seed = None;
        true
    }

    /// The scope its predictions are published under.
    pub fn scope(&self) -> &str {
        &self.cfg.scope
    }

    pub fn step_ms(&self) -> i64 {
        self.step_ms
    }

    /// The end of the first open step and the event time at which it closes (its end plus the
    /// lateness); none before the first event.
    pub fn next_close_at(&self) -> Option<(Millis, Millis)> {
        self.open_from.map(|s| {
            let end = (s + 1).saturating_mul(self.step_ms);
            (Millis(end), Millis(end.saturating_add(self.lateness_ms)))
        })
    }

    /// Requests not counted because their step had closed (or lay before the start).
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Starts from the counts of recent history, applied at the first event: the history's
    /// steps before that event's step become the closed counts (so a history that overlaps the
    /// stream is not counted twice, and never lends the stream its future); a gap between the
    /// history's end and the first event counts zero. Call before any event.
    pub fn seed(&mut self, history: &Series) -> Result<(), SeedError> {
        if history.step_ms != self.step_ms {
            return Err(SeedError::Step { history: history.step_ms, model: self.step_ms });
        }
        self.pending_seed = Some(history.clone());
        Ok(())
    }

    /// The multiplier in force (1.0 without a cut).
    pub fn multiplier(&self) -> f64 {
        self.cut.map(|(m, _)| m).unwrap_or(1.0)
    }

    /// Counts one request at `t` (after moving time to `t`).
    pub fn on_request(&mut self, t: Millis, out: &mut Vec<Step>) {
        self.on_requests(t, 1.0, out);
    }

    /// Counts `weight` requests at `t` (after moving time to `t`), in the step of `t` while that
    /// step is open; a request for a closed step is late and not counted.
    pub fn on_requests(&mut self, t: Millis, weight: f64, out: &mut Vec<Step>) {
        self.advance(t, out);
        let s = t.0.div_euclid(self.step_ms);
        let Some(from) = self.open_from else { return };
        if s < from {
            self.late += 1;
            return;
        }
        // `advance` has closed every step more than the lateness behind `t`: the index is small.
        let i = (s - from) as usize;
        if self.open.len() <= i {
            self.open.resize(i + 1, 0.0);
        }
        self.open[i] += weight;
    }

    /// Moves event time to `t` (never back): closes the steps that ended more than the lateness
    /// ago, and forecasts from the first step still open.
    pub fn advance(&mut self, t: Millis, out: &mut Vec<Step>) {
        if self.open_from.is_none() {
            self.start(t.0.div_euclid(self.step_ms));
        }
        if t <= self.watermark {
            return;
        }
        self.watermark = t;
        let Some(from) = self.open_from else { return };
        // Step s closes once (s + 1) · step + lateness ≤ t.
        let c = (t.0 - self.lateness_ms).div_euclid(self.step_ms);
        if c <= from {
            return;
        }
        let closing = (c - from) as usize;
        let counted = closing.min(self.open.len());
        let per_minute = 60_000.0 / self.step_ms as f64;
        let mut observed = None;
        // The step the last forecast predicted, if it closes now (a step without requests
        // counts zero).
        if let Some((step, predicted)) = self.next.take()
            && (from..c).contains(&step)
        {
            let i = (step - from) as usize;
            let actual = self.open.get(i).copied().unwrap_or(0.0);
            observed = Some(Observed { predicted: predicted * per_minute, actual: actual * per_minute });
        }
        for _ in 0..counted {
            let v = self.open.pop_front().unwrap_or(0.0);
            self.push(v);
        }
        // Steps without requests count zero; more than `keep` of them leave only zeros.
        for _ in 0..(closing - counted).min(self.keep) {
            self.push(0.0);
        }
        self.open_from = Some(c);
        self.first = c - self.counts.len() as i64;
        let mut step = self.forecast(c, t);
        step.observed = observed;
        out.push(step);
    }

    /// The first event, in step `s`: the seed's steps before it are the closed counts.
    fn start(&mut self, s: i64) {
        let mut from = s;
        if let Some(h) = self.pending_seed.take() {
            let h_first = h.start.0.div_euclid(self.step_ms);
            let upto = (s - h_first).clamp(0, h.values.len() as i64) as usize;
            if upto > 0 {
                let skip = upto.saturating_sub(self.keep);
                self.counts = h.values[skip..upto].iter().copied().collect();
                from = h_first + upto as i64;
            }
        }
        self.open_from = Some(from);
        self.first = from - self.counts.len() as i64;
    }

    fn push(&mut self, v: f64) {
        self.counts.push_back(v);
        while self.counts.len() > self.keep {
            self.counts.pop_front();
        }
    }

    /// Forecasts the horizon from step `s` (the first open one), at event time `at`.
    fn forecast(&mut self, s: i64, at: Millis) -> Step {
        let now = Millis(s * self.step_ms);
        let mut step = Step { at, ..Step::default() };
        if let Some((_, until)) = self.cut
            && now >= until
        {
            self.cut = None;
            step.multiplier = Some(1.0);
        }
        if self.counts.len() < self.keep {
            return step;
        }
        let values: &[f64] = self.counts.make_contiguous();
        let start = Millis(self.first * self.step_ms);
        let Ok(f) = self.model.forecast_horizon(values, start, values.len(), self.cfg.spike_factor, self.cfg.coverage) else {
            return step;
        };
        let per_minute = 60_000.0 / self.step_ms as f64;
        let h = f.values.len() as i64;
        self.next = f.values.first().map(|&v| (s, v));
        let until = Millis(now.0 + h * self.step_ms);
        step.prediction = Some(Prediction {
            ts: at,
            scope: self.cfg.scope.clone(),
            horizon_start: now,
            horizon_minutes: ((h * self.step_ms) / 60_000) as u32,
            predicted: f.mean * per_minute,
            lower: f.lower * per_minute,
            upper: f.upper * per_minute,
            baseline: f.baseline * per_minute,
            spike_factor: f.spike_factor,
            confidence: f.confidence,
            model: self.label.clone(),
        });
        if f.alerts_spike(self.cfg.spike_factor, self.cfg.min_confidence) {
            let m = 1.0 / f.spike_factor;
            let started = self.cut.is_none();
            if self.cut.map(|(old, _)| old) != Some(m) {
                step.multiplier = Some(m);
            }
            self.cut = Some((m, until));
            if started {
                step.spike = Some(Spike { spike_factor: f.spike_factor, confidence: f.confidence, until });
            }
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::features::{EventSpan, FeatureSpec, Transform};
    use crate::forecast::model::{Family, FitOptions, fit};
    use crate::forecast::rng::SplitMix64;

    const HOUR: i64 = 3_600_000;
    const STEP: i64 = 5 * 60_000;

    /// 5-minute counts around 100 with noise, 6× for an hour at each planned surge (every third
    /// day at 12:00), for `days` days.
    fn history(days: usize, surges: &[EventSpan]) -> Series {
        let mut rng = SplitMix64::new(9);
        let values = (0..days * 288)
            .map(|i| {
                let t = Millis(i as i64 * STEP);
                let base = 100.0 + 20.0 * (rng.unit() - 0.5);
                if surges.iter().any(|e| e.start <= t && t < e.end) { base * 6.0 } else { base }
            })
            .collect();
        Series { start: Millis(0), step_ms: STEP, values }
    }

    fn surges(days: usize) -> Vec<EventSpan> {
        (1..days as i64)
            .step_by(3)
            .map(|d| EventSpan { start: Millis(d * 24 * HOUR + 12 * HOUR), end: Millis(d * 24 * HOUR + 13 * HOUR), label: "campaign".into() })
            .collect()
    }

    fn model(events: &[EventSpan]) -> Arc<DemandModel> {
        let s = history(30, events);
        let mut o = FitOptions::new(Family::Poisson, 12);
        let mut spec = FeatureSpec::for_resolution(STEP, events, Transform::Log1p);
        spec.weekly_harmonics = 0;
        spec.lags = vec![1, 288];
        o.spec = Some(spec);
        Arc::new(fit(&s, events, &o).expect("fit"))
    }

    /// Feeds `n` requests per step for `steps` steps from `from`; returns every step's output.
    fn feed(p: &mut Predictor, from: i64, steps: i64, n: impl Fn(i64) -> u32) -> Vec<(Millis, Step)> {
        let mut all = Vec::new();
        for s in from..from + steps {
            let mut out = Vec::new();
            for k in 0..n(s) {
                p.on_request(Millis(s * STEP + i64::from(k) % STEP), &mut out);
            }
            all.extend(out.into_iter().map(|o| (Millis(s * STEP), o)));
        }
        all
    }

    #[test]
    fn a_predictor_that_takes_over_anothers_state_forecasts_as_it_does() {
        let mut events = surges(30);
        let planned = EventSpan { start: Millis(31 * 24 * HOUR + 12 * HOUR), end: Millis(31 * 24 * HOUR + 13 * HOUR), label: "campaign".into() };
        events.push(planned.clone());
        let m = model(&events);
        let n = |s: i64| if Millis(s * STEP) >= planned.start && Millis(s * STEP) < planned.end { 600 } else { 100 };
        let mut a = Predictor::new(m.clone(), PredictorConfig::default(), 0);
        feed(&mut a, 30 * 288, 288 + 100, n);
        // Handed over as JSON, to a predictor that has seen nothing (and would start from zero).
        let state: PredictorState = serde_json::from_str(&serde_json::to_string(&a.state()).expect("json")).expect("state");
        let mut b = Predictor::new(m, PredictorConfig::default(), 0);
        assert!(b.take_over(&state));
        let (from, steps) = (30 * 288 + 288 + 100, 188);
        let after_a = feed(&mut a, from, steps, n);
        let after_b = feed(&mut b, from, steps, n);
        assert!(after_a.iter().any(|(_, s)| s.spike.is_some()), "the campaign is forecast after the handover");
        assert_eq!(after_b, after_a);
        // Another scope's state is not taken.
        let mut c = Predictor::new(model(&surges(30)), PredictorConfig { scope: "checkout".into(), ..PredictorConfig::default() }, 0);
        assert!(!c.take_over(&state));
    }

    #[test]
    fn the_cut_comes_before_a_planned_surge_and_ends_after_it() {
        // The model knows a campaign on day 31 at 12:00 (after its training data).
        let mut events = surges(30);
        let planned = EventSpan { start: Millis(31 * 24 * HOUR + 12 * HOUR), end: Millis(31 * 24 * HOUR + 13 * HOUR), label: "campaign".into() };
        events.push(planned.clone());
        let mut p = Predictor::new(model(&events), PredictorConfig::default(), 0);
        // Days 30 and 31 live, flat at 100 per step until the campaign (the stream itself has no
        // sign of it before 12:00).
        let steps = feed(&mut p, 30 * 288, 2 * 288, |s| if Millis(s * STEP) >= planned.start && Millis(s * STEP) < planned.end { 600 } else { 100 });
        let first_cut = steps.iter().find(|(_, o)| o.spike.is_some()).map(|(t, o)| (*t, o.clone())).expect("a cut");
        assert!(first_cut.0 < planned.start, "the cut came at {}, the surge at {}", first_cut.0, planned.start);
        assert!(first_cut.0.0 >= planned.start.0 - HOUR, "cut too early: {}", first_cut.0);
        let m = first_cut.1.multiplier.expect("a multiplier");
        assert!(m < 0.5, "{m}");
        let pred = first_cut.1.prediction.expect("a prediction");
        assert!(pred.spike_factor > 2.0 && pred.confidence > 0.8, "{pred:?}");
        // The multiplier comes back to 1 once the spike's horizon has passed.
        let restored = steps.iter().filter(|(t, o)| *t > planned.start && o.multiplier == Some(1.0)).count();
        assert_eq!(restored, 1);
        assert_eq!(p.multiplier(), 1.0);
        // Every step after the first day of history publishes a prediction.
        assert!(steps.iter().filter(|(_, o)| o.prediction.is_some()).count() >= 288);
    }

    #[test]
    fn a_flat_series_is_never_cut() {
        let mut p = Predictor::new(model(&surges(30)), PredictorConfig::default(), 0);
        let steps = feed(&mut p, 40 * 288, 3 * 288, |_| 100);
        assert!(steps.iter().all(|(_, o)| o.multiplier.is_none() && o.spike.is_none()));
        let preds: Vec<_> = steps.iter().filter_map(|(_, o)| o.prediction.as_ref()).collect();
        assert!(!preds.is_empty());
        // Each closed step a forecast covered one step ahead is observed: 100 requests per
        // 5 minutes is 20 a minute, against about as much predicted.
        let observed: Vec<Observed> = steps.iter().filter_map(|(_, o)| o.observed).collect();
        assert!(observed.len() + 1 >= preds.len() && !observed.is_empty(), "{} observed of {} predictions", observed.len(), preds.len());
        for o in &observed {
            assert!((o.actual - 20.0).abs() < 1e-9, "{o:?}");
            assert!((o.predicted / 20.0 - 1.0).abs() < 0.2, "{o:?}");
        }
        for pr in preds {
            assert!((pr.predicted / (100.0 / 5.0) - 1.0).abs() < 0.2, "{pr:?}");
            assert!(pr.lower <= pr.predicted && pr.predicted <= pr.upper);
        }
    }

    #[test]
    fn a_seeded_predictor_forecasts_at_once_and_takes_only_the_history_before_the_stream() {
        let events = surges(30);
        let m = model(&events);
        let h = history(30, &events);
        let end = 30 * 288;
        // The stream starts inside the history (an hour before its end): only the history's
        // steps before the first event's are taken.
        let mut p = Predictor::new(m.clone(), PredictorConfig::default(), 0);
        p.seed(&h).expect("same step");
        assert!(p.counts.is_empty(), "applied at the first event");
        let mut out = Vec::new();
        p.on_requests(Millis((end - 12) * STEP + 1), 2.0, &mut out);
        assert!(out.is_empty());
        assert_eq!(p.counts.len(), p.keep);
        assert_eq!(p.counts.back(), Some(&h.values[(end - 13) as usize]));
        assert_eq!(p.open_from, Some(end - 12));
        p.advance(Millis((end - 11) * STEP), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].at, Millis((end - 11) * STEP));
        assert!(out[0].prediction.is_some(), "a full history forecasts at the first boundary");
        assert_eq!(p.counts.back(), Some(&2.0));
        assert_eq!(p.counts.len(), p.keep);
        // A stream that starts after the history: the gap counts zero, and the first event's
        // boundary forecasts at once.
        let mut q = Predictor::new(m.clone(), PredictorConfig::default(), 0);
        q.seed(&h).expect("same step");
        let mut out = Vec::new();
        q.on_request(Millis((end + 3) * STEP), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(q.counts.iter().rev().take(3).copied().collect::<Vec<_>>(), vec![0.0; 3]);
        // A history at another step is refused.
        let mut r = Predictor::new(m, PredictorConfig::default(), 0);
        let wrong = Series { start: Millis(0), step_ms: 60_000, values: vec![1.0; 10] };
        assert_eq!(r.seed(&wrong), Err(SeedError::Step { history: 60_000, model: STEP }));
    }

    #[test]
    fn gaps_count_as_zero_and_late_requests_are_not_counted() {
        let mut p = Predictor::new(model(&surges(30)), PredictorConfig::default(), 0);
        let mut out = Vec::new();
        p.on_request(Millis(10 * STEP), &mut out);
        p.on_request(Millis(5 * STEP), &mut out); // before the start: late
        p.on_request(Millis(10 * STEP + 7), &mut out);
        p.advance(Millis(13 * STEP), &mut out);
        assert_eq!(p.counts.iter().copied().collect::<Vec<_>>(), vec![2.0, 0.0, 0.0]);
        assert_eq!((p.first, p.late()), (10, 1));
        assert_eq!(out.len(), 1);
        p.on_request(Millis(12 * STEP), &mut out); // its step has closed
        assert_eq!(p.late(), 2);
        // A gap longer than the kept history leaves exactly the kept history, all zero.
        p.advance(Millis(100_000 * STEP), &mut out);
        assert_eq!(p.counts.len(), p.keep);
        assert_eq!(p.first, 100_000 - p.keep as i64);
        assert!(p.counts.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn within_the_lateness_a_request_counts_in_its_own_step() {
        // Two partitions read in turns: one runs two minutes ahead of the other.
        let mut p = Predictor::new(model(&surges(30)), PredictorConfig::default(), 150_000);
        let mut out = Vec::new();
        p.on_request(Millis(10 * STEP), &mut out);
        p.on_request(Millis(11 * STEP + 60_000), &mut out); // ahead
        p.on_request(Millis(10 * STEP + 200_000), &mut out); // behind, its step still open
        assert!(out.is_empty(), "step 10 closes only 150 s after its end");
        p.on_request(Millis(11 * STEP + 150_000), &mut out); // 11·STEP + 150 s closes step 10
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].at, Millis(11 * STEP + 150_000));
        assert_eq!(p.counts.iter().copied().collect::<Vec<_>>(), vec![2.0]);
        assert_eq!(p.open.iter().copied().collect::<Vec<_>>(), vec![2.0]);
        assert_eq!(p.late(), 0);
        p.on_request(Millis(10 * STEP + 10), &mut out); // its step has closed: late
        assert_eq!(p.late(), 1);
    }
}
