//! Rolling-origin evaluation of the demand model, as statsforecast's `cross_validation` does:
//! for each of `windows` cutoffs, `step` apart and ending where the last horizon ends the
//! history, fit on everything before the cutoff (expanding window), forecast the horizon, and
//! compare with what happened. Beside the model, the daily and weekly seasonal-naive forecasts
//! on the same windows. Pure: a series in, a report out.
//!
//! Measures:
//! - MAE, RMSE and sMAPE over every forecast step of every window;
//! - MASE: each window's MAE over the in-sample MAE of the daily seasonal naive on that window's
//!   training data, averaged over the windows;
//! - coverage: the share of actual steps inside the 80 % and 95 % intervals;
//! - spikes: a window is a spike when the actual mean over its horizon exceeds
//!   `spike_threshold` × the baseline before the cutoff ([`crate::forecast::model::baseline`]); the
//!   model alerts when its spike factor exceeds the threshold with confidence above
//!   `min_confidence`. Precision and recall count windows; the lead time of a correct alert is
//!   from the cutoff (when it is raised) to the first step whose actual count exceeds the
//!   threshold.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use crate::forecast::accuracy::{Accuracy, ErrorSums, seasonal_naive_scale};
use crate::forecast::features::EventSpan;
use crate::forecast::features::prefix_sums;
use crate::forecast::model::{self, Design, FitOptions, ForecastError, Forecaster};
use crate::forecast::series::Series;
use crate::wire::time::Millis;

const DAY: i64 = 86_400_000;
const WEEK: i64 = 7 * DAY;

#[derive(Debug, Clone)]
pub struct BacktestOptions {
    pub fit: FitOptions,
    pub windows: usize,
    /// Steps between cutoffs.
    pub step: usize,
    pub spike_threshold: f64,
    pub min_confidence: f64,
    /// Worker threads (windows are independent).
    pub threads: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("window {window} (cutoff {cutoff}): {source}")]
    Window { window: usize, cutoff: Millis, source: ForecastError },
    #[error("{windows} windows {step} steps apart with a {horizon}-step horizon need {need} steps of history; it has {have}")]
    TooShort { windows: usize, step: usize, horizon: usize, need: usize, have: usize },
    #[error("windows, step and horizon must be at least 1")]
    Empty,
}

/// One window's forecasts.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub cutoff: Millis,
    #[serde(skip)]
    pub origin: usize,
    #[serde(skip)]
    pub actual: Vec<f64>,
    #[serde(skip)]
    pub predicted: Vec<f64>,
    #[serde(skip)]
    pub bands: Vec<[f64; 4]>,
    #[serde(skip)]
    pub naive_daily: Option<Vec<f64>>,
    #[serde(skip)]
    pub naive_weekly: Option<Vec<f64>>,
    pub mae: f64,
    /// Null when the training data has no daily seasonal-naive error to scale by.
    pub mase: Option<f64>,
    pub actual_mean: f64,
    pub predicted_mean: f64,
    pub baseline: f64,
    pub spike_factor: f64,
    pub confidence: f64,
    pub spike: bool,
    pub alert: bool,
    /// Minutes from the cutoff to the first step above the threshold, for a correct alert.
    pub lead_minutes: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Spikes {
    pub threshold: f64,
    pub min_confidence: f64,
    pub actual: usize,
    pub alerts: usize,
    pub true_positives: usize,
    /// Null when there was no alert.
    pub precision: Option<f64>,
    /// Null when there was no spike.
    pub recall: Option<f64>,
    pub mean_lead_minutes: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub family: String,
    pub resolution: String,
    #[serde(skip)]
    pub step_ms: i64,
    pub horizon_steps: usize,
    pub windows: usize,
    pub step: usize,
    pub first_cutoff: Millis,
    pub last_cutoff: Millis,
    pub model: Accuracy,
    pub coverage_80: f64,
    pub coverage_95: f64,
    /// Null when the first cutoff has less than a day (a week) of history.
    pub naive_daily: Option<Accuracy>,
    pub naive_weekly: Option<Accuracy>,
    pub spikes: Spikes,
    pub per_window: Vec<Window>,
}

