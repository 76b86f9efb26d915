//! Kafka (through `rdkafka`, librdkafka built from source).
//!
//! - Publish: an idempotent producer with `acks=all`; a publish returns after its
//!   delivery report. The key is the Kafka key (the default partitioner hashes it, so a
//!   key keeps its partition); headers travel as Kafka headers, the message id as header
//!   `message-id`. Topics are created when missing (`[broker.kafka] create_topics`, with
//!   `partitions` and `replication`).
//! - A group is the consumer group `<topic>.<group>` (or the subscriber's `consumer`
//!   setting), joined with `subscribe`; `App::start` returns once it has its partitions.
//!   A new group starts at the earliest offset. No group: the subscriber reads every
//!   partition itself (`assign`), from the end as it is when it subscribes, and commits
//!   nothing (at-most-once fan-out).
//! - At-least-once: offsets are stored only for handled (or dead-lettered) messages,
//!   and only up to the lowest one still in progress in each partition; stored offsets
//!   are committed every `commit_interval`, when partitions are revoked and at `close`.
//!   A rebalance or a crash hands what was in progress to the next owner (duplicates are
//!   bounded by what was in flight).
//! - Order: each delivery's lane is its partition, so with `concurrency > 1` partitions
//!   run side by side and each in order. Kafka has no per-message redelivery: retries
//!   happen in place (the partition's next messages wait behind); a partition whose
//!   oldest message has been in progress for a second with `prefetch` messages in
//!   progress is paused until a quarter of them are settled.
//! - Read-ahead: a reader task per subscription takes records from librdkafka and hands
//!   them to the dispatcher (what is ready, up to 64 at a time), at most 4 x `prefetch`
//!   ahead of what it has taken; beyond that librdkafka's own queue fills and it stops
//!   fetching. The reader never stops polling (librdkafka takes a member that has not
//!   polled for `max.poll.interval.ms` out of its group): after a second without room it
//!   pauses the partitions and polls for rebalances until there is room. librdkafka
//!   fetches again 50 ms (not its 1 s) after its queue was full
//!   (`fetch.queue.backoff.ms`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, MessageStream, Rebalance,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::{Notify, mpsc, watch};

use super::ascending::Ascending;
use super::{
    Backend, Capabilities, Delivery, Publish, Settle, Subscription, SubscriptionSpec,
    operation_error, text,
};
use crate::config::{BrokerConfig, KafkaConfig};
use crate::error::BackendError;
use crate::message::Message;

const KIND: &str = "kafka";
const DEFAULT_URL: &str = "kafka://127.0.0.1:9092";
/// Header carrying the message id.
pub const ID_HEADER: &str = "message-id";
/// librdkafka's default `message.max.bytes`: the largest record the producer sends.
const DEFAULT_MAX_MESSAGE: usize = 1_000_000;
/// Room left under `message.max.bytes` for the record's own framing.
const RECORD_OVERHEAD: usize = 512;
/// How long one blocking metadata, offset or commit call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often clients refresh topic metadata (librdkafka: 5 minutes): a consumer sees a
/// topic created (or created again) within this, a producer gives up on a topic that
/// does not exist (so that it is created again) after it.
const METADATA_REFRESH: Duration = Duration::from_secs(5);
/// How long a partition's oldest message may be in progress before the partition is
/// paused at `prefetch` messages in progress.
const STUCK: Duration = Duration::from_secs(1);
/// Past `prefetch` messages in progress, a partition's oldest one is checked for being
/// [`STUCK`] at every this many more.
const STUCK_CHECK: usize = 64;
/// The reader hands the dispatcher up to this many times `prefetch` records ahead of what
/// it has taken (see [`ReadAhead`]).
const READ_AHEAD_FACTOR: usize = 4;
/// How long librdkafka waits before fetching for a partition again once its local queue
/// has held `queued.min.messages` (librdkafka: 1 s). A consumer draining a backlog empties
/// that queue in tens of milliseconds and then sat idle for the rest of the second
/// (librdkafka's docs: "may need to be decreased if ... the application is experiencing
/// long (~1s) delays between messages").
const FETCH_QUEUE_BACKOFF: Duration = Duration::from_millis(50);
/// Bits of a settle token holding the offset (the partition is above them).
const OFFSET_BITS: u32 = 48;

type KafkaConsumer = rdkafka::consumer::StreamConsumer<Group>;

/// A Kafka producer, the admin client that creates topics, and the consumers of the
/// subscriptions.
pub struct KafkaBackend {
    inner: Arc<Inner>,
}

struct Inner {
    servers: String,
    settings: KafkaConfig,
    connect_timeout: Duration,
    /// The producer; made anew when it is wedged (see [`Inner::renew_producer`]).
    producer: std::sync::RwLock<Arc<FutureProducer<Logs>>>,
    producer_config: ClientConfig,
    admin: AdminClient<Logs>,
    /// Topics known to exist (created here or found).
    topics: Mutex<HashSet<String>>,
    /// Every subscription's consumer, committed at `close`.
    consumers: Mutex<Vec<Weak<KafkaConsumer>>>,
    max_message: usize,
}

