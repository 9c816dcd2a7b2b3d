//! The HTTP API: the router and its handlers ([`server`]), what the handlers share ([`state`]),
//! the synchronous decision ([`decide`]), the admin endpoints ([`admin`]), and the dashboard and
//! OpenAPI document served as they are.

pub(crate) mod admin;
pub(crate) mod decide;
pub mod server;
pub(crate) mod state;

pub use server::serve;
pub use state::{ApiState, Problem};
