//! NATS JetStream (`kind = "jetstream"`): a topic is a subject captured by a stream, a
//! group is a durable pull consumer, delivery is at-least-once with ack / nak-with-delay.
//!
//! **Streams.** A topic's stream is, in this order: the one `[broker.jetstream] streams`
//! binds it to (created when missing); the stream the server finds capturing the subject
//! (`STREAM.NAMES` with a subject filter: an operator's stream is used, never shadowed);
//! or a stream of its own, `stream_prefix` + the escaped topic, created with the limits
//! of `[broker.jetstream]` (`max_age` 7 days and `max_bytes` 1 GiB by default). A stream
//! that disappears (a memory stream after a server restart, an operator's delete) is
//! created again by the next publish or pull.
//!
//! **Consumers.** A group's durable is `{group}__{topic}` (escaped), or the existing
//! consumer `[subscribers."Name"] consumer` names (used as the operator configured it).
//! A durable the backend derives is updated on startup when `ack_wait` or
//! `max_ack_pending` changed; a change the server refuses is a startup error naming both
//! values. A durable starts at the beginning of the stream the first time it is created;
//! a subscriber without a group gets a consumer of its own that sees only new messages.
//! A consumer lost on the server (an operator's `nats consumer rm`, a group-less consumer
//! dropped) is created again at the oldest message the subscription has not acknowledged
//! (nak'ed ones included), or after the last one it saw, or, for a durable nothing was
//! pulled from yet, after its ack floor when bound; all of a stream that was itself
//! created anew. A named consumer is created again as its operator configured it.
//! The runtime enforces the attempt limit with the server's delivery count, so consumers
//! are created with unlimited `max_deliver` and nothing is ever stranded by the server; a
//! named consumer whose `max_deliver` is bounded and below `max_attempts + 1` (the
//! delivery after the last attempt is the one dead-lettered) is refused at startup.
//!
//! **Pulling.** A subscription pulls only what it has room for (`prefetch` less the
//! deliveries queued or running), so everything pulled is in its in-flight table and
//! reported in progress (`+WPI`) every third of the consumer's own `ack_wait` (as the
//! server reports it: an operator's consumer keeps its own). At a stop, what was pulled
//! and not handled is nak'ed at once, so another member takes it without waiting for
//! `ack_wait`.
//!
//! **Sizes.** A message over the server's `max_payload` is refused before it is sent
//! (`TooLarge`, the limit [`Backend::max_message_size`] reports). A stream may have a
//! smaller `max_msg_size` of its own: the server's refusal (API error 10054) is
//! `TooLarge` too, with the stream's `max_msg_size` (read from the server then) as the
//! limit, so a dead letter can be fitted under it; when that cannot be read, the limit
//! given is half the refused size (a guess that a repeated refit converges from).
//!
//! Names: stream and consumer names keep ASCII letters, digits and `-`, turn `.` into
//! `_` and escape every other byte as `+XX`, so two topics never share a name.
//!
//! Wire format as for NATS core (see `nats.rs`): body = payload, NATS headers, key in
//! `x-transport-key`, id in `Nats-Msg-Id` (which JetStream also deduplicates on). A
//! publish the stream reports as a duplicate is an error when the framework made the id
//! ([`crate::is_generated_id`]: a message published without an id, a dead letter), since
//! that message was dropped; with a producer's own id it is an idempotent retry: a
//! success, logged at debug.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use async_nats::StatusCode;
use async_nats::jetstream::consumer::FromConsumer as _;
use async_nats::jetstream::context::GetStreamByNameErrorKind;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ascending::Ascending;
use super::nats::{
    PUBLISH_TIMEOUT, PayloadLimit, bounded_flush, check_payload, connect_client, from_nats,
    is_nats_header, to_nats_headers, wire_size,
};
use super::{
    Acknowledge, Backend, Capabilities, Delivery, Publish, Subscription, SubscriptionSpec,
    operation_error,
};
use crate::config::{BrokerConfig, JetStreamConfig};
use crate::error::BackendError;
use crate::message::Message;

const KIND: &str = "jetstream";
/// Settlements (acks, naks, progress reports) waiting to be sent, at most. A settlement
/// that finds the queue full is dropped with a warning: the server redelivers.
const ACK_QUEUE: usize = 65_536;
/// Topics whose stream is remembered, at most (the table is emptied when full).
const KNOWN_STREAMS: usize = 4_096;
/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(10);
/// How often the server shows it is alive while a pull request waits.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a stopping subscription waits for messages already on their way to it (it
/// nak's them).
const STOP_DRAIN: Duration = Duration::from_secs(2);
/// Longest stream or consumer name made here; longer ones are cut and hashed.
const MAX_NAME: usize = 200;

enum AckOp {
    /// An ack kind for the delivery whose ack subject this is.
    Settle(async_nats::Subject, AckKind),
    Flush(oneshot::Sender<()>),
}

