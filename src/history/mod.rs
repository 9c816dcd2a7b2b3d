//! Request history on disk: Parquet files ([`parquet`]), demand per bucket from them by
//! DataFusion SQL ([`aggregate`]), the archive's date/hour files ([`archive`]), and the
//! predictor loaded or fitted at start-up ([`prediction_setup`]).

pub mod aggregate;
pub(crate) mod archive;
pub mod parquet;
pub(crate) mod prediction_setup;
