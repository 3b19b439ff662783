//! Writing a handler: [`Handler::open`](super::Handler::open) decides an
//! upgrade on the worker pool before the `101` (accept, refuse with a
//! status, or fail); [`Handler::message`](super::Handler::message) streams
//! a run's events and raw messages through an
//! [`Outbox`](super::Outbox).
