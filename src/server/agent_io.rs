//! Agent runs on this reactor, the worker's side of
//! `crate::source::upstream`: starting a run's call (the breaker, the
//! request, the name), driving it on readiness and its timer, handing its
//! outputs to the run layer, and closing it when the run layer says stop
//! (the agent then sees its client go). The agent's circuit breaker is
//! shared by every reactor.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::Shared;
use super::agents::{AGENT, AgentStart, PROCESS, Running};
use super::worker::Worker;
use crate::breaker::Permit;
use crate::reactor::Interest;
use crate::runs::{Failure, Mail, SourceEvent};
use crate::source::upstream::call::{Blame, Call, Output};
use crate::source::upstream::resolve::{Lookup, Unresolved};

impl Worker {
    /// Starts the agent runs asked for during the last drive.
    pub(super) fn start_agents(&mut self, now: Instant) {
        for s in std::mem::take(&mut self.agent_starts) {
            self.start_agent(s, now);
        }
    }

    fn start_agent(&mut self, s: AgentStart, now: Instant) {
        let sh = self.shared.clone();
        if let Some(cmd) = sh.cfg.command.clone() {
            return self.start_process(cmd, s, now); // `--agent-cmd`: see `processes`
        }
        let Some(cfg) = sh.cfg.upstream.clone() else {
            let m = "no agent is configured (--agent-url)".into();
            return self.agent_failed(s.run, unavailable(m, None), now);
        };
        let permit = match sh.agent_breaker().allow(now) {
            Ok(p) => p,
            Err(r) => {
                let m = "the agent's circuit breaker is open: it failed repeatedly".into();
                let ms = u64::try_from(r.retry_after.as_millis()).unwrap_or(u64::MAX);
                return self.agent_failed(s.run, unavailable(m, Some(ms)), now);
            }
        };
        let trace = s.trace.unwrap_or_default();
        let traceparent = trace.child();
        let left = s.deadline.saturating_duration_since(now);
        let deadline_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        let x = match cfg.exchange(
            &s.run_id,
            &s.req,
            s.subject.as_deref(),
            deadline_ms,
            &traceparent,
        ) {
            Ok(x) => x,
            Err(e) => {
                sh.agent_breaker().release(permit);
                return self.agent_failed(s.run, unavailable(e.to_string(), None), now);
            }
        };
        sh.metrics.agent_requests_total.fetch_add(1, Relaxed);
        sh.metrics.agent_in_flight.fetch_add(1, Relaxed);
        tracing::info!(
            run_id = %s.run_id,
            trace_id = %trace.id(),
            traceparent = %traceparent,
            "agent run started"
        );
        let entry = self.agents.calls.vacant_entry();
        let key = entry.key();
        let timer = self.reactor.timers().insert(AGENT + key);
        entry.insert(Running {
            run: s.run,
            thread_id: s.req.thread_id.clone(),
            call: Call::new(cfg.clone(), x, now),
            timer,
            interest: Interest::READABLE,
            permit: Some(permit),
        });
        self.agents.by_run.insert(s.run, key);
        let (host, port) = cfg.target.host_port();
        let reply = &sh.resolved[self.index];
        let lookup = match &sh.resolver {
            Some(r) => self.agents.names.lookup(r, reply, &host, port, s.run, now),
            None => Lookup::Now(Err(Unresolved::local("no resolver"))),
        };
        if let Lookup::Now(addrs) = lookup {
            self.with_call(key, now, |c, now, out| c.resolved(addrs, now, out));
        } else {
            self.with_call(key, now, |_, _, _| {});
        }
    }

    /// A run that never got a call: its error goes straight to the layer.
    fn agent_failed(&mut self, run: u64, failure: Failure, now: Instant) {
        self.shared.metrics.agent_failure(failure.code);
        self.runs.source(
            now,
            Mail {
                run,
                what: SourceEvent::Failed(failure),
            },
        );
        self.apply_effects(now);
    }

    /// Names the resolver thread answered.
    pub(super) fn take_resolved(&mut self, now: Instant) {
        for r in self.shared.resolved[self.index].take() {
            for run in self.agents.names.answered(&r, now) {
                if let Some(&key) = self.agents.by_run.get(&run) {
                    let addrs = r.addrs.clone();
                    self.with_call(key, now, |c, now, out| c.resolved(addrs, now, out));
                }
            }
        }
    }

    /// Readiness of agent call `key`.
    pub(super) fn agent_io(&mut self, key: usize, readable: bool, writable: bool, now: Instant) {
        self.with_call(key, now, |c, now, out| {
            c.handle_io(readable, writable, now, out)
        });
    }

    /// The timer of agent call `key` fired (or of process `key - PROCESS`).
    pub(super) fn agent_timeout(&mut self, key: usize, now: Instant) {
        if key >= PROCESS {
            return self.process_timeout(key - PROCESS, now);
        }
        self.with_call(key, now, |c, now, out| c.handle_timeout(now, out));
    }

    /// Calls that stopped at their read budget read on.
    pub(super) fn agent_backlog(&mut self, now: Instant) {
        for key in std::mem::take(&mut self.agents.backlog) {
            self.with_call(key, now, |c, now, out| {
                if c.has_more_input() {
                    c.handle_io(true, false, now, out);
                }
            });
        }
    }

