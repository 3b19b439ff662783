//! The load tool behind `pollcap load`: echo throughput/latency, agent
//! runs, runs relayed from an upstream, handshake storms, idle-connection
//! memory and the soak, against any server on loopback. Every loop is
//! bounded in count and time.
//! Server-side CPU and RSS are read from `/proc/PID` when `--server-pid` is
//! given. URLs are parsed by the library client's parser, like the probe's.

mod client;
mod echo;
mod idle;
mod relay;
mod soak;
mod storm;

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

pub use client::*;
pub use echo::{Payload, agent, echo};
pub use idle::idle;
pub use storm::storm;

#[derive(clap::Args)]
pub struct LoadArgs {
    #[command(subcommand)]
    mode: LoadMode,
    /// Server URL [default: ws://127.0.0.1:8765/ws; soak: a server it
    /// starts itself].
    #[arg(long, global = true)]
    url: Option<String>,
    /// Server process id, to report its CPU and RSS (Linux /proc).
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// For wss:// URLs: PEM file of the CA to trust instead of the web roots.
    #[arg(long, global = true, env = "POLLCAP_CA_FILE", value_name = "PATH")]
    ca_file: Option<std::path::PathBuf>,
    /// Do not offer permessage-deflate (the event-driven clients of echo,
    /// agent and idle offer it by default, as browsers do).
    #[arg(long, global = true)]
    no_deflate: bool,
}

#[derive(clap::Subcommand, Clone)]
enum LoadMode {
    /// C connections send S-byte messages for D seconds: msgs/s, latency.
    Echo {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value = "10", value_parser = positive_secs)]
        duration: Duration,
        /// Send S-byte JSON text messages (an agent event's shape and
        /// words) instead of S bytes of 'x'.
        #[arg(long)]
        json: bool,
        /// Send these messages in turn instead (one per line, text; e.g. an
        /// agent_chat run's events), each connection from the first.
        #[arg(long, value_name = "FILE", conflicts_with = "json")]
        replay: Option<std::path::PathBuf>,
    },
    /// C agent_chat connections, one message in flight each, for D seconds:
    /// complete runs/s and event latency. Token from --token or POLLCAP_TOKEN.
    Agent {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value = "10", value_parser = positive_secs)]
        duration: Duration,
        #[arg(long, env = "POLLCAP_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The user_message text [default: "load test message N"];
        /// given more than once, each run takes the next one.
        #[arg(long)]
        text: Vec<String>,
    },
    /// N agent_chat connections, one relayed run each, all in flight
    /// together (`serve --agent-url`, or a peer relay), from an upstream
    /// whose events carry `t_us` (their emit time, µs since the Unix
    /// epoch) and `i` (1..=E), as benches/peers/bun/upstream.mjs sends
    /// them: latency the relay added (receive − t_us), the relay's RSS per
    /// in-flight run and CPU per relayed event (--server-pid).
    Relay {
        #[arg(long, default_value_t = 1000)]
        runs: usize,
        /// Upstream events per run (the last one agent_completed).
        #[arg(long, default_value_t = 50)]
        events: u64,
        /// The upstream's pause between events, in ms: the default ramp
        /// and time-out follow from it.
        #[arg(long, default_value_t = 100)]
        period_ms: u64,
        /// Seconds over which the runs' user_messages are sent, evenly
        /// [default: one period].
        #[arg(long, value_parser = secs)]
        ramp: Option<Duration>,
        /// Seconds after the ramp before unfinished runs count as
        /// incomplete [default: 3 × events × period + 30].
        #[arg(long, value_parser = positive_secs)]
        timeout: Option<Duration>,
        /// The upstream's process id, for its CPU per event (context).
        #[arg(long)]
        upstream_pid: Option<u32>,
        /// Write every upstream event to this CSV file (run, i, t_us,
        /// received µs): the latency's distribution over time and runs.
        #[arg(long, value_name = "PATH")]
        trace: Option<std::path::PathBuf>,
    },
    /// K handshakes from P parallel clients: handshakes/s, p99. With a
    /// token (--token or POLLCAP_TOKEN), each upgrade carries it.
    Storm {
        #[arg(long, default_value_t = 5000)]
        count: usize,
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        #[arg(long, env = "POLLCAP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// K idle connections held for H seconds: server RSS per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value = "10", value_parser = positive_secs)]
        hold: Duration,
        /// Open the connections evenly over this many seconds before the
        /// hold, as connections arriving over time do (0: all at once).
        #[arg(long, default_value = "0", value_parser = secs)]
        ramp: Duration,
        /// Before the hold, every connection sends one JSON message of this
        /// many bytes and reads its echo (echo servers): memory per idle
        /// connection after traffic.
        #[arg(long, value_name = "BYTES")]
        message: Option<usize>,
    },
    /// Mixed load for D seconds — agent runs, echo of large messages, idle
    /// holders, connection churn, slow and stalled readers — against a
    /// server it starts (or --url, with --server-pid for memory), then a
    /// verdict: RSS back within 5 % + 2 MiB of its start, descriptors
    /// back to their start, no missed deadline, no panic, no error. Exit
    /// status 1 if a check fails. Markdown, or JSON with --json.
    Soak {
        #[arg(long, default_value_t = 600.0)]
        duration: f64,
        /// Seconds of the same mix before the start sample [default: 10 %
        /// of the duration, 15 to 60].
        #[arg(long)]
        warmup: Option<f64>,
        /// agent_chat clients with one paced run in flight each.
        #[arg(long, default_value_t = 8)]
        agents: usize,
        /// Clients echoing messages of 16 B to 256 KiB.
        #[arg(long, default_value_t = 2)]
        echoes: usize,
        /// Slow readers (every other round a stalled one).
        #[arg(long, default_value_t = 2)]
        slow: usize,
        /// Threads opening and closing connections, about 100 a second each.
        #[arg(long, default_value_t = 2)]
        churn: usize,
        /// Idle connections held (and reopened when the server closes them).
        #[arg(long, default_value_t = 500)]
        idle: usize,
        #[arg(long, env = "POLLCAP_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// Where the load goes when no --url is given.
const DEFAULT_URL: &str = "ws://127.0.0.1:8765/ws";

/// A `--duration`/`--hold` value: seconds in (0, 86400]. A bad value is a
/// usage error (exit 2, naming the flag), never a panic in
/// `Duration::from_secs_f64`.
fn positive_secs(v: &str) -> Result<Duration, String> {
    secs(v).and_then(|d| {
        if d.is_zero() {
            Err("must be more than 0 seconds".into())
        } else {
            Ok(d)
        }
    })
}

/// A `--ramp` value: seconds in [0, 86400].
fn secs(v: &str) -> Result<Duration, String> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err("must be a number of seconds from 0 to 86400".into()),
    }
}

