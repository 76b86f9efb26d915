//! W3C trace context across brokers: a delivery's `traceparent` (and `tracestate`) is read
//! when it arrives, the handler runs inside a context that is its child, and every
//! publish made while it runs carries a `traceparent` naming that context as parent, so
//! the messages one handler sends belong to the trace of the message it handles. A
//! delivery without a `traceparent` starts a trace; a publish outside any handler carries
//! none (nothing to continue, and nothing paid for it on the hot path). Each delivery runs in a
//! `transport.deliver` span and each publish in a `transport.publish` span (`tracing`),
//! with the trace id as a field, so logs of one trace can be found across services.
//!
//! With the `opentelemetry` feature and a `tracing-opentelemetry` layer, those spans are
//! OpenTelemetry spans and the contexts carried are theirs ([`crate::otel`]).
//!
//! Only headers a broker carries survive it: NATS, JetStream, Redis streams, RabbitMQ,
//! MQTT 5, Kafka and the memory broker carry them; Redis pub/sub and NSQ carry bodies
//! only, so a trace restarts after them.

use std::cell::Cell;
use std::fmt;

use crate::message::Headers;

/// The header carrying the trace and parent ids.
pub const TRACEPARENT: &str = "traceparent";
/// The header carrying vendors' trace state, passed along unchanged.
pub const TRACESTATE: &str = "tracestate";

/// A position in a trace: the trace, this span within it, the sampling flag, and the
/// vendors' state.
#[derive(Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
    state: Option<String>,
    /// A span OpenTelemetry records (feature `opentelemetry`): a publish under it names
    /// it as parent rather than a child id of its own that no exporter would know.
    recorded: bool,
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.traceparent())
    }
}

impl TraceContext {
    /// A new trace (random ids, sampled).
    pub fn root() -> Self {
        TraceContext {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            flags: 1,
            state: None,
            recorded: false,
        }
    }

    /// A new trace whose ids are drawn only when something asks for them (a publish, a
    /// span recording the trace id): most deliveries without a producer's context never
    /// need one. Never handed out before [`settle`](Self::settle).
    pub(crate) fn pending() -> Self {
        TraceContext {
            trace_id: 0,
            span_id: 0,
            flags: 1,
            state: None,
            recorded: false,
        }
    }

    /// Draws the ids of a [`pending`](Self::pending) trace (nothing for any other).
    pub(crate) fn settle(&mut self) {
        if self.trace_id == 0 {
            self.trace_id = nonzero_u128();
            self.span_id = nonzero_u64();
        }
    }

    /// A span in the same trace, whose parent is this one.
    pub fn child(&self) -> Self {
        TraceContext {
            trace_id: self.trace_id,
            span_id: nonzero_u64(),
            flags: self.flags,
            state: self.state.clone(),
            recorded: false,
        }
    }

    /// The context `headers` carry (`traceparent`, with `tracestate` if any), if a valid one.
    pub fn from_headers(headers: &Headers) -> Option<Self> {
        let mut context = Self::parse(headers.get(TRACEPARENT)?)?;
        context.state = headers
            .get(TRACESTATE)
            .filter(|state| !state.is_empty())
            .map(str::to_string);
        Some(context)
    }

    /// Parses a `traceparent` value (`00-<32 hex>-<16 hex>-<2 hex>`; later versions by
    /// their first four fields); `None` for anything malformed or an all-zero id.
    pub fn parse(traceparent: &str) -> Option<Self> {
        // the common case, by position: version 00, exactly 55 bytes (every delivery)
        if let Some(context) = Self::parse_00(traceparent.as_bytes()) {
            return Some(context);
        }
        let mut fields = traceparent.trim().split('-');
        let version = fields.next()?;
        let (trace, span, flags) = (fields.next()?, fields.next()?, fields.next()?);
        let rest = fields.next();
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" || (version == "00" && rest.is_some()) {
            return None;
        }
        if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            flags: u8::from_str_radix(flags, 16).ok()?,
            state: None,
            recorded: false,
        })
    }

    /// `00-<32 hex>-<16 hex>-<2 hex>`, read by position; `None` sends the caller to the
    /// general parser, which decides.
    fn parse_00(bytes: &[u8]) -> Option<Self> {
        let [b'0', b'0', b'-', rest @ ..] = bytes else {
            return None;
        };
        if rest.len() != 52 || rest[32] != b'-' || rest[49] != b'-' {
            return None;
        }
        let trace_id = hex_value(&rest[..32])?;
        let span_id = hex_value(&rest[33..49])? as u64;
        let flags = hex_value(&rest[50..52])? as u8;
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            flags,
            state: None,
            recorded: false,
        })
    }

    /// The `traceparent` value naming this context.
    pub fn traceparent(&self) -> String {
        // by position into a buffer: this runs on every publish
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&mut text[3..35], self.trace_id);
        write_hex(&mut text[36..52], u128::from(self.span_id));
        write_hex(&mut text[53..55], u128::from(self.flags));
        // (ASCII by construction: never the empty fallback)
        std::str::from_utf8(&text)
            .map(str::to_owned)
            .unwrap_or_default()
    }

    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// This span's id, 16 hex digits.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// The vendors' `tracestate`, passed along unchanged.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The raw trace id, span id and flags.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn ids(&self) -> (u128, u64, u8) {
        (self.trace_id, self.span_id, self.flags)
    }

    /// The context of a span OpenTelemetry records, from its raw parts.
    #[cfg(feature = "opentelemetry")]
    pub(crate) fn recorded(trace_id: u128, span_id: u64, flags: u8, state: Option<String>) -> Self {
        TraceContext {
            trace_id,
            span_id,
            flags,
            state,
            recorded: true,
        }
    }

    /// Writes this context into `headers` as the parent of what receives them.
    pub(crate) fn inject(&self, headers: &mut Headers) {
        headers.insert_named(TRACEPARENT, self.traceparent());
        if let Some(state) = &self.state {
            headers.insert_named(TRACESTATE, state.clone());
        }
    }

    /// The trace id as a span field, formatted only if a subscriber records it.
    pub(crate) fn trace_field(&self) -> impl fmt::Display + use<> {
        TraceId(self.trace_id)
    }
}

