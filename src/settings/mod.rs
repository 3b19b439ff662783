//! Resolved settings: profile < environment variables < command-line flags,
//! validated once at start-up (SPEC §3). Every setting is declared once in
//! [`DECLS`]; this module resolves and validates them. Nothing here reads
//! the process environment directly: callers pass a lookup, so tests stay
//! hermetic.

mod decl;
mod detect;
mod frontdoor;
mod store;
mod timeouts;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

pub use decl::{DECLS, Decl, Default, Group, Kind, find, seconds};
pub use detect::{CloudPlatform, Environment, EnvironmentView};
pub use frontdoor::{
    BURST_SECONDS, Cidr, ClientLimits, Idp, OriginPattern, Origins, canonical, parse_cidrs,
    split_origin,
};
pub use store::{RedisTarget, ResumeLimits, StoreKind};
pub use timeouts::{Profile, Timeouts, secs};

use crate::reactor::{BackendKind, CapStrategy};

/// The default cap (SPEC §1): 1 s everywhere unless configured. On Windows
/// and in cloud containers it is the documented safety net (IOCP ignores
/// Ctrl-C while waiting; gVisor has lost epoll events); elsewhere it costs one
/// wakeup per second per reactor and bounds the damage of any lost wakeup.
/// The same value on every platform by design, so the detected environment
/// does not enter into it.
pub const DEFAULT_CAP: Duration = Duration::from_secs(1);

/// Default listen address when neither `--listen`, `POLLCAP_LISTEN` nor `PORT` is set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8765";

/// A start-up configuration error: one line naming the setting, value and rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    /// `invalid setting {setting}={value:?}: {rule}`: one value broke its rule.
    pub fn new(setting: &str, value: &str, rule: &str) -> ConfigError {
        ConfigError {
            message: format!("invalid setting {setting}={value:?}: {rule}"),
        }
    }

    /// `invalid settings: {message}`: a rule between settings is broken.
    pub fn rule(message: String) -> ConfigError {
        ConfigError {
            message: format!("invalid settings: {message}"),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Size and count limits (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest inbound message (bytes); over it → close 1009.
    pub max_message: usize,
    /// Largest inbound frame payload (bytes); over it → close 1009.
    pub max_frame: usize,
    /// Most open WebSocket connections; over it → HTTP 503 + Retry-After.
    pub max_connections: usize,
    /// Bytes queued for a peer that does not read; over it → close 1008.
    pub max_outbound: usize,
    /// tungstenite's eagerly allocated read buffer per connection.
    pub read_buffer: usize,
    /// Bytes of request line + headers; over it → 431.
    pub max_head_bytes: usize,
    /// Header lines; over it → 431.
    pub max_headers: usize,
    /// Bytes a lingering close discards before it closes anyway.
    pub linger_bytes: usize,
    /// permessage-deflate: whether it is negotiated, and from which
    /// message size it compresses.
    pub deflate: crate::deflate::Config,
}

impl std::default::Default for Limits {
    /// The declared defaults.
    fn default() -> Limits {
        Settings::defaults(Profile::Local).limits
    }
}

/// What one run may produce, whatever its source (settings
/// `run_max_events`, `run_max_bytes`): past either, the run ends with
/// `run_too_large` and its source is told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunBudget {
    /// Events (`--run-max-events`).
    pub max_events: u64,
    /// Bytes of events as sent (`--run-max-bytes`).
    pub max_bytes: u64,
}

/// The application `pollcap serve` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppKind {
    /// `agent_chat`: the streaming agent demo, or the team's agent with
    /// `--agent-url` / `--agent-cmd`.
    AgentChat,
    /// `echo`: every message sent back, inline on the reactor.
    Echo,
    /// Diagnostic: the first `fail_opens` session opens fail.
    FlakyOpen,
}

impl AppKind {
    /// Parses an `--app` value (`agent_chat`, `echo`, `flaky-open`).
    pub fn parse(v: &str) -> Option<AppKind> {
        match v.trim() {
            "agent_chat" => Some(AppKind::AgentChat),
            "echo" => Some(AppKind::Echo),
            "flaky-open" => Some(AppKind::FlakyOpen),
            _ => None,
        }
    }

