//! What the fuzz targets share: a byte-stream reader for the inputs, an
//! in-memory transport under a connection ([`Pipe`]), a checker of what a
//! server writes ([`Output`]: one valid HTTP response, then valid server
//! frames), client frames, and a heap counter for "buffers stay bounded".

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use pollcap::conn::Transport;
use pollcap::deflate::client::DeflateStream;
use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

/// Counts live heap bytes, so a target can check that memory held while
/// it drives a connection stays bounded by the limits it configured; and
/// stops the process on any single allocation over [`MAX_ALLOCATION`]
/// (libFuzzer's `-malloc_limit_mb` needs a sanitizer; this does not).
pub struct Counting;

/// The largest allocation any target may make: anything bigger is a
/// buffer sized by what a peer or a setting said, not by what arrived.
pub const MAX_ALLOCATION: usize = 512 << 20;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

fn too_big(size: usize) {
    if size > MAX_ALLOCATION {
        // An allocator must not unwind: report and abort (libFuzzer keeps
        // the input as a crash).
        eprintln!("allocation of {size} bytes, over the {MAX_ALLOCATION}-byte limit");
        std::process::abort();
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        too_big(l.size());
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        too_big(l.size());
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        too_big(new);
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            // Old and new blocks both live during a moving realloc.
            grew(new);
            LIVE.fetch_sub(l.size(), Relaxed);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Live heap bytes of the whole process.
pub fn live_heap() -> usize {
    LIVE.load(Relaxed)
}

/// The most live heap bytes since the last [`reset_peak_heap`].
pub fn peak_heap() -> usize {
    PEAK.load(Relaxed)
}

pub fn reset_peak_heap() {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}

/// Reads a fuzz input front to back; past its end every byte is 0, so a
/// short input is a valid (if boring) program.
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data, pos: 0 }
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }
    pub fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        u64::from_le_bytes(b)
    }
    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }
    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        self.pos = self.data.len();
        &self.data[start..]
    }
}

/// One side of an in-memory connection, shared by the transport the
/// connection owns and the target playing the peer.
#[derive(Default)]
pub struct PipeState {
    /// Bytes the peer sent that the connection has not read.
    pub inbound: VecDeque<u8>,
    /// The peer shut down its sending side: reads return 0 once drained.
    pub eof: bool,
    /// Largest read the transport returns (short reads), 0 = no limit.
    pub read_max: usize,
    /// Bytes the connection wrote that the peer has not read.
    pub outbound: Vec<u8>,
    /// At most this many unread bytes fit: then writes say `WouldBlock`.
    pub window: usize,
    /// The next read / write fails with a connection reset.
    pub fail_read: bool,
    pub fail_write: bool,
    /// Whether a short read proves the stream drained (as on Linux).
    pub short_read_drains: bool,
}

#[derive(Clone)]
pub struct Pipe(pub Rc<RefCell<PipeState>>);

