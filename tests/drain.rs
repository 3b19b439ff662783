//! Drain of the real binary: 50 clients, SIGTERM, every client gets 1001
//! "server shutting down", and the process exits 0 within close + one cap.
//! (POSIX signals: the Windows counterpart drives the same drain through
//! the library's ShutdownHandle in tests/server.rs.)
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
fn sigterm_drains_fifty_clients_and_exits_zero() {
    for backend in ["mio", "polling"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pollcap"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--backend",
                backend,
                "--threads",
                "2",
            ])
            .env("RUST_LOG", "info")
            .env("WEBSOCKET_CLOSE_TIMEOUT", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The start-up line names the bound address.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("start-up line").unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));

        let mut clients: Vec<_> = (0..50).map(|_| ws_connect(addr, None).unwrap().0).collect();
        for ws in &mut clients {
            ws.send(Message::text("before")).unwrap();
            assert_eq!(ws.read().unwrap(), Message::text("before"));
        }
        let t0 = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        for ws in &mut clients {
            match ws.read() {
                Ok(Message::Close(Some(f))) => {
                    assert_eq!(f.code, CloseCode::Away);
                    assert_eq!(f.reason.as_str(), "server shutting down");
                }
                other => panic!("{backend}: {other:?}"),
            }
            let _ = ws.flush();
        }
        // Bound: close (1 s) + one cap (1 s), plus slack for a loaded machine.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait()));
        let status = rx
            .recv_timeout(Duration::from_secs(2) + SLACK)
            .unwrap_or_else(|_| panic!("{backend}: did not exit within close + cap"))
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2) + SLACK);
        assert_eq!(status.code(), Some(0), "{backend}");
    }
}
