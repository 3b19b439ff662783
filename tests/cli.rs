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
        .args(["probe", "wss://example.invalid/ws"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("only ws:// is supported"), "{err}");
}
