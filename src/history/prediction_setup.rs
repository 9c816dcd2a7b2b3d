//! Start-up of predictive limits (the shell's part): reads the model file `[prediction] model`
//! names and seeds the predictor with the counts of `[prediction] history`, aggregated at the
//! model's step by the same DataFusion query `fit` uses. Replay, `run` and the demo call this
//! once before the first event; a missing or bad file stops start-up with the key and the path.
//!
//! The predictor counts every request the topology decides, so the model should be fitted on all
//! requests (not on one `--group`).

use std::sync::Arc;

use crate::config::{HistoryKind, PredictionConfig};
use crate::core::predictor::{Predictor, PredictorConfig, SeedError};
use crate::forecast::model::{DemandModel, ForecastError};
use crate::history::aggregate::{self, DemandError, DemandSource};

#[derive(Debug, thiserror::Error)]
pub enum PredictionSetupError {
    #[error("prediction.model = {path:?}: {source}")]
    ReadModel { path: String, source: std::io::Error },
    #[error("prediction.model = {path:?}: {source}")]
    Model { path: String, source: ForecastError },
    #[error("prediction.history = {path:?}: {source}")]
    History { path: String, source: DemandError },
    #[error("prediction.history = {path:?}: {source}")]
    Seed { path: String, source: SeedError },
    #[error("starting the runtime that reads prediction.history: {0}")]
    Runtime(std::io::Error),
}

/// The predictor `cfg` asks for (`None` when `model` is empty), seeded from its history.
pub async fn load(cfg: &PredictionConfig) -> Result<Option<Predictor>, PredictionSetupError> {
    if cfg.model.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&cfg.model).map_err(|source| PredictionSetupError::ReadModel { path: cfg.model.clone(), source })?;
    let model = DemandModel::from_json(&text).map_err(|source| PredictionSetupError::Model { path: cfg.model.clone(), source })?;
    let pc = PredictorConfig { scope: cfg.scope.clone(), spike_factor: cfg.spike_factor, min_confidence: cfg.min_confidence, coverage: cfg.coverage };
    let mut predictor = Predictor::new(Arc::new(model), pc, i64::from(cfg.allowed_lateness_s) * 1000);
    if !cfg.history.is_empty() {
        let source = match cfg.history_kind {
            HistoryKind::Events => DemandSource::Events { path: cfg.history.clone(), ts_column: "ts".into(), group_column: None },
            HistoryKind::Series => DemandSource::Series { path: cfg.history.clone(), ts_column: "ts".into(), value_column: "value".into() },
        };
        let history_err = |source| PredictionSetupError::History { path: cfg.history.clone(), source };
        let groups = aggregate::aggregate(&source, predictor.step_ms()).await.map_err(history_err)?;
        if let Some(series) = groups.values().next() {
            predictor.seed(series).map_err(|source| PredictionSetupError::Seed { path: cfg.history.clone(), source })?;
            tracing::info!(history = %cfg.history, steps = series.values.len(), until = %series.time_of(series.values.len()), "predictor seeded from history (its steps before the first event)");
        }
    }
    tracing::info!(model = %cfg.model, "predictive limits on");
    Ok(Some(predictor))
}

/// `load` for callers outside an async runtime (replay).
pub fn load_blocking(cfg: &PredictionConfig) -> Result<Option<Predictor>, PredictionSetupError> {
    if cfg.model.is_empty() {
        return Ok(None);
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(PredictionSetupError::Runtime)?;
    runtime.block_on(load(cfg))
}