/// Writes the low `out.len()` hex digits of `value` into `out`, lowercase.
fn write_hex(out: &mut [u8], mut value: u128) {
    for byte in out.iter_mut().rev() {
        *byte = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// The value of lowercase hex digits (at most 32); `None` for any other byte.
fn hex_value(digits: &[u8]) -> Option<u128> {
    let mut value = 0u128;
    for &digit in digits {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        value = (value << 4) | u128::from(nibble);
    }
    Some(value)
}

struct TraceId(u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A `tracing` span at `level` named `name` with `fields`; with the `opentelemetry`
/// feature also its OpenTelemetry kind (`otel.kind`) and a status to set on failure.
macro_rules! span {
    ($level:ident, $name:literal, $kind:literal, $($field:tt)*) => {{
        #[cfg(feature = "opentelemetry")]
        let span = tracing::span!(
            tracing::Level::$level,
            $name,
            $($field)*,
            otel.kind = $kind,
            otel.status_code = tracing::field::Empty
        );
        #[cfg(not(feature = "opentelemetry"))]
        let span = tracing::span!(tracing::Level::$level, $name, $($field)*);
        span
    }};
}
pub(crate) use span;

/// Marks `span` (one made by [`span!`]) failed, for OpenTelemetry.
pub(crate) fn failed(span: &tracing::Span) {
    #[cfg(feature = "opentelemetry")]
    if !span.is_disabled() {
        span.record("otel.status_code", "ERROR");
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = span;
}

thread_local! {
    /// Where the context of the delivery whose handler is being polled on this thread
    /// lives (the dispatcher's slot for it), null outside such a poll: set for each poll
    /// of the handler ([`lend`]) and reset after it. A pointer rather than the context
    /// itself, so lending moves nothing (a context is 64 bytes) and the thread-local has
    /// no destructor to register or check.
    static CURRENT: Cell<*mut TraceContext> = const { Cell::new(std::ptr::null_mut()) };
}

/// Runs `f` on the context of the handler being polled here, if any (settled first).
fn with_current<R>(f: impl FnOnce(&TraceContext) -> R) -> Option<R> {
    let lent = CURRENT.with(Cell::get);
    // SAFETY: a non-null pointer was set by `lend` from a `&mut TraceContext` that its
    // `Lent` guard borrows (exclusively, and unused meanwhile) until it puts the previous
    // pointer back; guards are dropped in the order they were made, on this thread, so
    // the pointer here is always the innermost live guard's. Nothing else reads or writes
    // the context while `f` runs: `f` is one of this module's (a clone, a child), which
    // does not come back here.
    let context = unsafe { lent.as_mut() }?;
    context.settle();
    Some(f(context))
}

/// The trace context of the delivery being handled on this task, if any.
pub fn current() -> Option<TraceContext> {
    with_current(TraceContext::clone)
}

/// Lends the context in `slot` to this thread until the guard drops, as the context of
/// the handler polled meanwhile: publishes it makes name it as parent, and ids drawn
/// meanwhile stay in `slot` (so a retry stays in the same trace). An empty `slot` lends
/// "no context" (an outer one is hidden meanwhile). Two thread-local pointer writes per
/// poll.
pub(crate) fn lend(slot: &mut Option<TraceContext>) -> Lent<'_> {
    let lent = slot
        .as_mut()
        .map_or(std::ptr::null_mut(), |context| context as *mut TraceContext);
    Lent {
        outer: CURRENT.with(|current| current.replace(lent)),
        _slot: std::marker::PhantomData,
    }
}

/// A context lent by [`lend`]: the outer one is put back on drop (however the poll ends).
pub(crate) struct Lent<'s> {
    /// What was there before.
    outer: *mut TraceContext,
    /// The lent slot stays borrowed while the pointer to it is out.
    _slot: std::marker::PhantomData<&'s mut Option<TraceContext>>,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        CURRENT.with(|current| current.set(self.outer));
    }
}

/// The context a publish made now goes out with: a child of the running handler's; none
/// outside a handler. With OpenTelemetry recording spans, the current span's context
/// (see [`crate::otel`]).
pub(crate) fn for_publish() -> Option<TraceContext> {
    #[cfg(feature = "opentelemetry")]
    if let Some(context) = crate::otel::publish() {
        return Some(context);
    }
    with_current(|context| {
        if context.recorded {
            // the delivery's span is exported: it is the parent
            context.clone()
        } else {
            context.child()
        }
    })
}

thread_local! {
    /// A SplitMix64 state per thread, seeded from the standard library's random keys.
    static RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new().build_hasher().finish() | 1
    });
}

