//! The agent command without Python, so that the Windows suite (under
//! Wine) spawns and ends real processes too: this test binary is its own
//! agent. Started as `command_exe --self-agent WATCH` it reads the request
//! line and behaves as the message's text says; every copy it starts for a
//! test reports to the test's `WATCH` listener over TCP and keeps that
//! connection open while it lives, so the test sees each process end (its
//! socket closes) on any system, without /proc or a Windows API.
//!
//! `harness = false` (Cargo.toml): `main` is the agent's entry and, without
//! `--self-agent`, a small runner for the tests below that prints libtest's
//! summary line. The Linux-only checks (process groups in /proc, Python)
//! are in `tests/command.rs`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::chat::{ask, chat, check_envelope, next, send, types};
use common::*;
use pollcap::reactor::BackendKind;
use pollcap::server::Server;
use pollcap::source::command::CommandConfig;
use serde_json::{Value, json};

const SELF_AGENT: &str = "--self-agent";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(SELF_AGENT) {
        return self_agent(&args[2], args.get(3).map(String::as_str));
    }
    let tests: [(&str, fn()); 5] = [
        (
            "the_binary_as_agent_relays_every_event_in_order",
            relays_every_event,
        ),
        (
            "a_client_close_ends_the_process_and_its_child",
            close_ends_the_family,
        ),
        (
            "a_silent_process_is_ended_at_the_response_deadline",
            silent_is_ended,
        ),
        (
            "an_exit_before_the_last_event_is_truncated",
            exit_is_truncated,
        ),
        ("a_missing_program_is_upstream_unavailable", missing_program),
    ];
    let filter = args.iter().skip(1).find(|a| !a.starts_with('-'));
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    println!("\nrunning {} tests", tests.len());
    for (name, test) in tests {
        if filter.is_some_and(|f| !name.contains(f.as_str())) {
            skipped += 1;
            continue;
        }
        let ok = std::panic::catch_unwind(test).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if ok { passed += 1 } else { failed += 1 }
    }
    let result = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {result}. {passed} passed; {failed} failed; 0 ignored; 0 measured; \
         {skipped} filtered out\n"
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(101)
    }
}

// --- the agent -----------------------------------------------------------

/// The agent's side: `role` is `None` for the run's process, `child` for
/// the process it starts.
fn self_agent(watch: &str, role: Option<&str>) -> ExitCode {
    let report = |who: &str| {
        let mut s = TcpStream::connect(watch).expect("the test's watch listener");
        writeln!(s, "{who} {}", std::process::id()).unwrap();
        s // open while the process lives
    };
    if role == Some("child") {
        let _watch = report("child");
        forever();
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let req: Value = serde_json::from_str(&line).unwrap();
    let emit = |e: Value| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{e}").unwrap();
        out.flush().unwrap();
    };
    match req["text"].as_str().unwrap_or("") {
        "good" => {
            eprintln!("self-agent got {}", req["run_id"]);
            let mut rest = String::new();
            std::io::stdin().read_to_string(&mut rest).unwrap();
            emit(json!({"type": "agent_started"}));
            emit(json!({"type": "agent_thinking", "delta": "Hel"}));
            emit(json!({"type": "my_custom", "request": req, "stdin_left": rest}));
            emit(json!({"type": "agent_thinking", "delta": "lo"}));
            emit(json!({"type": "agent_completed"}));
            ExitCode::SUCCESS
        }
        "family" => {
            let _watch = report("parent");
            let exe = std::env::current_exe().unwrap();
            let mut child = std::process::Command::new(exe)
                .args([SELF_AGENT, watch, "child"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            emit(json!({"type": "family", "child": child.id()}));
            let _ = child.wait(); // the child hangs: so does this wait
            forever()
        }
        "silent" => {
            let _watch = report("parent");
            forever()
        }
        "exit" => {
            emit(json!({"type": "agent_thinking", "delta": "a"}));
            ExitCode::from(3)
        }
        other => panic!("no such behaviour: {other}"),
    }
}

/// The agent's own hang: what the tests end.
fn forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

// --- the tests -----------------------------------------------------------

/// Where the agents report: each connection's first line names the process,
/// and its end comes as `(name, None)` when the process is gone.
struct Watch {
    addr: SocketAddr,
    events: Receiver<(String, Option<Instant>)>,
}

impl Watch {
    fn start() -> Watch {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, events) = channel();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s);
                    let mut who = String::new();
                    if r.read_line(&mut who).is_err() {
                        return;
                    }
                    let who = who.trim().to_string();
                    let _ = tx.send((who.clone(), None));
                    // Blocks until the process is gone (its socket closes).
                    let mut b = [0u8; 64];
                    while matches!(r.read(&mut b), Ok(n) if n > 0) {}
                    let _ = tx.send((who, Some(Instant::now())));
                });
            }
        });
        Watch { addr, events }
    }

    /// The next report (`None`: a process came; `Some`: one went), by a limit.
    fn next(&self, limit: Duration) -> (String, Option<Instant>) {
        self.events
            .recv_timeout(limit)
            .expect("a report from an agent process")
    }

    /// The agent command: this binary as agent, reporting here.
    fn cmd(&self) -> String {
        let exe = std::env::current_exe().unwrap();
        let addr = self.addr.to_string();
        shlex::try_join([exe.to_str().unwrap(), SELF_AGENT, addr.as_str()]).unwrap()
    }
}

