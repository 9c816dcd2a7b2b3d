//! surgeguard: adaptive rate limiting, circuit breaking and demand forecasting as keyed stream
//! processors between Kafka topics.
//!
//! # Layout
//! The functional core: plain structs that take an event and its event time and return outputs,
//! with no clock, I/O or async:
//! - [`limiter`]: per-user quota (sliding window over sub-buckets, grace allowance);
//! - [`adaptive`]: tier/request-type limits from the multipliers, load severity;
//! - [`health`]: telemetry from many sources folded into one view;
//! - [`breaker`] (+ [`breaker_window`]): one dependency's circuit breaker; [`breakers`]: all of
//!   them, with [`fallback`] plans;
//! - [`monitor`]: per-minute metrics and alert rules; [`strategy`]: the throttling table;
//! - [`topology`]: wires the above together; every runtime drives it.
//!
//! The wire: [`events`] (inputs), [`decode`] (bytes → inputs, with a fast path in `flat_json`),
//! [`outputs`] (output records), [`encode`] (outputs → bytes), [`time`] (event time). Config:
//! [`config`] (structs and defaults), [`config_load`] (parse and validate). Test and benchmark
//! inputs: [`scenario`]. The shell: [`replay`] (JSON lines through the topology), [`runtime`]
//! (`surgeguard run`: Kafka in and out, with [`offsets`] and [`deliveries`] for
//! commit-after-delivery, [`dlq`]
//! records, [`kafka_topics`] set-up, [`changelog`] for limiter state, [`rebalance`] for
//! partitions moving between instances and [`control`] for the control topics) and the
//! `surgeguard` binary.

// A config field that no code reads fails the build (equality and serialisation of the config
// structs are derived only under test, so they do not count as reads).
#![cfg_attr(not(test), deny(dead_code))]

pub mod adaptive;
pub mod api;
pub mod api_admin;
pub mod api_decide;
pub mod api_metrics;
pub mod api_state;
pub mod archive;
pub mod archive_run;
pub mod backtest;
pub mod backtest_plot;
pub mod bench;
pub mod breaker;
pub mod breaker_window;
pub mod breakers;
pub mod changelog;
pub mod config;
pub mod config_load;
pub mod config_reload;
pub mod config_service;
pub mod control;
pub mod decode;
pub mod deliveries;
pub mod demand;
pub mod demo;
pub mod dlq;
pub mod encode;
pub mod events;
pub mod fallback;
pub mod features;
mod flat_json;
pub mod forecast;
pub mod glm;
pub mod health;
pub mod history;
pub mod history_gen;
pub mod idempotency;
pub mod intervals;
pub mod kafka_topics;
pub mod limiter;
pub mod metrics;
pub mod monitor;
pub mod offsets;
pub mod outputs;
pub mod partitioner;
pub mod prediction_setup;
pub mod predictor;
pub mod rebalance;
pub mod replay;
pub mod runtime;
pub mod scenario;
mod shell;
pub mod sim;
pub mod strategy;
pub mod time;
pub mod topology;
pub mod whatif;
