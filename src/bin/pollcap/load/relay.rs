//! `load relay`: N agent_chat connections each run one relayed run, all in
//! flight together, through a relay (pollcap `serve --agent-url`, or a
//! peer that speaks agent_chat) from an upstream whose events carry their
//! emit time (`t_us`, µs since the Unix epoch, same machine and clock) and
//! their index (`i`, 1..=E). Reports the latency each event's relay added
//! (receive time − `t_us`), the relay's RSS per in-flight run and its CPU
//! per relayed event, and checks that every run got its E events once and
//! in order. One thread, event-driven on pollcap's own reactor, so the
//! client is cheap; its own CPU is reported so that it can be seen not to
//! be the bottleneck.

use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tungstenite::Message;

use pollcap::apps::agent_chat::ClientMessage;
use pollcap::reactor::Interest;

use super::super::sys;
use super::{ClientConn, Target, client_reactor, inbound, open_client, percentiles, would_block};

/// The run-sending timer's token (clients use 0..N).
const SEND_TIMER: usize = usize::MAX;
/// How often the relay's RSS is sampled while the runs are in flight.
const RSS_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// Connections, one run each.
    pub runs: usize,
    /// Upstream events per run (the last one `agent_completed`).
    pub events: u64,
    /// The upstream's pause between events (reported only).
    pub period: Duration,
    /// The runs' user_messages are sent evenly over this (0: all at once).
    pub ramp: Duration,
    /// Give up on runs not complete this long after the first send.
    pub timeout: Duration,
    /// The upstream's process, for its CPU per event (context only).
    pub upstream_pid: Option<u32>,
    /// Writes every upstream event here as CSV (run, i, t_us, received
    /// µs since the Unix epoch), to study the latency's distribution.
    pub trace: Option<std::path::PathBuf>,
}

/// One event as the client reads it: only what it checks.
#[derive(Deserialize)]
struct Seen {
    #[serde(rename = "type")]
    kind: String,
    t_us: Option<u64>,
    i: Option<u64>,
    seq: Option<u64>,
    code: Option<String>,
    message: Option<String>,
}

#[derive(Clone, Copy, Default)]
struct Run {
    /// Upstream events received (those with `t_us`).
    got: u64,
    last_i: u64,
    last_seq: u64,
    done: bool,
    closed: bool,
    interest_both: bool,
}

impl Run {
    fn in_flight(&self) -> bool {
        self.got > 0 && !self.done && !self.closed
    }
}

#[derive(Debug, Default, Serialize)]
pub struct RelayReport {
    mode: &'static str,
    runs: usize,
    events_per_run: u64,
    period_ms: f64,
    ramp_s: f64,
    /// Seconds to open and upgrade the N connections (before the runs).
    open_s: f64,
    /// Runs that got all their events and `agent_completed`, in order.
    runs_completed: u64,
    /// Runs that ended with an `error` event.
    runs_failed: u64,
    /// Runs neither completed nor failed (timed out, connection lost).
    runs_incomplete: u64,
    /// The error events' codes and messages (cut at 100 characters),
    /// with their counts: the five most frequent.
    errors: Vec<(String, u64)>,
    /// Upstream events relayed (those carrying `t_us`).
    events: u64,
    /// Other events (the relay's own `agent_started`, errors).
    other_events: u64,
    /// Events out of order, repeated or missing (`i` not the next one),
    /// or with a `seq` that did not grow.
    order_errors: u64,
    /// First send → last run ended.
    seconds: f64,
    events_per_sec: f64,
    latency_p50_us: u64,
    latency_p90_us: u64,
    latency_p99_us: u64,
    latency_p999_us: u64,
    latency_max_us: u64,
    server_rss_before_kib: Option<f64>,
    server_rss_idle_kib: Option<f64>,
    /// Highest RSS sampled while the most runs were in flight.
    server_rss_in_flight_kib: Option<f64>,
    /// Runs in flight (an event received, not ended) at that sample.
    in_flight_at_sample: usize,
    /// (idle − before) / N: the WebSocket connections alone.
    server_kib_per_idle_connection: Option<f64>,
    /// (in flight − before) / runs in flight: connection and run.
    server_kib_per_run: Option<f64>,
    /// (in flight − idle) / runs in flight: the run alone (its upstream
    /// leg, its state, buffers), over an idle connection.
    server_kib_per_run_over_idle: Option<f64>,
    /// utime + stime of the relay process (/proc/PID/stat) over the runs,
    /// per upstream event relayed.
    server_cpu_us_per_event: Option<f64>,
    server_cpu_percent: Option<f64>,
    /// The same figure from the live threads' schedstat (ns), for
    /// comparison (loses threads that exited).
    server_cpu_us_per_event_schedstat: Option<f64>,
    upstream_cpu_us_per_event: Option<f64>,
    upstream_cpu_percent: Option<f64>,
    /// This client's own CPU over the runs (% of one core).
    client_cpu_percent: Option<f64>,
}