fn next_u64() -> u64 {
    RNG.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn nonzero_u64() -> u64 {
    loop {
        let n = next_u64();
        if n != 0 {
            return n;
        }
    }
}

fn nonzero_u128() -> u128 {
    (u128::from(next_u64()) << 64) | u128::from(nonzero_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_malformed_ones_are_refused() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(text).unwrap();
        assert_eq!(context.traceparent(), text);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = context.child();
        assert_eq!(child.trace_id(), context.trace_id());
        assert_ne!(child.span_id(), context.span_id());
        // a later version with more fields is read by its first four
        assert!(TraceContext::parse(&format!("01-{}-extra", &text[3..])).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
        let roots: std::collections::HashSet<_> =
            (0..1000).map(|_| TraceContext::root().trace_id()).collect();
        assert_eq!(roots.len(), 1000);
    }

    /// A future run inside the context in `slot` (as the dispatcher runs a handler).
    struct Within<'a, F> {
        slot: &'a mut Option<TraceContext>,
        future: F,
    }

    impl<'a, F> Within<'a, F> {
        fn new(slot: &'a mut Option<TraceContext>, future: F) -> Self {
            Within { slot, future }
        }
    }

    impl<F: std::future::Future + Unpin> std::future::Future for Within<'_, F> {
        type Output = F::Output;

        fn poll(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            let this = self.get_mut();
            let _lent = lend(this.slot);
            std::pin::Pin::new(&mut this.future).poll(cx)
        }
    }

    /// Polls `future` to its end on this thread (it never waits).
    fn run<F: std::future::Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
        }
    }

    #[test]
    fn a_pending_trace_gets_its_ids_when_asked_and_keeps_them() {
        assert!(current().is_none());
        // not asked: no ids drawn
        let mut slot = Some(TraceContext::pending());
        run(Within::new(&mut slot, Box::pin(async {})));
        assert_eq!(slot.as_ref().map(|c| c.trace_id), Some(0));
        // asked twice over two polls: one trace, each publish a child of it
        let (first, second) = run(Within::new(
            &mut slot,
            Box::pin(async {
                let first = for_publish();
                tokio::task::yield_now().await;
                (first, for_publish())
            }),
        ));
        let (first, second) = (first.unwrap(), second.unwrap());
        let settled = slot.clone().unwrap();
        assert_ne!(settled.trace_id, 0);
        assert_eq!(
            (first.trace_id, second.trace_id),
            (settled.trace_id, settled.trace_id)
        );
        assert_ne!(first.span_id, second.span_id);
        // the next attempt (the same slot) continues that trace; nothing leaks out
        let again = run(Within::new(&mut slot, Box::pin(async { current() })));
        assert_eq!(again, Some(settled));
        assert!(current().is_none());
    }

    #[test]
    fn an_inner_scope_gives_the_outer_one_back() {
        let outer = TraceContext::root();
        let inner = TraceContext::root();
        let mut outer_slot = Some(outer.clone());
        let seen = run(Within::new(
            &mut outer_slot,
            Box::pin(async move {
                let mut inner_slot = Some(inner);
                let within = run(Within::new(&mut inner_slot, Box::pin(async { current() })));
                (within, current())
            }),
        ));
        assert_ne!(seen.0, Some(outer.clone()));
        assert_eq!(seen.1, Some(outer));
    }
}
