//! Admission of an upgrade request, cheapest refusal first: the browser
//! origin (403), the client address's connections and connection rate
//! (429), the bearer token (401), the subprotocol (400), then one
//! WebSocket slot — not draining, circuit breaker closed, under
//! `max_connections` (503) — and last the application's own decision:
//! its `open` runs on the worker pool (503 when the pool cannot take it)
//! while the request waits, and its [`Decided`] comes back through the
//! reactor's mailbox ([`decided`]): the 101, the handler's refusal (its
//! status; not counted by the breaker) or its failure (500, counted). A
//! decision later than the handshake deadline finds the 503 the
//! connection answered meanwhile ([`undecided`]). Also the per-message
//! rate check of an open connection ([`rate`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::Shared;
use super::entry::{Admission, Deciding, Entry};
use crate::app::{App, Decision, Refusal, Request, Session};
use crate::auth;
use crate::breaker::{Breaker, Permit};
use crate::conn::Cx;
use crate::frontdoor::{self, ConnRate, Over, Refused};
use crate::http::{self, Head, Response, UpgradeRequest};
use crate::reactor::WallClock;
use crate::source::pool::{self, Decided};

/// An upgrade the server's own checks let through, holding a slot.
struct Admitted {
    /// What the application's `open` is asked (the session inside).
    request: Request,
    protocol: Option<&'static str>,
    /// The client address counted in the per-address table.
    client: Option<IpAddr>,
    rate: Option<Box<ConnRate>>,
    permit: Permit,
}

/// Decides upgrade request `u` (of head `head`, whose headers it takes)
/// of connection `conn_id` from `peer` at `now`, up to the application.
fn admit(
    sh: &Shared,
    u: &UpgradeRequest,
    head: &mut Head,
    peer: IpAddr,
    conn_id: u64,
    now: Instant,
    wall: WallClock,
) -> Result<Admitted, Response> {
    origin(sh, u, now)?;
    let (client, addr) = client_slot(sh, u, peer, now)?;
    let give_back = |r: Response| {
        if let (Some(c), Some(key)) = (&sh.clients, client) {
            c.release(key, now);
        }
        r
    };
    let subject = authenticate(sh, u, now, wall).map_err(give_back)?;
    let protocol = subprotocol(sh, u).map_err(give_back)?;
    let trace = u
        .traceparent
        .as_deref()
        .and_then(crate::trace::Trace::parse);
    let permit = take_slot(sh, now).map_err(give_back)?;
    let session = Session {
        conn_id,
        subject,
        trace,
        peer: addr,
        path: std::mem::take(&mut head.path),
        query: head.query.take(),
    };
    let request = Request {
        session,
        headers: std::mem::take(&mut head.headers),
    };
    let s = &sh.cfg.settings;
    Ok(Admitted {
        request,
        protocol,
        client,
        rate: ConnRate::new(&s.clients, s.limits.max_message, now).map(Box::new),
        permit,
    })
}

/// Answers upgrade request `u` (of `head`) of connection `e` (slot `key`
/// on reactor `reactor`): the refusal, the 101 (echo), or — for a
/// handler — its `open` queued on the pool, the request waiting for
/// [`decided`]. The counted address and rate buckets are kept on `e`.
pub(super) fn answer(
    sh: &Shared,
    u: &UpgradeRequest,
    mut head: Box<Head>,
    (key, reactor): (usize, usize),
    e: &mut Entry,
    cx: &mut Cx,
    wall: WallClock,
) {
    let a = match admit(sh, u, &mut head, e.addr, e.conn.id(), cx.now, wall) {
        Ok(a) => a,
        Err(r) => return e.conn.respond(r, cx),
    };
    if let Some(client) = a.client {
        (e.addr, e.counted) = (client, true);
    }
    e.rate = a.rate;
    let (App::Handler(h), Some(pool)) = (&sh.cfg.app, &sh.pool) else {
        breaker(sh).success(a.permit);
        e.admission = Admission::Open(Arc::new(a.request.session));
        return e.conn.accept(a.protocol, cx);
    };
    // On the opens' own threads: runs holding every run thread cannot
    // make an upgrade wait past its deadline. A pool whose runs' queue is
    // full refuses it all the same: its messages would be `overloaded`.
    let reply = sh.decisions[reactor].clone();
    let job = pool::open_job(h.clone(), a.request, e.at(key), reply, sh.metrics.clone());
    if pool.saturated() || pool.try_open(job).is_err() {
        sh.metrics.open.fetch_sub(1, Relaxed);
        breaker(sh).failure(a.permit, cx.now);
        tracing::warn!(conn = e.conn.id(), "handler pool saturated at open");
        let close = sh.cfg.settings.timeouts.close;
        return e.conn.respond(busy("server overloaded\n", close), cx);
    }
    e.admission = Admission::Deciding(Box::new(Deciding {
        permit: a.permit,
        protocol: a.protocol,
    }));
}

