//! The `Timeouts` value: every phase deadline of SPEC §2/§3, the four built-in
//! profiles, and the hierarchy rules they must satisfy.

use std::fmt;
use std::time::Duration;

use super::ConfigError;

/// A named set of built-in defaults (SPEC §3 table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Local,
    Testing,
    Staging,
    Production,
}

impl Profile {
    pub const ALL: [Profile; 4] = [
        Profile::Local,
        Profile::Testing,
        Profile::Staging,
        Profile::Production,
    ];

    /// Parses an `ENVIRONMENT` value; `development` is an alias of `local`.
    pub fn parse(value: &str) -> Option<Profile> {
        match value.trim().to_ascii_lowercase().as_str() {
            "local" | "development" | "dev" => Some(Profile::Local),
            "testing" | "test" => Some(Profile::Testing),
            "staging" => Some(Profile::Staging),
            "production" | "prod" => Some(Profile::Production),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Local => "local",
            Profile::Testing => "testing",
            Profile::Staging => "staging",
            Profile::Production => "production",
        }
    }

    /// The profile's timeouts, exactly as in the SPEC §3 table (seconds).
    pub fn timeouts(self) -> Timeouts {
        let s = Duration::from_secs;
        match self {
            Profile::Local => Timeouts {
                connect: s(2),
                handshake: s(3),
                ping: s(2),
                heartbeat_interval: s(5),
                heartbeat_timeout: s(15),
                stale: s(60),
                connection: s(360),
                close: s(1),
                cleanup_interval: s(30),
                execution: s(15),
            },
            Profile::Testing => Timeouts {
                connect: s(5),
                handshake: s(5),
                ping: s(5),
                heartbeat_interval: s(10),
                heartbeat_timeout: s(30),
                stale: s(120),
                connection: s(360),
                close: s(5),
                cleanup_interval: s(60),
                execution: s(15),
            },
            Profile::Staging => Timeouts {
                connect: s(10),
                handshake: s(15),
                ping: s(5),
                heartbeat_interval: s(15),
                heartbeat_timeout: s(45),
                stale: s(360),
                connection: s(360),
                close: s(10),
                cleanup_interval: s(120),
                execution: s(30),
            },
            Profile::Production => Timeouts {
                connect: s(10),
                handshake: s(15),
                ping: s(5),
                heartbeat_interval: s(15),
                heartbeat_timeout: s(45),
                stale: s(360),
                connection: s(3300),
                close: s(10),
                cleanup_interval: s(120),
                execution: s(300),
            },
        }
    }

