//! The `pollcap` binary: argument parsing and start-up only; every behaviour
//! lives in the library.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use std::sync::Arc;

use pollcap::agent::{AgentChat, FlakyOpen};
use pollcap::app::App;
use pollcap::conn::Limits;
use pollcap::settings::{FIELDS, Overrides, Settings, secs};

#[derive(Parser)]
#[command(
    name = "pollcap",
    version,
    about = "A WebSocket server that never blocks indefinitely"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the resolved settings (profile, environment, backend, cap, timeouts).
    Config {
        #[command(flatten)]
        settings: SettingsArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Load a server on loopback: echo, handshake storm, or idle connections.
    Load {
        #[command(subcommand)]
        mode: LoadMode,
        /// Server URL.
        #[arg(long, global = true, default_value = "ws://127.0.0.1:8765/ws")]
        url: String,
        /// Server process id, to report its CPU and RSS (Linux /proc).
        #[arg(long, global = true)]
        server_pid: Option<u32>,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Check a live endpoint: one agent_chat exchange, timed phase by phase,
    /// with a verdict; exit 0 only if everything arrived in time.
    Probe(ProbeArgs),
    /// Compare cap strategies × backends on this machine (SPEC §9): writes
    /// report.md, bench.json and SVG charts.
    Bench(BenchArgs),
    /// Mint an HS256 JWT with POLLCAP_JWT_SECRET.
    Token {
        /// Subject (who the token names).
        #[arg(long)]
        sub: String,
        /// Lifetime: 90, 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Run the WebSocket server (defaults: 127.0.0.1:8765, local profile).
    Serve {
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        server: ServeArgs,
    },
}

#[derive(Subcommand, Clone)]
enum LoadMode {
    /// C connections send S-byte messages for D seconds: msgs/s, latency.
    Echo {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
    },
    /// C agent_chat connections, one message in flight each, for D seconds:
    /// complete runs/s and event latency. Token from --token or POLLCAP_TOKEN.
    Agent {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, env = "POLLCAP_TOKEN")]
        token: Option<String>,
    },
    /// K handshakes from P parallel clients: handshakes/s, p99.
    Storm {
        #[arg(long, default_value_t = 5000)]
        count: usize,
        #[arg(long, default_value_t = 4)]
        parallel: usize,
    },
    /// K idle connections held for H seconds: server RSS per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
    },
}

/// Server-only flags.
#[derive(Args, Clone)]
struct ServeArgs {
    /// Reactor threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Application: agent_chat, echo, or flaky-open (diagnostic).
    #[arg(long, default_value = "agent_chat")]
    app: String,
    /// Pause between agent_chat events in milliseconds (0 = none).
    #[arg(long, default_value_t = pollcap::agent::DEFAULT_PACING.as_millis() as u64)]
    pacing_ms: u64,
    /// flaky-open: how many session opens fail before it behaves.
    #[arg(long, default_value_t = 3)]
    fail_opens: u32,
    /// Handler worker threads.
    #[arg(long, default_value_t = pollcap::server::DEFAULT_POOL_THREADS)]
    pool_threads: usize,
    /// Handler queue capacity (full: `overloaded` error events).
    #[arg(long, default_value_t = pollcap::server::DEFAULT_POOL_QUEUE)]
    pool_queue: usize,
    /// Circuit breaker: server-fault failures before it opens (default: profile's).
    #[arg(long)]
    breaker_threshold: Option<u32>,
    /// Circuit breaker: seconds open before a trial (default: profile's).
    #[arg(long, value_name = "SECS")]
    breaker_recovery: Option<String>,
    /// Path of the WebSocket endpoint.
    #[arg(long, default_value = "/ws")]
    ws_path: String,
    /// Largest inbound message in bytes (over it: close 1009).
    #[arg(long, default_value_t = Limits::default().max_message)]
    max_message: usize,
    /// Largest inbound frame payload in bytes (over it: close 1009).
    #[arg(long, default_value_t = Limits::default().max_frame)]
    max_frame: usize,
    /// Most open WebSocket connections (over it: HTTP 503 + Retry-After).
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// Bytes queued for a slow reader before close 1008 "backpressure".
    #[arg(long, default_value_t = Limits::default().max_outbound)]
    max_outbound: usize,
    /// Per-connection read buffer in bytes (the main idle cost).
    #[arg(long, default_value_t = Limits::default().read_buffer)]
    read_buffer: usize,
    /// Allow a non-loopback listen address without authentication.
    #[arg(long)]
    insecure_no_auth: bool,
}

