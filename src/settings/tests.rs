//! Settings resolution tests: profile table, precedence, every rule broken.

use super::*;
use std::collections::HashMap;
use std::time::Duration;

fn resolve(vars: &[(&str, &str)], flags: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let flags: Vec<(&str, String)> = flags.iter().map(|(k, v)| (*k, v.to_string())).collect();
    Settings::resolve(&|k| map.get(k).cloned(), &flags)
}

fn ok(vars: &[(&str, &str)]) -> Settings {
    resolve(vars, &[]).unwrap()
}

fn err(vars: &[(&str, &str)]) -> String {
    resolve(vars, &[]).unwrap_err().to_string()
}

/// The timeout declarations, in SPEC table order.
fn timeout_decls() -> Vec<&'static Decl> {
    DECLS
        .iter()
        .filter(|d| d.group == Group::Timeouts)
        .collect()
}

fn secs_of(st: &Settings, d: &Decl) -> f64 {
    (d.show)(st).and_then(|v| v.as_f64()).unwrap()
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn profile_table_rows_match_spec() {
    // (profile, connect, handshake, ping, hb_interval, hb_timeout, stale, connection, close,
    //  cleanup, execution, then the upstream agent's: connect, response, idle)
    let table: [(&str, [u64; 13]); 4] = [
        ("local", [2, 3, 2, 5, 15, 60, 360, 1, 30, 15, 2, 10, 15]),
        ("testing", [5, 5, 5, 10, 30, 120, 360, 5, 60, 15, 5, 10, 15]),
        (
            "staging",
            [10, 15, 5, 15, 45, 360, 360, 10, 120, 30, 5, 15, 30],
        ),
        (
            "production",
            [10, 15, 5, 15, 45, 360, 3300, 10, 120, 300, 5, 30, 60],
        ),
    ];
    for (name, row) in table {
        let st = ok(&[("ENVIRONMENT", name)]);
        assert_eq!(st.profile.name(), name);
        let decls = timeout_decls();
        assert_eq!(decls.len(), 13);
        for (d, want) in decls.iter().zip(row) {
            assert_eq!(secs_of(&st, d), want as f64, "{name}.{}", d.name);
        }
    }
}

#[test]
fn default_is_local_with_one_second_cap_and_mio() {
    let st = ok(&[]);
    assert_eq!(st.profile, Profile::Local);
    assert_eq!(st.poll_cap, CapStrategy::Fixed(s(1)));
    assert_eq!(st.backend, BackendKind::Mio);
    assert_eq!(st.listen.to_string(), DEFAULT_LISTEN);
}

#[test]
fn development_alias_and_local_development_override() {
    assert_eq!(
        ok(&[("ENVIRONMENT", "development")]).profile,
        Profile::Local
    );
    let st = ok(&[("ENVIRONMENT", "production"), ("LOCAL_DEVELOPMENT", "true")]);
    assert_eq!(st.profile, Profile::Local);
    let st = ok(&[("ENVIRONMENT", "staging"), ("LOCAL_DEVELOPMENT", "false")]);
    assert_eq!(st.profile, Profile::Staging);
    assert!(err(&[("LOCAL_DEVELOPMENT", "maybe")]).contains("LOCAL_DEVELOPMENT"));
}

#[test]
fn unknown_profile_is_an_error_not_a_default() {
    let e = err(&[("ENVIRONMENT", "prodution")]);
    assert!(e.contains("ENVIRONMENT") && e.contains("prodution"), "{e}");
}

#[test]
fn env_overrides_profile_and_accepts_decimals() {
    let st = ok(&[
        ("ENVIRONMENT", "testing"),
        ("WEBSOCKET_PING_TIMEOUT", "0.5"),
        ("WEBSOCKET_CLOSE_TIMEOUT", "2.25"),
        ("AGENT_EXECUTION_TIMEOUT", "42"),
    ]);
    assert_eq!(st.timeouts.ping, Duration::from_millis(500));
    assert_eq!(st.timeouts.close, Duration::from_millis(2250));
    assert_eq!(st.timeouts.execution, s(42));
    assert_eq!(
        st.timeouts.stale,
        s(120),
        "untouched values stay the profile's"
    );
    assert_eq!(
        st.poll_cap,
        CapStrategy::Fixed(Duration::from_millis(500)),
        "the default cap shrinks to min(ping, close)"
    );
}

#[test]
fn every_env_var_is_read() {
    let local = Settings::defaults(Profile::Local);
    for d in timeout_decls() {
        // Pick a value that keeps the hierarchy valid for the local profile.
        let v = secs_of(&local, d).to_string();
        let env = d.env.unwrap();
        let st = ok(&[(env, &v)]);
        assert_eq!(secs_of(&st, d).to_string(), v, "{env}");
    }
    // and a changed value actually lands, for each variable
    let st = ok(&[
        ("WEBSOCKET_CONNECT_TIMEOUT", "1.5"),
        ("WEBSOCKET_HANDSHAKE_TIMEOUT", "2.5"),
        ("WEBSOCKET_PING_TIMEOUT", "1.5"),
        ("WEBSOCKET_HEARTBEAT_INTERVAL", "4"),
        ("WEBSOCKET_HEARTBEAT_TIMEOUT", "14"),
        ("WEBSOCKET_STALE_TIMEOUT", "50"),
        ("WEBSOCKET_CONNECTION_TIMEOUT", "300"),
        ("WEBSOCKET_CLOSE_TIMEOUT", "3"),
        ("WEBSOCKET_CLEANUP_INTERVAL", "7"),
        ("AGENT_EXECUTION_TIMEOUT", "9"),
        ("AGENT_CONNECT_TIMEOUT", "1"),
        ("AGENT_RESPONSE_TIMEOUT", "8"),
        ("AGENT_IDLE_TIMEOUT", "8.5"),
    ]);
    let got: Vec<f64> = timeout_decls().iter().map(|d| secs_of(&st, d)).collect();
    assert_eq!(
        got,
        [
            1.5, 2.5, 1.5, 4.0, 14.0, 50.0, 300.0, 3.0, 7.0, 9.0, 1.0, 8.0, 8.5
        ]
    );
    // An upstream wait past the run's own deadline could never end it
    // (checked when there is an agent to wait for).
    ok(&[("AGENT_EXECUTION_TIMEOUT", "0.2")]);
    let agent = ("POLLCAP_AGENT_URL", "http://127.0.0.1:9/");
    let e = err(&[("AGENT_IDLE_TIMEOUT", "16"), agent]);
    assert!(
        e.contains("agent_idle (16s) must be <= execution (15s)"),
        "{e}"
    );
}

#[test]
fn flags_override_env() {
    let flags = [
        ("ping", "0.75"),
        ("profile", "staging"),
        ("backend", "polling"),
        ("poll_cap", "250"),
        ("listen", "127.0.0.1:9000"),
    ];
    let st = resolve(
        &[
            ("ENVIRONMENT", "production"),
            ("WEBSOCKET_PING_TIMEOUT", "3"),
            ("POLLCAP_BACKEND", "mio"),
            ("POLLCAP_POLL_CAP_MS", "500"),
            ("PORT", "8080"),
        ],
        &flags,
    )
    .unwrap();
    assert_eq!(st.profile, Profile::Staging);
    assert_eq!(st.timeouts.ping, Duration::from_millis(750));
    assert_eq!(st.backend, BackendKind::Polling);
    assert_eq!(st.poll_cap, CapStrategy::Fixed(Duration::from_millis(250)));
    assert_eq!(st.listen.to_string(), "127.0.0.1:9000");
}

#[test]
fn bad_flag_value_names_the_flag() {
    let e = resolve(&[], &[("connect", "soon")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--connect-timeout") && e.contains("soon"), "{e}");
}

#[test]
fn poll_cap_env_forms() {
    assert_eq!(
        ok(&[("POLLCAP_POLL_CAP_MS", "0")]).poll_cap,
        CapStrategy::Spin
    );
    assert_eq!(
        ok(&[("POLLCAP_POLL_CAP_MS", "off")]).poll_cap,
        CapStrategy::Unbounded
    );
    assert_eq!(
        ok(&[("POLLCAP_POLL_CAP_MS", "200")]).poll_cap,
        CapStrategy::Fixed(Duration::from_millis(200))
    );
    assert!(err(&[("POLLCAP_POLL_CAP_MS", "fast")]).contains("POLLCAP_POLL_CAP_MS"));
    assert!(err(&[("POLLCAP_BACKEND", "epoll")]).contains("POLLCAP_BACKEND"));
}

#[test]
fn port_sets_wildcard_listen() {
    assert_eq!(ok(&[("PORT", "8080")]).listen.to_string(), "0.0.0.0:8080");
    assert!(err(&[("PORT", "http")]).contains("PORT"));
    assert_eq!(
        ok(&[("PORT", "8080"), ("POLLCAP_LISTEN", "127.0.0.1:1")])
            .listen
            .to_string(),
        "127.0.0.1:1"
    );
}

/// (environment, the two names the error must contain)
type RuleCase<'a> = (&'a [(&'a str, &'a str)], [&'a str; 2]);

#[test]
fn each_hierarchy_rule_broken_names_the_settings() {
    let cases: [RuleCase; 6] = [
        (
            &[("WEBSOCKET_CONNECT_TIMEOUT", "4")],
            ["connect", "handshake"],
        ),
        (
            &[("WEBSOCKET_PING_TIMEOUT", "5")],
            ["ping", "heartbeat_interval"],
        ),
        (
            &[("WEBSOCKET_HEARTBEAT_INTERVAL", "15")],
            ["heartbeat_interval", "heartbeat_timeout"],
        ),
        (
            &[("WEBSOCKET_HEARTBEAT_TIMEOUT", "61")],
            ["heartbeat_timeout", "stale"],
        ),
        (
            &[("WEBSOCKET_STALE_TIMEOUT", "361")],
            ["stale", "connection"],
        ),
        (
            &[("POLLCAP_POLL_CAP_MS", "1500")],
            ["poll cap", "min(ping, close)"],
        ),
    ];
    for (vars, names) in cases {
        let e = err(vars);
        for n in names {
            assert!(e.contains(n), "{vars:?}: {e:?} should name {n}");
        }
    }
    // Unbounded skips the cap rule.
    ok(&[
        ("POLLCAP_POLL_CAP_MS", "off"),
        ("WEBSOCKET_CLOSE_TIMEOUT", "0.1"),
    ]);
}

#[test]
fn timer_slack_is_validated() {
    assert_eq!(ok(&[]).timer_slack, Duration::from_millis(50));
    assert!(err(&[("POLLCAP_TIMER_SLACK_MS", "soon")]).contains("POLLCAP_TIMER_SLACK_MS"));
    assert!(err(&[("POLLCAP_TIMER_SLACK_MS", "5000")]).contains("0 to 1000"));
    let e = err(&[
        ("POLLCAP_TIMER_SLACK_MS", "300"),
        ("WEBSOCKET_PING_TIMEOUT", "0.3"),
    ]);
    assert!(e.contains("timer_slack_ms") && e.contains("ping"), "{e}");
    assert_eq!(
        ok(&[("POLLCAP_TIMER_SLACK_MS", "0")]).timer_slack,
        Duration::ZERO
    );
}

#[test]
fn zero_and_negative_timeouts_are_rejected() {
    for v in ["0", "-3", "abc", ""] {
        let e = err(&[("WEBSOCKET_STALE_TIMEOUT", v)]);
        assert!(e.contains("WEBSOCKET_STALE_TIMEOUT"), "{e}");
    }
}

#[test]
fn json_lists_every_timeout() {
    let j = ok(&[]).to_json();
    for d in timeout_decls() {
        assert!(j["timeouts_s"][d.name].is_number(), "{}", d.name);
    }
    assert_eq!(j["poll_cap"], "fixed(1000ms)");
    assert_eq!(j["profile"], "local");
    assert_eq!(j["limits"]["max_message"], 1 << 20);
    assert_eq!(j["server"]["ws_path"], "/ws");
    assert_eq!(j["auth"]["jwt_secret"], false, "only whether it is set");
    assert_eq!(j["agent"]["agent_url"], Value::Null);
    let j = ok(&[
        ("POLLCAP_AGENT_URL", "http://agent:8000/run?key=k"),
        ("POLLCAP_AGENT_TOKEN", "s3cret"),
    ])
    .to_json();
    assert_eq!(
        j["agent"]["agent_url"], "http://agent:8000",
        "no path or query"
    );
    assert_eq!(j["agent"]["agent_token"], true, "only whether it is set");
    assert_eq!(j["agent"]["agent_breaker_threshold"], 5);
}

#[test]
fn every_declaration_is_complete_and_unique() {
    let mut names = std::collections::HashSet::new();
    let mut flags = std::collections::HashSet::new();
    let mut envs = std::collections::HashSet::new();
    for d in DECLS {
        assert!(names.insert(d.name), "duplicate name {}", d.name);
        if let Some(f) = d.flag {
            assert!(flags.insert(f), "duplicate flag {f}");
        }
        if let Some(e) = d.env {
            assert!(envs.insert(e), "duplicate env {e}");
        }
        assert!(
            d.flag.is_some() || d.env.is_some(),
            "{} cannot be set",
            d.name
        );
        assert!(!d.help.is_empty(), "{} has no help", d.name);
        // Every default parses under every profile (a bad one panics).
        for p in Profile::ALL {
            Settings::defaults(p);
        }
    }
}

#[test]
fn every_setting_is_read_from_its_env_var_and_its_flag() {
    // One valid, non-default value per setting.
    let values: &[(&str, &str)] = &[
        ("backend", "polling"),
        ("poll_cap", "250"),
        ("timer_slack_ms", "20"),
        ("listen", "127.0.0.1:9"),
        ("max_message", "1000"),
        ("max_frame", "999"),
        ("max_connections", "7"),
        ("max_outbound", "5000000"),
        ("read_buffer", "4096"),
        ("max_head_bytes", "2048"),
        ("max_headers", "9"),
        ("linger_bytes", "4096"),
        ("threads", "3"),
        ("ws_path", "/chat"),
        ("app", "echo"),
        ("pacing_ms", "9"),
        ("pool_threads", "2"),
        ("pool_queue", "5"),
        ("pool_queue_bytes", "2000000"),
        ("breaker_threshold", "4"),
        ("breaker_recovery", "2.5"),
        ("tokens_file", "/tmp/t"),
        ("store", "off"),
        ("resume_window", "60"),
        ("resume_run_events", "100"),
        ("resume_run_bytes", "4096"),
        ("resume_total_events", "2000000"),
        ("resume_total_bytes", "100000000"),
    ];
    let base = ok(&[]).to_json();
    for (name, v) in values {
        let d = find(name).unwrap();
        let through_flag = resolve(&[], &[(d.name, v)]).unwrap().to_json();
        let through_env = d
            .env
            .map(|e| resolve(&[(e, v)], &[]).unwrap().to_json())
            .unwrap_or_else(|| through_flag.clone());
        let key = |j: &serde_json::Value| match d.group.key() {
            Some(g) => j[g][d.name].clone(),
            None => j[d.name].clone(),
        };
        assert_ne!(key(&through_flag), key(&base), "{name} via flag");
        assert_eq!(key(&through_flag), key(&through_env), "{name} via env");
    }
}

#[test]
fn a_secret_is_never_echoed() {
    let e = err(&[("POLLCAP_JWT_SECRET", "short-secret")]);
    assert!(
        e.contains("POLLCAP_JWT_SECRET") && e.contains("<hidden>"),
        "{e}"
    );
    assert!(!e.contains("short-secret"), "{e}");
    let st = ok(&[("POLLCAP_JWT_SECRET", "a-secret-of-32-bytes-long-enough!")]);
    assert!(!format!("{st:?}").contains("a-secret"));
    assert!(!st.summary().contains("a-secret"));
}

#[test]
fn resume_settings_are_checked_and_a_store_password_never_shown() {
    let st = ok(&[]);
    assert_eq!(
        st.store,
        crate::settings::StoreKind::Memory,
        "memory by default"
    );
    assert_eq!(st.resume.window, s(300));
    let e = err(&[("POLLCAP_STORE", "postgres://db")]);
    assert!(
        e.contains("POLLCAP_STORE") && e.contains("redis://HOST:PORT"),
        "{e}"
    );
    let e = err(&[("POLLCAP_RESUME_WINDOW", "0")]);
    assert!(
        e.contains("POLLCAP_RESUME_WINDOW") && e.contains("> 0"),
        "{e}"
    );
    let e = err(&[("POLLCAP_RESUME_RUN_BYTES", "100000000")]);
    assert!(e.contains("resume_run_bytes (100000000)"), "{e}");
    #[cfg(feature = "redis")]
    {
        let st = ok(&[("POLLCAP_STORE", "redis://app:hunter2@redis:6379/1")]);
        assert!(matches!(st.store, crate::settings::StoreKind::Redis(_)));
        assert!(!st.summary().contains("hunter2"));
        assert!(!st.to_json().to_string().contains("hunter2"));
        assert!(st.summary().contains("store=redis://app:***@redis:6379/1"));
    }
    #[cfg(not(feature = "redis"))]
    {
        let e = err(&[("POLLCAP_STORE", "redis://app:hunter2@redis:6379/1")]);
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("redis://app:***@redis:6379/1"), "{e}");
    }
}

/// A setting that needs a feature this build left out parses, then is
/// refused with one line naming the setting and the feature; with the
/// feature built in, the same values pass.
#[test]
fn settings_whose_feature_is_not_built_in_are_refused_by_name() {
    let tls = cfg!(feature = "tls");
    let idp = cfg!(feature = "idp");
    let aud = ("POLLCAP_JWT_AUDIENCE", "app");
    // (variables, the one named, the feature it needs, whether built in)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str, bool);
    let cases: [Case; 7] = [
        (
            &[("POLLCAP_TLS_CERT", "c.pem"), ("POLLCAP_TLS_KEY", "k.pem")],
            "POLLCAP_TLS_CERT",
            "tls",
            tls,
        ),
        (
            &[("POLLCAP_AGENT_URL", "https://agent.example/run")],
            "POLLCAP_AGENT_URL",
            "tls",
            tls,
        ),
        (
            &[("POLLCAP_AGENT_CA_FILE", "ca.pem")],
            "POLLCAP_AGENT_CA_FILE",
            "tls",
            tls,
        ),
        (
            &[("POLLCAP_STORE", "redis://127.0.0.1:6379")],
            "POLLCAP_STORE",
            "redis",
            cfg!(feature = "redis"),
        ),
        (
            &[("POLLCAP_JWKS_FILE", "keys.json"), aud],
            "POLLCAP_JWKS_FILE",
            "idp",
            idp,
        ),
        (
            &[("POLLCAP_JWKS_URL", "http://idp.internal/keys"), aud],
            "POLLCAP_JWKS_URL",
            "idp",
            idp,
        ),
        (
            &[("POLLCAP_JWKS_URL", "https://idp.example/keys"), aud],
            "POLLCAP_JWKS_URL",
            if idp { "tls" } else { "idp" },
            idp && tls,
        ),
    ];
    for (vars, env, feature, built) in cases {
        match resolve(vars, &[]) {
            Ok(_) => assert!(built, "{vars:?} passed without feature {feature}"),
            Err(e) => {
                let e = e.to_string();
                assert!(!built, "{vars:?}: {e}");
                assert!(
                    e.contains(env) && e.contains(&format!("feature `{feature}`")),
                    "{e}"
                );
                assert_eq!(e.lines().count(), 1, "{e}");
            }
        }
    }
}

/// Found by the `settings` fuzz target: a huge read buffer was accepted,
/// then allocated (17 TB here) when the first connection opened.
#[test]
fn a_read_buffer_no_machine_can_allocate_is_refused_at_start_up() {
    let e = err(&[("POLLCAP_READ_BUFFER", "17592186044417")]);
    assert!(
        e.contains("POLLCAP_READ_BUFFER") && e.contains("17592186044417") && e.contains("at most"),
        "{e}"
    );
    assert_eq!(
        ok(&[("POLLCAP_READ_BUFFER", "1048576")]).limits.read_buffer,
        1 << 20
    );
    assert!(err(&[("POLLCAP_READ_BUFFER", "1048577")]).contains("at most 1048576"));
}

/// Found by the `settings` fuzz target: `1e-10` passed the "> 0" rule,
/// then rounded to a zero duration (a breaker recovery of 0; a timeout
/// refused as "0", a value the user never wrote).
#[test]
fn a_duration_that_rounds_to_zero_is_refused_as_written() {
    for (var, v) in [
        ("POLLCAP_BREAKER_RECOVERY", "1e-10"),
        ("WEBSOCKET_CLOSE_TIMEOUT", "0.0000000001"),
    ] {
        let e = err(&[(var, v)]);
        assert!(
            e.contains(var) && e.contains(v) && e.contains("nanosecond"),
            "{e}"
        );
    }
    let st = ok(&[("POLLCAP_BREAKER_RECOVERY", "0.000000001")]);
    assert_eq!(st.breaker_recovery, Duration::from_nanos(1));
}

/// Found by the `settings` fuzz target: `max_message + 14` overflowed (a
/// panic in a debug build; in a release build the rule passed).
#[test]
fn a_max_message_near_the_end_of_usize_breaks_the_outbound_rule() {
    for v in ["18446744073709551615", "18446744073709551602"] {
        let e = err(&[("POLLCAP_MAX_MESSAGE", v)]);
        assert!(e.contains("--max-outbound") && e.contains(v), "{e}");
    }
}

#[test]
fn the_pool_byte_budget_must_hold_the_largest_message() {
    let e = err(&[("POLLCAP_POOL_QUEUE_BYTES", "1000")]);
    assert!(
        e.contains("--pool-queue-bytes") && e.contains("1000") && e.contains("--max-message"),
        "{e}"
    );
    let st = ok(&[
        ("POLLCAP_POOL_QUEUE_BYTES", "1000"),
        ("POLLCAP_MAX_MESSAGE", "1000"),
    ]);
    assert_eq!(st.pool_queue_bytes, 1000);
}

#[test]
fn an_agent_is_a_url_or_a_command_never_both() {
    let st = ok(&[("POLLCAP_AGENT_URL", "http://127.0.0.1:8000/agent")]);
    assert_eq!(st.agent.url.unwrap().port, 8000);
    let st = ok(&[("POLLCAP_AGENT_CMD", r#"python3 "my agent.py" --fast a\b"#)]);
    assert_eq!(
        st.agent.cmd.as_deref().unwrap(),
        ["python3", "my agent.py", "--fast", "ab"]
    );
    // What is shown resolves to the same words (the fuzz target's rule).
    let shown = (find("agent_cmd").unwrap().show)(&st).unwrap();
    let again = ok(&[("POLLCAP_AGENT_CMD", shown.as_str().unwrap())]);
    assert_eq!(again.agent.cmd, st.agent.cmd);
    let st = ok(&[("POLLCAP_AGENT_CMD", r#"agent 'a\b' "x y""#)]);
    let shown = (find("agent_cmd").unwrap().show)(&st).unwrap();
    assert_eq!(
        ok(&[("POLLCAP_AGENT_CMD", shown.as_str().unwrap())])
            .agent
            .cmd,
        st.agent.cmd
    );
    let e = err(&[("POLLCAP_AGENT_URL", "ftp://x/")]);
    assert!(
        e.contains("POLLCAP_AGENT_URL") && e.contains("http://"),
        "{e}"
    );
    let e = err(&[("POLLCAP_AGENT_CMD", "python3 'unbalanced")]);
    assert!(e.contains("balanced quotes"), "{e}");
    let e = err(&[
        ("POLLCAP_AGENT_URL", "http://a/"),
        ("POLLCAP_AGENT_CMD", "agent"),
    ]);
    assert!(e.contains("choose one"), "{e}");
    let e = err(&[("POLLCAP_AGENT_TOKEN", "a\nb")]);
    assert!(e.contains("single line"), "{e}");
}
