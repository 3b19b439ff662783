//! The one declaration of every setting: name, command-line flag,
//! environment variable, default (per profile where SPEC §3 has a table),
//! and the rule its value must satisfy. Resolution, the binary's flags,
//! `pollcap config`, the start-up line and `/health` are all derived from
//! [`DECLS`]; nothing else names a setting's flag or variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::frontdoor::{Origins, parse_cidrs};
use super::{AppKind, Profile, Settings, StoreKind};
use crate::reactor::{BackendKind, CapStrategy};

/// Where a setting is shown: the top level, or one named group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Shown at the top level.
    Top,
    /// Every phase deadline: the JSON key is `timeouts_s` (values in seconds).
    Timeouts,
    /// Size and count limits (`limits`).
    Limits,
    /// Threads, paths, the pool, the breaker (`server`).
    Server,
    /// Token checks and the front door (`auth`).
    Auth,
    /// The certificate pair (`tls`).
    Tls,
    /// The run store and resume (SPEC §5 "Resume").
    Resume,
    /// The upstream agent (SPEC §5 "Bring your own agent").
    Agent,
}

impl Group {
    /// The JSON key of the group (`None` for top-level settings).
    pub fn key(self) -> Option<&'static str> {
        match self {
            Group::Top => None,
            Group::Timeouts => Some("timeouts_s"),
            Group::Limits => Some("limits"),
            Group::Server => Some("server"),
            Group::Auth => Some("auth"),
            Group::Tls => Some("tls"),
            Group::Resume => Some("resume"),
            Group::Agent => Some("agent"),
        }
    }
}

/// A setting's built-in value, parsed by the same `set` as user input.
#[derive(Clone, Copy)]
pub enum Default {
    /// One value for every profile.
    Fixed(&'static str),
    /// One value per profile, in [`Profile::ALL`] order.
    Profile([&'static str; 4]),
    /// Computed when asked (e.g. the number of cores).
    Computed(fn() -> String),
    /// Absent (an optional setting) or derived from others after
    /// resolution (the poll cap).
    None,
}

/// Whether a flag takes a value or is a switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `--flag VALUE`.
    Value,
    /// `--flag` alone (true); its variable takes `true`/`false`.
    Switch,
}

/// One setting.
pub struct Decl {
    /// The key in `pollcap config --json`, `/health` and the start-up line.
    pub name: &'static str,
    /// Long flag without the dashes.
    pub flag: Option<&'static str>,
    /// Environment variable, if any.
    pub env: Option<&'static str>,
    /// Whether the flag takes a value.
    pub kind: Kind,
    /// The value's placeholder in `--help` (`SECS`, `N`, `PATH`; `SECRET`
    /// marks a secret).
    pub value_name: &'static str,
    /// One line for `--help`: what it is, its unit, what happens past it.
    pub help: &'static str,
    /// Where `pollcap config` and `/health` show it.
    pub group: Group,
    /// Its built-in value.
    pub default: Default,
    /// Parses and stores a value; `Err` is the rule it broke.
    pub set: fn(&mut Settings, &str) -> Result<(), String>,
    /// The resolved value; `None` hides the setting (secrets, aliases).
    pub show: fn(&Settings) -> Option<Value>,
}

impl Decl {
    /// The flag as typed: `--name`.
    pub fn flag_text(&self) -> Option<String> {
        self.flag.map(|f| format!("--{f}"))
    }

    /// The name with every way to set it: `tokens_file (--tokens-file,
    /// POLLCAP_TOKENS_FILE)`.
    pub fn sources(&self) -> String {
        let ways: Vec<String> = self
            .flag_text()
            .into_iter()
            .chain(self.env.map(str::to_string))
            .collect();
        format!("{} ({})", self.name, ways.join(", "))
    }

    /// A secret's value never appears in errors or output.
    pub fn is_secret(&self) -> bool {
        self.value_name == "SECRET"
    }

    /// The default for `profile`, if there is one now.
    pub fn default_for(&self, profile: Profile) -> Option<String> {
        match self.default {
            Default::Fixed(v) => Some(v.to_string()),
            Default::Profile(vs) => Some(vs[profile as usize].to_string()),
            Default::Computed(f) => Some(f()),
            Default::None => None,
        }
    }
}

const SECONDS_RULE: &str = "must be a number of seconds > 0 (decimals allowed, e.g. 0.5)";

/// Parses a positive number of seconds (decimals allowed), at most a year
/// (which keeps `Instant` arithmetic safe); `Err` is the rule.
pub fn seconds(value: &str) -> Result<Duration, String> {
    let secs: f64 = value.trim().parse().map_err(|_| SECONDS_RULE.to_string())?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(SECONDS_RULE.into());
    }
    if secs > 365.0 * 86_400.0 {
        return Err("must be at most one year (31536000 s)".into());
    }
    // Durations count whole nanoseconds: a value that rounds to none is
    // not > 0 (it was stored as 0, past the rule above).
    let d = Duration::from_secs_f64(secs);
    if d.is_zero() {
        return Err("must be at least one nanosecond (0.000000001)".into());
    }
    Ok(d)
}

fn positive(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("must be a whole number > 0".into()),
    }
}

/// `n` unless it is over `max`, for a count that costs memory up front.
fn at_most(n: usize, max: usize) -> Result<usize, String> {
    if n > max {
        return Err(format!(
            "must be at most {max}: it is allocated for every connection"
        ));
    }
    Ok(n)
}

/// A whole number where 0 turns a limit off.
fn limit(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse::<u64>()
        .map_err(|_| "must be a whole number >= 0 (0 = off)".to_string())
}