/// Applies the application's decision on the upgrade waiting on `e`
/// (its [`Admission::Deciding`]): the 101, or the refusal or failure
/// response, settling the breaker's permit. A refusal is the handler's
/// answer working as meant: a success for the breaker.
pub(super) fn decided(sh: &Shared, e: &mut Entry, d: Decided, cx: &mut Cx) {
    // Only an upgrade still deciding takes it; an open session keeps its
    // admission (its slot and its `close` depend on it).
    let Some(waiting) = e.take_deciding() else {
        return late(sh, d);
    };
    let Deciding { permit, protocol } = *waiting;
    let conn = e.conn.id();
    let failure = match d.decision {
        Decision::Accept => {
            breaker(sh).success(permit);
            e.admission = Admission::Open(d.session);
            return e.conn.accept(protocol, cx);
        }
        Decision::Refuse(r) => match refusal(&r) {
            Ok(response) => {
                breaker(sh).success(permit);
                sh.metrics.open.fetch_sub(1, Relaxed);
                sh.metrics.open_refusals_total.fetch_add(1, Relaxed);
                tracing::debug!(
                    conn,
                    status = r.status,
                    "the application refused the upgrade"
                );
                return e.conn.respond(response, cx);
            }
            Err(bug) => bug,
        },
        Decision::Fail(why) => why,
    };
    sh.metrics.open.fetch_sub(1, Relaxed);
    breaker(sh).failure(permit, cx.now);
    tracing::warn!(conn, "application failed to open the session: {failure}");
    e.conn.respond(
        http::text(
            500,
            "Internal Server Error",
            &format!("application failed to open the session: {failure}\n"),
        ),
        cx,
    );
}

/// A decision that found its request no longer waiting (answered 503 at
/// its deadline, or its connection gone): an accepted session is closed
/// at once, since `close` follows every accepted `open`.
pub(super) fn late(sh: &Shared, d: Decided) {
    tracing::debug!(conn = d.conn.id, "the application decided too late");
    if let (Decision::Accept, App::Handler(h)) = (&d.decision, &sh.cfg.app) {
        h.close(&d.session);
    }
}

/// The upgrade waiting on `e` ends without a decision: its deadline
/// passed (`timed_out`: the application was too slow, a failure for the
/// breaker) or its connection is going (no verdict). Gives its slot back.
pub(super) fn undecided(sh: &Shared, e: &mut Entry, timed_out: bool, now: Instant) {
    let Some(waiting) = e.take_deciding() else {
        return; // not deciding: an open session keeps its slot until removed
    };
    sh.metrics.open.fetch_sub(1, Relaxed);
    if timed_out {
        tracing::warn!(
            conn = e.conn.id(),
            "the application did not decide within the handshake deadline: 503"
        );
        breaker(sh).failure(waiting.permit, now);
    } else {
        breaker(sh).release(waiting.permit);
    }
}

