//! Runs streamed from the team's agent as a command (SPEC §5, `--agent-cmd`),
//! over real processes: a Python agent script written by the test. Every
//! event relayed in order with pollcap's seq; each way a process goes wrong
//! answered with its code within its deadline; a process that hangs killed
//! at the deadline and reaped, its process group with it; a client Close
//! reaching the grandchildren; stderr in the log and rate-limited; the
//! process limit; the breaker; the drain. Processes are checked in /proc.
//! The same machinery under Windows (Wine) is `tests/command_exe.rs`.
#![cfg(target_os = "linux")]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::chat::{ask, chat, check_envelope, next, send, types};
use common::*;
use pollcap::reactor::BackendKind;
use pollcap::server::Server;
use pollcap::source::command::CommandConfig;
use serde_json::Value;

/// The agent deadlines of these tests: response (spawn → first line: a
/// Python start on a loaded machine fits in it), idle, the whole run.
const RESPONSE: Duration = Duration::from_secs(2);
const IDLE: Duration = Duration::from_millis(500);
const EXECUTION: Duration = Duration::from_secs(4);
/// SIGTERM → SIGKILL (`command::process::KILL_GRACE`).
const KILL_GRACE: Duration = Duration::from_secs(2);

/// The agent: its behaviour is the message's text. It records its pid and
/// process group in `DIR/<run_id>.pid` before anything else.
const AGENT_PY: &str = r#"
import ctypes, json, os, signal, subprocess, sys, time
# Insurance for a failing test only: if the test process dies, so does this
# agent (PR_SET_PDEATHSIG). Its own child gets nothing of the kind.
ctypes.CDLL(None).prctl(1, signal.SIGKILL)
DIR = sys.argv[1]
req = json.loads(sys.stdin.readline())
with open(os.path.join(DIR, req["run_id"] + ".pid"), "w") as f:
    f.write("%d %d" % (os.getpid(), os.getpgrp()))
text = req["text"]
def emit(**e):
    sys.stdout.write(json.dumps(e) + "\n")
    sys.stdout.flush()
def forever():
    while True:
        time.sleep(60)  # the agent's own hang: what is under test
if text == "good":
    print("agent got " + req["run_id"], file=sys.stderr, flush=True)
    emit(type="agent_started", seq=40)
    emit(type="agent_thinking", delta="Hel", run_id="theirs")
    emit(type="my_custom", request=req, stdin_left=sys.stdin.read())
    emit(type="agent_thinking", delta="lo")
    emit(type="tool_executing", tool="search")
    emit(type="agent_completed")
elif text == "silent":
    forever()
elif text == "stall":
    emit(type="agent_thinking", delta="a")
    forever()
elif text == "pings":
    while True:
        sys.stdout.write("\n")
        sys.stdout.flush()
        time.sleep(0.1)
elif text in ("family", "stubborn"):
    if text == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the child
    child = subprocess.Popen(["sleep", "3600"])
    emit(type="pids", pid=os.getpid(), pgid=os.getpgrp(), child=child.pid)
    forever()
elif text == "exit":
    emit(type="agent_thinking", delta="a")
    sys.exit(3)
elif text == "huge":
    sys.stdout.write("x" * (10 << 20))
    sys.stdout.flush()
    forever()
elif text == "html":
    print("<html>busy</html>", flush=True)
    forever()
elif text == "spew":
    for i in range(1000):
        sys.stderr.write("spew line %d\n" % i)
    sys.stderr.flush()
    emit(type="agent_completed", final="spewed")
"#;

/// The agent script in a directory of its own, removed on drop.
struct Agent {
    dir: PathBuf,
}

