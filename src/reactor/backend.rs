//! The two OS poller backends behind one small enum: `mio` (default,
//! edge-triggered) and `polling` (level-triggered, the only mode it offers on
//! every OS). Callers read and write until `WouldBlock` and ask for write
//! readiness only while output is pending, which is correct under both.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::platform::{self, Pollable};

/// Which poller implementation a reactor uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// mio: edge-triggered (epoll, kqueue, IOCP through AFD on Windows); the
    /// default.
    Mio,
    /// polling: level-triggered on every OS (epoll, kqueue, IOCP/wepoll).
    Polling,
}

impl BackendKind {
    /// Both, for tests and benchmarks that run on each.
    pub const ALL: [BackendKind; 2] = [BackendKind::Mio, BackendKind::Polling];

    /// Parses a `--backend` value (`mio`, `polling`; any case).
    pub fn parse(v: &str) -> Option<BackendKind> {
        match v.trim().to_ascii_lowercase().as_str() {
            "mio" => Some(BackendKind::Mio),
            "polling" => Some(BackendKind::Polling),
            _ => None,
        }
    }

    /// The name `--backend` takes.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Mio => "mio",
            BackendKind::Polling => "polling",
        }
    }
}

/// Readiness a source is registered for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interest {
    /// Report readable (and hang-ups).
    pub readable: bool,
    /// Report writable: ask for it only while output waits.
    pub writable: bool,
}

impl Interest {
    /// Reads only: what an idle connection is registered for.
    pub const READABLE: Interest = Interest {
        readable: true,
        writable: false,
    };
    /// Reads and writes: while output waits for the socket.
    pub const BOTH: Interest = Interest {
        readable: true,
        writable: true,
    };

    fn mio(self) -> mio::Interest {
        match (self.readable, self.writable) {
            (_, false) => mio::Interest::READABLE,
            (false, true) => mio::Interest::WRITABLE,
            (true, true) => mio::Interest::READABLE | mio::Interest::WRITABLE,
        }
    }

    fn polling(self, token: usize) -> polling::Event {
        polling::Event::new(token, self.readable, self.writable)
    }
}

/// One readiness report. Hang-ups and errors are reported as readable (and
/// writable), so the owner discovers them through its next read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The token the source was registered with.
    pub token: usize,
    /// Readable, or hung up / in error.
    pub readable: bool,
    /// Writable, or hung up / in error.
    pub writable: bool,
}

/// Token reserved for the mio waker.
const WAKER_TOKEN: usize = usize::MAX;
const LEVEL: polling::PollMode = polling::PollMode::Level;

pub(crate) enum Backend {
    Mio {
        poll: mio::Poll,
        events: mio::Events,
    },
    Polling {
        poller: Arc<polling::Poller>,
        events: polling::Events,
    },
}

/// How a waker reaches its backend.
pub(crate) enum Signal {
    Mio(mio::Waker),
    Polling(Arc<polling::Poller>),
}

impl Signal {
    pub(crate) fn fire(&self) -> io::Result<()> {
        match self {
            Signal::Mio(w) => w.wake(),
            Signal::Polling(p) => p.notify(),
        }
    }
}

impl Backend {
    pub(crate) fn kind(&self) -> BackendKind {
        match self {
            Backend::Mio { .. } => BackendKind::Mio,
            Backend::Polling { .. } => BackendKind::Polling,
        }
    }

    pub(crate) fn new(kind: BackendKind, capacity: usize) -> io::Result<(Backend, Signal)> {
        Ok(match kind {
            BackendKind::Mio => {
                let poll = mio::Poll::new()?;
                let waker = mio::Waker::new(poll.registry(), mio::Token(WAKER_TOKEN))?;
                let events = mio::Events::with_capacity(capacity);
                (Backend::Mio { poll, events }, Signal::Mio(waker))
            }
            BackendKind::Polling => {
                let poller = Arc::new(polling::Poller::new()?);
                let cap = std::num::NonZeroUsize::new(capacity.max(1)).expect("non-zero");
                let events = polling::Events::with_capacity(cap);
                let signal = Signal::Polling(poller.clone());
                (Backend::Polling { poller, events }, signal)
            }
        })
    }

    pub(crate) fn register(
        &self,
        src: &mut dyn Pollable,
        token: usize,
        interest: Interest,
    ) -> io::Result<()> {
        debug_assert_ne!(token, WAKER_TOKEN);
        match self {
            Backend::Mio { poll, .. } => {
                poll.registry()
                    .register(src, mio::Token(token), interest.mio())
            }
            // SAFETY: every registered source is deregistered by its owner
            // (`Reactor::deregister`) before it is closed.
            Backend::Polling { poller, .. } => unsafe {
                platform::polling_add(poller, src.raw_source(), interest.polling(token), LEVEL)
            },
        }
    }

    pub(crate) fn reregister(
        &self,
        src: &mut dyn Pollable,
        token: usize,
        interest: Interest,
    ) -> io::Result<()> {
        match self {
            Backend::Mio { poll, .. } => {
                poll.registry()
                    .reregister(src, mio::Token(token), interest.mio())
            }
            Backend::Polling { poller, .. } => {
                platform::polling_modify(poller, src.raw_source(), interest.polling(token), LEVEL)
            }
        }
    }

    pub(crate) fn deregister(&self, src: &mut dyn Pollable) -> io::Result<()> {
        match self {
            Backend::Mio { poll, .. } => poll.registry().deregister(src),
            Backend::Polling { poller, .. } => platform::polling_delete(poller, src.raw_source()),
        }
    }

    /// One OS wait; ready events are appended to `out` (the waker's own event
    /// is filtered out: the waker's flag is the source of truth).
    pub(crate) fn wait(
        &mut self,
        out: &mut Vec<Event>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        match self {
            Backend::Mio { poll, events } => {
                poll.poll(events, timeout)?;
                for e in events.iter() {
                    let token = e.token().0;
                    if token == WAKER_TOKEN {
                        continue;
                    }
                    let broken = e.is_error() || e.is_read_closed() || e.is_write_closed();
                    out.push(Event {
                        token,
                        readable: e.is_readable() || broken,
                        writable: e.is_writable() || broken,
                    });
                }
            }
            Backend::Polling { poller, events } => {
                events.clear();
                poller.wait(events, timeout)?;
                for e in events.iter() {
                    let broken = e.is_interrupt() || e.is_err().unwrap_or(false);
                    out.push(Event {
                        token: e.key,
                        readable: e.readable || broken,
                        writable: e.writable || broken,
                    });
                }
            }
        }
        Ok(())
    }
}