/// The JetStream backend.
pub struct JetStreamBackend {
    client: async_nats::Client,
    /// The server's `max_payload` (see [`PayloadLimit`]).
    limit: Arc<PayloadLimit>,
    context: jetstream::Context,
    settings: JetStreamConfig,
    streams: Arc<Streams>,
    acks: mpsc::Sender<AckOp>,
    /// Cancelled by `close`: every subscription hands back what it pulled and ends.
    closing: CancellationToken,
    /// The pull tasks, awaited (bounded) by `close`.
    pumps: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl JetStreamBackend {
    /// Connects to the server `config.url` names (JetStream must be enabled there).
    pub async fn connect(config: &BrokerConfig) -> Result<Self, BackendError> {
        let (client, limit) = connect_client(config, KIND).await?;
        let context = jetstream::new(client.clone());
        // Fail at startup, not at the first publish, when JetStream is off.
        check_available(&client)
            .await
            .map_err(|reason| BackendError::Connect {
                backend: KIND,
                url: super::nats::redacted_url(
                    config.url.as_deref().unwrap_or(super::nats::DEFAULT_URL),
                ),
                reason: format!("JetStream is not available: {reason}"),
            })?;
        let (acks, ack_rx) = mpsc::channel(ACK_QUEUE);
        tokio::spawn(settle_acks(client.clone(), ack_rx));
        Ok(JetStreamBackend {
            streams: Arc::new(Streams {
                context: context.clone(),
                settings: config.jetstream.clone(),
                known: std::sync::Mutex::new(HashMap::new()),
            }),
            client,
            limit,
            context,
            settings: config.jetstream.clone(),
            acks,
            closing: CancellationToken::new(),
            pumps: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The consumer configuration of `spec`, and whether the consumer is one the
    /// configuration names (used as it exists).
    fn consumer_config(
        &self,
        spec: &SubscriptionSpec,
    ) -> Result<(consumer::pull::Config, bool), BackendError> {
        let base = consumer::pull::Config {
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            max_deliver: -1,
            filter_subject: spec.topic.clone(),
            max_ack_pending: self.settings.max_ack_pending,
            ..Default::default()
        };
        if let Some(name) = &spec.consumer {
            if !is_valid_name(name) {
                return Err(operation_error(
                    KIND,
                    "subscribe",
                    format!(
                        "consumer name `{}` of `{}` is not a JetStream name (no `.`, `*`, `>`, `/`, `\\` or whitespace)",
                        name.escape_debug(),
                        spec.subscriber
                    ),
                ));
            }
            return Ok((
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..base
                },
                true,
            ));
        }
        Ok(match &spec.group {
            Some(group) => (
                consumer::pull::Config {
                    durable_name: Some(durable_name(group, &spec.topic)),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..base
                },
                false,
            ),
            // Named, so that after a pull error the same consumer (and its position) is
            // bound again; the server removes it once nobody pulls for a while.
            None => (
                consumer::pull::Config {
                    name: Some(sanitize(&format!(
                        "fanout.{}.{}",
                        spec.subscriber,
                        self.client.new_inbox()
                    ))),
                    deliver_policy: consumer::DeliverPolicy::New,
                    inactive_threshold: Duration::from_secs(60),
                    ..base
                },
                false,
            ),
        })
    }

    async fn publish_once(
        &self,
        topic: &str,
        headers: async_nats::HeaderMap,
        payload: bytes::Bytes,
    ) -> Result<jetstream::publish::PublishAck, PublishFailure> {
        let confirmed = async {
            let ack = self
                .context
                .publish_with_headers(topic.to_string(), headers, payload)
                .await
                .map_err(PublishFailure::from)?;
            ack.await.map_err(PublishFailure::from)
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, confirmed).await {
            Ok(result) => result,
            Err(_) => Err(PublishFailure::Other(format!(
                "not confirmed within {PUBLISH_TIMEOUT:?}"
            ))),
        }
    }
}

enum PublishFailure {
    /// No stream captures the subject (any more).
    NoStream,
    /// The stream refused the message for its own `max_msg_size` (smaller than the
    /// server's `max_payload`, which `check_payload` enforces before sending).
    TooLarge,
    Other(String),
}

impl From<jetstream::context::PublishError> for PublishFailure {
    fn from(error: jetstream::context::PublishError) -> Self {
        use jetstream::context::PublishErrorKind;
        match error.kind() {
            PublishErrorKind::StreamNotFound => PublishFailure::NoStream,
            PublishErrorKind::MaxPayloadExceeded => PublishFailure::TooLarge,
            _ if is_message_too_large(&error) => PublishFailure::TooLarge,
            _ => PublishFailure::Other(error.to_string()),
        }
    }
}

/// Whether the server refused a publish as larger than the stream's `max_msg_size`:
/// API error code 10054, "message size exceeds maximum allowed".
fn is_message_too_large(error: &jetstream::context::PublishError) -> bool {
    let api_error = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>());
    match api_error {
        Some(api_error) => {
            api_error.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
        }
        None => error
            .to_string()
            .contains("message size exceeds maximum allowed"),
    }
}

impl JetStreamBackend {
    /// The error for a message the stream refused as too large: `TooLarge` with the
    /// stream's `max_msg_size` as the limit, read from the server (bounded). When it
    /// cannot be read (or the stream has none, which means the server's own limit was
    /// hit), the limit given is a guess: half the refused size, so that a dead letter
    /// fitted under it again and again reaches any limit in a few steps.
    async fn too_large(&self, topic: &str, message: &Message) -> BackendError {
        let size = wire_size(message);
        let server_limit = self.client.server_info().max_payload;
        let stream_limit = async {
            let name = self.streams.for_topic(topic).await.ok()?;
            let stream = self.context.get_stream(&name).await.ok()?;
            usize::try_from(stream.cached_info().config.max_message_size)
                .ok()
                .filter(|limit| *limit > 0)
        };
        let limit = match tokio::time::timeout(PUBLISH_TIMEOUT, stream_limit).await {
            Ok(Some(limit)) => limit.min(server_limit),
            _ => {
                let guess = size / 2;
                tracing::warn!(
                    backend = KIND,
                    topic,
                    size,
                    guess,
                    "the stream refused a message as too large and its max_msg_size cannot be read; guessing half the size"
                );
                guess
            }
        };
        BackendError::TooLarge {
            backend: KIND,
            size,
            limit,
        }
    }
}

/// Asks the server for the account's JetStream info (raw, so that servers older or newer
/// than the client's model both answer).
async fn check_available(client: &async_nats::Client) -> Result<(), String> {
    let reply = client
        .request("$JS.API.INFO", bytes::Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    let info: serde_json::Value =
        serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())?;
    match info.get("error") {
        Some(error) => Err(error.to_string()),
        None => Ok(()),
    }
}

/// Which stream captures a topic: bound, found on the server, or created.
struct Streams {
    context: jetstream::Context,
    settings: JetStreamConfig,
    /// topic -> stream name, for topics whose stream is known to exist.
    known: std::sync::Mutex<HashMap<String, String>>,
}

impl Streams {
    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stream capturing `topic`, created if there is none.
    async fn for_topic(&self, topic: &str) -> Result<String, BackendError> {
        if let Some(name) = self.known().get(topic) {
            return Ok(name.clone());
        }
        let name = self.resolve(topic).await?;
        let mut known = self.known();
        if known.len() >= KNOWN_STREAMS {
            known.clear();
        }
        known.insert(topic.to_string(), name.clone());
        Ok(name)
    }

    /// Forgets `topic`'s stream (it is gone): the next use looks again.
    fn forget(&self, topic: &str) {
        self.known().remove(topic);
    }

    async fn resolve(&self, topic: &str) -> Result<String, BackendError> {
        if let Some(binding) = self.settings.streams.iter().find(|s| {
            s.subjects
                .iter()
                .any(|pattern| subject_matches(pattern, topic))
        }) {
            self.ensure(&binding.name, binding.subjects.clone()).await?;
            return Ok(binding.name.clone());
        }
        match self.context.stream_by_subject(topic).await {
            Ok(name) => return Ok(name),
            Err(error) if matches!(error.kind(), GetStreamByNameErrorKind::NotFound) => {}
            Err(error) => {
                return Err(operation_error(
                    KIND,
                    "find stream",
                    format!("the stream capturing `{topic}`: {error}"),
                ));
            }
        }
        let name = stream_name(&self.settings.stream_prefix, topic);
        self.ensure(&name, vec![topic.to_string()]).await?;
        Ok(name)
    }

    /// Creates stream `name` with the configured limits unless it exists.
    async fn ensure(&self, name: &str, subjects: Vec<String>) -> Result<(), BackendError> {
        let config = stream::Config {
            name: name.to_string(),
            subjects,
            max_age: self.settings.max_age,
            max_bytes: match self.settings.max_bytes {
                0 => -1,
                bytes => i64::try_from(bytes).unwrap_or(i64::MAX),
            },
            storage: if self.settings.storage == "memory" {
                stream::StorageType::Memory
            } else {
                stream::StorageType::File
            },
            ..Default::default()
        };
        self.context
            .get_or_create_stream(config)
            .await
            .map(drop)
            .map_err(|e| operation_error(KIND, "create stream", format!("stream `{name}`: {e}")))
    }
}

/// The stream created for `topic`.
fn stream_name(prefix: &str, topic: &str) -> String {
    format!("{prefix}{}", sanitize(topic))
}

/// The durable consumer of `group` on `topic`.
fn durable_name(group: &str, topic: &str) -> String {
    format!("{}__{}", sanitize(group), sanitize(topic))
}

/// What JetStream accepts as a stream or consumer name.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.chars().any(|c| {
            matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control()
        })
}