/// `kafka://host:port[,host:port...]` (or the bare list) as librdkafka's
/// `bootstrap.servers`.
fn bootstrap_servers(url: &str) -> Result<String, String> {
    let list = url.strip_prefix("kafka://").unwrap_or(url);
    let list = list.trim_end_matches('/');
    if list.contains('@') {
        return Err(
            "credentials in the URL are not taken: give them as librdkafka properties (`[broker.kafka.properties]` `sasl.username`, ...)".into(),
        );
    }
    if list.is_empty() || list.contains("://") || list.contains(['/', '?', ' ']) {
        return Err("expected `kafka://host:port[,host:port...]`".into());
    }
    for server in list.split(',') {
        let (host, port) = server.rsplit_once(':').unwrap_or((server, "9092"));
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("`{server}` is not `host:port`"));
        }
    }
    Ok(list.to_string())
}

/// librdkafka's logs and errors, through `tracing`.
struct Logs;

fn log_line(level: RDKafkaLogLevel, facility: &str, line: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => tracing::warn!(facility, "librdkafka: {line}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::debug!(facility, "librdkafka: {line}")
        }
        RDKafkaLogLevel::Debug => tracing::trace!(facility, "librdkafka: {line}"),
    }
}

fn client_error(error: KafkaError, reason: &str) {
    // a broker that went away is retried by librdkafka itself, every few seconds
    tracing::warn!(%error, reason, "kafka client error");
}

impl ClientContext for Logs {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        log_line(level, facility, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(error, reason);
    }
}

/// A client's configuration: the servers, the framework's settings `own`, then the
/// user's properties for every client, then `specific` (the client kind's own): what the
/// user gives wins.
fn client_config(
    servers: &str,
    connect_timeout: Duration,
    settings: &KafkaConfig,
    own: &[(&str, String)],
    specific: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", servers);
    config.set(
        "socket.connection.setup.timeout.ms",
        millis(connect_timeout.max(Duration::from_secs(1))),
    );
    config.set(
        "topic.metadata.refresh.interval.ms",
        millis(METADATA_REFRESH),
    );
    config.set(
        "topic.metadata.propagation.max.ms",
        millis(METADATA_REFRESH),
    );
    for (key, value) in own {
        config.set(*key, value);
    }
    for (key, value) in settings.properties.iter().chain(specific) {
        config.set(key, value);
    }
    config
}

impl Inner {
    fn client_config(
        &self,
        own: &[(&str, String)],
        specific: &std::collections::BTreeMap<String, String>,
    ) -> ClientConfig {
        client_config(
            &self.servers,
            self.connect_timeout,
            &self.settings,
            own,
            specific,
        )
    }

    /// Creates `topic` when missing (once per process; again after the broker said it
    /// is unknown).
    async fn ensure_topic(&self, topic: &str) -> Result<(), BackendError> {
        if !self.settings.create_topics || self.known(topic) {
            return Ok(());
        }
        let new = NewTopic::new(
            topic,
            self.settings.partitions,
            TopicReplication::Fixed(self.settings.replication),
        );
        let options = AdminOptions::new().request_timeout(Some(CALL_TIMEOUT));
        let results = self
            .admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| operation_error(KIND, "create topic", format!("`{topic}`: {e}")))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    return Err(operation_error(
                        KIND,
                        "create topic",
                        format!("`{topic}`: {code}"),
                    ));
                }
            }
        }
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_string());
        Ok(())
    }

    fn producer(&self) -> Arc<FutureProducer<Logs>> {
        Arc::clone(&self.producer.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces `wedged` (unless that was done already) with a new producer. An
    /// idempotent producer whose broker lost its state (a broker that came back empty)
    /// retries its sequence until every message times out, and a fatal error ends a
    /// producer for good: a new one starts with a new producer id.
    fn renew_producer(&self, wedged: &Arc<FutureProducer<Logs>>) {
        let fresh: FutureProducer<Logs> = match self.producer_config.create_with_context(Logs) {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::warn!(%error, "kafka producer not made anew");
                return;
            }
        };
        let old = {
            let mut producer = self
                .producer
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if !Arc::ptr_eq(&producer, wedged) {
                return;
            }
            std::mem::replace(&mut *producer, Arc::new(fresh))
        };
        tracing::warn!("kafka publishes timed out: the producer is made anew");
        // destroying a producer waits for what it still holds: not on an async thread
        drop(tokio::task::spawn_blocking(move || drop(old)));
    }

    fn known(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(topic)
    }

    fn forget(&self, topic: &str) {
        self.topics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(topic);
    }

    /// Publishes and waits for the delivery report; a topic the broker does not know
    /// (one that went with a broker's data) is created again, and the publish tried once
    /// more.
    async fn send(&self, topic: &str, message: Message) -> Result<(), BackendError> {
        match self.send_once(topic, &message).await {
            Err(Some(error))
                if self.settings.create_topics
                    && matches!(
                        error.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::UnknownTopicOrPartition
                                | RDKafkaErrorCode::UnknownTopic
                        )
                    ) =>
            {
                self.send_once(topic, &message)
                    .await
                    .map_err(|error| self.publish_error(topic, &message, error))
            }
            result => result.map_err(|error| self.publish_error(topic, &message, error)),
        }
    }

    /// A failed publish's error (`None`: creating the topic failed, already said).
    fn publish_error(
        &self,
        topic: &str,
        message: &Message,
        error: Option<KafkaError>,
    ) -> BackendError {
        let Some(error) = error else {
            return operation_error(
                KIND,
                "publish",
                format!("`{topic}`: the topic could not be created"),
            );
        };
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
            return BackendError::TooLarge {
                backend: KIND,
                size: message.payload.len(),
                limit: self.max_message,
            };
        }
        operation_error(KIND, "publish", format!("`{topic}`: {error}"))
    }

    /// One publish (creating the topic first where needed); a failure forgets that the
    /// topic exists, so the next one makes sure of it again.
    async fn send_once(&self, topic: &str, message: &Message) -> Result<(), Option<KafkaError>> {
        if let Err(error) = self.ensure_topic(topic).await {
            tracing::warn!(%error, "kafka topic not created");
            return Err(None);
        }
        let mut headers = OwnedHeaders::new_with_capacity(message.headers.len() + 1);
        for (name, value) in message.headers.iter() {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        if let Some(id) = &message.id {
            headers = headers.insert(Header {
                key: ID_HEADER,
                value: Some(id.as_str()),
            });
        }
        let payload: &[u8] = &message.payload;
        let mut record = FutureRecord::to(topic).payload(payload).headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_str());
        }
        let producer = self.producer();
        match producer
            .send(record, Timeout::After(self.settings.publish_timeout))
            .await
        {
            Ok(_) => Ok(()),
            Err((error, _)) => {
                tracing::debug!(%error, topic, "kafka publish failed");
                self.forget(topic);
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut)
                    || producer.client().fatal_error().is_some()
                {
                    self.renew_producer(&producer);
                }
                Err(Some(error))
            }
        }
    }
}

