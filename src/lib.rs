//! pollcap: a WebSocket server and runtime that never blocks indefinitely.
//!
//! Every OS wait is capped ([`reactor`]), and every connection phase has an
//! explicit deadline. See README.md for the tour.

pub mod histogram;
pub mod platform;
pub mod reactor;
pub mod settings;