/// Maps `name` onto what stream and consumer names may hold, reversibly: ASCII letters,
/// digits and `-` stay, `.` becomes `_`, every other byte (`_` and `+` included) becomes
/// `+XX` (hex). Names longer than [`MAX_NAME`] are cut and end in `++` and a hash of the
/// whole name (`++` never occurs otherwise).
fn sanitize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        match byte {
            b'.' => out.push('_'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' => out.push(char::from(byte)),
            other => {
                let _ = write!(out, "+{other:02X}");
            }
        }
    }
    if out.len() > MAX_NAME {
        // FNV-1a: stable across builds and platforms.
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        out.truncate(MAX_NAME - 18);
        let _ = write!(out, "++{hash:016x}");
    }
    out
}

/// NATS subject matching: `*` matches one token, a trailing `>` one or more.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut subject = subject.split('.');
    loop {
        match (pattern.next(), subject.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The delivery count and stream sequence in a JetStream ack subject
/// (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
/// or with domain and account hash after `$JS.ACK`). Nothing allocated, and only the two
/// numbers used are read (this runs for every delivery): the dots are counted, then the
/// two fields are found from the end, past the short numeric tokens rather than the
/// stream and consumer names.
fn parse_ack_subject(subject: &str) -> Option<(u64, u64)> {
    let rest = subject.strip_prefix("$JS.ACK.")?.as_bytes();
    // 7 tokens after `$JS.ACK`: the delivery count is the third, the fifth from the end;
    // 8 or more (domain and account hash first): the fifth from the start.
    let tokens = rest.iter().filter(|&&byte| byte == b'.').count() + 1;
    let from_end = match tokens {
        7 => 4,
        8.. => tokens - 5,
        _ => return None,
    };
    let mut fields = rest.rsplit(|&byte| byte == b'.').skip(from_end - 1);
    let sequence = parse_decimal(fields.next()?)?;
    let delivered = parse_decimal(fields.next()?)?;
    Some((delivered, sequence))
}

/// A non-empty run of ASCII digits as a number (`None` for anything else, or overflow).
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &byte| {
        let digit = byte.checked_sub(b'0').filter(|digit| *digit <= 9)?;
        value.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Settlements taken off the queue at once, at most.
const ACK_BATCH: usize = 256;

/// Sends acks in order, without waiting for the server per message: an ack is a plain
/// publish to the delivery's ack subject. What is queued is taken in batches; a batch
/// waits at most [`PUBLISH_TIMEOUT`] for room in the client's buffer (the server is
/// unreachable), and what it could not send is dropped with a warning (the server
/// redelivers).
async fn settle_acks(client: async_nats::Client, mut ops: mpsc::Receiver<AckOp>) {
    let mut batch = Vec::with_capacity(ACK_BATCH);
    while ops.recv_many(&mut batch, ACK_BATCH).await > 0 {
        let mut pending = batch.drain(..);
        let sent = tokio::time::timeout(PUBLISH_TIMEOUT, async {
            for op in pending.by_ref() {
                match op {
                    AckOp::Settle(subject, kind) => {
                        if let Err(error) = client.publish(subject, kind.into()).await {
                            tracing::warn!(backend = KIND, %error, "ack not sent; the server will redeliver");
                        }
                    }
                    AckOp::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        })
        .await;
        if sent.is_err() {
            let mut dropped = 0usize;
            for op in pending {
                match op {
                    AckOp::Settle(..) => dropped += 1,
                    AckOp::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
            tracing::warn!(
                backend = KIND,
                dropped = dropped + 1,
                "acks not sent in time (server unreachable?); the server will redeliver"
            );
        }
    }
}

fn queue_settlement(acks: &mpsc::Sender<AckOp>, subject: async_nats::Subject, kind: AckKind) {
    match acks.try_send(AckOp::Settle(subject, kind)) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                backend = KIND,
                "settlement queue full; this one is dropped and the server redelivers"
            );
        }
    }
}

struct InFlightState {
    /// Deliveries handed out and not yet settled (queued for a handler or running), each
    /// in a slot of its own (a redelivered copy gets another) holding its ack subject: a
    /// slot is freed only by its own delivery's settlement. At most `prefetch` are taken
    /// (the pump pulls only for the free room), so the table stays that small.
    slots: Vec<Option<async_nats::Subject>>,
    /// Slots free for reuse.
    free: Vec<u32>,
    /// Slots taken.
    len: usize,
    /// Stream sequences handed out and not acknowledged (nak'ed ones stay until a copy is
    /// acknowledged), ascending: where a lost consumer resumes. Deliveries come (and are
    /// mostly acknowledged) in stream order, so entries join at the back and leave at
    /// the front.
    unacked: Ascending<u64>,
    /// The highest stream sequence handed out, or the stream's last when the consumer was
    /// created.
    last_sequence: u64,
    /// The consumer's own `ack_wait` as the server reports it (an operator's consumer
    /// has its own): progress is reported every third of it.
    ack_wait: Duration,
}

impl InFlightState {
    fn add_unacked(&mut self, sequence: u64, max_unacked: usize) {
        self.unacked.insert(sequence);
        self.unacked.keep_highest(max_unacked);
    }

    fn remove_unacked(&mut self, sequence: u64) {
        self.unacked.remove(sequence);
    }
}

/// What a subscription's pump, its deliveries' ackers and its progress reports share
/// (one reference per delivery).
struct InFlightShared {
    state: std::sync::Mutex<InFlightState>,
    /// Woken when a settlement leaves room for a pull (`wake_at` or fewer in flight).
    settled: Notify,
    wake_at: usize,
    /// Stream sequences kept for the resume position, at most.
    max_unacked: usize,
    acks: mpsc::Sender<AckOp>,
}

/// One subscription's in-flight table (bounded by `prefetch`) and resume position
/// (bounded by `max_ack_pending`, oldest dropped beyond it).
#[derive(Clone)]
struct InFlight {
    shared: Arc<InFlightShared>,
}

impl InFlight {
    /// `wake_at`: how few deliveries in flight leave the pump room for a pull.
    fn new(max_unacked: usize, wake_at: usize, acks: mpsc::Sender<AckOp>) -> Self {
        InFlight {
            shared: Arc::new(InFlightShared {
                state: std::sync::Mutex::new(InFlightState {
                    slots: Vec::new(),
                    free: Vec::new(),
                    len: 0,
                    unacked: Ascending::default(),
                    last_sequence: 0,
                    ack_wait: Duration::ZERO,
                }),
                settled: Notify::new(),
                wake_at,
                max_unacked,
                acks,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, InFlightState> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn settled(&self) -> &Notify {
        &self.shared.settled
    }

    /// Enters a delivery; returns its slot.
    fn add(&self, subject: async_nats::Subject, sequence: u64) -> u32 {
        let max_unacked = self.shared.max_unacked;
        let mut state = self.state();
        let slot = match state.free.pop() {
            Some(slot) => {
                state.slots[slot as usize] = Some(subject);
                slot
            }
            None => {
                // (never more than u32::MAX: the table holds at most `prefetch`)
                let slot = u32::try_from(state.slots.len()).unwrap_or(u32::MAX);
                state.slots.push(Some(subject));
                slot
            }
        };
        state.len += 1;
        if sequence > 0 && max_unacked > 0 {
            state.add_unacked(sequence, max_unacked);
            state.last_sequence = state.last_sequence.max(sequence);
        }
        slot
    }

    /// Frees `slot`, returning its ack subject (`None` when it was not taken).
    fn settle(&self, slot: u32, sequence: u64, acknowledged: bool) -> Option<async_nats::Subject> {
        let (subject, len) = {
            let mut state = self.state();
            let subject = state.slots.get_mut(slot as usize)?.take()?;
            state.free.push(slot);
            state.len -= 1;
            if acknowledged && self.shared.max_unacked > 0 {
                state.remove_unacked(sequence);
            }
            (subject, state.len)
        };
        if len <= self.shared.wake_at {
            self.shared.settled.notify_one();
        }
        Some(subject)
    }

    fn len(&self) -> usize {
        self.state().len
    }

    fn subjects(&self) -> Vec<async_nats::Subject> {
        self.state().slots.iter().flatten().cloned().collect()
    }

    /// The oldest stream sequence not acknowledged, else the one after the last seen.
    fn resume_point(&self) -> u64 {
        let state = self.state();
        state.unacked.first().unwrap_or(state.last_sequence + 1)
    }

    fn ack_wait(&self) -> Duration {
        self.state().ack_wait
    }

    fn set_ack_wait(&self, ack_wait: Duration) {
        self.state().ack_wait = ack_wait;
    }

    fn set_position(&self, last_sequence: u64) {
        let mut state = self.state();
        state.unacked.clear();
        state.last_sequence = last_sequence;
    }
}

/// Tells the server, every third of the consumer's `ack_wait` (the server's value, read
/// again whenever the consumer is bound), that unsettled deliveries are still being
/// worked on (`+WPI`), so a backlog waiting locally or a slow handler is not redelivered
/// elsewhere meanwhile. Ends once the subscription is gone (dropped by the runtime, or
/// its pump ended, even by a panic) and nothing is left unsettled. It holds the
/// subscription's sender only weakly: the stream ends when the pump is gone, so the
/// dispatcher subscribes again.
async fn keep_in_progress(in_flight: InFlight, subscription: mpsc::WeakSender<Delivery>) {
    loop {
        let period = (in_flight.ack_wait() / 3).max(Duration::from_millis(100));
        tokio::time::sleep(period).await;
        let subjects = in_flight.subjects();
        let gone = subscription
            .upgrade()
            .is_none_or(|sender| sender.is_closed());
        if subjects.is_empty() && gone {
            return;
        }
        let acks = &in_flight.shared.acks;
        if acks.is_closed() {
            return;
        }
        for subject in subjects {
            // A report that finds the queue full is skipped; the next one comes soon.
            let _ = acks.try_send(AckOp::Settle(subject, AckKind::Progress));
        }
    }
}

/// Starts the progress reports of the subscription whose pump sends into `subscription`.
fn spawn_progress_reports(in_flight: &InFlight, subscription: &mpsc::Sender<Delivery>) {
    tokio::spawn(keep_in_progress(
        in_flight.clone(),
        subscription.downgrade(),
    ));
}

/// Settles one delivery: frees its slot in the in-flight table and queues the ack (or
/// nak) for its subject, once.
struct JetStreamAcker {
    slot: u32,
    sequence: u64,
    in_flight: InFlight,
    settled: bool,
}

impl JetStreamAcker {
    fn settle(&mut self, kind: AckKind) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        if let Some(subject) =
            self.in_flight
                .settle(self.slot, self.sequence, matches!(kind, AckKind::Ack))
        {
            queue_settlement(&self.in_flight.shared.acks, subject, kind);
        }
    }
}

impl Acknowledge for JetStreamAcker {
    fn ack(mut self: Box<Self>) {
        self.settle(AckKind::Ack);
    }

    fn nack(mut self: Box<Self>, delay: Duration) {
        self.settle(AckKind::Nak(Some(delay)));
    }
}

impl Drop for JetStreamAcker {
    fn drop(&mut self) {
        // Never finished (cut off at shutdown): hand it back at once.
        self.settle(AckKind::Nak(None));
    }
}

impl Backend for JetStreamBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: true,
            persistence: true,
            ordering: true,
            at_least_once: true,
            native_redelivery: true,
            headers: true,
            keys: true,
        }
    }

    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> Publish<'a> {
        Publish::boxed(async move {
            check_payload(&self.client, &self.limit, KIND, &message)?;
            let headers = to_nats_headers(&message, KIND)?;
            self.streams.for_topic(topic).await?;
            let mut looked_again = false;
            let ack = loop {
                match self
                    .publish_once(topic, headers.clone(), message.payload.clone())
                    .await
                {
                    Ok(ack) => break ack,
                    // The stream is gone (a memory stream after a restart, an operator's
                    // delete): find or create it again, once.
                    Err(PublishFailure::NoStream) if !looked_again => {
                        looked_again = true;
                        self.streams.forget(topic);
                        self.streams.for_topic(topic).await?;
                    }
                    Err(PublishFailure::NoStream) => {
                        return Err(operation_error(
                            KIND,
                            "publish",
                            format!("no stream captures `{topic}`"),
                        ));
                    }
                    Err(PublishFailure::TooLarge) => {
                        return Err(self.too_large(topic, &message).await);
                    }
                    Err(PublishFailure::Other(reason)) => {
                        return Err(operation_error(KIND, "publish", reason));
                    }
                }
            };
            if ack.duplicate {
                match message.id.as_deref() {
                    // The producer's own id, seen before: an idempotent retry, which is
                    // what the id is for.
                    Some(id) if !crate::is_generated_id(id) => {
                        tracing::debug!(
                            backend = KIND,
                            stream = %ack.stream,
                            id,
                            "duplicate of a message already stored (idempotent retry)"
                        );
                    }
                    // An id the framework made (every publish without one, dead letters)
                    // is never meant to repeat: the message was dropped.
                    id => {
                        return Err(operation_error(
                            KIND,
                            "publish",
                            format!(
                                "stream `{}` dropped the message as a duplicate: a message with id `{}` (Nats-Msg-Id) is already stored",
                                ack.stream,
                                id.unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
            Ok(())
        })
    }

    fn subscribe<'a>(
        &'a self,
        spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>> {
        async move {
            let stream_name = self.streams.for_topic(&spec.topic).await?;
            let (config, named) = self.consumer_config(spec)?;
            let stream = self
                .context
                .get_stream(&stream_name)
                .await
                .map_err(|e| operation_error(KIND, "subscribe", e))?;
            let info = bind_consumer(&stream, &config, named).await?;
            check_max_deliver(&info, spec)?;
            let prefetch = spec.prefetch.max(1);
            let (tx, rx) = mpsc::channel(prefetch);
            // Every consumer, lost on the server, resumes from a position of its own: at
            // most as many sequences are kept as the consumer may have unacknowledged.
            let max_unacked = match info.config.max_ack_pending {
                pending if pending > 0 => pending,
                _ => self.settings.max_ack_pending,
            };
            // The pump pulls once half of `prefetch` is free: settlements wake it then.
            let in_flight = InFlight::new(
                usize::try_from(max_unacked).unwrap_or(usize::MAX).max(1),
                prefetch - pull_threshold(prefetch),
                self.acks.clone(),
            );
            // A durable may hold messages delivered to a member that is gone: everything
            // after its ack floor may be unacknowledged. A consumer of our own starts
            // after the last message delivered (the stream's last, for new messages).
            in_flight.set_position(if config.durable_name.is_some() {
                info.ack_floor.stream_sequence
            } else {
                info.delivered.stream_sequence
            });
            // A named consumer lost on the server is created again as its operator
            // configured it (not with this configuration's settings).
            let config = if named {
                match consumer::pull::Config::try_from_consumer_config(info.config.clone()) {
                    Ok(mut own) => {
                        if own.durable_name.is_some() {
                            own.name = None;
                        }
                        own
                    }
                    Err(_) => config,
                }
            } else {
                config
            };
            // The consumer's own: an operator's consumer keeps its `ack_wait`.
            in_flight.set_ack_wait(info.config.ack_wait);
            spawn_progress_reports(&in_flight, &tx);
            let consumer_name = info.name.clone();
            let pump = Pump {
                client: self.client.clone(),
                context: self.context.clone(),
                streams: Arc::clone(&self.streams),
                topic: spec.topic.clone(),
                stream_name,
                stream_created: Some(stream.cached_info().created),
                consumer_name,
                config,
                prefetch,
                acks: self.acks.clone(),
                subscriber: spec.subscriber.clone(),
                in_flight,
                closing: self.closing.child_token(),
            };
            let handle = tokio::spawn(pump.run(tx));
            let mut pumps = self
                .pumps
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pumps.retain(|pump| !pump.is_finished());
            pumps.push(handle);
            Ok(tokio_stream_from(rx))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        async move {
            // Every subscription hands back what it pulled (naks), then the acks go out.
            self.closing.cancel();
            let pumps: Vec<JoinHandle<()>> = std::mem::take(
                &mut *self
                    .pumps
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            let stopped = tokio::time::timeout(
                STOP_DRAIN + Duration::from_millis(500),
                futures_util::future::join_all(pumps),
            )
            .await;
            if stopped.is_err() {
                tracing::warn!(
                    backend = KIND,
                    "subscriptions did not stop in time; what they pulled comes back after ack_wait"
                );
            }
            let (done, flushed) = oneshot::channel();
            let queued = tokio::time::timeout(
                super::nats::CLOSE_TIMEOUT,
                async {
                    if self.acks.send(AckOp::Flush(done)).await.is_ok() {
                        let _ = flushed.await;
                    }
                },
            )
            .await;
            if queued.is_err() {
                tracing::warn!(
                    backend = KIND,
                    "acknowledgements not all sent (server unreachable?); the server redelivers those"
                );
            }
            bounded_flush(&self.client, KIND).await
        }
        .boxed()
    }

    fn owns_header(&self, name: &str) -> bool {
        is_nats_header(name)
    }

    fn max_message_size(&self) -> Option<usize> {
        Some(self.client.server_info().max_payload)
    }
}

/// Binds the consumer `config` describes: an existing consumer the configuration names
/// is used as it is; otherwise the consumer is created, or updated to `config` (a change
/// the server refuses is an error naming both values).
async fn bind_consumer(
    stream: &stream::Stream,
    config: &consumer::pull::Config,
    named: bool,
) -> Result<consumer::Info, BackendError> {
    let name = config
        .durable_name
        .as_deref()
        .or(config.name.as_deref())
        .unwrap_or_default();
    if named {
        match stream.consumer_info(name).await {
            Ok(info) if info.config.deliver_subject.is_some() => {
                return Err(operation_error(
                    KIND,
                    "subscribe",
                    format!("consumer `{name}` is a push consumer; a pull consumer is needed"),
                ));
            }
            Ok(info) => return Ok(info),
            Err(error)
                if matches!(
                    error.kind(),
                    jetstream::context::ConsumerInfoErrorKind::NotFound
                ) => {}
            Err(error) => {
                return Err(operation_error(
                    KIND,
                    "subscribe",
                    format!("consumer `{name}`: {error}"),
                ));
            }
        }
    }
    match stream.create_consumer(config.clone()).await {
        Ok(consumer) => Ok(consumer.cached_info().clone()),
        Err(error) => {
            let reason = match stream.consumer_info(name).await {
                Ok(existing) => format!(
                    "consumer `{name}` exists with ack_wait {:?}, max_ack_pending {}, max_deliver {}, filter `{}`; \
                     configured: ack_wait {:?}, max_ack_pending {}, max_deliver {}, filter `{}`; \
                     the server refused the update ({error}): change the configuration back or delete the consumer",
                    existing.config.ack_wait,
                    existing.config.max_ack_pending,
                    existing.config.max_deliver,
                    existing.config.filter_subject,
                    config.ack_wait,
                    config.max_ack_pending,
                    config.max_deliver,
                    config.filter_subject,
                ),
                Err(_) => format!("consumer `{name}`: {error}"),
            };
            Err(operation_error(KIND, "subscribe", reason))
        }
    }
}

/// Refuses a consumer whose `max_deliver` is bounded and smaller than `max_attempts + 1`:
/// the server would stop delivering a failing message before the runtime dead-letters
/// it. One delivery beyond the attempts is kept in reserve: the server also counts a
/// delivery that was handed back at a stop or cut off by a crash, and the message must
/// still reach its last attempt and its dead letter.
fn check_max_deliver(info: &consumer::Info, spec: &SubscriptionSpec) -> Result<(), BackendError> {
    let max_deliver = info.config.max_deliver;
    let needed = i64::from(spec.max_attempts) + 1;
    if max_deliver > 0 && max_deliver < needed {
        return Err(operation_error(
            KIND,
            "subscribe",
            format!(
                "consumer `{}` of `{}` has max_deliver {max_deliver}, but max_attempts is {}: \
                 the server would stop delivering a failing message before it is dead-lettered; \
                 set the consumer's max_deliver to -1 (unlimited) or at least {needed} \
                 (max_attempts + 1, for the delivery that is dead-lettered), or lower max_attempts",
                info.name, spec.subscriber, spec.max_attempts
            ),
        ));
    }
    Ok(())
}

/// How much free room (of `prefetch`) a pull request waits for: half, so that requests
/// are few and the handlers never run dry.
fn pull_threshold(prefetch: usize) -> usize {
    prefetch.div_ceil(2)
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Delivery>) -> Subscription {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// How a pull session ended.
enum Ended {
    /// The subscription was dropped or the backend closed.
    Stopped,
    /// The consumer, the stream or the connection is gone: bind again.
    Lost(String),
}

/// Pulls from one consumer into the subscription's channel, only as much as there is room
/// for; binds the consumer (and its stream) again after errors (server restarts, deleted
/// streams or consumers, missed heartbeats).
struct Pump {
    client: async_nats::Client,
    context: jetstream::Context,
    streams: Arc<Streams>,
    topic: String,
    stream_name: String,
    stream_created: Option<async_nats::datetime::DateTime>,
    consumer_name: String,
    config: consumer::pull::Config,
    prefetch: usize,
    acks: mpsc::Sender<AckOp>,
    subscriber: String,
    in_flight: InFlight,
    closing: CancellationToken,
}

impl Pump {
    async fn run(mut self, tx: mpsc::Sender<Delivery>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.session(&tx, &mut backoff).await {
                Ended::Stopped => return,
                Ended::Lost(reason) => {
                    tracing::warn!(backend = KIND, subscriber = %self.subscriber, %reason, "pull interrupted; binding the consumer again");
                }
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = self.closing.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            if let Err(reason) = self.recover().await {
                tracing::warn!(backend = KIND, subscriber = %self.subscriber, %reason, "cannot bind the consumer; retrying");
            }
        }
    }

    /// One inbox and the pull requests sent to it, until an error or the stop.
    async fn session(&mut self, tx: &mpsc::Sender<Delivery>, backoff: &mut Duration) -> Ended {
        let inbox = self.client.new_inbox();
        let mut inbox_sub =
            match tokio::time::timeout(PUBLISH_TIMEOUT, self.client.subscribe(inbox.clone())).await
            {
                Ok(Ok(subscriber)) => subscriber,
                Ok(Err(error)) => return Ended::Lost(error.to_string()),
                Err(_) => return Ended::Lost("cannot subscribe to an inbox in time".into()),
            };
        let pull_subject = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            self.stream_name, self.consumer_name
        );
        // Messages asked for and not arrived yet (one request at a time).
        let mut outstanding = 0usize;
        let mut request_deadline = Instant::now();
        let mut last_heard = Instant::now();
        let threshold = pull_threshold(self.prefetch);
        // The futures waited on in every turn are made once, not once per message.
        let closing = &self.closing;
        let mut stop = std::pin::pin!(async {
            tokio::select! {
                _ = tx.closed() => {}
                _ = closing.cancelled() => {}
            }
        });
        let mut settled = std::pin::pin!(self.in_flight.settled().notified());
        // Fires no later than the heartbeat deadline; moved on (rarely) when messages or
        // heartbeats came meanwhile, rather than set again for every message.
        let mut watchdog = std::pin::pin!(tokio::time::sleep_until(request_deadline));
        let ended = loop {
            if outstanding == 0 {
                let room = self.prefetch.saturating_sub(self.in_flight.len());
                if room >= threshold {
                    let request = serde_json::json!({
                        "batch": room,
                        "expires": PULL_EXPIRES.as_nanos() as u64,
                        "idle_heartbeat": PULL_HEARTBEAT.as_nanos() as u64,
                    });
                    let sent = tokio::time::timeout(
                        PUBLISH_TIMEOUT,
                        self.client.publish_with_reply(
                            pull_subject.clone(),
                            inbox.clone(),
                            request.to_string().into(),
                        ),
                    )
                    .await;
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => break Ended::Lost(error.to_string()),
                        Err(_) => break Ended::Lost("pull request not sent in time".into()),
                    }
                    outstanding = room;
                    last_heard = Instant::now();
                    request_deadline = last_heard + PULL_EXPIRES + PULL_HEARTBEAT;
                    watchdog
                        .as_mut()
                        .reset(request_deadline.min(last_heard + PULL_HEARTBEAT * 3));
                }
            }
            tokio::select! {
                biased;
                _ = stop.as_mut() => break Ended::Stopped,
                _ = settled.as_mut(), if outstanding == 0 => {
                    settled.set(self.in_flight.settled().notified());
                }
                _ = watchdog.as_mut(), if outstanding > 0 => {
                    // (the deadline only ever moves later)
                    let deadline = request_deadline.min(last_heard + PULL_HEARTBEAT * 3);
                    if Instant::now() >= deadline {
                        break Ended::Lost("no heartbeat from the server".into());
                    }
                    watchdog.as_mut().reset(deadline);
                }
                message = inbox_sub.next() => {
                    let Some(message) = message else {
                        break Ended::Lost("the inbox subscription ended".into());
                    };
                    last_heard = Instant::now();
                    match message.status {
                        None => {
                            outstanding = outstanding.saturating_sub(1);
                            *backoff = Duration::from_millis(100);
                            let Some(delivery) = self.delivery(message) else { continue };
                            // There is room (only what fits is pulled), so this is sent
                            // at once; should the queue be full, wait for room.
                            let delivery = match tx.try_send(delivery) {
                                Ok(()) => continue,
                                Err(mpsc::error::TrySendError::Closed(_)) => break Ended::Stopped,
                                Err(mpsc::error::TrySendError::Full(delivery)) => delivery,
                            };
                            tokio::select! {
                                biased;
                                // (the delivery is dropped: its acker naks it)
                                _ = stop.as_mut() => break Ended::Stopped,
                                sent = tx.send(delivery) => if sent.is_err() {
                                    break Ended::Stopped;
                                },
                            }
                        }
                        Some(StatusCode::IDLE_HEARTBEAT) => {}
                        // The request expired (or found nothing): ask again.
                        Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => outstanding = 0,
                        Some(StatusCode::NO_RESPONDERS) => {
                            break Ended::Lost("the consumer is gone".into());
                        }
                        Some(status) => {
                            break Ended::Lost(format!(
                                "{status}: {}",
                                message.description.as_deref().unwrap_or("")
                            ));
                        }
                    }
                }
            }
        };
        if matches!(ended, Ended::Stopped) {
            self.hand_back(inbox_sub).await;
        }
        ended
    }

    /// At a stop: unsubscribes, and naks everything still on its way to this inbox.
    async fn hand_back(&self, mut inbox_sub: async_nats::Subscriber) {
        match tokio::time::timeout(STOP_DRAIN, inbox_sub.drain()).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        let deadline = Instant::now() + STOP_DRAIN;
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, inbox_sub.next()).await {
            if message.status.is_none()
                && let Some(subject) = message.reply
            {
                queue_settlement(&self.acks, subject, AckKind::Nak(None));
            }
        }
    }

    /// A pulled message as a delivery, entered in the in-flight table.
    fn delivery(&self, message: async_nats::Message) -> Option<Delivery> {
        let subject = message.reply?;
        let (delivered, sequence) = parse_ack_subject(subject.as_str()).unwrap_or((1, 0));
        // The reply subject is the ack subject, not a reply address: no `reply_to`.
        let converted = from_nats(message.payload, message.headers.as_ref(), None);
        let slot = self.in_flight.add(subject, sequence);
        Some(Delivery::new(
            converted,
            u32::try_from(delivered).unwrap_or(u32::MAX),
            Box::new(JetStreamAcker {
                slot,
                sequence,
                in_flight: self.in_flight.clone(),
                settled: false,
            }),
        ))
    }

    /// Binds the consumer again, creating the stream and the consumer when they are gone.
    /// A consumer created again (a group's durable an operator deleted, a group-less one
    /// the server dropped) resumes at the oldest message this subscription has not
    /// acknowledged, or after the last one it saw (all of a stream created anew).
    async fn recover(&mut self) -> Result<(), String> {
        let stream = match self.context.get_stream(&self.stream_name).await {
            Ok(stream) => stream,
            Err(error) if is_stream_not_found(&error) => {
                self.streams.forget(&self.topic);
                self.stream_name = self
                    .streams
                    .for_topic(&self.topic)
                    .await
                    .map_err(|e| e.to_string())?;
                self.context
                    .get_stream(&self.stream_name)
                    .await
                    .map_err(|e| e.to_string())?
            }
            Err(error) => return Err(error.to_string()),
        };
        let created = stream.cached_info().created;
        let fresh_stream = self.stream_created != Some(created);
        if fresh_stream {
            // Positions in a stream that was created anew mean nothing.
            self.in_flight.set_position(0);
            self.stream_created = Some(created);
        }
        match stream.consumer_info(&self.consumer_name).await {
            Ok(info) => {
                self.in_flight.set_ack_wait(info.config.ack_wait);
                return Ok(());
            }
            Err(error)
                if matches!(
                    error.kind(),
                    jetstream::context::ConsumerInfoErrorKind::NotFound
                ) => {}
            Err(error) => return Err(error.to_string()),
        }
        let mut config = self.config.clone();
        config.deliver_policy = if fresh_stream {
            consumer::DeliverPolicy::All
        } else {
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: self.in_flight.resume_point(),
            }
        };
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| e.to_string())?;
        self.in_flight
            .set_ack_wait(consumer.cached_info().config.ack_wait);
        Ok(())
    }
}

fn is_stream_not_found(error: &jetstream::context::GetStreamError) -> bool {
    match error.kind() {
        jetstream::context::GetStreamErrorKind::JetStream(error) => {
            error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review item D: when the pump task dies (a panic), the subscription's stream ends,
    /// so the dispatcher subscribes again; the progress reports do not keep it open.
    #[tokio::test]
    async fn the_subscription_ends_when_its_pump_dies() {
        let (acks, _settlements) = mpsc::channel(8);
        let in_flight = InFlight::new(8, 4, acks);
        in_flight.set_ack_wait(Duration::from_millis(300));
        let (tx, mut rx) = mpsc::channel::<Delivery>(1);
        spawn_progress_reports(&in_flight, &tx);
        let pump = tokio::spawn(async move {
            let _tx = tx;
            panic!("the pump dies");
        });
        assert!(pump.await.is_err());
        let ended = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert!(
            matches!(ended, Ok(None)),
            "the subscription did not end when its pump died"
        );
    }

    #[test]
    fn subjects_match_with_wildcards() {
        assert!(subject_matches("orders.*", "orders.created"));
        assert!(!subject_matches("orders.*", "orders.created.eu"));
        assert!(subject_matches("orders.>", "orders.created.eu"));
        assert!(!subject_matches("orders.>", "orders"));
        assert!(subject_matches("orders", "orders"));
        assert!(!subject_matches("orders", "orders.created"));
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("sensor.readings"), "sensor_readings");
    }

    #[test]
    fn names_do_not_collide() {
        let names: std::collections::HashSet<String> = [
            "orders.a.b",
            "orders.a_b",
            "orders_a.b",
            "orders.a/b",
            "orders.a\\b",
        ]
        .iter()
        .map(|topic| sanitize(topic))
        .collect();
        assert_eq!(names.len(), 5, "{names:?}");
    }

    #[test]
    fn long_names_are_cut_and_hashed() {
        let a = sanitize(&format!("{}.a", "x".repeat(300)));
        let b = sanitize(&format!("{}.b", "x".repeat(300)));
        assert!(a.len() <= MAX_NAME && b.len() <= MAX_NAME);
        assert_ne!(a, b);
        assert!(is_valid_name(&a));
    }

    #[test]
    fn ack_subjects_are_parsed() {
        assert_eq!(
            parse_ack_subject("$JS.ACK.ORDERS.shop.3.42.17.1700000000.5"),
            Some((3, 42))
        );
        assert_eq!(
            parse_ack_subject("$JS.ACK.hub.ACCHASH.ORDERS.shop.2.7.9.1700000000.0.tok"),
            Some((2, 7))
        );
        assert_eq!(
            parse_ack_subject("$JS.ACK.hub.ACCHASH.ORDERS.shop.2.7.9.1700000000.0"),
            Some((2, 7))
        );
        assert_eq!(parse_ack_subject("_INBOX.abc"), None);
        assert_eq!(parse_ack_subject("$JS.ACK.ORDERS.shop.x.42.17.1.5"), None);
        assert_eq!(parse_ack_subject("$JS.ACK.ORDERS.shop.3..17.1.5"), None);
        assert_eq!(
            parse_ack_subject("$JS.ACK.ORDERS.shop.99999999999999999999.1.17.1.5"),
            None
        );
        assert_eq!(parse_ack_subject("$JS.ACK.ORDERS.shop.3.42"), None);
    }

    #[test]
    fn jetstream_config_values_are_checked() {
        let error = crate::Config::from_toml("[broker.jetstream]\nack_wait = \"0s\"").unwrap_err();
        assert!(
            error.to_string().contains("broker.jetstream.ack_wait"),
            "{error}"
        );
        for bad in ["0", "-1"] {
            let error =
                crate::Config::from_toml(&format!("[broker.jetstream]\nmax_ack_pending = {bad}"))
                    .unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains("broker.jetstream.max_ack_pending"),
                "{error}"
            );
        }
        let error = crate::Config::from_toml("[broker.jetstream]\nstorage = \"disk\"").unwrap_err();
        assert!(
            error.to_string().contains("broker.jetstream.storage"),
            "{error}"
        );
    }
}
