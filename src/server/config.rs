//! What a server starts with: the validated [`Settings`] (one `Timeouts`,
//! one `Limits`, passed by reference everywhere, never copied into a second
//! live place), the application, and the token checks.

use std::sync::Arc;

use crate::agent::{AgentChat, FlakyOpen};
use crate::app::App;
use crate::auth::Auth;
use crate::settings::{AppKind, ConfigError, Settings};

/// Everything needed to start a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub settings: Settings,
    pub app: App,
    /// Token checks; `None` = authentication off (loopback only, enforced
    /// by the binary).
    pub auth: Option<Auth>,
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
        }
    }

    /// Everything the settings say: their application (`app`, `pacing_ms`,
    /// `fail_opens`) and their authentication (`POLLCAP_JWT_SECRET`,
    /// `tokens_file`, which is read here).
    pub fn from_settings(settings: Settings) -> Result<ServerConfig, ConfigError> {
        let pacing = settings.pacing;
        let app = match settings.app {
            AppKind::AgentChat => App::Handler(Arc::new(AgentChat { pacing })),
            AppKind::Echo => App::Echo,
            AppKind::FlakyOpen => App::Handler(Arc::new(FlakyOpen {
                remaining: settings.fail_opens.into(),
                inner: AgentChat { pacing },
            })),
        };
        let auth = Auth::from_settings(&settings)?;
        Ok(ServerConfig {
            settings,
            app,
            auth,
        })
    }
}