/// The seasonal-naive forecast of `h` steps from `origin`: the last observed value one season
/// (of `m` steps) before each step.
pub fn seasonal_naive(values: &[f64], origin: usize, h: usize, m: usize) -> Option<Vec<f64>> {
    if m == 0 || origin < m {
        return None;
    }
    Some((0..h).map(|k| values[origin - m + k % m]).collect())
}

/// One window: its report line, and the model fitted at its cutoff.
fn run_window(
    series: &Series,
    events: &[EventSpan],
    opts: &BacktestOptions,
    rows: &Design,
    w: usize,
    origin: usize,
) -> Result<(Window, model::DemandModel), BacktestError> {
    let h = opts.fit.horizon_steps;
    let cutoff = series.time_of(origin);
    let train = Series { start: series.start, step_ms: series.step_ms, values: series.values[..origin].to_vec() };
    let model = model::fit_with(&train, events, &opts.fit, Some(rows)).map_err(|source| BacktestError::Window { window: w + 1, cutoff, source })?;
    let prefix = prefix_sums(&train.values);
    let predicted = Forecaster::new(&model, &train.values, &prefix, series.start).point(origin, h);
    let bands = predicted
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let q = &model.intervals.per_step[k];
            let (a, b) = q.interval(*p, model.intervals.scale, 0.8);
            let (c, d) = q.interval(*p, model.intervals.scale, 0.95);
            [a, b, c, d]
        })
        .collect();
    let hf = model.summarise(&train.values, origin, cutoff, predicted.clone(), opts.spike_threshold, 0.95);
    let actual = series.values[origin..origin + h].to_vec();
    let steps_in = |span: i64| (span / series.step_ms.max(1)) as usize;
    let mut e = ErrorSums::default();
    for (a, p) in actual.iter().zip(&predicted) {
        e.add(*a, *p);
    }
    let mase = seasonal_naive_scale(&train.values, steps_in(DAY).max(1)).filter(|s| *s > 0.0).map(|s| e.mae() / s);
    let actual_mean = actual.iter().sum::<f64>() / h as f64;
    let spike = actual_mean > opts.spike_threshold * hf.baseline;
    let alert = hf.alerts_spike(opts.spike_threshold, opts.min_confidence);
    let lead_minutes = (spike && alert)
        .then(|| actual.iter().position(|a| *a > opts.spike_threshold * hf.baseline))
        .flatten()
        .map(|k| k as f64 * series.step_ms as f64 / 60_000.0);
    Ok((
        Window {
            cutoff,
            origin,
            naive_daily: seasonal_naive(&series.values, origin, h, steps_in(DAY)),
            naive_weekly: seasonal_naive(&series.values, origin, h, steps_in(WEEK)),
            actual,
            predicted,
            bands,
            mae: e.mae(),
            mase,
            actual_mean,
            predicted_mean: hf.mean,
            baseline: hf.baseline,
            spike_factor: hf.spike_factor,
            confidence: hf.confidence,
            spike,
            alert,
            lead_minutes,
        },
        model,
    ))
}