fn millis(duration: Duration) -> String {
    duration.as_millis().max(1).to_string()
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackendError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| operation_error(KIND, "call librdkafka", e))
}

impl KafkaBackend {
    /// Creates the producer and checks that the brokers answer (within
    /// `broker.connect_timeout`).
    pub async fn connect(config: &BrokerConfig) -> Result<Self, BackendError> {
        let url = config.url.as_deref().unwrap_or(DEFAULT_URL);
        let connect_error = |reason: String| BackendError::Connect {
            backend: KIND,
            url: crate::redact::redact_url(url),
            reason,
        };
        let servers = bootstrap_servers(url).map_err(connect_error)?;
        let settings = config.kafka.clone();
        let max_message = settings
            .properties
            .get("message.max.bytes")
            .or_else(|| settings.producer.get("message.max.bytes"))
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_MESSAGE);
        let connect_timeout = config.connect_timeout;
        let producer_config = client_config(
            &servers,
            connect_timeout,
            &settings,
            &[
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
                ("linger.ms", "1".into()),
                ("message.timeout.ms", millis(settings.publish_timeout)),
            ],
            &settings.producer,
        );
        let producer: FutureProducer<Logs> = producer_config
            .create_with_context(Logs)
            .map_err(|e| connect_error(e.to_string()))?;
        let admin: AdminClient<Logs> = client_config(
            &servers,
            connect_timeout,
            &settings,
            &[],
            &std::collections::BTreeMap::new(),
        )
        .create_with_context(Logs)
        .map_err(|e| connect_error(e.to_string()))?;
        let inner = Arc::new(Inner {
            servers,
            settings,
            connect_timeout,
            producer: std::sync::RwLock::new(Arc::new(producer)),
            producer_config,
            admin,
            topics: Mutex::new(HashSet::new()),
            consumers: Mutex::new(Vec::new()),
            max_message,
        });
        // the brokers answer a metadata request, or connecting fails
        let probe = Arc::clone(&inner);
        let timeout = config.connect_timeout;
        blocking(move || {
            probe
                .producer()
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
                .map(drop)
        })
        .await?
        .map_err(|e| connect_error(format!("no answer within {timeout:?}: {e}")))?;
        Ok(KafkaBackend { inner })
    }
}

/// A consumed record as our message.
fn from_record(record: &BorrowedMessage<'_>) -> Message {
    let mut message = Message::new(Bytes::copy_from_slice(record.payload().unwrap_or_default()));
    message.key = record.key().map(|key| text(key).into_owned());
    if let Some(headers) = record.headers() {
        for header in headers.iter() {
            let value = text(header.value.unwrap_or_default());
            if header.key == ID_HEADER {
                message.id = Some(value.as_ref().into());
            } else {
                message.headers.insert_received(header.key, &value);
            }
        }
    }
    message
}

/// What each partition of a subscription has in progress.
#[derive(Default)]
struct Progress {
    partitions: HashMap<i32, PartitionProgress, BuildPartitionHasher>,
    /// Counts revocations: a partition's progress is of one ownership.
    generation: u64,
}

impl Progress {
    /// Whether `partition` is paused as stuck ([`Offsets::opened`]) until enough of it is
    /// settled.
    fn paused_as_stuck(&self, partition: i32) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|state| state.resume_at.is_some())
    }
}

#[derive(Default)]
struct PartitionProgress {
    /// Offsets handed out and not yet settled, in order (they are read in order, so
    /// each one usually joins at the back and leaves from the front).
    open: Ascending<i64>,
    /// One past the highest offset handed out.
    next: i64,
    /// The offset last stored (the next one to consume after a restart).
    stored: i64,
    /// The lowest offset in progress, and since when it has been.
    lowest: Option<(i64, std::time::Instant)>,
    /// While paused: at how many messages in progress it resumes.
    resume_at: Option<usize>,
    /// The ownership this progress is of ([`Progress::generation`] when it began).
    generation: u64,
    /// The partition, as the list librdkafka stores its offsets from: made once, its
    /// offset set for each store.
    store: Option<TopicPartitionList>,
}

