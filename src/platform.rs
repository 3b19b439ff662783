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
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// CPU time (user + system) and resident memory of process `pid`, for the
/// load tool's server-side figures. Linux-only (`/proc`); elsewhere `None`.
pub fn process_usage(pid: u32) -> Option<(std::time::Duration, u64)> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 overall, in USER_HZ (100 on Linux) ticks.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // Nanosecond CPU time from the scheduler, summed over the threads
        // (pollcap's threads live as long as the process); the 10 ms ticks
        // of /proc/PID/stat are too coarse for an idle server.
        let precise = std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()
            .and_then(|tasks| {
                tasks
                    .map(|t| {
                        let path = t.ok()?.path().join("schedstat");
                        let s = std::fs::read_to_string(path).ok()?;
                        s.split_whitespace().next()?.parse::<u64>().ok()
                    })
                    .sum::<Option<u64>>()
            });
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let cpu = precise.map_or(std::time::Duration::from_millis(ticks * 10), |ns| {
            std::time::Duration::from_nanos(ns)
        });
        Some((cpu, rss_kib * 1024))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// Raises the soft limit on open file descriptors to the hard limit and
/// returns the soft limit now in force. Every connection holds one
/// descriptor, and distributions default the soft limit to 1024, far below
/// `max_connections`; the hard limit is what the administrator allowed.
/// `None` on Windows, which has no such per-process limit on sockets.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read or write the struct passed.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            // May fail (macOS caps it below an infinite hard limit): keep
            // what we have then.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim = raised;
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every Unix
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Asks process `pid` to shut down the way an orchestrator does: SIGTERM on
/// Unix. Windows has no equivalent to send to a console process from
/// outside its console, so it reports `Unsupported` there.
pub fn terminate(pid: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        let pid = libc::pid_t::try_from(pid).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: kill() takes plain integers and has no memory effects.
        if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Whether a short read (fewer bytes than asked) proves the socket drained,
/// so the extra read that would only return `WouldBlock` can be skipped.
/// True on Unix: epoll/kqueue raise a new edge for every later arrival.
/// False on Windows: mio re-arms its IOCP/AFD poll only after it has seen a
/// real `WouldBlock`, so skipping it would lose every later event.
pub const SHORT_READ_MEANS_DRAINED: bool = cfg!(unix);