/// Flags shared by every command that resolves settings. Values are kept as
/// strings so that a bad one is reported with the flag's name.
#[derive(Args, Clone, Default)]
struct SettingsArgs {
    /// Profile: local|development|testing|staging|production (env ENVIRONMENT).
    #[arg(long)]
    profile: Option<String>,
    /// Poller backend: mio|polling (env POLLCAP_BACKEND).
    #[arg(long)]
    backend: Option<String>,
    /// Poll cap in ms; 0 = spin, off = unbounded (env POLLCAP_POLL_CAP_MS).
    #[arg(long)]
    poll_cap: Option<String>,
    /// Listen address IP:PORT (env POLLCAP_LISTEN, or 0.0.0.0:$PORT).
    #[arg(long)]
    listen: Option<String>,
    /// Seconds from TCP accept to the first request byte.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    connect_timeout: Option<String>,
    /// Seconds from TCP accept to the 101 response written.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    handshake_timeout: Option<String>,
    /// Seconds to wait for any frame after a Ping.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    ping_timeout: Option<String>,
    /// Seconds of inbound silence before a Ping is sent.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    heartbeat_interval: Option<String>,
    /// Seconds of inbound silence before close 1001.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    heartbeat_timeout: Option<String>,
    /// Seconds without an application message before close 1001 "idle".
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    stale_timeout: Option<String>,
    /// Maximum connection lifetime in seconds.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    connection_timeout: Option<String>,
    /// Seconds to finish the closing handshake.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    close_timeout: Option<String>,
    /// Seconds between audit sweeps.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    cleanup_interval: Option<String>,
    /// Seconds a handler may run for one message.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    execution_timeout: Option<String>,
}