/// The response for a handler's refusal, or why it cannot be sent (a
/// handler bug: answered 500 instead).
fn refusal(r: &Refusal) -> Result<Response, String> {
    if !(300..=599).contains(&r.status) {
        return Err(format!(
            "refused with status {}, not a 3xx, 4xx or 5xx",
            r.status
        ));
    }
    let mut body = r.reason.clone();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let mut response = http::text(r.status, http::reason_phrase(r.status), &body);
    for (name, value) in &r.headers {
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let owned = [
            "content-length",
            "content-type",
            "connection",
            "transfer-encoding",
        ]
        .iter()
        .any(|o| name.eq_ignore_ascii_case(o));
        let clean = !value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0));
        if !token || owned || !clean {
            return Err(format!(
                "refused with header {name:?}, which it may not set"
            ));
        }
        response = http::with_header(response, name, value);
    }
    Ok(response)
}

fn breaker(sh: &Shared) -> std::sync::MutexGuard<'_, Breaker> {
    sh.breaker.lock().unwrap_or_else(|p| p.into_inner())
}

/// A 503 with `Retry-After` (at least a second).
fn busy(body: &str, retry: Duration) -> Response {
    let r = http::text(503, "Service Unavailable", body);
    http::with_header(r, "Retry-After", &retry.as_secs().max(1).to_string())
}

/// Counts and logs (at most once a second) a front-door refusal.
fn refuse(sh: &Shared, why: Refused, now: Instant, what: std::fmt::Arguments) {
    sh.metrics.refused(why);
    sh.metrics.refusal_log.note(why, now, what);
}

/// A browser's request from an origin that is not allowed: 403, before
/// any token is looked at (cross-site WebSocket hijacking).
fn origin(sh: &Shared, u: &UpgradeRequest, now: Instant) -> Result<(), Response> {
    let allowed = &sh.cfg.settings.allowed_origins;
    if frontdoor::origin_allowed(allowed, u.origin.as_deref(), u.host.as_deref()) {
        return Ok(());
    }
    let origin = u.origin.as_deref().unwrap_or_default();
    refuse(
        sh,
        Refused::Origin,
        now,
        format_args!("origin {origin:?} is not allowed (403)"),
    );
    Err(http::text(
        403,
        "Forbidden",
        "this origin may not open a WebSocket here (--allowed-origins)\n",
    ))
}

/// The client address (through trusted proxies), and its key in the
/// per-address table when it is counted against those limits (`None`
/// when they are off); or the 429 (400 for forwarding headers that
/// disagree).
fn client_slot(
    sh: &Shared,
    u: &UpgradeRequest,
    peer: IpAddr,
    now: Instant,
) -> Result<(Option<IpAddr>, IpAddr), Response> {
    let s = &sh.cfg.settings;
    let client = frontdoor::client_addr(
        peer,
        &s.trust_proxy,
        u.forwarded_for.as_deref(),
        u.forwarded.as_deref(),
    )
    .map_err(|why| {
        refuse(
            sh,
            why,
            now,
            format_args!("X-Forwarded-For and Forwarded from {peer} name different clients (400)"),
        );
        http::text(
            400,
            "Bad Request",
            "X-Forwarded-For and Forwarded name different clients\n",
        )
    })?;
    let Some(clients) = &sh.clients else {
        return Ok((None, client));
    };
    let key = frontdoor::key_of(client);
    match clients.admit(key, now) {
        Ok(()) => Ok((Some(key), client)),
        Err(over) => {
            let (why, retry, body) = match over {
                Over::Connections => (
                    Refused::IpConnections,
                    5,
                    "too many connections from your address\n",
                ),
                Over::Rate(secs) => (
                    Refused::IpRate,
                    secs,
                    "too many new connections from your address; slow down\n",
                ),
            };
            refuse(
                sh,
                why,
                now,
                format_args!("client {client} (429, {})", why.name()),
            );
            let r = http::text(429, "Too Many Requests", body);
            Err(http::with_header(r, "Retry-After", &retry.to_string()))
        }
    }
}

