//! `pollcap probe` (SPEC §6): one `agent_chat` exchange against a live
//! endpoint, timed phase by phase (DNS, TCP, TLS for `wss://`, handshake,
//! first event, all events, close), every event checked, and one verdict.
//! The tool a person runs against a staging endpoint; exit status 0 only
//! if all of it arrived within its deadline. With `--drop-after N` it
//! leaves after N events without a Close frame, reconnects with its retry
//! policy, resumes the run (SPEC §5) and checks that every event arrived
//! exactly once with no gap: the `resume` phase, which shows whether
//! resume works through the real load balancer in front.

use std::time::{Duration, Instant};

use std::process::ExitCode;

use serde::Serialize;
use tungstenite::Message;

use pollcap::apps::agent_chat::{ClientMessage, EventView};
use pollcap::client::{Client, ClientConfig, ClientError};
use pollcap::settings::seconds;

use super::fail;

/// The phases, in order, as named in the report; `tls` only for `wss://`,
/// `resume` only with `--drop-after`.
pub const PHASES: [&str; 8] = [
    "dns",
    "tcp",
    "tls",
    "handshake",
    "first_event",
    "resume",
    "all_events",
    "close",
];

/// One phase of the report; `ok: None` means it was not reached.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseResult {
    pub name: &'static str,
    pub duration: Option<Duration>,
    pub ok: Option<bool>,
    pub detail: String,
}

/// `--json` output.
#[derive(Serialize)]
pub struct ReportJson<'a> {
    url: &'a str,
    ok: bool,
    verdict: &'a str,
    attempts: u32,
    events: usize,
    /// Whether permessage-deflate was offered, and the server's answer.
    deflate_offered: bool,
    deflate: Option<&'a str>,
    phases: Vec<PhaseJson<'a>>,
}

#[derive(Serialize)]
struct PhaseJson<'a> {
    phase: &'static str,
    ms: Option<f64>,
    ok: Option<bool>,
    detail: &'a str,
}

#[derive(Clone, Debug)]
pub struct ProbeReport {
    pub url: String,
    pub attempts: u32,
    pub phases: Vec<PhaseResult>,
    pub events: usize,
    pub ok: bool,
    pub verdict: String,
    /// permessage-deflate was offered (`--no-deflate` turns it off).
    pub deflate_offered: bool,
    /// The server's permessage-deflate answer, if it negotiated it.
    pub deflate: Option<String>,
}

impl ProbeReport {
    fn new(url: &str, resume: bool) -> ProbeReport {
        ProbeReport {
            url: url.to_string(),
            attempts: 0,
            phases: PHASES
                .iter()
                .filter(|&&name| name != "tls" || url.starts_with("wss://"))
                .filter(|&&name| name != "resume" || resume)
                .map(|&name| PhaseResult {
                    name,
                    duration: None,
                    ok: None,
                    detail: String::new(),
                })
                .collect(),
            events: 0,
            ok: false,
            verdict: String::new(),
            deflate_offered: false,
            deflate: None,
        }
    }

    fn pass(&mut self, name: &str, d: Duration, detail: String) {
        if let Some(p) = self.phase(name) {
            p.duration = Some(d);
            p.ok = Some(true);
            p.detail = detail;
        }
    }

    /// Marks `name` failed and ends the probe with a FAIL verdict. A name
    /// outside [`PHASES`] (the client's breaker) marks no phase.
    fn fail(mut self, name: &str, d: Option<Duration>, why: String) -> ProbeReport {
        if let Some(at) = self.phases.iter().position(|p| p.name == name) {
            // Reaching this phase means the earlier ones passed, timed or not.
            for p in &mut self.phases[..at] {
                p.ok.get_or_insert(true);
            }
            let p = &mut self.phases[at];
            p.duration = d;
            p.ok = Some(false);
            p.detail = why.clone();
        }
        self.ok = false;
        self.verdict = format!("FAIL at {name}: {why}");
        self
    }

    fn phase(&mut self, name: &str) -> Option<&mut PhaseResult> {
        self.phases.iter_mut().find(|p| p.name == name)
    }

