//! pollcap: a WebSocket server and runtime that never blocks indefinitely.
//!
//! Every OS wait is capped ([`reactor`]), and every connection phase has an
//! explicit deadline. See README.md for the tour.

pub mod agent;
pub mod app;
pub mod auth;
pub mod bench;
pub mod breaker;
pub mod client;
pub mod conn;
pub mod histogram;
pub mod http;
pub mod load;
pub mod metrics;
pub mod platform;
pub mod probe;
pub mod reactor;
pub mod server;
pub mod settings;
