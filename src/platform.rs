//! Every platform difference of the crate lives here: OS identity and the
//! raw-handle glue the `polling` backend needs (fds on Unix, sockets on
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
pub unsafe fn polling_add(
    poller: &polling::Poller,
    raw: RawSource,
    ev: polling::Event,
    mode: polling::PollMode,
) -> io::Result<()> {
    // SAFETY: forwarded to the caller.
    unsafe { poller.add_with_mode(raw, ev, mode) }
}

pub fn polling_modify(
    poller: &polling::Poller,
    raw: RawSource,
    ev: polling::Event,
    mode: polling::PollMode,
) -> io::Result<()> {
    poller.modify_with_mode(borrow(raw), ev, mode)
}

pub fn polling_delete(poller: &polling::Poller, raw: RawSource) -> io::Result<()> {
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
