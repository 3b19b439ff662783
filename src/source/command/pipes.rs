//! An agent process's spawn and the two helper threads on its pipes (see
//! the module above for why threads): `out` reads stdout and posts each
//! chunk to the reactor's mailbox, then waits for the reactor to take it
//! before reading on; `err` writes the request to stdin, closes it, and
//! logs stderr lines within the process's budget. Neither reads the clock
//! or decides anything: the reactor does, from their mail.

use std::io::{self, Read, Write};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::{CommandConfig, STDERR_LINE_MAX, STDERR_LINES_PER_SEC};
use crate::metrics::ServerMetrics;
use crate::platform::{self, ProcessGroup};
use crate::reactor::Mailbox;

/// Bytes read from stdout at once (one chunk in flight per process).
const CHUNK: usize = 16 * 1024;

/// What a process's helper threads report, by run number.
#[derive(Debug)]
pub struct ProcMail {
    pub run: u64,
    pub what: Piped,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Piped {
    /// Bytes from stdout; the reader waits for a credit before reading on.
    Stdout(Vec<u8>),
    /// Stdout ended: closed (`None`) or failed.
    StdoutEnd(Option<String>),
    /// Stderr used its budget: lines are dropped until it is refilled.
    StderrMuted,
}

/// What starting a process needs besides the command.
pub struct Launch<'a> {
    pub run: u64,
    pub run_id: Arc<str>,
    /// The request line (JSON and `\n`), written to stdin.
    pub request: Vec<u8>,
    /// Passed as `TRACEPARENT` (the environment carrier of W3C trace
    /// context), so the agent's logs join pollcap's.
    pub traceparent: &'a str,
    pub mail: Arc<Mailbox<ProcMail>>,
    pub metrics: Arc<ServerMetrics>,
}

/// A process started, its pipes in the helper threads' hands.
pub struct Spawned {
    pub child: Child,
    pub group: ProcessGroup,
    /// One credit lets the stdout reader read its next chunk; dropping it
    /// ends the reader (once its read returns).
    pub credit: SyncSender<()>,
    pub stderr: Arc<StderrLog>,
    /// A helper thread could not be started: the process is there, but
    /// the run cannot go on with it.
    pub broken: Option<String>,
}

/// Why a command did not start.
#[derive(Debug)]
pub struct SpawnError {
    /// The command and what the system said.
    pub message: String,
    /// This side ran short (descriptors for the pipes, memory, processes):
    /// the command itself may be fine.
    pub local: bool,
}

/// Starts `cfg`'s command for one run: no shell, its own process group,
/// the three pipes handed to two helper threads.
pub fn spawn(cfg: &CommandConfig, l: Launch) -> Result<Spawned, SpawnError> {
    let program = cfg.program();
    let mut cmd = Command::new(program);
    cmd.args(cfg.argv.iter().skip(1))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("TRACEPARENT", l.traceparent);
    platform::own_process_group(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| SpawnError {
        message: format!("cannot start the agent command {program:?}: {e}"),
        local: crate::platform::is_local_shortage(&e),
    })?;
    let group = ProcessGroup::of(&child);
    let (credit, credits) = sync_channel(1);
    let stderr = Arc::new(StderrLog {
        run_id: l.run_id.clone(),
        pid: child.id(),
        left: AtomicU32::new(STDERR_LINES_PER_SEC),
        muted: AtomicBool::new(false),
        dropped: AtomicU64::new(0),
        metrics: l.metrics,
    });
    let pipes = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let broken = match pipes {
        (Some(stdin), Some(stdout), Some(err)) => {
            let (run, mail) = (l.run, l.mail.clone());
            let out = std::thread::Builder::new()
                .name("pollcap-agent-out".into())
                .stack_size(128 * 1024)
                .spawn(move || read_stdout(stdout, run, &mail, &credits));
            let (log, mail) = (stderr.clone(), l.mail);
            let request = l.request;
            let errs = out.and_then(|_| {
                std::thread::Builder::new()
                    .name("pollcap-agent-err".into())
                    .stack_size(256 * 1024)
                    .spawn(move || write_then_log(stdin, &request, err, &log, run, &mail))
            });
            errs.err()
                .map(|e| format!("cannot start a thread for the agent process: {e}"))
        }
        _ => Some("the agent process's pipes are missing".into()),
    };
    Ok(Spawned {
        child,
        group,
        credit,
        stderr,
        broken,
    })
}

