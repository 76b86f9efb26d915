//! The publisher handle: typed, codec-aware publishing to any topic.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::backend::Backend;
use crate::codec::{Codec, Encoder, SerdeCodec};
use crate::error::{BackendError, PublishError};
use crate::message::{CONTENT_TYPE, Headers, Message};
use crate::topic::Topic;

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
    ) -> Self {
        Publisher {
            backend,
            codec,
            max_message_bytes,
        }
    }

    /// Publishes a serde value with the default codec (`publisher.codec` in config).
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), PublishError> {
        self.to(topic).send(value).await
    }

    /// Publishes to a typed topic with the topic's codec. Only a `&T` is accepted.
    pub async fn send<T, C>(&self, topic: &Topic<T, C>, value: &T) -> Result<(), PublishError>
    where
        C: Encoder<T>,
    {
        self.to(topic.name()).send_with::<C, T>(value).await
    }

    /// Starts a message to `topic`, to add headers or a key before sending.
    pub fn to(&self, topic: impl Into<String>) -> Outgoing<'_> {
        Outgoing {
            publisher: self,
            topic: topic.into(),
            message: Message::default(),
        }
    }

    /// Publishes an already encoded message as it is. A payload over
    /// `broker.max_message_bytes` is refused before it reaches the broker.
    pub async fn publish_message(&self, topic: &str, message: Message) -> Result<(), PublishError> {
        let size = message.payload.len();
        if size > self.max_message_bytes {
            return Err(PublishError::Backend {
                topic: topic.to_string(),
                source: BackendError::TooLarge {
                    backend: self.backend.kind(),
                    size,
                    limit: self.max_message_bytes,
                },
            });
        }
        self.backend
            .publish(topic, message)
            .await
            .map_err(|source: BackendError| PublishError::Backend {
                topic: topic.to_string(),
                source,
            })
    }
}

/// A message being prepared by [`Publisher::to`].
#[must_use = "a message is only published by one of its send methods"]
pub struct Outgoing<'p> {
    publisher: &'p Publisher,
    topic: String,
    message: Message,
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
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.message.id = Some(id.into());
        self
    }

    /// Encodes `value` with the publisher's default codec and publishes it.
    pub async fn send<T: Serialize + ?Sized>(self, value: &T) -> Result<(), PublishError> {
        match self.publisher.codec.encode(value) {
            Ok((payload, content_type)) => self.send_payload(payload, content_type).await,
            Err(source) => Err(PublishError::Encode {
                topic: self.topic,
                source,
            }),
        }
    }

    /// Encodes `value` with codec `C` and publishes it.
    pub async fn send_with<C: Encoder<T>, T: ?Sized>(self, value: &T) -> Result<(), PublishError> {
        match C::encode(value) {
            Ok(payload) => self.send_payload(payload, C::CONTENT_TYPE).await,
            Err(source) => Err(PublishError::Encode {
                topic: self.topic,
                source,
            }),
        }
    }

    /// Publishes raw bytes (no codec, no content type unless set as a header).
    pub async fn send_bytes(mut self, payload: impl Into<Bytes>) -> Result<(), PublishError> {
        self.message.payload = payload.into();
        self.publisher
            .publish_message(&self.topic, self.message)
            .await
    }

    async fn send_payload(
        mut self,
        payload: Bytes,
        content_type: &'static str,
    ) -> Result<(), PublishError> {
        if !self.message.headers.contains(CONTENT_TYPE) {
            self.message.headers.insert(CONTENT_TYPE, content_type);
        }
        self.send_bytes(payload).await
    }
}

/// Publishes the `Ok` value of a subscriber declared with `reply = ...`, with codec `C`,
/// carrying the request's key and a `correlation-id` header (the request's id or key).
pub(crate) async fn publish_reply<C: Encoder<T> + Codec, T: ?Sized>(
    publisher: &Publisher,
    topic: &str,
    value: &T,
    request: &Message,
) -> Result<(), PublishError> {
    let mut out = publisher.to(topic);
    if let Some(key) = &request.key {
        out = out.key(key.clone());
    }
    if let Some(id) = &request.id {
        out = out.header("correlation-id", id.clone());
    }
    out.send_with::<C, T>(value).await
}
