//! A Poisson generalised linear model with a log link, fitted by iteratively reweighted least
//! squares. Used by [`crate::forecast`] for the `poisson` family; pure numerics.

use ndarray::{Array1, Array2, ArrayView1};

/// A Poisson GLM with a log link by iteratively reweighted least squares (Fisher scoring, as
/// R's `glm` does, from its start `μ = y + 0.1`): each step solves the weighted normal equations
/// `XᵀWX β = XᵀWz` for the working response `z = η + (y − μ)/μ` with weights `μ` (a Cholesky
/// solve from linfa-linalg), halving the step if the deviance rose, until the deviance stops
/// falling. (linfa-linear's `TweedieRegressor` fits the same model by L-BFGS on the summed
/// deviance; on these series it ran for minutes without meeting its gradient tolerance, where
/// IRLS takes a handful of steps.)
pub fn poisson_irls(x: &Array2<f64>, y: ArrayView1<'_, f64>, start: Option<Array1<f64>>) -> Result<(Vec<f64>, f64), String> {
    use linfa_linalg::cholesky::SolveCInplace;
    let (n, k) = x.dim();
    let mut xa = Array2::<f64>::ones((n, k + 1));
    xa.slice_mut(ndarray::s![.., ..k]).assign(x);
    let deviance = |mu: &Array1<f64>| -> f64 {
        y.iter().zip(mu.iter()).map(|(y, m)| 2.0 * (if *y > 0.0 { y * (y / m).ln() } else { 0.0 } - (y - m))).sum()
    };
    let (mut eta, mut mu, mut dev, mut beta) = match start {
        // From given coefficients (a refit on more data): usually a step or two from converged.
        Some(b) => {
            let eta = xa.dot(&b);
            let mu = eta.mapv(|e: f64| e.clamp(-30.0, 30.0).exp());
            let dev = deviance(&mu);
            if dev.is_finite() { (eta, mu, dev, Some(b)) } else { (y.mapv(|v| (v + 0.1).ln()), y.mapv(|v| v + 0.1), f64::INFINITY, None) }
        }
        None => (y.mapv(|v| (v + 0.1).ln()), y.mapv(|v| v + 0.1), f64::INFINITY, None),
    };
    let mut xw = Array2::<f64>::zeros((n, k + 1));
    for _ in 0..50 {
        let w = mu.mapv(|m| m.max(1e-10));
        let z = &eta + &((&y - &mu) / &w);
        ndarray::Zip::from(xw.rows_mut()).and(xa.rows()).and(&w).for_each(|mut o, r, w| {
            o.iter_mut().zip(r).for_each(|(o, r)| *o = r * w);
        });
        let mut a = xw.t().dot(&xa);
        let rhs = xw.t().dot(&z).insert_axis(ndarray::Axis(1));
        // A whisker of ridge keeps nearly collinear features solvable.
        let ridge = 1e-10 * (0..=k).map(|j| a[[j, j]]).sum::<f64>() / (k + 1) as f64;
        for j in 0..=k {
            a[[j, j]] += ridge;
        }
        let next = a.solvec_into(rhs).map_err(|e| format!("solving the weighted normal equations: {e}"))?.remove_axis(ndarray::Axis(1));
        // Step-halving if the deviance rose (keeps IRLS from overshooting).
        let mut step = 1.0;
        loop {
            let cand = match &beta {
                Some(b) => b + &((&next - b) * step),
                None => next.clone(),
            };
            let cand_eta = xa.dot(&cand);
            let cand_mu = cand_eta.mapv(|e| e.clamp(-30.0, 30.0).exp());
            let cand_dev = deviance(&cand_mu);
            let improved = cand_dev.is_finite() && cand_dev <= dev * (1.0 + 1e-12);
            if !improved && step < 1e-3 {
                // No step along the Newton direction lowers the deviance: the current
                // coefficients are as good as IRLS gets (R's glm stops the same way).
                if beta.is_none() {
                    return Err("no coefficients with a finite deviance".into());
                }
                return finish(beta, dev, k);
            }
            if improved {
                let done = (dev - cand_dev).abs() <= 1e-8 * (cand_dev.abs() + 1.0);
                beta = Some(cand);
                eta = cand_eta;
                mu = cand_mu;
                dev = cand_dev;
                if done {
                    return finish(beta, dev, k);
                }
                break;
            }
            step /= 2.0;
        }
    }
    finish(beta, dev, k)
}

fn finish(beta: Option<Array1<f64>>, dev: f64, k: usize) -> Result<(Vec<f64>, f64), String> {
    match beta {
        Some(b) if dev.is_finite() => Ok((b.slice(ndarray::s![..k]).to_vec(), b[k])),
        _ => Err("the deviance is not finite".into()),
    }
}

