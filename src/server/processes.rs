//! Agent processes on this reactor (`--agent-cmd`), the worker's side of
//! `crate::source::command`: starting a run's process (the process limit,
//! the breaker, the spawn), handing what its pipes brought to its state
//! machine and the machine's outputs to the run layer, doing what the
//! machine asks to the process (reap without blocking, signal its group),
//! and keeping its one timer. A process stays in the table after its run
//! ended until it is reaped; the reactor's drain waits for that.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::Shared;
use super::agent_io::{failed_line, judged};
use super::agents::{AGENT, AgentStart, PROCESS, Proc};
use super::worker::Worker;
use crate::runs::{Failure, Mail, SourceEvent};
use crate::source::command::pipes::{self, Launch, Piped};
use crate::source::command::process::{Action, AgentProcess, GIVE_UP, KILL_GRACE};
use crate::source::command::{CommandConfig, STDERR_LINES_PER_SEC};
use crate::source::upstream::call::{Blame, Output};
use crate::source::upstream::request_body;

impl Worker {
    /// Starts run `s`'s process, or ends the run at once: `overloaded` past
    /// `agent_max_procs`, `upstream_unavailable` when the breaker is open
    /// or the command cannot start.
    pub(super) fn start_process(&mut self, cfg: Arc<CommandConfig>, s: AgentStart, now: Instant) {
        let sh = self.shared.clone();
        let m = &sh.metrics;
        let max = cfg.max_procs as u64;
        let slot = |n: u64| (n < max).then_some(n + 1);
        if m.agent_processes
            .fetch_update(Relaxed, Relaxed, slot)
            .is_err()
        {
            m.overloaded_total.fetch_add(1, Relaxed);
            tracing::info!(run_id = %s.run_id, "{max} agent processes alive: overloaded");
            let message =
                format!("{max} agent processes are running (--agent-max-procs); retry later");
            let f = Failure {
                code: "overloaded",
                message,
                ..Failure::default()
            };
            return self.process_failed(s.run, f, now);
        }
        let permit = match sh.agent_breaker().allow(now) {
            Ok(p) => p,
            Err(r) => {
                m.agent_processes.fetch_sub(1, Relaxed);
                let message = "the agent's circuit breaker is open: it failed repeatedly".into();
                let ms = u64::try_from(r.retry_after.as_millis()).unwrap_or(u64::MAX);
                return self.process_failed(s.run, unavailable(message, Some(ms)), now);
            }
        };
        let trace = s.trace.unwrap_or_default();
        let traceparent = trace.child();
        let left = s.deadline.saturating_duration_since(now);
        let deadline_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        let mut request = request_body(&s.run_id, &s.req, s.subject.as_deref(), deadline_ms);
        request.push(b'\n');
        let launch = Launch {
            run: s.run,
            run_id: s.run_id.clone(),
            request,
            traceparent: &traceparent,
            mail: sh.proc_mail[self.index].clone(),
            metrics: sh.metrics.clone(),
        };
        let spawned = match pipes::spawn(&cfg, launch) {
            Ok(spawned) => spawned,
            Err(e) => {
                m.agent_processes.fetch_sub(1, Relaxed);
                let blame = if e.local { Blame::Local } else { Blame::Agent };
                judged(&sh, blame, Some(permit), now);
                let line = failed_line(blame);
                tracing::warn!(run_id = %s.run_id, "{line}: {}", e.message);
                return self.process_failed(s.run, unavailable(e.message, None), now);
            }
        };
        m.agent_requests_total.fetch_add(1, Relaxed);
        m.agent_in_flight.fetch_add(1, Relaxed);
        tracing::info!(
            run_id = %s.run_id,
            pid = spawned.child.id(),
            trace_id = %trace.id(),
            traceparent = %traceparent,
            "agent process started"
        );
        let entry = self.agents.procs.vacant_entry();
        let key = entry.key();
        let timer = self.reactor.timers().insert(AGENT + PROCESS + key);
        let broken = spawned.broken;
        entry.insert(Proc {
            run: s.run,
            run_id: s.run_id,
            thread_id: s.req.thread_id,
            child: spawned.child,
            group: spawned.group,
            process: AgentProcess::new(cfg, now),
            timer,
            permit: Some(permit),
            credit: spawned.credit,
            stderr: spawned.stderr,
            alive: true,
        });
        self.agents.procs_by_run.insert(s.run, key);
        self.with_process(key, now, |p, now, out| {
            if let Some(why) = broken {
                p.process.fail_start(why, now, out);
            }
        });
    }

    /// A run that got no process: its error goes straight to the layer.
    fn process_failed(&mut self, run: u64, failure: Failure, now: Instant) {
        self.shared.metrics.agent_failure(failure.code);
        let what = SourceEvent::Failed(failure);
        self.runs.source(now, Mail { run, what });
        self.apply_effects(now);
    }

    /// What the processes' helper threads posted.
    pub(super) fn take_process_mail(&mut self, now: Instant) {
        let sh = self.shared.clone();
        for mail in sh.proc_mail[self.index].take() {
            // Mail of a process already forgotten: its reader stops, as
            // its credit is gone.
            let Some(&key) = self.agents.procs_by_run.get(&mail.run) else {
                continue;
            };
            match mail.what {
                Piped::Stdout(bytes) => self.with_process(key, now, |p, now, out| {
                    p.process.stdout(&bytes, now, out);
                    // Taken: the reader may read on.
                    let _ = p.credit.try_send(());
                }),
                Piped::StdoutEnd(error) => self.with_process(key, now, |p, now, out| {
                    // Exited already, most likely: the error names its status.
                    perform(p, Action::Reap, now, &sh);
                    p.process.stdout_end(error, now, out);
                }),
                Piped::StderrMuted => {
                    self.with_process(key, now, |p, now, _| p.process.stderr_muted(now))
                }
            }
        }
    }

