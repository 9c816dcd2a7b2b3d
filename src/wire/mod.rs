//! The wire contract: event time, the input events and output records, and the bytes they travel
//! as (JSON decoding with a fast path, encoding, dead-letter records). Pure: no I/O, no clock.

pub mod decode;
pub mod dlq;
pub(crate) mod encode;
pub mod events;
pub(crate) mod flat_json;
pub mod limits;
pub mod outputs;
pub mod time;
