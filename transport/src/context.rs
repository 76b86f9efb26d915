//! The context handed to a handler next to its payload.

use std::sync::Arc;

use bytes::Bytes;

use crate::message::{Headers, Message};
use crate::publisher::Publisher;

/// What a handler knows about the message it handles, and a way to publish more.
///
/// ```
/// # use transport::prelude::*;
/// #[transport::subscriber(topic = "orders.created")]
/// async fn on_order(order: serde_json::Value, ctx: &Context) -> Result<(), Error> {
///     tracing::info!(topic = ctx.topic(), attempt = ctx.attempt(), "order {order}");
///     if let Some(trace) = ctx.header("trace-id") {
///         ctx.publisher().to("audit").header("trace-id", trace).send(&order).await?;
///     }
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct Context {
    pub(crate) message: Arc<Message>,
    /// What every delivery of the subscriber shares (one reference count per delivery).
    pub(crate) subscription: Arc<SubscriptionInfo>,
    /// The concrete topic, for a subscriber to an MQTT filter.
    pub(crate) topic: Option<Arc<str>>,
    pub(crate) attempt: u32,
    /// Headers the handler adds to its reply.
    pub(crate) reply_headers: std::sync::Mutex<Headers>,
}

/// A subscriber's fixed facts, shared by the contexts of all its deliveries.
#[derive(Debug)]
pub(crate) struct SubscriptionInfo {
    pub topic: Arc<str>,
    pub group: Option<Arc<str>>,
    pub subscriber: &'static str,
    pub publisher: Publisher,
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub extensions: Extensions,
}

/// Values an App hands its handlers by type (its WebSocket servers).
#[derive(Clone, Default)]
pub(crate) struct Extensions(
    Arc<std::collections::HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>>,
);

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.0.len())
            .finish()
    }
}

impl Extensions {
    /// Adds `value` (replacing one of its type); before the App starts.
    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub(crate) fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        Arc::make_mut(&mut self.0).insert(std::any::TypeId::of::<T>(), Arc::new(value));
    }

    #[cfg_attr(not(feature = "websocket"), allow(dead_code))]
    pub(crate) fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.get(&std::any::TypeId::of::<T>())?.downcast_ref()
    }
}

impl Context {
    /// The topic the message arrived on: the subscriber's topic, or for a subscriber to
    /// an MQTT filter (`mqtt_filter = "/hfp/v2/#"`), the concrete topic that matched it
    /// (`/hfp/v2/journey/ongoing/vp/bus/0018/00423`).
    pub fn topic(&self) -> &str {
        self.topic.as_deref().unwrap_or(&self.subscription.topic)
    }

    /// The subscriber's group, if it has one.
    pub fn group(&self) -> Option<&str> {
        self.subscription.group.as_deref()
    }

    /// The subscriber's name (`Service::method` or the function's name).
    pub fn subscriber(&self) -> &'static str {
        self.subscription.subscriber
    }

    /// Every header of the message.
    pub fn headers(&self) -> &Headers {
        &self.message.headers
    }

    /// One header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.message.headers.get(name)
    }

    /// The message id, where the broker or producer gave one.
    pub fn message_id(&self) -> Option<&str> {
        self.message.id.as_deref()
    }

    /// The message key, where there is one.
    pub fn key(&self) -> Option<&str> {
        self.message.key.as_deref()
    }

    /// Which attempt this is: 1 the first time, 2 on the first retry, ...
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The raw payload, before decoding.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The whole message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// A publisher on the App's backend.
    pub fn publisher(&self) -> &Publisher {
        &self.subscription.publisher
    }

    /// The App's WebSocket server whose sessions hold an `S` (given with
    /// [`App::websocket`](crate::App::websocket)), to send or broadcast to browsers from a
    /// broker subscriber; `None` if the App has none.
    #[cfg(feature = "websocket")]
    pub fn websocket<S: Send + Sync + 'static>(&self) -> Option<&crate::ws::WsServer<S>> {
        self.subscription.extensions.get()
    }

    /// Adds a header to this handler's reply (subscribers declared with `reply = ...`).
    /// The reply already carries the request's `correlation-id` and trace headers.
    ///
    /// ```
    /// # fn demo(ctx: &transport::Context) {
    /// ctx.set_reply_header("x-cache", "hit");
    /// # }
    /// ```
    pub fn set_reply_header(&self, name: impl Into<String>, value: impl Into<String>) {
        self.reply_headers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name, value);
    }

    /// The headers set with [`Context::set_reply_header`], leaving none.
    pub(crate) fn take_reply_headers(&self) -> Headers {
        std::mem::take(
            &mut *self
                .reply_headers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}
