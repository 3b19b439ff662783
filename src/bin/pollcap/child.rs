//! A child `pollcap serve` started by the tools that measure one (`bench`,
//! `load soak`): spawned, its address read from its start-up line, its
//! stderr drained, and killed on drop.

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// A running child server; dropping it kills and reaps the process.
pub struct ServeChild {
    child: Child,
    pub addr: SocketAddr,
}

impl ServeChild {
    /// Spawns `cmd` (a `pollcap serve` command line whose log includes the
    /// info-level "listening on ADDR" line) with stderr piped, and waits
    /// for that line. Every later stderr line goes to `on_line` on a thread
    /// of its own, which keeps draining: a full pipe would block the server.
    pub fn spawn(
        mut cmd: Command,
        mut on_line: impl FnMut(String) + Send + 'static,
    ) -> io::Result<ServeChild> {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            return Err(io::Error::other("no stderr"));
        };
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = match lines.next() {
                Some(Ok(line)) => line,
                Some(Err(e)) => break Err(e),
                None => break Err(io::Error::other("the server exited before listening")),
            };
            if let Some(rest) = line.split("listening on ").nth(1) {
                let a = rest.split_whitespace().next().unwrap_or_default();
                break a
                    .parse()
                    .map_err(|_| io::Error::other(format!("bad address in {line:?}")));
            }
        };
        let addr = match addr {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(&mut on_line));
        Ok(ServeChild { child, addr })
    }

    /// The `ws://ADDR/ws` URL of the server.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (not exited, not crashed).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
