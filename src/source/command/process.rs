//! One agent process's run as a state machine, like an HTTP call
//! (`upstream::call`): it takes what the pipes brought and the time,
//! reports [`Output`]s for the run, and says what to do to the process
//! ([`Action`]) and when it next needs the time
//! ([`AgentProcess::poll_timeout`]). It never touches the process itself.
//!
//! Two things end: the run and the process. The run ends with its last
//! event, an error (a deadline, a bad line, stdout closed early) or a stop
//! from the run layer. The process then has to go: after a last event it
//! gets [`KILL_GRACE`] to exit by itself; otherwise (and after that grace)
//! its group is asked to stop (SIGTERM) and, if anyone got that, killed
//! [`KILL_GRACE`] later (SIGKILL). While it has not been seen to exit it is
//! polled every [`REAP_POLL`] (`try_wait`: it never blocks), so nothing is
//! left a zombie. Once the leader has exited by itself, whatever it left in
//! its group is stopped the same way: a run's processes end with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::CommandConfig;
use crate::conn::TimeoutPhase;
use crate::runs::Failure;
use crate::source::upstream::call::{Blame, Output};
use crate::source::upstream::events::{Decoder, Framing, Read as EventRead};

/// How long a process has to exit after its run's last event, and between
/// SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);
/// How often a process that should be gone is asked whether it is.
pub const REAP_POLL: Duration = Duration::from_millis(50);
/// How long a process told to stop may take to be reaped, beyond its
/// [`KILL_GRACE`], before it is given up on (one in uninterruptible sleep
/// ignores even SIGKILL): no wait of pollcap's is without an end, a drain's
/// included.
pub const GIVE_UP: Duration = Duration::from_secs(10);
/// How long a process's stderr stays muted once it used its budget.
pub const STDERR_WINDOW: Duration = Duration::from_secs(1);

/// What the owner does to the process, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Ask whether it exited, without blocking; answer with
    /// [`AgentProcess::exited`] if it did.
    Reap,
    /// SIGTERM its group (Windows: end it); answer with
    /// [`AgentProcess::terminated`].
    Terminate,
    /// SIGKILL its group.
    Kill,
    /// Ask whether anyone is left in its group; answer with
    /// [`AgentProcess::group_empty`] if nobody is.
    Probe,
    /// Give its stderr log its budget back.
    RefillStderr,
    /// It was told to stop long ago and is still not reaped: log it and
    /// answer [`AgentProcess::exited`] anyway.
    GiveUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    /// Spawned, no line yet: the response deadline.
    AwaitFirstLine,
    /// Lines coming: the idle deadline.
    Streaming,
    /// The run is over; the process may still be there.
    Over,
}

/// How the run ended, for what happens to the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// Its last event: the process may exit by itself.
    Finished,
    /// An error or a stop: the process is stopped now.
    Cut,
}

pub struct AgentProcess {
    cfg: Arc<CommandConfig>,
    stream: Stream,
    decoder: Decoder,
    /// The response or idle deadline, while the run is live.
    deadline: Instant,
    /// The exit status, once the process was reaped.
    exited: Option<String>,
    /// Its stdout ended (it closed it or exited).
    stdout_closed: bool,
    /// After the last event: the process should have exited by then.
    grace_until: Option<Instant>,
    /// SIGTERM went out (or is going out).
    term_sent: bool,
    kill_at: Option<Instant>,
    give_up_at: Option<Instant>,
    next_reap: Option<Instant>,
    refill_at: Option<Instant>,
    actions: Vec<Action>,
}

impl AgentProcess {
    /// A process spawned at `now`, its request on the way.
    pub fn new(cfg: Arc<CommandConfig>, now: Instant) -> AgentProcess {
        let decoder = Decoder::new(Framing::JsonLines, cfg.max_line, cfg.max_deltas);
        AgentProcess {
            deadline: now + cfg.timeouts.response,
            cfg,
            stream: Stream::AwaitFirstLine,
            decoder,
            exited: None,
            stdout_closed: false,
            grace_until: None,
            term_sent: false,
            kill_at: None,
            give_up_at: None,
            next_reap: None,
            refill_at: None,
            actions: Vec::new(),
        }
    }

    /// The run is over (its output will not change any more).
    pub fn run_over(&self) -> bool {
        self.stream == Stream::Over
    }

    /// Nothing is left to do: the run is over, the process reaped, its group
    /// killed if it had to be. The owner forgets it.
    pub fn is_finished(&self) -> bool {
        self.run_over()
            && self.exited.is_some()
            && self.kill_at.is_none()
            && self.actions.is_empty()
    }

