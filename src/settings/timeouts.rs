//! The `Timeouts` value: every phase deadline of SPEC §2/§3, the four built-in
//! profiles, and the hierarchy rules they must satisfy.

use std::fmt;
use std::time::Duration;

use super::ConfigError;

/// A named set of built-in defaults (SPEC §3 table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// `local` (also `development`, `dev`): generous deadlines for a laptop.
    Local,
    /// `testing` (also `test`).
    Testing,
    /// `staging`.
    Staging,
    /// `production` (also `prod`): the tightest deadlines.
    Production,
}

impl Profile {
    /// Every profile, in the order of a declaration's per-profile defaults.
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

    /// The profile's name, as `ENVIRONMENT` and `--profile` take it.
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
    /// TCP accept → first request byte (`--connect-timeout`,
    /// `WEBSOCKET_CONNECT_TIMEOUT`); past it the socket is dropped without an
    /// answer.
    pub connect: Duration,
    /// TCP accept → the whole 101 written, TLS included (`--handshake-timeout`);
    /// past it: 408 while the request head is awaited or decided; dropped
    /// if TLS has not finished, or while the 101 is being written.
    pub handshake: Duration,
    /// After the server's Ping, how long the peer may stay silent
    /// (`--ping-timeout`); past it: close 1011 "keepalive ping timeout".
    pub ping: Duration,
    /// Inbound silence before the server sends a Ping (`--heartbeat-interval`;
    /// jittered per connection, so pings do not line up).
    pub heartbeat_interval: Duration,
    /// Inbound silence, any byte counting, before close 1001 "heartbeat
    /// timeout" (`--heartbeat-timeout`).
    pub heartbeat_timeout: Duration,
    /// Time without an application message either way before close 1001
    /// "idle" (`--stale-timeout`).
    pub stale: Duration,
    /// A WebSocket connection's longest life (`--connection-timeout`); then
    /// close 1001 "max lifetime".
    pub connection: Duration,
    /// The closing handshake, and a response's lingering close
    /// (`--close-timeout`); past it the socket is dropped.
    pub close: Duration,
    /// Period of the audit sweep (`--cleanup-interval`), which finds
    /// connections whose deadline was missed and counts them
    /// (`pollcap_missed_deadlines_total`, which must stay 0).
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
