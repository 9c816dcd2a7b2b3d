//! The demand model: fitted by linfa on the features of [`crate::forecast::features`], saved as JSON,
//! forecasting recursively with conformal intervals ([`crate::forecast::intervals`]). Pure: series in,
//! model and forecasts out; reading and writing files is the caller's.
//!
//! Families:
//! - `ols`: ordinary least squares on the counts (linfa-linear);
//! - `elastic_net`: the same with an L1 + L2 penalty on standardised features (linfa-elasticnet);
//! - `poisson`: a Poisson GLM with a log link, fitted by iteratively reweighted least squares
//!   ([`crate::forecast::glm`]), whose lags and means are `log1p` counts, so the daily and weekly shapes
//!   multiply rather than add.
//!
//! Coefficients are fitted on standardised features (each column minus its mean, over its
//! standard deviation) and stored on the features' own scale, so `intercept + Σ βᵢxᵢ` (through
//! `exp` for `poisson`) is the one-step forecast from the model file alone.

use linfa::Dataset;
use linfa::traits::Fit;
use linfa_elasticnet::ElasticNet;
use linfa_linear::LinearRegression;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::forecast::accuracy::{Accuracy, ErrorSums, seasonal_naive_scale};
use crate::forecast::features::{EventIndex, EventSpan, FeatureSpec, Transform, Values, prefix_sums};
use crate::forecast::intervals::{IntervalScale, ScoreQuantiles};
use crate::forecast::series::Series;
use crate::wire::time::Millis;

pub const FORMAT: &str = "surgeguard-demand-model";
pub const FORMAT_VERSION: u32 = 1;

const HOUR: i64 = 3_600_000;
/// The fewest held-out forecasts intervals are calibrated on: with n scores the conformal
/// 2.5 % and 97.5 % quantiles exist from n = 39. (The 1 % and 99 % levels need 99; below that
/// they are the smallest and largest scores.)
pub const MIN_ORIGINS: usize = 40;
/// The longest lag or mean a model file may ask for (about 2 years of 1-minute steps).
const MAX_WARMUP: usize = 1 << 20;
const DAY: i64 = 24 * HOUR;

#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("the history has {have} steps; {need} are needed ({why})")]
    TooShort { have: usize, need: usize, why: String },
    #[error("fitting the {family} model: {message}")]
    Solver { family: &'static str, message: String },
    #[error("the {family} model's coefficients are not finite (the features may be collinear or the series degenerate)")]
    NotFinite { family: &'static str },
    #[error("not a surgeguard demand model: format {0:?}")]
    Format(String),
    #[error("model format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    Version { found: u32 },
    #[error("model file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("model file: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Family {
    Ols,
    ElasticNet { penalty: f64, l1_ratio: f64 },
    Poisson,
}

impl Family {
    pub fn label(&self) -> &'static str {
        match self {
            Family::Ols => "ols",
            Family::ElasticNet { .. } => "elastic_net",
            Family::Poisson => "poisson",
        }
    }

    /// The transform the family's lags and means take.
    pub fn transform(&self) -> Transform {
        match self {
            Family::Poisson => Transform::Log1p,
            _ => Transform::Identity,
        }
    }
}

/// How to fit.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub family: Family,
    /// Features; `None` takes [`FeatureSpec::for_resolution`] with the events' labels.
    pub spec: Option<FeatureSpec>,
    /// Steps ahead the intervals are calibrated for (the forecast horizon).
    pub horizon_steps: usize,
    pub scale: IntervalScale,
    /// Steps held out for calibration; `None`: a fifth of the usable history, at most 14 days.
    pub calibration_steps: Option<usize>,
    /// At most this many forecast origins in the held-out part (evenly spaced).
    pub max_calibration_origins: usize,
    /// Coefficients (raw scale, with the intercept) to start the held-out fit from: a model of
    /// similar data, such as a neighbouring backtest window's. Only iterative fits (Poisson)
    /// use it, and only when it has one coefficient per feature.
    pub warm_start: Option<(Vec<f64>, f64)>,
}

