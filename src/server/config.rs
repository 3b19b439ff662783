//! What a server starts with: the validated [`Settings`] (one `Timeouts`,
//! one `Limits`, passed by reference everywhere, never copied into a second
//! live place), the application, and the token checks.

use std::sync::Arc;

use crate::app::App;
use crate::auth::Auth;
use crate::settings::{ConfigError, Settings};
use crate::source::command::CommandConfig;
use crate::source::upstream::UpstreamConfig;
use crate::tls::{CertError, CertStore};

/// Everything needed to start a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Every setting: listen address, deadlines, limits, threads, store….
    pub settings: Settings,
    /// The application: [`App::Echo`] (inline, no pool) or a
    /// [`Handler`](crate::app::Handler) of yours.
    pub app: App,
    /// Token checks; `None` = authentication off (loopback only, enforced
    /// by the binary).
    pub auth: Option<Auth>,
    /// The TLS certificate pair; `None` serves plain `ws://` and `http://`.
    pub tls: Option<Arc<CertStore>>,
    /// The team's agent over HTTP (`--agent-url`): where an application's
    /// [`Start::Agent`](crate::app::Start) runs go.
    pub upstream: Option<Arc<UpstreamConfig>>,
    /// The team's agent as a command (`--agent-cmd`): one process per
    /// [`Start::Agent`](crate::app::Start) run.
    pub command: Option<Arc<CommandConfig>>,
    /// Log lines the embedder's log writer dropped rather than block a
    /// reactor (`pollcap serve` writes its log from a thread of its own
    /// through a bounded queue); reported as
    /// `pollcap_log_lines_dropped_total`. `None`: not reported.
    pub log_lines_dropped: Option<DroppedLines>,
}

/// Reads a count of dropped log lines kept by the embedder's log writer.
#[derive(Clone)]
pub struct DroppedLines(pub Arc<dyn Fn() -> u64 + Send + Sync>);

impl std::fmt::Debug for DroppedLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DroppedLines({})", (self.0)())
    }
}

impl ServerConfig {
    /// `settings` with the echo application and no authentication: the
    /// smallest server, for embedding and tests. See [`Self::from_settings`]
    /// for what `pollcap serve` runs.
    pub fn new(settings: Settings) -> ServerConfig {
        ServerConfig {
            settings,
            app: App::Echo,
            auth: None,
            tls: None,
            upstream: None,
            command: None,
            log_lines_dropped: None,
        }
    }

    /// `app` with everything the settings say: their authentication
    /// (`POLLCAP_JWT_SECRET`, `tokens_file`, which is read here), their
    /// TLS pair (`tls_cert`, `tls_key`, loaded and checked here) and their
    /// agent (`agent_url` or `agent_cmd`). What
    /// `pollcap serve` runs, with the application its settings name
    /// (`crate::apps::from_settings`).
    pub fn from_settings(settings: Settings, app: App) -> Result<ServerConfig, ConfigError> {
        let auth = Auth::from_settings(&settings)?;
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(
                CertStore::open(cert, key).map_err(|e| cert_config_error(&e))?,
            )),
            _ => None,
        };
        let upstream = UpstreamConfig::from_settings(&settings)?;
        let command = CommandConfig::from_settings(&settings);
        Ok(ServerConfig {
            settings,
            app,
            auth,
            tls,
            upstream,
            command,
            log_lines_dropped: None,
        })
    }
}

/// A certificate problem as a start-up error: the flag (and variable),
/// the path and the problem.
pub fn cert_config_error(e: &CertError) -> ConfigError {
    let setting = crate::settings::find(e.which.setting())
        .map_or_else(|| e.which.setting().to_string(), |d| d.sources());
    ConfigError::new(&setting, &e.path.display().to_string(), &e.problem)
}
