//! The agent calls of one reactor (SPEC §5 "Bring your own agent"): each
//! run's call is one more socket of this reactor, with one timer for its
//! current deadline. This file holds the table; `agent_io` drives it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;

use crate::app::AgentRequest;
use crate::breaker::Permit;
use crate::reactor::{Interest, TimerId};
use crate::source::upstream::call::Call;
use crate::source::upstream::resolve::Names;
use crate::trace::Trace;

/// Reactor tokens at and above this are agent calls (`AGENT + key`).
pub(super) const AGENT: usize = 1 << (usize::BITS - 2);

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

/// The agent calls of one reactor.
#[derive(Default)]
pub(super) struct Agents {
    pub calls: Slab<Running>,
    pub by_run: HashMap<u64, usize>,
    pub names: Names,
    /// Calls that stopped reading at their budget with input left.
    pub backlog: Vec<usize>,
}