/// Hashes partition numbers with one multiplication (they are small integers, not
/// chosen by an adversary; this runs twice per record, three times after a revocation).
#[derive(Default)]
struct PartitionHasher(u64);

type BuildPartitionHasher = std::hash::BuildHasherDefault<PartitionHasher>;

impl std::hash::Hasher for PartitionHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_i32(&mut self, partition: i32) {
        self.0 = u64::from(partition.unsigned_abs()).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A consumer's context: commits before partitions are revoked, forgets their progress,
/// and tells the subscription when it has its partitions.
struct Group {
    progress: Arc<Mutex<Progress>>,
    /// [`Progress::generation`], readable without the lock.
    revocations: Arc<AtomicU64>,
    assigned: watch::Sender<u64>,
    /// Whether offsets are committed (a group), or nothing is (fan-out).
    commits: bool,
}

impl ClientContext for Group {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        log_line(level, facility, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error(error, reason);
    }
}

impl ConsumerContext for Group {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            if self.commits {
                // what was handled is committed before the partitions go
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                    Err(error) => {
                        tracing::warn!(%error, "commit before a rebalance failed (the next owner may see some messages again)")
                    }
                }
            }
            revoke(
                &self.progress,
                &self.revocations,
                partitions
                    .elements()
                    .iter()
                    .map(|element| element.partition()),
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::debug!(
                partitions = ?partitions.elements().iter().map(|e| e.partition()).collect::<Vec<_>>(),
                "kafka partitions assigned"
            );
            self.assigned.send_modify(|count| *count += 1);
        }
    }
}

/// `partitions` are no longer ours: their progress goes, and a new ownership begins (what
/// was read in the old one is dropped, not handed out: [`Offsets::current`]).
fn revoke(
    progress: &Mutex<Progress>,
    revocations: &AtomicU64,
    partitions: impl IntoIterator<Item = i32>,
) {
    let mut progress = progress.lock().unwrap_or_else(PoisonError::into_inner);
    progress.generation += 1;
    revocations.store(progress.generation, Ordering::Release);
    for partition in partitions {
        progress.partitions.remove(&partition);
    }
}

fn token(partition: i32, offset: i64) -> u64 {
    (u64::from(partition.unsigned_abs()) << OFFSET_BITS)
        | (offset.unsigned_abs() & ((1 << OFFSET_BITS) - 1))
}

fn untoken(token: u64) -> (i32, i64) {
    let partition = i32::try_from(token >> OFFSET_BITS).unwrap_or(i32::MAX);
    let offset = i64::try_from(token & ((1 << OFFSET_BITS) - 1)).unwrap_or(i64::MAX);
    (partition, offset)
}

/// Settles one subscription's deliveries: tokens are partition and offset.
struct Offsets {
    consumer: Arc<KafkaConsumer>,
    progress: Arc<Mutex<Progress>>,
    /// [`Progress::generation`], readable without the lock.
    revocations: Arc<AtomicU64>,
    topic: String,
    commits: bool,
    /// Messages in progress at which a partition is paused.
    limit: usize,
}

impl Offsets {
    /// A record was handed out: counts it, pausing its partition at the limit. (Pause
    /// and resume are asked for under the lock, so they reach librdkafka in the order
    /// they were decided.)
    /// Returns the generation of the partition's ownership it was read in. (Per record,
    /// before librdkafka is polled again: the next poll may serve a revocation, after
    /// which this record's partition has no progress to be counted in.)
    fn opened(&self, partition: i32, offset: i64) -> u64 {
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = progress.generation;
        let state = progress
            .partitions
            .entry(partition)
            .or_insert_with(|| PartitionProgress {
                stored: offset,
                generation,
                ..PartitionProgress::default()
            });
        let generation = state.generation;
        state.open.insert(offset);
        state.next = state.next.max(offset + 1);
        if state.lowest.is_none() {
            state.lowest = Some((offset, std::time::Instant::now()));
        }
        // A partition is paused when its oldest message has been in progress a while
        // (retries wait: later messages queue behind it) with `limit` in progress. A
        // pause makes librdkafka drop what it fetched ahead and fetch it again on resume
        // (waiting up to a second): not for the normal flow, whose read-ahead
        // [`ReadAhead`] bounds.
        // (the clock is read only at the limit and every `STUCK_CHECK` records past it:
        // this runs for every record, and a backlog keeps it past the limit)
        let open = state.open.len();
        if state.resume_at.is_none()
            && open >= self.limit
            && (open - self.limit).is_multiple_of(STUCK_CHECK)
            && state
                .lowest
                .is_some_and(|(_, since)| since.elapsed() >= STUCK)
        {
            state.resume_at = Some(open - open / 4);
            self.pause_or_resume(partition, true);
        }
        generation
    }

    /// Whether a record read in ownership `generation` of `partition` is still ours to
    /// handle (after a revocation, what was read ahead belongs to the next owner).
    fn current(&self, partition: i32, generation: u64) -> bool {
        // no revocation since the partition's ownership began: still ours (without the
        // lock, for nearly every record)
        if self.revocations.load(Ordering::Acquire) == generation {
            return true;
        }
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .partitions
            .get(&partition)
            .is_some_and(|state| state.generation == generation)
    }

