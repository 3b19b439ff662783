//! The plain routes: `/health` (JSON), `/metrics` (Prometheus text) and
//! `/` (the page), rendered from one [`Report`] gathered at `now`.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use super::Shared;
use crate::http::{self, Response, Route};
use crate::metrics::{BreakerView, Report};

/// Everything the server reports, at `now`.
pub(super) fn report(sh: &Shared, now: Instant) -> Report<'_> {
    let breaker = {
        let mut b = sh.breaker.lock().unwrap_or_else(|p| p.into_inner());
        BreakerView {
            state: b.state(now).name(),
            consecutive_failures: b.consecutive_failures(),
            threshold: b.threshold(),
            recovery_s: b.recovery().as_secs_f64(),
            failures_total: b.total_failures,
            rejections_total: b.total_rejections,
            opened_total: b.times_opened,
        }
    };
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
        tls: sh.cfg.tls.as_ref().map(|c| {
            (
                c.reloads_total.load(Relaxed),
                c.reload_failures_total.load(Relaxed),
            )
        }),
        store: sh.store.view(),
    }
}

/// The response to a plain route at `now`.
pub(super) fn render(sh: &Shared, route: Route, now: Instant) -> Response {
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
        Route::Index => http::response(
            200,
            "OK",
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><title>pollcap</title><h1>pollcap</h1>\
                 <p>WebSocket endpoint: <code>{}</code> · <a href=\"/health\">health</a> · \
                 <a href=\"/metrics\">metrics</a></p>\n",
                sh.cfg.settings.ws_path
            )
            .as_bytes(),
        ),
    }
}
