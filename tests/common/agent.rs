//! A scriptable agent on loopback for the upstream tests: it reads each
//! request, records it, and answers as the test's script says — a
//! well-behaved stream, or one of the ways an agent goes wrong. It
//! reports when a client goes away while it holds a stream open.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the agent saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub request_line: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: serde_json::Value,
}

/// How the agent answers one request.
pub enum Behavior {
    /// Write each piece (flushed), then close.
    Send(Vec<Vec<u8>>),
    /// Write each piece, then hold the connection open, writing nothing,
    /// until the client leaves.
    Hold(Vec<Vec<u8>>),
    /// Write the first piece, then `piece` every `every` until the client
    /// leaves (an agent streaming over time, or pinging forever).
    Repeat {
        first: Vec<u8>,
        piece: Vec<u8>,
        every: Duration,
    },
    /// Write each piece with `every` between them, then close.
    Paced(Vec<Vec<u8>>, Duration),
    /// Read the request and close without a word.
    Close,
}

pub struct FakeAgent {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// When a held or repeating stream found its client gone.
    pub gone: Receiver<Instant>,
    /// Connections served and closed (their descriptors are free).
    pub closed: Arc<std::sync::atomic::AtomicUsize>,
}

type Script = dyn Fn(&Seen) -> Behavior + Send + Sync;

impl FakeAgent {
    pub fn start(script: impl Fn(&Seen) -> Behavior + Send + Sync + 'static) -> FakeAgent {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, gone) = channel();
        let script: Arc<Script> = Arc::new(script);
        let log = seen.clone();
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = closed.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let (script, log, tx) = (script.clone(), log.clone(), tx.clone());
                let done = done.clone();
                std::thread::spawn(move || {
                    serve(s, &*script, &log, &tx); // the stream is dropped inside
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        FakeAgent {
            addr,
            seen,
            gone,
            closed,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/agent", self.addr)
    }

    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn serve(mut s: TcpStream, script: &Script, log: &Mutex<Vec<Seen>>, gone: &Sender<Instant>) {
    let Some(seen) = read_request(&mut s) else {
        return;
    };
    log.lock().unwrap().push(seen.clone());
    let write = |s: &mut TcpStream, b: &[u8]| s.write_all(b).and_then(|()| s.flush()).is_ok();
    match script(&seen) {
        Behavior::Send(pieces) => {
            for p in pieces {
                if !write(&mut s, &p) {
                    return;
                }
            }
        }
        Behavior::Hold(pieces) => {
            for p in pieces {
                if !write(&mut s, &p) {
                    return;
                }
            }
            // Blocks until the client closes (or resets) the connection.
            let mut b = [0u8; 256];
            while matches!(s.read(&mut b), Ok(n) if n > 0) {}
            let _ = gone.send(Instant::now());
        }
        Behavior::Repeat {
            first,
            piece,
            every,
        } => {
            if !write(&mut s, &first) {
                return;
            }
            loop {
                // The agent's own pace between events: what is under test.
                std::thread::sleep(every);
                if !write(&mut s, &piece) {
                    let _ = gone.send(Instant::now());
                    return;
                }
            }
        }
        Behavior::Paced(pieces, every) => {
            for (i, p) in pieces.into_iter().enumerate() {
                if i > 0 {
                    // The agent's own pace between events.
                    std::thread::sleep(every);
                }
                if !write(&mut s, &p) {
                    return;
                }
            }
        }
        Behavior::Close => {}
    }
}

fn read_request(s: &mut TcpStream) -> Option<Seen> {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut b).ok().filter(|n| *n > 0)?;
        got.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = got[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut b).ok().filter(|n| *n > 0)?;
        body.extend_from_slice(&b[..n]);
    }
    Some(Seen {
        request_line,
        headers,
        body: serde_json::from_slice(&body).ok()?,
    })
}

/// A response head; `chunked` adds the transfer coding.
pub fn head(status: u16, content_type: &str, chunked: bool) -> Vec<u8> {
    let te = if chunked {
        "Transfer-Encoding: chunked\r\n"
    } else {
        "Connection: close\r\n"
    };
    format!("HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n{te}\r\n").into_bytes()
}

/// One chunk of a chunked body.
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut c = format!("{:x}\r\n", data.len()).into_bytes();
    c.extend_from_slice(data);
    c.extend_from_slice(b"\r\n");
    c
}

/// The last chunk.
pub const END: &[u8] = b"0\r\n\r\n";

/// One SSE event carrying `json`.
pub fn sse(json: &serde_json::Value) -> Vec<u8> {
    format!("data: {json}\n\n").into_bytes()
}

/// One JSON Lines event.
pub fn line(json: &serde_json::Value) -> Vec<u8> {
    format!("{json}\n").into_bytes()
}