    /// Circuit-breaker defaults per profile (failure threshold, recovery time).
    pub fn breaker(self) -> (u32, Duration) {
        match self {
            Profile::Local => (10, Duration::from_secs(5)),
            Profile::Testing => (5, Duration::from_secs(10)),
            Profile::Staging => (3, Duration::from_secs(15)),
            Profile::Production => (5, Duration::from_secs(10)),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every duration the server enforces, validated as one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub handshake: Duration,
    pub ping: Duration,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub stale: Duration,
    pub connection: Duration,
    pub close: Duration,
    pub cleanup_interval: Duration,
    pub execution: Duration,
}

/// One settable timeout: its name, environment variable and CLI flag.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutField {
    pub name: &'static str,
    pub env: &'static str,
    pub flag: &'static str,
    pub get: fn(&Timeouts) -> Duration,
    pub set: fn(&mut Timeouts, Duration),
}

macro_rules! field {
    ($name:ident, $env:literal, $flag:literal) => {
        TimeoutField {
            name: stringify!($name),
            env: $env,
            flag: $flag,
            get: |t| t.$name,
            set: |t, d| t.$name = d,
        }
    };
}

/// All timeouts in SPEC table order; the single source for env vars, flags,
/// `pollcap config` output and the start-up log line.
pub const FIELDS: [TimeoutField; 10] = [
    field!(connect, "WEBSOCKET_CONNECT_TIMEOUT", "--connect-timeout"),
    field!(
        handshake,
        "WEBSOCKET_HANDSHAKE_TIMEOUT",
        "--handshake-timeout"
    ),
    field!(ping, "WEBSOCKET_PING_TIMEOUT", "--ping-timeout"),
    field!(
        heartbeat_interval,
        "WEBSOCKET_HEARTBEAT_INTERVAL",
        "--heartbeat-interval"
    ),
    field!(
        heartbeat_timeout,
        "WEBSOCKET_HEARTBEAT_TIMEOUT",
        "--heartbeat-timeout"
    ),
    field!(stale, "WEBSOCKET_STALE_TIMEOUT", "--stale-timeout"),
    field!(
        connection,
        "WEBSOCKET_CONNECTION_TIMEOUT",
        "--connection-timeout"
    ),
    field!(close, "WEBSOCKET_CLOSE_TIMEOUT", "--close-timeout"),
    field!(
        cleanup_interval,
        "WEBSOCKET_CLEANUP_INTERVAL",
        "--cleanup-interval"
    ),
    field!(execution, "AGENT_EXECUTION_TIMEOUT", "--execution-timeout"),
];

/// Parses a positive number of seconds (decimals allowed) from `source`
/// (an env var or flag name, used in the error).
pub fn parse_seconds(source: &str, value: &str) -> Result<Duration, ConfigError> {
    let rule = "must be a number of seconds > 0 (decimals allowed, e.g. 0.5)";
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(source, value, rule))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(ConfigError::new(source, value, rule));
    }
    // A year is far beyond any sane deadline and keeps Instant arithmetic safe.
    if secs > 365.0 * 86_400.0 {
        return Err(ConfigError::new(
            source,
            value,
            "must be at most one year (31536000 s)",
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Timeouts {
    /// Checks the SPEC §3 hierarchy; the error names both settings and values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for f in FIELDS {
            if (f.get)(self).is_zero() {
                return Err(ConfigError::new(f.name, "0", "every timeout must be > 0"));
            }
        }
        let t = self;
        let rules: [(&str, Duration, &str, Duration, bool); 6] = [
            ("connect", t.connect, "handshake", t.handshake, false),
            (
                "ping",
                t.ping,
                "heartbeat_interval",
                t.heartbeat_interval,
                true,
            ),
            (
                "heartbeat_interval",
                t.heartbeat_interval,
                "heartbeat_timeout",
                t.heartbeat_timeout,
                true,
            ),
            (
                "heartbeat_timeout",
                t.heartbeat_timeout,
                "stale",
                t.stale,
                false,
            ),
            ("stale", t.stale, "connection", t.connection, false),
            // Not in the SPEC list but implied by its table: a connect phase
            // longer than the whole connection lifetime would be meaningless.
            ("handshake", t.handshake, "connection", t.connection, false),
        ];
        for (a, av, b, bv, strict) in rules {
            let ok = if strict { av < bv } else { av <= bv };
            if !ok {
                let op = if strict { "<" } else { "<=" };
                return Err(ConfigError::rule(format!(
                    "{a} ({}) must be {op} {b} ({}): rule {a} {op} {b}",
                    secs(av),
                    secs(bv)
                )));
            }
        }
        Ok(())
    }
}

/// Formats a duration as seconds without trailing noise (`0.5s`, `15s`).
pub fn secs(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 && d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_satisfies_its_own_hierarchy() {
        for p in Profile::ALL {
            p.timeouts()
                .validate()
                .unwrap_or_else(|e| panic!("{p}: {e}"));
        }
    }

    #[test]
    fn parse_seconds_accepts_decimals_and_rejects_garbage() {
        assert_eq!(
            parse_seconds("X", "0.5").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_seconds("X", " 15 ").unwrap(), Duration::from_secs(15));
        for bad in ["", "abc", "-1", "0", "0.0", "NaN", "inf", "1e12", "5s"] {
            let e = parse_seconds("WEBSOCKET_PING_TIMEOUT", bad).unwrap_err();
            assert!(e.to_string().contains("WEBSOCKET_PING_TIMEOUT"), "{e}");
        }
    }

    #[test]
    fn secs_formats_whole_and_fractional() {
        assert_eq!(secs(Duration::from_secs(15)), "15s");
        assert_eq!(secs(Duration::from_millis(500)), "0.5s");
    }
}
