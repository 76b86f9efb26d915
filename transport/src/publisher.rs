//! The publisher handle: typed, codec-aware publishing to any topic.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::backend::Backend;
use crate::codec::{Codec, Encoder, SerdeCodec};
use crate::error::{BackendError, PublishError};
use crate::message::{CONTENT_TYPE, Headers, Message, MessageId};
use crate::metrics::PublishMetrics;
use crate::topic::Topic;
use crate::trace::{TRACEPARENT, TRACESTATE};
use tracing::Instrument;

/// Publishes messages through the App's backend. Cheap to clone; reach it with
/// [`Running::publisher`](crate::Running::publisher) or [`Context::publisher`](crate::Context::publisher).
///
/// ```
/// # async fn demo(publisher: transport::Publisher) -> Result<(), transport::PublishError> {
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Reading { celsius: f64 }
/// // a serde value with the default codec (json unless configured otherwise)
/// publisher.publish("sensor.raw", &Reading { celsius: 21.5 }).await?;
/// // with headers and a key
/// publisher.to("sensor.raw").header("site", "lab").key("probe-7").send(&Reading { celsius: 3.0 }).await?;
/// // a typed topic: only a `Reading` compiles here
/// const READINGS: transport::Topic<Reading> = transport::Topic::new("sensor.readings");
/// publisher.send(&READINGS, &Reading { celsius: 22.0 }).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    backend: Arc<dyn Backend>,
    codec: SerdeCodec,
    max_message_bytes: usize,
    /// Headers a reply copies from its request.
    propagate: Arc<[String]>,
    metrics: PublishMetrics,
    /// Whether publishes carry a `traceparent` (`publisher.trace_context`).
    trace: bool,
    /// This publisher's backend among the topic names checked lately ([`checked`]).
    checks: u64,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("backend", &self.backend.kind())
            .field("codec", &self.codec)
            .finish()
    }
}