/// Runs one load mode and prints its figures.
pub fn command(args: LoadArgs) -> ExitCode {
    let pid = args.server_pid;
    let url = args.url.as_deref().unwrap_or(DEFAULT_URL);
    client::DEFLATE.store(!args.no_deflate, std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = tls_setup(args.ca_file.as_deref()) {
        eprintln!("pollcap load: {e}");
        return ExitCode::from(2);
    }
    let result = match args.mode {
        LoadMode::Soak {
            duration,
            warmup,
            agents,
            echoes,
            slow,
            churn,
            idle,
            token,
        } => {
            let seconds = |what: &str, v: f64| {
                if v.is_finite() && v > 0.0 && v <= 86_400.0 {
                    Ok(Duration::from_secs_f64(v))
                } else {
                    Err(format!(
                        "{what} must be a number of seconds in (0, 86400], got {v}"
                    ))
                }
            };
            let warmup = warmup.unwrap_or((duration / 10.0).clamp(15.0, 60.0));
            let (duration, warmup) =
                match (seconds("--duration", duration), seconds("--warmup", warmup)) {
                    (Ok(d), Ok(w)) => (d, w),
                    (Err(e), _) | (_, Err(e)) => {
                        eprintln!("pollcap load soak: {e}");
                        return ExitCode::from(2);
                    }
                };
            let opts = soak::SoakOptions {
                duration,
                warmup,
                mix: soak::MixConfig {
                    url: String::new(),
                    token,
                    agents,
                    echoes,
                    slow,
                    churn,
                    idle,
                },
            };
            return match soak::soak(args.url.as_deref(), pid, opts) {
                Ok(r) => {
                    if args.json {
                        println!("{}", json(&r));
                    } else {
                        print!("{}", r.markdown());
                    }
                    if r.failed == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("pollcap load soak: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        LoadMode::Echo {
            connections,
            size,
            duration,
            json: json_payload,
            replay,
        } => {
            let payload = match (replay, json_payload) {
                (Some(path), _) => match std::fs::read_to_string(&path) {
                    Ok(t) => echo::Payload::Replay(t.lines().map(str::to_string).collect()),
                    Err(e) => {
                        eprintln!("pollcap load echo: --replay {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                },
                (None, true) => echo::Payload::Json(size),
                (None, false) => echo::Payload::Bytes(size),
            };
            echo(url, connections, &payload, duration, pid)
                .map(|r| json(&r.report(connections, size)))
        }
        LoadMode::Agent {
            connections,
            duration,
            token,
            text,
        } => agent(url, token.as_deref(), connections, duration, &text, pid)
            .map(|r| json(&r.report(connections))),
        LoadMode::Relay {
            runs,
            events,
            period_ms,
            ramp,
            timeout,
            upstream_pid,
            trace,
        } => {
            let period = Duration::from_millis(period_ms);
            let opts = relay::RelayOptions {
                runs,
                events,
                period,
                ramp: ramp.unwrap_or(period),
                timeout: timeout.unwrap_or(
                    period.saturating_mul(
                        u32::try_from(events.saturating_mul(3)).unwrap_or(u32::MAX),
                    ) + Duration::from_secs(30),
                ),
                upstream_pid,
                trace,
            };
            relay::relay(url, &opts, pid).map(|r| json(&r))
        }
        LoadMode::Storm {
            count,
            parallel,
            token,
        } => storm(url, count, parallel, token.as_deref(), pid).map(|r| json(&r.report(parallel))),
        LoadMode::Idle {
            count,
            hold,
            ramp,
            message,
        } => idle(url, count, hold, ramp, message, pid).map(|r| json(&r.report())),
    };
    match result {
        Ok(j) => {
            if args.json {
                println!("{j}");
            } else if let Some(map) = j.as_object() {
                for (k, v) in map {
                    println!("{k:<32} {v}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pollcap load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn json(report: &impl Serialize) -> serde_json::Value {
    serde_json::to_value(report).unwrap_or_default()
}

/// Server CPU µs per unit of work.
fn us_per(cpu: Option<Duration>, n: u64) -> Option<f64> {
    cpu.map(|d| d.as_secs_f64() * 1e6 / n.max(1) as f64)
}
