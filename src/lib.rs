//! pollcap: a WebSocket server and runtime that never blocks indefinitely.
//!
//! Every OS wait is capped ([`reactor`]: `min(next deadline, cap)`, 1 s by
//! default), and every connection phase has an explicit deadline
//! ([`Timeouts`]: connect, handshake, heartbeat, pong,
//! idle, lifetime, close, and each run's execution). No async runtime: a
//! few reactor threads over `mio`, `tungstenite` inside, handlers on a
//! worker pool.
//!
//! # 1. Start a server
//!
//! [`Settings`] holds every setting, each declared once with its flag, its
//! environment variable and its per-profile default
//! ([`settings::DECLS`]). [`ServerConfig::new`] runs the echo application
//! without authentication; [`Server::start`] binds and returns at once.
//!
//! ```no_run
//! use pollcap::{Server, ServerConfig, Settings};
//!
//! // The built-in defaults plus POLLCAP_* / WEBSOCKET_* variables, as
//! // `pollcap serve` reads them; port 0 picks a free one.
//! let mut settings = Settings::from_process(&[])?;
//! settings.listen = "127.0.0.1:0".parse()?;
//! let server = Server::start(ServerConfig::new(settings))?;
//! println!("echo on ws://{}/ws", server.local_addr());
//! server.join()?; // until a drain (below) has finished
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`ServerConfig::from_settings`] adds what the settings ask for beyond
//! that: tokens (`POLLCAP_JWT_SECRET`, `--tokens-file`, an identity
//! provider), the TLS pair (`wss://` on the same port), and the team's
//! agent (`--agent-url`, `--agent-cmd`).
//!
//! # 2. Plug in a handler
//!
//! A [`Handler`] names its subprotocols and answers each message on the
//! worker pool, streaming a run's events through its [`Outbox`]. The run
//! layer stamps each event with `run_id`, `seq` and `ts`, bounds the run
//! by its budget and its `execution` deadline, and keeps it for resume.
//!
//! ```no_run
//! use std::sync::Arc;
//! use pollcap::{App, Handler, Inbound, Outbox, Server, ServerConfig, Session, Settings};
//!
//! struct Shout;
//! impl Handler for Shout {
//!     fn name(&self) -> &'static str { "shout" }
//!     fn subprotocols(&self) -> &'static [&'static str] { &["shout"] }
//!     fn message(&self, _: &Session, input: Inbound, out: &Outbox) {
//!         let Inbound::Text(t) = input else { return };
//!         out.emit("heard", serde_json::json!({ "text": t }));
//!         out.emit("shouted", serde_json::json!({ "text": t.to_uppercase() }));
//!     }
//! }
//!
//! let mut cfg = ServerConfig::new(Settings::from_process(&[])?);
//! cfg.app = App::Handler(Arc::new(Shout));
//! let server = Server::start(cfg)?;
//! server.join()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # 3. Connect with the client
//!
//! The blocking [`Client`] has the server's phase model: DNS, TCP, TLS,
//! the upgrade, each message and the close have a deadline
//! ([`ClientConfig`]); failed attempts are retried with backoff behind a
//! circuit breaker, and a lost run is resumed from its last `seq`.
//!
//! ```no_run
//! use pollcap::{Client, ClientConfig, Message};
//!
//! let cfg = ClientConfig {
//!     subprotocols: vec!["shout".into()],
//!     ..ClientConfig::default()
//! };
//! let (mut conn, report) = Client::new(cfg).connect("ws://127.0.0.1:8765/ws")?;
//! println!("open after {:?}", report.handshake);
//! conn.send(Message::text("hello"))?;
//! println!("{}", conn.recv()?); // {"type":"heard",…,"run_id":…,"seq":1,…}
//! println!("{}", conn.recv()?); // {"type":"shouted",…,"seq":2,…}
//! conn.close()?;
//! # Ok::<(), pollcap::client::ClientError>(())
//! ```
//!
//! # 4. Stop
//!
//! [`Server::shutdown_handle`] gives a [`ShutdownHandle`], cloneable and
//! usable from any thread (a signal handler, say): `shutdown()` drains
//! (no new sessions, close 1001 after each connection's runs) and
//! [`Server::join`] returns when every reactor has finished. The library
//! installs no signal handler itself.
//!
//! # 5. The reactor on its own
//!
//! [`Reactor`] is the runtime under the server, usable alone: one OS
//! poller, a deadline queue, a cross-thread waker, and a wait that never
//! exceeds its cap. See its example, and `examples/reactor.rs`.
//!
//! # Examples
//!
//! In `examples/` (`cargo run --example NAME`):
//! - `echo`: an echo server on the library; the port from the first
//!   argument or `PORT`.
//! - `client`: the blocking client against an `agent_chat` server:
//!   deadlines, aborting mid-run, reconnecting and resuming from the last
//!   `seq`.
//! - `reactor`: the capped reactor alone, driving a TCP socket and a
//!   timer.
//!
//! # Map
//!
//! ARCHITECTURE.md has the picture and one line per module. In short:
//! [`reactor`] (the only code that waits or reads the clock) drives
//! [`server`] workers, which drive [`conn`] state machines (sans-IO:
//! events out, decisions in) over plain TCP or [`tls`]; [`app`] is the
//! handler API and [`apps`] the built-in applications; [`settings`],
//! [`auth`], [`client`], [`deflate`] and [`metrics`] are what their names
//! say. The `pollcap` binary's tools (probe, load, bench) are not part of
//! the library.

#![warn(missing_docs)]

pub mod app;
pub mod apps;
pub mod auth;
pub mod breaker;
pub mod client;
pub mod conn;
pub mod deflate;
pub(crate) mod frontdoor;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod histogram;
pub mod http;
pub(crate) mod httpc;
pub mod metrics;
pub mod platform;
pub mod reactor;
pub(crate) mod runs;
pub mod server;
pub mod settings;
pub mod source;
pub(crate) mod store;
pub mod stream;
pub mod tls;
pub mod trace;

pub use app::{App, Decision, Handler, Inbound, Outbox, Refusal, Request, Session};
pub use client::{Client, ClientConfig, ClientError, Connection};
pub use reactor::{BackendKind, CapStrategy, Reactor};
pub use server::{Server, ServerConfig, ShutdownHandle};
pub use settings::{Limits, Settings, Timeouts};
/// The message type of [`Connection::send`] and [`Connection::recv`]:
/// tungstenite's, re-exported so that a client needs no tungstenite
/// dependency of its own.
pub use tungstenite::Message;
