//! Redis streams (`kind = "redis-streams"`): a topic is a stream, a group is a consumer
//! group, delivery is at-least-once with `XACK`.
//!
//! Wire format: one stream entry per message. The field `payload` (`broker.redis.
//! payload_field`) holds the encoded body, `key` (`key_field`) the key, every other field
//! is a header (so `redis-cli XADD orders '*' payload '{"id":1}' trace-id t1` reaches a
//! typed subscriber). The entry id is the message id.
//!
//! Replies are parsed as raw values, entry by entry: an entry that is not a message (a
//! field name that is not UTF-8, no payload field, two payload fields) is handed to the
//! dispatcher as a defective delivery, which dead-letters it (kind `malformed`) and
//! acknowledges it; the rest of its batch goes on. Its message keeps everything: the
//! payload is the entry's raw field/value pairs as netstrings (`<len>:<bytes>,` each, in
//! entry order), marked by the header [`RAW_ENTRY_HEADER`] = `netstrings`.
//!
//! Redelivery is the broker's: a failed entry stays pending and is claimed again with
//! `XCLAIM` after the retry delay (the delivery count comes from `XPENDING`); entries a
//! crashed consumer left pending are taken over with `XAUTOCLAIM` once idle for
//! `claim_idle`. Claimed entries (retries and take-overs) have a queue of their own,
//! served before newly read ones, so they never wait behind a backlog. While an entry
//! is queued for a handler, runs, or waits for a retry, its idle time is reset
//! (`XCLAIM <id>... 0 JUSTID`, whatever its idle time) every `claim_interval` and at
//! least every third of `claim_idle`, so no other consumer takes it over, whatever the
//! two settings are. Acks are batched: one `XACK` for all ids ready at once. An `XACK`
//! that fails for a reason that passes (Redis restarting, a failover) is sent again at
//! every refresh, its entries kept in flight (fresh, never claimed) meanwhile, so a
//! handled entry is not handled again; at most [`MAX_UNACKED`] ids are kept so, and
//! after a stop, only until the backend is closed (or `claim_idle`).
//!
//! At a graceful stop, entries read and not handled (queued for a handler, waiting for a
//! retry, read as the subscription ended, or cut off by the drain timeout) are released:
//! `XCLAIM <ids> ... IDLE <claim_idle> JUSTID` makes them look `claim_idle` idle without
//! counting a delivery, so the next `XAUTOCLAIM` of another member takes them at once
//! instead of after `claim_idle`.
//!
//! A group that disappears (`NOGROUP`: group destroyed, stream deleted, a restart without
//! persistence) is created again where this consumer was: before its oldest unsettled
//! entry, else after the last entry the group gave it (or the group's position when it
//! subscribed), never at `$`.
//!
//! Group-less subscribers (`XREAD`) read from the newest entry at the time they
//! subscribe and settle nothing with Redis: at-most-once fan-out (a failed handler is
//! retried in place; what arrives while no subscriber runs is not seen by it).
//!
//! Memory: a read returns at most `COUNT` entries. `COUNT` is at most the subscription's
//! room (`prefetch`, at most 1000; half of it for group reads), and once a read has
//! brought entries of `L` bytes, the next reads ask for at most [`READ_BUDGET_BYTES`] /
//! `L` entries (at least one). Redis cannot tell an entry's size before it is read, so
//! the worst case of one read stays `COUNT` x the largest entry on the stream (Redis
//! allows 512 MB per field); set `prefetch` low for streams that hold very large entries.
//! A subscription holds at most `prefetch` read plus `prefetch` claimed deliveries,
//! plus those its handlers run.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::ConnectionManager;
use redis::{RedisError, Value};
use tokio::sync::{mpsc, oneshot};

use super::operation_error;
use super::redis::{connect_manager, query_reconnecting};
use super::{
    Acknowledge, Backend, Capabilities, Delivery, Publish, Subscription, SubscriptionSpec,
};
use crate::config::{BrokerConfig, RedisConfig};
use crate::error::BackendError;
use crate::message::Message;

const KIND: &str = "redis-streams";
/// How long one blocking read waits before looking again.
const BLOCK: Duration = Duration::from_millis(1000);
/// Most ids acknowledged by one `XACK`.
const ACK_BATCH: usize = 1024;
/// Most handled entries kept in flight while their `XACK` fails (retried each tick).
pub const MAX_UNACKED: usize = 16 * ACK_BATCH;
/// Shortest period of the settler's timers.
const MIN_PERIOD: Duration = Duration::from_millis(1);
/// Most bytes one read should bring in, judged by the largest entry of earlier reads.
pub const READ_BUDGET_BYTES: usize = 64 << 20;
/// Header of a defective entry's message: its payload holds the entry's raw field/value
/// pairs as netstrings (the header's value).
pub const RAW_ENTRY_HEADER: &str = "x-transport-redis-entry";
/// Value of [`RAW_ENTRY_HEADER`].
pub const RAW_ENTRY_ENCODING: &str = "netstrings";

/// How often a subscription resets the idle time of its in-flight entries: every
/// `claim_interval`, and at least every third of `claim_idle`, so that an entry whose
/// handler runs is never `claim_idle` idle (another consumer would take it over), even
/// when a refresh is late or fails once.
fn refresh_period(settings: &RedisConfig) -> Duration {
    settings
        .claim_interval
        .min(settings.claim_idle / 3)
        .max(MIN_PERIOD)
}

/// The Redis streams backend.
pub struct RedisStreamsBackend {
    config: BrokerConfig,
    commands: ConnectionManager,
    consumer: String,
    settlers: Mutex<Vec<mpsc::UnboundedSender<Settle>>>,
}

