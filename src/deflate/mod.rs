//! permessage-deflate (RFC 7692): negotiation ([`negotiate`]), whole-message
//! compression with per-thread codecs ([`codec`]), counters (`stats`),
//! and the client's side of it ([`client`]).
//!
//! How it fits around tungstenite, which has no extension support: see
//! `conn::boundary` for the inbound seam (the first header of a compressed
//! message is rewritten before tungstenite reads it) and `conn::deflate`
//! for the rest. Outbound, a compressed message is handed to tungstenite as
//! a `Message::Frame` with RSV1 set, which it sends as it is. Nothing of
//! tungstenite is forked; the behaviour relied on (RSV1 refused inbound,
//! frames sent unchecked) is pinned by the minor version in Cargo.toml and
//! checked by the `frame_boundary` and `deflate` fuzz targets.
//!
//! Memory: the server answers with no context takeover either way, so
//! compressing and inflating need no state between messages. One
//! compressor (per window size) and one decompressor per thread serve
//! every connection; a connection carries only its agreement (a few
//! bytes), and an idle connection costs the same with compression as
//! without.

pub mod client;
pub mod codec;
pub mod negotiate;
pub(crate) mod stats;

pub use negotiate::{Agreed, ServerMode};

/// The default `--deflate-threshold`, which the clients use too: messages
/// shorter than this go uncompressed. Measured (BENCHMARKS.md,
/// "permessage-deflate"): JSON of 256 bytes shrinks by 7 % for 5.5 µs of
/// server CPU, of 512 bytes by 19 % for 6 µs, of 1 KiB by 33 %.
pub const DEFAULT_THRESHOLD: usize = 512;

/// Whether and how the server negotiates the extension (`--deflate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Not negotiated: offers are ignored (`off`).
    Off,
    /// No context takeover either way (`on`): every message is compressed
    /// on its own by the thread's compressor.
    On,
    /// The server keeps its context while a connection follows a run
    /// (`takeover`): it remembers the last [`codec::HISTORY`] bytes it
    /// sent compressed and compresses the next message against them, and
    /// forgets them when the connection has no run left.
    Takeover,
}

impl Mode {
    /// Parses a `--deflate` value (`on`, `off`, `takeover`); `Err` is the rule.
    pub fn parse(v: &str) -> Result<Mode, String> {
        match v.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "1" | "yes" => Ok(Mode::On),
            "off" | "false" | "0" | "no" => Ok(Mode::Off),
            "takeover" => Ok(Mode::Takeover),
            _ => Err("must be on, off or takeover".into()),
        }
    }

    /// The name `--deflate` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::On => "on",
            Mode::Takeover => "takeover",
        }
    }

    /// How an acceptable offer is answered; `None` when off.
    pub fn server_mode(self) -> Option<ServerMode> {
        match self {
            Mode::Off => None,
            Mode::On => Some(ServerMode::Shared),
            Mode::Takeover => Some(ServerMode::Takeover),
        }
    }
}

/// The server's compression settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Whether and how it is negotiated (`--deflate`).
    pub mode: Mode,
    /// Outbound messages smaller than this go uncompressed.
    pub threshold: usize,
}

impl Config {
    /// Not negotiated.
    pub const OFF: Config = Config {
        mode: Mode::Off,
        threshold: 0,
    };
}
