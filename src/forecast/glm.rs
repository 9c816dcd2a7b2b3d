//! A Poisson generalised linear model with a log link, fitted by iteratively reweighted least
//! squares. Used by [`crate::forecast::model`] for the `poisson` family; pure numerics.

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
    let k1 = k + 1;
    // Row-major rows, each with an implicit 1 for the intercept (the last coefficient). Every
    // step is two passes over the rows: one builds XᵀWX and XᵀWz, one evaluates a candidate.
    let x = x.as_standard_layout();
    let rows = x.as_slice().ok_or("the design matrix is not contiguous")?;
    let y = y.to_vec();
    let row = |i: usize| &rows[i * k..(i + 1) * k];
    // η, μ and the deviance of coefficients `b`, into `eta` and `mu`.
    let evaluate = |b: &[f64], eta: &mut [f64], mu: &mut [f64]| -> f64 {
        let mut dev = 0.0;
        for i in 0..n {
            let e = row(i).iter().zip(b).map(|(x, b)| x * b).sum::<f64>() + b[k];
            let m = e.clamp(-30.0, 30.0).exp();
            eta[i] = e;
            mu[i] = m;
            let yi = y[i];
            dev += 2.0 * (if yi > 0.0 { yi * (yi / m).ln() } else { 0.0 } - (yi - m));
        }
        dev
    };
    let (mut eta, mut mu) = (vec![0.0; n], vec![0.0; n]);
    let (mut cand_eta, mut cand_mu) = (vec![0.0; n], vec![0.0; n]);
    let mut beta: Option<Vec<f64>> = None;
    let mut dev = f64::INFINITY;
    // From given coefficients (a refit on more data): usually a step or two from converged.
    if let Some(b) = start.filter(|b| b.len() == k1) {
        let b = b.to_vec();
        let d = evaluate(&b, &mut eta, &mut mu);
        if d.is_finite() {
            (beta, dev) = (Some(b), d);
        }
    }
    if beta.is_none() {
        // R's glm start: μ = y + 0.1.
        for i in 0..n {
            mu[i] = y[i] + 0.1;
            eta[i] = mu[i].ln();
        }
    }
    let mut a = Array2::<f64>::zeros((k1, k1));
    let mut rhs = Array2::<f64>::zeros((k1, 1));
    // The rows in chunks, each scaled by its weight into `xw`: XᵀWX block by block as a
    // matrix product (matrixmultiply picks the CPU's vector instructions at run time).
    const CHUNK: usize = 2048;
    let mut xw = Array2::<f64>::zeros((CHUNK.min(n.max(1)), k));
    for _ in 0..50 {
        // XᵀWX and XᵀWz for the working response z = η + (y − μ)/μ, weights μ; the intercept's
        // row and column by hand.
        a.fill(0.0);
        rhs.fill(0.0);
        let (mut sw, mut swz) = (0.0, 0.0);
        let (mut sx, mut rz) = (vec![0.0; k], vec![0.0; k]);
        for start in (0..n).step_by(CHUNK) {
            let end = (start + CHUNK).min(n);
            let m = end - start;
            for (r, i) in (start..end).enumerate() {
                let w = mu[i].max(1e-10);
                let z = eta[i] + (y[i] - mu[i]) / w;
                let xi = row(i);
                let mut out = xw.row_mut(r);
                for j in 0..k {
                    let wx = w * xi[j];
                    out[j] = wx;
                    sx[j] += wx;
                    rz[j] += wx * z;
                }
                sw += w;
                swz += w * z;
            }
            let xc = x.slice(ndarray::s![start..end, ..]);
            let mut axx = a.slice_mut(ndarray::s![..k, ..k]);
            ndarray::linalg::general_mat_mul(1.0, &xw.slice(ndarray::s![..m, ..]).t(), &xc, 1.0, &mut axx);
        }
        for j in 0..k {
            a[[j, k]] = sx[j];
            a[[k, j]] = sx[j];
            rhs[[j, 0]] = rz[j];
        }
        a[[k, k]] = sw;
        rhs[[k, 0]] = swz;
        // A whisker of ridge keeps nearly collinear features solvable.
        let ridge = 1e-10 * (0..k1).map(|j| a[[j, j]]).sum::<f64>() / k1 as f64;
        for j in 0..k1 {
            a[[j, j]] += ridge;
        }
        let next = a.clone().solvec_into(rhs.clone()).map_err(|e| format!("solving the weighted normal equations: {e}"))?;
        let next: Vec<f64> = next.iter().copied().collect();
        // Step-halving if the deviance rose (keeps IRLS from overshooting).
        let mut step = 1.0;
        loop {
            let cand: Vec<f64> = match &beta {
                Some(b) => b.iter().zip(&next).map(|(b, n)| b + (n - b) * step).collect(),
                None => next.clone(),
            };
            let cand_dev = evaluate(&cand, &mut cand_eta, &mut cand_mu);
            let improved = cand_dev.is_finite() && cand_dev <= dev * (1.0 + 1e-12);
            if !improved && step < 1e-3 {
                // No step along the Newton direction lowers the deviance: the current
                // coefficients are as good as IRLS gets (R's glm stops the same way).
                if beta.is_none() {
                    return Err("no coefficients with a finite deviance".into());
                }
                return finish(beta.map(Array1::from), dev, k);
            }
            if improved {
                let done = (dev - cand_dev).abs() <= 1e-8 * (cand_dev.abs() + 1.0);
                beta = Some(cand);
                std::mem::swap(&mut eta, &mut cand_eta);
                std::mem::swap(&mut mu, &mut cand_mu);
                dev = cand_dev;
                if done {
                    return finish(beta.map(Array1::from), dev, k);
                }
                break;
            }
            step /= 2.0;
        }
    }
    finish(beta.map(Array1::from), dev, k)
}

fn finish(beta: Option<Array1<f64>>, dev: f64, k: usize) -> Result<(Vec<f64>, f64), String> {
    match beta {
        Some(b) if dev.is_finite() => Ok((b.slice(ndarray::s![..k]).to_vec(), b[k])),
        _ => Err("the deviance is not finite".into()),
    }
}
