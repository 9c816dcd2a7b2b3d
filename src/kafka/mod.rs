//! The live shell around the core: Kafka clients and topics, the per-message loop ([`shell`]),
//! partitions moving between instances ([`rebalance`], [`changelog`]), commit-after-delivery
//! ([`deliveries`], [`offsets`]), the control topics ([`control`]), the state shared with the
//! HTTP API ([`shared`]), Prometheus [`metrics`] and the wall [`clock`].

pub mod changelog;
pub mod client;
pub mod clock;
pub mod control;
pub mod deliveries;
pub mod error;
pub(crate) mod leadership;
pub mod metrics;
pub mod offsets;
pub mod partitioner;
pub mod reach;
pub mod rebalance;
pub mod shared;
pub(crate) mod shell;
pub mod topics;