fn kib(b: u64) -> f64 {
    b as f64 / 1024.0
}

fn rss(pid: Option<u32>) -> Option<u64> {
    sys::process_usage(pid?).map(|(_, r)| r)
}

fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// CPU samples of the three processes at one moment.
#[derive(Clone, Copy)]
struct Cpu {
    server: Option<Duration>,
    server_sched: Option<Duration>,
    upstream: Option<Duration>,
    client: Option<Duration>,
    at: Instant,
}

fn cpu(pid: Option<u32>, upstream: Option<u32>) -> Cpu {
    Cpu {
        server: pid.and_then(sys::process_cpu_stat),
        server_sched: pid.and_then(sys::process_usage).map(|(c, _)| c),
        upstream: upstream.and_then(sys::process_cpu_stat),
        client: sys::process_cpu_stat(std::process::id()),
        at: Instant::now(),
    }
}

/// Runs the load and reports it (see the module doc).
pub fn relay(url: &str, opts: &RelayOptions, pid: Option<u32>) -> io::Result<RelayReport> {
    let n = opts.runs;
    let rss_before = rss(pid);
    let target = Target::parse(url)?;
    let mut reactor = client_reactor()?;
    let opened = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for t in 0..n {
        conns.push(open_client(
            &mut reactor,
            &target,
            t,
            None,
            &["agent_chat"],
        )?);
    }
    let open_s = opened.elapsed().as_secs_f64();
    let mut runs = vec![Run::default(); n];
    let mut st = Stats {
        trace: opts
            .trace
            .as_ref()
            .map(|_| Vec::with_capacity(n * opts.events as usize)),
        ..Stats::default()
    };
    // Opening dropped the others' readiness (edge-triggered): read them
    // all, then let the relay settle before its idle sample.
    for k in 0..n {
        read_all(k, &mut conns[k], &mut runs[k], &mut st, opts.events);
    }
    let settle = Instant::now() + Duration::from_millis(500);
    while reactor.turn()?.now < settle {
        for e in 0..reactor.events().len() {
            let k = reactor.events()[e].token;
            read_all(k, &mut conns[k], &mut runs[k], &mut st, opts.events);
        }
    }
    let rss_idle = rss(pid);
    // A connection the relay closed meanwhile has ended already.
    let mut ended = runs.iter().filter(|r| r.closed || r.done).count();

    let msg = |i: usize| {
        let m = ClientMessage::UserMessage {
            text: format!("relay load run {i}"),
            thread_id: format!("t{i}"),
            pacing_ms: None,
        };
        Message::text(serde_json::to_string(&m).expect("plain message serializes"))
    };
    let timer = reactor.timers().insert(SEND_TIMER);
    let c0 = cpu(pid, opts.upstream_pid);
    let t0 = c0.at;
    let give_up = t0 + opts.ramp + opts.timeout;
    let mut next_send = 0usize;
    let mut next_rss = t0;
    let mut best: Option<(usize, u64)> = None; // (in flight, rss)
    let mut c1: Option<Cpu> = None;
    while ended < n {
        // Send every run due by now (the ramp spreads them evenly).
        let now = Instant::now();
        while next_send < n {
            let due = t0 + opts.ramp.mul_f64(next_send as f64 / n as f64);
            if due > now {
                reactor.timers().set(timer, Some(due));
                break;
            }
            let k = next_send;
            next_send += 1;
            if runs[k].closed {
                continue;
            }
            let ws = &mut conns[k];
            match ws.send(msg(k)) {
                Ok(()) => {}
                Err(e) if would_block(&e) => {
                    reactor.reregister(ws.get_mut().get_mut(), k, Interest::BOTH)?;
                    runs[k].interest_both = true;
                }
                Err(_) => {
                    runs[k].closed = true;
                    ended += 1;
                }
            }
        }
        if next_send == n {
            reactor.timers().set(timer, None);
        }
        let turn = reactor.turn()?;
        while reactor.pop_expired().is_some() {}
        for e in 0..reactor.events().len() {
            let ev = reactor.events()[e];
            let k = ev.token;
            let run = &mut runs[k];
            if run.done || run.closed {
                continue;
            }
            let ws = &mut conns[k];
            if ev.writable {
                let _ = ws.flush();
            }
            read_all(k, ws, run, &mut st, opts.events);
            if run.done || run.closed {
                ended += 1;
                continue;
            }
            let want_both = matches!(ws.flush(), Err(e) if would_block(&e));
            if want_both != run.interest_both {
                let want = if want_both {
                    Interest::BOTH
                } else {
                    Interest::READABLE
                };
                reactor.reregister(ws.get_mut().get_mut(), k, want)?;
                run.interest_both = want_both;
            }
        }
        if ended == n {
            c1 = Some(cpu(pid, opts.upstream_pid));
        }
        if pid.is_some() && turn.now >= next_rss {
            next_rss = turn.now + RSS_EVERY;
            let flying = runs.iter().filter(|r| r.in_flight()).count();
            if flying > 0
                && best.is_none_or(|(f, _)| flying >= f)
                && let Some(r) = rss(pid)
            {
                best = Some(match best {
                    Some((f, b)) if f == flying => (f, b.max(r)),
                    _ => (flying, r),
                });
            }
        }
        if turn.now >= give_up {
            break;
        }
    }
    let c1 = c1.unwrap_or_else(|| cpu(pid, opts.upstream_pid));
    for ws in conns.iter_mut() {
        let _ = ws.close(None);
        let _ = ws.flush();
    }

    if let (Some(path), Some(rows)) = (&opts.trace, &st.trace) {
        use std::io::Write as _;
        let mut w = io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(w, "run,i,t_us,received_us")?;
        for (k, i, sent, got) in rows {
            writeln!(w, "{k},{i},{sent},{got}")?;
        }
        w.flush()?;
    }
    let secs = c1.at.duration_since(t0).as_secs_f64();
    // Per event only when some came: a relay that relayed nothing has no
    // cost per event.
    let per_event = |a: Option<Duration>, b: Option<Duration>| {
        let d = b?.checked_sub(a?)?;
        (st.events > 0).then(|| d.as_secs_f64() * 1e6 / st.events as f64)
    };
    let percent = |a: Option<Duration>, b: Option<Duration>| {
        let d = b?.checked_sub(a?)?;
        Some(d.as_secs_f64() * 100.0 / secs.max(1e-9))
    };
    let lat = percentiles(&mut st.latency, &[0.5, 0.9, 0.99, 0.999, 1.0]);
    let (flying, rss_flying) = best.map_or((0, None), |(f, r)| (f, Some(r)));
    let per = |hi: Option<u64>, lo: Option<u64>, count: usize| {
        Some(kib(hi?.saturating_sub(lo?)) / count.max(1) as f64)
    };
    let completed = st.completed;
    let mut errors: Vec<(String, u64)> = st.errors.drain().collect();
    errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    errors.truncate(5);
    let failed = st.failed;
    Ok(RelayReport {
        mode: "relay",
        runs: n,
        events_per_run: opts.events,
        period_ms: opts.period.as_secs_f64() * 1e3,
        ramp_s: opts.ramp.as_secs_f64(),
        open_s,
        runs_completed: completed,
        runs_failed: failed,
        runs_incomplete: (n as u64).saturating_sub(completed + failed),
        errors,
        events: st.events,
        other_events: st.other,
        order_errors: st.order_errors,
        seconds: secs,
        events_per_sec: st.events as f64 / secs.max(1e-9),
        latency_p50_us: lat[0],
        latency_p90_us: lat[1],
        latency_p99_us: lat[2],
        latency_p999_us: lat[3],
        latency_max_us: lat[4],
        server_rss_before_kib: rss_before.map(kib),
        server_rss_idle_kib: rss_idle.map(kib),
        server_rss_in_flight_kib: rss_flying.map(kib),
        in_flight_at_sample: flying,
        server_kib_per_idle_connection: per(rss_idle, rss_before, n),
        server_kib_per_run: per(rss_flying, rss_before, flying),
        server_kib_per_run_over_idle: per(rss_flying, rss_idle, flying),
        server_cpu_us_per_event: per_event(c0.server, c1.server),
        server_cpu_percent: percent(c0.server, c1.server),
        server_cpu_us_per_event_schedstat: per_event(c0.server_sched, c1.server_sched),
        upstream_cpu_us_per_event: per_event(c0.upstream, c1.upstream),
        upstream_cpu_percent: percent(c0.upstream, c1.upstream),
        client_cpu_percent: percent(c0.client, c1.client),
    })
}

