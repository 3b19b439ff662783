//! Applications behind the WebSocket endpoint. Issue #3 ships the built-in
//! `echo`; it answers inline on the reactor thread because echoing is cheaper
//! than any hand-off. (Applications that run real work get a worker pool.)

use tungstenite::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    /// Sends every text/binary message back unchanged (Autobahn's peer).
    Echo,
}

impl App {
    pub fn parse(v: &str) -> Option<App> {
        match v.trim() {
            "echo" => Some(App::Echo),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            App::Echo => "echo",
        }
    }

    /// Subprotocols this application speaks, in server preference order.
    pub fn subprotocols(self) -> &'static [&'static str] {
        match self {
            App::Echo => &["echo"],
        }
    }

    /// Handles one inbound application message; returns the reply, if any.
    pub fn on_message(self, msg: Message) -> Option<Message> {
        match self {
            App::Echo => Some(msg),
        }
    }
}
