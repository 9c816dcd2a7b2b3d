//! The functional core: plain structs that take an event and its event time and return outputs.
//! No tokio, rdkafka, DataFusion, axum, clock or I/O here (tests/layers.rs checks the imports).
//!
//! [`topology`] wires the processors together and every way of running surgeguard drives it:
//! [`limiter`] (per-user quota), [`adaptive`] (tier limits from the multipliers), [`strategy`]
//! (the throttling table), [`health`] (telemetry folded into one view), [`breaker`] (with
//! [`breaker_window`]) and [`breakers`] (all of them, with [`fallback`] plans), [`predictor`]
//! (demand forecasts into a multiplier), [`monitor`] (per-minute metrics and alerts) and
//! [`idempotency`] (the API's remembered decisions); [`usage`] counts decisions per requests
//! partition and minute and folds every partition's counts for the monitor and the predictor. [`watermarks`] holds the pipeline's event
//! time over its input partitions (issue 18; not yet driven by the shells).

pub(crate) mod adaptive;
pub(crate) mod breaker;
pub(crate) mod breaker_window;
pub(crate) mod breakers;
pub(crate) mod fallback;
pub(crate) mod health;
pub(crate) mod idempotency;
pub mod limiter;
pub mod monitor;
pub mod predictor;
pub(crate) mod strategy;
pub mod topology;
pub mod usage;
pub mod watermarks;
