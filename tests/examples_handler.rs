//! `examples/streaming_handler.rs` as a user runs it: the example binary
//! (built with the test's profile when `cargo test` did not build it)
//! started on a free port, its run streamed over a real socket, the
//! connection dropped mid-run and the run resumed on a new one.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Client;
use serde_json::{Value, json};
use tungstenite::Message;

/// The example binary next to this test's profile directory
/// (`target/<profile>/examples/`), built there first if missing.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<this test> (or target/<triple>/<profile>/...).
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let profile = profile_dir.file_name().unwrap().to_str().unwrap();
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--example", name, "--profile"])
            .arg(if profile == "debug" { "dev" } else { profile })
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // What cargo set for this test process (the package's name,
        // manifest, ...) would reach build scripts and change their
        // fingerprints: the next `cargo test` would rebuild ring and more.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            let ours = [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "OUT_DIR"].contains(&&*k);
            if ours {
                build.env_remove(&*k);
            }
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    path
}

/// The running example, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the example on a free loopback port; its printed address.
fn start() -> (Running, SocketAddr) {
    let mut child = Command::new(example("streaming_handler"))
        .env("POLLCAP_LISTEN", "127.0.0.1:0")
        .env_remove("POLLCAP_STORE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the example starts");
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let line = BufReader::new(stdout)
        .lines()
        .next()
        .expect("an address line")
        .unwrap();
    let addr = line
        .strip_prefix("listening on ws://")
        .and_then(|rest| rest.strip_suffix("/ws"))
        .unwrap_or_else(|| panic!("not an address line: {line:?}"))
        .parse()
        .unwrap();
    (running, addr)
}

fn connect(addr: SocketAddr) -> Client {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tungstenite::client(format!("ws://{addr}/ws"), s).unwrap().0
}

fn next(ws: &mut Client) -> Value {
    loop {
        match ws.read().expect("an event") {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

#[test]
fn the_streaming_example_streams_and_a_dropped_run_resumes_exactly_once_each() {
    let (_example, addr) = start();
    let mut ws = connect(addr);
    ws.send(Message::text("weather")).unwrap();
    let first: Vec<Value> = (0..3).map(|_| next(&mut ws)).collect();
    for (i, e) in first.iter().enumerate() {
        assert_eq!((&e["type"], &e["n"]), (&json!("tick"), &json!(i + 1)));
        assert_eq!(e["seq"], i as u64 + 1);
        assert_eq!(e["topic"], "weather");
    }
    let run_id = first[0]["run_id"].clone();
    // Lost, not closed: no Close frame, so the run goes on.
    ws.get_mut().shutdown(std::net::Shutdown::Both).unwrap();
    drop(ws);
    let mut ws = connect(addr);
    let resume = json!({"type": "resume", "run_id": run_id, "after_seq": 3});
    ws.send(Message::text(resume.to_string())).unwrap();
    let mut rest = Vec::new();
    loop {
        let e = next(&mut ws);
        assert_eq!(e["run_id"], run_id, "{e}");
        let done = e["type"] == "done";
        rest.push(e);
        if done {
            break;
        }
    }
    let seqs: Vec<u64> = rest.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (4..=11).collect::<Vec<u64>>(), "each once, in order");
    let ns: Vec<u64> = rest[..7].iter().map(|e| e["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (4..=10).collect::<Vec<u64>>());
}
