//! The `pollcap` binary: argument parsing and dispatch. The server is the
//! library's; the tools (`probe`, `load`, `bench`) live here, outside it.
//! The server's flags are generated from the settings' declarations
//! (`pollcap::settings::DECLS`), never declared a second time.

mod bench;
mod child;
mod load;
mod logs;
mod probe;
mod serve;
mod sys;

use std::process::ExitCode;

use clap::{Arg, ArgAction, ArgMatches, Parser, Subcommand};

use pollcap::settings::{DECLS, Decl, Kind, LogFormat, Settings, display};

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
    /// Print the resolved settings (profile, environment, backend, cap,
    /// timeouts, limits, server, auth).
    Config {
        #[command(flatten)]
        settings: SettingsArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Load a server on loopback: echo, agent runs, handshake storm, or
    /// idle connections.
    Load(load::LoadArgs),
    /// Check a live endpoint: one agent_chat exchange, timed phase by phase,
    /// with a verdict; exit 0 only if everything arrived in time.
    Probe(probe::ProbeArgs),
    /// Compare cap strategies × backends on this machine (SPEC §9): writes
    /// report.md, bench.json and SVG charts.
    Bench(bench::BenchArgs),
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
    },
}

/// The settings' flags as given: `(setting name, value)` pairs. Values
/// stay strings so that a bad one is reported with the flag's name and
/// rule by `Settings::resolve`.
#[derive(Clone, Debug, Default)]
struct SettingsArgs(Vec<(&'static str, String)>);

/// One clap argument for a declared setting.
fn arg_for(d: &'static Decl, flag: &'static str) -> Arg {
    let help = match d.env {
        Some(env) => format!("{} [env: {env}]", d.help),
        None => d.help.to_string(),
    };
    let arg = Arg::new(d.name).long(flag).help(help);
    match d.kind {
        Kind::Switch => arg.action(ArgAction::SetTrue),
        Kind::Value => arg.value_name(d.value_name).allow_hyphen_values(true),
    }
}

impl clap::Args for SettingsArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        DECLS.iter().fold(cmd, |cmd, d| match d.flag {
            Some(flag) => cmd.arg(arg_for(d, flag)),
            None => cmd,
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for SettingsArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut given = Vec::new();
        for d in DECLS.iter().filter(|d| d.flag.is_some()) {
            match d.kind {
                Kind::Switch if m.get_flag(d.name) => given.push((d.name, "true".to_string())),
                Kind::Value => {
                    if let Some(v) = m.get_one::<String>(d.name) {
                        given.push((d.name, v.clone()));
                    }
                }
                Kind::Switch => {}
            }
        }
        Ok(SettingsArgs(given))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl SettingsArgs {
    /// Resolves settings or exits 2 with the one-line error.
    fn resolve(&self) -> Result<Settings, ExitCode> {
        let flags: Vec<(&str, String)> = self.0.iter().map(|(n, v)| (*n, v.clone())).collect();
        Settings::from_process(&flags).map_err(|e| fail(e.to_string()))
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

/// `pollcap config`: every shown setting with where it can be set.
fn print_table(s: &Settings) {
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
    for d in DECLS {
        let Some(v) = (d.show)(s) else { continue };
        let from: Vec<String> = d
            .flag_text()
            .into_iter()
            .chain(d.env.map(String::from))
            .collect();
        println!(
            "{:<20} {:<16} ({})",
            d.name,
            display(d, &v),
            from.join(" / ")
        );
    }
}

fn token(sub: &str, ttl: &str) -> ExitCode {
    let settings = match SettingsArgs::default().resolve() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let Some(secret) = settings.jwt_secret else {
        return fail(
            "POLLCAP_JWT_SECRET is not set (rule: tokens are signed with the server's secret)"
                .into(),
        );
    };
    let Some(ttl_secs) = pollcap::auth::parse_ttl(ttl) else {
        return fail(format!(
            "invalid setting --ttl={ttl:?}: must be a positive duration like 90, 90s, 15m, 1h or 7d"
        ));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!("{}", pollcap::auth::mint(&secret.0, sub, now, ttl_secs));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let command = Cli::parse().command;
    // The server's log follows its settings (`log_format`); the tools log
    // as text. A settings error is printed before any log exists.
    let settings = match &command {
        Command::Serve { settings } => match settings.resolve() {
            Ok(s) => Some(s),
            Err(code) => return code,
        },
        _ => None,
    };
    let format = settings
        .as_ref()
        .map_or(LogFormat::Text, |s| s.log_format.resolved(&s.environment));
    let (_flushed_on_drop, log_dropped) = logs::init(format);
    if let Some(s) = settings {
        return serve::run(s, log_dropped);
    }
    match command {
        Command::Config { settings, json } => {
            let s = match settings.resolve() {
                Ok(s) => s,
                Err(code) => return code,
            };
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
        Command::Load(args) => load::command(args),
        Command::Token { sub, ttl } => token(&sub, &ttl),
        Command::Probe(args) => probe::command(args),
        Command::Bench(args) => bench::command(args),
        Command::Serve { .. } => ExitCode::SUCCESS, // served above
    }
}
