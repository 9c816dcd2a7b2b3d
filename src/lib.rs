//! surgeguard: adaptive rate limiting, circuit breaking and demand forecasting as keyed stream
//! processors between Kafka topics.
//!
//! # Layout
//! Each folder depends only on the folders above it in this list; data flows one way.
//! - [`wire`]: event time, input events, output records and their bytes (pure);
//! - [`config`]: the pipeline file, its validation and hot reload;
//! - [`forecast`]: the pure demand model (series, features, fits, intervals, backtest);
//! - [`core`]: the functional core (limiter, breakers, health, predictor, monitor, wired together
//!   by the topology): no clock, I/O or async;
//! - [`history`]: Parquet history and its DataFusion aggregation;
//! - [`kafka`]: the live shell (clients, the per-message loop, rebalances, changelog, offsets);
//! - [`api`]: the HTTP API over the shell's shared state;
//! - [`apps`]: one module per way to drive the core (`run`, `replay`, `demo`, …), with its
//!   command-line glue; `main.rs` only parses the command line and dispatches.

// A config field that no code reads fails the build (equality and serialisation of the config
// structs are derived only under test, so they do not count as reads).
#![cfg_attr(not(test), deny(dead_code))]

pub mod api;
pub mod apps;
pub mod config;
pub mod core;
pub mod forecast;
pub mod history;
pub mod kafka;
pub mod wire;