impl RedisStreamsBackend {
    /// Connects to `config.url`.
    pub async fn connect(config: &BrokerConfig) -> Result<Self, BackendError> {
        let commands = connect_manager(config, KIND).await?;
        let consumer = format!(
            "{}-{}-{:08x}",
            hostname(),
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        Ok(RedisStreamsBackend {
            config: config.clone(),
            commands,
            consumer,
            settlers: Mutex::new(Vec::new()),
        })
    }

    fn settings(&self) -> &RedisConfig {
        &self.config.redis
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "transport".into())
}

/// A reply that does not have the shape its command gives.
#[derive(Debug, thiserror::Error)]
#[error("unexpected {command} reply: {what}")]
struct ReplyError {
    command: &'static str,
    what: &'static str,
}

/// One stream entry as Redis sent it.
struct RawEntry {
    id: StreamId,
    /// The id as Redis sent it: the message id.
    text: String,
    /// The field/value pairs in entry order; `None` for an entry deleted meanwhile.
    fields: Option<Fields>,
}

impl RawEntry {
    /// Bytes of its fields and values.
    fn size(&self) -> usize {
        self.fields.as_ref().map_or(0, |fields| {
            fields
                .pairs()
                .map(|(name, value)| value_len(name) + value_len(value))
                .sum()
        })
    }
}

/// An entry's field/value pairs in the shape Redis sent them: no copy, no list per entry.
enum Fields {
    /// `[field, value, field, value, ...]`; a name without a value (never sent by Redis)
    /// pairs with nil, which makes the entry defective.
    Flat(Vec<Value>),
    /// Pairs (RESP3 maps).
    Pairs(Vec<(Value, Value)>),
}

static NIL: Value = Value::Nil;

impl Fields {
    fn pairs(&self) -> impl Iterator<Item = (&Value, &Value)> {
        let (flat, pairs): (&[Value], &[(Value, Value)]) = match self {
            Fields::Flat(flat) => (flat, &[]),
            Fields::Pairs(pairs) => (&[], pairs),
        };
        flat.chunks(2)
            .map(|pair| match pair {
                [name, value, ..] => (name, value),
                [name] => (name, &NIL),
                [] => (&NIL, &NIL),
            })
            .chain(pairs.iter().map(|(name, value)| (name, value)))
    }

    fn into_pairs(self) -> impl Iterator<Item = (Value, Value)> {
        let (flat, pairs) = match self {
            Fields::Flat(flat) => (flat, Vec::new()),
            Fields::Pairs(pairs) => (Vec::new(), pairs),
        };
        let mut flat = flat.into_iter();
        std::iter::from_fn(move || Some((flat.next()?, flat.next().unwrap_or(Value::Nil))))
            .chain(pairs)
    }
}

fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn value_len(value: &Value) -> usize {
    bytes_of(value).map_or(0, <[u8]>::len)
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::Int(n) => Some(n.to_string()),
        other => bytes_of(other).map(|b| super::text(b).into_owned()),
    }
}

/// [`bytes_of`] for a value that is no longer needed: its own bytes, not a copy.
fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

/// [`text_of`] for a value that is no longer needed: its bytes become the string,
/// copied only when they are not UTF-8.
fn into_text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(
            String::from_utf8(bytes)
                .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned()),
        ),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Some(text),
        other => text_of(&other),
    }
}

/// `[id, [field, value, ...]]` (or a map of fields, RESP3); `None` for what is no entry.
fn parse_entry(value: Value) -> Option<RawEntry> {
    let Value::Array(parts) = value else {
        return None;
    };
    let mut parts = parts.into_iter();
    let text = into_text(parts.next()?)?;
    let id = StreamId::parse(&text)?;
    let fields = match parts.next() {
        None | Some(Value::Nil) => None,
        Some(Value::Array(flat)) => Some(Fields::Flat(flat)),
        Some(Value::Map(pairs)) => Some(Fields::Pairs(pairs)),
        // Not a list of fields: a defective entry.
        Some(_) => Some(Fields::Pairs(vec![(Value::Nil, Value::Nil)])),
    };
    Some(RawEntry { id, text, fields })
}

/// A list of entries (`XRANGE`, `XCLAIM`, one stream of `XREAD`).
fn parse_entries(value: Value, command: &'static str) -> Result<Vec<RawEntry>, ReplyError> {
    match value {
        Value::Nil => Ok(Vec::new()),
        Value::Array(entries) => Ok(entries
            .into_iter()
            .filter_map(|entry| {
                let parsed = parse_entry(entry);
                if parsed.is_none() {
                    tracing::debug!(
                        backend = KIND,
                        command,
                        "skipping a reply item that is no entry"
                    );
                }
                parsed
            })
            .collect()),
        _ => Err(ReplyError {
            command,
            what: "not a list of entries",
        }),
    }
}

/// `XREAD` / `XREADGROUP`: nil, or per stream its name and entries (array or map).
fn parse_read(value: Value, command: &'static str) -> Result<Vec<RawEntry>, ReplyError> {
    let streams: Vec<(Value, Value)> = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(streams) => streams,
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => {
                    let mut pair = pair.into_iter();
                    match (pair.next(), pair.next()) {
                        (Some(name), Some(entries)) => Ok((name, entries)),
                        _ => Err(ReplyError {
                            command,
                            what: "a stream without entries",
                        }),
                    }
                }
                _ => Err(ReplyError {
                    command,
                    what: "a stream that is not [name, entries]",
                }),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ReplyError {
                command,
                what: "neither nil nor a list of streams",
            });
        }
    };
    let mut all = Vec::new();
    for (_, entries) in streams {
        all.extend(parse_entries(entries, command)?);
    }
    Ok(all)
}

/// `XAUTOCLAIM`: the cursor to go on from, the claimed entries (and, from Redis 7, the
/// ids of deleted entries, which Redis itself dropped from the pending list).
fn parse_autoclaim(value: Value) -> Result<(String, Vec<RawEntry>), ReplyError> {
    const COMMAND: &str = "XAUTOCLAIM";
    let Value::Array(parts) = value else {
        return Err(ReplyError {
            command: COMMAND,
            what: "not a list",
        });
    };
    let mut parts = parts.into_iter();
    let cursor = parts.next().as_ref().and_then(text_of).ok_or(ReplyError {
        command: COMMAND,
        what: "no cursor",
    })?;
    let entries = parse_entries(parts.next().unwrap_or(Value::Nil), COMMAND)?;
    Ok((cursor, entries))
}

/// An entry as a message: payload field, key field, every other field a header. When
/// the entry is not a message, the second value says why, and the message carries the
/// raw entry (see the module docs). The message takes the entry's own bytes: nothing is
/// copied but what is not UTF-8.
fn to_message(id: String, fields: Fields, settings: &RedisConfig) -> (Message, Option<String>) {
    if let Some(reason) = defect_of(&fields, settings) {
        let defect = format!("stream entry {id} is not a message: {reason}");
        let raw = Message {
            payload: Bytes::from(netstrings(&fields)),
            id: Some(id.into()),
            ..Message::default()
        }
        .with_header(RAW_ENTRY_HEADER, RAW_ENTRY_ENCODING);
        return (raw, Some(defect));
    }
    let mut message = Message {
        id: Some(id.into()),
        ..Message::default()
    };
    let payload_field = settings.payload_field.as_bytes();
    let key_field = settings.key_field.as_bytes();
    for (name, value) in fields.into_pairs() {
        // Checked by `defect_of`: both are strings, the name UTF-8.
        let (Some(name), Some(value)) = (into_bytes(name), into_bytes(value)) else {
            continue;
        };
        if name == payload_field {
            message.payload = Bytes::from(value);
        } else if name == key_field {
            message.key = Some(lossy(value));
        } else {
            message.headers.insert(lossy(name), lossy(value));
        }
    }
    (message, None)
}