fn exe_server(cmd: &str, env: &[(&str, &str)]) -> Server {
    let mut vars: Vec<(&str, &str)> = vec![
        ("POLLCAP_AGENT_CMD", cmd),
        // A process start under Wine takes a while.
        ("AGENT_RESPONSE_TIMEOUT", "5"),
        ("AGENT_IDLE_TIMEOUT", "5"),
        ("AGENT_EXECUTION_TIMEOUT", "10"),
        ("WEBSOCKET_HEARTBEAT_INTERVAL", "5"),
        ("WEBSOCKET_HEARTBEAT_TIMEOUT", "10"),
        ("WEBSOCKET_STALE_TIMEOUT", "30"),
        ("WEBSOCKET_CONNECTION_TIMEOUT", "60"),
    ];
    vars.extend_from_slice(env);
    start(BackendKind::Mio, &vars, |c| {
        c.app = pollcap::apps::from_settings(&c.settings);
        c.command = CommandConfig::from_settings(&c.settings);
    })
}

/// No process of `srv`'s agent is left, and its gauges say so.
fn settled(srv: &Server) {
    eventually(Duration::from_secs(10), || {
        let m = metrics(srv.local_addr());
        (m["pollcap_agent_processes"] == 0.0 && m["pollcap_agent_runs_in_flight"] == 0.0)
            .then_some(())
    });
}

fn relays_every_event() {
    let watch = Watch::start();
    let srv = exe_server(&watch.cmd(), &[]);
    let mut ws = chat(srv.local_addr());
    let events = ask(&mut ws, "good");
    assert_eq!(
        types(&events),
        [
            "agent_started",
            "agent_thinking",
            "my_custom",
            "agent_thinking",
            "agent_completed"
        ]
    );
    check_envelope(&events);
    assert_eq!(events[4]["final"], "Hello");
    let req = &events[2]["request"];
    assert_eq!(req["run_id"], events[0]["run_id"]);
    assert_eq!(req["text"], "good");
    assert_eq!(events[2]["stdin_left"], "", "one line, then stdin closed");
    eventually(Duration::from_secs(5), || {
        (metric(srv.local_addr(), "pollcap_agent_stderr_lines_total") == 1.0).then_some(())
    });
    settled(&srv);
}

fn close_ends_the_family() {
    let watch = Watch::start();
    let srv = exe_server(&watch.cmd(), &[]);
    let mut ws = chat(srv.local_addr());
    send(&mut ws, "family");
    assert_eq!(next(&mut ws)["type"], "agent_started");
    assert_eq!(next(&mut ws)["type"], "family");
    let mut came = Vec::new();
    while came.len() < 2 {
        let (who, gone) = watch.next(Duration::from_secs(10));
        assert!(gone.is_none(), "{who} went before the Close");
        came.push(who);
    }
    let closed = Instant::now();
    ws.close(None).unwrap();
    let _ = ws.flush();
    for _ in 0..2 {
        let (who, gone) = watch.next(Duration::from_secs(5));
        let gone = gone.unwrap_or_else(|| panic!("{who} came instead of going"));
        assert!(
            gone.duration_since(closed) < Duration::from_secs(1),
            "{who} ended at once"
        );
    }
    settled(&srv);
}

fn silent_is_ended() {
    let watch = Watch::start();
    let srv = exe_server(&watch.cmd(), &[("AGENT_RESPONSE_TIMEOUT", "3")]);
    let mut ws = chat(srv.local_addr());
    let sent = Instant::now();
    send(&mut ws, "silent");
    let (who, gone) = watch.next(Duration::from_secs(3));
    assert!(gone.is_none(), "{who}");
    let end = next(&mut ws);
    assert_near(
        sent.elapsed(),
        Duration::from_secs(3),
        "the response deadline",
    );
    assert_eq!(
        (end["code"].as_str(), end["phase"].as_str()),
        (Some("upstream_timeout"), Some("response"))
    );
    let (who, gone) = watch.next(Duration::from_secs(2));
    assert!(gone.is_some(), "{who} ended at the deadline");
    settled(&srv);
}

fn exit_is_truncated() {
    let watch = Watch::start();
    let srv = exe_server(&watch.cmd(), &[]);
    let mut ws = chat(srv.local_addr());
    let events = ask(&mut ws, "exit");
    assert_eq!(types(&events), ["agent_started", "agent_thinking", "error"]);
    assert_eq!(events[2]["code"], "upstream_truncated");
    settled(&srv);
}

fn missing_program() {
    let srv = exe_server("pollcap-no-such-agent-program", &[]);
    let mut ws = chat(srv.local_addr());
    let end = ask(&mut ws, "good").pop().unwrap();
    assert_eq!(end["code"], "upstream_unavailable");
    assert!(
        end["message"]
            .as_str()
            .unwrap()
            .contains("pollcap-no-such-agent-program"),
        "{end}"
    );
    assert_eq!(
        metric(srv.local_addr(), "pollcap_agent_requests_total"),
        0.0
    );
}
