//! The run store's configuration values (settings `store` and
//! `resume_*`): where events are kept and how much. Plain values, parsed
//! and checked here; the store itself (`crate::store`) starts from them.

use std::fmt;
use std::time::Duration;

use super::ConfigError;

/// Where events are kept (setting `store`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// Nothing is kept: a lost connection cancels its runs (as before
    /// resume existed), and every resume is refused.
    Off,
    /// In this process (`memory`, the default): lost with it.
    Memory,
    /// Redis Streams (`redis://…`), shared by every instance.
    Redis(RedisTarget),
}

impl StoreKind {
    /// `memory`, `off`, or `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`;
    /// `Err` is the rule.
    pub fn parse(v: &str) -> Result<StoreKind, String> {
        match v.trim() {
            "memory" => Ok(StoreKind::Memory),
            "off" => Ok(StoreKind::Off),
            url if url.starts_with("redis://") => RedisTarget::parse(url).map(StoreKind::Redis),
            _ => Err("must be memory, off or redis://HOST:PORT[/DB]".into()),
        }
    }

    /// `off`, `memory` or `redis` (without the address).
    pub fn name(&self) -> &'static str {
        match self {
            StoreKind::Off => "off",
            StoreKind::Memory => "memory",
            StoreKind::Redis(_) => "redis",
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreKind::Redis(t) => f.write_str(&t.shown),
            other => f.write_str(other.name()),
        }
    }
}

/// A Redis server: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, port
/// 6379 by default. No TLS (`rediss://`): keep Redis on a private network.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// As given (it may hold a password: never shown).
    pub url: String,
    /// With the password replaced by `***`.
    pub shown: String,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl RedisTarget {
    fn parse(url: &str) -> Result<RedisTarget, String> {
        let rule = "must be redis://HOST:PORT[/DB] (optionally with USER:PASSWORD@ before HOST; \
                    DB a number 0-15, PORT 1-65535)";
        let rest = url.strip_prefix("redis://").ok_or(rule)?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, None),
            Some((h, d)) => (h, Some(d)),
            None => (rest, None),
        };
        if let Some(db) = db
            && !db.parse::<u8>().is_ok_and(|n| n < 16)
        {
            return Err(rule.into());
        }
        let (host, port) = match hostport.rsplit_once(':') {
            // An IPv6 literal without a port: [::1]
            Some((h, p)) if !p.ends_with(']') => (h, Some(p)),
            _ => (hostport, None),
        };
        if host.is_empty() || host.contains(['/', '?', '#', ' ']) {
            return Err(rule.into());
        }
        if let Some(p) = port
            && !p.parse::<u16>().is_ok_and(|n| n > 0)
        {
            return Err(rule.into());
        }
        let shown = match auth {
            Some(a) => {
                let user = a.split_once(':').map_or("", |(u, _)| u);
                format!("redis://{user}:***@{rest}")
            }
            None => url.to_string(),
        };
        Ok(RedisTarget {
            url: url.to_string(),
            shown,
        })
    }
}

/// How long and how much the store keeps (the `resume_*` settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeLimits {
    /// Kept this long after a run's last event.
    pub window: Duration,
    /// Most events kept per run (the oldest go first).
    pub run_events: usize,
    /// Most event bytes kept per run (memory store).
    pub run_bytes: usize,
    /// Most events kept in all (memory store).
    pub total_events: usize,
    /// Most bytes kept in all, records included (memory store).
    pub total_bytes: usize,
}

impl ResumeLimits {
    /// A run must fit in the total, or it could never be kept whole.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.run_events > self.total_events {
            return Err(ConfigError::rule(format!(
                "resume_run_events ({}) must be <= resume_total_events ({})",
                self.run_events, self.total_events
            )));
        }
        if self.run_bytes > self.total_bytes {
            return Err(ConfigError::rule(format!(
                "resume_run_bytes ({}) must be <= resume_total_bytes ({})",
                self.run_bytes, self.total_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_values_parse_or_name_the_rule() {
        assert_eq!(StoreKind::parse("memory"), Ok(StoreKind::Memory));
        assert_eq!(StoreKind::parse(" off "), Ok(StoreKind::Off));
        for ok in [
            "redis://127.0.0.1:6379",
            "redis://redis:6380/2",
            "redis://localhost",
            "redis://:secret@r.internal:6379/0",
            "redis://[::1]:6379",
        ] {
            assert!(StoreKind::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "mem",
            "redis://",
            "redis://h:0",
            "redis://h:port",
            "redis://h:6379/16",
            "redis://h:6379/x",
            "rediss://h:6379",
            "http://h",
        ] {
            let e = StoreKind::parse(bad).unwrap_err();
            assert!(e.starts_with("must be"), "{bad}: {e}");
        }
        let k = StoreKind::parse("redis://app:hunter2@r:6379/1").unwrap();
        assert_eq!(k.to_string(), "redis://app:***@r:6379/1");
        assert!(!format!("{k:?}").contains("hunter2"));
    }

    #[test]
    fn limits_must_let_one_run_fit_in_the_total() {
        let ok = ResumeLimits {
            window: Duration::from_secs(300),
            run_events: 10,
            run_bytes: 100,
            total_events: 10,
            total_bytes: 100,
        };
        assert!(ok.validate().is_ok());
        let e = ResumeLimits {
            run_bytes: 101,
            ..ok
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("resume_run_bytes (101)"), "{e}");
        let e = ResumeLimits {
            run_events: 11,
            ..ok
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("resume_total_events (10)"), "{e}");
    }
}