/// Bytes as a string, in place when they are UTF-8.
fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|invalid| String::from_utf8_lossy(invalid.as_bytes()).into_owned())
}

/// Why an entry is not a message: a field name or value that is not a string, a field
/// name that is not UTF-8, no payload field or two.
fn defect_of(fields: &Fields, settings: &RedisConfig) -> Option<String> {
    let mut payloads = 0;
    for (name, value) in fields.pairs() {
        let (Some(name), Some(_)) = (bytes_of(name), bytes_of(value)) else {
            return Some("a field name or value that is not a string".into());
        };
        if name == settings.payload_field.as_bytes() {
            payloads += 1;
            if payloads > 1 {
                return Some(format!("two `{}` fields", settings.payload_field));
            }
        } else if std::str::from_utf8(name).is_err() {
            return Some(format!(
                "field name {:?} is not UTF-8",
                String::from_utf8_lossy(name)
            ));
        }
    }
    (payloads == 0).then(|| format!("no `{}` field", settings.payload_field))
}

/// Every field name and value as a netstring (`<decimal length>:<bytes>,`), in order.
fn netstrings(fields: &Fields) -> Vec<u8> {
    let mut out = Vec::new();
    for value in fields.pairs().flat_map(|(name, value)| [name, value]) {
        let text;
        let bytes = match bytes_of(value) {
            Some(bytes) => bytes,
            None => {
                text = text_of(value).unwrap_or_default();
                text.as_bytes()
            }
        };
        out.extend_from_slice(bytes.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(bytes);
        out.push(b',');
    }
    out
}

/// The id just before `id` (`None` before `0-0`).
fn predecessor((ms, seq): (u64, u64)) -> Option<(u64, u64)> {
    if seq > 0 {
        Some((ms, seq - 1))
    } else if ms > 0 {
        Some((ms - 1, u64::MAX))
    } else {
        None
    }
}

/// A stream entry id, `<milliseconds>-<sequence>`: what the bookkeeping keys on (a copy,
/// not a string per entry), written back in that form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    const ZERO: StreamId = StreamId { ms: 0, seq: 0 };

    fn parse(text: &str) -> Option<StreamId> {
        let (ms, seq) = text.split_once('-')?;
        Some(StreamId {
            ms: digits(ms)?,
            seq: digits(seq)?,
        })
    }

    /// The id just before this one (`None` before `0-0`).
    fn predecessor(self) -> Option<StreamId> {
        predecessor((self.ms, self.seq)).map(|(ms, seq)| StreamId { ms, seq })
    }

    /// `<ms>-<seq>` in `buf`, without the formatting machinery (once per ack).
    fn write(self, buf: &mut [u8; 41]) -> &[u8] {
        let mut at = buf.len();
        for (i, mut n) in [self.seq, self.ms].into_iter().enumerate() {
            if i == 1 {
                at -= 1;
                buf[at] = b'-';
            }
            loop {
                at -= 1;
                buf[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
        }
        &buf[at..]
    }
}

/// A decimal number of at most 20 digits, nothing else (no sign, no spaces).
fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 {
        return None;
    }
    text.bytes().try_fold(0u64, |n, byte| {
        let digit = byte.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl redis::ToRedisArgs for StreamId {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        let mut buf = [0; 41];
        out.write_arg(self.write(&mut buf));
    }
}

/// Hashes stream ids (two integers Redis assigned, in a set bounded by the reader's
/// saturation) with one multiply per integer instead of SipHash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Entry ids handed to the runtime and not yet settled.
type IdSet = HashSet<StreamId, BuildHasherDefault<IdHasher>>;

/// How many entries the next read may ask for: at most `count`, and few enough that
/// entries as large as the `largest` seen so far stay near [`READ_BUDGET_BYTES`].
fn read_count(count: usize, largest: usize) -> usize {
    count.min(READ_BUDGET_BYTES / largest.max(1)).max(1)
}

/// Whether a command that failed with `error` may succeed when sent again: the
/// connection was lost or timed out, or Redis is loading, failing over, or busy.
fn passes(error: &RedisError) -> bool {
    !matches!(error.retry_method(), redis::RetryMethod::NoRetry)
}

fn is_no_group(error: &RedisError) -> bool {
    error.code() == Some("NOGROUP")
}

async fn create_group(
    connection: &mut ConnectionManager,
    stream: &str,
    group: &str,
    start: &str,
) -> Result<(), RedisError> {
    let created: Result<(), RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(start)
        .arg("MKSTREAM")
        .query_async(connection)
        .await;
    match created {
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

impl Backend for RedisStreamsBackend {
    fn kind(&self) -> &'static str {
        KIND
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
            let settings = self.settings();
            let mut command = redis::cmd("XADD");
            command.arg(topic);
            if let Some(max_len) = settings.max_len {
                command.arg("MAXLEN").arg("~").arg(max_len);
            }
            command
                .arg("*")
                .arg(&settings.payload_field)
                .arg(&message.payload[..]);
            if let Some(key) = &message.key {
                command.arg(&settings.key_field).arg(key);
            }
            for (name, value) in message.headers.iter() {
                if name == settings.payload_field || name == settings.key_field {
                    return Err(operation_error(
                        KIND,
                        "publish",
                        format!("header `{name}` would overwrite the entry's payload or key field"),
                    ));
                }
                command.arg(name).arg(value);
            }
            if let Some(id) = &message.id
                && !message.headers.contains("message-id")
            {
                command.arg("message-id").arg(id.as_str());
            }
            query_reconnecting::<String>(&self.commands, &command)
                .await
                .map(drop)
                .map_err(|e| operation_error(KIND, "publish", e))
        })
    }

    fn subscribe<'a>(
        &'a self,
        spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>> {
        async move {
            // Blocking reads get a connection of their own: a BLOCK would stall every
            // other command on a shared one.
            let reader = connect_manager(&self.config, KIND).await?;
            let (tx, mut rx) = mpsc::channel(spec.prefetch.max(1));
            let count = spec.prefetch.clamp(1, 1000);
            match &spec.group {
                None => {
                    let mut connection = self.commands.clone();
                    let newest: Value = redis::cmd("XREVRANGE")
                        .arg(&spec.topic)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut connection)
                        .await
                        .map_err(|e| operation_error(KIND, "subscribe", e))?;
                    let start = parse_entries(newest, "XREVRANGE")
                        .map_err(|e| operation_error(KIND, "subscribe", e))?
                        .into_iter()
                        .next()
                        .map_or(StreamId::ZERO, |e| e.id);
                    let fan_out = FanOut {
                        reader,
                        stream: spec.topic.clone(),
                        settings: self.settings().clone(),
                        count,
                    };
                    tokio::spawn(fan_out.run(start, tx));
                    Ok(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
                }
                Some(group) => {
                    let start = if self.settings().group_start == "latest" {
                        "$"
                    } else {
                        "0"
                    };
                    let mut connection = self.commands.clone();
                    create_group(&mut connection, &spec.topic, group, start)
                        .await
                        .map_err(|e| operation_error(KIND, "subscribe", e))?;
                    // Where the group is now: where it is created again should it vanish
                    // before this consumer has read anything.
                    let position = group_position(&mut connection, &spec.topic, group).await;
                    // Unbounded in type only: each delivery's acker sends at most one
                    // settlement, so it holds at most one op per unsettled delivery
                    // (bounded by `saturated` and the two queues) plus `close`'s flush.
                    let (settle_tx, settle_rx) = mpsc::unbounded_channel();
                    let (claims_tx, mut claims_rx) = mpsc::channel(count);
                    let shared = Arc::new(Shared {
                        stream: spec.topic.clone(),
                        group: group.clone(),
                        consumer: self.consumer.clone(),
                        group_start: start,
                        settings: self.settings().clone(),
                        in_flight: Mutex::new(IdSet::default()),
                        position: Mutex::new(position),
                        largest_entry: AtomicUsize::new(0),
                        settle: settle_tx.clone(),
                        commands: self.commands.clone(),
                        count,
                    });
                    self.settlers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(settle_tx);
                    tokio::spawn(Arc::clone(&shared).read(reader, tx));
                    tokio::spawn(shared.settle(self.commands.clone(), settle_rx, claims_tx));
                    // Claimed entries (retries, take-overs) first: they must not wait
                    // behind a backlog of new ones.
                    let mut claims_open = true;
                    Ok(futures_util::stream::poll_fn(move |cx| {
                        if claims_open {
                            match claims_rx.poll_recv(cx) {
                                Poll::Ready(Some(delivery)) => return Poll::Ready(Some(delivery)),
                                Poll::Ready(None) => claims_open = false,
                                Poll::Pending => {}
                            }
                        }
                        rx.poll_recv(cx)
                    })
                    .boxed())
                }
            }
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        async move {
            let settlers: Vec<_> = self
                .settlers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(..)
                .collect();
            for settler in settlers {
                let (done, flushed) = oneshot::channel();
                if settler.send(Settle::Flush(done)).is_ok() {
                    let _ = flushed.await;
                }
            }
            Ok(())
        }
        .boxed()
    }
}

/// The group's `last-delivered-id`, from `XINFO GROUPS`.
async fn group_position(
    connection: &mut ConnectionManager,
    stream: &str,
    group: &str,
) -> Option<StreamId> {
    let groups: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(connection)
        .await
        .ok()?;
    let Value::Array(groups) = groups else {
        return None;
    };
    groups.into_iter().find_map(|info| {
        let pairs: Vec<(Value, Value)> = match info {
            Value::Map(pairs) => pairs,
            Value::Array(flat) => {
                let mut flat = flat.into_iter();
                std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
            }
            _ => return None,
        };
        let field = |name: &str| {
            pairs
                .iter()
                .find(|(key, _)| bytes_of(key) == Some(name.as_bytes()))
                .and_then(|(_, value)| text_of(value))
        };
        (field("name")? == group)
            .then(|| field("last-delivered-id"))
            .flatten()
            .and_then(|id| StreamId::parse(&id))
    })
}

/// A subscriber without a group: reads new entries, acknowledges nothing.
struct FanOut {
    reader: ConnectionManager,
    stream: String,
    settings: RedisConfig,
    count: usize,
}

impl FanOut {
    async fn run(mut self, mut last: StreamId, tx: mpsc::Sender<Delivery>) {
        let mut backoff = Duration::from_millis(100);
        let mut largest = 0;
        while !tx.is_closed() {
            let read: Result<Value, RedisError> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(read_count(self.count, largest))
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(last)
                .query_async(&mut self.reader)
                .await;
            let entries = read
                .map_err(|e| e.to_string())
                .and_then(|reply| parse_read(reply, "XREAD").map_err(|e| e.to_string()));
            match entries {
                Ok(entries) => {
                    backoff = Duration::from_millis(100);
                    if let Some(size) = entries.iter().map(RawEntry::size).max() {
                        largest = size;
                    }
                    for entry in entries {
                        last = entry.id;
                        let Some(fields) = entry.fields else { continue };
                        let (message, defect) = to_message(entry.text, fields, &self.settings);
                        let mut delivery = Delivery::unacknowledged(message);
                        if let Some(defect) = defect {
                            delivery = delivery.with_defect(defect);
                        }
                        if tx.send(delivery).await.is_err() {
                            return;
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(backend = KIND, stream = %self.stream, %error, "read failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// What the settler does for a group subscription.
enum Settle {
    Ack(StreamId),
    Retry {
        id: StreamId,
        attempt: u32,
        delay: Duration,
    },
    Release(StreamId),
    Flush(oneshot::Sender<()>),
}

/// Settlements the settler collected, sent together.
#[derive(Default)]
struct Batch {
    acks: Vec<StreamId>,
    releases: Vec<StreamId>,
    flushes: Vec<oneshot::Sender<()>>,
}

/// State shared by a group subscription's reader and settler.
struct Shared {
    stream: String,
    group: String,
    consumer: String,
    /// `0` or `$`: where the group starts when nothing better is known.
    group_start: &'static str,
    settings: RedisConfig,
    /// Entries handed to the runtime and not yet settled (or waiting for a retry).
    in_flight: Mutex<IdSet>,
    /// The last entry the group gave this consumer (or the group's position when it
    /// subscribed): where the group is created again should it vanish.
    position: Mutex<Option<StreamId>>,
    /// The largest entry read so far, in bytes (bounds how many are read at once).
    largest_entry: AtomicUsize,
    settle: mpsc::UnboundedSender<Settle>,
    commands: ConnectionManager,
    count: usize,
}

impl Shared {
    /// Whether so many entries are unsettled (queued, running or waiting for a retry) that
    /// reading more would only pile them up.
    fn saturated(&self) -> bool {
        self.in_flight().len() >= self.count.saturating_mul(4).max(64)
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, IdSet> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn note_sizes(&self, entries: &[RawEntry]) {
        if let Some(size) = entries.iter().map(RawEntry::size).max() {
            self.largest_entry.store(size, Ordering::Relaxed);
        }
    }

    fn read_count(&self, room: usize) -> usize {
        read_count(room, self.largest_entry.load(Ordering::Relaxed))
    }

    /// The delivery of an entry already counted in flight.
    fn delivery(&self, id: StreamId, text: String, fields: Fields, attempt: u32) -> Delivery {
        let (message, defect) = to_message(text, fields, &self.settings);
        let delivery = Delivery::new(
            message,
            attempt,
            Box::new(StreamAcker {
                id: Some(id),
                attempt,
                settle: self.settle.clone(),
            }),
        );
        match defect {
            Some(defect) => delivery.with_defect(defect),
            None => delivery,
        }
    }

    /// Where a vanished group starts again: just before the oldest entry this consumer
    /// has not settled, else after the last one the group gave it, else `group_start`.
    fn resume_position(&self) -> String {
        let oldest_unsettled = self
            .in_flight()
            .iter()
            .min()
            .map(|oldest| oldest.predecessor().unwrap_or(StreamId::ZERO));
        let position = *self.position.lock().unwrap_or_else(PoisonError::into_inner);
        let resume = match (oldest_unsettled, position) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        resume.map_or_else(|| self.group_start.to_string(), |id| id.to_string())
    }

    async fn recreate_group(&self, connection: &mut ConnectionManager) {
        let start = self.resume_position();
        tracing::warn!(backend = KIND, stream = %self.stream, group = %self.group, %start, "group missing (deleted, or server restarted?); creating it again where this consumer was");
        if let Err(error) = create_group(connection, &self.stream, &self.group, &start).await {
            tracing::warn!(backend = KIND, %error, "cannot create group");
        }
    }

    /// Reads new entries for the group (`XREADGROUP ... >`).
    async fn read(self: Arc<Self>, mut reader: ConnectionManager, tx: mpsc::Sender<Delivery>) {
        let mut backoff = Duration::from_millis(100);
        while !tx.is_closed() {
            // Wait for room first, so nothing is read that cannot be handed over.
            if self.saturated() {
                // Too many entries waiting for a retry or a handler: read no more.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            // Read in batches of at least half the subscription's room: waiting for one
            // free slot at a time would cost a round trip per message.
            let batch = self.read_count((tx.max_capacity() / 2).clamp(1, self.count));
            let permits = match tx.reserve_many(batch).await {
                Ok(permits) => permits,
                Err(_) => return,
            };
            let read: Result<Value, RedisError> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(batch)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(">")
                .query_async(&mut reader)
                .await;
            match read {
                Ok(reply) => {
                    backoff = Duration::from_millis(100);
                    if tx.is_closed() {
                        // Read after the subscription ended: no handler will see them
                        // here; released for the group's other members at once.
                        if let Ok(entries) = parse_read(reply, "XREADGROUP") {
                            let mut ids: Vec<StreamId> =
                                entries.into_iter().map(|entry| entry.id).collect();
                            self.release(&mut reader, &mut ids).await;
                        }
                        return;
                    }
                    let mut entries = match parse_read(reply, "XREADGROUP") {
                        Ok(entries) => entries,
                        Err(error) => {
                            // Left pending: taken over after claim_idle.
                            tracing::warn!(backend = KIND, stream = %self.stream, %error, "unreadable reply; its entries will be claimed again");
                            continue;
                        }
                    };
                    if let Some(last) = entries.last() {
                        *self.position.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(last.id);
                    }
                    self.note_sizes(&entries);
                    // COUNT = batch, so every entry has its permit (one that had none
                    // would stay pending, taken over after claim_idle).
                    entries.truncate(batch);
                    {
                        // One lock for the whole batch, before any of it is handed over.
                        let mut in_flight = self.in_flight();
                        for entry in &entries {
                            if entry.fields.is_some() {
                                in_flight.insert(entry.id);
                            }
                        }
                    }
                    for (permit, entry) in permits.zip(entries) {
                        match entry.fields {
                            Some(fields) => {
                                permit.send(self.delivery(entry.id, entry.text, fields, 1))
                            }
                            // Deleted before it was read: nothing to hand over.
                            None => {
                                let _ = self.settle.send(Settle::Ack(entry.id));
                            }
                        }
                    }
                }
                Err(error) => {
                    drop(permits);
                    if is_no_group(&error) {
                        self.recreate_group(&mut reader).await;
                    } else {
                        tracing::warn!(backend = KIND, stream = %self.stream, %error, "read failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    /// Acks in batches, claims entries for retries and from dead consumers (into
    /// `claims`, the subscription's queue served first), keeps this consumer's in-flight
    /// entries fresh.
    async fn settle(
        self: Arc<Self>,
        mut connection: ConnectionManager,
        mut ops: mpsc::UnboundedReceiver<Settle>,
        claims: mpsc::Sender<Delivery>,
    ) {
        // Refreshes run at least every third of claim_idle, whatever claim_interval is:
        // an entry whose handler runs is never idle long enough to be taken over.
        let mut tick = tokio::time::interval(refresh_period(&self.settings));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut claim_tick = tokio::time::interval(self.settings.claim_interval.max(MIN_PERIOD));
        claim_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Batch::default();
        // Handled entries whose XACK failed (Redis restarting, a failover): still in
        // flight (refreshed, never claimed here), acknowledged again at every tick.
        let mut unacked: VecDeque<StreamId> = VecDeque::new();
        let mut cursor = "0-0".to_string();
        // Whether `close` flushed this subscription, and since when it has ended.
        let mut closed = false;
        let mut ended: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                op = ops.recv() => {
                    let Some(op) = op else { return };
                    self.take(op, &mut batch, &claims);
                    while batch.acks.len() < ACK_BATCH && batch.releases.len() < ACK_BATCH {
                        match ops.try_recv() {
                            Ok(op) => self.take(op, &mut batch, &claims),
                            Err(_) => break,
                        }
                    }
                    self.ack(&mut connection, &mut batch.acks, &mut unacked).await;
                    self.release(&mut connection, &mut batch.releases).await;
                    if !batch.flushes.is_empty() {
                        // The backend closes: one more try for what failed before.
                        self.retry_acks(&mut connection, &mut unacked).await;
                        closed = true;
                    }
                    for flush in batch.flushes.drain(..) {
                        let _ = flush.send(());
                    }
                }
                _ = tick.tick() => {
                    self.retry_acks(&mut connection, &mut unacked).await;
                    if claims.is_closed() {
                        // The subscription ended: settle what is queued, then stop.
                        let ended = *ended.get_or_insert_with(tokio::time::Instant::now);
                        while let Ok(op) = ops.try_recv() {
                            self.take(op, &mut batch, &claims);
                        }
                        self.ack(&mut connection, &mut batch.acks, &mut unacked).await;
                        self.release(&mut connection, &mut batch.releases).await;
                        if !batch.flushes.is_empty() {
                            closed = true;
                        }
                        for flush in batch.flushes.drain(..) {
                            let _ = flush.send(());
                        }
                        if ops.is_closed() || self.in_flight().is_empty() {
                            return;
                        }
                        if self.only_unacked_left(&unacked)
                            && (closed || ended.elapsed() >= self.settings.claim_idle)
                        {
                            // Bounded: Redis stayed unreachable past the close.
                            self.give_up(unacked.drain(..), "the subscription ended");
                            return;
                        }
                        // Handlers still draining keep their entries.
                        self.refresh(&mut connection).await;
                        continue;
                    }
                    self.refresh(&mut connection).await;
                }
                _ = claim_tick.tick(), if !claims.is_closed() => {
                    self.claim_abandoned(&mut connection, &claims, &mut cursor).await;
                }
            }
        }
    }

    /// Whether every entry still in flight is one whose XACK failed.
    fn only_unacked_left(&self, unacked: &VecDeque<StreamId>) -> bool {
        let unacked: IdSet = unacked.iter().copied().collect();
        self.in_flight().iter().all(|id| unacked.contains(id))
    }

    /// Stops holding `ids` (handled, not acknowledged): they stay pending and are
    /// delivered again after `claim_idle`.
    fn give_up(&self, ids: impl Iterator<Item = StreamId>, why: &'static str) {
        let mut in_flight = self.in_flight();
        let mut count = 0usize;
        for id in ids {
            in_flight.remove(&id);
            count += 1;
        }
        if count > 0 {
            tracing::warn!(backend = KIND, stream = %self.stream, count, why, "handled entries could not be acknowledged; they will be delivered again");
        }
    }

    fn take(self: &Arc<Self>, op: Settle, batch: &mut Batch, claims: &mpsc::Sender<Delivery>) {
        match op {
            Settle::Ack(id) => batch.acks.push(id),
            Settle::Release(id) => {
                self.in_flight().remove(&id);
                batch.releases.push(id);
            }
            Settle::Flush(done) => batch.flushes.push(done),
            Settle::Retry { id, attempt, delay } => {
                let this = Arc::clone(self);
                let claims = claims.clone();
                tokio::spawn(async move {
                    // A stop does not wait for the retry delay: the entry is released.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = claims.closed() => {}
                    }
                    this.redeliver(id, attempt, claims).await;
                });
            }
        }
    }

    /// Makes entries this consumer holds and will not handle (queued for a handler at a
    /// stop, or dropped unsettled) claimable at once: their idle time becomes
    /// `claim_idle` (`XCLAIM ... IDLE`, no delivery counted), so the next `XAUTOCLAIM` of
    /// any member of the group takes them instead of waiting for `claim_idle`.
    async fn release(&self, connection: &mut ConnectionManager, ids: &mut Vec<StreamId>) {
        if ids.is_empty() {
            return;
        }
        let released: Result<Value, RedisError> = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&ids[..])
            .arg("IDLE")
            .arg(self.settings.claim_idle.as_millis() as u64)
            .arg("JUSTID")
            .query_async(connection)
            .await;
        match released {
            Ok(_) => {
                tracing::debug!(backend = KIND, stream = %self.stream, count = ids.len(), "released entries for the group")
            }
            // They stay pending and are taken over after claim_idle.
            Err(error) => {
                tracing::debug!(backend = KIND, stream = %self.stream, %error, count = ids.len(), "cannot release entries; they come back after claim_idle")
            }
        }
        ids.clear();
    }

    /// Acknowledges `ids` with one `XACK`. When it fails for a reason that passes
    /// (connection lost, Redis loading or failing over), the ids stay in flight (kept
    /// fresh, never claimed here) and go to `unacked`, retried at the next tick; at most
    /// [`MAX_UNACKED`] are kept, the oldest given up beyond that.
    async fn ack(
        &self,
        connection: &mut ConnectionManager,
        ids: &mut Vec<StreamId>,
        unacked: &mut VecDeque<StreamId>,
    ) {
        if ids.is_empty() {
            return;
        }
        let acked: Result<i64, RedisError> = redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&ids[..])
            .query_async(connection)
            .await;
        match acked {
            Ok(_) => {
                let mut in_flight = self.in_flight();
                for id in ids.drain(..) {
                    in_flight.remove(&id);
                }
            }
            Err(error) if passes(&error) => {
                tracing::warn!(backend = KIND, stream = %self.stream, %error, count = ids.len(), "XACK failed; retrying it (the entries stay with this consumer meanwhile)");
                unacked.extend(ids.drain(..));
                let excess = unacked.len().saturating_sub(MAX_UNACKED);
                if excess > 0 {
                    self.give_up(unacked.drain(..excess), "too many failed acknowledgements");
                }
            }
            Err(error) => {
                // Left pending: the entries come back through XAUTOCLAIM.
                tracing::warn!(backend = KIND, stream = %self.stream, %error, count = ids.len(), "XACK failed; entries will be redelivered");
                let mut in_flight = self.in_flight();
                for id in ids.drain(..) {
                    in_flight.remove(&id);
                }
            }
        }
    }

    /// Acknowledges again what failed before (see [`Shared::ack`]).
    async fn retry_acks(
        &self,
        connection: &mut ConnectionManager,
        unacked: &mut VecDeque<StreamId>,
    ) {
        if unacked.is_empty() {
            return;
        }
        let mut ids: Vec<StreamId> = unacked.drain(..).collect();
        let count = ids.len();
        self.ack(connection, &mut ids, unacked).await;
        if unacked.is_empty() {
            tracing::info!(backend = KIND, stream = %self.stream, count, "acknowledged entries whose XACK had failed");
        }
    }

    /// Claims one entry back to this consumer after a failed attempt (`XCLAIM`, min idle
    /// 0, which counts one more delivery) and delivers it again, ahead of new entries.
    async fn redeliver(&self, id: StreamId, attempt: u32, claims: mpsc::Sender<Delivery>) {
        if claims.is_closed() {
            // The subscription ended while the entry waited: hand it to the group.
            let _ = self.settle.send(Settle::Release(id));
            return;
        }
        let mut connection = self.commands.clone();
        let claimed: Result<Value, RedisError> = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(id)
            .query_async(&mut connection)
            .await;
        let entry = match claimed {
            Ok(reply) => match parse_entries(reply, "XCLAIM") {
                Ok(entries) => entries.into_iter().next(),
                Err(error) => {
                    tracing::warn!(backend = KIND, %error, %id, "unreadable XCLAIM reply; the entry stays pending");
                    self.in_flight().remove(&id);
                    return;
                }
            },
            Err(error) => {
                if is_no_group(&error) {
                    self.recreate_group(&mut connection).await;
                }
                tracing::warn!(backend = KIND, %error, %id, "XCLAIM failed; the entry stays pending");
                self.in_flight().remove(&id);
                return;
            }
        };
        match entry {
            Some(RawEntry {
                id,
                text,
                fields: Some(fields),
            }) => {
                // Still in flight since its first delivery. A closed subscription drops
                // the delivery, which releases the entry: it stays pending and is claimed
                // again (here or by another consumer).
                let _ = claims.send(self.delivery(id, text, fields, attempt)).await;
            }
            _ => {
                // Trimmed or deleted meanwhile, or no longer pending (a recreated group
                // delivers it afresh): nothing left to deliver here.
                self.in_flight().remove(&id);
                let _ = redis::cmd("XACK")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(id)
                    .query_async::<i64>(&mut connection)
                    .await;
            }
        }
    }

    /// Resets the idle time of every one of this consumer's in-flight entries (queued,
    /// running, waiting for a retry), whatever their idle time, so no other consumer
    /// takes them over while their handlers run. `XCLAIM ... 0 ... JUSTID` counts no
    /// delivery.
    async fn refresh(&self, connection: &mut ConnectionManager) {
        let ids: Vec<StreamId> = self.in_flight().iter().copied().collect();
        if ids.is_empty() {
            return;
        }
        let refreshed: Result<Value, RedisError> = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&ids[..])
            .arg("JUSTID")
            .query_async(connection)
            .await;
        if let Err(error) = refreshed {
            tracing::debug!(backend = KIND, %error, "cannot refresh in-flight entries");
        }
    }

    /// Takes over entries that other (crashed) consumers left pending for `claim_idle`
    /// (`XAUTOCLAIM`, which counts one more delivery), as many as the claims queue has
    /// room for: this task never waits on the handlers (acks and refreshes would stall
    /// behind it), and never behind the reader's backlog.
    async fn claim_abandoned(
        &self,
        connection: &mut ConnectionManager,
        claims: &mpsc::Sender<Delivery>,
        cursor: &mut String,
    ) {
        let room = self.read_count(claims.capacity().min(self.count));
        if claims.capacity() == 0 {
            return;
        }
        let idle = self.settings.claim_idle.as_millis() as u64;
        let claimed: Result<Value, RedisError> = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(idle)
            .arg(cursor.as_str())
            .arg("COUNT")
            .arg(room)
            .query_async(connection)
            .await;
        let entries = match claimed
            .map_err(Err)
            .and_then(|reply| parse_autoclaim(reply).map_err(Ok))
        {
            Ok((next, entries)) => {
                // Go on from where this scan stopped next time (`0-0`: start over).
                *cursor = next;
                entries
            }
            Err(Err(error)) => {
                if is_no_group(&error) {
                    self.recreate_group(connection).await;
                } else {
                    tracing::debug!(backend = KIND, %error, "XAUTOCLAIM failed");
                }
                return;
            }
            Err(Ok(error)) => {
                tracing::warn!(backend = KIND, %error, "unreadable XAUTOCLAIM reply");
                *cursor = "0-0".to_string();
                return;
            }
        };
        self.note_sizes(&entries);
        let fresh: Vec<RawEntry> = {
            let in_flight = self.in_flight();
            entries
                .into_iter()
                .filter(|entry| !in_flight.contains(&entry.id))
                .collect()
        };
        if fresh.is_empty() {
            return;
        }
        let counts = self.delivery_counts(connection, &fresh).await;
        for entry in fresh {
            let Some(fields) = entry.fields else {
                // Deleted (Redis 6.2 still lists it): nothing to deliver.
                let _ = self.settle.send(Settle::Ack(entry.id));
                continue;
            };
            // XAUTOCLAIM counted this delivery already.
            let attempt = counts.get(&entry.id).copied().unwrap_or(2);
            self.in_flight().insert(entry.id);
            if claims
                .try_send(self.delivery(entry.id, entry.text, fields, attempt))
                .is_err()
            {
                // No room after all (a retry took it): the dropped delivery released
                // its entry, which stays pending and is claimed again.
                break;
            }
        }
    }

    /// The delivery counts of `entries` (now pending with this consumer), from one
    /// `XPENDING` over their id range.
    async fn delivery_counts(
        &self,
        connection: &mut ConnectionManager,
        entries: &[RawEntry],
    ) -> HashMap<StreamId, u32> {
        let ids = entries.iter().map(|e| e.id);
        let (Some(first), Some(last)) = (ids.clone().min(), ids.max()) else {
            return HashMap::new();
        };
        // Entries of this consumer in that range: the claimed ones, and at most every
        // unsettled one of its own.
        let limit = entries.len() + self.in_flight().len();
        let pending: Result<Value, RedisError> = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(first)
            .arg(last)
            .arg(limit)
            .arg(&self.consumer)
            .query_async(connection)
            .await;
        let Ok(Value::Array(rows)) = pending else {
            return HashMap::new();
        };
        // [[id, consumer, idle, deliveries], ...]
        rows.into_iter()
            .filter_map(|row| {
                let Value::Array(row) = row else { return None };
                let id = StreamId::parse(&text_of(row.first()?)?)?;
                let Value::Int(count) = row.get(3)? else {
                    return None;
                };
                Some((id, u32::try_from(*count).ok()?))
            })
            .collect()
    }
}

struct StreamAcker {
    id: Option<StreamId>,
    attempt: u32,
    settle: mpsc::UnboundedSender<Settle>,
}

impl Acknowledge for StreamAcker {
    fn ack(mut self: Box<Self>) {
        if let Some(id) = self.id.take() {
            let _ = self.settle.send(Settle::Ack(id));
        }
    }

    fn nack(mut self: Box<Self>, delay: Duration) {
        if let Some(id) = self.id.take() {
            let _ = self.settle.send(Settle::Retry {
                id,
                attempt: self.attempt + 1,
                delay,
            });
        }
    }
}

impl Drop for StreamAcker {
    fn drop(&mut self) {
        // Never settled (queued at a stop, cut off by the drain timeout): released for
        // the group's other members (claimable at once).
        if let Some(id) = self.id.take() {
            let _ = self.settle.send(Settle::Release(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn claim_settings_that_cannot_work_are_config_errors_naming_the_key() {
        for (redis, key) in [
            ("claim_idle = \"0s\"", "broker.redis.claim_idle"),
            (
                "claim_idle = \"50ms\"\nclaim_interval = \"10ms\"",
                "broker.redis.claim_idle",
            ),
            (
                "claim_idle = \"1s\"\nclaim_interval = \"1s\"",
                "broker.redis.claim_interval",
            ),
            (
                "claim_idle = \"1s\"\nclaim_interval = \"2s\"",
                "broker.redis.claim_interval",
            ),
            ("claim_interval = \"0s\"", "broker.redis.claim_interval"),
            ("max_len = 0", "broker.redis.max_len"),
            ("group_start = \"now\"", "broker.redis.group_start"),
            ("key_field = \"payload\"", "broker.redis.payload_field"),
        ] {
            let err = Config::from_toml(&format!("[broker.redis]\n{redis}"))
                .expect_err(&format!("`{redis}` is refused"));
            assert!(
                err.to_string().contains(&format!("`{key}`")),
                "{redis}: {err}"
            );
        }
        let fine =
            Config::from_toml("[broker.redis]\nclaim_idle = \"1s\"\nclaim_interval = \"200ms\"");
        assert!(fine.is_ok(), "{fine:?}");
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn running_entries_are_refreshed_at_least_every_third_of_claim_idle() {
        let settings = |idle: u64, interval: u64| RedisConfig {
            claim_idle: Duration::from_millis(idle),
            claim_interval: Duration::from_millis(interval),
            ..RedisConfig::default()
        };
        assert_eq!(
            refresh_period(&settings(5000, 1000)),
            Duration::from_secs(1)
        );
        assert_eq!(
            refresh_period(&settings(5000, 3000)),
            Duration::from_nanos(1_666_666_666)
        );
        assert_eq!(
            refresh_period(&settings(1000, 990)),
            Duration::from_nanos(333_333_333)
        );
    }

    fn bulk(bytes: &[u8]) -> Value {
        Value::BulkString(bytes.to_vec())
    }

    fn entry(id: &str, fields: &[&[u8]]) -> Value {
        Value::Array(vec![
            bulk(id.as_bytes()),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn a_read_reply_is_parsed_entry_by_entry_and_defects_keep_the_raw_fields() {
        let settings = RedisConfig::default();
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"orders"),
            Value::Array(vec![
                entry("1-0", &[b"payload", b"{}", b"key", b"k", b"trace-id", b"t"]),
                entry("2-0", &[b"na\xffme", b"v", b"payload", b"{}"]),
                entry("3-0", &[b"trace-id", b"t"]),
                entry("4-0", &[b"payload", b"a", b"payload", b"b"]),
            ]),
        ])]);
        let entries = parse_read(reply, "XREADGROUP").unwrap();
        let results: Vec<(Message, Option<String>)> = entries
            .into_iter()
            .map(|e| to_message(e.text, e.fields.unwrap(), &settings))
            .collect();
        let (good, defect) = &results[0];
        assert_eq!(defect, &None);
        assert_eq!(&good.payload[..], b"{}");
        assert_eq!(good.key.as_deref(), Some("k"));
        assert_eq!(good.headers.get("trace-id"), Some("t"));
        assert_eq!(good.id.as_deref(), Some("1-0"));
        for (i, reason) in [
            (1, "is not UTF-8"),
            (2, "no `payload` field"),
            (3, "two `payload` fields"),
        ] {
            let (raw, defect) = &results[i];
            assert!(
                defect.as_deref().is_some_and(|d| d.contains(reason)),
                "{defect:?}"
            );
            assert_eq!(raw.headers.get(RAW_ENTRY_HEADER), Some(RAW_ENTRY_ENCODING));
        }
        assert_eq!(&results[1].0.payload[..], b"5:na\xffme,1:v,7:payload,2:{},");
        assert_eq!(results[1].0.id.as_deref(), Some("2-0"));
        // RESP3 shapes: streams and fields as maps.
        let reply = Value::Map(vec![(
            bulk(b"orders"),
            Value::Array(vec![Value::Array(vec![
                bulk(b"5-1"),
                Value::Map(vec![(bulk(b"payload"), bulk(b"x"))]),
            ])]),
        )]);
        let entries = parse_read(reply, "XREAD").unwrap();
        let (message, defect) = to_message(
            entries[0].text.clone(),
            entries.into_iter().next().unwrap().fields.unwrap(),
            &settings,
        );
        assert_eq!((&message.payload[..], defect), (&b"x"[..], None));
        // A name without a value, fields that are not a list: defective, kept whole.
        let reply = Value::Array(vec![
            entry("6-0", &[b"payload", b"x", b"lone"]),
            Value::Array(vec![bulk(b"7-0"), Value::Int(1)]),
        ]);
        let entries = parse_entries(reply, "XRANGE").unwrap();
        assert_eq!(entries.len(), 2);
        for entry in entries {
            let (raw, defect) = to_message(entry.text, entry.fields.unwrap(), &settings);
            assert!(
                defect
                    .as_deref()
                    .is_some_and(|d| d.contains("not a string")),
                "{defect:?}"
            );
            assert_eq!(raw.headers.get(RAW_ENTRY_HEADER), Some(RAW_ENTRY_ENCODING));
        }
        assert!(parse_read(Value::Nil, "XREAD").unwrap().is_empty());
        assert!(parse_read(Value::Int(3), "XREAD").is_err());
    }

    #[test]
    fn ids_step_back_and_reads_shrink_for_large_entries() {
        let id = |ms, seq| StreamId { ms, seq };
        assert_eq!(StreamId::parse("1700-3"), Some(id(1700, 3)));
        assert_eq!(StreamId::parse("$"), None);
        assert_eq!(StreamId::parse("+1-2"), None);
        assert_eq!(StreamId::parse("1-"), None);
        assert_eq!(StreamId::parse("18446744073709551616-0"), None);
        for id in [id(0, 0), id(1700, 3), id(u64::MAX, u64::MAX)] {
            let mut buf = [0; 41];
            assert_eq!(id.write(&mut buf), id.to_string().as_bytes());
            assert_eq!(StreamId::parse(&id.to_string()), Some(id));
        }
        assert_eq!(id(1700, 0).predecessor(), Some(id(1699, u64::MAX)));
        assert_eq!(predecessor((1700, 3)), Some((1700, 2)));
        assert_eq!(predecessor((1700, 0)), Some((1699, u64::MAX)));
        assert_eq!(predecessor((0, 0)), None);
        assert_eq!(read_count(128, 0), 128);
        assert_eq!(read_count(128, 100), 128);
        assert_eq!(read_count(128, 8 << 20), 8);
        assert_eq!(read_count(128, 512 << 20), 1);
    }
}
