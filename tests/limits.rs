//! The real binary out of file descriptors: accepting pauses and resumes on
//! a timer, so it neither spins (a level-triggered backend reports the
//! listener on every turn) nor strands connections in the backlog (an
//! edge-triggered one reports nothing new until another client arrives).

mod common;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
#[cfg_attr(
    windows,
    ignore = "RLIMIT_NOFILE is POSIX; Windows has no per-process socket limit to exhaust"
)]
fn out_of_file_descriptors_accepts_pause_and_every_client_is_served() {
    const CLIENTS: usize = 100;
    for backend in ["mio", "polling"] {
        eprintln!("--- backend {backend}");
        // `ulimit -n` sets the soft and the hard limit, so the server cannot
        // raise it: about 40 descriptors remain for connections.
        let script = r#"ulimit -n 48 && exec "$0" "$@""#;
        let srv = spawn_server(
            "sh",
            &[
                "-c",
                script,
                env!("CARGO_BIN_EXE_pollcap"),
                "serve",
                "--app",
                "echo",
                "--listen",
                "127.0.0.1:0",
                "--backend",
                backend,
                "--threads",
                "1",
            ],
            FAST,
        );
        assert!(srv.startup.contains(" fd_limit=48 "), "{}", srv.startup);
        let t0 = Instant::now();
        // Silent clients: the server drops each at its connect deadline
        // (0.2 s), which frees descriptors for those still in the backlog.
        let mut clients: Vec<TcpStream> = (0..CLIENTS)
            .map(|_| {
                let s = TcpStream::connect(srv.addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s
            })
            .collect();
        for (i, s) in clients.iter_mut().enumerate() {
            let mut b = [0u8; 64];
            match s.read(&mut b) {
                Ok(0) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("{backend}: client {i} stranded in the backlog")
                }
                other => panic!("{backend}: client {i}: {other:?}"),
            }
        }
        let elapsed = t0.elapsed();
        let m = metrics(srv.addr);
        let errors = m["pollcap_accept_errors_total"];
        // Each failure pauses accepting for 100 ms; a spinning accept loop
        // would fail thousands of times a second.
        let bound = (elapsed.as_millis() / 100) as f64 + 3.0;
        assert!(
            errors >= 1.0 && errors <= bound,
            "{backend}: {errors} accept errors in {elapsed:?}"
        );
        assert_eq!(
            m["pollcap_timeouts_total{phase=\"connect\"}"], CLIENTS as f64,
            "{backend}: every client was accepted and timed out"
        );
    }
}