impl Publisher {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        codec: SerdeCodec,
        max_message_bytes: usize,
        propagate: &[String],
        trace: bool,
    ) -> Self {
        Publisher {
            trace,
            metrics: PublishMetrics::new(backend.kind()),
            backend,
            codec,
            max_message_bytes,
            propagate: propagate.into(),
            checks: next_checks_id(),
        }
    }

    /// Publishes a serde value with the default codec (`publisher.codec` in config).
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), PublishError> {
        // encoded, checked and handed over in one frame: the only await is the broker's
        self.sent(topic, None, || self.encoded(topic, value)).await
    }

    /// Publishes to a typed topic with the topic's codec. Only a `&T` is accepted.
    pub async fn send<T, C>(&self, topic: &Topic<T, C>, value: &T) -> Result<(), PublishError>
    where
        C: Encoder<T>,
    {
        let topic = topic.name();
        self.sent(topic, None, || encoded_with::<C, T>(topic, value))
            .await
    }

    /// Starts a message, to add headers or a key before sending: to a topic by name
    /// (`to("audit")`, an [`Outgoing`] that sends any serde value), or to a typed topic
    /// (`to(&READINGS)`, a [`TypedOutgoing`] whose `send` takes only the topic's type).
    ///
    /// ```
    /// # async fn demo(publisher: transport::Publisher) -> Result<(), transport::PublishError> {
    /// # #[derive(serde::Serialize)] struct Reading { celsius: f64 }
    /// const READINGS: transport::Topic<Reading> = transport::Topic::new("sensor.readings");
    /// publisher.to(&READINGS).header("site", "lab").key("probe-7").send(&Reading { celsius: 3.0 }).await?;
    /// # Ok(()) }
    /// ```
    pub fn to<'p, D: Destination<'p>>(&'p self, destination: D) -> D::Builder {
        destination.builder(self)
    }

    fn untyped<'p>(&'p self, topic: Cow<'p, str>) -> Outgoing<'p> {
        Outgoing {
            publisher: self,
            topic,
            message: Message::default(),
            defer: None,
        }
    }

    /// Publishes an already encoded message as it is (given an id by
    /// [`message_id`](crate::message_id) if it has none). A payload over
    /// `broker.max_message_bytes`, or a topic the backend cannot use, is refused before
    /// it reaches the broker.
    pub async fn publish_message(&self, topic: &str, message: Message) -> Result<(), PublishError> {
        self.sent(topic, None, || Ok(message)).await
    }

    /// Publishes `values` to `topic` with the default codec, as one batch where the broker
    /// has batches (NSQ's `MPUB`), else one after the other; returns once the broker has
    /// them all. Each is checked as a single publish is, before any is sent.
    ///
    /// ```
    /// # async fn demo(publisher: transport::Publisher) -> Result<(), transport::PublishError> {
    /// publisher.publish_all("sensor.raw", &[21.5, 22.0, 22.5]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_all<T: Serialize>(
        &self,
        topic: &str,
        values: &[T],
    ) -> Result<(), PublishError> {
        let messages = values
            .iter()
            .map(|value| self.encoded(topic, value))
            .collect::<Result<Vec<_>, _>>()?;
        self.publish_batch(topic, messages).await
    }

    /// Publishes `values` to a typed topic with its codec, as one batch where the broker
    /// has batches (see [`Publisher::publish_all`]).
    pub async fn send_all<T, C>(
        &self,
        topic: &Topic<T, C>,
        values: &[T],
    ) -> Result<(), PublishError>
    where
        C: Encoder<T>,
    {
        let topic = topic.name();
        let messages = values
            .iter()
            .map(|value| encoded_with::<C, T>(topic, value))
            .collect::<Result<Vec<_>, _>>()?;
        self.publish_batch(topic, messages).await
    }

    /// `value` encoded with the default codec, as a message with its content type.
    #[inline]
    fn encoded<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<Message, PublishError> {
        let (payload, content_type) =
            self.codec
                .encode(value)
                .map_err(|source| PublishError::Encode {
                    topic: topic.to_string(),
                    source,
                })?;
        Ok(Message {
            headers: Headers::with_content_type(content_type),
            ..Message::new(payload)
        })
    }

    async fn publish_batch(
        &self,
        topic: &str,
        mut messages: Vec<Message>,
    ) -> Result<(), PublishError> {
        let started = self.metrics.start();
        let result = async {
            for message in &mut messages {
                self.check(topic, message)?;
            }
            self.backend
                .publish_batch(topic, messages)
                .await
                .map_err(|source| backend_error(topic, source))
        }
        .await;
        self.metrics.published(started, result.is_ok());
        result
    }

    /// Gives `message` an id if it has none, and checks it and `topic` as every publish
    /// does.
    fn check(&self, topic: &str, message: &mut Message) -> Result<(), PublishError> {
        if message.id.is_none() {
            message.id = Some(crate::message::message_id());
        }
        if self.trace
            && let Some(context) = crate::trace::for_publish()
            && !message.headers.contains(TRACEPARENT)
        {
            context.inject(&mut message.headers);
        }
        if !checked(self.checks, topic) {
            if let Err(source) = self.backend.validate_topic(topic) {
                return Err(backend_error(topic, source));
            }
            remember_checked(self.checks, topic);
        }
        let size = message.payload.len();
        if size > self.max_message_bytes {
            return Err(backend_error(
                topic,
                BackendError::TooLarge {
                    backend: self.backend.kind(),
                    size,
                    limit: self.max_message_bytes,
                },
            ));
        }
        Ok(())
    }

    /// Makes the message (`message`: encoding it, mostly), checks it, hands it to the
    /// backend and waits for the broker: every single publish, timed and its failure
    /// counted (`metrics`). The message is made in the frame that hands it over, so it is
    /// not moved through every layer. A message that cannot be made (an encoding error)
    /// is not a publish: not timed, not counted.
    async fn sent(
        &self,
        topic: &str,
        defer: Option<std::time::Duration>,
        message: impl FnOnce() -> Result<Message, PublishError>,
    ) -> Result<(), PublishError> {
        let started = self.metrics.start();
        let span = crate::trace::span!(
            DEBUG,
            "transport.publish",
            "producer",
            topic,
            backend = self.backend.kind()
        );
        let handed = span.in_scope(|| message().map(|message| self.start(topic, message, defer)));
        let result = match handed? {
            // a broker that took it at once (in-process): nothing to wait for
            Ok(mut publish) => match publish.take_ready() {
                Some(outcome) => outcome,
                None => publish.instrument(span.clone()).await,
            }
            .map_err(|source| backend_error(topic, source)),
            Err(error) => Err(error),
        };
        if result.is_err() {
            crate::trace::failed(&span);
        }
        self.metrics.published(started, result.is_ok());
        result
    }

    /// Checks `message` and hands it to the backend: what every publish does before its
    /// one await (the broker's), so a publish is a single future, not a chain of them.
    #[inline]
    fn start<'a>(
        &'a self,
        topic: &'a str,
        mut message: Message,
        defer: Option<std::time::Duration>,
    ) -> Result<crate::backend::Publish<'a>, PublishError> {
        self.check(topic, &mut message)?;
        Ok(match defer {
            None => self.backend.publish(topic, message),
            Some(delay) => self.backend.publish_deferred(topic, message, delay),
        })
    }
}