/// An open connection's inbound message of `len` bytes against its
/// buckets: `Err` (counted, logged) means close 1008 `rate limit`.
pub(super) fn rate(
    sh: &Shared,
    rate: &mut ConnRate,
    len: usize,
    conn: u64,
    now: Instant,
) -> Result<(), Refused> {
    let s = &sh.cfg.settings;
    rate.take(len, &s.clients, s.limits.max_message, now)
        .inspect_err(|why| {
            sh.metrics.refused(*why);
            sh.metrics.refusal_log.note(
                *why,
                now,
                format_args!("connection {conn} over its {} rate: close 1008", why.name()),
            )
        })
}

/// The token's subject (`None` when authentication is off), or the 401.
fn authenticate(
    sh: &Shared,
    u: &UpgradeRequest,
    now: Instant,
    wall: WallClock,
) -> Result<Option<String>, Response> {
    let Some(auth) = &sh.cfg.auth else {
        return Ok(None);
    };
    let token = auth::token_from(u.authorization.as_deref(), &u.protocols);
    match auth.check(token, wall.unix_secs(now)) {
        Ok(id) => Ok(Some(id.subject)),
        Err(e) => {
            sh.metrics.auth_failures_total.fetch_add(1, Relaxed);
            let r = http::text(401, "Unauthorized", &format!("{e}\n"));
            Err(http::with_header(r, "WWW-Authenticate", "Bearer"))
        }
    }
}

/// The subprotocol to select. A `bearer.<token>` entry carries a
/// credential, not a protocol: it is never selected or echoed back. A
/// client that sent a subprotocol list but offers nothing the application
/// speaks — only unknown protocols, or only a `bearer.<token>` entry — is
/// refused with 400 naming the supported ones: a browser that sent a list
/// aborts (1006, no message) on a 101 that selects none, so a silent
/// mismatch is never the answer.
fn subprotocol(sh: &Shared, u: &UpgradeRequest) -> Result<Option<&'static str>, Response> {
    choose_subprotocol(&u.protocols, sh.cfg.app.subprotocols())
}

/// [`subprotocol`] without the server: what the client `offered`, what
/// the application `supported` (pure, so the fuzz targets can drive it).
pub(crate) fn choose_subprotocol(
    offered: &[String],
    supported: &'static [&'static str],
) -> Result<Option<&'static str>, Response> {
    let protocols: Vec<String> = offered
        .iter()
        .filter(|p| !p.starts_with(auth::SUBPROTOCOL_PREFIX))
        .cloned()
        .collect();
    let protocol = http::select_protocol(&protocols, supported);
    if !offered.is_empty() && protocol.is_none() {
        let named = if supported.is_empty() {
            "(none)".to_string()
        } else {
            supported.join(", ")
        };
        let why = if protocols.is_empty() {
            "the subprotocol list holds only a bearer.<token> credential; supported:"
        } else {
            "unsupported subprotocol; supported:"
        };
        let body = format!("{why} {named}\n");
        return Err(http::text(400, "Bad Request", &body));
    }
    Ok(protocol)
}

/// Takes one WebSocket slot (counted in `open`) and the breaker's permit
/// for it, which the application's decision settles; or answers why not.
fn take_slot(sh: &Shared, now: Instant) -> Result<Permit, Response> {
    let close = sh.cfg.settings.timeouts.close;
    if sh.draining.load(Relaxed) {
        return Err(busy("server draining\n", close));
    }
    let permit = breaker(sh).allow(now).map_err(|r| {
        busy(
            "circuit breaker open: server failing; retry later\n",
            r.retry_after,
        )
    })?;
    // The connection limit is capacity, not a fault: it answers 503
    // without tripping the breaker (which would turn load into an outage).
    let max = sh.cfg.settings.limits.max_connections as u64;
    if sh
        .metrics
        .open
        .fetch_update(Relaxed, Relaxed, |o| (o < max).then_some(o + 1))
        .is_err()
    {
        breaker(sh).success(permit);
        return Err(busy("too many connections\n", close));
    }
    Ok(permit)
}
