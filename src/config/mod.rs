//! The pipeline file: its structs and defaults ([`pipeline`], with the service settings in
//! [`service`]), loading and validation naming the key ([`load`]), and hot reload ([`reload`]).

pub mod load;
pub mod pipeline;
pub mod reload;
pub mod secrets;
pub mod service;

pub use pipeline::*;
