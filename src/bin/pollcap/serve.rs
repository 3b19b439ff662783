//! `pollcap serve`: the auth rule, the process limits and allocator
//! setting, the signal handler and the start-up line around the library's
//! `Server`.

use std::process::ExitCode;

use pollcap::server::{DroppedLines, Server, ServerConfig};
use pollcap::settings::Settings;

use super::{fail, sys};

pub fn run(
    settings: Settings,
    log_dropped: tracing_appender::non_blocking::ErrorCounter,
) -> ExitCode {
    let app = pollcap::apps::from_settings(&settings);
    let mut cfg = match ServerConfig::from_settings(settings, app) {
        Ok(cfg) => cfg,
        Err(e) => return fail(e.to_string()),
    };
    cfg.log_lines_dropped = Some(DroppedLines(std::sync::Arc::new(move || {
        log_dropped.dropped_lines() as u64
    })));
    let s = &cfg.settings;
    if cfg.auth.is_none() && !s.listen.ip().is_loopback() && !s.insecure_no_auth {
        return fail(format!(
            "refusing to listen on non-loopback address {} without authentication \
             (rule: auth may be off only on loopback); set POLLCAP_JWT_SECRET, \
             POLLCAP_JWKS_URL (with POLLCAP_JWT_AUDIENCE) or \
             POLLCAP_TOKENS_FILE, or pass --insecure-no-auth to accept the risk",
            s.listen
        ));
    }
    // Before the threads start: large buffers go back to the system when
    // freed, and the rest of the free heap every few seconds (see
    // `sys::fix_mmap_threshold`, `sys::trim_heap_periodically`).
    sys::fix_mmap_threshold();
    sys::trim_heap_periodically();
    let fds = sys::raise_fd_limit();
    if let Some(n) = fds.filter(|&n| n < s.limits.max_connections as u64 + 64) {
        tracing::warn!(
            "open-file limit {n} is below max_connections {} + 64: accepts will fail \
             (and pause) before the connection limit is reached; raise LimitNOFILE / ulimit -n",
            s.limits.max_connections
        );
    }
    let per_address = s.clients.max_connections_per_ip > 0 || s.clients.ip_connects_per_sec > 0;
    if per_address && s.trust_proxy.is_empty() && s.environment.is_cloud_container() {
        tracing::warn!(
            "per-address limits are on but --trust-proxy is not set: behind the platform's \
             load balancer every client has its address and shares one limit; set \
             --trust-proxy to the balancer's ranges (SECURITY.md)"
        );
    }
    let listen = s.listen;
    let summary = s.summary();
    let auth = if cfg.auth.is_some() { "on" } else { "off" };
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot listen on {listen}: {e}")),
    };
    let handle = server.shutdown_handle();
    if let Err(e) = ctrlc::set_handler(move || {
        tracing::info!("shutdown signal: draining");
        handle.shutdown();
    }) {
        return fail(format!("cannot install the shutdown signal handler: {e}"));
    }
    // SIGHUP reloads the certificate pair (when TLS is on) and never stops
    // the server: it replaces the termination handler `ctrlc` installed.
    if let Err(e) = pollcap::platform::catch_sighup() {
        return fail(format!("cannot install the SIGHUP handler: {e}"));
    }
    tracing::info!(
        "pollcap {} listening on {} fd_limit={} auth={auth} {summary}",
        env!("CARGO_PKG_VERSION"),
        server.local_addr(),
        fds.map_or("none".to_string(), |n| n.to_string()),
    );
    match server.join() {
        Ok(()) => {
            tracing::info!("drained; exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pollcap: reactor failed: {e}");
            ExitCode::FAILURE
        }
    }
}
