//! Settings resolution tests: profile table, precedence, every rule broken.

use super::*;
use std::collections::HashMap;
use std::time::Duration;

fn resolve(vars: &[(&str, &str)], flags: &Overrides) -> Result<Settings, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::resolve(&|k| map.get(k).cloned(), flags)
}

fn ok(vars: &[(&str, &str)]) -> Settings {
    resolve(vars, &Overrides::default()).unwrap()
}

fn err(vars: &[(&str, &str)]) -> String {
    resolve(vars, &Overrides::default())
        .unwrap_err()
        .to_string()
}

fn s(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn profile_table_rows_match_spec() {
    // (profile, connect, handshake, ping, hb_interval, hb_timeout, stale, connection, close, cleanup, execution)
    let table: [(&str, [u64; 10]); 4] = [
        ("local", [2, 3, 2, 5, 15, 60, 360, 1, 30, 15]),
        ("testing", [5, 5, 5, 10, 30, 120, 360, 5, 60, 15]),
        ("staging", [10, 15, 5, 15, 45, 360, 360, 10, 120, 30]),
        ("production", [10, 15, 5, 15, 45, 360, 3300, 10, 120, 300]),
    ];
    for (name, row) in table {
        let st = ok(&[("ENVIRONMENT", name)]);
        assert_eq!(st.profile.name(), name);
        for (f, want) in FIELDS.iter().zip(row) {
            assert_eq!((f.get)(&st.timeouts), s(want), "{name}.{}", f.name);
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
    for f in FIELDS {
        // Pick a value that keeps the hierarchy valid for the local profile.
        let v = ((f.get)(&Profile::Local.timeouts()).as_secs_f64() * 1.0).to_string();
        let st = ok(&[(f.env, &v)]);
        assert_eq!(
            (f.get)(&st.timeouts).as_secs_f64().to_string(),
            v,
            "{}",
            f.env
        );
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
    ]);
    let got: Vec<f64> = FIELDS
        .iter()
        .map(|f| (f.get)(&st.timeouts).as_secs_f64())
        .collect();
    assert_eq!(got, [1.5, 2.5, 1.5, 4.0, 14.0, 50.0, 300.0, 3.0, 7.0, 9.0]);
}

#[test]
fn flags_override_env() {
    let mut flags = Overrides::default();
    flags.timeouts[2] = Some("0.75".into()); // ping
    flags.profile = Some("staging".into());
    flags.backend = Some("polling".into());
    flags.poll_cap = Some("250".into());
    flags.listen = Some("127.0.0.1:9000".into());
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
    let mut flags = Overrides::default();
    flags.timeouts[0] = Some("soon".into());
    let e = resolve(&[], &flags).unwrap_err().to_string();
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
fn zero_and_negative_timeouts_are_rejected() {
    for v in ["0", "-3", "abc", ""] {
        let e = err(&[("WEBSOCKET_STALE_TIMEOUT", v)]);
        assert!(e.contains("WEBSOCKET_STALE_TIMEOUT"), "{e}");
    }
}

#[test]
fn json_lists_every_timeout() {
    let j = ok(&[]).to_json();
    for f in FIELDS {
        assert!(j["timeouts_s"][f.name].is_number(), "{}", f.name);
    }
    assert_eq!(j["poll_cap"], "fixed(1000ms)");
    assert_eq!(j["profile"], "local");
}
