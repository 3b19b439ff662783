//! The team's agent as a command (SPEC §5 "Bring your own agent",
//! `--agent-cmd "CMD ARGS"`): one process per run, started without a
//! shell from the command's words. It reads the request as one JSON line
//! on stdin (then stdin is closed) and writes one JSON event per stdout
//! line, under the JSON Lines rules of the HTTP agent (`upstream::events`).
//! Its stderr lines go to the log, at most [`STDERR_LINES_PER_SEC`] a
//! second per process (the rest counted).
//!
//! Parts: `process` (one process's run as a sans-IO state machine: its
//! deadlines, and how it is stopped and reaped) and `pipes` (the spawn and
//! the helper threads on its pipes). The worker (`crate::server`) owns
//! the `Child`, applies the machine's actions and keeps its one timer.
//!
//! **Pipes on helper threads, not on the reactor.** Each process gets two
//! threads: one reads stdout and posts what it read to the reactor's
//! mailbox, one writes the request to stdin and then logs stderr. The
//! alternative, the pipes registered non-blocking with the reactor, works
//! on Unix only: std's anonymous pipes on Windows cannot be overlapped, so
//! IOCP (mio) cannot wait on them, and the `polling` backend waits on
//! sockets only there. A second, Windows-only path would need named pipes
//! made by hand and would be tested under Wine alone. Threads are one path
//! for both systems, and `--agent-max-procs` (64 by default) bounds them
//! to two per process; the scale target of the HTTP agent (thousands of
//! runs on the reactor) is not a subprocess's. What stays on the reactor:
//! every deadline (response, idle, the kill's two seconds) is one of its
//! timers, the process's state is changed only there, and the helper
//! threads never read the clock. The stdout reader posts one chunk and
//! waits for the reactor to take it before reading on, so a fast writer
//! fills its pipe and blocks instead of filling memory; the stderr limit
//! is refilled by the reactor's timer a second after it ran out.
//!
//! The spawn itself is a system call on the reactor: `posix_spawn` on Linux
//! (a vfork: no copy of pollcap's memory), in the order of a millisecond,
//! and a command that cannot start is known at once.
//!
//! Every blocking call of the helper threads ends when the process does,
//! and the reactor makes sure it does: SIGTERM to the group at the run's
//! end, SIGKILL two seconds later (a timer, never a sleep), and `try_wait`
//! until it is reaped (no zombies). Only a grandchild that left the group
//! (`setsid`) and kept a pipe open can keep a helper thread waiting, until
//! it exits.

pub(crate) mod pipes;
pub(crate) mod process;

use std::sync::Arc;

use crate::settings::Settings;
use crate::source::upstream::AgentTimeouts;

/// Most stderr lines one process may have logged per second; the rest are
/// counted (`pollcap_agent_stderr_dropped_total`) and summed up in the log.
pub const STDERR_LINES_PER_SEC: u32 = 20;
/// Longest stderr line logged; the rest of a longer one is dropped.
pub const STDERR_LINE_MAX: usize = 1024;

/// Everything starting an agent process needs, fixed at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandConfig {
    /// The program and its arguments (`--agent-cmd`, split like a shell).
    pub argv: Vec<String>,
    /// `response` (spawn → first line) and `idle` (between lines).
    pub timeouts: AgentTimeouts,
    /// The longest stdout line accepted (`max_message`).
    pub max_line: usize,
    /// The most `agent_thinking` delta bytes kept to fill a missing `final`.
    pub max_deltas: usize,
    /// Processes alive at once (`--agent-max-procs`), on every reactor.
    pub max_procs: usize,
}

impl CommandConfig {
    /// The command the settings name, if any (`--agent-cmd`).
    pub fn from_settings(s: &Settings) -> Option<Arc<CommandConfig>> {
        let argv = s.agent.cmd.clone().filter(|w| !w.is_empty())?;
        Some(Arc::new(CommandConfig {
            argv,
            timeouts: AgentTimeouts {
                connect: s.timeouts.agent_connect,
                response: s.timeouts.agent_response,
                idle: s.timeouts.agent_idle,
            },
            max_line: s.limits.max_message,
            max_deltas: usize::try_from(s.run_budget.max_bytes).unwrap_or(usize::MAX),
            max_procs: s.agent.max_procs,
        }))
    }

    /// The program, as `/health` names it.
    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }
}