/// Runs the backtest; `progress` is called once per finished window (from worker threads).
pub fn backtest(series: &Series, events: &[EventSpan], opts: &BacktestOptions, progress: &(dyn Fn() + Sync)) -> Result<Report, BacktestError> {
    let h = opts.fit.horizon_steps;
    if opts.windows == 0 || opts.step == 0 || h == 0 {
        return Err(BacktestError::Empty);
    }
    let n = series.values.len();
    let span = (opts.windows - 1) * opts.step + h;
    if n <= span {
        return Err(BacktestError::TooShort { windows: opts.windows, step: opts.step, horizon: h, need: span + 1, have: n });
    }
    let first = n - span;
    let origins: Vec<usize> = (0..opts.windows).map(|w| first + w * opts.step).collect();
    let rows = Design::new(series, events, &opts.fit);
    let mut results: Vec<Option<Result<Window, BacktestError>>> = (0..opts.windows).map(|_| None).collect();
    // The first window on its own: its model is every other window's starting point (the same
    // whatever the thread count, so the report is too).
    let first_window = run_window(series, events, opts, &rows, 0, origins[0]);
    progress();
    let warm = match &first_window {
        Ok((_, m)) => Some((m.coefficients.clone(), m.intercept)),
        Err(_) => None,
    };
    results[0] = Some(first_window.map(|(w, _)| w));
    let rest = BacktestOptions { fit: FitOptions { warm_start: warm, ..opts.fit.clone() }, ..opts.clone() };
    let opts = &rest;
    let next = AtomicUsize::new(1);
    let threads = opts.threads.clamp(1, opts.windows);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let w = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&origin) = origins.get(w) else { break };
                        done.push((w, run_window(series, events, opts, &rows, w, origin).map(|(w, _)| w)));
                        progress();
                    }
                    done
                })
            })
            .collect();
        for handle in handles {
            // A worker panicking is a bug; its windows stay empty and are reported below.
            for (w, r) in handle.join().unwrap_or_default() {
                results[w] = Some(r);
            }
        }
    });
    let mut windows = Vec::with_capacity(opts.windows);
    for (w, r) in results.into_iter().enumerate() {
        match r {
            Some(r) => windows.push(r?),
            None => {
                let cutoff = series.time_of(origins[w]);
                return Err(BacktestError::Window { window: w + 1, cutoff, source: ForecastError::Invalid("the worker thread failed".into()) });
            }
        }
    }
    Ok(report(series, opts, windows))
}

fn report(series: &Series, opts: &BacktestOptions, windows: Vec<Window>) -> Report {
    let mut model = ErrorSums::default();
    let (mut daily, mut weekly) = (Some(ErrorSums::default()), Some(ErrorSums::default()));
    let (mut c80, mut c95, mut n) = (0usize, 0usize, 0usize);
    for w in &windows {
        for (k, a) in w.actual.iter().enumerate() {
            model.add(*a, w.predicted[k]);
            let b = w.bands[k];
            c80 += usize::from(b[0] <= *a && *a <= b[1]);
            c95 += usize::from(b[2] <= *a && *a <= b[3]);
            n += 1;
        }
        for (sums, naive) in [(&mut daily, &w.naive_daily), (&mut weekly, &w.naive_weekly)] {
            match naive {
                Some(f) => {
                    if let Some(s) = sums.as_mut() {
                        w.actual.iter().zip(f).for_each(|(a, p)| s.add(*a, *p));
                    }
                }
                None => *sums = None,
            }
        }
    }
    // MASE: the mean of the windows' own (each scaled by its training data).
    let mase_of = |per_window: Vec<Option<f64>>| -> Option<f64> {
        let v: Option<Vec<f64>> = per_window.into_iter().collect();
        v.filter(|v| !v.is_empty()).map(|v| v.iter().sum::<f64>() / v.len() as f64)
    };
    let steps_per_day = (DAY / series.step_ms.max(1)).max(1) as usize;
    let naive_mase = |m: usize, naive: fn(&Window) -> &Option<Vec<f64>>| {
        mase_of(
            windows
                .iter()
                .map(|w| {
                    let f = naive(w).as_ref()?;
                    let mae = w.actual.iter().zip(f).map(|(a, p)| (a - p).abs()).sum::<f64>() / w.actual.len() as f64;
                    let scale = seasonal_naive_scale(&series.values[..w.origin], m)?;
                    (scale > 0.0).then(|| mae / scale)
                })
                .collect(),
        )
    };
    let mut acc = model.finish(None);
    acc.mase = mase_of(windows.iter().map(|w| w.mase).collect());
    let daily = daily.map(|s| Accuracy { mase: naive_mase(steps_per_day, |w| &w.naive_daily), ..s.finish(None) });
    let weekly = weekly.map(|s| Accuracy { mase: naive_mase(steps_per_day, |w| &w.naive_weekly), ..s.finish(None) });

    let actual = windows.iter().filter(|w| w.spike).count();
    let alerts = windows.iter().filter(|w| w.alert).count();
    let tp = windows.iter().filter(|w| w.spike && w.alert).count();
    let leads: Vec<f64> = windows.iter().filter_map(|w| w.lead_minutes).collect();
    let ratio = |a: usize, b: usize| (b > 0).then(|| a as f64 / b as f64);
    Report {
        family: opts.fit.family.label().into(),
        resolution: model::resolution_label(series.step_ms),
        step_ms: series.step_ms,
        horizon_steps: opts.fit.horizon_steps,
        windows: windows.len(),
        step: opts.step,
        first_cutoff: windows.first().map(|w| w.cutoff).unwrap_or_default(),
        last_cutoff: windows.last().map(|w| w.cutoff).unwrap_or_default(),
        model: acc,
        coverage_80: c80 as f64 / n.max(1) as f64,
        coverage_95: c95 as f64 / n.max(1) as f64,
        naive_daily: daily,
        naive_weekly: weekly,
        spikes: Spikes {
            threshold: opts.spike_threshold,
            min_confidence: opts.min_confidence,
            actual,
            alerts,
            true_positives: tp,
            precision: ratio(tp, alerts),
            recall: ratio(tp, actual),
            mean_lead_minutes: (!leads.is_empty()).then(|| leads.iter().sum::<f64>() / leads.len() as f64),
        },
        per_window: windows,
    }
}

