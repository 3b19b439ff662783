//! Admission of an upgrade request, cheapest refusal first: the browser
//! origin (403), the client address's connections and connection rate
//! (429), the bearer token (401), the subprotocol (400), then one
//! WebSocket slot — not draining, circuit breaker closed, under
//! `max_connections`, handler pool not saturated, the application's
//! `open` accepting (503/500). The answer is a session and the protocol
//! to select, or the refusal to send. Also the per-message rate check of
//! an open connection ([`rate`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::Shared;
use super::entry::Entry;
use crate::app::{App, Session};
use crate::auth;
use crate::conn::Cx;
use crate::frontdoor::{self, ConnRate, Over, Refused};
use crate::http::{self, Response, UpgradeRequest};
use crate::reactor::WallClock;

/// An upgrade the server takes on.
pub(super) struct Admitted {
    pub session: Arc<Session>,
    pub protocol: Option<&'static str>,
    /// The client address counted in the per-address table.
    pub client: Option<IpAddr>,
    pub rate: Option<Box<ConnRate>>,
}

/// Decides an upgrade request of connection `conn_id` from `peer` at `now`.
fn admit(
    sh: &Shared,
    u: &UpgradeRequest,
    peer: IpAddr,
    conn_id: u64,
    now: Instant,
    wall: WallClock,
) -> Result<Admitted, Response> {
    origin(sh, u, now)?;
    let client = client_slot(sh, u, peer, now)?;
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
    let session = Session {
        conn_id,
        subject,
        trace,
    };
    take_slot(sh, &session, now).map_err(give_back)?;
    let s = &sh.cfg.settings;
    Ok(Admitted {
        session: Arc::new(session),
        protocol,
        client,
        rate: ConnRate::new(&s.clients, s.limits.max_message, now).map(Box::new),
    })
}

/// Answers upgrade request `u` of connection `e`: the 101 (its session,
/// its counted address and rate buckets kept on `e`) or the refusal.
pub(super) fn answer(sh: &Shared, u: &UpgradeRequest, e: &mut Entry, cx: &mut Cx, wall: WallClock) {
    match admit(sh, u, e.addr, e.conn.id(), cx.now, wall) {
        Ok(a) => {
            e.session = Some(a.session);
            if let Some(client) = a.client {
                (e.addr, e.counted) = (client, true);
            }
            e.rate = a.rate;
            e.conn.accept(a.protocol, cx);
        }
        Err(r) => e.conn.respond(r, cx),
    }
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

/// The client address (through trusted proxies) counted against the
/// per-address limits: its key in the table, `None` when they are off, or
/// the 429 (400 for forwarding headers that disagree).
fn client_slot(
    sh: &Shared,
    u: &UpgradeRequest,
    peer: IpAddr,
    now: Instant,
) -> Result<Option<IpAddr>, Response> {
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
        return Ok(None);
    };
    let key = frontdoor::key_of(client);
    match clients.admit(key, now) {
        Ok(()) => Ok(Some(key)),
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

/// Takes one WebSocket slot, or answers why not.
fn take_slot(sh: &Shared, session: &Session, now: Instant) -> Result<(), Response> {
    let close = sh.cfg.settings.timeouts.close;
    let busy = |body: &str, retry: Duration| {
        let r = http::text(503, "Service Unavailable", body);
        http::with_header(r, "Retry-After", &retry.as_secs().max(1).to_string())
    };
    if sh.draining.load(Relaxed) {
        return Err(busy("server draining\n", close));
    }
    let breaker = || sh.breaker.lock().unwrap_or_else(|p| p.into_inner());
    let permit = breaker().allow(now).map_err(|r| {
        busy(
            "circuit breaker open: server failing; retry later\n",
            r.retry_after,
        )
    })?;
    let fail = |r: Response| {
        breaker().failure(permit, now);
        Err(r)
    };
    // The connection limit is capacity, not a fault: it answers 503
    // without tripping the breaker (which would turn load into an outage).
    let max = sh.cfg.settings.limits.max_connections as u64;
    if sh
        .metrics
        .open
        .fetch_update(Relaxed, Relaxed, |o| (o < max).then_some(o + 1))
        .is_err()
    {
        breaker().success(permit);
        return Err(busy("too many connections\n", close));
    }
    if let App::Handler(h) = &sh.cfg.app {
        if sh.pool.as_ref().is_some_and(|p| p.saturated()) {
            sh.metrics.open.fetch_sub(1, Relaxed);
            tracing::warn!(conn = session.conn_id, "handler pool saturated at open");
            return fail(busy("server overloaded\n", close));
        }
        if let Err(e) = h.open(session) {
            sh.metrics.open.fetch_sub(1, Relaxed);
            tracing::warn!(conn = session.conn_id, "application refused to open: {e}");
            return fail(http::text(
                500,
                "Internal Server Error",
                &format!("application failed to open the session: {e}\n"),
            ));
        }
    }
    breaker().success(permit);
    Ok(())
}
