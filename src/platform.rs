//! Every platform difference of the crate lives here: OS identity, the
//! raw-handle glue the `polling` backend needs (fds on Unix, sockets on
//! Windows), and how an agent process and whatever it starts are stopped
//! together ([`ProcessGroup`]: a process group on Unix, a job object on
//! Windows). Signals need nothing here: `ctrlc` covers SIGINT/SIGTERM and the
//! Windows console with one API.

use std::io;

/// True when built for Windows (SPEC §3 detection).
pub const IS_WINDOWS: bool = cfg!(windows);
/// The OS name used in environment labels.
pub const OS_NAME: &str = std::env::consts::OS;

#[cfg(unix)]
pub use std::os::fd::RawFd as RawSource;
#[cfg(windows)]
pub use std::os::windows::io::RawSocket as RawSource;

/// Something both backends can poll: a `mio` source with a raw OS handle.
pub trait Pollable: mio::event::Source {
    /// The OS handle (`fd` on Unix, `SOCKET` on Windows) the `polling`
    /// backend registers.
    fn raw_source(&self) -> RawSource;
}

macro_rules! pollable {
    ($t:ty) => {
        impl Pollable for $t {
            #[cfg(unix)]
            fn raw_source(&self) -> RawSource {
                std::os::fd::AsRawFd::as_raw_fd(self)
            }
            #[cfg(windows)]
            fn raw_source(&self) -> RawSource {
                std::os::windows::io::AsRawSocket::as_raw_socket(self)
            }
        }
    };
}
pollable!(mio::net::TcpStream);
pollable!(mio::net::TcpListener);

/// Adds `raw` to `poller`.
///
/// # Safety
/// `raw` must stay open until [`polling_delete`] is called for it.
pub(crate) unsafe fn polling_add(
    poller: &polling::Poller,
    raw: RawSource,
    ev: polling::Event,
    mode: polling::PollMode,
) -> io::Result<()> {
    // SAFETY: forwarded to the caller.
    unsafe { poller.add_with_mode(raw, ev, mode) }
}

/// Changes `raw`'s interest in `poller`.
pub(crate) fn polling_modify(
    poller: &polling::Poller,
    raw: RawSource,
    ev: polling::Event,
    mode: polling::PollMode,
) -> io::Result<()> {
    poller.modify_with_mode(borrow(raw), ev, mode)
}

/// Removes `raw` from `poller`.
pub(crate) fn polling_delete(poller: &polling::Poller, raw: RawSource) -> io::Result<()> {
    poller.delete(borrow(raw))
}

#[cfg(unix)]
fn borrow<'a>(raw: RawSource) -> std::os::fd::BorrowedFd<'a> {
    // SAFETY: callers pass the handle of a live registered source, which
    // outlives this call.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) }
}

#[cfg(windows)]
fn borrow<'a>(raw: RawSource) -> std::os::windows::io::BorrowedSocket<'a> {
    // SAFETY: as above.
    unsafe { std::os::windows::io::BorrowedSocket::borrow_raw(raw) }
}

/// Whether the error of opening something (a socket, a connection, a
/// process, a name lookup) says this side ran short — of descriptors,
/// memory, socket buffers, local ports or processes — rather than anything
/// about the other end: an agent call that fails so never reached the
/// agent, and the agent's circuit breaker must not count it.
pub fn is_local_shortage(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::OutOfMemory {
        return true;
    }
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    #[cfg(unix)]
    let short = [
        libc::EMFILE,
        libc::ENFILE,
        libc::ENOBUFS,
        libc::ENOMEM,
        // No local port left (EAGAIN on older Linux), or no process.
        libc::EADDRNOTAVAIL,
        libc::EAGAIN,
    ];
    // WSAEMFILE, WSAENOBUFS, WSAEADDRNOTAVAIL; ERROR_TOO_MANY_OPEN_FILES,
    // ERROR_NOT_ENOUGH_MEMORY, ERROR_OUTOFMEMORY.
    #[cfg(windows)]
    let short = [10024, 10055, 10049, 4, 8, 14];
    short.contains(&code)
}

