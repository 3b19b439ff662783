//! `flaky-open`: a diagnostic application for exercising the circuit
//! breaker and alerting end to end.

use crate::app::{Decision, Handler, Inbound, Outbox, Request, Session};

use super::agent_chat::AgentChat;

/// A diagnostic application: its first `remaining` session opens fail
/// ([`Decision::Fail`], a server fault: HTTP 500, counted by the circuit
/// breaker), then it behaves exactly as `agent_chat`. For exercising the breaker and alerting end to
/// end (`pollcap serve --app flaky-open --fail-opens N`).
pub struct FlakyOpen {
    /// Opens left to fail.
    pub remaining: std::sync::atomic::AtomicU32,
    /// What it is once they are over.
    pub inner: AgentChat,
}

impl Handler for FlakyOpen {
    fn name(&self) -> &'static str {
        "flaky-open"
    }

    fn subprotocols(&self) -> &'static [&'static str] {
        self.inner.subprotocols()
    }

    fn open(&self, _request: &Request) -> Decision {
        use std::sync::atomic::Ordering::Relaxed;
        let failing = self
            .remaining
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            Decision::Fail("flaky-open: simulated start-up failure".into())
        } else {
            Decision::Accept
        }
    }

    fn message(&self, session: &Session, input: Inbound, out: &Outbox) {
        self.inner.message(session, input, out)
    }

    fn resumable(&self) -> bool {
        self.inner.resumable()
    }
}