    /// The timer of process `key` fired.
    pub(super) fn process_timeout(&mut self, key: usize, now: Instant) {
        self.with_process(key, now, |p, now, out| p.process.handle_timeout(now, out));
    }

    /// The run layer ended run `run` (a client Close, its execution
    /// deadline, its budget, a drain): its process group is stopped.
    pub(super) fn stop_process(&mut self, run: u64) {
        let Some(&key) = self.agents.procs_by_run.get(&run) else {
            return;
        };
        let now = self.reactor.now();
        self.with_process(key, now, |p, now, _| p.process.stop(now));
    }

    /// Calls `f` on process `key`, does what its machine asks of the
    /// process, hands its outputs to the run layer, and then arms its
    /// timer or, once it is all over, forgets it.
    fn with_process(
        &mut self,
        key: usize,
        now: Instant,
        f: impl FnOnce(&mut Proc, Instant, &mut Vec<Output>),
    ) {
        let sh = self.shared.clone();
        let Some(p) = self.agents.procs.get_mut(key) else {
            return;
        };
        let mut out = Vec::new();
        f(p, now, &mut out);
        loop {
            let actions = p.process.take_actions();
            if actions.is_empty() {
                break;
            }
            for a in actions {
                perform(p, a, now, &sh);
            }
        }
        let events: Vec<SourceEvent> = out.into_iter().map(|o| to_event(&sh, p, o, now)).collect();
        if p.process.run_over()
            && let Some(permit) = p.permit.take()
        {
            sh.agent_breaker().release(permit); // stopped before a line: not its fault
        }
        let run = p.run;
        let (timer, at) = (p.timer, p.process.poll_timeout());
        if p.process.is_finished() {
            let p = self.agents.procs.remove(key);
            self.agents.procs_by_run.remove(&p.run);
            self.reactor.timers().remove(p.timer);
            sh.metrics.agent_in_flight.fetch_sub(1, Relaxed);
        } else {
            self.reactor.timers().set(timer, at);
        }
        for what in events {
            self.runs.source(now, Mail { run, what });
        }
        self.apply_effects(now);
    }
}

/// Does `a` to the process, and tells its machine how it went.
fn perform(p: &mut Proc, a: Action, now: Instant, sh: &Shared) {
    let pid = p.stderr.pid();
    match a {
        Action::Reap => {
            let status = match p.child.try_wait() {
                Ok(Some(status)) => status.to_string(),
                Ok(None) => return,
                Err(e) => format!("status unknown: {e}"),
            };
            if std::mem::take(&mut p.alive) {
                sh.metrics.agent_processes.fetch_sub(1, Relaxed);
            }
            tracing::info!(run_id = %p.run_id, pid, "agent process ended: {status}");
            p.process.exited(status, now);
        }
        Action::Terminate => {
            let reached = p.group.terminate(&mut p.child).unwrap_or_else(|e| {
                tracing::warn!(run_id = %p.run_id, pid, "cannot stop the agent process: {e}");
                false
            });
            p.process.terminated(reached, now);
        }
        Action::GiveUp => {
            tracing::warn!(
                run_id = %p.run_id,
                pid,
                "agent process not reaped {}s after it was told to stop (stuck in the \
                 kernel?): given up on",
                (KILL_GRACE + GIVE_UP).as_secs()
            );
            if std::mem::take(&mut p.alive) {
                sh.metrics.agent_processes.fetch_sub(1, Relaxed);
            }
            p.process.exited("given up on".into(), now);
        }
        Action::Probe => {
            if p.group.is_empty() {
                p.process.group_empty();
            }
        }
        Action::Kill => {
            if let Err(e) = p.group.kill(&mut p.child) {
                tracing::warn!(run_id = %p.run_id, pid, "cannot kill the agent process: {e}");
            }
        }
        Action::RefillStderr => {
            let dropped = p.stderr.refill();
            if dropped > 0 {
                tracing::info!(
                    run_id = %p.run_id,
                    pid,
                    "agent stderr: {dropped} lines not logged (over {STDERR_LINES_PER_SEC} a second)"
                );
            }
        }
    }
}

/// One output of a process for the run layer; the breaker learns how the
/// agent did (its first line is a success, as an HTTP agent's 2xx head).
fn to_event(sh: &Shared, p: &mut Proc, o: Output, now: Instant) -> SourceEvent {
    match o {
        Output::Event(body) => SourceEvent::Event(body),
        Output::Answered => {
            if let Some(permit) = p.permit.take() {
                sh.agent_breaker().success(permit);
            }
            let fields = serde_json::json!({ "thread_id": p.thread_id });
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
            judged(sh, blame, p.permit.take(), now);
            sh.metrics.agent_failure(failure.code);
            let (pid, code, line) = (p.stderr.pid(), failure.code, failed_line(blame));
            match blame {
                Blame::Local => {
                    tracing::warn!(run_id = %p.run_id, pid, code, "{line}: {}", failure.message);
                }
                _ => tracing::info!(run_id = %p.run_id, pid, code, "{line}: {}", failure.message),
            }
            SourceEvent::Failed(failure)
        }
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
