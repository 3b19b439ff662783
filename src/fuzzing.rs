//! The few internals the fuzz targets in `fuzz/` drive that the public
//! API does not already offer. Compiled only with the `fuzzing` feature;
//! not an API: no stability promise, hidden from the docs.

use crate::http::Response;

/// The frame-boundary tracker of `conn::io`, as the connection feeds it.
pub use crate::conn::boundary::{Compressed, FrameBoundary};

/// The front door's origin check and client-address resolution (through
/// trusted proxies' `X-Forwarded-For` / `Forwarded`).
pub use crate::frontdoor::{client_addr, origin_allowed};

/// An agent's stream into events (`source::upstream::events`), with the
/// as-written path or (`Decoder::general_only`) without it.
pub use crate::source::upstream::events::{Decoder, Framing, Read, same_value};

/// The subprotocol decision of an upgrade (admission without a server):
/// the one to select from `offered` given the application's `supported`
/// ones, or the refusal.
pub fn choose_subprotocol(
    offered: &[String],
    supported: &'static [&'static str],
) -> Result<Option<&'static str>, Response> {
    crate::server::choose_subprotocol(offered, supported)
}