    fn settled(&self, token: u64) {
        let (partition, offset) = untoken(token);
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        // a partition revoked meanwhile: its next owner has it
        let Some(state) = progress.partitions.get_mut(&partition) else {
            return;
        };
        if !state.open.remove(offset) {
            return;
        }
        let lowest = state.open.first();
        if lowest != state.lowest.map(|(offset, _)| offset) {
            state.lowest = lowest.map(|offset| (offset, std::time::Instant::now()));
        }
        if state
            .resume_at
            .is_some_and(|resume_at| state.open.len() <= resume_at)
        {
            state.resume_at = None;
            self.pause_or_resume(partition, false);
        }
        // everything below the lowest offset still in progress is handled
        let handled_up_to = state.open.first().unwrap_or(state.next);
        if !self.commits || handled_up_to <= state.stored {
            return;
        }
        state.stored = handled_up_to;
        // (stored under the lock: stores reach librdkafka in the order decided)
        let list = state.store.get_or_insert_with(|| {
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.topic, partition);
            list
        });
        if let Err(error) = list
            .set_all_offsets(Offset::Offset(handled_up_to))
            .and_then(|()| self.consumer.store_offsets(list))
        {
            // not assigned any more: its next owner starts from the last commit
            tracing::debug!(%error, partition, offset = handled_up_to, "offset not stored");
        }
    }

    /// The partitions assigned now (none if librdkafka cannot say).
    fn assigned(&self) -> TopicPartitionList {
        self.consumer.assignment().unwrap_or_default()
    }

    /// Pauses `partition` for the reader while it waits for room (unless this
    /// subscription paused it already, as stuck: then that pause stands), noting it in
    /// `held`.
    fn hold(&self, partition: i32, held: &mut Vec<i32>) {
        let progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        if !progress.paused_as_stuck(partition) {
            self.pause_or_resume(partition, true);
            if !held.contains(&partition) {
                held.push(partition);
            }
        }
    }

    /// Resumes what [`Offsets::hold`] paused, except a partition paused as stuck since
    /// (it resumes when enough of it is settled).
    fn release(&self, held: &mut Vec<i32>) {
        let progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        for partition in held.drain(..) {
            if !progress.paused_as_stuck(partition) {
                self.pause_or_resume(partition, false);
            }
        }
    }

    fn pause_or_resume(&self, partition: i32, pause: bool) {
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, partition);
        let done = if pause {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        if let Err(error) = done {
            tracing::debug!(%error, partition, pause, "pause/resume not applied");
        }
    }
}

impl Drop for Offsets {
    fn drop(&mut self) {
        // The kept lists hold librdkafka references into the consumer: freed before it
        // (this runs before the fields drop, and no list is made after it).
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        for state in progress.partitions.values_mut() {
            state.store = None;
        }
    }
}

impl Settle for Offsets {
    fn ack(&self, token: u64) {
        self.settled(token);
    }

    fn nack(&self, token: u64, _delay: Duration, _message: &Arc<Message>, _attempt: u32) {
        // Kafka has no per-message redelivery (the dispatcher retries in place; this comes
        // only at shutdown): left unsettled, the offset is not stored and the next owner
        // of the partition reads the message again
        let _ = token;
    }
}

/// What the reader has handed the dispatcher that the dispatcher has not taken yet. At
/// `high` the reader stops taking records until it is down to half (a band, so that
/// neither side wakes the other for each record); librdkafka's own queue then fills and
/// its fetching stops, without the drop and fetch again a pause costs.
struct ReadAhead {
    queued: AtomicUsize,
    /// Told when `queued` comes down to half of `high`.
    room: Notify,
    high: usize,
}

impl ReadAhead {
    /// `count` more about to be handed over (counted first: the dispatcher may take them
    /// before the count would be made after).
    fn handing(&self, count: usize) {
        self.queued.fetch_add(count, Ordering::Relaxed);
    }

    fn is_full(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= self.high
    }

    /// One taken by the dispatcher.
    fn taken(&self) {
        if self.queued.fetch_sub(1, Ordering::Relaxed) == self.high / 2 + 1 {
            self.room.notify_one();
        }
    }

    fn has_room(&self) -> bool {
        self.queued.load(Ordering::Relaxed) <= self.high / 2
    }
}

/// A delivery on its way from the reader to the dispatcher: its partition and the
/// ownership it was read in ([`Offsets::current`]).
type Handed = (i32, u64, Delivery);

/// At most this many records go to the dispatcher in one hand-over: those librdkafka
/// has ready when the reader wakes (one send and one wake-up for them all).
const BATCH: usize = 64;

/// How often a reader finishing ([`Reader::linger`]) looks whether every delivery is
/// settled.
const LINGER_CHECK: Duration = Duration::from_millis(100);

/// A subscription's reader: takes records from librdkafka and hands them over.
struct Reader {
    offsets: Arc<Offsets>,
    settle: Arc<dyn Settle>,
    ahead: Arc<ReadAhead>,
    tx: mpsc::UnboundedSender<Vec<Handed>>,
    subscriber: String,
    /// The most records in one hand-over: [`BATCH`], or half the read-ahead if less.
    batch: usize,
}

