//! Drain of the real binary: 50 clients, SIGTERM, every client gets 1001
//! "server shutting down", and the process exits 0 within close + one cap.
//! POSIX signals only: on Windows the same drain is started by Ctrl-C via
//! `ctrlc`, and is tested through the library's ShutdownHandle in
//! tests/server.rs (`drain_closes_1001_and_finishes_even_when_wakeups_are_lost`).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use tungstenite::Message;
use tungstenite::protocol::frame::coding::CloseCode;

#[test]
#[cfg_attr(
    windows,
    ignore = "POSIX SIGTERM; on Windows the drain is covered through ShutdownHandle in tests/server.rs"
)]
fn sigterm_drains_fifty_clients_and_exits_zero() {
    for backend in ["mio", "polling"] {
        let mut srv = spawn_server(
            env!("CARGO_BIN_EXE_pollcap"),
            &[
                "serve",
                "--app",
                "echo",
                "--listen",
                "127.0.0.1:0",
                "--backend",
                backend,
                "--threads",
                "2",
            ],
            &[("WEBSOCKET_CLOSE_TIMEOUT", "1")],
        );
        let addr = srv.addr;
        let pid = srv.child.as_ref().unwrap().id();

        let mut clients: Vec<_> = (0..50).map(|_| ws_connect(addr, None).unwrap().0).collect();
        for ws in &mut clients {
            ws.send(Message::text("before")).unwrap();
            assert_eq!(ws.read().unwrap(), Message::text("before"));
        }
        let t0 = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
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
        let mut child = srv.child.take().unwrap();
        let waiter = std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            (child, status)
        });
        let exited = rx.recv_timeout(Duration::from_secs(2) + SLACK).is_ok();
        if !exited {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let (_, status) = waiter.join().unwrap();
        assert!(exited, "{backend}: did not exit within close + cap");
        let status = status.unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2) + SLACK);
        assert_eq!(status.code(), Some(0), "{backend}");
    }
}
