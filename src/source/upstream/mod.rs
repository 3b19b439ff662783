//! The team's own agent over HTTP (SPEC §5 "Bring your own agent"): one
//! `POST` per run to `--agent-url`, answered with Server-Sent Events or
//! JSON Lines, read on the reactor like any other socket — not one pool
//! thread per run, so an instance carries thousands of runs at once.
//!
//! Parts: `call` (one request as a state machine with its deadlines),
//! `events` (the stream's framing into events), `peek` (which events are
//! relayed as the agent wrote them), `resolve` (names resolved
//! on a helper thread, never a reactor, with a short cache). The worker
//! (`crate::server`) registers the sockets and applies the outputs.

pub(crate) mod call;
pub(crate) mod events;
mod peek;
pub(crate) mod resolve;

use std::sync::Arc;
use std::time::Duration;

use crate::app::AgentRequest;
use crate::httpc::{Exchange, Target};
use crate::settings::{ConfigError, Settings};

/// The deadlines of an upstream call (settings `agent_connect`,
/// `agent_response`, `agent_idle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentTimeouts {
    /// DNS, TCP and TLS (`agent_connect`).
    pub connect: Duration,
    /// The request written → the response head read (`agent_response`).
    pub response: Duration,
    /// The longest gap between two reads of the stream (`agent_idle`).
    pub idle: Duration,
}

/// Everything a call to the agent needs, fixed at start-up.
pub struct UpstreamConfig {
    /// The agent's `http(s)://` URL.
    pub target: Target,
    /// `Authorization: Bearer …`, when `POLLCAP_AGENT_TOKEN` is set.
    authorization: Option<String>,
    /// The client TLS configuration and server name, for `https://`
    /// (feature `tls`; without it, Settings::validate refuses one).
    #[cfg(feature = "tls")]
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// The deadlines of each call.
    pub timeouts: AgentTimeouts,
    /// The longest line or event accepted (`max_message`).
    pub max_line: usize,
    /// The most `agent_thinking` delta bytes kept to fill a missing
    /// `final` (one run's byte budget).
    pub max_deltas: usize,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamConfig({:?})", self.target)
    }
}

/// The JSON body of an agent request (SPEC §5).
#[derive(serde::Serialize)]
struct Body<'a> {
    run_id: &'a str,
    thread_id: &'a str,
    text: &'a str,
    subject: Option<&'a str>,
    deadline_ms: u64,
}

/// The JSON body of an agent request (SPEC §5): the HTTP request's body,
/// and the line an agent command reads on its stdin.
pub(crate) fn request_body(
    run_id: &str,
    req: &AgentRequest,
    subject: Option<&str>,
    deadline_ms: u64,
) -> Vec<u8> {
    serde_json::to_vec(&Body {
        run_id,
        thread_id: &req.thread_id,
        text: &req.text,
        subject,
        deadline_ms,
    })
    .unwrap_or_default()
}

impl UpstreamConfig {
    /// The upstream the settings name, if any (`--agent-url`); a TLS
    /// configuration problem stops start-up.
    pub fn from_settings(s: &Settings) -> Result<Option<Arc<UpstreamConfig>>, ConfigError> {
        let Some(target) = s.agent.url.clone() else {
            return Ok(None);
        };
        #[cfg(feature = "tls")]
        let tls = if target.tls {
            let setting = crate::settings::find("agent_ca_file")
                .map_or_else(|| "agent_ca_file".to_string(), |d| d.sources());
            let roots = crate::tls::roots(s.agent.ca_file.as_deref()).map_err(|e| {
                let shown = s.agent.ca_file.as_ref().map(|p| p.display().to_string());
                ConfigError::new(&setting, &shown.unwrap_or_default(), &e)
            })?;
            let client = crate::tls::ClientTls::new(roots)
                .map_err(|e| ConfigError::new(&setting, "", &e))?;
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| ConfigError::new("agent_url", &target.host, &e.to_string()))?;
            Some((client.config, name))
        } else {
            None
        };
        let authorization = s
            .agent
            .token
            .as_ref()
            .map(|t| format!("Bearer {}", String::from_utf8_lossy(&t.0)));
        Ok(Some(Arc::new(UpstreamConfig {
            target,
            authorization,
            #[cfg(feature = "tls")]
            tls,
            timeouts: AgentTimeouts {
                connect: s.timeouts.agent_connect,
                response: s.timeouts.agent_response,
                idle: s.timeouts.agent_idle,
            },
            max_line: s.limits.max_message,
            max_deltas: usize::try_from(s.run_budget.max_bytes).unwrap_or(usize::MAX),
        })))
    }

    /// The request of one run: `POST` the JSON body with the run id as
    /// `Idempotency-Key`, the bearer secret, and `traceparent`.
    pub fn exchange(
        &self,
        run_id: &str,
        req: &AgentRequest,
        subject: Option<&str>,
        deadline_ms: u64,
        traceparent: &str,
    ) -> Result<Exchange, crate::httpc::Error> {
        let body = request_body(run_id, req, subject, deadline_ms);
        let mut headers = vec![
            ("content-type", "application/json"),
            ("accept", "text/event-stream, application/jsonl"),
            ("idempotency-key", run_id),
            ("traceparent", traceparent),
            ("user-agent", concat!("pollcap/", env!("CARGO_PKG_VERSION"))),
            // One run per connection: no keep-alive to go wrong.
            ("connection", "close"),
        ];
        if let Some(a) = &self.authorization {
            headers.push(("authorization", a));
        }
        Exchange::new("POST", &self.target, &headers, &body)
    }
}