impl Reader {
    /// The record as a delivery, into the next hand-over.
    fn take(&self, record: &BorrowedMessage<'_>, batch: &mut Vec<Handed>) {
        let (partition, offset) = (record.partition(), record.offset());
        let message = from_record(record);
        let generation = self.offsets.opened(partition, offset);
        let delivery = Delivery::settled_by(
            message,
            1,
            Arc::clone(&self.settle),
            token(partition, offset),
        )
        .in_lane(u64::from(partition.unsigned_abs()));
        batch.push((partition, generation, delivery));
    }

    /// Takes `first` and what else librdkafka has ready (up to the batch size), and
    /// hands them to the dispatcher at once; `false` once the subscription is gone.
    fn hand_over(
        &self,
        first: &BorrowedMessage<'_>,
        records: &mut MessageStream<'_, Group>,
    ) -> bool {
        let mut batch = Vec::with_capacity(self.batch);
        self.take(first, &mut batch);
        while batch.len() < self.batch {
            // (polled once: a record that is ready, or nothing; the waker it leaves is
            // replaced by the next poll that waits)
            match records.next().now_or_never() {
                Some(Some(Ok(record))) => self.take(&record, &mut batch),
                Some(Some(Err(error))) => {
                    self.consumer_error(&error);
                    break;
                }
                _ => break,
            }
        }
        self.ahead.handing(batch.len());
        self.tx.send(batch).is_ok()
    }

    fn consumer_error(&self, error: &KafkaError) {
        tracing::warn!(subscriber = %self.subscriber, %error, "kafka consumer error");
    }

