//! The plain routes: `/health` (JSON), `/metrics` (Prometheus text),
//! rendered from one [`Report`] gathered at `now`; `/` (the page) and
//! `/auth` (the token check the page uses to name a refused upgrade).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::{Shared, page};
use crate::auth;
use crate::breaker::Breaker;
use crate::http::{self, Head, Response, Route};
use crate::metrics::{AgentView, BreakerView, FrontDoorView, Report};
use crate::reactor::WallClock;

/// A breaker as reported, at `now`.
fn breaker_view(b: &mut Breaker, now: Instant) -> BreakerView {
    BreakerView {
        state: b.state(now).name(),
        consecutive_failures: b.consecutive_failures(),
        threshold: b.threshold(),
        recovery_s: b.recovery().as_secs_f64(),
        failures_total: b.total_failures,
        rejections_total: b.total_rejections,
        opened_total: b.times_opened,
    }
}

/// Everything the server reports, at `now`.
pub(super) fn report(sh: &Shared, now: Instant) -> Report<'_> {
    let breaker = breaker_view(
        &mut sh.breaker.lock().unwrap_or_else(|p| p.into_inner()),
        now,
    );
    let agent = match (&sh.cfg.upstream, &sh.cfg.command) {
        (Some(u), _) => Some(("http", format!("{:?}", u.target))),
        (None, Some(c)) => Some(("command", c.program().to_string())),
        (None, None) => None,
    };
    let agent = agent.map(|(kind, target)| AgentView {
        kind,
        target,
        breaker: breaker_view(&mut sh.agent_breaker(), now),
    });
    Report {
        settings: &sh.cfg.settings,
        metrics: &sh.metrics,
        breaker,
        app: sh.cfg.app.name(),
        pool: sh.pool.as_ref().map(|p| (p.threads(), p.queued())),
        auth: sh.cfg.auth.is_some(),
        reactors: sh.stats.iter().map(|s| s.snapshot()).collect(),
        reactor_threads: sh.stats.len(),
        draining: sh.draining.load(Relaxed),
        uptime: now.saturating_duration_since(sh.started),
        max_connections: sh.cfg.settings.limits.max_connections,
        #[cfg(feature = "tls")]
        tls: sh.cfg.tls.as_ref().map(|c| {
            (
                c.reloads_total.load(Relaxed),
                c.reload_failures_total.load(Relaxed),
            )
        }),
        #[cfg(not(feature = "tls"))]
        tls: None,
        store: sh.store.view(),
        log_lines_dropped: sh.cfg.log_lines_dropped.as_ref().map(|d| (d.0)()),
        front_door: FrontDoorView {
            client_table: sh
                .clients
                .as_ref()
                .map(|c| (c.len() as u64, c.evictions.load(Relaxed))),
            subjects_with_runs: sh.subjects.as_ref().map(|s| s.len() as u64),
            jwks: sh.cfg.auth.as_ref().and_then(|a| a.jwks_view()),
        },
        agent,
    }
}

/// The response to a plain route asked for by `head` at `now`.
pub(super) fn render(
    sh: &Shared,
    route: Route,
    head: &Head,
    now: Instant,
    wall: WallClock,
) -> Response {
    match route {
        Route::Health => {
            let report = report(sh, now);
            let (code, reason) = if report.draining {
                (503, "Service Unavailable")
            } else {
                (200, "OK")
            };
            http::response(
                code,
                reason,
                "application/json",
                report.health_json().as_bytes(),
            )
        }
        Route::Metrics => http::response(
            200,
            "OK",
            "text/plain; version=0.0.4; charset=utf-8",
            report(sh, now).prometheus().as_bytes(),
        ),
        Route::Index => page::response(&sh.cfg.settings.ws_path, head.host.as_deref()),
        Route::Auth => check_token(sh, head, now, wall),
    }
}

/// `GET /auth`: checks the `Authorization: Bearer` token exactly as an
/// upgrade would. A browser's WebSocket reports a refused upgrade only as
/// close code 1006, with no status and no body; the page asks here to
/// tell "token rejected" from "server unreachable". It reveals nothing an
/// upgrade attempt does not: whether the token is good, and why not.
fn check_token(sh: &Shared, head: &Head, now: Instant, wall: WallClock) -> Response {
    let json = |status, reason, v: serde_json::Value| {
        http::response(status, reason, "application/json", v.to_string().as_bytes())
    };
    let Some(checker) = &sh.cfg.auth else {
        return json(200, "OK", serde_json::json!({ "auth": false }));
    };
    let token = auth::token_from(head.authorization.as_deref(), &[]);
    match checker.check(token, wall.unix_secs(now)) {
        Ok(id) => json(
            200,
            "OK",
            serde_json::json!({ "auth": true, "subject": id.subject }),
        ),
        Err(e) => {
            tracing::info!("token check at /auth refused: {e}");
            let r = json(
                401,
                "Unauthorized",
                serde_json::json!({ "auth": true, "error": e.to_string() }),
            );
            http::with_header(r, "WWW-Authenticate", "Bearer")
        }
    }
}