/// A number no other publisher's backend had (for the names-checked memo below).
fn next_checks_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// How many topic names each thread remembers as checked.
const CHECKED: usize = 8;

/// Topic names found valid, by backend number, oldest replaced first.
struct CheckedTopics {
    next: usize,
    names: [(u64, Box<str>); CHECKED],
}

thread_local! {
    /// Topic names a backend found valid lately, by the backend's number (a name's
    /// validity depends on nothing else): a publish to one of them skips the check, which
    /// costs more than this lookup (a prefixed name is checked twice).
    static CHECKED_TOPICS: std::cell::RefCell<CheckedTopics> =
        std::cell::RefCell::new(CheckedTopics {
            next: 0,
            names: std::array::from_fn(|_| (0, Box::from(""))),
        });
}

/// Whether the backend numbered `backend` found `topic` valid lately on this thread.
fn checked(backend: u64, topic: &str) -> bool {
    CHECKED_TOPICS
        .try_with(|memo| {
            memo.borrow()
                .names
                .iter()
                .any(|(id, name)| *id == backend && **name == *topic)
        })
        .unwrap_or(false)
}

/// Notes that the backend numbered `backend` found `topic` valid (evicting the oldest).
fn remember_checked(backend: u64, topic: &str) {
    let _ = CHECKED_TOPICS.try_with(|memo| {
        let mut memo = memo.borrow_mut();
        let slot = memo.next;
        memo.names[slot] = (backend, Box::from(topic));
        memo.next = (slot + 1) % CHECKED;
    });
}

/// `value` encoded with codec `C`, as a message with its content type.
#[inline]
fn encoded_with<C: Encoder<T>, T: ?Sized>(topic: &str, value: &T) -> Result<Message, PublishError> {
    let payload = C::encode(value).map_err(|source| PublishError::Encode {
        topic: topic.to_string(),
        source,
    })?;
    Ok(Message {
        headers: Headers::with_content_type(C::CONTENT_TYPE),
        ..Message::new(payload)
    })
}

/// A broker's refusal of a publish to `topic`.
fn backend_error(topic: &str, source: BackendError) -> PublishError {
    PublishError::Backend {
        topic: topic.to_string(),
        source,
    }
}

impl Publisher {
    /// Publishes a dead letter (built by `dead_letter::letter`, already fitted under the
    /// broker's own limit): `max_message_bytes` does not apply, since the broker
    /// accepted the original.
    pub(crate) async fn publish_dead_letter(
        &self,
        topic: &str,
        message: Message,
    ) -> Result<(), PublishError> {
        self.backend
            .publish(topic, message)
            .await
            .map_err(|source| backend_error(topic, source))
    }
}

/// Where [`Publisher::to`] sends: a topic name (`&str`, `String`) or a typed
/// [`Topic`], each with its own builder.
pub trait Destination<'p> {
    /// The message builder for this kind of destination.
    type Builder;
    /// Starts a message to this destination.
    fn builder(self, publisher: &'p Publisher) -> Self::Builder;
}