    /// Waits until the dispatcher has taken half of what was handed over. Records are
    /// not taken meanwhile, but librdkafka must still be polled (it takes a member that
    /// has not polled for `max.poll.interval.ms` out of its group, and serves rebalances
    /// from the poll): after [`STUCK`] without room the partitions are paused (nothing
    /// more to hand out) and polled until there is room, then resumed. A record polled
    /// meanwhile (fetched before its pause, or of a partition assigned since) is handed
    /// over and its partition paused. `false` once the subscription is gone.
    async fn wait_for_room(
        &self,
        records: &mut MessageStream<'_, Group>,
        mut closed: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> bool {
        let patience = tokio::time::sleep(STUCK);
        tokio::pin!(patience);
        let mut polling = false;
        let mut held = Vec::new();
        let open = loop {
            let room = self.ahead.room.notified();
            if self.ahead.has_room() {
                break true;
            }
            tokio::select! {
                biased;
                () = &mut closed => break false,
                () = room => {}
                () = &mut patience, if !polling => {
                    polling = true;
                    for element in self.offsets.assigned().elements() {
                        self.offsets.hold(element.partition(), &mut held);
                    }
                    tracing::debug!(subscriber = %self.subscriber, paused = ?held, "the handlers are behind: partitions paused, polling on");
                }
                record = records.next(), if polling => match record {
                    Some(Ok(record)) => {
                        let partition = record.partition();
                        if !self.hand_over(&record, records) {
                            break false;
                        }
                        drop(record);
                        self.offsets.hold(partition, &mut held);
                    }
                    Some(Err(error)) => self.consumer_error(&error),
                    None => break false,
                },
            }
        };
        self.offsets.release(&mut held);
        open
    }

    /// Takes records and hands them over until the subscription is gone.
    async fn read(&self, records: &mut MessageStream<'_, Group>) {
        // made once: a new one per record would register a waiter each time (as `recv`
        // does: one stream, its waker slot taken once)
        let closed = self.tx.closed();
        tokio::pin!(closed);
        loop {
            tokio::select! {
                // (records first: the end is looked at only when none is ready)
                biased;
                record = records.next() => match record {
                    Some(Ok(record)) => {
                        if !self.hand_over(&record, records) {
                            return;
                        }
                        drop(record);
                        if self.ahead.is_full()
                            && !self.wait_for_room(records, closed.as_mut()).await
                        {
                            return;
                        }
                    }
                    Some(Err(error)) => {
                        self.consumer_error(&error);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    // (librdkafka's streams never end)
                    None => return,
                },
                () = &mut closed => return,
            }
        }
    }

    /// Once the subscription is gone (a shutdown), the dispatcher may still be finishing
    /// what it took, whose offsets are committed when it is done: until every delivery
    /// is settled or dropped, librdkafka is still polled, every partition paused (what
    /// is polled meanwhile is dropped unread: the partition's next owner reads it). Not
    /// polled for `max.poll.interval.ms`, the member would be taken out of its group
    /// while a long handler finishes, its last offsets not committed, and the next owner
    /// would handle again what was finished here.
    async fn linger(self, records: &mut MessageStream<'_, Group>) {
        let offsets = Arc::downgrade(&self.offsets);
        let mut held = Vec::new();
        for element in self.offsets.assigned().elements() {
            self.offsets.hold(element.partition(), &mut held);
        }
        // (the reader's own hold on the offsets goes: they live as long as a delivery)
        drop(self);
        let mut check = tokio::time::interval(LINGER_CHECK);
        loop {
            tokio::select! {
                record = records.next() => match record {
                    // fetched before its pause, or of a partition assigned since
                    Some(Ok(record)) => {
                        if let Some(offsets) = offsets.upgrade() {
                            offsets.hold(record.partition(), &mut held);
                        }
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "kafka consumer error while finishing");
                    }
                    None => return,
                },
                _ = check.tick() => {
                    if offsets.strong_count() == 0 {
                        return;
                    }
                }
            }
        }
    }
}

impl KafkaBackend {
    async fn start(&self, spec: &SubscriptionSpec) -> Result<Subscription, BackendError> {
        let inner = &self.inner;
        let topic = spec.topic.clone();
        inner.ensure_topic(&topic).await?;
        let group_id = match (&spec.consumer, &spec.group) {
            (Some(name), _) => Some(name.clone()),
            (None, Some(group)) => Some(format!("{topic}.{group}")),
            (None, None) => None,
        };
        let commits = group_id.is_some();
        let settings = &inner.settings;
        let mut own = vec![
            ("enable.auto.offset.store", "false".to_string()),
            ("enable.partition.eof", "false".into()),
            ("session.timeout.ms", millis(settings.session_timeout)),
            (
                "heartbeat.interval.ms",
                millis(settings.session_timeout / 4),
            ),
            ("max.poll.interval.ms", millis(settings.max_poll_interval)),
            ("fetch.queue.backoff.ms", millis(FETCH_QUEUE_BACKOFF)),
        ];
        match &group_id {
            Some(id) => own.extend([
                ("group.id", id.clone()),
                ("enable.auto.commit", "true".into()),
                ("auto.commit.interval.ms", millis(settings.commit_interval)),
                ("auto.offset.reset", "earliest".into()),
            ]),
            None => own.extend([
                // never joined, never committed: librdkafka wants a name all the same
                (
                    "group.id",
                    format!("transport.fanout.{}.{}", std::process::id(), unique()),
                ),
                ("enable.auto.commit", "false".into()),
                ("auto.offset.reset", "latest".into()),
            ]),
        }
        let progress = Arc::new(Mutex::new(Progress::default()));
        let revocations = Arc::new(AtomicU64::new(0));
        let (assigned, mut joined) = watch::channel(0u64);
        let consumer: Arc<KafkaConsumer> = Arc::new(
            inner
                .client_config(&own, &settings.consumer)
                .create_with_context(Group {
                    progress: Arc::clone(&progress),
                    revocations: Arc::clone(&revocations),
                    assigned,
                    commits,
                })
                .map_err(|e| operation_error(KIND, "create consumer", e))?,
        );
        if commits {
            consumer
                .subscribe(&[&topic])
                .map_err(|e| operation_error(KIND, "subscribe", format!("`{topic}`: {e}")))?;
        } else {
            let reader = Arc::clone(&consumer);
            let name = topic.clone();
            let deadline = settings.join_timeout;
            blocking(move || assign_from_the_end(&reader, &name, deadline)).await??;
        }
        inner
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&consumer));
        let offsets = Arc::new(Offsets {
            consumer: Arc::clone(&consumer),
            progress,
            revocations,
            topic: topic.clone(),
            commits,
            limit: spec.prefetch.max(1),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let high = spec.prefetch.max(1).saturating_mul(READ_AHEAD_FACTOR);
        let ahead = Arc::new(ReadAhead {
            queued: AtomicUsize::new(0),
            room: Notify::new(),
            high,
        });
        let reader = Reader {
            offsets: Arc::clone(&offsets),
            settle: Arc::clone(&offsets) as Arc<dyn Settle>,
            ahead: Arc::clone(&ahead),
            tx,
            subscriber: spec.subscriber.clone(),
            batch: BATCH.min(high / 2).max(1),
        };
        tokio::spawn(async move {
            let mut records = consumer.stream();
            reader.read(&mut records).await;
            reader.linger(&mut records).await;
        });
        if commits {
            // in place once the group has given this member its partitions (none, if
            // the others hold them all)
            let joining = async {
                while *joined.borrow_and_update() == 0 {
                    if joined.changed().await.is_err() {
                        return false;
                    }
                }
                true
            };
            match tokio::time::timeout(settings.join_timeout, joining).await {
                Ok(true) => {}
                _ => {
                    return Err(operation_error(
                        KIND,
                        "subscribe",
                        format!(
                            "`{topic}`: no partitions assigned within {:?} (`broker.kafka.join_timeout`)",
                            settings.join_timeout
                        ),
                    ));
                }
            }
        }
        // what was read ahead of a revocation is dropped (unsettled): the partition's
        // next owner reads it again
        let mut rx = rx;
        let mut batch = Vec::new().into_iter();
        Ok(futures_util::stream::poll_fn(move |cx| {
            loop {
                let Some((partition, generation, delivery)) = batch.next() else {
                    match rx.poll_recv(cx) {
                        std::task::Poll::Ready(Some(next)) => {
                            batch = next.into_iter();
                            continue;
                        }
                        other => return other.map(|_| None),
                    }
                };
                ahead.taken();
                if offsets.current(partition, generation) {
                    return std::task::Poll::Ready(Some(delivery));
                }
            }
        })
        .boxed())
    }
}

/// A fan-out subscriber reads every partition of `topic` from its current end.
fn assign_from_the_end(
    consumer: &KafkaConsumer,
    topic: &str,
    deadline: Duration,
) -> Result<(), BackendError> {
    let started = std::time::Instant::now();
    let partitions = loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Timeout::After(CALL_TIMEOUT))
            .map_err(|e| operation_error(KIND, "subscribe", format!("`{topic}`: {e}")))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if !partitions.is_empty() {
            break partitions;
        }
        if started.elapsed() > deadline {
            return Err(operation_error(
                KIND,
                "subscribe",
                format!("`{topic}`: the topic has no partitions (does it exist?)"),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut list = TopicPartitionList::new();
    for partition in partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, Timeout::After(CALL_TIMEOUT))
            .map_err(|e| operation_error(KIND, "subscribe", format!("`{topic}`: {e}")))?;
        list.add_partition_offset(topic, partition, Offset::Offset(high))
            .map_err(|e| operation_error(KIND, "subscribe", e))?;
    }
    consumer
        .assign(&list)
        .map_err(|e| operation_error(KIND, "subscribe", format!("`{topic}`: {e}")))
}

/// A number no other fan-out consumer of this process has.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Backend for KafkaBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: true,
            persistence: true,
            ordering: true,
            at_least_once: true,
            native_redelivery: false,
            headers: true,
            keys: true,
        }
    }

    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> Publish<'a> {
        Publish::boxed(self.inner.send(topic, message))
    }

    fn subscribe<'a>(
        &'a self,
        spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>> {
        self.start(spec).boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        let inner = Arc::clone(&self.inner);
        async move {
            // what was handled is committed; what was published is delivered
            let consumers: Vec<Arc<KafkaConsumer>> = inner
                .consumers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .drain(..)
                .filter_map(|weak| weak.upgrade())
                .collect();
            blocking(move || {
                for consumer in &consumers {
                    if consumer.group_metadata().is_some() {
                        let _ = consumer.commit_consumer_state(CommitMode::Sync);
                    }
                }
                let _ = inner.producer().flush(Timeout::After(CALL_TIMEOUT));
            })
            .await
        }
        .boxed()
    }

    fn validate_topic(&self, topic: &str) -> Result<(), BackendError> {
        super::check_topic(KIND, topic)?;
        // Kafka's own rule: ASCII letters, digits, `.`, `_`, `-`; at most 249 bytes
        if let Some(c) = topic
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(BackendError::InvalidTopic {
                backend: KIND,
                topic: topic.to_string(),
                reason: format!(
                    "contains `{c}`: Kafka topics hold only ASCII letters, digits, `.`, `_` and `-`"
                ),
            });
        }
        Ok(())
    }

    fn max_message_size(&self) -> Option<usize> {
        Some(self.inner.max_message.saturating_sub(RECORD_OVERHEAD))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_bootstrap_servers() {
        assert_eq!(
            bootstrap_servers("kafka://127.0.0.1:9092").unwrap(),
            "127.0.0.1:9092"
        );
        assert_eq!(bootstrap_servers("a:1,b:2").unwrap(), "a:1,b:2");
        assert_eq!(bootstrap_servers("kafka://host").unwrap(), "host");
        for bad in ["", "kafka://user:pw@h:1", "kafka://h:port", "http://h:1"] {
            assert!(bootstrap_servers(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_reader_has_room_again_once_half_is_taken() {
        let ahead = ReadAhead {
            queued: AtomicUsize::new(0),
            room: Notify::new(),
            high: 8,
        };
        ahead.handing(7);
        assert!(!ahead.is_full());
        ahead.handing(1);
        assert!(ahead.is_full() && !ahead.has_room());
        for _ in 0..3 {
            ahead.taken();
        }
        assert!(!ahead.has_room(), "5 of 8 still ahead");
        ahead.taken();
        assert!(ahead.has_room(), "down to half");
        tokio::time::timeout(Duration::from_millis(100), ahead.room.notified())
            .await
            .expect("told at half");
    }

    // (a runtime: the consumer starts a task on it)
    #[tokio::test]
    async fn what_was_read_before_its_partition_was_revoked_is_not_handed_out() {
        let progress = Arc::new(Mutex::new(Progress::default()));
        let revocations = Arc::new(AtomicU64::new(0));
        // (never connects: no broker named)
        let consumer: KafkaConsumer = ClientConfig::new()
            .set("group.id", "unit")
            .create_with_context(Group {
                progress: Arc::clone(&progress),
                revocations: Arc::clone(&revocations),
                assigned: watch::channel(0).0,
                commits: false,
            })
            .expect("a consumer");
        let offsets = Arc::new(Offsets {
            consumer: Arc::new(consumer),
            progress: Arc::clone(&progress),
            revocations: Arc::clone(&revocations),
            topic: "unit".into(),
            commits: false,
            limit: 8,
        });
        let (zero, one) = (offsets.opened(0, 10), offsets.opened(1, 20));
        assert!(offsets.current(0, zero) && offsets.current(1, one));
        revoke(&progress, &revocations, [0]);
        assert!(!offsets.current(0, zero), "partition 0 went");
        assert!(offsets.current(1, one), "partition 1 is still ours");
        // partition 0 assigned again: what is read now is handed out, not what was before
        let again = offsets.opened(0, 11);
        assert!(offsets.current(0, again));
        assert!(!offsets.current(0, zero));
    }

    #[test]
    fn tokens_round_trip() {
        for (partition, offset) in [(0, 0), (3, 17), (1023, (1 << 47) + 5)] {
            assert_eq!(untoken(token(partition, offset)), (partition, offset));
        }
    }
}