impl Agent {
    fn new() -> Agent {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pollcap-agent-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("agent.py"), AGENT_PY).unwrap();
        Agent { dir }
    }

    /// The `--agent-cmd` value (split like a shell would).
    fn cmd(&self) -> String {
        let script = self.dir.join("agent.py");
        let words = [
            "python3",
            "-u",
            script.to_str().unwrap(),
            self.dir.to_str().unwrap(),
        ];
        shlex::try_join(words).unwrap()
    }

    /// (pid, pgid) of run `run_id`'s process, once it wrote them.
    fn pids(&self, run_id: &str) -> (i32, i32) {
        let path = self.dir.join(format!("{run_id}.pid"));
        eventually(Duration::from_secs(5), || {
            let s = std::fs::read_to_string(&path).ok()?;
            let mut w = s.split_whitespace().map(|w| w.parse().unwrap());
            Some((w.next()?, w.next()?))
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The state letter of `pid` (`Z`: a zombie), or `None` once it is gone.
fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid pgrp …": comm may hold anything but the last ')'.
    s[s.rfind(')')? + 2..].chars().next()
}

/// Processes of group `pgid` that are not zombies.
fn live_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = s.rfind(')') else { continue };
        let f: Vec<&str> = s[close + 2..].split_whitespace().collect();
        if f.len() > 2 && f[2] == pgid.to_string() && f[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

/// Nothing is left of run `run_id`'s process: the leader reaped (not even
/// a zombie: pollcap waited for it), every member of its group dead.
fn all_gone(agent: &Agent, run_id: &str, within: Duration) {
    let (pid, pgid) = agent.pids(run_id);
    assert_eq!(pid, pgid, "the agent leads a process group of its own");
    assert_ne!(
        pgid,
        i32::try_from(std::process::id()).unwrap(),
        "not the test's group"
    );
    eventually(within, || {
        (state(pid).is_none() && live_members(pgid).is_empty()).then_some(())
    });
}

fn cmd_server(kind: BackendKind, cmd: &str, env: &[(&str, &str)]) -> Server {
    let mut vars: Vec<(&str, &str)> = vec![
        ("POLLCAP_AGENT_CMD", cmd),
        ("AGENT_RESPONSE_TIMEOUT", "2"),
        ("AGENT_IDLE_TIMEOUT", "0.5"),
        ("AGENT_EXECUTION_TIMEOUT", "4"),
        // The clients here stop reading while they look at processes.
        ("WEBSOCKET_HEARTBEAT_INTERVAL", "5"),
        ("WEBSOCKET_HEARTBEAT_TIMEOUT", "10"),
        ("WEBSOCKET_STALE_TIMEOUT", "30"),
        ("WEBSOCKET_CONNECTION_TIMEOUT", "60"),
    ];
    vars.extend_from_slice(env);
    start(kind, &vars, |c| {
        c.app = pollcap::apps::from_settings(&c.settings);
        c.command = CommandConfig::from_settings(&c.settings);
    })
}

/// The agents' processes of `srv` are all gone, and its gauges say so.
fn settled(srv: &Server) {
    eventually(Duration::from_secs(5), || {
        let m = metrics(srv.local_addr());
        (m["pollcap_agent_processes"] == 0.0 && m["pollcap_agent_runs_in_flight"] == 0.0)
            .then_some(())
    });
}

fn check_good_run(events: &[Value]) {
    assert_eq!(
        types(events),
        [
            "agent_started",
            "agent_thinking",
            "my_custom",
            "agent_thinking",
            "tool_executing",
            "agent_completed"
        ]
    );
    check_envelope(events);
    assert_eq!(events[0]["thread_id"], "t1", "pollcap's own agent_started");
    assert_eq!(events[5]["final"], "Hello", "final filled from the deltas");
}

#[test]
fn a_python_agent_relays_every_event_in_order() {
    each_backend(|kind| {
        let agent = Agent::new();
        let srv = cmd_server(kind, &agent.cmd(), &[]);
        let mut ws = chat(srv.local_addr());
        for _ in 0..2 {
            let events = ask(&mut ws, "good");
            check_good_run(&events);
            // What the process read: one line, then its stdin closed.
            let custom = &events[2];
            assert_eq!(custom["stdin_left"], "", "stdin closed after the request");
            let req = &custom["request"];
            assert_eq!(req["run_id"], events[0]["run_id"]);
            assert_eq!(
                (req["thread_id"].as_str(), req["text"].as_str()),
                (Some("t1"), Some("good"))
            );
            assert!(req["subject"].is_null(), "authentication is off");
            let left = req["deadline_ms"].as_u64().unwrap();
            assert!(
                left <= 4000 && left > 2000,
                "the time left of the run: {left}"
            );
            all_gone(
                &agent,
                events[0]["run_id"].as_str().unwrap(),
                Duration::from_secs(5),
            );
        }
        let m = metrics(srv.local_addr());
        assert_eq!(m["pollcap_agent_requests_total"], 2.0, "processes spawned");
        eventually(Duration::from_secs(5), || {
            let n = metric(srv.local_addr(), "pollcap_agent_stderr_lines_total");
            (n == 2.0).then_some(())
        });
        settled(&srv);
        let health: Value =
            serde_json::from_str(body_of(&get(srv.local_addr(), "/health"))).unwrap();
        assert_eq!(health["agent"]["kind"], "command");
        assert_eq!(health["agent"]["target"], "python3");
    });
}

/// A process that hangs, each way: the run's error names the deadline, the
/// process is killed at it and reaped, and the connection stays usable.
#[test]
fn a_process_that_hangs_is_killed_at_its_deadline_and_nothing_is_left() {
    let agent = Agent::new();
    let srv = cmd_server(BackendKind::Mio, &agent.cmd(), &[]);
    let mut ws = chat(srv.local_addr());
    for (text, phase, deadline) in [
        ("silent", "response", RESPONSE),
        ("stall", "idle", IDLE),
        ("pings", "execution", EXECUTION),
    ] {
        // Response and execution count from the message (the spawn), idle
        // from the first line (pollcap's agent_started).
        let sent = Instant::now();
        send(&mut ws, text);
        let mut events = vec![next(&mut ws)];
        let first = Instant::now();
        while events.last().unwrap()["type"] != "error" {
            events.push(next(&mut ws));
        }
        let from = if phase == "idle" { first } else { sent };
        assert_near(from.elapsed(), deadline, text);
        let end = events.last().unwrap();
        assert_eq!(
            (end["code"].as_str(), end["phase"].as_str()),
            (Some("upstream_timeout"), Some(phase)),
            "{text}: {end}"
        );
        check_envelope(&events);
        all_gone(
            &agent,
            end["run_id"].as_str().unwrap(),
            Duration::from_secs(1),
        );
        check_good_run(&ask(&mut ws, "good"));
    }
    let m = metrics(srv.local_addr());
    assert_eq!(m["pollcap_timeouts_total{phase=\"agent_response\"}"], 1.0);
    assert_eq!(m["pollcap_timeouts_total{phase=\"agent_idle\"}"], 1.0);
    assert_eq!(m["pollcap_timeouts_total{phase=\"execution\"}"], 1.0);
    settled(&srv);
}

#[test]
fn an_early_exit_is_truncated_and_a_bad_or_huge_line_invalid() {
    let agent = Agent::new();
    let srv = cmd_server(
        BackendKind::Mio,
        &agent.cmd(),
        &[("POLLCAP_AGENT_BREAKER_THRESHOLD", "100")],
    );
    let mut ws = chat(srv.local_addr());
    for (text, code, says) in [
        (
            "exit",
            "upstream_truncated",
            "before agent_completed or error",
        ),
        ("huge", "upstream_invalid", "longer than"),
        ("html", "upstream_invalid", "not JSON"),
    ] {
        let t0 = Instant::now();
        let events = ask(&mut ws, text);
        assert!(
            t0.elapsed() < RESPONSE,
            "{text}: no deadline, took {:?}",
            t0.elapsed()
        );
        let end = events.last().unwrap();
        assert_eq!(end["code"], code, "{text}: {end}");
        assert!(
            end["message"].as_str().unwrap().contains(says),
            "{text}: {end}"
        );
        all_gone(
            &agent,
            end["run_id"].as_str().unwrap(),
            Duration::from_secs(1),
        );
        check_good_run(&ask(&mut ws, "good"));
    }
    let m = metrics(srv.local_addr());
    assert_eq!(
        m["pollcap_agent_failures_total{code=\"upstream_truncated\"}"],
        1.0
    );
    assert_eq!(
        m["pollcap_agent_failures_total{code=\"upstream_invalid\"}"],
        2.0
    );
    settled(&srv);
}

#[test]
fn a_client_close_kills_the_process_group_grandchildren_included() {
    let agent = Agent::new();
    let srv = cmd_server(
        BackendKind::Mio,
        &agent.cmd(),
        &[("AGENT_IDLE_TIMEOUT", "3")],
    );
    let mut ws = chat(srv.local_addr());
    send(&mut ws, "family");
    assert_eq!(next(&mut ws)["type"], "agent_started");
    let pids = next(&mut ws);
    assert_eq!(pids["type"], "pids");
    let child = i32::try_from(pids["child"].as_i64().unwrap()).unwrap();
    assert_eq!(
        state(child).map(|s| s != 'Z'),
        Some(true),
        "the grandchild runs"
    );
    let closed = Instant::now();
    ws.close(None).unwrap();
    let _ = ws.flush();
    all_gone(
        &agent,
        pids["run_id"].as_str().unwrap(),
        Duration::from_secs(1),
    );
    assert!(
        closed.elapsed() < Duration::from_secs(1),
        "SIGTERM, at once"
    );
    assert!(
        state(child).is_none_or(|s| s == 'Z'),
        "the grandchild died with it"
    );
    assert_eq!(
        metric(srv.local_addr(), "pollcap_runs_cancelled_total"),
        1.0
    );
    settled(&srv);
}

#[test]
fn a_group_that_ignores_sigterm_is_killed_two_seconds_later() {
    let agent = Agent::new();
    let srv = cmd_server(
        BackendKind::Mio,
        &agent.cmd(),
        &[("AGENT_IDLE_TIMEOUT", "3")],
    );
    let mut ws = chat(srv.local_addr());
    send(&mut ws, "stubborn");
    assert_eq!(next(&mut ws)["type"], "agent_started");
    let pids = next(&mut ws);
    let (pid, child) = (
        pids["pid"].as_i64().unwrap(),
        pids["child"].as_i64().unwrap(),
    );
    let (pid, child) = (i32::try_from(pid).unwrap(), i32::try_from(child).unwrap());
    let closed = Instant::now();
    ws.close(None).unwrap();
    let _ = ws.flush();
    let gone = eventually(KILL_GRACE + SLACK, || {
        state(pid).is_none().then(Instant::now)
    });
    assert_near(
        gone.duration_since(closed),
        KILL_GRACE,
        "SIGKILL after the grace",
    );
    assert!(
        state(child).is_none_or(|s| s == 'Z'),
        "the grandchild got it too"
    );
    settled(&srv);
}

#[test]
fn past_the_process_limit_a_run_is_overloaded() {
    let agent = Agent::new();
    let srv = cmd_server(
        BackendKind::Mio,
        &agent.cmd(),
        &[
            ("POLLCAP_AGENT_MAX_PROCS", "2"),
            ("AGENT_IDLE_TIMEOUT", "3"),
        ],
    );
    let a = srv.local_addr();
    let mut holders: Vec<_> = (0..2)
        .map(|_| {
            let mut ws = chat(a);
            send(&mut ws, "stall");
            assert_eq!(next(&mut ws)["type"], "agent_started");
            ws
        })
        .collect();
    let mut ws = chat(a);
    let events = ask(&mut ws, "good");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["code"], "overloaded");
    assert_eq!(metric(a, "pollcap_handler_overloaded_total"), 1.0);
    assert_eq!(metric(a, "pollcap_agent_processes"), 2.0);
    assert_eq!(
        metric(a, "pollcap_agent_requests_total"),
        2.0,
        "nothing spawned for it"
    );
    // One holder leaves: once its process is reaped, runs start again.
    for h in &mut holders[..1] {
        h.close(None).unwrap();
        let _ = h.flush();
    }
    eventually(Duration::from_secs(5), || {
        let events = ask(&mut ws, "good");
        (events.last().unwrap()["type"] == "agent_completed").then(|| check_good_run(&events))
    });
    for h in &mut holders[1..] {
        h.close(None).unwrap();
        let _ = h.flush();
    }
    settled(&srv);
}

#[test]
fn stderr_is_rate_limited_per_process_and_the_rest_counted() {
    let agent = Agent::new();
    let srv = cmd_server(BackendKind::Mio, &agent.cmd(), &[]);
    let mut ws = chat(srv.local_addr());
    let events = ask(&mut ws, "spew");
    assert_eq!(events.last().unwrap()["final"], "spewed");
    let (logged, dropped) = eventually(Duration::from_secs(5), || {
        let m = metrics(srv.local_addr());
        let (l, d) = (
            m["pollcap_agent_stderr_lines_total"],
            m["pollcap_agent_stderr_dropped_total"],
        );
        (l + d == 1000.0).then_some((l, d))
    });
    assert!(
        (20.0..=40.0).contains(&logged),
        "about 20 a second: {logged} logged, {dropped} dropped"
    );
    settled(&srv);
}

#[test]
fn a_command_that_cannot_start_is_unavailable_and_opens_the_breaker() {
    let srv = cmd_server(
        BackendKind::Mio,
        "/nonexistent/pollcap-agent --flag",
        &[
            ("POLLCAP_AGENT_BREAKER_THRESHOLD", "2"),
            ("POLLCAP_AGENT_BREAKER_RECOVERY", "30"),
        ],
    );
    let mut ws = chat(srv.local_addr());
    for _ in 0..2 {
        let end = ask(&mut ws, "good").pop().unwrap();
        assert_eq!(end["code"], "upstream_unavailable");
        assert!(
            end["message"]
                .as_str()
                .unwrap()
                .contains("/nonexistent/pollcap-agent"),
            "{end}"
        );
    }
    let end = ask(&mut ws, "good").pop().unwrap();
    assert_eq!(end["code"], "upstream_unavailable");
    assert!(
        end["retry_after_ms"].as_u64().unwrap() > 0,
        "the breaker is open: {end}"
    );
    let health: Value = serde_json::from_str(body_of(&get(srv.local_addr(), "/health"))).unwrap();
    assert_eq!(health["agent"]["breaker"]["state"], "open");
    assert_eq!(
        metric(srv.local_addr(), "pollcap_agent_requests_total"),
        0.0
    );
}

#[test]
fn a_drain_stops_the_processes_and_reaps_them_before_the_server_returns() {
    let agent = Agent::new();
    let srv = cmd_server(
        BackendKind::Mio,
        &agent.cmd(),
        &[("AGENT_IDLE_TIMEOUT", "3")],
    );
    let mut ws = chat(srv.local_addr());
    send(&mut ws, "family");
    assert_eq!(next(&mut ws)["type"], "agent_started");
    let pids = next(&mut ws);
    let (pid, _) = agent.pids(pids["run_id"].as_str().unwrap());
    srv.shutdown_handle().shutdown();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(srv.join().is_ok()));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)),
        Ok(true),
        "the server returned"
    );
    assert_eq!(state(pid), None, "reaped before the server returned");
    all_gone(
        &agent,
        pids["run_id"].as_str().unwrap(),
        Duration::from_secs(1),
    );
    drop(ws);
}

/// The binary: `--agent-cmd` from the command line, the agent's stderr in
/// pollcap's log with its run id.
#[cfg(feature = "cli")] // runs the binary
#[test]
fn the_binary_runs_an_agent_command_and_logs_its_stderr() {
    let agent = Agent::new();
    let (srv, log) = spawn_server_undrained(
        env!("CARGO_BIN_EXE_pollcap"),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--agent-cmd",
            &agent.cmd(),
        ],
        &[],
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in log.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut ws = chat(srv.addr);
    let events = ask(&mut ws, "good");
    check_good_run(&events);
    let want = format!(
        "agent stderr: agent got {}",
        events[0]["run_id"].as_str().unwrap()
    );
    let t0 = Instant::now();
    let line = loop {
        let left = Duration::from_secs(5).saturating_sub(t0.elapsed());
        let line = rx
            .recv_timeout(left)
            .expect("the agent's stderr line in the log");
        if line.contains(&want) {
            break line;
        }
    };
    assert!(
        line.contains(events[0]["run_id"].as_str().unwrap()),
        "{line}"
    );
    all_gone(
        &agent,
        events[0]["run_id"].as_str().unwrap(),
        Duration::from_secs(5),
    );
}