impl Pipe {
    pub fn new(window: usize) -> Pipe {
        Pipe(Rc::new(RefCell::new(PipeState {
            window,
            ..PipeState::default()
        })))
    }
    pub fn send(&self, bytes: &[u8]) {
        self.0.borrow_mut().inbound.extend(bytes);
    }
    /// What the connection wrote, up to `n` bytes, as the peer reads it.
    pub fn recv(&self, n: usize) -> Vec<u8> {
        let mut s = self.0.borrow_mut();
        let n = n.min(s.outbound.len());
        s.outbound.drain(..n).collect()
    }
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.0.borrow_mut();
        if std::mem::take(&mut s.fail_read) {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if s.inbound.is_empty() {
            return if s.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let mut n = buf.len().min(s.inbound.len());
        if s.read_max > 0 {
            n = n.min(s.read_max);
        }
        for (d, b) in buf.iter_mut().zip(s.inbound.drain(..n)) {
            *d = b;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.0.borrow_mut();
        if std::mem::take(&mut s.fail_write) {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let room = s.window.saturating_sub(s.outbound.len());
        if room == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = room.min(buf.len());
        s.outbound.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Pipe {
    fn received(&self) -> u64 {
        0 // counted by the connection, as for plain TCP
    }
    fn short_read_drains(&self) -> bool {
        self.0.borrow().short_read_drains
    }
}

/// A checked HTTP response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub head_len: usize,
    /// `Content-Length` (0 for a 101).
    pub body_len: usize,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a response head the way a strict client would: `Ok(None)` while
/// incomplete; an error names what is wrong. Every response other than a
/// 101 must say how long it is and that the connection closes.
pub fn response_head(bytes: &[u8]) -> Result<Option<ResponseHead>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let head_len = match r.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "not HTTP: {e}: {:?}",
                String::from_utf8_lossy(bytes)
            ));
        }
    };
    if r.version != Some(1) {
        return Err(format!("not HTTP/1.1: {:?}", r.version));
    }
    let status = r.code.ok_or("no status")?;
    let mut hs = Vec::new();
    for h in r.headers.iter() {
        let v = std::str::from_utf8(h.value).map_err(|_| format!("header {} not UTF-8", h.name))?;
        hs.push((h.name.to_string(), v.to_string()));
    }
    let mut head = ResponseHead {
        status,
        head_len,
        body_len: 0,
        headers: hs,
    };
    if status == 101 {
        for (name, want) in [("upgrade", "websocket"), ("connection", "upgrade")] {
            match head.header(name) {
                Some(v) if v.eq_ignore_ascii_case(want) => {}
                other => return Err(format!("101 with {name}: {other:?}")),
            }
        }
        if head.header("sec-websocket-accept").is_none() {
            return Err("101 without Sec-WebSocket-Accept".into());
        }
        return Ok(Some(head));
    }
    if !(200..600).contains(&status) {
        return Err(format!("unexpected status {status}"));
    }
    let lengths: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    let [len] = lengths[..] else {
        return Err(format!("{status} with Content-Length {lengths:?}"));
    };
    head.body_len = len.parse().map_err(|_| format!("Content-Length {len:?}"))?;
    if !head
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    {
        return Err(format!("{status} without Connection: close"));
    }
    Ok(Some(head))
}

/// A whole response (head and body) as built by `pollcap::http`.
pub fn check_response(bytes: &[u8]) -> Result<ResponseHead, String> {
    let head = response_head(bytes)?.ok_or("incomplete response head")?;
    if bytes.len() != head.head_len + head.body_len {
        return Err(format!(
            "body is {} bytes, Content-Length says {}",
            bytes.len() - head.head_len,
            head.body_len
        ));
    }
    Ok(head)
}

/// Reads from a queue the checker fills; `WouldBlock` when empty. Writes
/// (a client's automatic pongs) go nowhere: the checker only listens.
/// Also the frame_boundary target's reference reader.
#[derive(Default)]
pub struct Feed(pub Rc<RefCell<VecDeque<u8>>>);

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut q = self.0.borrow_mut();
        if q.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(q.len());
        for (d, b) in buf.iter_mut().zip(q.drain(..n)) {
            *d = b;
        }
        Ok(n)
    }
}

impl Write for Feed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Stage {
    Head(Vec<u8>),
    Body {
        left: usize,
    },
    /// A response with `Connection: close` is over: nothing may follow.
    Over,
    Frames {
        queue: Rc<RefCell<VecDeque<u8>>>,
        /// Under tungstenite, the library's client stream: it lets the
        /// server's compressed messages through when the 101 agreed to
        /// permessage-deflate, and they must inflate.
        client: Box<WebSocket<DeflateStream<Feed>>>,
    },
    /// The server's Close frame was read: nothing may follow.
    Closed,
}

