//! The capped reactor on its own, the runtime under the server: a line
//! echo for one TCP connection, closed after 1 s of silence by a timer.
//! Every wait lasts `min(next deadline, cap)`; the counters at the end say
//! what ended each one. Run it (`cargo run --example reactor`), then
//! `nc 127.0.0.1 PORT` with the port it prints.

use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

use mio::net::TcpListener;
use pollcap::reactor::Interest;
use pollcap::{BackendKind, CapStrategy, Reactor};

const LISTENER: usize = 0;
const CONN: usize = 1;
const IDLE: Duration = Duration::from_secs(1);

fn main() -> std::io::Result<()> {
    let cap = CapStrategy::Fixed(Duration::from_millis(250));
    let mut reactor = Reactor::new(BackendKind::Mio, cap)?;
    let mut listener = TcpListener::bind(([127, 0, 0, 1], 0).into())?;
    reactor.register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("reactor: listening on {}", listener.local_addr()?);
    let idle = reactor.timers().insert(CONN); // disarmed until the connection comes
    let (mut conn, mut buf) = (None, [0u8; 4096]);
    loop {
        let now = reactor.turn()?.now; // the one clock reading of this turn
        for event in reactor.events().to_vec() {
            if event.token == LISTENER {
                let (mut stream, peer) = listener.accept()?;
                reactor.deregister(&mut listener)?; // one connection is enough here
                reactor.register(&mut stream, CONN, Interest::READABLE)?;
                println!("reactor: {peer} connected");
                conn = Some(stream);
            }
            let Some(stream) = conn.as_mut() else {
                continue;
            };
            loop {
                // Edge-triggered: read until the socket says WouldBlock.
                match stream.read(&mut buf) {
                    Ok(0) => {
                        println!("reactor: the peer closed");
                        return Ok(());
                    }
                    Ok(n) => stream.write_all(&buf[..n])?, // a line: the socket takes it
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            reactor.timers().set(idle, Some(now + IDLE)); // any byte resets it
        }
        if reactor.pop_expired() == Some(CONN) {
            println!("reactor: idle for {IDLE:?}: closing");
            let s = reactor.stats().snapshot();
            let (io, deadline, cap) = (s.by_io, s.by_deadline, s.by_cap);
            println!(
                "reactor: waits ended by I/O {io}, by the deadline {deadline}, by the cap {cap}"
            );
            return Ok(());
        }
    }
}
