//! The one declaration of every setting: name, command-line flag,
//! environment variable, default (per profile where SPEC §3 has a table),
//! and the rule its value must satisfy. Resolution, the binary's flags,
//! `pollcap config`, the start-up line and `/health` are all derived from
//! [`DECLS`]; nothing else names a setting's flag or variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{AppKind, Profile, Settings};
use crate::reactor::{BackendKind, CapStrategy};
use crate::store::StoreKind;

/// Where a setting is shown: the top level, or one named group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Top,
    /// Every phase deadline: the JSON key is `timeouts_s` (values in seconds).
    Timeouts,
    Limits,
    Server,
    Auth,
    Tls,
    /// The run store and resume (SPEC §5 "Resume").
    Resume,
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
        }
    }
}

/// A setting's built-in value, parsed by the same `set` as user input.
#[derive(Clone, Copy)]
pub enum Default {
    Fixed(&'static str),
    /// One value per profile, in [`Profile::ALL`] order.
    Profile([&'static str; 4]),
    Computed(fn() -> String),
    /// Absent (an optional setting) or derived from others after
    /// resolution (the poll cap).
    None,
}

/// Whether a flag takes a value or is a switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Value,
    Switch,
}

/// One setting.
pub struct Decl {
    /// The key in `pollcap config --json`, `/health` and the start-up line.
    pub name: &'static str,
    /// Long flag without the dashes.
    pub flag: Option<&'static str>,
    pub env: Option<&'static str>,
    pub kind: Kind,
    pub value_name: &'static str,
    pub help: &'static str,
    pub group: Group,
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
        "Seconds a handler may run for one message"
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
            s.app = AppKind::parse(v).ok_or("must be agent_chat, echo or flaky-open")?;
            Ok(())
        },
        show: |s| Some(s.app.name().into()),
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
            s.pacing = Duration::from_millis(ms);
            Ok(())
        },
        show: |s| Some((s.pacing.as_millis() as u64).into()),
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
            s.fail_opens = v
                .trim()
                .parse()
                .map_err(|_| "must be a whole number >= 0")?;
            Ok(())
        },
        show: |s| Some(s.fail_opens.into()),
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
