//! The live shell around the core: Kafka clients and topics, the input partitions' buffers and
//! the choice of the next message in event time ([`merge`]), the per-message work ([`shell`]),
//! partitions moving between instances ([`rebalance`], [`changelog`], the re-decisions of
//! [`first_decisions`]), commit-after-delivery
//! ([`deliveries`], [`offsets`]), the control topics ([`control`]), the state shared with the
//! HTTP API ([`shared`]), Prometheus [`metrics`] and the wall [`clock`].

pub mod changelog;
pub(crate) mod client;
pub(crate) mod clock;
pub(crate) mod control;
pub(crate) mod deliveries;
pub mod error;
pub(crate) mod event_loop;
pub mod first_decisions;
pub(crate) mod leadership;
pub(crate) mod merge;
pub(crate) mod metrics;
pub(crate) mod offsets;
pub(crate) mod partitioner;
pub mod quarantine;
pub(crate) mod reach;
pub(crate) mod rebalance;
pub(crate) mod shared;
pub(crate) mod shell;
pub mod topics;
pub(crate) mod usage;
