//! The examples (`examples/*.rs`), each run as its own process against a
//! real loopback socket: `echo` answers the library's client and drains;
//! `client` resumes a run on an `agent_chat` server started here, every
//! event once; `reactor` echoes a line and closes on its idle deadline.
//!
//! The binaries are the ones `cargo test` builds beside this test
//! (`target/<profile>/examples/`); run alone (`cargo test --test
//! examples`), this test builds them first. Every wait is for a line the
//! example prints, bounded by a deadline.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use pollcap::reactor::BackendKind;
use pollcap::{Client, ClientConfig, Message};

const LIMIT: Duration = Duration::from_secs(20);

/// The path of example `name`, built with this test's profile if absent.
fn example(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    // target/<profile>/deps/examples-<hash>: the examples are in
    // target/<profile>/examples/.
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        BUILD.call_once(|| {
            let profile = match profile_dir.file_name().and_then(|p| p.to_str()) {
                Some("debug") | None => "dev",
                Some(other) => other,
            };
            let target_dir = profile_dir.parent().expect("target/");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--examples", "--profile", profile, "--target-dir"])
                .arg(target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cargo runs");
            assert!(status.success(), "cargo build --examples failed");
        });
    }
    assert!(path.exists(), "no example binary at {}", path.display());
    path
}

/// An example process and its standard output, line by line.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(name: &str, args: &[&str]) -> Running {
        let mut cmd = Command::new(example(name));
        cmd.args(args)
            .stdout(Stdio::piped())
            .env("RUST_LOG", "warn");
        // Only the settings given here: none of the caller's leak in.
        for (k, _) in std::env::vars() {
            if k.starts_with("POLLCAP_") || k.starts_with("WEBSOCKET_") || k == "PORT" {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("the example starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line containing `marker` (within `LIMIT`); what follows
    /// it on that line.
    fn wait_for(&mut self, marker: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some((_, rest)) = line.split_once(marker) {
                        return rest.trim().to_string();
                    }
                }
                Err(e) => panic!("no {marker:?} ({e:?}); printed:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Every line until the process closes its output, then its status.
    fn finish(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!("still running after {LIMIT:?}:\n{}", self.seen.join("\n"));
                }
            }
        }
        let status = self.child.wait().expect("the example's status");
        (status, self.seen.join("\n"))
    }
}

#[test]
fn echo_answers_the_client_and_drains() {
    let mut echo = Running::start("echo", &["0"]);
    let url = echo.wait_for("listening on");
    let cfg = ClientConfig {
        subprotocols: vec!["echo".into()],
        ..ClientConfig::default()
    };
    let (mut conn, report) = Client::new(cfg).connect(&url).expect("connects");
    assert_eq!(report.subprotocol.as_deref(), Some("echo"));
    conn.send(Message::text("hello pollcap")).unwrap();
    assert_eq!(conn.recv().unwrap(), Message::text("hello pollcap"));
    conn.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(conn.recv().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    conn.close().expect("closes");
    stop(&mut echo.child);
    let (status, out) = echo.finish();
    if cfg!(unix) {
        // SIGTERM is the drain: the example returns from join.
        assert!(status.success(), "{status}:\n{out}");
        assert!(out.ends_with("echo: drained"), "{out}");
    }
}

/// SIGTERM on Unix (the example drains); elsewhere the process is ended.
fn stop(child: &mut Child) {
    #[cfg(unix)]
    {
        let pid = i32::try_from(child.id()).expect("a pid");
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    }
    #[cfg(not(unix))]
    child.kill().expect("ended");
}

#[test]
fn the_client_resumes_a_run_after_leaving_mid_run() {
    let srv = common::start(BackendKind::Mio, &[], |c| {
        c.app = pollcap::apps::from_settings(&c.settings);
    });
    let url = format!("ws://{}/ws", srv.local_addr());
    let (status, out) = Running::start("client", &[&url]).finish();
    assert!(status.success(), "{status}:\n{out}");
    assert!(out.contains("left after seq 3;"), "{out}");
    // Every seq once, in order, the last one agent_completed.
    let seqs: Vec<u64> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("seq "))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    let n = seqs.len() as u64;
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "{out}");
    assert!(
        out.contains(&format!("seq {n} \"agent_completed\"")),
        "{out}"
    );
    let more = n - 3;
    assert!(out.ends_with(&format!("resumed after seq 3: {more} more, none missing")));
    assert_eq!(
        common::metric(srv.local_addr(), "pollcap_resumes_total"),
        1.0
    );
    srv.shutdown_handle().shutdown();
    srv.join().unwrap();
}

#[test]
fn the_reactor_echoes_a_line_then_closes_on_its_idle_deadline() {
    let mut reactor = Running::start("reactor", &[]);
    let addr = reactor.wait_for("listening on");
    let mut s = TcpStream::connect(&addr).expect("connects");
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.write_all(b"hello\n").unwrap();
    let mut line = [0u8; 6];
    s.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"hello\n");
    // Silence from here: the idle deadline (1 s) closes the connection.
    let quiet = Instant::now();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("EOF, not a reset");
    assert!(rest.is_empty(), "{rest:?}");
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "{:?}",
        quiet.elapsed()
    );
    let (status, out) = reactor.finish();
    assert!(status.success(), "{status}:\n{out}");
    assert!(out.contains("reactor: idle for 1s: closing"), "{out}");
    // A second of silence outlasts the 250 ms cap: waits ended by it.
    let by_cap: u64 = out
        .rsplit("by the cap ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no wait counts:\n{out}"));
    assert!(by_cap >= 1, "{out}");
}
