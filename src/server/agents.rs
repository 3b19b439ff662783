//! The agent calls of one reactor (SPEC §5 "Bring your own agent"): each
//! run's call is one more socket of this reactor, with one timer for its
//! current deadline; each agent process (`--agent-cmd`) is a `Child` with
//! its pipes on helper threads and one timer. This file holds the tables;
//! `agent_io` drives the calls, `processes` the processes.

use std::collections::HashMap;
use std::process::Child;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use slab::Slab;

use crate::app::AgentRequest;
use crate::breaker::Permit;
use crate::platform::ProcessGroup;
use crate::reactor::{Interest, TimerId};
use crate::source::command::pipes::StderrLog;
use crate::source::command::process::AgentProcess;
use crate::source::upstream::call::Call;
use crate::source::upstream::resolve::Names;
use crate::trace::Trace;

/// Reactor tokens at and above this are agent calls (`AGENT + key`).
pub(super) const AGENT: usize = 1 << (usize::BITS - 2);
/// Timer tokens at and above `AGENT + PROCESS` are agent processes
/// (`AGENT + PROCESS + key`); they have no socket.
pub(super) const PROCESS: usize = 1 << (usize::BITS - 3);

/// An agent run the worker starts once the drive that asked for it is over.
pub(super) struct AgentStart {
    pub run: u64,
    pub run_id: Arc<str>,
    pub req: AgentRequest,
    pub subject: Option<String>,
    pub trace: Option<Trace>,
    pub deadline: Instant,
}

/// One agent call and what the worker keeps beside it.
pub(super) struct Running {
    pub run: u64,
    /// For the `agent_started` pollcap sends when the agent answers.
    pub thread_id: String,
    pub call: Call,
    pub timer: TimerId,
    pub interest: Interest,
    /// The breaker's permit, until the agent answered (or failed).
    pub permit: Option<Permit>,
}

/// One agent process and what the worker keeps beside it. It stays after
/// its run ended until it is reaped (and its group killed, if needed).
pub(super) struct Proc {
    pub run: u64,
    pub run_id: Arc<str>,
    pub thread_id: String,
    pub child: Child,
    pub group: ProcessGroup,
    pub process: AgentProcess,
    pub timer: TimerId,
    /// The breaker's permit, until the process wrote its first line.
    pub permit: Option<Permit>,
    /// Lets its stdout reader read on.
    pub credit: SyncSender<()>,
    pub stderr: Arc<StderrLog>,
    /// Counted in `agent_processes` (until it is seen to exit).
    pub alive: bool,
}

impl Drop for Proc {
    /// Only a worker that stops without a drain drops a process it has not
    /// seen end: it is killed with its group rather than left running.
    fn drop(&mut self) {
        if !self.process.is_finished() {
            let _ = self.group.kill(&mut self.child);
            let _ = self.child.try_wait();
        }
    }
}

/// The agent calls of one reactor.
#[derive(Default)]
pub(super) struct Agents {
    pub calls: Slab<Running>,
    pub by_run: HashMap<u64, usize>,
    pub names: Names,
    /// Calls that stopped reading at their budget with input left.
    pub backlog: Vec<usize>,
    /// The agent processes of this reactor (until each is reaped), and
    /// their keys by run number.
    pub procs: Slab<Proc>,
    pub procs_by_run: HashMap<u64, usize>,
}