/// Follows everything a server connection writes, as a strict client
/// reads it: one HTTP response, then (after a 101) server frames that
/// tungstenite's client accepts, ending with at most one Close.
pub struct Output {
    stage: Stage,
    /// Status of the response, once its head was read.
    pub status: Option<u16>,
    /// The `Sec-WebSocket-Accept` the 101 must carry, when known.
    pub accept: Option<String>,
    /// Messages read after the 101, and the Close code if one came.
    pub messages: usize,
    pub close_code: Option<u16>,
}

impl Default for Output {
    fn default() -> Output {
        Output::new()
    }
}

impl Output {
    pub fn new() -> Output {
        Output {
            stage: Stage::Head(Vec::new()),
            status: None,
            accept: None,
            messages: 0,
            close_code: None,
        }
    }

    /// Checks the next bytes the server wrote.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            match &mut self.stage {
                Stage::Head(buf) => {
                    buf.extend_from_slice(bytes);
                    bytes = &[];
                    let Some(head) = response_head(buf)? else {
                        if buf.len() > 64 * 1024 {
                            return Err("response head over 64 KiB".into());
                        }
                        continue;
                    };
                    self.status = Some(head.status);
                    let rest = buf.split_off(head.head_len);
                    if head.status == 101 {
                        if let Some(want) = &self.accept {
                            let got = head.header("sec-websocket-accept");
                            if got != Some(want.as_str()) {
                                return Err(format!("101 accept {got:?}, want {want}"));
                            }
                        }
                        let queue = Rc::new(RefCell::new(VecDeque::new()));
                        let config = WebSocketConfig::default()
                            .read_buffer_size(4096)
                            .max_message_size(None)
                            .max_frame_size(None);
                        let mut stream = DeflateStream::new(Feed(queue.clone()));
                        let answer: Vec<&str> = head
                            .headers
                            .iter()
                            .filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions"))
                            .map(|(_, v)| v.as_str())
                            .collect();
                        stream
                            .accept(&answer)
                            .map_err(|e| format!("101 with an invalid extension answer: {e}"))?;
                        let client = WebSocket::from_raw_socket(stream, Role::Client, Some(config));
                        self.stage = Stage::Frames {
                            queue,
                            client: Box::new(client),
                        };
                    } else {
                        self.stage = Stage::Body {
                            left: head.body_len,
                        };
                    }
                    self.feed(&rest)?;
                }
                Stage::Body { left } => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.stage = Stage::Over;
                    }
                }
                Stage::Over => {
                    return Err(format!(
                        "{} bytes after a complete {:?} response",
                        bytes.len(),
                        self.status
                    ));
                }
                Stage::Frames { queue, client } => {
                    queue.borrow_mut().extend(bytes);
                    bytes = &[];
                    loop {
                        match client.read() {
                            Ok(Message::Close(f)) => {
                                self.close_code = Some(f.map_or(1005, |f| f.code.into()));
                                let left = queue.borrow().len();
                                self.stage = Stage::Closed;
                                if left > 0 {
                                    return Err(format!("{left} bytes after the Close frame"));
                                }
                                break;
                            }
                            Ok(m) => {
                                client.get_mut().inbound(m, usize::MAX >> 1).map_err(|e| {
                                    format!("a compressed server message does not inflate: {e}")
                                })?;
                                self.messages += 1;
                            }
                            Err(tungstenite::Error::Io(e))
                                if e.kind() == io::ErrorKind::WouldBlock =>
                            {
                                break;
                            }
                            Err(e) => return Err(format!("invalid server frames: {e}")),
                        }
                    }
                }
                Stage::Closed => {
                    return Err(format!("{} bytes after the Close frame", bytes.len()));
                }
            }
        }
        Ok(())
    }
}

/// A masked client frame.
pub fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![first];
    let len = payload.len();
    match len {
        0..=125 => f.push(0x80 | len as u8),
        126..=65535 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The RFC 6455 example key, and a valid upgrade request for `path`.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

pub fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
    )
}