impl FitOptions {
    pub fn new(family: Family, horizon_steps: usize) -> Self {
        FitOptions {
            family,
            spec: None,
            horizon_steps,
            scale: IntervalScale::SqrtLevel,
            calibration_steps: None,
            max_calibration_origins: 500,
            warm_start: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Span {
    pub start: Millis,
    /// The start of the last step.
    pub end: Millis,
    pub steps: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intervals {
    pub method: String,
    pub scale: IntervalScale,
    pub levels: Vec<f64>,
    pub horizon_steps: usize,
    /// Score quantiles for 1, 2, … `horizon_steps` steps ahead.
    pub per_step: Vec<ScoreQuantiles>,
    /// Score quantiles of the mean over the horizon.
    pub horizon_mean: ScoreQuantiles,
    pub calibration: Span,
    pub origins: usize,
}

/// A fitted demand model, as saved by `surgeguard fit` (documented in models/README.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemandModel {
    pub format: String,
    pub format_version: u32,
    pub family: Family,
    /// `5m`, `1h`…
    pub resolution: String,
    pub features: FeatureSpec,
    pub feature_names: Vec<String>,
    pub coefficients: Vec<f64>,
    pub intercept: f64,
    /// The external events the model knows (past ones, and future ones to forecast with).
    pub events: Vec<EventSpan>,
    pub training: Span,
    pub intervals: Intervals,
    /// One-step-ahead accuracy on the training steps (MASE scaled by the daily seasonal naive).
    pub in_sample: Accuracy,
}

/// A forecast of one horizon from one origin.
#[derive(Debug, Clone, PartialEq)]
pub struct HorizonForecast {
    pub start: Millis,
    /// Per step.
    pub values: Vec<f64>,
    /// Mean per step over the horizon, and its interval.
    pub mean: f64,
    pub lower: f64,
    pub upper: f64,
    /// The level the system carried before the origin: the larger of the last hour's and the last
    /// day's mean per step, at least 1.
    pub baseline: f64,
    /// `mean / baseline`.
    pub spike_factor: f64,
    /// `P(mean over the horizon > spike_threshold × baseline)`.
    pub confidence: f64,
}

impl HorizonForecast {
    /// The spike-alert rule, the same in the live predictor and the backtest: the forecast's
    /// spike factor above `spike_threshold` with a confidence above `min_confidence`.
    pub fn alerts_spike(&self, spike_threshold: f64, min_confidence: f64) -> bool {
        self.spike_factor > spike_threshold && self.confidence > min_confidence
    }
}

fn too_short(have: usize, need: usize, why: impl Into<String>) -> ForecastError {
    ForecastError::TooShort { have, need, why: why.into() }
}

/// Features and targets of steps `[from, to)` of `values` (observed throughout).
fn design(spec: &FeatureSpec, series: &Series, prefix: &[f64], events: &EventIndex, from: usize, to: usize) -> (Array2<f64>, Array1<f64>) {
    let k = spec.len();
    let mut x = Array2::zeros((to - from, k));
    let mut row = Vec::with_capacity(k);
    let vals = Values::new(&series.values, prefix, series.values.len(), &[]);
    for (r, i) in (from..to).enumerate() {
        spec.row(series.time_of(i), &vals, i, events, &mut row);
        x.row_mut(r).assign(&ndarray::ArrayView1::from(&row[..]));
    }
    let y = Array1::from_iter(series.values[from..to].iter().copied());
    (x, y)
}

/// Fits standardised columns; returns coefficients on the raw scale and the intercept.
fn solve(family: Family, x: ArrayView2<'_, f64>, y: ArrayView1<'_, f64>, start: Option<(&[f64], f64)>) -> Result<(Vec<f64>, f64), ForecastError> {
    let k = x.ncols();
    let n = x.nrows() as f64;
    // Row by row (the matrix is row-major): sums and sums of squares per column.
    let (mut sum, mut sq) = (vec![0.0; k], vec![0.0; k]);
    for row in x.rows() {
        for (j, v) in row.iter().enumerate() {
            sum[j] += v;
            sq[j] += v * v;
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let sd: Vec<f64> = (0..k).map(|j| (sq[j] / n - mean[j] * mean[j]).max(0.0).sqrt()).collect();
    // Constant columns (an event that never happens in the training range) carry no information.
    let used: Vec<usize> = (0..k).filter(|&j| sd[j] > 1e-9 * (1.0 + mean[j].abs())).collect();
    let mut z = Array2::zeros((x.nrows(), used.len()));
    for (mut zr, xr) in z.rows_mut().into_iter().zip(x.rows()) {
        for (c, &j) in used.iter().enumerate() {
            zr[c] = (xr[j] - mean[j]) / sd[j];
        }
    }
    let label = family.label();
    let fail = |message: String| ForecastError::Solver { family: label, message };
    let (beta, b0): (Vec<f64>, f64) = match family {
        Family::Ols => {
            let m = LinearRegression::new().fit(&Dataset::new(z, y.to_owned())).map_err(|e| fail(e.to_string()))?;
            (m.params().to_vec(), m.intercept())
        }
        Family::ElasticNet { penalty, l1_ratio } => {
            let m = ElasticNet::params()
                .penalty(penalty)
                .l1_ratio(l1_ratio)
                .max_iterations(5_000)
                .fit(&Dataset::new(z, y.to_owned()))
                .map_err(|e| fail(e.to_string()))?;
            (m.hyperplane().to_vec(), m.intercept())
        }
        Family::Poisson => {
            if y.iter().any(|v| *v < 0.0) {
                return Err(fail("the Poisson model needs counts ≥ 0".into()));
            }
            // A warm start on the standardised scale: β·sd, and the intercept at the means.
            let init = start.map(|(coef, b0)| {
                let mut b = Array1::<f64>::zeros(used.len() + 1);
                let mut icpt = b0;
                for (c, &j) in used.iter().enumerate() {
                    b[c] = coef[j] * sd[j];
                    icpt += coef[j] * mean[j];
                }
                b[used.len()] = icpt;
                b
            });
            crate::forecast::glm::poisson_irls(&z, y, init).map_err(fail)?
        }
    };
    let mut coef = vec![0.0; k];
    let mut intercept = b0;
    for (c, &j) in used.iter().enumerate() {
        coef[j] = beta[c] / sd[j];
        intercept -= beta[c] * mean[j] / sd[j];
    }
    if !intercept.is_finite() || coef.iter().any(|c| !c.is_finite()) {
        return Err(ForecastError::NotFinite { family: label });
    }
    Ok((coef, intercept))
}

/// Fits a model to `series` (with the known `events`), calibrates its intervals on a held-out
/// end, then refits on everything.
pub fn fit(series: &Series, events: &[EventSpan], opts: &FitOptions) -> Result<DemandModel, ForecastError> {
    fit_with(series, events, opts, None)
}

/// The feature rows of a whole series (from its warm-up on), computed once for many fits on
/// its prefixes (a backtest): a row depends only on the steps before it.
pub struct Design {
    spec: FeatureSpec,
    x: Array2<f64>,
}

impl Design {
    pub fn new(series: &Series, events: &[EventSpan], opts: &FitOptions) -> Self {
        let spec = spec_of(series, events, opts);
        let w = spec.warmup().min(series.values.len());
        let prefix = prefix_sums(&series.values);
        let (x, _) = design(&spec, series, &prefix, &EventIndex::new(&spec, events), w, series.values.len());
        Design { spec, x }
    }
}

fn spec_of(series: &Series, events: &[EventSpan], opts: &FitOptions) -> FeatureSpec {
    opts.spec.clone().unwrap_or_else(|| FeatureSpec::for_resolution(series.step_ms, events, opts.family.transform()))
}

/// [`fit`], with the rows of a [`Design`] of a series that `series` is a prefix of.
pub fn fit_with(series: &Series, events: &[EventSpan], opts: &FitOptions, rows: Option<&Design>) -> Result<DemandModel, ForecastError> {
    let spec = match rows {
        Some(d) => d.spec.clone(),
        None => spec_of(series, events, opts),
    };
    let n = series.values.len();
    let w = spec.warmup();
    let h = opts.horizon_steps.max(1);
    let k = spec.len() + 1;
    let usable = n.saturating_sub(w);
    // At least MIN_ORIGINS forecasts to calibrate on, so the 95 % interval has finite bounds.
    let cal = opts.calibration_steps.unwrap_or_else(|| (usable / 5).min((14 * DAY / series.step_ms.max(1)) as usize)).max(h + MIN_ORIGINS - 1);
    let need_train = 2 * k + 10;
    if usable < cal + need_train {
        let why = format!("{w} steps of lags first, then {need_train} to fit {k} coefficients and {cal} held out to calibrate the intervals");
        return Err(too_short(n, w + cal + need_train, why));
    }
    let prefix = prefix_sums(&series.values);
    let index = EventIndex::new(&spec, events);
    let resolution = resolution_label(series.step_ms);
    let span = |a: usize, b: usize| Span { start: series.time_of(a), end: series.time_of(b - 1), steps: b - a };

    // Held-out model: fitted up to the calibration part.
    let split = n - cal;
    // The rows [w, n): from the shared design, or computed here.
    let own;
    let all = match rows {
        Some(d) if d.x.nrows() >= n - w => d.x.slice(ndarray::s![..n - w, ..]),
        _ => {
            own = design(&spec, series, &prefix, &index, w, n).0;
            own.view()
        }
    };
    let y_all = ArrayView1::from(&series.values[w..n]);
    let (x, y) = (all.slice(ndarray::s![..split - w, ..]), y_all.slice(ndarray::s![..split - w]));
    let warm = opts.warm_start.as_ref().filter(|(c, _)| c.len() == spec.len()).map(|(c, b)| (c.as_slice(), *b));
    let (coef, intercept) = solve(opts.family, x, y, warm)?;
    let mut model = DemandModel {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        family: opts.family,
        resolution,
        feature_names: spec.names(),
        features: spec.clone(),
        coefficients: coef,
        intercept,
        events: events.to_vec(),
        training: span(w, n),
        intervals: Intervals {
            method: "split_conformal".into(),
            scale: opts.scale,
            levels: crate::forecast::intervals::LEVELS.to_vec(),
            horizon_steps: h,
            per_step: Vec::new(),
            horizon_mean: ScoreQuantiles(Vec::new()),
            calibration: span(split, n),
            origins: 0,
        },
        in_sample: Accuracy::default(),
    };

    // Forecasts from origins in the held-out part, as many as allowed, evenly spaced.
    let last = n - h;
    let candidates = last + 1 - split;
    let count = candidates.min(opts.max_calibration_origins.max(1));
    let mut per_step: Vec<Vec<f64>> = vec![Vec::with_capacity(count); h];
    let mut means = Vec::with_capacity(count);
    let mut fc = Forecaster::new(&model, &series.values, &prefix, series.start);
    for c in 0..count {
        let origin = split + c * (candidates - 1) / (count - 1).max(1);
        let pred = fc.point(origin, h);
        for (s, p) in pred.iter().enumerate() {
            per_step[s].push((series.values[origin + s] - p) / opts.scale.of(*p));
        }
        let pm = pred.iter().sum::<f64>() / h as f64;
        let am = series.values[origin..origin + h].iter().sum::<f64>() / h as f64;
        means.push((am - pm) / opts.scale.of(pm));
    }
    drop(fc);
    let no_scores = || too_short(n, n + 1, "no calibration origin");
    model.intervals.per_step = per_step.iter_mut().map(|s| ScoreQuantiles::from_scores(s).ok_or_else(no_scores)).collect::<Result<_, _>>()?;
    model.intervals.horizon_mean = ScoreQuantiles::from_scores(&mut means).ok_or_else(no_scores)?;
    model.intervals.origins = count;

    // The final model: everything.
    let (x, y) = (all, y_all);
    let (coef, intercept) = solve(opts.family, x, y, Some((&model.coefficients, model.intercept)))?;
    model.coefficients = coef;
    model.intercept = intercept;
    let eta = x.dot(&Array1::from(model.coefficients.clone()));
    let mut sums = ErrorSums::default();
    for (actual, e) in y.iter().zip(eta.iter()) {
        sums.add(*actual, model.link(intercept + e));
    }
    let m = (DAY / series.step_ms.max(1)).max(1) as usize;
    model.in_sample = sums.finish(seasonal_naive_scale(&series.values[w..], m));
    Ok(model)
}

/// `5m`, `1h`, `90s`… for a step length.
pub fn resolution_label(step_ms: i64) -> String {
    for (unit, ms) in [("d", DAY), ("h", HOUR), ("m", 60_000), ("s", 1_000)] {
        if step_ms % ms == 0 {
            return format!("{}{unit}", step_ms / ms);
        }
    }
    format!("{step_ms}ms")
}

impl DemandModel {
    /// The mean from the linear predictor.
    fn link(&self, eta: f64) -> f64 {
        match self.family {
            Family::Poisson => eta.min(50.0).exp(),
            _ => eta.max(0.0),
        }
    }

    pub fn step_ms(&self) -> i64 {
        self.features.step_ms
    }

    pub fn to_json(&self) -> String {
        // The model holds only numbers, strings and plain structs: serialisation cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a model file's text, checking the format and its version before the fields.
    pub fn from_json(text: &str) -> Result<Self, ForecastError> {
        #[derive(Deserialize)]
        struct Head {
            format: String,
            format_version: u32,
        }
        let head: Head = serde_json::from_str(text)?;
        if head.format != FORMAT {
            return Err(ForecastError::Format(head.format));
        }
        if head.format_version != FORMAT_VERSION {
            return Err(ForecastError::Version { found: head.format_version });
        }
        let m: DemandModel = serde_json::from_str(text)?;
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), ForecastError> {
        let bad = |m: String| Err(ForecastError::Invalid(m));
        if self.features.step_ms <= 0 {
            return bad(format!("features.step_ms is {}; expected a positive step", self.features.step_ms));
        }
        if self.coefficients.len() != self.features.len() || self.feature_names.len() != self.features.len() {
            return bad(format!("{} coefficients and {} names for {} features", self.coefficients.len(), self.feature_names.len(), self.features.len()));
        }
        if self.features.lags.contains(&0) || self.features.rolling_means.contains(&0) {
            return bad("lags and rolling means must be at least 1 step".into());
        }
        if self.features.warmup() > MAX_WARMUP {
            return bad(format!("a lag or mean of {} steps; at most {MAX_WARMUP} are supported", self.features.warmup()));
        }
        if self.intervals.levels != crate::forecast::intervals::LEVELS {
            return bad(format!("intervals.levels must be {:?}", crate::forecast::intervals::LEVELS));
        }
        if self.intervals.per_step.iter().chain([&self.intervals.horizon_mean]).any(|q| q.0.windows(2).any(|w| !(w[0] <= w[1]))) {
            return bad("interval quantiles must be finite and ascending".into());
        }
        let h = self.intervals.horizon_steps;
        let nq = crate::forecast::intervals::LEVELS.len();
        if h == 0 || self.intervals.per_step.len() != h || self.intervals.per_step.iter().chain([&self.intervals.horizon_mean]).any(|q| q.0.len() != nq) {
            return bad(format!("intervals: expected {h} per-step quantile sets and a horizon-mean set, {nq} quantiles each"));
        }
        Ok(())
    }

    /// A forecast of the model's horizon from `origin`: `values[..origin]` are observed, with
    /// `values[0]` starting at `start`.
    pub fn forecast_horizon(
        &self,
        values: &[f64],
        start: Millis,
        origin: usize,
        spike_threshold: f64,
        coverage: f64,
    ) -> Result<HorizonForecast, ForecastError> {
        let w = self.features.warmup();
        if origin < w || origin > values.len() {
            return Err(too_short(origin.min(values.len()), w, "the model's longest lag or mean"));
        }
        let prefix = prefix_sums(&values[..origin]);
        let mut fc = Forecaster::new(self, &values[..origin], &prefix, start);
        let h = self.intervals.horizon_steps;
        let pred = fc.point(origin, h);
        let at = Millis(start.0 + origin as i64 * self.step_ms());
        Ok(self.summarise(&values[..origin], origin, at, pred, spike_threshold, coverage))
    }

    /// The horizon summary of a point forecast from `origin` (which starts at `at`).
    pub fn summarise(&self, observed: &[f64], origin: usize, at: Millis, pred: Vec<f64>, spike_threshold: f64, coverage: f64) -> HorizonForecast {
        let h = pred.len().max(1);
        let mean = pred.iter().sum::<f64>() / h as f64;
        let q = &self.intervals.horizon_mean;
        let scale = self.intervals.scale;
        let (lower, upper) = q.interval(mean, scale, coverage);
        let baseline = baseline(observed, origin, self.step_ms());
        HorizonForecast {
            start: at,
            values: pred,
            mean,
            lower,
            upper,
            baseline,
            spike_factor: mean / baseline,
            confidence: q.prob_above(mean, scale, spike_threshold * baseline),
        }
    }
}

/// The larger of the mean per step over the last hour and over the last day before `origin`
/// (as far back as there is history), at least 1.
pub fn baseline(values: &[f64], origin: usize, step_ms: i64) -> f64 {
    let mean_of = |span: i64| {
        let n = ((span / step_ms.max(1)).max(1) as usize).min(origin);
        if n == 0 { 0.0 } else { values[origin - n..origin].iter().sum::<f64>() / n as f64 }
    };
    mean_of(HOUR).max(mean_of(DAY)).max(1.0)
}

/// Recursive point forecasts over one observed series.
pub struct Forecaster<'a> {
    model: &'a DemandModel,
    observed: &'a [f64],
    prefix: &'a [f64],
    start: Millis,
    events: EventIndex,
    coef: Vec<f64>,
    row: Vec<f64>,
}

impl<'a> Forecaster<'a> {
    /// `prefix` is `prefix_sums(observed)`; `observed[0]` starts at `start`.
    pub fn new(model: &'a DemandModel, observed: &'a [f64], prefix: &'a [f64], start: Millis) -> Self {
        let events = EventIndex::new(&model.features, &model.events);
        Forecaster { model, observed, prefix, start, events, coef: model.coefficients.clone(), row: Vec::new() }
    }

    /// Forecasts `steps` steps from `origin` (the first forecast step); steps before it are
    /// observed. `origin` must be at least the model's warm-up.
    pub fn point(&mut self, origin: usize, steps: usize) -> Vec<f64> {
        let spec = &self.model.features;
        let step = spec.step_ms;
        let mut out: Vec<f64> = Vec::with_capacity(steps);
        for s in 0..steps {
            let i = origin + s;
            let vals = Values::new(self.observed, self.prefix, origin, &out);
            spec.row(Millis(self.start.0 + i as i64 * step), &vals, i, &self.events, &mut self.row);
            let eta = self.model.intercept + self.row.iter().zip(&self.coef).map(|(x, b)| x * b).sum::<f64>();
            out.push(self.model.link(eta));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::rng::SplitMix64;

    fn normal(rng: &mut SplitMix64) -> f64 {
        // Box–Muller.
        let (u, v) = (rng.unit().max(1e-300), rng.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn spec(lags: Vec<usize>, transform: Transform) -> FeatureSpec {
        FeatureSpec { step_ms: HOUR, daily_harmonics: 1, weekly_harmonics: 0, lags, rolling_means: vec![], event_labels: vec![], transform }
    }

    /// `y_t = 50 + 20·sin(2π·day phase) + 10·cos(…) + 0.5·y_{t−1} + ε`, ε ~ N(0, sd²).
    fn ar_series(n: usize, sd: f64, seed: u64) -> Series {
        let mut rng = SplitMix64::new(seed);
        let mut v: Vec<f64> = vec![100.0];
        for i in 1..n {
            let a = (i as f64 / 24.0) * std::f64::consts::TAU;
            v.push(50.0 + 20.0 * a.sin() + 10.0 * a.cos() + 0.5 * v[i - 1] + sd * normal(&mut rng));
        }
        Series { start: Millis(0), step_ms: HOUR, values: v }
    }

    #[test]
    fn ols_recovers_known_coefficients() {
        let s = ar_series(3000, 1.0, 7);
        let mut o = FitOptions::new(Family::Ols, 6);
        o.spec = Some(spec(vec![1], Transform::Identity));
        let m = fit(&s, &[], &o).unwrap();
        assert_eq!(m.feature_names, vec!["daily_sin_1", "daily_cos_1", "lag_1"]);
        for (got, want) in m.coefficients.iter().zip([20.0, 10.0, 0.5]) {
            assert!((got - want).abs() < 0.02 * want.max(1.0), "{:?}", m.coefficients);
        }
        assert!((m.intercept - 50.0).abs() < 1.0, "{}", m.intercept);
        // The one-step in-sample error is the noise's: MAE ≈ 0.8·sd.
        assert!((m.in_sample.mae - 0.798).abs() < 0.05, "{:?}", m.in_sample);
        // The model file reads back to the same model; unknown fields and other quantile
        // levels are refused, as models/README.md says.
        let json = m.to_json();
        assert_eq!(DemandModel::from_json(&json).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["intervals"]["colour"] = serde_json::json!("blue");
        let e = DemandModel::from_json(&v.to_string()).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["intervals"]["levels"][0] = serde_json::json!(0.02);
        assert!(matches!(DemandModel::from_json(&v.to_string()), Err(ForecastError::Invalid(_))));
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["features"]["lags"] = serde_json::json!([1, 4_000_000]);
        assert!(matches!(DemandModel::from_json(&v.to_string()), Err(ForecastError::Invalid(_))));
    }

    #[test]
    fn poisson_recovers_known_coefficients() {
        // log μ_t = 1 + 0.8·sin + 0.4·log1p(y_{t−1}).
        let mut rng = SplitMix64::new(3);
        let mut v = vec![5.0];
        for i in 1..4000 {
            let a = (i as f64 / 24.0) * std::f64::consts::TAU;
            let mu = (1.0 + 0.8 * a.sin() + 0.4 * f64::ln_1p(v[i - 1])).exp();
            // Poisson by inversion.
            let (mut k, mut p, u) = (0.0, (-mu).exp(), rng.unit());
            let mut cdf = p;
            while u > cdf && k < 1000.0 {
                k += 1.0;
                p *= mu / k;
                cdf += p;
            }
            v.push(k);
        }
        let s = Series { start: Millis(0), step_ms: HOUR, values: v };
        let mut o = FitOptions::new(Family::Poisson, 6);
        o.spec = Some(spec(vec![1], Transform::Log1p));
        let m = fit(&s, &[], &o).unwrap();
        for (got, want) in m.coefficients.iter().zip([0.8, 0.0, 0.4]) {
            assert!((got - want).abs() < 0.05, "{:?} {}", m.coefficients, m.intercept);
        }
        assert!((m.intercept - 1.0).abs() < 0.1, "{}", m.intercept);
    }

    #[test]
    fn intervals_cover_a_gaussian_series_as_promised() {
        // Fit on 4000 steps, then count how often fresh steps fall in the intervals.
        let s = ar_series(8000, 5.0, 11);
        let train = Series { start: s.start, step_ms: HOUR, values: s.values[..4000].to_vec() };
        let mut o = FitOptions::new(Family::Ols, 4);
        o.spec = Some(spec(vec![1], Transform::Identity));
        o.scale = IntervalScale::Constant;
        o.calibration_steps = Some(2000);
        o.max_calibration_origins = 2000;
        let m = fit(&train, &[], &o).unwrap();
        let prefix = prefix_sums(&s.values);
        let mut fc = Forecaster::new(&m, &s.values, &prefix, s.start);
        let (mut in80, mut in95, mut n) = (0, 0, 0);
        for origin in (4000..7990).step_by(4) {
            let pred = fc.point(origin, 4);
            for (k, p) in pred.iter().enumerate() {
                let y = s.values[origin + k];
                let (a, b) = m.intervals.per_step[k].interval(*p, IntervalScale::Constant, 0.8);
                let (c, d) = m.intervals.per_step[k].interval(*p, IntervalScale::Constant, 0.95);
                in80 += usize::from(a <= y && y <= b);
                in95 += usize::from(c <= y && y <= d);
                n += 1;
            }
        }
        let (c80, c95) = (in80 as f64 / n as f64, in95 as f64 / n as f64);
        assert!((c80 - 0.8).abs() < 0.03 && (c95 - 0.95).abs() < 0.02, "80 %: {c80}, 95 %: {c95}");
    }

    #[test]
    fn short_histories_and_bad_model_files_are_refused() {
        let s = ar_series(50, 1.0, 1);
        let e = fit(&s, &[], &FitOptions::new(Family::Ols, 12)).unwrap_err();
        assert!(e.to_string().contains("50 steps"), "{e}");
        assert!(matches!(DemandModel::from_json(r#"{"format":"x","format_version":1}"#), Err(ForecastError::Format(_))));
        assert!(matches!(DemandModel::from_json(r#"{"format":"surgeguard-demand-model","format_version":9}"#), Err(ForecastError::Version { found: 9 })));
        assert!(DemandModel::from_json("{").is_err());
    }

    #[test]
    fn resolution_labels() {
        assert_eq!(resolution_label(300_000), "5m");
        assert_eq!(resolution_label(HOUR), "1h");
        assert_eq!(resolution_label(90_000), "90s");
        assert_eq!(resolution_label(1500), "1500ms");
    }

    #[test]
    fn baseline_is_the_busier_of_the_last_hour_and_day() {
        let step = 30 * 60_000; // 2 steps an hour, 48 a day
        let mut v = vec![10.0; 48];
        v.extend([40.0, 40.0]);
        assert_eq!(baseline(&v, 50, step), 40.0);
        assert!((baseline(&v, 48, step) - 10.0).abs() < 1e-12);
        assert_eq!(baseline(&[0.0; 4], 4, step), 1.0);
    }
}
