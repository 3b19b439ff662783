//! Resolved settings: profile < environment variables < command-line flags,
//! validated once at start-up (SPEC §3). Nothing here reads the process
//! environment directly; callers pass a lookup so tests stay hermetic.

mod detect;
mod timeouts;

use std::fmt;
use std::net::SocketAddr;

pub use detect::{CloudPlatform, Environment};
pub use timeouts::{FIELDS, Profile, TimeoutField, Timeouts, parse_seconds, secs};

use crate::reactor::{BackendKind, CapStrategy};

/// Default listen address when neither `--listen`, `POLLCAP_LISTEN` nor `PORT` is set.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8765";

/// A start-up configuration error: one line naming the setting, value and rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub fn new(setting: &str, value: &str, rule: &str) -> ConfigError {
        ConfigError {
            message: format!("invalid setting {setting}={value:?}: {rule}"),
        }
    }

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

/// Values given on the command line (strings, so errors can quote them).
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub profile: Option<String>,
    pub backend: Option<String>,
    pub poll_cap: Option<String>,
    pub listen: Option<String>,
    /// In [`FIELDS`] order.
    pub timeouts: [Option<String>; 10],
}

/// Everything the reactor and server need to start, validated.
#[derive(Clone, Debug)]
pub struct Settings {
    pub profile: Profile,
    pub environment: Environment,
    pub backend: BackendKind,
    pub poll_cap: CapStrategy,
    pub timeouts: Timeouts,
    pub listen: SocketAddr,
}

impl Settings {
    /// Resolves from the real process environment.
    pub fn from_process(flags: &Overrides) -> Result<Settings, ConfigError> {
        Settings::resolve(&|k| std::env::var(k).ok(), flags)
    }

    /// Resolves from an environment lookup `get` and command-line `flags`.
    pub fn resolve(
        get: &dyn Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<Settings, ConfigError> {
        let profile = resolve_profile(get, flags)?;
        let environment = Environment::detect(get);

        let mut timeouts = profile.timeouts();
        for (i, field) in FIELDS.iter().enumerate() {
            if let Some(v) = get(field.env) {
                (field.set)(&mut timeouts, parse_seconds(field.env, &v)?);
            }
            if let Some(v) = &flags.timeouts[i] {
                (field.set)(&mut timeouts, parse_seconds(field.flag, v)?);
            }
        }
        timeouts.validate()?;

        let backend = match (&flags.backend, get("POLLCAP_BACKEND")) {
            (Some(v), _) => parse_backend("--backend", v)?,
            (None, Some(v)) => parse_backend("POLLCAP_BACKEND", &v)?,
            (None, None) => BackendKind::Mio,
        };

        let poll_cap = match (&flags.poll_cap, get("POLLCAP_POLL_CAP_MS")) {
            (Some(v), _) => parse_cap("--poll-cap", v)?,
            (None, Some(v)) => parse_cap("POLLCAP_POLL_CAP_MS", &v)?,
            // The default shrinks to fit short deadlines instead of failing:
            // the user never chose it. An explicit cap is checked below.
            (None, None) => match CapStrategy::default_for(&environment) {
                CapStrategy::Fixed(d) => {
                    CapStrategy::Fixed(d.min(timeouts.ping).min(timeouts.close))
                }
                other => other,
            },
        };
        if let Some(cap) = poll_cap.limit() {
            let bound = timeouts.ping.min(timeouts.close);
            if cap > bound {
                return Err(ConfigError::rule(format!(
                    "poll cap ({}) must be <= min(ping, close) ({}): a longer cap would let \
                     those deadlines slip; lower the cap or use 'off'",
                    secs(cap),
                    secs(bound)
                )));
            }
        }

        let listen = match (&flags.listen, get("POLLCAP_LISTEN"), get("PORT")) {
            (Some(v), _, _) => parse_listen("--listen", v)?,
            (None, Some(v), _) => parse_listen("POLLCAP_LISTEN", &v)?,
            (None, None, Some(port)) => {
                let p: u16 = port.trim().parse().map_err(|_| {
                    ConfigError::new("PORT", &port, "must be a TCP port number 0-65535")
                })?;
                SocketAddr::from(([0, 0, 0, 0], p))
            }
            (None, None, None) => DEFAULT_LISTEN.parse().expect("valid default"),
        };

        Ok(Settings {
            profile,
            environment,
            backend,
            poll_cap,
            timeouts,
            listen,
        })
    }

    /// Settings as JSON (for `pollcap config --json` and `/health`).
    pub fn to_json(&self) -> serde_json::Value {
        let mut t = serde_json::Map::new();
        for f in FIELDS {
            t.insert(f.name.into(), (f.get)(&self.timeouts).as_secs_f64().into());
        }
        serde_json::json!({
            "profile": self.profile.name(),
            "environment": {
                "label": self.environment.label(),
                "windows": self.environment.windows,
                "cloud": self.environment.cloud.map(|c| c.name()),
                "cloud_container": self.environment.is_cloud_container(),
            },
            "backend": self.backend.name(),
            "poll_cap": self.poll_cap.to_string(),
            "poll_cap_ms": self.poll_cap.limit().map(|d| d.as_secs_f64() * 1000.0),
            "listen": self.listen.to_string(),
            "timeouts_s": t,
        })
    }

    /// One human-readable line with every resolved value (the start-up log line).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "environment={} profile={} backend={} poll_cap={} listen={}",
            self.environment,
            self.profile,
            self.backend.name(),
            self.poll_cap,
            self.listen
        );
        for f in FIELDS {
            s.push_str(&format!(" {}={}", f.name, secs((f.get)(&self.timeouts))));
        }
        s
    }
}

fn resolve_profile(
    get: &dyn Fn(&str) -> Option<String>,
    flags: &Overrides,
) -> Result<Profile, ConfigError> {
    let rule = "must be one of local, development, testing, staging, production";
    if let Some(v) = &flags.profile {
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

fn parse_backend(source: &str, v: &str) -> Result<BackendKind, ConfigError> {
    BackendKind::parse(v).ok_or_else(|| ConfigError::new(source, v, "must be mio or polling"))
}

fn parse_cap(source: &str, v: &str) -> Result<CapStrategy, ConfigError> {
    CapStrategy::parse(v).ok_or_else(|| {
        ConfigError::new(
            source,
            v,
            "must be a whole number of milliseconds (0 = spin) or 'off' (unbounded)",
        )
    })
}

fn parse_listen(source: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.trim()
        .parse()
        .map_err(|_| ConfigError::new(source, v, "must be IP:PORT, e.g. 127.0.0.1:8765"))
}

#[cfg(test)]
mod tests;
