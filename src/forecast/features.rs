//! The features a demand model sees at each time step: calendar terms, lags, rolling means and
//! known external events. Pure functions over a series of counts; no I/O.
//!
//! Predicting the count of step `t` uses:
//! - **calendar:** Fourier terms of the time of day and of the time of week at the start of
//!   step `t` (`sin`/`cos` of `2πk·phase`, k = 1..K), so a handful of numbers carry the daily and
//!   weekly shapes;
//! - **lags:** the counts of steps `t − l` (1 step, 1 day, 1 week by default);
//! - **rolling means:** the mean count of the `w` steps before `t` (1 hour and 1 day by default);
//! - **events:** for each label of the external-factors file (`holiday`, `surge`, a campaign…),
//!   1 when step `t` starts inside one of that label's `[start, end)` spans, else 0.
//!
//! Lags and rolling means go through the spec's `transform` (`log1p` for the Poisson model, whose
//! log link would otherwise exponentiate raw counts). When forecasting several steps ahead, the
//! steps after the forecast origin take their lags from the forecast itself (recursive
//! forecasting, as mlforecast and skforecast do).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::wire::time::Millis;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const WEEK: i64 = 7 * DAY;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EventsError {
    #[error("events file line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("events file: the header must be `start,end,label`, found {0:?}")]
    Header(String),
}

/// A known external factor: a holiday, a planned campaign, an expected surge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpan {
    pub start: Millis,
    pub end: Millis,
    pub label: String,
}

/// Reads `start,end,label` rows (RFC 3339 times; a header line first).
pub fn parse_events(text: &str) -> Result<Vec<EventSpan>, EventsError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    match lines.next() {
        Some((_, h)) if h.trim().replace(' ', "") == "start,end,label" => {}
        Some((_, h)) => return Err(EventsError::Header(h.to_string())),
        None => return Ok(Vec::new()),
    }
    let mut out = Vec::new();
    for (i, l) in lines {
        let bad = |message: String| EventsError::Line { line: i + 1, message };
        let mut cols = l.splitn(3, ',');
        let (Some(s), Some(e), Some(label)) = (cols.next(), cols.next(), cols.next()) else {
            return Err(bad("expected start,end,label".into()));
        };
        let start = Millis::parse_rfc3339(s.trim()).map_err(|e| bad(format!("start: {e}")))?;
        let end = Millis::parse_rfc3339(e.trim()).map_err(|e| bad(format!("end: {e}")))?;
        if end <= start {
            return Err(bad(format!("end {} is not after start {}", e.trim(), s.trim())));
        }
        let label = label.trim();
        if label.is_empty() {
            return Err(bad("empty label".into()));
        }
        out.push(EventSpan { start, end, label: label.to_string() });
    }
    Ok(out)
}

/// How lag and rolling-mean inputs are transformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    Identity,
    Log1p,
}

impl Transform {
    fn apply(self, x: f64) -> f64 {
        match self {
            Transform::Identity => x,
            Transform::Log1p => x.max(0.0).ln_1p(),
        }
    }
}

/// Which features a model uses; saved in the model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Step length in milliseconds (the resolution).
    pub step_ms: i64,
    /// Fourier harmonics of the time of day.
    pub daily_harmonics: usize,
    /// Fourier harmonics of the time of week.
    pub weekly_harmonics: usize,
    /// Lags, in steps.
    pub lags: Vec<usize>,
    /// Rolling-mean windows, in steps.
    pub rolling_means: Vec<usize>,
    /// One indicator per label, in this order.
    pub event_labels: Vec<String>,
    pub transform: Transform,
}

impl FeatureSpec {
    /// The default features for a resolution: 4 daily and 3 weekly harmonics, lags of 1 step,
    /// 1 day and 1 week, means of the last hour and day (those that are whole steps and longer
    /// than one step), and one indicator per event label.
    pub fn for_resolution(step_ms: i64, events: &[EventSpan], transform: Transform) -> Self {
        let steps = |span: i64| (span % step_ms == 0).then(|| (span / step_ms) as usize);
        let mut lags = vec![1];
        lags.extend([DAY, WEEK].into_iter().filter_map(steps).filter(|&l| l > 1));
        lags.dedup();
        let mut rolling_means: Vec<usize> = [HOUR, DAY].into_iter().filter_map(steps).filter(|&w| w > 1).collect();
        rolling_means.dedup();
        // A mean over steps that are all lags already is their sum over w: collinear.
        rolling_means.retain(|&w| !(1..=w).all(|l| lags.contains(&l)));
        let labels: BTreeSet<&str> = events.iter().map(|e| e.label.as_str()).collect();
        // With P steps a period, harmonics above (P − 1)/2 alias lower ones (collinear).
        let harmonics = |period: i64, want: usize| ((period / step_ms).saturating_sub(1) / 2).clamp(0, want as i64) as usize;
        FeatureSpec {
            step_ms,
            daily_harmonics: harmonics(DAY, 4),
            weekly_harmonics: harmonics(WEEK, 3),
            lags,
            rolling_means,
            event_labels: labels.into_iter().map(String::from).collect(),
            transform,
        }
    }