    /// The run layer ended run `run` (cancelled, expired, over budget,
    /// drained): its socket closes, and the agent sees its client go (a
    /// process is stopped instead).
    pub(super) fn stop_agent(&mut self, run: u64) {
        let Some(key) = self.agents.by_run.remove(&run) else {
            return self.stop_process(run);
        };
        let mut r = self.agents.calls.remove(key);
        if let Some(p) = r.permit.take() {
            self.shared.agent_breaker().release(p);
        }
        self.close_call(&mut r);
    }

    fn close_call(&mut self, r: &mut Running) {
        for mut old in r.call.take_retired() {
            let _ = self.reactor.deregister_before_close(&mut old);
        }
        if let Some(mut s) = r.call.stop() {
            let _ = self.reactor.deregister_before_close(&mut s);
        }
        self.reactor.timers().remove(r.timer);
        self.shared.metrics.agent_in_flight.fetch_sub(1, Relaxed);
    }

    /// Calls `f` on call `key`, then hands its outputs to the run layer,
    /// counts them, and syncs its socket and timer with the reactor.
    fn with_call(
        &mut self,
        key: usize,
        now: Instant,
        f: impl FnOnce(&mut Call, Instant, &mut Vec<Output>),
    ) {
        let Some(r) = self.agents.calls.get_mut(key) else {
            return;
        };
        let mut out = Vec::new();
        f(&mut r.call, now, &mut out);
        let run = r.run;
        let sh = self.shared.clone();
        for o in out {
            let what = match o {
                Output::Event(body) => SourceEvent::Event(body),
                Output::Answered => {
                    if let Some(p) = r.permit.take() {
                        sh.agent_breaker().success(p);
                    }
                    // The agent answered: its run has started (SPEC §5).
                    let fields = serde_json::json!({ "thread_id": r.thread_id });
                    SourceEvent::Event(crate::runs::body("agent_started", &fields))
                }
                Output::Done => SourceEvent::Done,
                Output::Failed {
                    failure,
                    blame,
                    timeout,
                } => {
                    if let Some(t) = timeout {
                        sh.metrics.timeout(t);
                    }
                    judged(&sh, blame, r.permit.take(), now);
                    sh.metrics.agent_failure(failure.code);
                    let (code, message) = (failure.code, &failure.message);
                    match blame {
                        Blame::Local => {
                            tracing::warn!(run, code, "{}: {message}", failed_line(blame))
                        }
                        _ => tracing::info!(run, code, "{}: {message}", failed_line(blame)),
                    }
                    SourceEvent::Failed(failure)
                }
            };
            self.runs.source(now, Mail { run, what });
        }
        self.sync_call(key, now);
        self.apply_effects(now);
    }

    /// Registers a new socket, follows the call's interest and deadline,
    /// and lets go of a finished call. A socket the reactor cannot watch
    /// ends its call as this side's failure (the agent would be blamed for
    /// the connect deadline otherwise).
    fn sync_call(&mut self, key: usize, now: Instant) {
        let Some(r) = self.agents.calls.get_mut(key) else {
            return;
        };
        for mut old in r.call.take_retired() {
            let _ = self.reactor.deregister_before_close(&mut old);
        }
        if r.call.is_done() {
            let mut r = self.agents.calls.remove(key);
            self.agents.by_run.remove(&r.run);
            if let Some(p) = r.permit.take() {
                self.shared.agent_breaker().release(p);
            }
            return self.close_call(&mut r);
        }
        let want = r.call.interest();
        if r.call.take_fresh() {
            if let Some(s) = r.call.stream_mut()
                && let Err(e) = self.reactor.register(s, AGENT + key, want)
            {
                let m = format!("cannot watch the agent's socket: {e}");
                return self.with_call(key, now, |c, _, out| c.fail_here(m, out));
            }
            r.interest = want;
        } else if want != r.interest {
            if let Some(s) = r.call.stream_mut()
                && let Err(e) = self.reactor.reregister(s, AGENT + key, want)
            {
                tracing::warn!("reregistering an agent socket failed: {e}");
            }
            r.interest = want;
        }
        if r.call.has_more_input() && !self.agents.backlog.contains(&key) {
            self.agents.backlog.push(key);
        }
        let at = r.call.poll_timeout();
        let timer = r.timer;
        self.reactor.timers().set(timer, at);
    }
}

/// A failed agent run, told to the agent's circuit breaker as `blame`
/// says. A failure of this side (no descriptor, say) is neither the
/// agent's failure nor its success — a half-open trial's slot is free
/// again — and is counted apart.
pub(super) fn judged(sh: &Shared, blame: Blame, permit: Option<Permit>, now: Instant) {
    let mut b = sh.agent_breaker();
    match (blame, permit) {
        (Blame::Agent, p) => b.failure(p.unwrap_or(Permit::Normal), now),
        (Blame::Answered, Some(p)) => b.success(p),
        (Blame::Local, Some(p)) => b.release(p),
        (_, None) => {}
    }
    drop(b);
    if blame == Blame::Local {
        sh.metrics.agent_local_failures_total.fetch_add(1, Relaxed);
    }
}

/// How a failed run's log line begins.
pub(super) fn failed_line(blame: Blame) -> &'static str {
    match blame {
        Blame::Local => "agent run failed on this side, not counted against the agent",
        Blame::Agent | Blame::Answered => "agent run failed",
    }
}

fn unavailable(message: String, retry_after_ms: Option<u64>) -> Failure {
    Failure {
        code: "upstream_unavailable",
        message,
        retry_after_ms,
        ..Failure::default()
    }
}
