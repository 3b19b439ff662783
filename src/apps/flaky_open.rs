//! `flaky-open`: a diagnostic application for exercising the circuit
//! breaker and alerting end to end.

use crate::app::{Handler, Inbound, Outbox, Session};

use super::agent_chat::AgentChat;

/// A diagnostic application: its first `failures` session opens fail (a
/// server fault: HTTP 500, counted by the circuit breaker), then it behaves
/// exactly as `agent_chat`. For exercising the breaker and alerting end to
/// end (`pollcap serve --app flaky-open --fail-opens N`).
pub struct FlakyOpen {
    pub remaining: std::sync::atomic::AtomicU32,
    pub inner: AgentChat,
}

impl Handler for FlakyOpen {
    fn name(&self) -> &'static str {
        "flaky-open"
    }

    fn subprotocols(&self) -> &'static [&'static str] {
        self.inner.subprotocols()
    }

    fn open(&self, _session: &Session) -> Result<(), String> {
        use std::sync::atomic::Ordering::Relaxed;
        let failing = self
            .remaining
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            Err("flaky-open: simulated start-up failure".into())
        } else {
            Ok(())
        }
    }

    fn message(&self, session: &Session, input: Inbound, out: &Outbox) {
        self.inner.message(session, input, out)
    }

    fn resumable(&self) -> bool {
        self.inner.resumable()
    }
}
