//! What a WebSocket server counts: sessions, refusals, bad frames, failures, drops.

use std::sync::atomic::{AtomicU64, Ordering};

/// The live counters (one per server).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) opened: AtomicU64,
    pub(crate) closed: AtomicU64,
    pub(crate) refused_origin: AtomicU64,
    pub(crate) refused_full: AtomicU64,
    pub(crate) refused_auth: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) unknown_type: AtomicU64,
    pub(crate) undecodable: AtomicU64,
    pub(crate) handler_errors: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) slow_closed: AtomicU64,
    pub(crate) idle_closed: AtomicU64,
}

/// A snapshot of a server's counters ([`WsServer::stats`](super::WsServer::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsStats {
    /// Sessions opened since the server started.
    pub opened: u64,
    /// Sessions that have ended.
    pub closed: u64,
    /// Upgrades refused: an `Origin` not allowed.
    pub refused_origin: u64,
    /// Upgrades refused: `max_sessions` reached, or the server shutting down.
    pub refused_full: u64,
    /// Upgrades refused by the authentication hook.
    pub refused_auth: u64,
    /// Frames handed to a handler: a typed one, or the fallback.
    pub received: u64,
    /// Frames that were not a message (a short binary frame, a text frame that is not the
    /// envelope).
    pub malformed: u64,
    /// Frames naming a message type no handler takes.
    pub unknown_type: u64,
    /// Payloads the handler's codec could not decode.
    pub undecodable: u64,
    /// Handlers that returned an error or panicked.
    pub handler_errors: u64,
    /// Frames dropped from a full outbox (`slow_consumer = "drop-oldest"`).
    pub dropped: u64,
    /// Sessions closed for a full outbox (`slow_consumer = "close"`).
    pub slow_closed: u64,
    /// Sessions closed for silence past `idle_timeout` or a write that did not finish.
    pub idle_closed: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> WsStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WsStats {
            opened: read(&self.opened),
            closed: read(&self.closed),
            refused_origin: read(&self.refused_origin),
            refused_full: read(&self.refused_full),
            refused_auth: read(&self.refused_auth),
            received: read(&self.received),
            malformed: read(&self.malformed),
            unknown_type: read(&self.unknown_type),
            undecodable: read(&self.undecodable),
            handler_errors: read(&self.handler_errors),
            dropped: read(&self.dropped),
            slow_closed: read(&self.slow_closed),
            idle_closed: read(&self.idle_closed),
        }
    }
}
