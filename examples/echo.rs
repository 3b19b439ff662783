//! An echo server on the library: every message comes back as it was sent.
//!
//! ```sh
//! cargo run --example echo            # 127.0.0.1:8765
//! cargo run --example echo -- 9000    # or PORT=9000; 0 picks a free port
//! ```
//!
//! It prints `echo: listening on ws://ADDR/ws` once it accepts, and drains
//! on Ctrl-C or SIGTERM: no new sessions, close 1001 to the open ones.
//! Every other setting comes from the environment as for `pollcap serve`
//! (`WEBSOCKET_HANDSHAKE_TIMEOUT`, `POLLCAP_MAX_MESSAGE`, …).

use std::error::Error;
use std::io::Write;

use pollcap::{App, Server, ServerConfig, Settings};

fn main() -> Result<(), Box<dyn Error>> {
    let port: u16 = match std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PORT").ok())
    {
        Some(p) => p.parse().map_err(|_| format!("not a port: {p:?}"))?,
        None => 8765,
    };
    // Flags are (setting, value) pairs over the defaults and the
    // environment. Loopback only: a public address needs authentication
    // (`ServerConfig::from_settings` with a token configuration).
    let settings = Settings::from_process(&[("listen", format!("127.0.0.1:{port}"))])?;
    let mut cfg = ServerConfig::new(settings);
    cfg.app = App::Echo; // the default of `ServerConfig::new`, said aloud
    let server = Server::start(cfg)?;

    let stop = server.shutdown_handle();
    ctrlc::set_handler(move || stop.shutdown())?;

    println!("echo: listening on ws://{}/ws", server.local_addr());
    std::io::stdout().flush()?;
    server.join()?;
    println!("echo: drained");
    Ok(())
}
