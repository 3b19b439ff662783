//! Runs the built binary: `pollcap config --json` under a few environments,
//! start-up errors (exit 2, one line naming the setting), and `pollcap
//! probe` against a real `pollcap serve` with authentication.

mod common;

use std::process::{Command, Output};

fn pollcap(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pollcap"));
    cmd.args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pollcap")
}

fn config_json(env: &[(&str, &str)]) -> serde_json::Value {
    let out = pollcap(&["config", "--json"], env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

#[test]
fn config_defaults() {
    let j = config_json(&[]);
    assert_eq!(j["profile"], "local");
    assert_eq!(j["backend"], "mio");
    assert_eq!(j["poll_cap"], "fixed(1000ms)");
    assert_eq!(j["listen"], "127.0.0.1:8765");
    assert_eq!(j["timeouts_s"]["handshake"], 3.0);
    assert_eq!(j["environment"]["cloud_container"], false);
    // Detected from the build target: true under Wine, false on Linux.
    assert_eq!(j["environment"]["windows"], cfg!(windows));
    assert_eq!(j["environment"]["label"] == "windows", cfg!(windows));
}

#[test]
fn config_in_cloud_run_production() {
    let j = config_json(&[
        ("ENVIRONMENT", "production"),
        ("K_SERVICE", "chat"),
        ("PORT", "8080"),
        ("POLLCAP_BACKEND", "polling"),
    ]);
    assert_eq!(j["profile"], "production");
    assert_eq!(j["environment"]["cloud"], "gcp-cloud-run");
    assert_eq!(j["environment"]["cloud_container"], true);
    assert_eq!(j["listen"], "0.0.0.0:8080");
    assert_eq!(j["backend"], "polling");
    assert_eq!(j["timeouts_s"]["connection"], 3300.0);
}

#[test]
fn config_in_kubernetes_with_overrides() {
    let j = config_json(&[
        ("ENVIRONMENT", "staging"),
        ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
        ("WEBSOCKET_STALE_TIMEOUT", "100.5"),
        ("POLLCAP_POLL_CAP_MS", "off"),
    ]);
    assert_eq!(j["environment"]["cloud"], "kubernetes");
    assert_eq!(j["timeouts_s"]["stale"], 100.5);
    assert_eq!(j["poll_cap"], "unbounded");
}

#[test]
fn flags_beat_env_in_the_binary() {
    let out = pollcap(
        &[
            "config",
            "--json",
            "--ping-timeout",
            "1.5",
            "--poll-cap",
            "250",
        ],
        &[("WEBSOCKET_PING_TIMEOUT", "3")],
    );
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["timeouts_s"]["ping"], 1.5);
    assert_eq!(j["poll_cap_ms"], 250.0);
}

/// (extra args, environment, what the error must name)
type BadCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn invalid_settings_exit_2_with_one_named_line() {
    let cases: [BadCase; 5] = [
        (
            &[],
            &[("WEBSOCKET_PING_TIMEOUT", "abc")],
            "WEBSOCKET_PING_TIMEOUT",
        ),
        (&[], &[("ENVIRONMENT", "moon")], "ENVIRONMENT"),
        (&[], &[("WEBSOCKET_CONNECT_TIMEOUT", "9")], "connect"),
        (&["--close-timeout", "-1"], &[], "--close-timeout"),
        (&["--poll-cap", "5000"], &[], "poll cap"),
    ];
    for (args, env, named) in cases {
        let mut a = vec!["config"];
        a.extend_from_slice(args);
        let out = pollcap(&a, env);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(named), "{err} should name {named}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn help_and_version() {
    let out = pollcap(&["--version"], &[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pollcap "));
    let out = pollcap(&["--help"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("config"));
}

#[test]
fn probe_exit_status_follows_the_verdict() {
    let secret = [("POLLCAP_JWT_SECRET", "probe-test-secret")];
    let srv = common::spawn_server(
        env!("CARGO_BIN_EXE_pollcap"),
        &["serve", "--listen", "127.0.0.1:0", "--pacing-ms", "1"],
        &secret,
    );
    let bin = env!("CARGO_BIN_EXE_pollcap");
    let token = Command::new(bin)
        .args(["token", "--sub", "probe", "--ttl", "5m"])
        .envs(secret)
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    let url = format!("ws://{}/ws", srv.addr);
    let probe = |extra: &[&str]| {
        Command::new(bin)
            .args(["probe", &url, "--json"])
            .args(extra)
            .env_remove("POLLCAP_TOKEN")
            .output()
            .unwrap()
    };

    let ok = probe(&["--token", token.trim()]);
    let j: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("JSON report");
    assert_eq!(ok.status.code(), Some(0), "{j}");
    assert_eq!(j["ok"], true);
    let phases: Vec<&str> = j["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "dns",
            "tcp",
            "handshake",
            "first_event",
            "all_events",
            "close"
        ]
    );
    assert!(
        j["phases"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["ms"].is_number())
    );

    let denied = probe(&[]);
    let j: serde_json::Value = serde_json::from_slice(&denied.stdout).expect("JSON report");
    assert_eq!(denied.status.code(), Some(1), "{j}");
    let verdict = j["verdict"].as_str().unwrap();
    assert!(
        verdict.starts_with("FAIL at handshake") && verdict.contains("401"),
        "{verdict}"
    );

    let bad = Command::new(bin)
        .args(["probe", "https://example.invalid/ws"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("must be ws:// or wss://"), "{err}");
}

/// A CA, a leaf for localhost signed by it, and a second CA, as files.
fn tls_files() -> (common::certs::TempDir, common::certs::TestCa) {
    use common::certs::{TempDir, TestCa};
    let dir = TempDir::new("cli-tls");
    let ca = TestCa::new("pollcap cli CA");
    ca.write(&dir.path("ca.pem"));
    ca.write_leaf(&["localhost"], &dir.path("cert.pem"), &dir.path("key.pem"));
    TestCa::new("Unrelated CA").write(&dir.path("other-ca.pem"));
    (dir, ca)
}

fn arg(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[test]
fn tls_start_up_errors_exit_2_naming_the_flag_the_path_and_the_problem() {
    let (dir, ca) = tls_files();
    let (cert, key) = (arg(&dir.path("cert.pem")), arg(&dir.path("key.pem")));
    let (_, other_key) = ca.leaf(&["localhost"], false);
    std::fs::write(dir.path("other-key.pem"), other_key).unwrap();
    let missing = arg(&dir.path("missing.pem"));
    let other = arg(&dir.path("other-key.pem"));
    let cases: [(&[&str], &str, &str); 5] = [
        (
            &["--tls-cert", &cert, "--tls-key", &missing],
            "--tls-key",
            "cannot be read",
        ),
        (
            &["--tls-cert", &cert, "--tls-key", &cert],
            "--tls-key",
            "no PRIVATE KEY",
        ),
        (
            &["--tls-cert", &cert, "--tls-key", &other],
            "--tls-key",
            "does not match",
        ),
        (
            &["--tls-cert", &key, "--tls-key", &key],
            "--tls-cert",
            "no CERTIFICATE",
        ),
        (&["--tls-cert", &cert], "--tls-key", "TLS needs both"),
    ];
    for (args, flag, problem) in cases {
        let mut a = vec!["serve", "--listen", "127.0.0.1:0"];
        a.extend_from_slice(args);
        let out = pollcap(&a, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(
            err.contains(flag) && err.contains(problem),
            "{args:?}: {err}"
        );
        if problem != "TLS needs both" {
            // Quoted as Rust quotes strings (backslashes doubled on Windows).
            let quoted = format!("{:?}", args[3]);
            assert!(err.contains(&quoted), "names the path {quoted}: {err}");
        }
    }
}

#[test]
fn the_probe_checks_wss_with_a_private_ca_and_names_an_untrusted_one() {
    let (dir, _ca) = tls_files();
    let srv = common::spawn_server(
        env!("CARGO_BIN_EXE_pollcap"),
        &["serve", "--listen", "127.0.0.1:0", "--pacing-ms", "1"],
        &[
            ("POLLCAP_TLS_CERT", &arg(&dir.path("cert.pem"))),
            ("POLLCAP_TLS_KEY", &arg(&dir.path("key.pem"))),
        ],
    );
    let url = format!("wss://localhost:{}/ws", srv.addr.port());
    let probe = |ca: &str| {
        Command::new(env!("CARGO_BIN_EXE_pollcap"))
            .args(["probe", &url, "--json", "--ca-file", ca])
            .env_remove("POLLCAP_TOKEN")
            .output()
            .unwrap()
    };
    let ok = probe(&arg(&dir.path("ca.pem")));
    let j: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("JSON report");
    assert_eq!(ok.status.code(), Some(0), "{j}");
    let tls = &j["phases"][2];
    assert_eq!(tls["phase"], "tls");
    assert_eq!(tls["ok"], true);
    assert!(tls["ms"].is_number());
    assert_eq!(tls["detail"], "TLSv1_3");

    let refused = probe(&arg(&dir.path("other-ca.pem")));
    let j: serde_json::Value = serde_json::from_slice(&refused.stdout).expect("JSON report");
    assert_eq!(refused.status.code(), Some(1), "{j}");
    assert_eq!(
        j["verdict"],
        "FAIL at tls: certificate not trusted (issuer \"CN=pollcap cli CA\")"
    );
}

#[test]
#[cfg_attr(
    windows,
    ignore = "SIGHUP is POSIX; on Windows rotation is by the files' modification time (tests/tls.rs)"
)]
fn sighup_rotates_the_certificate_and_a_broken_pair_keeps_the_old_one() {
    use common::certs::TestCa;
    use std::time::Duration;
    let (dir, _ca) = tls_files();
    let (cert, key) = (dir.path("cert.pem"), dir.path("key.pem"));
    // Sweeps far apart: only SIGHUP can trigger the reload here.
    let srv = common::spawn_server(
        env!("CARGO_BIN_EXE_pollcap"),
        &["serve", "--listen", "127.0.0.1:0", "--app", "echo"],
        &[
            ("POLLCAP_TLS_CERT", &arg(&cert)),
            ("POLLCAP_TLS_KEY", &arg(&key)),
            ("WEBSOCKET_CLEANUP_INTERVAL", "600"),
        ],
    );
    let pid = srv.child.as_ref().unwrap().id().to_string();
    let url = format!("wss://localhost:{}/ws", srv.addr.port());
    let connects = |ca: &str| {
        let mut c = pollcap::client::Client::new(pollcap::client::ClientConfig {
            max_attempts: 1,
            ca_file: Some(dir.path(ca)),
            ..Default::default()
        });
        c.connect(&url).is_ok()
    };
    assert!(connects("ca.pem"));
    let next = TestCa::new("pollcap next CA");
    next.write(&dir.path("next.pem"));
    next.write_leaf(&["localhost"], &cert, &key);
    assert!(connects("ca.pem"), "no reload before the signal");
    let hup = || {
        let ok = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(ok.success());
    };
    hup();
    // Noticed within one capped wait (1 s), since the handler only sets a flag.
    // SIGHUP reloads the pair.
    common::eventually(Duration::from_secs(5), || {
        connects("next.pem").then_some(())
    });
    // A broken pair: refused, the server keeps serving the current one.
    std::fs::write(&key, "garbage").unwrap();
    hup();
    let metrics = || {
        let roots = pollcap::tls::roots(Some(&dir.path("next.pem"))).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(pollcap::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = rustls::ClientConnection::new(
            std::sync::Arc::new(cfg),
            "localhost".try_into().unwrap(),
        )
        .unwrap();
        let tcp = std::net::TcpStream::connect(srv.addr).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        use std::io::{Read, Write};
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    // The broken pair is noticed.
    common::eventually(Duration::from_secs(5), || {
        metrics()
            .contains("pollcap_tls_reload_failures_total 1")
            .then_some(())
    });
    assert!(metrics().contains("pollcap_tls_reloads_total 1"));
    assert!(connects("next.pem"), "the previous pair stays in use");
}

/// `load idle --ramp` opens its connections over time while answering the
/// pings of those already open: a client that dropped the earlier
/// connections' readiness while opening new ones (the reactor is
/// edge-triggered) would never answer their pings and see them closed at
/// the pong deadline.
#[test]
fn load_idle_ramps_its_connections_and_keeps_them_alive() {
    let srv = common::spawn_server(
        env!("CARGO_BIN_EXE_pollcap"),
        &["serve", "--listen", "127.0.0.1:0", "--app", "echo"],
        &[
            ("WEBSOCKET_PING_TIMEOUT", "0.4"),
            ("WEBSOCKET_HEARTBEAT_INTERVAL", "0.5"),
            ("WEBSOCKET_HEARTBEAT_TIMEOUT", "5"),
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_pollcap"))
        .args(["load", "--url", &format!("ws://{}/ws", srv.addr), "--json"])
        .args(["idle", "--count", "40", "--hold", "1.2", "--ramp", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["connections"], 40);
    assert_eq!(r["closed_during_hold"], 0, "{r}");
    // 40 connections pinged every 0.5 s (±10 %) for 1.2 s.
    let pings = r["pings_per_sec"].as_f64().unwrap() * r["hold_seconds"].as_f64().unwrap();
    assert!(pings >= 40.0, "only {pings} pings answered: {r}");
}

/// A short soak against a running server (--url, --server-pid): the report
/// names every check, and the server's descriptors, deadlines and answers
/// hold. (The RSS check needs a real warm-up, and a server started by the
/// soak, which trims its heap: `scripts/test` runs the 30 s soak.)
#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc/PID")]
fn a_short_soak_reports_its_checks() {
    let bad = pollcap(&["load", "soak", "--duration", "0"], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--duration"));
    let bin = env!("CARGO_BIN_EXE_pollcap");
    let srv = common::spawn_server(bin, &["serve", "--listen", "127.0.0.1:0"], &[]);
    let pid = srv.child.as_ref().unwrap().id().to_string();
    let url = format!("ws://{}/ws", srv.addr);
    let args = "load soak --duration 3 --warmup 1 --agents 2 --echoes 1 --slow 1 --churn 1 \
                --idle 20 --json --url";
    let mut args: Vec<&str> = args.split_whitespace().collect();
    args.extend([url.as_str(), "--server-pid", pid.as_str()]);
    let out = pollcap(&args, &[("PATH", "/usr/bin:/bin")]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let checks: Vec<(String, bool)> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap().to_string(), c["ok"] == true))
        .collect();
    let names: Vec<&str> = checks.iter().map(|(n, _)| n.as_str()).collect();
    let want = "rss fds missed_deadlines panics errors server_alive";
    assert_eq!(names, want.split(' ').collect::<Vec<_>>());
    for (name, ok) in &checks {
        if name != "rss" {
            assert!(ok, "{name}: {report}");
        }
    }
    assert!(
        report["load"]["agent_runs"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(report["load"]["churn_actions"].as_u64().unwrap() > 0);
    assert!(report["peak"]["fds"].as_u64() > report["start"]["fds"].as_u64());
}

/// A log collector that stops reading (stderr a full pipe) never blocks
/// the server: refusals keep being answered, and the lines the bounded log
/// queue could not hold are dropped and counted. With a blocking writer
/// the reactor would stop at the first line past the pipe's 64 KiB.
#[test]
#[cfg(unix)]
fn a_stalled_log_pipe_never_blocks_the_server() {
    use std::time::Duration;
    let args = ["serve", "--listen", "127.0.0.1:0", "--app", "echo"];
    let (srv, _unread) = common::spawn_server_undrained(env!("CARGO_BIN_EXE_pollcap"), &args, &[]);
    // From here on nobody reads stderr. Each request without Host is a 400
    // and one "refused request" line (about 100 bytes): 12 000 of them
    // fill the pipe and then the 8 192-line queue. A blocked server would
    // answer nothing within the 10 s read timeout.
    std::thread::scope(|sc| {
        for _ in 0..4 {
            sc.spawn(|| {
                for _ in 0..3000 {
                    let req = b"GET /health HTTP/1.1\r\n\r\n";
                    let out = common::raw_exchange(srv.addr, req, Duration::from_secs(10));
                    assert_eq!(common::status_of(&out), 400, "{out}");
                }
            });
        }
    });
    let dropped = common::metric(srv.addr, "pollcap_log_lines_dropped_total");
    assert!(
        dropped > 0.0,
        "12 000 lines fit a 64 KiB pipe and the queue?"
    );
}

/// `--log-format json`: every line is one JSON object with Cloud
/// Logging's `severity` and a `message` (the start-up line included), and
/// an event's fields are kept; `auto` picks JSON in a cloud container.
#[test]
fn json_logs_are_one_object_per_line_with_severity_and_message() {
    let bin = env!("CARGO_BIN_EXE_pollcap");
    for (args, env) in [
        (vec!["--log-format", "json"], vec![]),
        (vec![], vec![("K_SERVICE", "pollcap")]), // auto, on Cloud Run
    ] {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--app", "echo"];
        all.extend(args);
        let (mut srv, lines) = common::spawn_server_undrained(bin, &all, &env);
        let startup: serde_json::Value = serde_json::from_str(&srv.startup).expect("JSON start-up");
        assert_eq!(startup["severity"], "INFO");
        assert!(
            startup["message"]
                .as_str()
                .unwrap()
                .contains("listening on")
        );
        assert!(startup["timestamp"].as_str().unwrap().contains('T'));
        // A refusal is a line of its own (read as it comes: the log is
        // written from a thread of its own).
        let r = common::raw_exchange(
            srv.addr,
            b"GET /health HTTP/1.1\r\n\r\n",
            std::time::Duration::from_secs(5),
        );
        assert_eq!(common::status_of(&r), 400);
        let mut rest = Vec::new();
        for line in lines.map_while(Result::ok) {
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let sev = v["severity"].as_str().unwrap();
            assert!(
                ["DEBUG", "INFO", "WARNING", "ERROR"].contains(&sev),
                "{line}"
            );
            assert!(v["message"].is_string(), "{line}");
            assert!(
                v["target"].as_str().unwrap().starts_with("pollcap"),
                "{line}"
            );
            let done = v["message"].as_str().unwrap().contains("refus");
            rest.push(v);
            if done {
                break;
            }
        }
        assert!(!rest.is_empty(), "the refusal was logged");
        if let Some(mut c) = srv.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    // Text stays text.
    let srv = common::spawn_server(
        bin,
        &["serve", "--listen", "127.0.0.1:0", "--log-format", "text"],
        &[],
    );
    assert!(serde_json::from_str::<serde_json::Value>(&srv.startup).is_err());
    assert!(srv.startup.contains("INFO"), "{}", srv.startup);
}

/// What ships is small: the release profile strips the binary (issue 21:
/// at most 8 MB; 51 MB with line tables). Checked only on a release
/// build of the Linux binary, which is what `scripts/test` builds and the
/// container ships (the Windows exe carries more of its runtime).
#[test]
#[cfg(target_os = "linux")]
fn the_release_binary_ships_stripped_under_8_mb() {
    if cfg!(debug_assertions) {
        return; // a debug build is not what ships
    }
    let size = std::fs::metadata(env!("CARGO_BIN_EXE_pollcap"))
        .unwrap()
        .len();
    assert!(size <= 8 << 20, "target/release/pollcap is {size} bytes");
}

/// `load relay` reads every event of every run through a relay, times it
/// against the `t_us` the upstream put in it, and checks each run got its
/// events once and in order: against `serve --agent-url` with a fake
/// agent that streams well, then with one that skips an event.
#[test]
#[cfg_attr(not(target_os = "linux"), ignore = "reads /proc/PID")]
fn load_relay_times_every_event_and_checks_each_run() {
    use common::agent::{Behavior, END, FakeAgent, chunk, head, sse};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let stream = |skip: u64| {
        move |_: &common::agent::Seen| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let t_us = now.as_micros() as u64;
            let mut pieces = vec![head(200, "text/event-stream", true)];
            for i in (1..=8).filter(|i| *i != skip) {
                let ev = if i == 8 {
                    serde_json::json!({"type": "agent_completed", "final": "ok", "i": i, "t_us": t_us})
                } else {
                    serde_json::json!({"type": "agent_thinking", "delta": "x", "i": i, "t_us": t_us})
                };
                pieces.push(chunk(&sse(&ev)));
            }
            pieces.push(END.to_vec());
            // Spread over 0.7 s, so that the runs are in flight together
            // when the client samples the relay's memory (every 0.1 s).
            Behavior::Paced(pieces, Duration::from_millis(100))
        }
    };
    let bin = env!("CARGO_BIN_EXE_pollcap");
    for (skip, complete) in [(0, true), (3, false)] {
        let agent = FakeAgent::start(stream(skip));
        let url = agent.url();
        let args = ["serve", "--listen", "127.0.0.1:0", "--agent-url", &url];
        let srv = common::spawn_server(bin, &args, &[]);
        let pid = srv.child.as_ref().unwrap().id().to_string();
        let ws = format!("ws://{}/ws", srv.addr);
        let out = Command::new(bin)
            .args([
                "load",
                "--url",
                &ws,
                "--server-pid",
                &pid,
                "--json",
                "relay",
            ])
            .args(["--runs", "6", "--events", "8", "--period-ms", "100"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["runs_failed"], 0, "{r}");
        // pollcap's own agent_started, once per run.
        assert_eq!(r["other_events"], 6, "{r}");
        if complete {
            assert_eq!(r["runs_completed"], 6, "{r}");
            assert_eq!(r["events"], 48, "{r}");
            assert_eq!(r["order_errors"], 0, "{r}");
            assert_eq!(r["in_flight_at_sample"], 6, "{r}");
            assert!(r["server_kib_per_run"].is_number(), "{r}");
            assert!(r["server_cpu_us_per_event"].is_number(), "{r}");
        } else {
            assert_eq!(r["runs_completed"], 0, "{r}");
            assert_eq!(r["runs_incomplete"], 6, "{r}");
            assert_eq!(r["events"], 42, "{r}");
            assert_eq!(r["order_errors"], 6, "one gap per run: {r}");
        }
    }
}
