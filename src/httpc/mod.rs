//! The HTTP/1.1 client of the runtime: one request out, one response in,
//! sans-IO. [`Exchange`] wraps ureq-proto's call state machine: the
//! request is written into bytes at once (it is small), and received
//! bytes are fed in as they arrive; what comes out is the response head,
//! then body bytes with the transfer coding removed. The caller owns the
//! socket and every deadline — the reactor for upstream agent runs
//! (`crate::source::upstream`), a helper thread with socket timeouts for a
//! one-off fetch ([`fetch`]).
//!
//! Parts: `url` (what may be asked for), `fetch` (a whole exchange over a
//! blocking socket, for helper threads).

// Only the key-set refresher (feature `idp`) fetches.
#[cfg_attr(not(feature = "idp"), allow(dead_code))]
mod fetch;
mod url;

#[cfg(test)]
use fetch::FetchError;
#[cfg_attr(not(feature = "idp"), allow(unused_imports))]
pub use fetch::{Limits, TlsConfig, fetch};
pub use url::Target;

use ureq_proto::BodyMode;
use ureq_proto::client::state::{RecvBody, RecvResponse};
use ureq_proto::client::{Call, RecvResponseResult, SendRequestResult};
use ureq_proto::http::{self, HeaderValue, Request};

/// Most bytes of a response head (status line and headers).
pub const MAX_HEAD: usize = 16 * 1024;

/// The response head, as far as a client here needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// The media type of `Content-Type`, lower case, without parameters.
    pub media_type: Option<String>,
    /// `Retry-After` in seconds, when it is a number.
    pub retry_after_s: Option<u64>,
}

/// Why an exchange failed (the socket's own errors are the caller's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The request could not be built (a header value, the URL).
    Request(String),
    /// The response head is not HTTP/1.x, or over [`MAX_HEAD`].
    BadHead(String),
    /// The body's framing is broken (a bad chunk size, say).
    BadBody(String),
    /// The connection ended before the response head.
    NoResponse,
    /// The connection ended inside the body.
    Truncated,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Request(e) => write!(f, "the request could not be built: {e}"),
            Error::BadHead(e) => write!(f, "bad response head: {e}"),
            Error::BadBody(e) => write!(f, "bad response body: {e}"),
            Error::NoResponse => f.write_str("the connection ended before a response"),
            Error::Truncated => f.write_str("the connection ended inside the response body"),
        }
    }
}

impl std::error::Error for Error {}

/// What feeding bytes produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The response head, once, when it completed.
    pub head: Option<Head>,
    /// The response is complete (its body ended as its framing says).
    pub done: bool,
}

enum State {
    AwaitHead(Call<RecvResponse>),
    Body(Call<RecvBody>),
    Done,
    /// Taken out while moving between states.
    Gone,
}

/// One request/response exchange.
pub struct Exchange {
    state: State,
    /// The request, head and body, and how much of it is sent.
    out: Vec<u8>,
    sent: usize,
    /// Received bytes not consumed yet (a partial head or chunk header).
    pending: Vec<u8>,
}

