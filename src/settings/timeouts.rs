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

    /// The profile's timeouts, exactly as in the SPEC §3 table (declared
    /// in [`super::DECLS`]).
    pub fn timeouts(self) -> Timeouts {
        super::Settings::defaults(self).timeouts
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
    /// A run's whole life, whatever its source.
    pub execution: Duration,
    /// Upstream agent: DNS, TCP and TLS.
    pub agent_connect: Duration,
    /// Upstream agent: the request to the response head.
    pub agent_response: Duration,
    /// Upstream agent: the longest gap between two reads.
    pub agent_idle: Duration,
}

impl Timeouts {
    /// An upstream wait longer than the whole run could never end it: each
    /// agent deadline `<= execution` (checked when an agent is set).
    pub fn validate_agent(&self) -> Result<(), ConfigError> {
        let t = self;
        for (a, av) in [
            ("agent_connect", t.agent_connect),
            ("agent_response", t.agent_response),
            ("agent_idle", t.agent_idle),
        ] {
            if av > t.execution {
                return Err(ConfigError::rule(format!(
                    "{a} ({}) must be <= execution ({}): rule {a} <= execution",
                    secs(av),
                    secs(t.execution)
                )));
            }
        }
        Ok(())
    }

    /// Checks the SPEC §3 hierarchy; the error names both settings and values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = self;
        let all = [
            ("connect", t.connect),
            ("handshake", t.handshake),
            ("ping", t.ping),
            ("heartbeat_interval", t.heartbeat_interval),
            ("heartbeat_timeout", t.heartbeat_timeout),
            ("stale", t.stale),
            ("connection", t.connection),
            ("close", t.close),
            ("cleanup_interval", t.cleanup_interval),
            ("execution", t.execution),
            ("agent_connect", t.agent_connect),
            ("agent_response", t.agent_response),
            ("agent_idle", t.agent_idle),
        ];
        for (name, d) in all {
            if d.is_zero() {
                return Err(ConfigError::new(name, "0", "every timeout must be > 0"));
            }
        }
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
    fn seconds_accepts_decimals_and_rejects_garbage() {
        use super::super::seconds;
        assert_eq!(seconds("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(seconds(" 15 ").unwrap(), Duration::from_secs(15));
        for bad in ["", "abc", "-1", "0", "0.0", "NaN", "inf", "1e12", "5s"] {
            assert!(seconds(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secs_formats_whole_and_fractional() {
        assert_eq!(secs(Duration::from_secs(15)), "15s");
        assert_eq!(secs(Duration::from_millis(500)), "0.5s");
    }
}