    /// Steps of history needed before the first step that has every feature.
    pub fn warmup(&self) -> usize {
        self.lags.iter().chain(&self.rolling_means).copied().max().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        2 * (self.daily_harmonics + self.weekly_harmonics) + self.lags.len() + self.rolling_means.len() + self.event_labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn names(&self) -> Vec<String> {
        let mut n = Vec::with_capacity(self.len());
        for (period, k) in [("daily", self.daily_harmonics), ("weekly", self.weekly_harmonics)] {
            for i in 1..=k {
                n.push(format!("{period}_sin_{i}"));
                n.push(format!("{period}_cos_{i}"));
            }
        }
        n.extend(self.lags.iter().map(|l| format!("lag_{l}")));
        n.extend(self.rolling_means.iter().map(|w| format!("mean_{w}")));
        n.extend(self.event_labels.iter().map(|l| format!("event_{l}")));
        n
    }

    /// Writes the features of the step starting at `t`, whose earlier counts `values` gives.
    pub fn row(&self, t: Millis, values: &Values<'_>, index: usize, events: &EventIndex, out: &mut Vec<f64>) {
        out.clear();
        for (period, k) in [(DAY, self.daily_harmonics), (WEEK, self.weekly_harmonics)] {
            let phase = t.0.rem_euclid(period) as f64 / period as f64 * std::f64::consts::TAU;
            for i in 1..=k {
                let a = phase * i as f64;
                out.push(a.sin());
                out.push(a.cos());
            }
        }
        for &l in &self.lags {
            out.push(self.transform.apply(values.get(index - l)));
        }
        for &w in &self.rolling_means {
            out.push(self.transform.apply(values.sum(index - w, index) / w as f64));
        }
        for label in 0..self.event_labels.len() {
            out.push(if events.active(label, t) { 1.0 } else { 0.0 });
        }
    }
}

/// The events of a spec's labels, by label, for fast look-ups.
#[derive(Debug, Clone, Default)]
pub struct EventIndex {
    by_label: Vec<Vec<(Millis, Millis)>>,
}

impl EventIndex {
    pub fn new(spec: &FeatureSpec, events: &[EventSpan]) -> Self {
        let by_label = spec
            .event_labels
            .iter()
            .map(|label| {
                let mut spans: Vec<_> = events.iter().filter(|e| &e.label == label).map(|e| (e.start, e.end)).collect();
                spans.sort();
                // Merge overlapping spans, so the one before a time is the only candidate.
                let mut merged: Vec<(Millis, Millis)> = Vec::with_capacity(spans.len());
                for (s, e) in spans {
                    match merged.last_mut() {
                        Some(last) if s <= last.1 => last.1 = last.1.max(e),
                        _ => merged.push((s, e)),
                    }
                }
                merged
            })
            .collect();
        EventIndex { by_label }
    }

    fn active(&self, label: usize, t: Millis) -> bool {
        let spans = &self.by_label[label];
        // The last (merged) span starting at or before t.
        let i = spans.partition_point(|(s, _)| *s <= t);
        i > 0 && t < spans[i - 1].1
    }
}

/// Counts up to a forecast origin (observed) followed by forecast values, with prefix sums over
/// the observed part so rolling means cost O(1) there.
pub struct Values<'a> {
    observed: &'a [f64],
    prefix: &'a [f64],
    origin: usize,
    forecast: &'a [f64],
}

impl<'a> Values<'a> {
    /// `prefix` must be `prefix_sums(observed)`; steps at `origin` and after come from `forecast`.
    pub fn new(observed: &'a [f64], prefix: &'a [f64], origin: usize, forecast: &'a [f64]) -> Self {
        debug_assert_eq!(prefix.len(), observed.len() + 1);
        Values { observed, prefix, origin: origin.min(observed.len()), forecast }
    }

    fn get(&self, i: usize) -> f64 {
        if i < self.origin { self.observed[i] } else { self.forecast.get(i - self.origin).copied().unwrap_or(0.0) }
    }

    /// Sum of steps `[a, b)`.
    fn sum(&self, a: usize, b: usize) -> f64 {
        let o = self.origin;
        let mut s = 0.0;
        if a < o {
            s += self.prefix[b.min(o)] - self.prefix[a];
        }
        if b > o {
            s += (a.max(o)..b).map(|i| self.get(i)).sum::<f64>();
        }
        s
    }
}

