//! The pure demand model: a [`series`] of counts per bucket, calendar and lag [`features`], the
//! fitted [`model`]s (OLS, elastic net, Poisson [`glm`]), prediction [`intervals`], [`accuracy`]
//! metrics and the rolling-origin [`backtest`]; [`rng`] is the deterministic generator the
//! simulations and tests share. No DataFusion or I/O: the history layer fills the series.

pub(crate) mod accuracy;
pub(crate) mod backtest;
pub mod features;
pub(crate) mod glm;
pub(crate) mod intervals;
pub mod model;
pub mod rng;
pub mod series;
