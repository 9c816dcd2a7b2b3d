//! `surgeguard fit` and `surgeguard backtest` from the command line, on generated history: the
//! model file reads back and forecasts, the reports are complete; the committed example model
//! loads and forecasts; bad input gets a clear error, never a panic.

use std::process::{Command, Output};

mod support;

use support::Scratch;
use surgeguard::forecast::model::{DemandModel, Family};
use surgeguard::wire::time::Millis;

const BIN: &str = env!("CARGO_BIN_EXE_surgeguard");

/// A path in the scratch directory, as a string argument.
fn arg(dir: &Scratch, rel: &str) -> String {
    dir.path(rel).to_string_lossy().to_string()
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run surgeguard")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "surgeguard {args:?} failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Fails with a message containing every one of `needles`, and without a panic.
fn fails_with(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "surgeguard {args:?} should fail cleanly:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "expected {n:?} in:\n{stderr}");
    }
}

#[test]
fn fit_and_backtest_from_the_command_line() {
    let dir = Scratch::new("forecast");
    let history = arg(&dir, "history");
    ok(&["gen", "history", "--days", "23", "--peak-rpm", "20", "--out", &history]);
    let events = arg(&dir, "history/events.csv");

    // fit: a model file that reads back, covering the history after the week of lags.
    let model_path = arg(&dir, "models/demand.json");
    ok(&["fit", "--history", &history, "--events", &events, "--resolution", "5m", "--horizon", "1h", "--out", &model_path]);
    let model = DemandModel::from_json(&std::fs::read_to_string(&model_path).expect("model file")).expect("model");
    assert_eq!(model.family, Family::Poisson);
    assert_eq!(model.resolution, "5m");
    assert_eq!(model.training.steps, 23 * 288 - 2016);
    assert_eq!(model.intervals.horizon_steps, 12);
    assert_eq!(model.coefficients.len(), model.feature_names.len());
    assert!(model.in_sample.mase.is_some_and(|m| m > 0.0 && m < 1.0), "in-sample MASE {:?}", model.in_sample);

    // backtest: two models, six cutoffs 8 hours apart.
    let out = arg(&dir, "bt");
    let table = ok(&[
        "backtest",
        "--history",
        &history,
        "--events",
        &events,
        "--model",
        "ols,poisson",
        "--windows",
        "6",
        "--step",
        "8h",
        "--horizon",
        "1h",
        "--out",
        &out,
    ]);
    for name in ["ols", "poisson", "naive_daily", "naive_weekly"] {
        assert!(table.lines().any(|l| l.starts_with(name)), "no {name} row in:\n{table}");
    }
    for family in ["ols", "poisson"] {
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(format!("{out}/{family}/report.json")).expect("report")).expect("json");
        assert_eq!(report["family"], family);
        assert_eq!(report["windows"], 6);
        assert_eq!(report["per_window"].as_array().map(Vec::len), Some(6));
        for key in ["mae", "rmse", "smape", "mase"] {
            assert!(report["model"][key].as_f64().is_some_and(f64::is_finite), "{key}: {}", report["model"]);
        }
        let c95 = report["coverage_95"].as_f64().expect("coverage");
        assert!((0.0..=1.0).contains(&c95));
        let csv = std::fs::read_to_string(format!("{out}/{family}/forecasts.csv")).expect("csv");
        assert_eq!(csv.lines().count(), 1 + 6 * 12);
        let png = std::fs::read(format!("{out}/{family}/plot.png")).expect("png");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "not a PNG of a plot");
    }
}

#[test]
fn the_example_model_forecasts() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/example-5m.json");
    let model = DemandModel::from_json(&std::fs::read_to_string(path).expect("example model")).expect("the example model reads");
    assert_eq!(model.resolution, "5m");
    // Two weeks of a flat 50 per step, ending on a Monday at 08:00.
    let steps = 2 * 2016;
    let end = Millis::parse_rfc3339("2026-03-02T08:00:00Z").expect("time");
    let start = Millis(end.0 - steps as i64 * model.step_ms());
    let values = vec![50.0; steps];
    let f = model.forecast_horizon(&values, start, steps, 2.0, 0.95).expect("forecast");
    assert_eq!(f.start, end);
    assert_eq!(f.values.len(), 12);
    assert!(f.values.iter().all(|v| v.is_finite() && *v > 0.0), "{:?}", f.values);
    assert!(f.lower <= f.mean && f.mean <= f.upper, "{f:?}");
    assert_eq!(f.baseline, 50.0);
    assert!((0.0..=1.0).contains(&f.confidence));
    // Too little history for the week-long lag is an error, not a panic.
    assert!(model.forecast_horizon(&values[..100], start, 100, 2.0, 0.95).is_err());
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = Scratch::new("forecast-bad");
    let history = arg(&dir, "history");
    ok(&["gen", "history", "--days", "3", "--peak-rpm", "5", "--out", &history]);
    let model = arg(&dir, "m.json");
    // Three days cannot feed a week-long lag.
    fails_with(&["fit", "--history", &history, "--out", &model], &["864 steps; 2117 are needed"]);
    fails_with(&["fit", "--history", &history, "--ts-column", "when", "--out", &model], &["no column \"when\""]);
    let bad_events = arg(&dir, "events.csv");
    std::fs::write(&bad_events, "when,label\n").expect("write");
    fails_with(&["fit", "--history", &history, "--events", &bad_events, "--out", &model], &["events.csv", "start,end,label"]);
    let empty = arg(&dir, "empty");
    std::fs::create_dir_all(&empty).expect("dir");
    fails_with(&["backtest", "--history", &empty, "--out", &arg(&dir, "bt")], &["empty"]);
    fails_with(&["backtest", "--history", &history, "--windows", "50", "--out", &arg(&dir, "bt")], &["50 windows"]);
    fails_with(&["fit", "--history", &history, "--model", "magic", "--out", &model], &["--model \"magic\""]);
    fails_with(&["fit", "--history", &history, "--horizon", "7m", "--out", &model], &["--horizon 7m"]);
    // A corrupted Parquet file.
    let broken = arg(&dir, "broken.parquet");
    std::fs::write(&broken, b"PAR1 this is not parquet PAR1").expect("write");
    fails_with(&["fit", "--history", &broken, "--out", &model], &["broken.parquet"]);
}