    pub fn to_json(&self) -> ReportJson<'_> {
        ReportJson {
            url: &self.url,
            ok: self.ok,
            verdict: &self.verdict,
            attempts: self.attempts,
            events: self.events,
            deflate_offered: self.deflate_offered,
            deflate: self.deflate.as_deref(),
            phases: self
                .phases
                .iter()
                .map(|p| PhaseJson {
                    phase: p.name,
                    ms: p.duration.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
                    ok: p.ok,
                    detail: &p.detail,
                })
                .collect(),
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = format!("probe {}\n", self.url);
        for p in &self.phases {
            let ms = p.duration.map_or("-".to_string(), |d| {
                format!("{:.1} ms", d.as_secs_f64() * 1e3)
            });
            let status = match p.ok {
                Some(true) => "ok",
                Some(false) => "FAIL",
                None => "not reached",
            };
            out.push_str(&format!("  {:<12} {:>10}  {status}", p.name, ms));
            if !p.detail.is_empty() {
                out.push_str(&format!("  {}", p.detail));
            }
            out.push('\n');
        }
        out.push_str(&format!("verdict: {}\n", self.verdict));
        out
    }
}

#[derive(clap::Args)]
pub struct ProbeArgs {
    /// Endpoint, ws://HOST:PORT/PATH or wss://HOST[:PORT]/PATH.
    #[arg(default_value = "ws://127.0.0.1:8765/ws")]
    url: String,
    /// For wss://: PEM file of the CA to trust (a private CA) instead of
    /// the built-in web roots.
    #[arg(long, env = "POLLCAP_CA_FILE", value_name = "PATH")]
    ca_file: Option<std::path::PathBuf>,
    /// Seconds for the TLS handshake (wss://).
    #[arg(long, default_value = "5")]
    tls_timeout: String,
    /// Bearer token (sent as `Authorization: Bearer`).
    #[arg(long, env = "POLLCAP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Text of the user_message.
    #[arg(long, default_value = "pollcap probe: is this endpoint healthy?")]
    text: String,
    /// Connect attempts (retries back off with full jitter). One by default:
    /// the probe reports what a single attempt sees.
    #[arg(long, default_value_t = 1)]
    attempts: u32,
    /// Connect timeout per attempt, seconds (comma-separated: progressive).
    #[arg(long, default_value = "3,2,1.5,1,0.8")]
    connect_timeout: String,
    /// Seconds for the upgrade response.
    #[arg(long, default_value = "5")]
    handshake_timeout: String,
    /// Seconds to wait for each event.
    #[arg(long, default_value = "15")]
    receive_timeout: String,
    /// Seconds for the closing handshake.
    #[arg(long, default_value = "2")]
    close_timeout: String,
    /// Leave after N events without a Close frame (as a lost network
    /// would), reconnect with the retry policy, resume the run and check
    /// that every event arrives exactly once with no gap.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    drop_after: Option<u64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Do not offer permessage-deflate compression (offered by default;
    /// the verdict says whether the endpoint negotiated it).
    #[arg(long)]
    no_deflate: bool,
}