    /// The name `--app` takes.
    pub fn name(self) -> &'static str {
        match self {
            AppKind::AgentChat => "agent_chat",
            AppKind::Echo => "echo",
            AppKind::FlakyOpen => "flaky-open",
        }
    }
}

/// How `pollcap serve` writes its log (setting `log_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON in a detected cloud container, text elsewhere.
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line: `timestamp`, `severity` (Cloud Logging's
    /// names), `message`, `target` and the event's fields.
    Json,
}

impl LogFormat {
    /// Parses a `--log-format` value (`auto`, `text`, `json`; any case).
    pub fn parse(v: &str) -> Option<LogFormat> {
        match v.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(LogFormat::Auto),
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }

    /// The name `--log-format` takes.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Auto => "auto",
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }

    /// The format in `environment`: `auto` is JSON in a cloud container
    /// (whose log pipeline parses one object per line), text elsewhere.
    pub fn resolved(self, environment: &Environment) -> LogFormat {
        match self {
            LogFormat::Auto if environment.is_cloud_container() => LogFormat::Json,
            LogFormat::Auto => LogFormat::Text,
            other => other,
        }
    }
}

/// Which built-in application `pollcap serve` runs, and its knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppSettings {
    /// The application (`--app`, `POLLCAP_APP`).
    pub app: AppKind,
    /// Pause between `agent_chat` events.
    pub pacing: Duration,
    /// `flaky-open`: session opens that fail before it behaves.
    pub fail_opens: u32,
}

/// The team's own agent (SPEC §5 "Bring your own agent"): an HTTP URL or
/// a command, with its breaker and process limit. Its deadlines are in
/// [`Timeouts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentSettings {
    /// The agent's URL (`--agent-url`): one `POST` per run.
    pub url: Option<crate::httpc::Target>,
    /// Sent as `Authorization: Bearer …` to the URL.
    pub token: Option<Secret>,
    /// The command's words (split like a shell would).
    pub cmd: Option<Vec<String>>,
    /// CA certificates for an `https://` URL.
    pub ca_file: Option<PathBuf>,
    /// Failures in a row before the agent's breaker opens
    /// (`--agent-breaker-threshold`).
    pub breaker_threshold: u32,
    /// How long the agent's breaker stays open before one trial
    /// (`--agent-breaker-recovery`).
    pub breaker_recovery: Duration,
    /// Processes alive at once (`cmd`).
    pub max_procs: usize,
}

