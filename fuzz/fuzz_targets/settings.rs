//! Settings values (src/settings/): `Settings::resolve` from arbitrary
//! environment variables and flags, every declared one, with raw strings
//! and with numbers, decimals, exponents and names shaped to get past the
//! first check.
//!
//! Invariants:
//! - an error is one line that names a setting (its name, flag or
//!   variable) and never shows the JWT secret;
//! - resolved settings validate again, never show the secret, and resolve
//!   to the same settings when their shown values are given back as
//!   variables (what `pollcap config` prints can be set again);
//! - resolved settings can serve: a connection under their limits and
//!   timeouts takes an upgrade and a message (or refuses them with a
//!   valid answer) without a panic or an unbounded allocation.

#![no_main]

use std::collections::HashMap;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use pollcap::conn::{Conn, Cx, Event};
use pollcap::reactor::CapStrategy;
use pollcap::settings::{DECLS, Settings};
use pollcap_fuzz::{Bytes, Output, Pipe, client_frame, upgrade_request};
use serde_json::Value;

fuzz_target!(|data: &[u8]| run(data));

/// Variables read besides the declared ones: the profile switch and the
/// platform markers.
const OTHER_VARS: [&str; 5] = [
    "LOCAL_DEVELOPMENT",
    "K_SERVICE",
    "KUBERNETES_SERVICE_HOST",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AZURE_CLIENT_ID",
];

/// Marks the JWT secret; stripped from every other value, so that seeing
/// it anywhere means the secret was shown.
const MARK: &str = "~~SECRET~~";

const WORDS: &[&str] = &[
    "local",
    "development",
    "testing",
    "staging",
    "production",
    "prod",
    "mio",
    "polling",
    "off",
    "unbounded",
    "spin",
    "none",
    "true",
    "false",
    "yes",
    "0",
    "1",
    "agent_chat",
    "echo",
    "flaky-open",
    "127.0.0.1:0",
    "[::1]:8080",
    "0.0.0.0:65535",
    "/ws",
    "/",
    "/health",
    "/metrics",
    "-1",
    "NaN",
    "inf",
    "1e-10",
    "1e300",
    "",
    " ",
    "0.0",
    "1000",
    "1001",
    "65536",
    "18446744073709551615",
    "18446744073709551602",
    "9223372036854775807",
    "31536000",
    "31536000.000000001",
    "0.000000001",
    "4294967296",
];

fn value(b: &mut Bytes) -> String {
    match b.byte() % 6 {
        0 => {
            let n = usize::from(b.byte() % 40);
            String::from_utf8_lossy(b.take(n)).into_owned()
        }
        1 => b.u64().to_string(),
        2 => (b.u64() >> (b.byte() % 64)).to_string(),
        3 => format!("{}.{}", b.u16() % 4000, b.u64() % 1_000_000_000_000),
        4 => {
            let mantissa = b.u16();
            let exp = i32::from(b.byte() as i8);
            format!("{mantissa}e{exp}")
        }
        _ => WORDS[usize::from(b.byte()) % WORDS.len()].to_string(),
    }
}

/// Every way a setting can be named in an error.
fn names() -> Vec<String> {
    let mut v: Vec<String> = vec!["ENVIRONMENT".into(), "LOCAL_DEVELOPMENT".into()];
    for d in DECLS {
        v.push(d.name.to_string());
        v.push(d.name.replace('_', " "));
        v.extend(d.flag_text());
        v.extend(d.env.map(str::to_string));
    }
    v
}

/// `text` has `word` with no identifier character on either side.
fn names_word(text: &str, word: &str) -> bool {
    let part =
        |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    text.match_indices(word).any(|(i, w)| {
        !part(text[..i].chars().next_back()) && !part(text[i + w.len()..].chars().next())
    })
}