/// The `out` thread: one chunk at a time, each taken by the reactor before
/// the next is read (the pipe holds the rest, and a fast process waits).
fn read_stdout(
    mut stdout: ChildStdout,
    run: u64,
    mail: &Mailbox<ProcMail>,
    credits: &Receiver<()>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let what = match stdout.read(&mut buf) {
            Ok(0) => Piped::StdoutEnd(None),
            Ok(n) => Piped::Stdout(buf[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Piped::StdoutEnd(Some(e.to_string())),
        };
        let end = matches!(what, Piped::StdoutEnd(_));
        mail.post(ProcMail { run, what });
        // The process left the table: nobody takes more.
        if end || credits.recv().is_err() {
            return;
        }
    }
}

/// The `err` thread: the request goes in (an agent that does not read it
/// is its own business: the deadlines still hold), stdin closes, and
/// stderr is logged line by line until it ends.
fn write_then_log(
    mut stdin: ChildStdin,
    request: &[u8],
    mut stderr: ChildStderr,
    log: &StderrLog,
    run: u64,
    mail: &Mailbox<ProcMail>,
) {
    if let Err(e) = stdin.write_all(request).and_then(|()| stdin.flush()) {
        tracing::debug!(run_id = %log.run_id, pid = log.pid, "the agent process did not take its request: {e}");
    }
    drop(stdin);
    let mut buf = [0u8; 4096];
    let mut line = Vec::with_capacity(256);
    let mut cut = false;
    loop {
        let n = match stderr.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for piece in buf[..n].split_inclusive(|b| *b == b'\n') {
            let (text, ends) = match piece.strip_suffix(b"\n") {
                Some(t) => (t, true),
                None => (piece, false),
            };
            // Nothing past the cap is kept: the rest of a long line is dropped.
            let room = STDERR_LINE_MAX.saturating_sub(line.len());
            cut |= text.len() > room;
            line.extend_from_slice(&text[..text.len().min(room)]);
            if ends {
                log.line(&line, cut, run, mail);
                line.clear();
                cut = false;
            }
        }
    }
    log.line(&line, cut, run, mail);
}

/// One process's stderr in the log: at most [`STDERR_LINES_PER_SEC`] lines
/// until the reactor gives the budget back ([`StderrLog::refill`]).
pub struct StderrLog {
    run_id: Arc<str>,
    pid: u32,
    left: AtomicU32,
    muted: AtomicBool,
    /// Dropped since the last refill.
    dropped: AtomicU64,
    metrics: Arc<ServerMetrics>,
}

impl StderrLog {
    fn line(&self, bytes: &[u8], cut: bool, run: u64, mail: &Mailbox<ProcMail>) {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            return;
        }
        if self
            .left
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            self.metrics.agent_stderr_lines_total.fetch_add(1, Relaxed);
            let text: String = text
                .chars()
                .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
                .collect();
            let more = if cut { " [cut]" } else { "" };
            tracing::info!(run_id = %self.run_id, pid = self.pid, "agent stderr: {text}{more}");
        } else {
            self.dropped.fetch_add(1, Relaxed);
            self.metrics
                .agent_stderr_dropped_total
                .fetch_add(1, Relaxed);
            if !self.muted.swap(true, Relaxed) {
                mail.post(ProcMail {
                    run,
                    what: Piped::StderrMuted,
                });
            }
        }
    }

    /// The budget is whole again; the lines dropped since the last refill.
    pub fn refill(&self) -> u64 {
        self.left.store(STDERR_LINES_PER_SEC, Relaxed);
        self.muted.store(false, Relaxed);
        self.dropped.swap(0, Relaxed)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }
}
