//! Forecast accuracy measures, as statsforecast and the M4 competition define them.

use serde::{Deserialize, Serialize};

/// Point-forecast errors over a set of (actual, predicted) pairs.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accuracy {
    pub mae: f64,
    pub rmse: f64,
    /// Symmetric MAPE in percent: mean of `200·|y − ŷ| / (|y| + |ŷ|)`, a pair with both zero
    /// counting 0.
    pub smape: f64,
    /// MAE over the scale (the in-sample MAE of a seasonal-naive forecast); null when the scale
    /// is zero or unknown.
    pub mase: Option<f64>,
    pub n: usize,
}

/// Running sums of the errors, so windows can be pooled.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorSums {
    abs: f64,
    sq: f64,
    smape: f64,
    n: usize,
}

impl ErrorSums {
    pub fn add(&mut self, actual: f64, predicted: f64) {
        let e = actual - predicted;
        self.abs += e.abs();
        self.sq += e * e;
        let d = actual.abs() + predicted.abs();
        if d > 0.0 {
            self.smape += 200.0 * e.abs() / d;
        }
        self.n += 1;
    }

    pub fn mae(&self) -> f64 {
        if self.n == 0 { 0.0 } else { self.abs / self.n as f64 }
    }

    pub fn finish(&self, scale: Option<f64>) -> Accuracy {
        let n = self.n.max(1) as f64;
        let mae = self.abs / n;
        Accuracy { mae, rmse: (self.sq / n).sqrt(), smape: self.smape / n, mase: scale.filter(|s| *s > 0.0 && s.is_finite()).map(|s| mae / s), n: self.n }
    }
}

/// The in-sample MAE of the seasonal-naive forecast `ŷ_t = y_{t−m}` over `values` (the MASE
/// scale). `None` when the series is not longer than `m`.
pub fn seasonal_naive_scale(values: &[f64], m: usize) -> Option<f64> {
    let m = m.max(1);
    if values.len() <= m {
        return None;
    }
    let n = values.len() - m;
    Some(values.windows(m + 1).map(|w| (w[m] - w[0]).abs()).sum::<f64>() / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_by_hand() {
        let mut s = ErrorSums::default();
        for (y, p) in [(10.0, 8.0), (0.0, 0.0), (4.0, 6.0), (5.0, 5.0)] {
            s.add(y, p);
        }
        let a = s.finish(Some(2.0));
        assert_eq!(a.n, 4);
        assert!((a.mae - 1.0).abs() < 1e-12);
        assert!((a.rmse - 2.0f64.sqrt()).abs() < 1e-12);
        // 200·2/18 + 0 + 200·2/10 + 0, over 4.
        assert!((a.smape - (400.0 / 18.0 + 40.0) / 4.0).abs() < 1e-9);
        assert_eq!(a.mase, Some(0.5));
        assert_eq!(s.finish(Some(0.0)).mase, None);
    }

    #[test]
    fn seasonal_naive_scale_by_hand() {
        // m = 2: |3−1|, |2−2|, |6−3| → 5/3.
        assert!((seasonal_naive_scale(&[1.0, 2.0, 3.0, 2.0, 6.0], 2).unwrap() - 5.0 / 3.0).abs() < 1e-12);
        assert_eq!(seasonal_naive_scale(&[1.0, 2.0], 2), None);
    }
}