pub fn prefix_sums(values: &[f64]) -> Vec<f64> {
    let mut p = Vec::with_capacity(values.len() + 1);
    let mut acc = 0.0;
    p.push(0.0);
    for v in values {
        acc += v;
        p.push(acc);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Millis {
        Millis::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn defaults_follow_the_resolution() {
        let s = FeatureSpec::for_resolution(300_000, &[], Transform::Identity);
        assert_eq!(s.lags, vec![1, 288, 2016]);
        assert_eq!(s.rolling_means, vec![12, 288]);
        assert_eq!(s.warmup(), 2016);
        assert_eq!(s.len(), 14 + 3 + 2);
        assert_eq!(s.names().len(), s.len());
        let h = FeatureSpec::for_resolution(HOUR, &[], Transform::Identity);
        assert_eq!(h.lags, vec![1, 24, 168]);
        assert_eq!(h.rolling_means, vec![24]);
        let d = FeatureSpec::for_resolution(DAY, &[], Transform::Identity);
        assert_eq!((d.daily_harmonics, d.weekly_harmonics, d.lags.clone()), (0, 3, vec![1, 7]));
        // 6-hour steps: 4 a day, so one daily harmonic; 12-hour steps: none, and no mean of
        // the 2 steps lags 1 and 2 already hold.
        let six = FeatureSpec::for_resolution(6 * HOUR, &[], Transform::Identity);
        assert_eq!((six.daily_harmonics, six.weekly_harmonics), (1, 3));
        let twelve = FeatureSpec::for_resolution(12 * HOUR, &[], Transform::Identity);
        assert_eq!((twelve.daily_harmonics, twelve.lags.clone(), twelve.rolling_means.clone()), (0, vec![1, 2, 14], vec![]));
    }

    #[test]
    fn a_row_has_the_lags_means_calendar_and_events() {
        let events = parse_events("start,end,label\n2026-01-05T03:00:00Z,2026-01-05T04:00:00Z,surge\n").unwrap();
        let spec = FeatureSpec {
            step_ms: HOUR,
            daily_harmonics: 1,
            weekly_harmonics: 0,
            lags: vec![1, 2],
            rolling_means: vec![3],
            event_labels: vec!["surge".into()],
            transform: Transform::Identity,
        };
        let idx = EventIndex::new(&spec, &events);
        let obs = [1.0, 2.0, 3.0, 4.0, 5.0];
        let p = prefix_sums(&obs);
        let start = t("2026-01-05T00:00:00Z");
        let mut row = Vec::new();
        // Step 3 starts at 03:00 (an eighth of the day): sin = cos = √½.
        spec.row(Millis(start.0 + 3 * HOUR), &Values::new(&obs, &p, 5, &[]), 3, &idx, &mut row);
        assert!((row[0] - 0.5f64.sqrt()).abs() < 1e-12 && (row[1] - 0.5f64.sqrt()).abs() < 1e-12);
        // Step 3 (03:00) is inside the surge.
        assert_eq!(&row[2..], &[3.0, 2.0, 2.0, 1.0]);
        // With the origin at 2, steps 2 and 3 come from the forecast.
        let fc = [10.0, 20.0];
        spec.row(Millis(start.0 + 4 * HOUR), &Values::new(&obs, &p, 2, &fc), 4, &idx, &mut row);
        assert_eq!(&row[2..], &[20.0, 10.0, (2.0 + 10.0 + 20.0) / 3.0, 0.0]);
    }

    #[test]
    fn events_files_are_checked() {
        assert!(matches!(parse_events("a,b\n"), Err(EventsError::Header(_))));
        // A long span behind many short ones of the same label still counts.
        let mut text = String::from("start,end,label\n2026-01-01T00:00:00Z,2026-02-01T00:00:00Z,holiday\n");
        for h in 0..70 {
            text.push_str(&format!("2026-01-02T{:02}:00:00Z,2026-01-02T{:02}:30:00Z,holiday\n", h % 24, h % 24));
        }
        let events = parse_events(&text).unwrap();
        let spec = FeatureSpec::for_resolution(HOUR, &events, Transform::Identity);
        let idx = EventIndex::new(&spec, &events);
        assert!(idx.active(0, t("2026-01-30T00:00:00Z")) && !idx.active(0, t("2026-02-01T00:00:00Z")));
        let e = parse_events("start,end,label\n2026-01-05T02:00:00Z,2026-01-05T01:00:00Z,x\n").unwrap_err();
        assert!(e.to_string().contains("line 2") && e.to_string().contains("not after"), "{e}");
        let e = parse_events("start,end,label\nyesterday,2026-01-05T01:00:00Z,x\n").unwrap_err();
        assert!(e.to_string().contains("start"), "{e}");
        assert_eq!(parse_events("").unwrap(), vec![]);
    }
}