/// A non-blocking listener with a deep backlog (a 128 backlog drops
/// connections in a handshake storm). Address reuse is set on Unix only: on
/// Windows `SO_REUSEADDR` would let another process steal the port.
pub fn bind_listener(
    addr: std::net::SocketAddr,
    backlog: i32,
) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    // Every connection wants it; on Linux accepted sockets inherit it, so
    // setting it here saves a setsockopt per connection (ACCEPTED_INHERIT_NODELAY).
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Whether accepted sockets inherit TCP_NODELAY from the listener (Linux
/// does; elsewhere it is set on each accepted socket).
pub const ACCEPTED_INHERIT_NODELAY: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Whether closing a socket removes it from the OS poller by itself, so
/// the `mio` backend may skip the deregistration before a close (epoll and
/// kqueue do; mio keeps no state per socket there). Windows' IOCP/AFD does
/// not, and the `polling` backend's contract asks for a delete everywhere.
pub const CLOSE_REMOVES_FROM_POLLER: bool = cfg!(unix);

/// Whether a short read (fewer bytes than asked) proves the socket drained,
/// so the extra read that would only return `WouldBlock` can be skipped.
/// True on Unix: epoll/kqueue raise a new edge for every later arrival.
/// False on Windows: mio re-arms its IOCP/AFD poll only after it has seen a
/// real `WouldBlock`, so skipping it would lose every later event.
pub const SHORT_READ_MEANS_DRAINED: bool = cfg!(unix);

/// A reload request from SIGHUP (Unix): the handler only sets a flag
/// (async-signal-safe); the server polls it every turn, so the capped wait
/// bounds how long a request can go unnoticed. Windows has no SIGHUP; there
/// the certificate files' modification time is the only trigger.
static SIGHUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn on_sighup(_: libc::c_int) {
    SIGHUP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Makes SIGHUP a reload request instead of a termination signal (it
/// replaces any earlier handler, e.g. `ctrlc`'s). For the binary: the
/// library never installs signal handlers itself.
pub fn catch_sighup() -> io::Result<()> {
    #[cfg(unix)]
    {
        // SAFETY: a zeroed sigaction is valid; the handler is an extern
        // "C" fn that only stores to an atomic.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sighup as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGHUP, &action, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// True once after each SIGHUP received since the last call.
pub fn take_sighup() -> bool {
    SIGHUP.swap(false, std::sync::atomic::Ordering::Relaxed)
}

/// An agent process together with whatever it starts, stopped as one.
///
/// Unix: the process leads a process group of its own
/// ([`own_process_group`] before the spawn), so a signal to the group
/// reaches its children too; [`ProcessGroup::terminate`] sends SIGTERM,
/// [`ProcessGroup::kill`] SIGKILL. The group's id stays reserved while any
/// member lives, even after the leader is reaped, so signalling stragglers
/// later cannot hit a stranger (only an empty group's number can be reused).
///
/// Windows: the process is put in a job object that kills its members when
/// closed; terminating it is `TerminateJobObject` (or, when no job could be
/// made, `TerminateProcess` on the process alone, via `Child::kill`). There
/// is no gentle step: `terminate` and `kill` are the same. A child the
/// process starts in the instant between its spawn and its assignment to
/// the job escapes it (std has no suspended spawn).
pub struct ProcessGroup {
    #[cfg(unix)]
    pgid: libc::pid_t,
    #[cfg(windows)]
    job: Option<std::os::windows::io::OwnedHandle>,
}

/// Makes the process `cmd` starts the leader of a group of its own (Unix);
/// nothing to do on Windows (the job is made after the spawn).
pub fn own_process_group(cmd: &mut std::process::Command) {
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    #[cfg(windows)]
    let _ = cmd;
}

impl ProcessGroup {
    /// The group of `child`, spawned after [`own_process_group`].
    pub fn of(child: &std::process::Child) -> ProcessGroup {
        #[cfg(unix)]
        {
            ProcessGroup {
                pgid: libc::pid_t::try_from(child.id()).unwrap_or(0),
            }
        }
        #[cfg(windows)]
        {
            ProcessGroup {
                job: job_for(child),
            }
        }
    }

    /// Asks every member to stop (SIGTERM); Windows: ends them all.
    /// `Ok(true)` when a member got it (Unix), so a [`Self::kill`] may be
    /// needed later; `Ok(false)` when there is nobody left to stop.
    pub fn terminate(&self, child: &mut std::process::Child) -> io::Result<bool> {
        #[cfg(unix)]
        {
            let _ = child;
            self.signal(libc::SIGTERM)
        }
        #[cfg(windows)]
        {
            self.end(child).map(|()| false)
        }
    }

    /// Ends every member (SIGKILL; Windows: as [`Self::terminate`]).
    pub fn kill(&self, child: &mut std::process::Child) -> io::Result<()> {
        #[cfg(unix)]
        {
            let _ = child;
            self.signal(libc::SIGKILL).map(|_| ())
        }
        #[cfg(windows)]
        {
            self.end(child)
        }
    }

    /// Nobody is left in the group (Unix; zombies count as members). On
    /// Windows, always: a terminated job has no member left.
    pub fn is_empty(&self) -> bool {
        #[cfg(unix)]
        {
            matches!(self.signal(0), Ok(false))
        }
        #[cfg(windows)]
        {
            true
        }
    }

    #[cfg(unix)]
    fn signal(&self, sig: libc::c_int) -> io::Result<bool> {
        // Never 0 or 1: killpg(0) would signal pollcap's own group.
        if self.pgid <= 1 {
            return Ok(false);
        }
        // SAFETY: killpg has no memory-safety preconditions.
        if unsafe { libc::killpg(self.pgid, sig) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(false),
            _ => Err(e),
        }
    }

    #[cfg(windows)]
    fn end(&self, child: &mut std::process::Child) -> io::Result<()> {
        use std::os::windows::io::AsRawHandle;
        match &self.job {
            Some(job) => {
                // SAFETY: `job` is a live job handle owned by `self`.
                let ok = unsafe {
                    windows_sys::Win32::System::JobObjects::TerminateJobObject(
                        job.as_raw_handle(),
                        1,
                    )
                };
                if ok == 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
            None => match child.kill() {
                Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()), // exited
                r => r,
            },
        }
    }
}

/// A job object holding `child`, whose members die when it is closed; `None`
/// when the system refuses one (the process is then ended alone).
#[cfg(windows)]
fn job_for(child: &std::process::Child) -> Option<std::os::windows::io::OwnedHandle> {
    use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
    use windows_sys::Win32::System::JobObjects::{
        AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
        JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
        SetInformationJobObject,
    };
    // SAFETY: null attributes and name are allowed; a non-null result is a
    // handle we own from here on.
    let raw = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
    if raw.is_null() {
        tracing::warn!(
            "no job object for an agent process ({}): it is stopped alone",
            io::Error::last_os_error()
        );
        return None;
    }
    // SAFETY: `raw` is a fresh handle nobody else owns.
    let job = unsafe { OwnedHandle::from_raw_handle(raw) };
    let mut info = JOBOBJECT_EXTENDED_LIMIT_INFORMATION::default();
    info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    // SAFETY: `info` is the structure the class names, with its size.
    unsafe {
        SetInformationJobObject(
            job.as_raw_handle(),
            JobObjectExtendedLimitInformation,
            (&raw const info).cast(),
            u32::try_from(std::mem::size_of_val(&info)).unwrap_or(0),
        );
    }
    // SAFETY: both handles are live for the call.
    if unsafe { AssignProcessToJobObject(job.as_raw_handle(), child.as_raw_handle()) } == 0 {
        tracing::warn!(
            "cannot put an agent process in a job object ({}): it is stopped alone",
            io::Error::last_os_error()
        );
        return None;
    }
    Some(job)
}