impl<'p, 't: 'p> Destination<'p> for &'t str {
    type Builder = Outgoing<'p>;
    fn builder(self, publisher: &'p Publisher) -> Outgoing<'p> {
        publisher.untyped(Cow::Borrowed(self))
    }
}

impl<'p> Destination<'p> for String {
    type Builder = Outgoing<'p>;
    fn builder(self, publisher: &'p Publisher) -> Outgoing<'p> {
        publisher.untyped(Cow::Owned(self))
    }
}

impl<'p, 't: 'p> Destination<'p> for &'t String {
    type Builder = Outgoing<'p>;
    fn builder(self, publisher: &'p Publisher) -> Outgoing<'p> {
        publisher.untyped(Cow::Borrowed(self.as_str()))
    }
}

impl<'p, T, C> Destination<'p> for &Topic<T, C> {
    type Builder = TypedOutgoing<'p, T, C>;
    fn builder(self, publisher: &'p Publisher) -> TypedOutgoing<'p, T, C> {
        TypedOutgoing {
            inner: publisher.untyped(Cow::Borrowed(self.name())),
            topic: std::marker::PhantomData,
        }
    }
}

/// A message to a typed topic being prepared by [`Publisher::to`]: `send` accepts only
/// the topic's payload type and encodes it with the topic's codec.
#[must_use = "a message is only published by `send`"]
pub struct TypedOutgoing<'p, T, C> {
    inner: Outgoing<'p>,
    topic: std::marker::PhantomData<fn(&T, C)>,
}

impl<T, C> TypedOutgoing<'_, T, C> {
    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.inner = self.inner.header(name, value);
        self
    }

    /// Adds every header of `headers`.
    pub fn headers(mut self, headers: &Headers) -> Self {
        self.inner = self.inner.headers(headers);
        self
    }

    /// Sets the message key (partitioning / ordering, where the broker has keys).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.inner = self.inner.key(key);
        self
    }

    /// Sets the message id.
    pub fn id(mut self, id: impl Into<MessageId>) -> Self {
        self.inner = self.inner.id(id);
        self
    }

    /// Has the broker deliver the message only after `delay` (see
    /// [`Outgoing::deliver_after`]).
    pub fn deliver_after(mut self, delay: std::time::Duration) -> Self {
        self.inner = self.inner.deliver_after(delay);
        self
    }

    /// Encodes `value` with the topic's codec and publishes it.
    pub async fn send(self, value: &T) -> Result<(), PublishError>
    where
        C: Encoder<T>,
    {
        self.inner.send_with::<C, T>(value).await
    }
}

/// A message being prepared by [`Publisher::to`].
#[must_use = "a message is only published by one of its send methods"]
pub struct Outgoing<'p> {
    publisher: &'p Publisher,
    topic: Cow<'p, str>,
    message: Message,
    defer: Option<std::time::Duration>,
}

