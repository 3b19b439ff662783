//! Run sources: where a run's events come from. Each takes a run's
//! ticket (`crate::runs::Ticket`) and reports its output to the run layer
//! by run number; the layer seals, stores, forwards, bounds and ends runs
//! the same way whatever the source.
//!
//! - `pool`: a [`Handler`](crate::app::Handler) on the worker pool;
//! - `upstream`: the team's agent over HTTP, on the reactor;
//! - `command`: the team's agent as a process per run, its deadlines on
//!   the reactor.

pub mod command;
pub(crate) mod pool;
pub mod upstream;
