//! The HTTP API: the router and its handlers ([`server`]), what the handlers share ([`state`]),
//! the synchronous decision ([`decide`]), the admin endpoints ([`admin`]), the connection cap
//! and request-head timeout ([`listener`]), and the dashboard and OpenAPI document served as
//! they are.

pub(crate) mod admin;
pub(crate) mod decide;
pub mod listener;
pub mod server;
pub(crate) mod state;

pub use server::serve;
pub use state::{ApiState, Problem};