fn resolve(
    env: &HashMap<String, String>,
    flags: &[(&'static str, String)],
) -> Result<Settings, String> {
    Settings::resolve(&|k| env.get(k).cloned(), flags).map_err(|e| e.to_string())
}

fn run(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mut env: HashMap<String, String> = HashMap::new();
    let mut flags: Vec<(&'static str, String)> = Vec::new();
    let vars: Vec<&str> = DECLS
        .iter()
        .filter_map(|d| d.env)
        .chain(OTHER_VARS)
        .collect();
    let flagged: Vec<&'static str> = DECLS
        .iter()
        .filter(|d| d.flag.is_some())
        .map(|d| d.name)
        .collect();
    while !b.is_empty() && env.len() + flags.len() < 48 {
        let sel = b.byte();
        let mut v = value(&mut b).replace('~', "");
        if sel < 128 {
            let k = vars[usize::from(sel) % vars.len()];
            if k == "POLLCAP_JWT_SECRET" {
                v = format!("{MARK}{v}");
            }
            env.insert(k.to_string(), v);
        } else {
            flags.push((flagged[usize::from(sel) % flagged.len()], v));
        }
    }

    let s = match resolve(&env, &flags) {
        Err(e) => {
            assert!(!e.contains('\n') && !e.contains('\r'), "two lines: {e:?}");
            assert!(
                names().iter().any(|n| names_word(&e, n)),
                "names no setting: {e}"
            );
            assert!(!e.contains(MARK), "shows the secret: {e}");
            return;
        }
        Ok(s) => s,
    };
    if let Err(e) = s.validate() {
        panic!("resolved settings fail validation: {e}");
    }
    let json = s.to_json();
    let shown = format!("{json} {} {s:?}", s.summary());
    assert!(!shown.contains(MARK), "shows the secret: {shown}");

    // The shown values, set again.
    let mut again: HashMap<String, String> = HashMap::new();
    let mut again_flags: Vec<(&'static str, String)> = Vec::new();
    for k in ["ENVIRONMENT"].into_iter().chain(OTHER_VARS) {
        if let Some(v) = env.get(k) {
            again.insert(k.to_string(), v.clone());
        }
    }
    again_flags.extend(flags.iter().filter(|(n, _)| *n == "profile").cloned());
    let explicit_cap =
        env.contains_key("POLLCAP_POLL_CAP_MS") || flags.iter().any(|(n, _)| *n == "poll_cap");
    for d in DECLS {
        let v = match d.name {
            "profile" | "port" => continue,
            "jwt_secret" => match &s.jwt_secret {
                Some(k) => String::from_utf8(k.0.clone()).expect("given as a string"),
                None => continue,
            },
            // Shown as whether it is set, like the JWT secret: given back as is.
            "agent_token" => match &s.agent.token {
                Some(k) => String::from_utf8(k.0.clone()).expect("given as a string"),
                None => continue,
            },
            // Derived unless given: given back only when it was given.
            "poll_cap" if !explicit_cap => continue,
            "poll_cap" => match s.poll_cap {
                CapStrategy::Unbounded => "off".into(),
                CapStrategy::Spin => "0".into(),
                CapStrategy::Fixed(d) => d.as_millis().to_string(),
            },
            _ => match (d.show)(&s) {
                None | Some(Value::Null) => continue,
                Some(Value::String(v)) => v,
                Some(other) => other.to_string(),
            },
        };
        match d.env {
            Some(e) => {
                again.insert(e.to_string(), v);
            }
            None => again_flags.push((d.name, v)),
        }
    }
    match resolve(&again, &again_flags) {
        Ok(s2) => {
            assert_eq!(s2.to_json(), json, "shown values resolve differently");
            assert_eq!(s2.summary(), s.summary());
        }
        Err(e) => panic!("shown values do not resolve again: {e}\n{again:?} {again_flags:?}"),
    }

    serve_once(&s);
}

/// An upgrade and one echoed message on a connection under `s`.
fn serve_once(s: &Settings) {
    let now = Instant::now();
    let (t, l) = (&s.timeouts, &s.limits);
    let pipe = Pipe::new(usize::MAX);
    let mut conn = Conn::new(1, pipe.clone(), now, 1.0);
    let mut events = Vec::new();
    pipe.send(upgrade_request("/ws", "").as_bytes());
    pipe.send(&client_frame(0x81, b"hi", [1, 2, 3, 4]));
    pipe.send(&client_frame(0x88, &1000u16.to_be_bytes(), [5, 6, 7, 8]));
    let mut out = Output::new();
    out.accept = Some(tungstenite::handshake::derive_accept_key(
        pollcap_fuzz::KEY.as_bytes(),
    ));
    let mut turns = 0;
    loop {
        turns += 1;
        assert!(turns < 1000, "no progress: {:?}", conn.phase());
        let mut cx = Cx {
            now,
            timeouts: t,
            limits: l,
            events: &mut events,
        };
        conn.handle_io(true, true, &mut cx);
        let batch = std::mem::take(&mut events);
        let quiet = batch.is_empty() && !conn.has_more_input();
        for ev in batch {
            let mut cx = Cx {
                now,
                timeouts: t,
                limits: l,
                events: &mut events,
            };
            match ev {
                Event::Request(_) => conn.accept(None, &mut cx),
                Event::Message(m) => conn.send(m, &mut cx),
                _ => {}
            }
        }
        let mut cx = Cx {
            now,
            timeouts: t,
            limits: l,
            events: &mut events,
        };
        conn.flush(&mut cx);
        if let Err(e) = out.feed(&pipe.recv(usize::MAX)) {
            panic!("invalid output: {e}");
        }
        if conn.is_done() || (quiet && events.is_empty()) {
            break;
        }
    }
}