/// `pollcap probe`: exit 0 only when every phase passed, 1 when one
/// failed, 2 for a bad URL or option.
pub fn command(args: ProbeArgs) -> ExitCode {
    if let Err(e) = pollcap::client::parse_url(&args.url) {
        return fail(e.to_string());
    }
    let mut cfg = ClientConfig {
        max_attempts: args.attempts.max(1),
        ..ClientConfig::default()
    };
    let connect = args
        .connect_timeout
        .split(',')
        .map(|part| flag_seconds("--connect-timeout", part.trim()))
        .collect::<Result<Vec<_>, _>>();
    match connect {
        Ok(list) => cfg.connect_timeouts = list,
        Err(e) => return fail(e),
    }
    for (name, value, slot) in [
        (
            "--handshake-timeout",
            &args.handshake_timeout,
            &mut cfg.handshake_timeout,
        ),
        (
            "--receive-timeout",
            &args.receive_timeout,
            &mut cfg.receive_timeout,
        ),
        (
            "--close-timeout",
            &args.close_timeout,
            &mut cfg.close_timeout,
        ),
        ("--tls-timeout", &args.tls_timeout, &mut cfg.tls_timeout),
    ] {
        match flag_seconds(name, value) {
            Ok(d) => *slot = d,
            Err(e) => return fail(e),
        }
    }
    if let Some(t) = &args.token {
        cfg = cfg.bearer(t);
    }
    cfg.ca_file = args.ca_file.clone();
    cfg.deflate = !args.no_deflate;
    let report = probe(&args.url, cfg, &args.text, args.drop_after);
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report.to_json()).expect("json")
        );
    } else {
        print!("{}", report.to_text());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A seconds flag, or the one-line error naming it.
fn flag_seconds(flag: &str, value: &str) -> Result<Duration, String> {
    seconds(value).map_err(|rule| format!("invalid setting {flag}={value:?}: {rule}"))
}

/// Where an event type sits in the order of SPEC §5.
fn rank(kind: &str) -> Option<u8> {
    match kind {
        "agent_started" => Some(0),
        "agent_thinking" => Some(1),
        "tool_executing" => Some(2),
        "tool_completed" => Some(3),
        "agent_completed" => Some(4),
        _ => None,
    }
}

/// Checks one run's events as they arrive: order, `seq`, `run_id`, deltas
/// and the final text. Pure, so it is unit-tested on its own.
#[derive(Debug, Default)]
pub struct RunCheck {
    last_rank: Option<u8>,
    last_seq: Option<u64>,
    run_id: Option<String>,
    deltas: String,
    pub thinking: usize,
}

impl RunCheck {
    /// Accepts one event; `Ok(true)` once the run is complete.
    pub fn event(&mut self, v: &EventView) -> Result<bool, String> {
        let kind = v.kind.as_str();
        if kind == "error" {
            return Err(format!(
                "server sent an error event: {} ({})",
                v.code.as_deref().unwrap_or("?"),
                v.message.as_deref().unwrap_or("")
            ));
        }
        let r = rank(kind).ok_or_else(|| format!("unexpected event type {kind:?}"))?;
        let expected = match self.last_rank {
            None => r == 0,
            Some(1) => r == 1 || r == 2,
            Some(prev) => r == prev + 1,
        };
        if !expected {
            return Err(format!("{kind} out of order"));
        }
        let seq = v.seq.ok_or_else(|| format!("{kind} without seq"))?;
        let want = self.last_seq.unwrap_or(0) + 1;
        if seq != want {
            return Err(match self.last_seq {
                Some(last) => format!(
                    "seq {seq} after {last}: expected {want} (seq grows by exactly 1: a gap or a repeat)"
                ),
                None => format!("seq {seq} as the first event: expected 1"),
            });
        }
        let run = v
            .run_id
            .as_deref()
            .ok_or_else(|| format!("{kind} without run_id"))?;
        match &self.run_id {
            None => self.run_id = Some(run.to_string()),
            Some(id) if id != run => return Err(format!("run_id changed from {id} to {run}")),
            Some(_) => {}
        }
        if v.ts.is_none() {
            return Err(format!("{kind} without ts"));
        }
        if r == 1 {
            let delta = v.delta.as_deref().ok_or("agent_thinking without delta")?;
            self.deltas.push_str(delta);
            self.thinking += 1;
        }
        self.last_rank = Some(r);
        self.last_seq = Some(seq);
        if r == 4 {
            let fin = v
                .final_text
                .as_deref()
                .ok_or("agent_completed without final")?;
            if fin != self.deltas {
                return Err("final is not the concatenation of the deltas".into());
            }
            return Ok(true);
        }
        Ok(false)
    }

    pub fn run_id(&self) -> &str {
        self.run_id.as_deref().unwrap_or("")
    }

    /// The last `seq` accepted (0 before the first event).
    pub fn last_seq(&self) -> u64 {
        self.last_seq.unwrap_or(0)
    }
}

/// Runs the probe. `cfg` should carry the token (if any); the `agent_chat`
/// subprotocol is offered here. `drop_after`: leave after that many
/// events without a Close frame, then reconnect and resume.
pub fn probe(url: &str, mut cfg: ClientConfig, text: &str, drop_after: Option<u64>) -> ProbeReport {
    let mut report = ProbeReport::new(url, drop_after.is_some());
    report.deflate_offered = cfg.deflate;
    cfg.subprotocols = vec!["agent_chat".into()];
    let mut client = Client::new(cfg);
    let (mut conn, rep) = match client.connect(url) {
        Ok(ok) => ok,
        Err(e) => {
            if let ClientError::GaveUp { attempts, .. } = &e {
                report.attempts = *attempts;
            } else {
                report.attempts = 1;
            }
            return report.fail(e.phase(), None, e.to_string());
        }
    };
    report.attempts = rep.attempts;
    report.deflate = rep.deflate.clone();
    report.pass("dns", rep.dns, String::new());
    report.pass("tcp", rep.tcp, rep.addr.to_string());
    if let Some(tls) = rep.tls {
        report.pass("tls", tls, rep.tls_version.clone().unwrap_or_default());
    }
    if rep.subprotocol.as_deref() != Some("agent_chat") {
        let why = format!(
            "server did not select agent_chat (selected: {})",
            rep.subprotocol.as_deref().unwrap_or("none")
        );
        return report.fail("handshake", Some(rep.handshake), why);
    }
    report.pass("handshake", rep.handshake, handshake_detail(&report));

    let msg = ClientMessage::UserMessage {
        text: text.to_string(),
        thread_id: "probe".into(),
        pacing_ms: None,
    };
    let msg = serde_json::to_string(&msg).expect("plain message serializes");
    let sent = Instant::now();
    if let Err(e) = conn.send(Message::text(msg)) {
        return report.fail("first_event", None, e.to_string());
    }
    let mut check = RunCheck::default();
    // Set once dropped: when, and the events received before.
    let mut dropped: Option<(Instant, u64)> = None;
    let mut resumed = false;
    loop {
        let phase = match (report.events, dropped, resumed) {
            (0, _, _) => "first_event",
            (_, Some(_), false) => "resume",
            _ => "all_events",
        };
        let m = match conn.recv() {
            Ok(m) => m,
            Err(e) => return report.fail(phase, Some(sent.elapsed()), e.to_string()),
        };
        if report.events == 0 {
            report.pass("first_event", sent.elapsed(), String::new());
        }
        report.events += 1;
        let v: EventView = match m.to_text().ok().and_then(|t| serde_json::from_str(t).ok()) {
            Some(v) => v,
            None => {
                let why = "event is not a JSON text message".to_string();
                return report.fail(phase, Some(sent.elapsed()), why);
            }
        };
        let done = match check.event(&v) {
            Ok(done) => done,
            Err(why) => return report.fail(phase, Some(sent.elapsed()), why),
        };
        if let Some((at, before)) = dropped
            && !resumed
        {
            resumed = true;
            let detail = format!(
                "dropped after {before} events, reconnected, resumed from seq {}",
                before + 1
            );
            report.pass("resume", at.elapsed(), detail);
        }
        if done {
            if drop_after.is_some() && dropped.is_none() {
                let why = format!(
                    "the run ended after {} events, before --drop-after {}",
                    report.events,
                    drop_after.unwrap_or(0)
                );
                return report.fail("resume", None, why);
            }
            break;
        }
        if drop_after == Some(report.events as u64) && dropped.is_none() {
            // Gone without a Close frame: the server keeps the run.
            conn.abort();
            let at = Instant::now();
            dropped = Some((at, check.last_seq()));
            let (next, rep) = match client.connect(url) {
                Ok(ok) => ok,
                Err(e) => return report.fail("resume", Some(at.elapsed()), e.to_string()),
            };
            report.attempts += rep.attempts;
            conn = next;
            if let Err(e) = conn.resume(check.run_id(), check.last_seq()) {
                return report.fail("resume", Some(at.elapsed()), e.to_string());
            }
        }
    }
    let all = sent.elapsed();
    let detail = format!(
        "{} events, {} deltas, run {}",
        report.events,
        check.thinking,
        check.run_id()
    );
    report.pass("all_events", all, detail);
    match conn.close() {
        Ok(d) => report.pass("close", d, String::new()),
        Err(e) => return report.fail("close", None, e.to_string()),
    }
    report.ok = true;
    // first_event and resume lie inside all_events: leave them out of the sum.
    let total: Duration = ["dns", "tcp", "tls", "handshake", "all_events", "close"]
        .iter()
        .filter_map(|&n| report.phase(n).and_then(|p| p.duration))
        .sum();
    let resumed = match dropped {
        Some((_, before)) => {
            format!(", resumed after a drop at event {before}: exactly once, no gap")
        }
        None => String::new(),
    };
    report.verdict = format!(
        "OK: all five event types in order, {} events in {:.1} ms{resumed} (total {:.1} ms, {} attempt{}); {}",
        report.events,
        all.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        report.attempts,
        if report.attempts == 1 { "" } else { "s" },
        compression(&report)
    );
    report
}

/// The handshake line's detail: the subprotocol and what compression the
/// server answered.
fn handshake_detail(r: &ProbeReport) -> String {
    match &r.deflate {
        Some(a) => format!("agent_chat, {a}"),
        None => "agent_chat".into(),
    }
}

/// Whether compression was negotiated, for the verdict. Offered and not
/// answered is worth seeing: a server with it off, or a proxy in between
/// that strips the extension.
fn compression(r: &ProbeReport) -> &'static str {
    match (r.deflate_offered, r.deflate.is_some()) {
        (_, true) => "permessage-deflate negotiated",
        (true, false) => {
            "permessage-deflate offered but not negotiated (the server declined it, or a proxy \
             stripped it)"
        }
        (false, false) => "permessage-deflate not offered (--no-deflate)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn ev(kind: &str, seq: u64, extra: Value) -> Value {
        let mut v = json!({"type": kind, "run_id": "r1", "seq": seq, "ts": 1});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        v
    }

    fn good_run() -> Vec<Value> {
        vec![
            ev("agent_started", 1, json!({})),
            ev("agent_thinking", 2, json!({"delta": "he"})),
            ev("agent_thinking", 3, json!({"delta": "llo"})),
            ev("tool_executing", 4, json!({"tool": "t"})),
            ev("tool_completed", 5, json!({"tool": "t", "result": 1})),
            ev("agent_completed", 6, json!({"final": "hello"})),
        ]
    }

    fn run(events: &[Value]) -> Result<bool, String> {
        let mut c = RunCheck::default();
        let mut done = false;
        for e in events {
            let view: EventView = serde_json::from_value(e.clone()).map_err(|e| e.to_string())?;
            done = c.event(&view)?;
        }
        Ok(done)
    }

    #[test]
    fn a_complete_run_passes() {
        assert_eq!(run(&good_run()), Ok(true));
        assert_eq!(run(&good_run()[..5]), Ok(false));
    }

    #[test]
    fn every_defect_is_named() {
        let mut r = good_run();
        r.swap(3, 4);
        assert_eq!(run(&r).unwrap_err(), "tool_completed out of order");
        let mut r = good_run();
        r.remove(1);
        r.remove(1);
        assert_eq!(run(&r).unwrap_err(), "tool_executing out of order");
        let mut r = good_run();
        r[2]["seq"] = json!(2);
        assert!(run(&r).unwrap_err().contains("seq 2 after 2: expected 3"));
        let mut r = good_run();
        r[2]["seq"] = json!(4);
        assert!(run(&r).unwrap_err().contains("a gap or a repeat"));
        let mut r = good_run();
        r[0]["seq"] = json!(2);
        assert!(run(&r).unwrap_err().contains("expected 1"));
        let mut r = good_run();
        r[5]["final"] = json!("hell");
        assert!(run(&r).unwrap_err().contains("concatenation"));
        let mut r = good_run();
        r[4]["run_id"] = json!("r2");
        assert!(run(&r).unwrap_err().contains("run_id changed"));
        let err = ev(
            "error",
            3,
            json!({"code": "execution_timeout", "message": "slow"}),
        );
        let e = run(&[good_run()[0].clone(), err]).unwrap_err();
        assert!(e.contains("execution_timeout"), "{e}");
    }

    #[test]
    fn a_failed_phase_makes_the_verdict_and_leaves_later_phases_unreached() {
        let r = ProbeReport::new("ws://x/ws", false).fail("tcp", None, "refused".into());
        assert!(!r.ok);
        assert_eq!(r.verdict, "FAIL at tcp: refused");
        assert_eq!(r.phases[0].ok, Some(true), "dns passed to reach tcp");
        assert_eq!(r.phases[1].ok, Some(false));
        assert!(r.phases[2..].iter().all(|p| p.ok.is_none()));
        let j = serde_json::to_value(r.to_json()).unwrap();
        assert_eq!(j["phases"][1]["phase"], "tcp");
        assert_eq!(j["phases"][1]["ok"], false);
        assert!(r.to_text().contains("handshake"));
        // The client's breaker is no phase: nothing is marked.
        let r = ProbeReport::new("ws://x/ws", false).fail("breaker", None, "open".into());
        assert_eq!(r.verdict, "FAIL at breaker: open");
        assert!(r.phases.iter().all(|p| p.ok.is_none()));
    }
}
