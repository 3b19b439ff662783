//! The built-in applications, on top of the runtime: they implement the
//! handler API ([`crate::app`]) like any embedder's, and the server knows
//! them only through it. The binary chooses one from the settings
//! ([`from_settings`]).
//!
//! - `agent_chat`: the demo agent of SPEC §5 (the default);
//! - `echo`: every message back, inline on the reactor ([`App::Echo`]);
//! - `flaky-open`: `agent_chat` whose first session opens fail.

pub mod agent_chat;
pub mod flaky_open;

use std::sync::Arc;

use crate::app::App;
use crate::settings::{AppKind, Settings};
use agent_chat::AgentChat;
use flaky_open::FlakyOpen;

/// The application the settings name (`app`, with `pacing_ms` and
/// `fail_opens`); `agent_chat` asks the team's agent when one is set.
pub fn from_settings(settings: &Settings) -> App {
    let a = &settings.apps;
    let chat = || AgentChat {
        pacing: a.pacing,
        upstream: settings.agent.url.is_some() || settings.agent.cmd.is_some(),
    };
    match a.app {
        AppKind::AgentChat => App::Handler(Arc::new(chat())),
        AppKind::Echo => App::Echo,
        AppKind::FlakyOpen => App::Handler(Arc::new(FlakyOpen {
            remaining: a.fail_opens.into(),
            inner: chat(),
        })),
    }
}
