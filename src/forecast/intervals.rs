//! Prediction intervals and probabilities by split conformal calibration.
//!
//! `fit` holds out the end of the history, fits on the rest, and forecasts from many origins in
//! the held-out part. Each forecast error, divided by a scale (`constant`: 1; `sqrt_level`:
//! `√max(ŷ, 1)`, the Poisson standard deviation, so quiet nights get narrow intervals and busy
//! hours wide ones), is a calibration score. The scores' quantiles are kept per step ahead and
//! for the mean over the horizon. An interval at level `c` is then
//! `ŷ + s·[q((1−c)/2), q((1+c)/2)]`, and the predictive distribution of a future value is the
//! empirical distribution of the scores: `P(Y > x) = 1 − F((x − ŷ)/s)`, with `F` interpolated
//! linearly between the kept quantiles (0 below the 1st percentile, 1 above the 99th).
//!
//! The model is then refitted on the whole history; its errors are, if anything, smaller than
//! the held-out model's, so the intervals lean wide rather than narrow (as split conformal
//! prediction does when its model is refitted).

use serde::{Deserialize, Serialize};

/// The quantile levels kept in a model file.
pub const LEVELS: [f64; 15] = [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalScale {
    Constant,
    SqrtLevel,
}

impl IntervalScale {
    pub fn of(self, predicted: f64) -> f64 {
        match self {
            IntervalScale::Constant => 1.0,
            IntervalScale::SqrtLevel => predicted.max(1.0).sqrt(),
        }
    }
}

/// Quantiles of calibration scores at [`LEVELS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreQuantiles(pub Vec<f64>);

impl ScoreQuantiles {
    /// The conformal quantiles of `scores` (sorted in place): level `p` takes the
    /// `⌈p(n+1)⌉`-th smallest score above the median and the `⌊p(n+1)⌋`-th below it, the
    /// finite-sample correction that keeps coverage at least nominal.
    pub fn from_scores(scores: &mut [f64]) -> Option<Self> {
        if scores.is_empty() {
            return None;
        }
        scores.sort_by(f64::total_cmp);
        let n = scores.len();
        let q = LEVELS
            .iter()
            .map(|&p| {
                let r = p * (n + 1) as f64;
                let rank = if p >= 0.5 { r.ceil() } else { r.floor() } as usize;
                scores[rank.clamp(1, n) - 1]
            })
            .collect();
        Some(ScoreQuantiles(q))
    }

    fn at(&self, level: f64) -> f64 {
        let i = LEVELS.iter().position(|l| (l - level).abs() < 1e-9);
        match i {
            Some(i) => self.0[i],
            // Between kept levels: linear in the level.
            None => {
                let j = LEVELS.partition_point(|l| *l < level).clamp(1, LEVELS.len() - 1);
                let (l0, l1) = (LEVELS[j - 1], LEVELS[j]);
                let w = ((level - l0) / (l1 - l0)).clamp(0.0, 1.0);
                self.0[j - 1] + w * (self.0[j] - self.0[j - 1])
            }
        }
    }

    /// The interval at `coverage` (0.8, 0.95…) around `predicted`, never below zero.
    pub fn interval(&self, predicted: f64, scale: IntervalScale, coverage: f64) -> (f64, f64) {
        let s = scale.of(predicted);
        let a = (1.0 - coverage) / 2.0;
        ((predicted + s * self.at(a)).max(0.0), (predicted + s * self.at(1.0 - a)).max(0.0))
    }

    /// `P(Y > x)` when `predicted` is the point forecast.
    pub fn prob_above(&self, predicted: f64, scale: IntervalScale, x: f64) -> f64 {
        let z = (x - predicted) / scale.of(predicted);
        let q = &self.0;
        if z < q[0] {
            return 1.0;
        }
        if z >= q[q.len() - 1] {
            return 0.0;
        }
        // The last kept quantile at or below z and the next one above it.
        let j = q.partition_point(|v| *v <= z).clamp(1, q.len() - 1);
        let (q0, q1) = (q[j - 1], q[j]);
        let f = if q1 > q0 { LEVELS[j - 1] + (z - q0) / (q1 - q0) * (LEVELS[j] - LEVELS[j - 1]) } else { LEVELS[j] };
        (1.0 - f).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_uniform_scores() {
        // Scores 1..=99: the p-quantile is about 100p.
        let mut s: Vec<f64> = (1..=99).map(f64::from).collect();
        let q = ScoreQuantiles::from_scores(&mut s).unwrap();
        assert_eq!(q.at(0.5), 50.0);
        assert_eq!(q.at(0.9), 90.0);
        assert_eq!(q.at(0.1), 10.0);
        assert_eq!(q.interval(1000.0, IntervalScale::Constant, 0.8), (1010.0, 1090.0));
        // P(Y > ŷ + 90) = 0.1; halfway between the 0.2 and 0.3 quantiles: 0.75.
        assert!((q.prob_above(0.0, IntervalScale::Constant, 90.0) - 0.1).abs() < 1e-9);
        assert!((q.prob_above(0.0, IntervalScale::Constant, 25.0) - 0.75).abs() < 1e-9);
        assert_eq!(q.prob_above(0.0, IntervalScale::Constant, 0.5), 1.0);
        assert_eq!(q.prob_above(0.0, IntervalScale::Constant, 1000.0), 0.0);
    }

    #[test]
    fn the_sqrt_scale_widens_with_the_level() {
        let mut s = vec![-1.0, 0.0, 1.0];
        let q = ScoreQuantiles::from_scores(&mut s).unwrap();
        let (lo, hi) = q.interval(100.0, IntervalScale::SqrtLevel, 0.95);
        assert_eq!((lo, hi), (90.0, 110.0));
        assert_eq!(q.interval(0.2, IntervalScale::SqrtLevel, 0.95), (0.0, 1.2));
        assert!(ScoreQuantiles::from_scores(&mut []).is_none());
    }
}