impl Report {
    /// One row per window and step ahead.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("window,cutoff,ts,step_ahead,actual,predicted,lower_80,upper_80,lower_95,upper_95,naive_daily,naive_weekly\n");
        let step = self.step_ms;
        let opt = |v: &Option<Vec<f64>>, k: usize| v.as_ref().map(|v| v[k].to_string()).unwrap_or_default();
        for (i, w) in self.per_window.iter().enumerate() {
            for k in 0..w.actual.len() {
                let b = w.bands[k];
                out.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{},{},{},{}\n",
                    i + 1,
                    w.cutoff,
                    Millis(w.cutoff.0 + k as i64 * step),
                    k + 1,
                    w.actual[k],
                    w.predicted[k],
                    b[0],
                    b[1],
                    b[2],
                    b[3],
                    opt(&w.naive_daily, k),
                    opt(&w.naive_weekly, k)
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::model::Family;

    const HOUR: i64 = 3_600_000;

    fn window(origin: usize, actual: &[f64], predicted: &[f64], baseline: f64, alert: bool) -> Window {
        let spike = actual.iter().sum::<f64>() / actual.len() as f64 > 2.0 * baseline;
        Window {
            cutoff: Millis(origin as i64 * HOUR),
            origin,
            actual: actual.to_vec(),
            predicted: predicted.to_vec(),
            bands: predicted.iter().map(|p| [p - 1.0, p + 1.0, p - 3.0, p + 3.0]).collect(),
            naive_daily: Some(vec![0.0; actual.len()]),
            naive_weekly: None,
            mae: 0.0,
            mase: Some(1.0),
            actual_mean: 0.0,
            predicted_mean: 0.0,
            baseline,
            spike_factor: 0.0,
            confidence: 0.0,
            spike,
            alert,
            lead_minutes: (spike && alert).then_some(60.0),
        }
    }

    #[test]
    fn the_report_pools_windows_as_computed_by_hand() {
        let series = Series { start: Millis(0), step_ms: HOUR, values: vec![1.0; 48] };
        let opts = BacktestOptions { fit: FitOptions::new(Family::Ols, 2), windows: 3, step: 1, spike_threshold: 2.0, min_confidence: 0.8, threads: 1 };
        let w = vec![
            // errors 0 and 2 (inside the 95 % band, outside the 80 %); a spike (mean 10 > 2·4), alerted
            window(30, &[10.0, 10.0], &[10.0, 8.0], 4.0, true),
            // errors 1 and 4; no spike, alerted: a false positive
            window(31, &[5.0, 5.0], &[6.0, 1.0], 4.0, true),
            // errors 0 and 0; a spike, missed
            window(32, &[9.0, 9.0], &[9.0, 9.0], 4.0, false),
        ];
        let r = report(&series, &opts, w);
        assert!((r.model.mae - 7.0 / 6.0).abs() < 1e-12);
        assert!((r.model.rmse - (21.0f64 / 6.0).sqrt()).abs() < 1e-12);
        // sMAPE: 200·2/18, 200·1/11, 200·4/6, over 6 pairs.
        let smape = (400.0 / 18.0 + 200.0 / 11.0 + 800.0 / 6.0) / 6.0;
        assert!((r.model.smape - smape).abs() < 1e-9, "{}", r.model.smape);
        // Inside ±1: 4 of 6; inside ±3: 5 of 6 (the error of 4 is outside both).
        assert!((r.coverage_80 - 4.0 / 6.0).abs() < 1e-12);
        assert!((r.coverage_95 - 5.0 / 6.0).abs() < 1e-12);
        assert_eq!(r.model.mase, Some(1.0));
        // The daily naive forecast 0 everywhere: MAE = mean actual = 48/6; no weekly naive.
        assert!((r.naive_daily.unwrap().mae - 8.0).abs() < 1e-12);
        assert!(r.naive_weekly.is_none());
        let s = &r.spikes;
        assert_eq!((s.actual, s.alerts, s.true_positives), (2, 2, 1));
        assert_eq!((s.precision, s.recall, s.mean_lead_minutes), (Some(0.5), Some(0.5), Some(60.0)));
    }

    #[test]
    fn seasonal_naive_repeats_the_last_season() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(seasonal_naive(&v, 5, 3, 2), Some(vec![4.0, 5.0, 4.0]));
        assert_eq!(seasonal_naive(&v, 1, 1, 2), None);
    }

    /// A daily pattern with noise and a surge at 09:00 on some days; hourly steps.
    fn hourly(days: usize) -> Series {
        let mut rng = crate::forecast::rng::SplitMix64::new(5);
        let values = (0..days * 24)
            .map(|i| {
                let h = (i % 24) as f64;
                let surge = if i % 24 == 9 && (i / 24) % 3 == 0 { 150.0 } else { 0.0 };
                100.0 + 40.0 * (h / 24.0 * std::f64::consts::TAU).sin() + surge + 10.0 * (rng.unit() - 0.5)
            })
            .collect();
        Series { start: Millis(0), step_ms: HOUR, values }
    }

    #[test]
    fn a_backtest_beats_the_naive_forecasts_on_a_regular_series() {
        let s = hourly(60);
        let opts = BacktestOptions { fit: FitOptions::new(Family::Ols, 6), windows: 8, step: 24, spike_threshold: 2.0, min_confidence: 0.8, threads: 2 };
        let count = AtomicUsize::new(0);
        let r = backtest(&s, &[], &opts, &|| {
            count.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(count.into_inner(), 8);
        assert_eq!(r.per_window.len(), 8);
        assert_eq!(r.last_cutoff, s.time_of(s.values.len() - 6));
        assert!(r.model.mae < r.naive_daily.unwrap().mae, "{:?} vs {:?}", r.model, r.naive_daily);
        assert!(r.coverage_95 > 0.7, "{}", r.coverage_95);
        let csv = r.to_csv();
        assert_eq!(csv.lines().count(), 1 + 8 * 6);
        assert!(csv.lines().nth(1).unwrap().starts_with("1,"));
    }

    #[test]
    fn the_report_is_the_same_on_one_thread_or_three() {
        // Poisson fits start from the first window's model: the same whatever ran where.
        let s = hourly(60);
        let one = BacktestOptions { fit: FitOptions::new(Family::Poisson, 6), windows: 7, step: 24, spike_threshold: 2.0, min_confidence: 0.8, threads: 1 };
        let three = BacktestOptions { threads: 3, ..one.clone() };
        let (a, b) = (backtest(&s, &[], &one, &|| {}).unwrap(), backtest(&s, &[], &three, &|| {}).unwrap());
        assert_eq!(a.to_csv(), b.to_csv());
        assert_eq!(a.model.mae, b.model.mae);
    }

    #[test]
    fn too_many_windows_are_refused() {
        let s = hourly(3);
        let opts = BacktestOptions { fit: FitOptions::new(Family::Ols, 6), windows: 20, step: 24, spike_threshold: 2.0, min_confidence: 0.8, threads: 1 };
        let e = backtest(&s, &[], &opts, &|| {}).unwrap_err();
        assert!(matches!(e, BacktestError::TooShort { .. }), "{e}");
        let opts = BacktestOptions { windows: 1, step: 1, ..opts };
        let e = backtest(&s, &[], &opts, &|| {}).unwrap_err();
        assert!(e.to_string().contains("window 1"), "{e}");
    }
}