    /// What to do to the process now, in order.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// When [`AgentProcess::handle_timeout`] next has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let live = (!self.run_over()).then_some(self.deadline);
        let waiting = self.exited.is_none();
        [
            live,
            self.grace_until.filter(|_| waiting && !self.term_sent),
            self.next_reap.filter(|_| waiting),
            self.give_up_at.filter(|_| waiting),
            self.kill_at,
            self.refill_at.filter(|_| !self.is_finished()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Bytes the process wrote to stdout.
    pub fn stdout(&mut self, bytes: &[u8], now: Instant, out: &mut Vec<Output>) {
        if self.run_over() {
            return; // read and dropped, so a chatty process can still exit
        }
        if bytes.iter().any(|b| *b == b'\n' || *b == b'\r') {
            // A line ended: traffic, keep-alive blank lines included.
            self.answered(out);
            self.deadline = now + self.cfg.timeouts.idle;
        }
        let mut reads = Vec::new();
        let r = self.decoder.feed(bytes, &mut reads);
        self.emit(reads, now, out);
        if let Err(e) = r
            && !self.run_over()
        {
            self.fail(out, now, "upstream_invalid", e.to_string(), Blame::Answered);
        }
    }

    /// The first line: the agent is there and answering (SPEC §5: pollcap
    /// sends its own `agent_started`).
    fn answered(&mut self, out: &mut Vec<Output>) {
        if self.stream == Stream::AwaitFirstLine {
            self.stream = Stream::Streaming;
            out.push(Output::Answered);
        }
    }

    fn emit(&mut self, reads: Vec<EventRead>, now: Instant, out: &mut Vec<Output>) {
        for r in reads {
            if self.run_over() {
                return; // nothing after the last event
            }
            if r.started {
                continue; // pollcap sent its own
            }
            out.push(Output::Event(r.body));
            if r.last {
                out.push(Output::Done);
                self.end(Ended::Finished, now);
            }
        }
    }

    /// Stdout ended (`error`: how reading it failed, if it did). Before the
    /// last event, the run is truncated.
    pub fn stdout_end(&mut self, error: Option<String>, now: Instant, out: &mut Vec<Output>) {
        self.stdout_closed = true;
        if !self.run_over() {
            let mut reads = Vec::new();
            let r = self.decoder.finish(&mut reads);
            if !reads.is_empty() {
                self.answered(out);
            }
            self.emit(reads, now, out);
            if let Err(e) = r
                && !self.run_over()
            {
                self.fail(out, now, "upstream_invalid", e.to_string(), Blame::Answered);
            }
        }
        if !self.run_over() {
            let how = match (&self.exited, &error) {
                (Some(status), _) => format!("exited ({status})"),
                (None, Some(e)) => format!("could not be read ({e})"),
                (None, None) => "closed its output".to_string(),
            };
            let m = format!("the agent process {how} before agent_completed or error");
            self.fail(out, now, "upstream_truncated", m, Blame::Agent);
        }
        self.reap_soon(now);
    }

    /// The process exited with `status` (the owner reaped it).
    pub fn exited(&mut self, status: String, now: Instant) {
        if self.exited.is_some() {
            return;
        }
        self.exited = Some(status);
        self.next_reap = None;
        self.grace_until = None;
        if self.run_over() {
            self.terminate(now); // what it left in its group
        }
        if self.kill_at.is_some() {
            self.actions.push(Action::Probe); // stragglers, or nobody?
        }
    }

    /// The answer to [`Action::Probe`]: its group is empty, so no SIGKILL
    /// is due (and nothing is left to wait for).
    pub fn group_empty(&mut self) {
        self.kill_at = None;
    }

    /// The process could not be set up after all (a helper thread did not
    /// start): the run fails `upstream_unavailable`, the process is stopped.
    pub fn fail_start(&mut self, why: String, now: Instant, out: &mut Vec<Output>) {
        if !self.run_over() {
            // Its pipes or helper threads failed here: not the agent's doing.
            self.fail(out, now, "upstream_unavailable", why, Blame::Local);
        }
    }

    /// The run layer ended the run (a client Close, its execution deadline,
    /// its budget, a drain): the process is stopped, nothing more is
    /// reported.
    pub fn stop(&mut self, now: Instant) {
        if !self.run_over() {
            self.end(Ended::Cut, now);
        }
    }

    /// The answer to [`Action::Terminate`]: whether any member got it.
    pub fn terminated(&mut self, reached: bool, now: Instant) {
        if reached {
            self.kill_at = Some(now + KILL_GRACE);
        }
    }

    /// Its stderr used its budget: it comes back a window later.
    pub fn stderr_muted(&mut self, now: Instant) {
        if self.refill_at.is_none() {
            self.refill_at = Some(now + STDERR_WINDOW);
        }
    }

    /// A deadline passed, if one did by `now`.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Output>) {
        if !self.run_over() && now >= self.deadline {
            let t = &self.cfg.timeouts;
            let secs = crate::settings::secs;
            let (phase, name, message) = match self.stream {
                Stream::AwaitFirstLine => (
                    TimeoutPhase::AgentResponse,
                    "response",
                    format!(
                        "the agent process wrote no line within {}",
                        secs(t.response)
                    ),
                ),
                _ => (
                    TimeoutPhase::AgentIdle,
                    "idle",
                    format!("nothing from the agent process for {}", secs(t.idle)),
                ),
            };
            out.push(Output::Failed {
                failure: Failure {
                    code: "upstream_timeout",
                    message,
                    phase: Some(name),
                    ..Failure::default()
                },
                blame: Blame::Agent,
                timeout: Some(phase),
            });
            self.end(Ended::Cut, now);
        }
        if self.exited.is_none() && !self.term_sent && self.grace_until.is_some_and(|g| now >= g) {
            self.grace_until = None;
            self.terminate(now);
        }
        if self.kill_at.is_some_and(|k| now >= k) {
            self.kill_at = None;
            self.actions.push(Action::Kill);
        }
        if self.exited.is_none() && self.give_up_at.is_some_and(|g| now >= g) {
            self.give_up_at = None;
            self.actions.push(Action::GiveUp);
        }
        if self.exited.is_none() && self.next_reap.is_some_and(|r| now >= r) {
            self.actions.push(Action::Reap);
            self.next_reap = Some(now + REAP_POLL);
        }
        if self.refill_at.is_some_and(|r| now >= r) {
            self.refill_at = None;
            self.actions.push(Action::RefillStderr);
        }
    }

    fn fail(
        &mut self,
        out: &mut Vec<Output>,
        now: Instant,
        code: &'static str,
        message: String,
        blame: Blame,
    ) {
        out.push(Output::Failed {
            failure: Failure {
                code,
                message,
                ..Failure::default()
            },
            blame,
            timeout: None,
        });
        self.end(Ended::Cut, now);
    }

    fn end(&mut self, how: Ended, now: Instant) {
        self.stream = Stream::Over;
        match how {
            Ended::Finished if self.exited.is_none() => {
                self.grace_until = Some(now + KILL_GRACE);
            }
            _ => self.terminate(now),
        }
        self.reap_soon(now);
    }

    fn terminate(&mut self, now: Instant) {
        if !self.term_sent {
            self.term_sent = true;
            self.grace_until = None;
            self.give_up_at = Some(now + KILL_GRACE + GIVE_UP);
            self.actions.push(Action::Terminate);
        }
    }

    /// Asks now whether it exited, and every [`REAP_POLL`] after.
    fn reap_soon(&mut self, now: Instant) {
        if self.exited.is_none() && self.next_reap.is_none() {
            self.actions.push(Action::Reap);
            self.next_reap = Some(now + REAP_POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::upstream::AgentTimeouts;

    const S: Duration = Duration::from_secs(1);

    fn cfg() -> Arc<CommandConfig> {
        Arc::new(CommandConfig {
            argv: vec!["agent".into()],
            timeouts: AgentTimeouts {
                connect: S,
                response: 5 * S,
                idle: 3 * S,
            },
            max_line: 64,
            max_deltas: 1024,
            max_procs: 4,
        })
    }

    fn kinds(out: &[Output]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Output::Event(b) => b.clone(),
                Output::Answered => "answered".into(),
                Output::Done => "done".into(),
                Output::Failed { failure, .. } => failure.code.to_string(),
            })
            .collect()
    }

    #[test]
    fn lines_become_events_and_the_response_then_idle_deadlines_follow_them() {
        let t0 = Instant::now();
        let mut p = AgentProcess::new(cfg(), t0);
        let mut out = Vec::new();
        assert_eq!(
            p.poll_timeout(),
            Some(t0 + 5 * S),
            "response: spawn → first line"
        );
        p.stdout(
            b"{\"type\":\"agent_started\"}\n{\"type\":\"agent_thi",
            t0 + S,
            &mut out,
        );
        assert_eq!(
            kinds(&out),
            ["answered"],
            "its own agent_started is not relayed"
        );
        assert_eq!(p.poll_timeout(), Some(t0 + 4 * S), "idle: between lines");
        p.stdout(b"nking\",\"delta\":\"hi\"}", t0 + 2 * S, &mut out);
        assert_eq!(p.poll_timeout(), Some(t0 + 4 * S), "half a line is no line");
        p.stdout(b"\n\n", t0 + 3 * S, &mut out);
        assert_eq!(
            p.poll_timeout(),
            Some(t0 + 6 * S),
            "a blank line is traffic"
        );
        p.stdout(b"{\"type\":\"agent_completed\"}\n", t0 + 4 * S, &mut out);
        assert_eq!(
            kinds(&out)[1..],
            [
                "{\"type\":\"agent_thinking\",\"delta\":\"hi\"}",
                "{\"type\":\"agent_completed\",\"final\":\"hi\"}",
                "done"
            ]
        );
        assert!(p.run_over());
        assert_eq!(
            p.take_actions(),
            [Action::Reap],
            "no signal: it may exit by itself"
        );
        // Lines after the last event are read and dropped.
        out.clear();
        p.stdout(b"{\"type\":\"late\"}\n", t0 + 4 * S, &mut out);
        assert!(out.is_empty());
        // It exits in time: what it left in its group is stopped.
        p.stdout_end(None, t0 + 4 * S, &mut out);
        assert!(
            out.is_empty(),
            "stdout closing after the last event is fine"
        );
        p.exited("exit status: 0".into(), t0 + 5 * S);
        assert_eq!(p.take_actions(), [Action::Terminate]);
        p.terminated(false, t0 + 5 * S);
        assert!(p.is_finished(), "nobody was left: done at once");
    }

    #[test]
    fn a_process_that_stays_after_its_last_event_is_stopped_then_killed() {
        let t0 = Instant::now();
        let mut p = AgentProcess::new(cfg(), t0);
        let mut out = Vec::new();
        p.stdout(b"{\"type\":\"error\",\"code\":\"x\"}\n", t0, &mut out);
        assert_eq!(p.take_actions(), [Action::Reap]);
        // Polled until the grace ends.
        assert_eq!(p.poll_timeout(), Some(t0 + REAP_POLL));
        p.handle_timeout(t0 + REAP_POLL, &mut out);
        assert_eq!(p.take_actions(), [Action::Reap]);
        let grace = t0 + KILL_GRACE;
        p.handle_timeout(grace, &mut out);
        assert_eq!(p.take_actions(), [Action::Terminate, Action::Reap]);
        p.terminated(true, grace);
        p.handle_timeout(grace + KILL_GRACE, &mut out);
        assert_eq!(p.take_actions(), [Action::Kill, Action::Reap]);
        assert!(!p.is_finished(), "not reaped yet");
        p.exited("signal: 9 (SIGKILL)".into(), grace + KILL_GRACE);
        assert!(p.take_actions().is_empty(), "signalled already");
        assert!(p.is_finished());
        assert_eq!(p.poll_timeout(), None);
        assert_eq!(
            kinds(&out)[1..],
            ["{\"type\":\"error\",\"code\":\"x\"}", "done"],
            "the run ended with its error event"
        );
    }

    #[test]
    fn each_failure_ends_the_run_once_and_stops_the_process_at_once() {
        let t0 = Instant::now();
        // No line by the response deadline.
        let mut p = AgentProcess::new(cfg(), t0);
        let mut out = Vec::new();
        p.handle_timeout(t0 + 5 * S - Duration::from_millis(1), &mut out);
        assert!(out.is_empty(), "not yet");
        p.handle_timeout(t0 + 5 * S, &mut out);
        match &out[..] {
            [
                Output::Failed {
                    failure,
                    blame: Blame::Agent,
                    timeout: Some(TimeoutPhase::AgentResponse),
                },
            ] => {
                assert_eq!(
                    (failure.code, failure.phase),
                    ("upstream_timeout", Some("response"))
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.take_actions(), [Action::Terminate, Action::Reap]);
        // A line over the cap: invalid, not counted by the breaker.
        let mut p = AgentProcess::new(cfg(), t0);
        let mut out = Vec::new();
        p.stdout(&[b'x'; 65], t0, &mut out);
        assert!(
            matches!(&out[..], [Output::Failed { failure, blame: Blame::Answered, .. }] if failure.code == "upstream_invalid")
        );
        assert_eq!(p.take_actions(), [Action::Terminate, Action::Reap]);
        p.stdout(b"\n{\"type\":\"agent_completed\"}\n", t0, &mut out);
        assert_eq!(out.len(), 1, "nothing after the failure");
        // Stdout ends before the last event: truncated, with the exit status.
        let mut p = AgentProcess::new(cfg(), t0);
        let mut out = Vec::new();
        p.stdout(
            b"{\"type\":\"agent_thinking\",\"delta\":\"a\"}\n",
            t0,
            &mut out,
        );
        p.exited("exit status: 3".into(), t0);
        p.stdout_end(None, t0, &mut out);
        match out.last() {
            Some(Output::Failed {
                failure,
                blame: Blame::Agent,
                ..
            }) => {
                assert_eq!(failure.code, "upstream_truncated");
                assert!(
                    failure.message.contains("exit status: 3"),
                    "{}",
                    failure.message
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            p.take_actions(),
            [Action::Terminate],
            "reaped already: its group"
        );
        // An unterminated last line still counts.
        let mut p = AgentProcess::new(cfg(), t0);
        let mut out = Vec::new();
        p.stdout(
            b"{\"type\":\"agent_completed\",\"final\":\"f\"}",
            t0,
            &mut out,
        );
        p.stdout_end(None, t0, &mut out);
        assert_eq!(
            kinds(&out),
            [
                "answered",
                "{\"type\":\"agent_completed\",\"final\":\"f\"}",
                "done"
            ]
        );
    }

    #[test]
    fn a_stop_signals_the_group_and_kills_it_two_seconds_later_if_anyone_got_it() {
        let t0 = Instant::now();
        let mut p = AgentProcess::new(cfg(), t0);
        let mut out = Vec::new();
        p.stop(t0);
        assert_eq!(p.take_actions(), [Action::Terminate, Action::Reap]);
        p.terminated(true, t0);
        assert_eq!(p.poll_timeout(), Some(t0 + REAP_POLL));
        // The leader goes at once; someone is left in its group, who still
        // gets the SIGKILL.
        p.exited("signal: 15 (SIGTERM)".into(), t0 + REAP_POLL);
        assert_eq!(p.take_actions(), [Action::Probe]);
        assert!(!p.is_finished());
        assert_eq!(p.poll_timeout(), Some(t0 + KILL_GRACE));
        p.handle_timeout(t0 + KILL_GRACE, &mut out);
        assert_eq!(p.take_actions(), [Action::Kill]);
        assert!(p.is_finished());
        assert!(
            out.is_empty(),
            "a stopped run reports nothing: the run layer ended it"
        );
        p.stop(t0 + KILL_GRACE);
        assert!(p.take_actions().is_empty(), "a second stop does nothing");
        // One that SIGKILL does not end is given up on, in the end.
        let mut p = AgentProcess::new(cfg(), t0);
        p.stop(t0);
        p.take_actions();
        p.terminated(true, t0);
        p.handle_timeout(t0 + KILL_GRACE, &mut out);
        assert_eq!(p.take_actions(), [Action::Kill, Action::Reap]);
        assert_eq!(p.poll_timeout(), Some(t0 + KILL_GRACE + REAP_POLL));
        let last = t0 + KILL_GRACE + GIVE_UP;
        p.handle_timeout(last, &mut out);
        assert_eq!(p.take_actions(), [Action::GiveUp, Action::Reap]);
        p.exited("given up".into(), last);
        assert!(p.is_finished());
        // Nobody left with the leader: done at once, no SIGKILL.
        let mut p = AgentProcess::new(cfg(), t0);
        p.stop(t0);
        p.take_actions();
        p.terminated(true, t0);
        p.exited("signal: 15 (SIGTERM)".into(), t0 + REAP_POLL);
        assert_eq!(p.take_actions(), [Action::Probe]);
        p.group_empty();
        assert!(p.is_finished());
    }

    #[test]
    fn a_muted_stderr_gets_its_budget_back_a_window_later() {
        let t0 = Instant::now();
        let mut p = AgentProcess::new(cfg(), t0);
        let mut out = Vec::new();
        p.stderr_muted(t0);
        p.stderr_muted(t0 + S / 2);
        assert_eq!(p.poll_timeout(), Some(t0 + STDERR_WINDOW));
        p.handle_timeout(t0 + STDERR_WINDOW, &mut out);
        assert_eq!(p.take_actions(), [Action::RefillStderr]);
        assert_eq!(p.poll_timeout(), Some(t0 + 5 * S));
    }
}