impl SettingsArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            profile: self.profile.clone(),
            backend: self.backend.clone(),
            poll_cap: self.poll_cap.clone(),
            listen: self.listen.clone(),
            // Same order as settings::FIELDS.
            timeouts: [
                self.connect_timeout.clone(),
                self.handshake_timeout.clone(),
                self.ping_timeout.clone(),
                self.heartbeat_interval.clone(),
                self.heartbeat_timeout.clone(),
                self.stale_timeout.clone(),
                self.connection_timeout.clone(),
                self.close_timeout.clone(),
                self.cleanup_interval.clone(),
                self.execution_timeout.clone(),
            ],
        }
    }

    /// Resolves settings or exits 2 with the one-line error.
    fn resolve(&self) -> Result<Settings, ExitCode> {
        Settings::from_process(&self.overrides()).map_err(|e| {
            eprintln!("pollcap: {e}");
            ExitCode::from(2)
        })
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn print_table(s: &Settings) {
    println!("{:<20} {}", "profile", s.profile);
    println!("{:<20} {}", "environment", s.environment);
    println!(
        "{:<20} {}",
        "cloud container",
        if s.environment.is_cloud_container() {
            "yes"
        } else {
            "no"
        }
    );
    println!("{:<20} {}", "backend", s.backend.name());
    println!("{:<20} {}", "poll cap", s.poll_cap);
    println!("{:<20} {}", "listen", s.listen);
    for f in FIELDS {
        println!(
            "{:<20} {:<8} ({} / {})",
            f.name,
            secs((f.get)(&s.timeouts)),
            f.env,
            f.flag
        );
    }
}

/// A usage or configuration error: one line, exit status 2.
fn fail(msg: String) -> ExitCode {
    eprintln!("pollcap: {msg}");
    ExitCode::from(2)
}

/// Parses a comma-separated flag value item by item; the error names the
/// flag, the bad item and the rule.
fn parse_list<T>(
    flag: &str,
    value: &str,
    rule: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Vec<T>, String> {
    value
        .split(',')
        .map(|item| {
            parse(item.trim()).ok_or_else(|| format!("invalid setting {flag}={item:?}: {rule}"))
        })
        .collect()
}

fn serve(settings: Settings, args: ServeArgs) -> ExitCode {
    use pollcap::server::{Server, ServerConfig};
    let auth = match pollcap::auth::Auth::from_env(&|k| std::env::var(k).ok()) {
        Ok(a) => a,
        Err(e) => return fail(e.to_string()),
    };
    if auth.is_none() && !settings.listen.ip().is_loopback() && !args.insecure_no_auth {
        return fail(format!(
            "refusing to listen on non-loopback address {} without authentication \
             (rule: auth may be off only on loopback); set POLLCAP_JWT_SECRET or \
             POLLCAP_TOKENS_FILE, or pass --insecure-no-auth to accept the risk",
            settings.listen
        ));
    }
    let pacing = std::time::Duration::from_millis(args.pacing_ms);
    let app = match args.app.as_str() {
        "agent_chat" => App::Handler(Arc::new(AgentChat { pacing })),
        "echo" => App::Echo,
        "flaky-open" => App::Handler(Arc::new(FlakyOpen {
            remaining: args.fail_opens.into(),
            inner: AgentChat { pacing },
        })),
        other => {
            return fail(format!(
                "invalid setting --app={other:?}: must be agent_chat, echo or flaky-open"
            ));
        }
    };
    let mut breaker = settings.profile.breaker();
    if let Some(t) = args.breaker_threshold {
        breaker.0 = t;
    }
    if let Some(r) = &args.breaker_recovery {
        match pollcap::settings::parse_seconds("--breaker-recovery", r) {
            Ok(d) => breaker.1 = d,
            Err(e) => return fail(e.to_string()),
        }
    }
    let mut cfg = ServerConfig::new(settings);
    cfg.app = app;
    cfg.auth = auth;
    cfg.breaker = breaker;
    cfg.pool_threads = args.pool_threads;
    cfg.pool_queue = args.pool_queue;
    cfg.ws_path = args.ws_path;
    if let Some(t) = args.threads {
        cfg.threads = t;
    }
    cfg.limits.max_message = args.max_message;
    cfg.limits.max_frame = args.max_frame;
    cfg.limits.max_connections = args.max_connections;
    cfg.limits.max_outbound = args.max_outbound;
    cfg.limits.read_buffer = args.read_buffer;
    if let Err(e) = cfg.validate() {
        return fail(e.to_string());
    }
    let fds = pollcap::platform::raise_fd_limit();
    if let Some(n) = fds.filter(|&n| n < cfg.limits.max_connections as u64 + 64) {
        tracing::warn!(
            "open-file limit {n} is below max_connections {} + 64: accepts will fail \
             (and pause) before the connection limit is reached; raise LimitNOFILE / ulimit -n",
            cfg.limits.max_connections
        );
    }
    let server = match Server::start(cfg.clone()) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot listen on {}: {e}", cfg.settings.listen)),
    };
    let handle = server.shutdown_handle();
    if let Err(e) = ctrlc::set_handler(move || {
        tracing::info!("shutdown signal: draining");
        handle.shutdown();
    }) {
        return fail(format!("cannot install the shutdown signal handler: {e}"));
    }
    tracing::info!(
        "pollcap {} listening on {} ws_path={} app={} threads={} fd_limit={} auth={} breaker={}/{}s {}",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        cfg.ws_path,
        cfg.app.name(),
        cfg.threads,
        fds.map_or("none".to_string(), |n| n.to_string()),
        if cfg.auth.is_some() { "on" } else { "off" },
        cfg.breaker.0,
        cfg.breaker.1.as_secs_f64(),
        cfg.settings.summary()
    );
    match server.join() {
        Ok(()) => {
            tracing::info!("drained; exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pollcap: reactor failed: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Args)]
struct ProbeArgs {
    /// Endpoint, ws://HOST:PORT/PATH.
    #[arg(default_value = "ws://127.0.0.1:8765/ws")]
    url: String,
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
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Output directory.
    #[arg(long, default_value = "reports/bench")]
    out: std::path::PathBuf,
    /// Tiny sizes and short holds: checks the harness in seconds.
    #[arg(long)]
    quick: bool,
    /// Backends, comma-separated.
    #[arg(long, default_value = "mio,polling")]
    backends: String,
    /// Cap strategies, comma-separated: off (unbounded), 0 (spin), or ms.
    #[arg(long, default_value = "off,1000,100,0")]
    strategies: String,
    /// Idle connection counts, comma-separated (default 0,1000,10000).
    #[arg(long)]
    idle: Option<String>,
    /// Seconds each idle measurement holds its connections (default 4).
    #[arg(long)]
    hold: Option<String>,
}

fn bench_config(args: BenchArgs) -> Result<pollcap::bench::BenchConfig, String> {
    use pollcap::reactor::{BackendKind, CapStrategy};
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the pollcap binary: {e}"))?;
    let mut cfg = pollcap::bench::BenchConfig::new(exe, args.out);
    if args.quick {
        cfg = cfg.quick();
    }
    cfg.backends = parse_list(
        "--backends",
        &args.backends,
        "each must be mio or polling",
        BackendKind::parse,
    )?;
    cfg.strategies = parse_list(
        "--strategies",
        &args.strategies,
        "each must be off, 0 or whole milliseconds",
        CapStrategy::parse,
    )?;
    if let Some(list) = &args.idle {
        cfg.idle_counts = parse_list(
            "--idle",
            list,
            "each must be a whole number of connections <= 20000",
            |n| n.parse::<usize>().ok().filter(|&n| n <= 20_000),
        )?;
    }
    if let Some(h) = &args.hold {
        cfg.hold = pollcap::settings::parse_seconds("--hold", h).map_err(|e| e.to_string())?;
    }
    Ok(cfg)
}

fn bench(args: BenchArgs) -> ExitCode {
    let cfg = match bench_config(args) {
        Ok(cfg) => cfg,
        Err(e) => return fail(e),
    };
    // The idle runs hold up to 10 000 client sockets in this process.
    let _ = pollcap::platform::raise_fd_limit();
    let mut log = |line: &str| eprintln!("bench: {line}");
    match pollcap::bench::run(&cfg, &mut log) {
        Ok(report) => {
            print!("{report}");
            eprintln!("bench: wrote {}", cfg.out_dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pollcap: bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(args: ProbeArgs) -> ExitCode {
    use pollcap::client::{ClientConfig, parse_url};
    use pollcap::settings::parse_seconds;
    if let Err(e) = parse_url(&args.url) {
        return fail(e.to_string());
    }
    let mut cfg = ClientConfig {
        max_attempts: args.attempts.max(1),
        ..ClientConfig::default()
    };
    let connect = args
        .connect_timeout
        .split(',')
        .map(|part| parse_seconds("--connect-timeout", part.trim()))
        .collect::<Result<Vec<_>, _>>();
    match connect {
        Ok(list) => cfg.connect_timeouts = list,
        Err(e) => return fail(e.to_string()),
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
    ] {
        match parse_seconds(name, value) {
            Ok(d) => *slot = d,
            Err(e) => return fail(e.to_string()),
        }
    }
    if let Some(t) = &args.token {
        cfg = cfg.bearer(t);
    }
    let report = pollcap::probe::probe(&args.url, cfg, &args.text);
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn load(mode: LoadMode, url: &str, pid: Option<u32>, json: bool) -> ExitCode {
    use pollcap::load;
    let us =
        |d: Option<std::time::Duration>, n: u64| d.map(|d| d.as_secs_f64() * 1e6 / n.max(1) as f64);
    let result = match mode {
        LoadMode::Echo {
            connections,
            size,
            duration,
        } => load::echo(
            url,
            connections,
            size,
            std::time::Duration::from_secs_f64(duration),
            pid,
        )
        .map(|r| {
            serde_json::json!({
                "mode": "echo", "connections": connections, "size": size,
                "messages": r.messages, "seconds": r.elapsed.as_secs_f64(),
                "messages_per_sec": r.messages as f64 / r.elapsed.as_secs_f64(),
                "p50_us": r.p50_us, "p99_us": r.p99_us, "p999_us": r.p999_us,
                "errors": r.errors,
                "server_cpu_us_per_message": us(r.server_cpu, r.messages),
            })
        }),
        LoadMode::Agent {
            connections,
            duration,
            token,
        } => load::agent(
            url,
            token.as_deref(),
            connections,
            std::time::Duration::from_secs_f64(duration),
            pid,
        )
        .map(|r| {
            serde_json::json!({
                "mode": "agent", "connections": connections,
                "runs": r.runs, "events": r.events, "seconds": r.elapsed.as_secs_f64(),
                "runs_per_sec": r.runs as f64 / r.elapsed.as_secs_f64(),
                "event_p50_us": r.event_p50_us, "event_p99_us": r.event_p99_us,
                "run_p50_us": r.run_p50_us, "run_p99_us": r.run_p99_us,
                "incomplete": r.incomplete,
                "server_cpu_us_per_run": us(r.server_cpu, r.runs),
            })
        }),
        LoadMode::Storm { count, parallel } => load::storm(url, count, parallel, pid).map(|r| {
            serde_json::json!({
                "mode": "storm", "parallel": parallel,
                "handshakes": r.handshakes, "seconds": r.elapsed.as_secs_f64(),
                "handshakes_per_sec": r.handshakes as f64 / r.elapsed.as_secs_f64(),
                "p50_us": r.p50_us, "p99_us": r.p99_us, "errors": r.errors,
                "server_cpu_us_per_handshake": us(r.server_cpu, r.handshakes),
            })
        }),
        LoadMode::Idle { count, hold } => load::idle(
            url,
            count,
            std::time::Duration::from_secs_f64(hold),
            pid,
        )
        .map(|r| {
            serde_json::json!({
                "mode": "idle", "connections": r.connections,
                "server_rss_before_bytes": r.rss_before, "server_rss_after_bytes": r.rss_after,
                "server_kib_per_connection": r.bytes_per_connection().map(|b| b / 1024.0),
                "server_cpu_ms_while_idle": r.server_cpu_while_idle.map(|d| d.as_secs_f64() * 1e3),
                "hold_seconds": r.hold.as_secs_f64(),
                "server_wakeups_per_sec": r.wakeups_per_sec,
            })
        }),
    };
    match result {
        Ok(j) => {
            if json {
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

fn token(sub: &str, ttl: &str) -> ExitCode {
    let Ok(secret) = std::env::var("POLLCAP_JWT_SECRET") else {
        eprintln!(
            "pollcap: POLLCAP_JWT_SECRET is not set (rule: tokens are signed with the server's secret)"
        );
        return ExitCode::from(2);
    };
    if secret.len() < 16 {
        eprintln!(
            "pollcap: invalid setting POLLCAP_JWT_SECRET=<hidden>: must be at least 16 bytes long"
        );
        return ExitCode::from(2);
    }
    let Some(ttl_secs) = pollcap::auth::parse_ttl(ttl) else {
        eprintln!(
            "pollcap: invalid setting --ttl={ttl:?}: must be a positive duration like 90, 90s, 15m, 1h or 7d"
        );
        return ExitCode::from(2);
    };
    let now = pollcap::app::unix_ms() / 1000;
    println!(
        "{}",
        pollcap::auth::mint(secret.as_bytes(), sub, now, ttl_secs)
    );
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Config { settings, json } => {
            let s = match settings.resolve() {
                Ok(s) => s,
                Err(code) => return code,
            };
            tracing::debug!("resolved settings: {}", s.summary());
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s.to_json()).expect("json")
                );
            } else {
                print_table(&s);
            }
            ExitCode::SUCCESS
        }
        Command::Load {
            mode,
            url,
            server_pid,
            json,
        } => load(mode, &url, server_pid, json),
        Command::Token { sub, ttl } => token(&sub, &ttl),
        Command::Probe(args) => probe(args),
        Command::Bench(args) => bench(args),
        Command::Serve { settings, server } => match settings.resolve() {
            Ok(s) => serve(s, server),
            Err(code) => code,
        },
    }
}
