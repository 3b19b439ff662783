//! The tools' platform glue, Linux /proc and POSIX signals and limits:
//! process CPU, memory and open descriptors for `load` and `bench`,
//! SIGTERM for `bench`, and raising the descriptor limit for `serve` (the
//! library leaves process limits alone). Everything here degrades to
//! `None` / `Unsupported` elsewhere.

use std::io;

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

/// CPU time (user + system) of process `pid` as `/proc/PID/stat` reports
/// it: the whole thread group, threads that have exited included (the
/// kernel scales utime + stime to its precise runtime), in 10 ms ticks.
/// For a server whose threads come and go (Bun, Python), where summing the
/// live threads' `schedstat` would lose the dead ones'. Linux only.
pub fn process_cpu_stat(pid: u32) -> Option<std::time::Duration> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
            n if n > 0 => n as u64,
            _ => 100,
        };
        Some(std::time::Duration::from_nanos(ticks * 1_000_000_000 / hz))
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

/// Context switches (voluntary and not) of every thread of `pid` so far:
/// how often the process was woken or preempted. Linux only.
pub fn context_switches(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        tasks
            .map(|t| {
                let status = std::fs::read_to_string(t.ok()?.path().join("status")).ok()?;
                Some(
                    status
                        .lines()
                        .filter(|l| l.contains("ctxt_switches:"))
                        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                        .sum::<u64>(),
                )
            })
            .sum::<Option<u64>>()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// Open file descriptors of process `pid` (entries of /proc/PID/fd), for
/// the soak's leak check. Linux only.
pub fn open_fds(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        Some(dir.filter(|e| e.is_ok()).count() as u64)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// Fixes glibc's mmap threshold at 128 KiB (its initial value), unless
/// `MALLOC_MMAP_THRESHOLD_` says otherwise: buffers that large are then
/// mapped on their own and given back to the system when freed. By
/// default glibc raises the threshold to the largest buffer freed so far
/// (up to 32 MiB), and from then on a burst of large messages leaves its
/// memory in the heap: after the same 30 s soak, 99 MiB of RSS with the
/// default against 17 MiB with this. Returns the threshold set. glibc
/// only (other allocators give large blocks back on their own).
pub fn fix_mmap_threshold() -> Option<usize> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const THRESHOLD: usize = 128 * 1024;
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
            return None;
        }
        // SAFETY: mallopt only changes the allocator's parameters.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD as libc::c_int) } == 1;
        ok.then_some(THRESHOLD)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// How often `pollcap serve` gives freed heap memory back to the system.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Every [`TRIM_EVERY`], hands the free space inside glibc's heaps back to
/// the system (`malloc_trim(0)`), from a thread of its own. glibc returns
/// only the top of each heap by itself, and with one arena per busy thread
/// the free space between live blocks adds up: after ten minutes of the
/// soak's mixed load a quiet server held 20 MB of heap for 3.5 MB in use
/// (malloc_stats), and one trim took another from 19.4 to 10.5 MiB of RSS.
/// A trim takes each arena's lock in turn, for well under a millisecond at
/// these sizes. glibc only; a no-op elsewhere.
pub fn trim_heap_periodically() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let spawned = std::thread::Builder::new()
            .name("pollcap-trim".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(TRIM_EVERY);
                    // SAFETY: malloc_trim only releases free heap pages.
                    unsafe { libc::malloc_trim(0) };
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the heap trimming thread: {e}");
        }
    }
}