/// A secret value; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// Every resolved setting, validated. Fields are public so that embedders
/// and tests can adjust a value after resolution; [`Settings::validate`]
/// checks the result again.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The profile of defaults (`--profile`, `ENVIRONMENT`).
    pub profile: Profile,
    /// What was detected about the platform (Windows, a cloud container).
    pub environment: Environment,
    /// The poller behind every reactor (`--backend`).
    pub backend: BackendKind,
    /// The longest OS wait (`--poll-cap`): each wait is `min(next deadline,
    /// cap)`.
    pub poll_cap: CapStrategy,
    /// How late a soft deadline may be handled (see `timer_slack_ms`).
    pub timer_slack: Duration,
    /// Listen address (`--listen`, `POLLCAP_LISTEN`, or `0.0.0.0:$PORT`);
    /// port 0 picks a free one ([`Server::local_addr`](crate::Server::local_addr)
    /// tells which).
    pub listen: SocketAddr,
    /// Every phase deadline.
    pub timeouts: Timeouts,
    /// Size and count limits.
    pub limits: Limits,
    /// Reactor threads (1..=256).
    pub threads: usize,
    /// How `pollcap serve` writes its log.
    pub log_format: LogFormat,
    /// Path of the WebSocket endpoint (`--ws-path`, default `/ws`).
    pub ws_path: String,
    /// The built-in application's settings (read by `crate::apps` only:
    /// the server knows applications through the handler API alone).
    pub apps: AppSettings,
    /// Threads of the handler pool (`--pool-threads`).
    pub pool_threads: usize,
    /// Handler jobs that may wait for a thread (`--pool-queue`); when full, a
    /// message is answered with an `overloaded` error event.
    pub pool_queue: usize,
    /// Bytes of input held by queued and running handler jobs.
    pub pool_queue_bytes: usize,
    /// Server-fault failures in a row (the application's `open` failing,
    /// the handler pool saturated at open) before the upgrade breaker opens
    /// (`--breaker-threshold`); while open, upgrades get 503 +
    /// `Retry-After`.
    pub breaker_threshold: u32,
    /// How long the upgrade breaker stays open before one trial
    /// (`--breaker-recovery`).
    pub breaker_recovery: Duration,
    /// Allow a non-loopback listen address without authentication
    /// (`--insecure-no-auth`).
    pub insecure_no_auth: bool,
    /// Static bearer tokens, one per line (`--tokens-file`).
    pub tokens_file: Option<PathBuf>,
    /// The HS256 key (`POLLCAP_JWT_SECRET`; no flag, so it never shows in a
    /// process list); set, authentication is on.
    pub jwt_secret: Option<Secret>,
    /// TLS certificate chain and key (PEM); both or neither.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Where runs' events are kept for resume.
    pub store: StoreKind,
    /// How long and how much is kept.
    pub resume: ResumeLimits,
    /// What one run may produce.
    pub run_budget: RunBudget,
    /// Identity-provider tokens and the claim rules of every JWT.
    pub idp: Idp,
    /// Browser origins allowed to upgrade besides the server's own.
    pub allowed_origins: Origins,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` name the client.
    pub trust_proxy: Vec<Cidr>,
    /// Per-client limits (0 = off).
    pub clients: ClientLimits,
    /// The upstream agent, if any.
    pub agent: AgentSettings,
}

impl Settings {
    /// Placeholders, every one replaced by a declared default.
    fn blank(profile: Profile, environment: Environment) -> Settings {
        let zero = Duration::ZERO;
        Settings {
            profile,
            environment,
            backend: BackendKind::Mio,
            poll_cap: CapStrategy::Fixed(DEFAULT_CAP),
            timer_slack: zero,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            timeouts: Timeouts {
                connect: zero,
                handshake: zero,
                ping: zero,
                heartbeat_interval: zero,
                heartbeat_timeout: zero,
                stale: zero,
                connection: zero,
                close: zero,
                cleanup_interval: zero,
                execution: zero,
                agent_connect: zero,
                agent_response: zero,
                agent_idle: zero,
            },
            limits: Limits {
                max_message: 0,
                max_frame: 0,
                max_connections: 0,
                max_outbound: 0,
                read_buffer: 0,
                max_head_bytes: 0,
                max_headers: 0,
                linger_bytes: 0,
                deflate: crate::deflate::Config::OFF,
            },
            threads: 1,
            log_format: LogFormat::Auto,
            ws_path: String::new(),
            apps: AppSettings {
                app: AppKind::AgentChat,
                pacing: zero,
                fail_opens: 0,
            },
            pool_threads: 0,
            pool_queue: 0,
            pool_queue_bytes: 0,
            breaker_threshold: 0,
            breaker_recovery: zero,
            insecure_no_auth: false,
            tokens_file: None,
            jwt_secret: None,
            tls_cert: None,
            tls_key: None,
            store: StoreKind::Memory,
            resume: ResumeLimits {
                window: zero,
                run_events: 0,
                run_bytes: 0,
                total_events: 0,
                total_bytes: 0,
            },
            run_budget: RunBudget {
                max_events: 0,
                max_bytes: 0,
            },
            idp: Idp {
                jwks_url: None,
                jwks_file: None,
                audience: Vec::new(),
                issuer: None,
                leeway: zero,
                jwks_refresh: zero,
            },
            allowed_origins: Origins::default(),
            trust_proxy: Vec::new(),
            clients: ClientLimits {
                max_connections_per_ip: 0,
                ip_connects_per_sec: 0,
                conn_messages_per_sec: 0,
                conn_bytes_per_sec: 0,
                max_runs_per_subject: 0,
            },
            agent: AgentSettings {
                url: None,
                token: None,
                cmd: None,
                ca_file: None,
                breaker_threshold: 0,
                breaker_recovery: zero,
                max_procs: 0,
            },
        }
    }

    /// The declared defaults of `profile`, with no environment and no flags.
    pub fn defaults(profile: Profile) -> Settings {
        let mut s = Settings::blank(profile, Environment::detect(&|_| None));
        for d in DECLS {
            if let Some(v) = d.default_for(profile) {
                (d.set)(&mut s, &v).unwrap_or_else(|rule| {
                    panic!("default of {} ({v:?}) {rule}", d.name);
                });
            }
        }
        s.poll_cap = default_cap(&s.timeouts);
        s
    }

    /// Resolves from the real process environment and `flags`
    /// (`(setting name, value)` pairs, as the binary's parser collects them).
    pub fn from_process(flags: &[(&str, String)]) -> Result<Settings, ConfigError> {
        Settings::resolve(&|k| std::env::var(k).ok(), flags)
    }

    /// Resolves from an environment lookup `get` and command-line `flags`:
    /// every declared default (for the profile), then every environment
    /// variable, then every flag, then the cross-setting rules.
    pub fn resolve(
        get: &dyn Fn(&str) -> Option<String>,
        flags: &[(&str, String)],
    ) -> Result<Settings, ConfigError> {
        let flag = |name: &str| {
            flags
                .iter()
                .rev()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        let profile = resolve_profile(get, flag("profile"))?;
        let mut s = Settings::defaults(profile);
        s.environment = Environment::detect(get);
        let mut explicit_cap = false;
        let apply = |s: &mut Settings, d: &Decl, source: &str, v: &str| {
            (d.set)(s, v).map_err(|rule| {
                let shown = if d.is_secret() { "<hidden>" } else { v };
                ConfigError::new(source, shown, &rule)
            })
        };
        for d in DECLS.iter().filter(|d| d.name != "profile") {
            if let Some(env) = d.env
                && let Some(v) = get(env)
            {
                apply(&mut s, d, env, &v)?;
                explicit_cap |= d.name == "poll_cap";
            }
        }
        for d in DECLS.iter().filter(|d| d.name != "profile") {
            if let (Some(f), Some(v)) = (d.flag_text(), flag(d.name)) {
                apply(&mut s, d, &f, v)?;
                explicit_cap |= d.name == "poll_cap";
            }
        }
        // The default cap shrinks to fit short deadlines instead of
        // failing: the user never chose it. An explicit cap is checked.
        if !explicit_cap {
            s.poll_cap = default_cap(&s.timeouts);
        }
        s.validate()?;
        Ok(s)
    }

    /// The rules between settings; each error names the settings, the
    /// values and the rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.timeouts.validate()?;
        if let Some(cap) = self.poll_cap.limit() {
            let bound = self.timeouts.ping.min(self.timeouts.close);
            if cap > bound {
                return Err(ConfigError::rule(format!(
                    "poll cap ({}) must be <= min(ping, close) ({}): a longer cap would let \
                     those deadlines slip; lower the cap or use 'off'",
                    secs(cap),
                    secs(bound)
                )));
            }
        }
        if self.timer_slack >= self.timeouts.ping {
            return Err(ConfigError::rule(format!(
                "timer_slack_ms ({} ms) must be < ping ({}): a heartbeat may be handled up to \
                 the slack late, which must stay well inside the pong deadline",
                self.timer_slack.as_millis(),
                secs(self.timeouts.ping)
            )));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            let (given, missing) = if self.tls_cert.is_some() {
                ("--tls-cert", "--tls-key")
            } else {
                ("--tls-key", "--tls-cert")
            };
            return Err(ConfigError::rule(format!(
                "{given} is set but {missing} is not: TLS needs both (or neither)"
            )));
        }
        self.resume.validate()?;
        self.validate_idp()?;
        if self.agent.url.is_some() || self.agent.cmd.is_some() {
            self.timeouts.validate_agent()?;
        }
        if self.agent.url.is_some() && self.agent.cmd.is_some() {
            return Err(ConfigError::rule(
                "agent_url (--agent-url) and agent_cmd (--agent-cmd) are both set: choose one \
                 agent"
                    .into(),
            ));
        }
        let l = &self.limits;
        // Saturating: a max_message near usize::MAX must fail the rule,
        // not overflow past it.
        if l.max_outbound <= l.max_message.saturating_add(14) {
            return Err(ConfigError::new(
                "--max-outbound",
                &l.max_outbound.to_string(),
                &format!(
                    "must exceed --max-message ({}) + 14 bytes of frame header, or one reply \
                     could never be queued",
                    l.max_message
                ),
            ));
        }
        if self.pool_queue_bytes < l.max_message {
            return Err(ConfigError::new(
                "--pool-queue-bytes",
                &self.pool_queue_bytes.to_string(),
                &format!(
                    "must be >= --max-message ({}), or a message of the largest size could \
                     never reach a handler",
                    l.max_message
                ),
            ));
        }
        Ok(())
    }

    /// A key set needs an audience (a token another application got from
    /// the same provider must not pass), and comes from one place.
    fn validate_idp(&self) -> Result<(), ConfigError> {
        let idp = &self.idp;
        if idp.jwks_url.is_some() && idp.jwks_file.is_some() {
            return Err(ConfigError::rule(
                "--jwks-url and --jwks-file are both set: the key set comes from one of them"
                    .into(),
            ));
        }
        if idp.has_jwks() && idp.audience.is_empty() {
            let (flag, v) = match (&idp.jwks_url, &idp.jwks_file) {
                (Some(u), _) => ("jwks_url (--jwks-url, POLLCAP_JWKS_URL)", u.clone()),
                (_, Some(f)) => (
                    "jwks_file (--jwks-file, POLLCAP_JWKS_FILE)",
                    f.display().to_string(),
                ),
                _ => unreachable!("has_jwks"),
            };
            return Err(ConfigError::new(
                flag,
                &v,
                "needs --jwt-audience (POLLCAP_JWT_AUDIENCE): without an audience check, a \
                 token the same provider issued for another application would pass",
            ));
        }
        Ok(())
    }

    /// The value of every shown setting of `group`, by name, in declaration order.
    pub fn group(&self, group: Group) -> Map<String, Value> {
        DECLS
            .iter()
            .filter(|d| d.group == group)
            .filter_map(|d| Some((d.name.to_string(), (d.show)(self)?)))
            .collect()
    }

    /// Settings as JSON (`pollcap config --json`; `/health` uses the
    /// same groups): top-level settings, the detected environment, then
    /// one object per group.
    pub fn to_json(&self) -> Value {
        let mut o = self.group(Group::Top);
        o.insert(
            "environment".into(),
            serde_json::to_value(self.environment.view()).unwrap_or(Value::Null),
        );
        o.insert(
            "poll_cap_ms".into(),
            self.poll_cap
                .limit()
                .map(|d| d.as_secs_f64() * 1000.0)
                .into(),
        );
        for g in [
            Group::Timeouts,
            Group::Limits,
            Group::Server,
            Group::Auth,
            Group::Tls,
            Group::Resume,
            Group::Agent,
        ] {
            if let Some(key) = g.key() {
                o.insert(key.into(), Value::Object(self.group(g)));
            }
        }
        Value::Object(o)
    }

    /// One human-readable line with every resolved value (the start-up log
    /// line): `name=value` for each shown setting.
    pub fn summary(&self) -> String {
        let mut s = format!("environment={}", self.environment);
        for d in DECLS {
            if let Some(v) = (d.show)(self) {
                s.push(' ');
                s.push_str(d.name);
                s.push('=');
                s.push_str(&display(d, &v));
            }
        }
        s
    }
}

/// A shown value as text: seconds get their unit, strings lose quotes.
pub fn display(d: &Decl, v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        Value::Number(n) if d.value_name == "SECS" => {
            secs(Duration::from_secs_f64(n.as_f64().unwrap_or(0.0)))
        }
        other => other.to_string(),
    }
}

fn default_cap(t: &Timeouts) -> CapStrategy {
    CapStrategy::Fixed(DEFAULT_CAP.min(t.ping).min(t.close))
}

fn resolve_profile(
    get: &dyn Fn(&str) -> Option<String>,
    flag: Option<&str>,
) -> Result<Profile, ConfigError> {
    let rule = "must be one of local, development, testing, staging, production";
    if let Some(v) = flag {
        return Profile::parse(v).ok_or_else(|| ConfigError::new("--profile", v, rule));
    }
    if let Some(v) = get("LOCAL_DEVELOPMENT") {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => return Ok(Profile::Local),
            "false" | "0" | "no" | "" => {}
            _ => {
                return Err(ConfigError::new(
                    "LOCAL_DEVELOPMENT",
                    &v,
                    "must be true or false",
                ));
            }
        }
    }
    match get("ENVIRONMENT") {
        Some(v) => Profile::parse(&v).ok_or_else(|| ConfigError::new("ENVIRONMENT", &v, rule)),
        None => Ok(Profile::Local),
    }
}

#[cfg(test)]
mod tests;