#[derive(Default)]
struct Stats {
    latency: Vec<u64>,
    events: u64,
    other: u64,
    order_errors: u64,
    completed: u64,
    failed: u64,
    errors: std::collections::HashMap<String, u64>,
    /// Every upstream event as (run, i, t_us, received µs), with --trace.
    trace: Option<Vec<(usize, u64, u64, u64)>>,
}

/// Reads client `ws` until it would block, checking and timing each event.
fn read_all(k: usize, ws: &mut ClientConn, run: &mut Run, st: &mut Stats, events: u64) {
    loop {
        // A compressed message (permessage-deflate) arrives as Binary.
        let read = ws.read().map(|m| match m {
            m @ (Message::Text(_) | Message::Binary(_)) => inbound(ws, m),
            other => Some(other),
        });
        match read {
            Ok(None) => {
                st.order_errors += 1;
                continue;
            }
            Ok(Some(Message::Text(t))) => {
                let now = wall_us();
                let Ok(seen) = serde_json::from_str::<Seen>(t.as_str()) else {
                    st.order_errors += 1;
                    continue;
                };
                if let Some(seq) = seen.seq {
                    if seq <= run.last_seq {
                        st.order_errors += 1;
                    }
                    run.last_seq = seq;
                }
                match seen.t_us {
                    Some(sent) => {
                        st.latency.push(now.saturating_sub(sent));
                        if let Some(t) = st.trace.as_mut() {
                            t.push((k, seen.i.unwrap_or(0), sent, now));
                        }
                        st.events += 1;
                        run.got += 1;
                        if seen.i != Some(run.last_i + 1) {
                            st.order_errors += 1;
                        }
                        run.last_i = seen.i.unwrap_or(run.last_i + 1);
                    }
                    None => st.other += 1,
                }
                match seen.kind.as_str() {
                    "agent_completed" => {
                        run.done = true;
                        if run.got == events && run.last_i == events {
                            st.completed += 1;
                        }
                        return;
                    }
                    "error" => {
                        run.done = true;
                        st.failed += 1;
                        let code = seen.code.as_deref().unwrap_or("?");
                        let message: String =
                            seen.message.unwrap_or_default().chars().take(100).collect();
                        *st.errors.entry(format!("{code}: {message}")).or_default() += 1;
                        return;
                    }
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(e) if would_block(&e) => return,
            Err(_) => {
                run.closed = true;
                return;
            }
        }
    }
}