impl Outgoing<'_> {
    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.message.headers.insert(name, value);
        self
    }

    /// Adds every header of `headers`.
    pub fn headers(mut self, headers: &Headers) -> Self {
        for (name, value) in headers.iter() {
            self.message.headers.insert(name, value);
        }
        self
    }

    /// Sets the message key (partitioning / ordering, where the broker has keys).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.message.key = Some(key.into());
        self
    }

    /// Sets the message id.
    pub fn id(mut self, id: impl Into<MessageId>) -> Self {
        self.message.id = Some(id.into());
        self
    }

    /// Has the broker deliver the message only after `delay` (NSQ's `DPUB`; the
    /// in-process broker holds it back itself). A broker without deferred delivery
    /// refuses the publish with [`BackendError::Unsupported`] rather than deliver early.
    ///
    /// ```
    /// # async fn demo(publisher: transport::Publisher) -> Result<(), transport::PublishError> {
    /// use std::time::Duration;
    /// publisher.to("reminders").deliver_after(Duration::from_secs(30)).send(&"call back").await?;
    /// # Ok(()) }
    /// ```
    pub fn deliver_after(mut self, delay: std::time::Duration) -> Self {
        self.defer = Some(delay);
        self
    }

    /// Encodes `value` with the publisher's default codec and publishes it.
    pub async fn send<T: Serialize + ?Sized>(self, value: &T) -> Result<(), PublishError> {
        match self.publisher.codec.encode(value) {
            Ok((payload, content_type)) => self.publish(payload, Some(content_type)).await,
            Err(source) => Err(PublishError::Encode {
                topic: self.topic.into_owned(),
                source,
            }),
        }
    }

    /// Encodes `value` with codec `C` and publishes it.
    pub async fn send_with<C: Encoder<T>, T: ?Sized>(self, value: &T) -> Result<(), PublishError> {
        match C::encode(value) {
            Ok(payload) => self.publish(payload, Some(C::CONTENT_TYPE)).await,
            Err(source) => Err(PublishError::Encode {
                topic: self.topic.into_owned(),
                source,
            }),
        }
    }

    /// Publishes raw bytes (no codec, no content type unless set as a header).
    pub async fn send_bytes(self, payload: impl Into<Bytes>) -> Result<(), PublishError> {
        self.publish(payload.into(), None).await
    }

    /// Publishes `payload` with this message's headers, key and id; `content_type` unless
    /// a header already says one.
    async fn publish(
        self,
        payload: Bytes,
        content_type: Option<&'static str>,
    ) -> Result<(), PublishError> {
        let Outgoing {
            publisher,
            topic,
            mut message,
            defer,
        } = self;
        message.payload = payload;
        if let Some(content_type) = content_type
            && !message.headers.contains(CONTENT_TYPE)
        {
            message.headers.insert_static(CONTENT_TYPE, content_type);
        }
        publisher.sent(&topic, defer, || Ok(message)).await
    }
}

/// Header carrying the id of the request a reply (or dead letter) answers.
pub const CORRELATION_ID: &str = "correlation-id";

/// The correlation id of a reply to `request`: the request's own `correlation-id`
/// header if it has one, else its message id.
pub(crate) fn correlation_of(request: &Message) -> Option<&str> {
    request
        .headers
        .get(CORRELATION_ID)
        .or(request.id.as_deref())
}

/// Publishes the `Ok` value of a subscriber declared with `reply = ...`, with codec `C`:
/// to the request's broker-native reply address when it has one (a NATS request), else
/// to `topic`. The reply carries the request's key, a `correlation-id` (see
/// [`correlation_of`]), the request's headers listed in `publisher.propagate_headers`
/// (trace context by default), and the headers the handler added with
/// [`Context::set_reply_header`](crate::Context::set_reply_header).
pub(crate) async fn publish_reply<C: Encoder<T> + Codec, T: ?Sized>(
    publisher: &Publisher,
    topic: &str,
    value: &T,
    request: &Message,
    extra: Headers,
) -> Result<(), PublishError> {
    let mut message = Message::default();
    message.key.clone_from(&request.key);
    for name in publisher.propagate.iter() {
        // with trace context on, the reply is the handler's child, not its request's sibling
        if publisher.trace && (name == TRACEPARENT || name == TRACESTATE) {
            continue;
        }
        if let Some(value) = request.headers.get(name) {
            message.headers.insert(name.as_str(), value);
        }
    }
    if let Some(correlation) = correlation_of(request) {
        message.headers.insert(CORRELATION_ID, correlation);
    }
    for (name, value) in extra.iter() {
        message.headers.insert(name, value);
    }
    message.payload = C::encode(value).map_err(|source| PublishError::Encode {
        topic: topic.to_string(),
        source,
    })?;
    if !message.headers.contains(CONTENT_TYPE) {
        message.headers.insert_static(CONTENT_TYPE, C::CONTENT_TYPE);
    }
    match &request.reply_to {
        Some(address) => {
            message.id = Some(crate::message::message_id());
            if publisher.trace
                && let Some(context) = crate::trace::for_publish()
            {
                context.inject(&mut message.headers);
            }
            let started = publisher.metrics.start();
            let result = publisher
                .backend
                .reply(address, message)
                .await
                .map_err(|source| backend_error(address, source));
            publisher.metrics.published(started, result.is_ok());
            result
        }
        None => publisher.publish_message(topic, message).await,
    }
}