impl Exchange {
    /// A request to `target` with `method`, `headers` (besides `Host`,
    /// which comes from the target, and `Content-Length`) and `body`.
    pub fn new(
        method: &str,
        target: &Target,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Exchange, Error> {
        let req = |e: &dyn std::fmt::Display| Error::Request(e.to_string());
        let mut b = Request::builder()
            .method(method)
            .uri(target.uri.as_str())
            .version(http::Version::HTTP_11);
        for (k, v) in headers {
            let v = HeaderValue::from_str(v).map_err(|e| req(&e))?;
            b = b.header(*k, v);
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            b = b.header("content-length", body.len().to_string());
        }
        let request = b.body(()).map_err(|e| req(&e))?;
        let call = Call::new(request).map_err(|e| req(&e))?;
        let mut send = call.proceed();
        let mut out = vec![
            0u8;
            1024 + headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
        ];
        let n = send.write(&mut out).map_err(|e| req(&e))?;
        out.truncate(n);
        match send.proceed().map_err(|e| req(&e))? {
            Some(SendRequestResult::RecvResponse(_)) => {}
            Some(SendRequestResult::SendBody(mut s)) => {
                let mut chunk = vec![0u8; body.len() + 64];
                let (used, n) = s.write(body, &mut chunk).map_err(|e| req(&e))?;
                if used != body.len() {
                    return Err(Error::Request("the body did not fit".into()));
                }
                out.extend_from_slice(&chunk[..n]);
                if s.proceed().is_none() {
                    return Err(Error::Request("the body was not sent".into()));
                }
            }
            Some(SendRequestResult::Await100(_)) | None => {
                return Err(Error::Request("unexpected request state".into()));
            }
        }
        // The call that wrote the request (and its `HeaderMap`, the largest
        // part of an upstream run's memory) goes now; the response is read
        // by a call that holds no headers.
        let recv = receiver(method).map_err(|e| req(&e))?;
        Ok(Exchange {
            state: State::AwaitHead(recv),
            out,
            sent: 0,
            pending: Vec::new(),
        })
    }

    /// Request bytes not sent yet.
    pub fn to_send(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    /// `n` more request bytes went out.
    pub fn sent(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.out.len());
        if self.sent == self.out.len() {
            // Done with the request: give its memory back.
            self.out = Vec::new();
            self.sent = 0;
        }
    }

    /// The whole request went out.
    pub fn request_sent(&self) -> bool {
        self.out.is_empty()
    }

    /// Bytes received, in order. Body bytes (decoded) are appended to
    /// `body`; the head, once complete, is in the result.
    pub fn feed(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<Progress, Error> {
        let mut progress = Progress::default();
        // Consume from `pending` first when it holds a partial head or
        // chunk header; otherwise straight from `input`.
        let mut owned;
        let mut data: &[u8] = if self.pending.is_empty() {
            input
        } else {
            self.pending.extend_from_slice(input);
            owned = std::mem::take(&mut self.pending);
            &mut owned[..]
        };
        loop {
            match std::mem::replace(&mut self.state, State::Gone) {
                State::AwaitHead(mut call) => {
                    let (used, response) = call
                        .try_response(data, false)
                        .map_err(|e| Error::BadHead(e.to_string()))?;
                    data = &data[used..];
                    let Some(response) = response else {
                        if used > 0 {
                            self.state = State::AwaitHead(call);
                            continue; // a 1xx was skipped
                        }
                        if data.len() > MAX_HEAD {
                            return Err(Error::BadHead(format!("over {MAX_HEAD} bytes")));
                        }
                        self.pending = data.to_vec();
                        self.state = State::AwaitHead(call);
                        return Ok(progress);
                    };
                    progress.head = Some(head_of(&response));
                    match call.proceed() {
                        Some(RecvResponseResult::RecvBody(b)) => self.state = State::Body(b),
                        Some(RecvResponseResult::Cleanup(_) | RecvResponseResult::Redirect(_)) => {
                            // No body (204, 304, or a redirect not followed).
                            self.state = State::Done;
                            progress.done = true;
                            return Ok(progress);
                        }
                        None => return Err(Error::BadHead("incomplete".into())),
                    }
                }
                State::Body(mut call) => {
                    loop {
                        // Decoded straight into `body`: the decoded bytes
                        // are never more than the input (a transfer coding
                        // only removes bytes), so room for `data` is enough,
                        // and only that much is zeroed.
                        let at = body.len();
                        body.resize(at + data.len(), 0);
                        let r = call.read(data, &mut body[at..]);
                        let (used, n) = r.map_err(|e| {
                            body.truncate(at);
                            Error::BadBody(e.to_string())
                        })?;
                        body.truncate(at + n);
                        data = &data[used..];
                        if call.can_proceed()
                            && !matches!(call.body_mode(), BodyMode::CloseDelimited)
                        {
                            self.state = State::Done;
                            progress.done = true;
                            return Ok(progress);
                        }
                        if used == 0 && n == 0 {
                            break;
                        }
                    }
                    self.pending = data.to_vec();
                    self.state = State::Body(call);
                    return Ok(progress);
                }
                State::Done => {
                    self.state = State::Done;
                    progress.done = true;
                    return Ok(progress);
                }
                State::Gone => return Err(Error::BadBody("exchange used after an error".into())),
            }
        }
    }

    /// The connection ended (EOF): complete only for a body that ends so.
    pub fn eof(&mut self) -> Result<(), Error> {
        match &self.state {
            State::Done => Ok(()),
            State::AwaitHead(_) => Err(Error::NoResponse),
            State::Body(call) if matches!(call.body_mode(), BodyMode::CloseDelimited) => {
                self.state = State::Done;
                Ok(())
            }
            State::Body(_) | State::Gone => Err(Error::Truncated),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

/// A call that only reads the response to a request of `method` sent
/// by another call: it holds no headers. How a response is framed depends
/// on the request only through its method, and only for HEAD (no body)
/// and CONNECT (RFC 9112 §6.3; a target here is never CONNECT), so any
/// other method reads as GET.
fn receiver(method: &str) -> Result<Call<RecvResponse>, ureq_proto::Error> {
    let m = if method == "HEAD" {
        http::Method::HEAD
    } else {
        http::Method::GET
    };
    let request = Request::builder()
        .method(m)
        .uri("/")
        .body(())
        .map_err(|e| ureq_proto::Error::BadHeader(e.to_string()))?;
    let mut send = Call::new(request)?.proceed();
    // Its request line goes nowhere: "GET / HTTP/1.1" and the blank line.
    let mut sink = [0u8; 64];
    send.write(&mut sink)?;
    match send.proceed()? {
        Some(SendRequestResult::RecvResponse(r)) => Ok(r),
        _ => Err(ureq_proto::Error::BadHeader("no response state".into())),
    }
}

/// What the client needs of a response head.
fn head_of<T>(r: &http::Response<T>) -> Head {
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    Head {
        status: r.status().as_u16(),
        media_type: header("content-type").map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        }),
        retry_after_s: header("retry-after").and_then(|v| v.parse().ok()),
    }
}

#[cfg(test)]
mod tests;