/// A limit that counts in memory-sized units (`usize`, at most 2^32).
fn limit_usize(value: &str) -> Result<usize, String> {
    let n = limit(value)?;
    usize::try_from(n)
        .ok()
        .filter(|n| *n <= u32::MAX as usize)
        .ok_or_else(|| "must be at most 4294967295".to_string())
}

/// A rate (per second, a token bucket's refill); 0 turns it off.
fn rate(value: &str) -> Result<u32, String> {
    u32::try_from(limit(value)?).map_err(|_| "must be at most 4294967295".to_string())
}

fn switch(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

fn secs_value(d: Duration) -> Option<Value> {
    Some(d.as_secs_f64().into())
}

fn cores() -> String {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string()
}

macro_rules! timeout {
    ($field:ident, $flag:literal, $env:literal, [$a:literal, $b:literal, $c:literal, $d:literal], $help:literal) => {
        Decl {
            name: stringify!($field),
            flag: Some($flag),
            env: Some($env),
            kind: Kind::Value,
            value_name: "SECS",
            help: $help,
            group: Group::Timeouts,
            default: Default::Profile([$a, $b, $c, $d]),
            set: |s, v| {
                s.timeouts.$field = seconds(v)?;
                Ok(())
            },
            show: |s| secs_value(s.timeouts.$field),
        }
    };
}

macro_rules! count {
    ($group:ident, $path:ident . $field:ident, $flag:literal, $env:literal, $default:literal, $help:literal) => {
        count!(
            stringify!($field),
            $group,
            $path.$field,
            $flag,
            $env,
            $default,
            $help,
            max = usize::MAX
        )
    };
    ($group:ident, $path:ident . $field:ident, $flag:literal, $env:literal, $default:literal, $help:literal, max = $max:expr) => {
        count!(
            stringify!($field),
            $group,
            $path.$field,
            $flag,
            $env,
            $default,
            $help,
            max = $max
        )
    };
    ($name:expr, $group:ident, $path:ident . $field:ident, $flag:literal, $env:literal, $default:literal, $help:literal) => {
        count!(
            $name,
            $group,
            $path.$field,
            $flag,
            $env,
            $default,
            $help,
            max = usize::MAX
        )
    };
    ($name:expr, $group:ident, $path:ident . $field:ident, $flag:literal, $env:literal, $default:literal, $help:literal, max = $max:expr) => {
        Decl {
            name: $name,
            flag: Some($flag),
            env: Some($env),
            kind: Kind::Value,
            value_name: "N",
            help: $help,
            group: Group::$group,
            default: Default::Fixed($default),
            set: |s, v| {
                s.$path.$field = at_most(positive(v)?, $max)?;
                Ok(())
            },
            show: |s| Some(s.$path.$field.into()),
        }
    };
}

/// A per-client limit (SPEC §4 "The front door"): off in `local` and
/// `testing` (one machine, every client on loopback), on in `staging` and
/// `production`.
macro_rules! client_limit {
    ($field:ident, $flag:literal, $env:literal, [$a:literal, $b:literal, $c:literal, $d:literal], $parse:ident, $help:literal) => {
        Decl {
            name: stringify!($field),
            flag: Some($flag),
            env: Some($env),
            kind: Kind::Value,
            value_name: "N",
            help: $help,
            group: Group::Limits,
            default: Default::Profile([$a, $b, $c, $d]),
            set: |s, v| {
                s.clients.$field = $parse(v)?;
                Ok(())
            },
            show: |s| Some(s.clients.$field.into()),
        }
    };
}

macro_rules! budget {
    ($field:ident, $name:literal, $flag:literal, $env:literal, $default:literal, $help:literal) => {
        Decl {
            name: $name,
            flag: Some($flag),
            env: Some($env),
            kind: Kind::Value,
            value_name: "N",
            help: $help,
            group: Group::Server,
            default: Default::Fixed($default),
            set: |s, v| {
                s.run_budget.$field = positive(v)? as u64;
                Ok(())
            },
            show: |s| Some(s.run_budget.$field.into()),
        }
    };
}

/// Every setting, in resolution order: a later entry may override an
/// earlier one (`POLLCAP_LISTEN` after `PORT`).
pub static DECLS: &[Decl] = &[
    Decl {
        name: "profile",
        flag: Some("profile"),
        env: Some("ENVIRONMENT"),
        kind: Kind::Value,
        value_name: "NAME",
        help: "Profile of defaults: local|development|testing|staging|production \
               (LOCAL_DEVELOPMENT=true forces local)",
        group: Group::Top,
        // Resolved first, by `Settings::resolve`: every default depends on it.
        default: Default::None,
        set: |s, v| {
            s.profile = Profile::parse(v)
                .ok_or("must be one of local, development, testing, staging, production")?;
            Ok(())
        },
        show: |s| Some(s.profile.name().into()),
    },
    Decl {
        name: "backend",
        flag: Some("backend"),
        env: Some("POLLCAP_BACKEND"),
        kind: Kind::Value,
        value_name: "mio|polling",
        help: "Poller backend",
        group: Group::Top,
        default: Default::Fixed("mio"),
        set: |s, v| {
            s.backend = BackendKind::parse(v).ok_or("must be mio or polling")?;
            Ok(())
        },
        show: |s| Some(s.backend.name().into()),
    },
    Decl {
        name: "poll_cap",
        flag: Some("poll-cap"),
        env: Some("POLLCAP_POLL_CAP_MS"),
        kind: Kind::Value,
        value_name: "MS|off",
        help: "Longest OS wait in ms; 0 = spin, off = unbounded (default 1000, \
               lowered to min(ping, close) when those are shorter)",
        group: Group::Top,
        default: Default::None,
        set: |s, v| {
            s.poll_cap = CapStrategy::parse(v)
                .ok_or("must be a whole number of milliseconds (0 = spin) or 'off' (unbounded)")?;
            Ok(())
        },
        show: |s| Some(s.poll_cap.to_string().into()),
    },
    Decl {
        name: "timer_slack_ms",
        flag: Some("timer-slack-ms"),
        env: Some("POLLCAP_TIMER_SLACK_MS"),
        kind: Kind::Value,
        value_name: "MS",
        help: "How late a soft deadline (heartbeat, liveness, stale, lifetime, audit) may be \
               handled, so that all due within one window are handled in one wakeup; hard \
               deadlines (connect, handshake, pong, close, execution) stay exact",
        group: Group::Top,
        default: Default::Fixed("50"),
        set: |s, v| {
            let ms: u64 = v
                .trim()
                .parse()
                .ok()
                .filter(|ms| *ms <= 1000)
                .ok_or("must be a whole number of milliseconds, 0 to 1000")?;
            s.timer_slack = Duration::from_millis(ms);
            Ok(())
        },
        show: |s| Some((s.timer_slack.as_millis() as u64).into()),
    },
    // Platforms (Cloud Run and others) name the port; POLLCAP_LISTEN and
    // --listen, declared after it, win.
    Decl {
        name: "port",
        flag: None,
        env: Some("PORT"),
        kind: Kind::Value,
        value_name: "PORT",
        help: "Listen on 0.0.0.0:PORT",
        group: Group::Top,
        default: Default::None,
        set: |s, v| {
            let p: u16 = v
                .trim()
                .parse()
                .map_err(|_| "must be a TCP port number 0-65535")?;
            s.listen = SocketAddr::from(([0, 0, 0, 0], p));
            Ok(())
        },
        show: |_| None,
    },
    Decl {
        name: "listen",
        flag: Some("listen"),
        env: Some("POLLCAP_LISTEN"),
        kind: Kind::Value,
        value_name: "IP:PORT",
        help: "Listen address (or 0.0.0.0:$PORT when PORT is set)",
        group: Group::Top,
        default: Default::Fixed(super::DEFAULT_LISTEN),
        set: |s, v| {
            s.listen = v
                .trim()
                .parse()
                .map_err(|_| "must be IP:PORT, e.g. 127.0.0.1:8765")?;
            Ok(())
        },
        show: |s| Some(s.listen.to_string().into()),
    },
    timeout!(
        connect,
        "connect-timeout",
        "WEBSOCKET_CONNECT_TIMEOUT",
        ["2", "5", "10", "10"],
        "Seconds from TCP accept to the first request byte"
    ),
    timeout!(
        handshake,
        "handshake-timeout",
        "WEBSOCKET_HANDSHAKE_TIMEOUT",
        ["3", "5", "15", "15"],
        "Seconds from TCP accept to the 101 response written"
    ),
    timeout!(
        ping,
        "ping-timeout",
        "WEBSOCKET_PING_TIMEOUT",
        ["2", "5", "5", "5"],
        "Seconds to wait for any frame after a Ping"
    ),
    timeout!(
        heartbeat_interval,
        "heartbeat-interval",
        "WEBSOCKET_HEARTBEAT_INTERVAL",
        ["5", "10", "15", "15"],
        "Seconds of inbound silence before a Ping is sent"
    ),
    timeout!(
        heartbeat_timeout,
        "heartbeat-timeout",
        "WEBSOCKET_HEARTBEAT_TIMEOUT",
        ["15", "30", "45", "45"],
        "Seconds of inbound silence before close 1001"
    ),
    timeout!(
        stale,
        "stale-timeout",
        "WEBSOCKET_STALE_TIMEOUT",
        ["60", "120", "360", "360"],
        "Seconds without an application message before close 1001 \"idle\""
    ),
    timeout!(
        connection,
        "connection-timeout",
        "WEBSOCKET_CONNECTION_TIMEOUT",
        ["360", "360", "360", "3300"],
        "Maximum connection lifetime in seconds"
    ),
    timeout!(
        close,
        "close-timeout",
        "WEBSOCKET_CLOSE_TIMEOUT",
        ["1", "5", "10", "10"],
        "Seconds to finish the closing handshake"
    ),
    timeout!(
        cleanup_interval,
        "cleanup-interval",
        "WEBSOCKET_CLEANUP_INTERVAL",
        ["30", "60", "120", "120"],
        "Seconds between audit sweeps"
    ),
    timeout!(
        execution,
        "execution-timeout",
        "AGENT_EXECUTION_TIMEOUT",
        ["15", "15", "30", "300"],
        "Seconds a run may take, whatever its source (a handler, an upstream agent)"
    ),
    timeout!(
        agent_connect,
        "agent-connect-timeout",
        "AGENT_CONNECT_TIMEOUT",
        ["2", "5", "5", "5"],
        "Upstream agent: seconds for DNS, TCP and TLS"
    ),
    timeout!(
        agent_response,
        "agent-response-timeout",
        "AGENT_RESPONSE_TIMEOUT",
        ["10", "10", "15", "30"],
        "Upstream agent: seconds from the request to the response head (a subprocess: \
         from spawn to its first line)"
    ),
    timeout!(
        agent_idle,
        "agent-idle-timeout",
        "AGENT_IDLE_TIMEOUT",
        ["15", "15", "30", "60"],
        "Upstream agent: the longest gap in seconds between two reads of its stream \
         (keep-alive comments count)"
    ),
    count!(
        Limits,
        limits.max_message,
        "max-message",
        "POLLCAP_MAX_MESSAGE",
        "1048576",
        "Largest inbound message in bytes (over it: close 1009)"
    ),
    count!(
        Limits,
        limits.max_frame,
        "max-frame",
        "POLLCAP_MAX_FRAME",
        "1048576",
        "Largest inbound frame payload in bytes (over it: close 1009)"
    ),
    count!(
        Limits,
        limits.max_connections,
        "max-connections",
        "POLLCAP_MAX_CONNECTIONS",
        "10000",
        "Most open WebSocket connections (over it: HTTP 503 + Retry-After)"
    ),
    count!(
        Limits,
        limits.max_outbound,
        "max-outbound",
        "POLLCAP_MAX_OUTBOUND",
        "4194304",
        "Bytes queued for a slow reader before close 1008 \"backpressure\""
    ),
    // Small on purpose: tungstenite allocates it up front, so it is an
    // idle connection's main cost. It does not bound a socket read (the
    // socket is read 64 KiB at a time into a per-thread buffer, see
    // `conn::Io`), and large messages still arrive whole (tungstenite
    // reserves a frame's length once its header is read). 128 bytes hold
    // a typical chat message with its header in one piece. Bounded
    // (1 MiB, sixteen socket reads) so that no value allocates more than
    // the machine has when a connection opens.
    count!(
        Limits,
        limits.read_buffer,
        "read-buffer",
        "POLLCAP_READ_BUFFER",
        "128",
        "Per-connection read buffer in bytes, at most 1048576 (the main idle cost)",
        max = 1 << 20
    ),
    count!(
        Limits,
        limits.max_head_bytes,
        "max-head-bytes",
        "POLLCAP_MAX_HEAD_BYTES",
        "8192",
        "Largest HTTP request head in bytes (over it: 431)"
    ),
    count!(
        Limits,
        limits.max_headers,
        "max-headers",
        "POLLCAP_MAX_HEADERS",
        "32",
        "Most HTTP request header lines (over it: 431)"
    ),
    // A lingering close reads what the peer still sends after a response
    // that ends the connection, so that closing does not reset it and
    // destroy the response unread (nginx's `lingering_close`). The `close`
    // deadline bounds its time; this bounds the work a peer can make it do.
    // It must exceed what a fast peer can have in flight before it reads
    // the answer — the kernel's socket buffers, autotuned up to tcp_wmem
    // (4 MiB) on its side and tcp_rmem (32 MiB on the project machine) on
    // ours — or the close resets after all: a 1 MiB cap lost the 1009 of a
    // client streaming fragments on a busy machine. Discarding 64 MiB
    // costs about 20 ms of CPU.
    count!(
        Limits,
        limits.linger_bytes,
        "linger-bytes",
        "POLLCAP_LINGER_BYTES",
        "67108864",
        "Bytes read and discarded after a refusal before closing anyway"
    ),
    // permessage-deflate (RFC 7692): negotiated when a client offers it,
    // with no context takeover either way, so that one compressor per
    // reactor thread serves every connection and an idle connection costs
    // nothing more with it. The threshold was measured (BENCHMARKS.md,
    // "permessage-deflate"): below it a message goes uncompressed.
    Decl {
        name: "deflate",
        flag: Some("deflate"),
        env: Some("POLLCAP_DEFLATE"),
        kind: Kind::Value,
        value_name: "on|off|takeover",
        help: "Negotiate permessage-deflate compression when a client offers it (takeover: \
               keep the context while a connection follows a run)",
        group: Group::Limits,
        default: Default::Fixed("on"),
        set: |s, v| {
            s.limits.deflate.mode = crate::deflate::Mode::parse(v)?;
            Ok(())
        },
        show: |s| Some(s.limits.deflate.mode.name().into()),
    },
    Decl {
        name: "deflate_threshold",
        flag: Some("deflate-threshold"),
        env: Some("POLLCAP_DEFLATE_THRESHOLD"),
        kind: Kind::Value,
        value_name: "BYTES",
        help: "Smallest outbound message compressed when permessage-deflate is negotiated \
               (0: every message)",
        group: Group::Limits,
        default: Default::Fixed("512"),
        set: |s, v| {
            s.limits.deflate.threshold = v
                .trim()
                .parse()
                .map_err(|_| "must be a whole number of bytes >= 0")?;
            Ok(())
        },
        show: |s| Some(s.limits.deflate.threshold.into()),
    },
    Decl {
        name: "log_format",
        flag: Some("log-format"),
        env: Some("POLLCAP_LOG_FORMAT"),
        kind: Kind::Value,
        value_name: "auto|text|json",
        help: "Log lines as text, or as one JSON object per line (timestamp, severity, \
               message, target, fields) for Cloud Logging and Kubernetes pipelines; auto: \
               JSON in a detected cloud container, text elsewhere",
        group: Group::Server,
        default: Default::Fixed("auto"),
        set: |s, v| {
            s.log_format = super::LogFormat::parse(v).ok_or("must be auto, text or json")?;
            Ok(())
        },
        show: |s| Some(s.log_format.name().into()),
    },
    Decl {
        name: "threads",
        flag: Some("threads"),
        env: Some("POLLCAP_THREADS"),
        kind: Kind::Value,
        value_name: "N",
        help: "Reactor threads (default: available cores)",
        group: Group::Server,
        default: Default::Computed(cores),
        set: |s, v| {
            let n = positive(v)?;
            if n > 256 {
                return Err("must be at most 256".into());
            }
            s.threads = n;
            Ok(())
        },
        show: |s| Some(s.threads.into()),
    },
    Decl {
        name: "ws_path",
        flag: Some("ws-path"),
        env: Some("POLLCAP_WS_PATH"),
        kind: Kind::Value,
        value_name: "PATH",
        help: "Path of the WebSocket endpoint",
        group: Group::Server,
        default: Default::Fixed("/ws"),
        set: |s, v| {
            if !v.starts_with('/') || matches!(v, "/" | "/health" | "/metrics" | "/auth") {
                return Err("must start with '/' and not be /, /health, /metrics or /auth".into());
            }
            s.ws_path = v.to_string();
            Ok(())
        },
        show: |s| Some(s.ws_path.clone().into()),
    },
    Decl {
        name: "app",
        flag: Some("app"),
        env: Some("POLLCAP_APP"),
        kind: Kind::Value,
        value_name: "NAME",
        help: "Application: agent_chat, echo, or flaky-open (diagnostic)",
        group: Group::Server,
        default: Default::Fixed("agent_chat"),
        set: |s, v| {
            s.apps.app = AppKind::parse(v).ok_or("must be agent_chat, echo or flaky-open")?;
            Ok(())
        },
        show: |s| Some(s.apps.app.name().into()),
    },
    Decl {
        name: "pacing_ms",
        flag: Some("pacing-ms"),
        env: Some("POLLCAP_PACING_MS"),
        kind: Kind::Value,
        value_name: "MS",
        help: "Pause between agent_chat events in milliseconds (0 = none)",
        group: Group::Server,
        default: Default::Fixed("5"),
        set: |s, v| {
            let ms: u64 = v
                .trim()
                .parse()
                .map_err(|_| "must be a whole number of milliseconds")?;
            s.apps.pacing = Duration::from_millis(ms);
            Ok(())
        },
        show: |s| Some((s.apps.pacing.as_millis() as u64).into()),
    },
    Decl {
        name: "fail_opens",
        flag: Some("fail-opens"),
        env: None,
        kind: Kind::Value,
        value_name: "N",
        help: "flaky-open: how many session opens fail before it behaves",
        group: Group::Server,
        default: Default::Fixed("3"),
        set: |s, v| {
            s.apps.fail_opens = v
                .trim()
                .parse()
                .map_err(|_| "must be a whole number >= 0")?;
            Ok(())
        },
        show: |s| Some(s.apps.fail_opens.into()),
    },
    Decl {
        name: "pool_threads",
        flag: Some("pool-threads"),
        env: Some("POLLCAP_POOL_THREADS"),
        kind: Kind::Value,
        value_name: "N",
        help: "Handler worker threads (handlers mostly wait: threads are cheap next to an \
               unbounded queue)",
        group: Group::Server,
        default: Default::Fixed("16"),
        set: |s, v| {
            s.pool_threads = positive(v)?;
            Ok(())
        },
        show: |s| Some(s.pool_threads.into()),
    },
    Decl {
        name: "pool_queue",
        flag: Some("pool-queue"),
        env: Some("POLLCAP_POOL_QUEUE"),
        kind: Kind::Value,
        value_name: "N",
        help: "Handler queue capacity (full: `overloaded` error events)",
        group: Group::Server,
        default: Default::Fixed("1024"),
        set: |s, v| {
            s.pool_queue = positive(v)?;
            Ok(())
        },
        show: |s| Some(s.pool_queue.into()),
    },
    Decl {
        name: "pool_queue_bytes",
        flag: Some("pool-queue-bytes"),
        env: Some("POLLCAP_POOL_QUEUE_BYTES"),
        kind: Kind::Value,
        value_name: "BYTES",
        help: "Bytes of messages that queued and running handler jobs may hold (over it: \
               `overloaded`); at least --max-message",
        group: Group::Server,
        default: Default::Fixed("67108864"),
        set: |s, v| {
            s.pool_queue_bytes = positive(v)?;
            Ok(())
        },
        show: |s| Some(s.pool_queue_bytes.into()),
    },
    Decl {
        name: "breaker_threshold",
        flag: Some("breaker-threshold"),
        env: Some("POLLCAP_BREAKER_THRESHOLD"),
        kind: Kind::Value,
        value_name: "N",
        help: "Circuit breaker: server-fault failures before it opens",
        group: Group::Server,
        default: Default::Profile(["10", "5", "3", "5"]),
        set: |s, v| {
            s.breaker_threshold = u32::try_from(positive(v)?).map_err(|_| "is too large")?;
            Ok(())
        },
        show: |s| Some(s.breaker_threshold.into()),
    },
    Decl {
        name: "breaker_recovery",
        flag: Some("breaker-recovery"),
        env: Some("POLLCAP_BREAKER_RECOVERY"),
        kind: Kind::Value,
        value_name: "SECS",
        help: "Circuit breaker: seconds open before a trial",
        group: Group::Server,
        default: Default::Profile(["5", "10", "15", "10"]),
        set: |s, v| {
            s.breaker_recovery = seconds(v)?;
            Ok(())
        },
        show: |s| secs_value(s.breaker_recovery),
    },
    Decl {
        name: "insecure_no_auth",
        flag: Some("insecure-no-auth"),
        env: None,
        kind: Kind::Switch,
        value_name: "",
        help: "Allow a non-loopback listen address without authentication",
        group: Group::Auth,
        default: Default::Fixed("false"),
        set: |s, v| {
            s.insecure_no_auth = switch(v)?;
            Ok(())
        },
        show: |s| Some(s.insecure_no_auth.into()),
    },
    Decl {
        name: "tokens_file",
        flag: Some("tokens-file"),
        env: Some("POLLCAP_TOKENS_FILE"),
        kind: Kind::Value,
        value_name: "PATH",
        help: "Static bearer tokens, one per line (# comments)",
        group: Group::Auth,
        default: Default::None,
        set: |s, v| {
            if v.trim().is_empty() {
                return Err("must be a file path".into());
            }
            s.tokens_file = Some(PathBuf::from(v));
            Ok(())
        },
        show: |s| {
            Some(
                s.tokens_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .into(),
            )
        },
    },
    // A secret: environment only (a flag would show in `ps`), never printed.
    Decl {
        name: "jwt_secret",
        flag: None,
        env: Some("POLLCAP_JWT_SECRET"),
        kind: Kind::Value,
        value_name: "SECRET",
        help: "HS256 secret for bearer JWTs (at least 16 bytes)",
        group: Group::Auth,
        default: Default::None,
        set: |s, v| {
            if v.len() < 16 {
                return Err("must be at least 16 bytes long".into());
            }
            s.jwt_secret = Some(super::Secret(v.as_bytes().to_vec()));
            Ok(())
        },
        show: |s| Some(s.jwt_secret.is_some().into()),
    },
    // Identity-provider tokens (SPEC §4 "The front door").
    Decl {
        name: "jwks_url",
        flag: Some("jwks-url"),
        env: Some("POLLCAP_JWKS_URL"),
        kind: Kind::Value,
        value_name: "URL",
        help: "Identity provider's key set (JWKS): enables RS256, ES256 and EdDSA tokens, \
               looked up by kid; fetched at start-up, every --jwks-refresh and on an unknown \
               kid (at most once every 30 s); needs --jwt-audience",
        group: Group::Auth,
        default: Default::None,
        set: |s, v| {
            let v = v.trim();
            crate::httpc::Target::parse(v).map_err(|e| e.0.to_string())?;
            s.idp.jwks_url = Some(v.to_string());
            Ok(())
        },
        show: |s| Some(s.idp.jwks_url.clone().into()),
    },
    Decl {
        name: "jwks_file",
        flag: Some("jwks-file"),
        env: Some("POLLCAP_JWKS_FILE"),
        kind: Kind::Value,
        value_name: "PATH",
        help: "A local key set (JWKS JSON) instead of --jwks-url; reloaded when the file \
               changes (size or modification time), like the TLS files",
        group: Group::Auth,
        default: Default::None,
        set: |s, v| {
            s.idp.jwks_file = Some(path(v)?);
            Ok(())
        },
        show: |s| show_path(&s.idp.jwks_file),
    },
    Decl {
        name: "jwt_audience",
        flag: Some("jwt-audience"),
        env: Some("POLLCAP_JWT_AUDIENCE"),
        kind: Kind::Value,
        value_name: "AUD[,AUD]",
        help: "Accepted aud claim (any one of a comma-separated list), checked on every JWT; \
               required with a key set",
        group: Group::Auth,
        default: Default::None,
        set: |s, v| {
            let auds: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
            if auds.is_empty() {
                return Err("must name at least one audience".into());
            }
            s.idp.audience = auds;
            Ok(())
        },
        show: |s| {
            Some(
                (!s.idp.audience.is_empty())
                    .then(|| s.idp.audience.join(","))
                    .into(),
            )
        },
    },
    Decl {
        name: "jwt_issuer",
        flag: Some("jwt-issuer"),
        env: Some("POLLCAP_JWT_ISSUER"),
        kind: Kind::Value,
        value_name: "ISS",
        help: "Required iss claim, checked on every JWT",
        group: Group::Auth,
        default: Default::None,
        set: |s, v| {
            if v.trim().is_empty() {
                return Err("must not be empty".into());
            }
            s.idp.issuer = Some(v.trim().to_string());
            Ok(())
        },
        show: |s| Some(s.idp.issuer.clone().into()),
    },
    Decl {
        name: "jwt_leeway",
        flag: Some("jwt-leeway"),
        env: Some("POLLCAP_JWT_LEEWAY"),
        kind: Kind::Value,
        value_name: "SECS",
        help: "Seconds of clock skew allowed on exp and nbf (every JWT)",
        group: Group::Auth,
        default: Default::Fixed("30"),
        set: |s, v| {
            let n: u64 = v
                .trim()
                .parse()
                .ok()
                .filter(|n| *n <= 3600)
                .ok_or("must be a whole number of seconds, 0 to 3600")?;
            s.idp.leeway = Duration::from_secs(n);
            Ok(())
        },
        show: |s| Some(s.idp.leeway.as_secs().into()),
    },
    Decl {
        name: "jwks_refresh",
        flag: Some("jwks-refresh"),
        env: Some("POLLCAP_JWKS_REFRESH"),
        kind: Kind::Value,
        value_name: "SECS",
        help: "Seconds between scheduled key set fetches (or file checks)",
        group: Group::Auth,
        default: Default::Fixed("600"),
        set: |s, v| {
            s.idp.jwks_refresh = seconds(v)?;
            Ok(())
        },
        show: |s| secs_value(s.idp.jwks_refresh),
    },
    Decl {
        name: "allowed_origins",
        flag: Some("allowed-origins"),
        env: Some("POLLCAP_ALLOWED_ORIGINS"),
        kind: Kind::Value,
        value_name: "ORIGIN[,ORIGIN]",
        help: "Browser origins that may open a WebSocket besides the server's own (always \
               allowed): exact (https://app.example.com), https://*.example.com, \
               http://localhost:* (any port), or * (any); others get 403. Default: loopback \
               origins in local, the server's own only elsewhere",
        group: Group::Server,
        default: Default::Profile([
            "http://localhost:*,http://127.0.0.1:*,http://[::1]:*",
            "",
            "",
            "",
        ]),
        set: |s, v| {
            s.allowed_origins = Origins::parse(v)?;
            Ok(())
        },
        show: |s| Some(s.allowed_origins.show().into()),
    },
    Decl {
        name: "trust_proxy",
        flag: Some("trust-proxy"),
        env: Some("POLLCAP_TRUST_PROXY"),
        kind: Kind::Value,
        value_name: "CIDR[,CIDR]",
        help: "Proxies (load balancers) whose X-Forwarded-For / Forwarded name the client: \
               the client is the last hop not in these ranges",
        group: Group::Server,
        default: Default::Fixed(""),
        set: |s, v| {
            s.trust_proxy = parse_cidrs(v)?;
            Ok(())
        },
        show: |s| {
            let v: Vec<String> = s.trust_proxy.iter().map(|c| c.to_string()).collect();
            Some(v.join(",").into())
        },
    },
    client_limit!(
        max_connections_per_ip,
        "max-connections-per-ip",
        "POLLCAP_MAX_CONNECTIONS_PER_IP",
        ["0", "0", "1000", "1000"],
        limit_usize,
        "Open WebSocket connections per client address, IPv6 per /64 (over it: 429 + \
         Retry-After); 0 = off"
    ),
    client_limit!(
        ip_connects_per_sec,
        "ip-connects-per-sec",
        "POLLCAP_IP_CONNECTS_PER_SEC",
        ["0", "0", "50", "50"],
        rate,
        "New WebSocket connections per client address per second, a token bucket holding 10 \
         s worth (over it: 429 + Retry-After); 0 = off"
    ),
    client_limit!(
        conn_messages_per_sec,
        "conn-messages-per-sec",
        "POLLCAP_CONN_MESSAGES_PER_SEC",
        ["0", "0", "100", "100"],
        rate,
        "Messages per connection per second, a token bucket holding 10 s worth (over it: \
         close 1008 \"rate limit\"); 0 = off"
    ),
    client_limit!(
        conn_bytes_per_sec,
        "conn-bytes-per-sec",
        "POLLCAP_CONN_BYTES_PER_SEC",
        ["0", "0", "1048576", "1048576"],
        limit,
        "Message bytes per connection per second, a token bucket holding 10 s worth and at \
         least --max-message (over it: close 1008 \"rate limit\"); 0 = off"
    ),
    client_limit!(
        max_runs_per_subject,
        "max-runs-per-subject",
        "POLLCAP_MAX_RUNS_PER_SUBJECT",
        ["0", "0", "100", "100"],
        limit_usize,
        "Runs one authenticated subject may have in flight on this instance (over it: an \
         overloaded error event); 0 = off"
    ),
    Decl {
        name: "tls_cert",
        flag: Some("tls-cert"),
        env: Some("POLLCAP_TLS_CERT"),
        kind: Kind::Value,
        value_name: "PATH",
        help: "PEM certificate chain: serve wss:// and https:// on the same port \
               (with --tls-key; reloaded on SIGHUP and when the files change)",
        group: Group::Tls,
        default: Default::None,
        set: |s, v| {
            s.tls_cert = Some(path(v)?);
            Ok(())
        },
        show: |s| show_path(&s.tls_cert),
    },
    Decl {
        name: "tls_key",
        flag: Some("tls-key"),
        env: Some("POLLCAP_TLS_KEY"),
        kind: Kind::Value,
        value_name: "PATH",
        help: "PEM private key of --tls-cert",
        group: Group::Tls,
        default: Default::None,
        set: |s, v| {
            s.tls_key = Some(path(v)?);
            Ok(())
        },
        show: |s| show_path(&s.tls_key),
    },
    Decl {
        name: "store",
        flag: Some("store"),
        env: Some("POLLCAP_STORE"),
        kind: Kind::Value,
        value_name: "memory|off|redis://HOST:PORT[/DB]",
        help: "Where runs' events are kept for resume: in this process (memory), nowhere \
               (off: a lost connection cancels its runs), or in Redis Streams shared by \
               every instance",
        group: Group::Resume,
        default: Default::Fixed("memory"),
        set: |s, v| {
            s.store = StoreKind::parse(v)?;
            Ok(())
        },
        show: |s| Some(s.store.to_string().into()),
    },
    Decl {
        name: "resume_window",
        flag: Some("resume-window"),
        env: Some("POLLCAP_RESUME_WINDOW"),
        kind: Kind::Value,
        value_name: "SECS",
        help: "Seconds a run's events stay resumable after its last event",
        group: Group::Resume,
        default: Default::Fixed("300"),
        set: |s, v| {
            s.resume.window = seconds(v)?;
            Ok(())
        },
        show: |s| secs_value(s.resume.window),
    },
    count!(
        "resume_run_events",
        Resume,
        resume.run_events,
        "resume-run-events",
        "POLLCAP_RESUME_RUN_EVENTS",
        "10000",
        "Events kept per run (older ones are dropped; resuming before them is refused)"
    ),
    count!(
        "resume_run_bytes",
        Resume,
        resume.run_bytes,
        "resume-run-bytes",
        "POLLCAP_RESUME_RUN_BYTES",
        "1048576",
        "Event bytes kept per run (memory store)"
    ),
    count!(
        "resume_total_events",
        Resume,
        resume.total_events,
        "resume-total-events",
        "POLLCAP_RESUME_TOTAL_EVENTS",
        "1000000",
        "Events kept in all (memory store; the oldest finished runs go first)"
    ),
    count!(
        "resume_total_bytes",
        Resume,
        resume.total_bytes,
        "resume-total-bytes",
        "POLLCAP_RESUME_TOTAL_BYTES",
        "67108864",
        "Bytes kept in all, events and run records (memory store)"
    ),
    Decl {
        name: "agent_url",
        flag: Some("agent-url"),
        env: Some("POLLCAP_AGENT_URL"),
        kind: Kind::Value,
        value_name: "URL",
        help: "Your agent: each agent_chat user_message becomes one POST here, answered \
               with Server-Sent Events or JSON Lines",
        group: Group::Agent,
        default: Default::None,
        set: |s, v| {
            s.agent.url = Some(crate::httpc::Target::parse(v).map_err(|e| e.0)?);
            Ok(())
        },
        show: |s| Some(s.agent.url.as_ref().map(|t| format!("{t:?}")).into()),
    },
    // A secret: environment only, never printed.
    Decl {
        name: "agent_token",
        flag: None,
        env: Some("POLLCAP_AGENT_TOKEN"),
        kind: Kind::Value,
        value_name: "SECRET",
        help: "Bearer secret sent to the agent URL (Authorization: Bearer ...)",
        group: Group::Agent,
        default: Default::None,
        set: |s, v| {
            if v.trim().is_empty() || v.contains(['\r', '\n']) {
                return Err("must be a non-empty single line".into());
            }
            s.agent.token = Some(super::Secret(v.as_bytes().to_vec()));
            Ok(())
        },
        show: |s| Some(s.agent.token.is_some().into()),
    },
    Decl {
        name: "agent_cmd",
        flag: Some("agent-cmd"),
        env: Some("POLLCAP_AGENT_CMD"),
        kind: Kind::Value,
        value_name: "\"CMD ARGS\"",
        help: "Your agent as a command: one process per run, the request on stdin, one \
               JSON event per stdout line (split like a shell would, run without one)",
        group: Group::Agent,
        default: Default::None,
        set: |s, v| {
            // No program or argument can hold a NUL (exec takes C strings),
            // and no quoting can show one.
            if v.contains('\0') {
                return Err("must not contain a NUL byte".into());
            }
            let words = shlex::split(v).filter(|w| !w.is_empty());
            s.agent.cmd = Some(words.ok_or("must be a command with balanced quotes")?);
            Ok(())
        },
        // Quoted as a shell would need it, so that what is shown resolves
        // to the same words again (joining fails only on a NUL, refused
        // above).
        show: |s| {
            let shown = s.agent.cmd.as_ref().map(|w| {
                shlex::try_join(w.iter().map(String::as_str)).unwrap_or_else(|_| w.join(" "))
            });
            Some(shown.into())
        },
    },
    Decl {
        name: "agent_ca_file",
        flag: Some("agent-ca-file"),
        env: Some("POLLCAP_AGENT_CA_FILE"),
        kind: Kind::Value,
        value_name: "PATH",
        help: "PEM CA certificates that an https:// agent URL is checked against (default: \
               the built-in web roots)",
        group: Group::Agent,
        default: Default::None,
        set: |s, v| {
            s.agent.ca_file = Some(path(v)?);
            Ok(())
        },
        show: |s| show_path(&s.agent.ca_file),
    },
    Decl {
        name: "agent_breaker_threshold",
        flag: Some("agent-breaker-threshold"),
        env: Some("POLLCAP_AGENT_BREAKER_THRESHOLD"),
        kind: Kind::Value,
        value_name: "N",
        help: "Upstream circuit breaker: failures in a row (connect, timeouts, 5xx/429, \
               truncations) before runs are answered upstream_unavailable without a request",
        group: Group::Agent,
        default: Default::Fixed("5"),
        set: |s, v| {
            s.agent.breaker_threshold = u32::try_from(positive(v)?).map_err(|_| "is too large")?;
            Ok(())
        },
        show: |s| Some(s.agent.breaker_threshold.into()),
    },
    Decl {
        name: "agent_breaker_recovery",
        flag: Some("agent-breaker-recovery"),
        env: Some("POLLCAP_AGENT_BREAKER_RECOVERY"),
        kind: Kind::Value,
        value_name: "SECS",
        help: "Upstream circuit breaker: seconds open before one trial request",
        group: Group::Agent,
        default: Default::Fixed("10"),
        set: |s, v| {
            s.agent.breaker_recovery = seconds(v)?;
            Ok(())
        },
        show: |s| secs_value(s.agent.breaker_recovery),
    },
    count!(
        "agent_max_procs",
        Agent,
        agent.max_procs,
        "agent-max-procs",
        "POLLCAP_AGENT_MAX_PROCS",
        "64",
        "Agent command: most processes alive at once (more runs get overloaded)"
    ),
    budget!(
        max_events,
        "run_max_events",
        "run-max-events",
        "POLLCAP_RUN_MAX_EVENTS",
        "10000",
        "Most events one run may produce, whatever its source (past it: run_too_large)"
    ),
    budget!(
        max_bytes,
        "run_max_bytes",
        "run-max-bytes",
        "POLLCAP_RUN_MAX_BYTES",
        "4194304",
        "Most event bytes one run may produce, whatever its source (past it: run_too_large)"
    ),
];

/// A path setting; empty is not a path.
fn path(v: &str) -> Result<PathBuf, String> {
    if v.trim().is_empty() {
        return Err("must be a file path".into());
    }
    Ok(PathBuf::from(v))
}

fn show_path(p: &Option<PathBuf>) -> Option<Value> {
    Some(p.as_ref().map(|p| p.display().to_string()).into())
}

/// The declaration named `name`.
pub fn find(name: &str) -> Option<&'static Decl> {
    DECLS.iter().find(|d| d.name == name)
}
