//! MQTT 5 (through `rumqttc`), for Mosquitto and other MQTT 5 brokers.
//!
//! - Topics: a dotted name is an MQTT topic of levels (`sensor.readings` <->
//!   `sensor/readings`); a name holding `/` is an MQTT topic as it is (a foreign tree:
//!   `/hfp/v2/journey/...`). A subscriber's `mqtt_filter` is subscribed as it is, with
//!   `+` and `#`; each delivery names the concrete topic it came on.
//! - Subscriptions: each has a connection of its own (its own session), QoS 1, manual
//!   acks sent only after the handler succeeded or the message was dead-lettered; a group
//!   is a shared subscription (`$share/<group>/<filter>`). `prefetch` is the session's
//!   receive maximum (how many unacknowledged messages the broker sends ahead).
//! - Sessions: with `[broker.mqtt] client_id`, each subscription's session is persistent
//!   (client id `<client_id>.<subscriber>`, `clean_start = false`, `session_expiry`):
//!   unacknowledged messages come back when it reconnects (at-least-once). Without one,
//!   sessions are clean: what is in flight when a connection drops is lost
//!   (at-most-once).
//! - MQTT has no negative acknowledgement or broker-side delay: retries happen in place.
//! - Publish: QoS 1, returns after the broker's PUBACK. Headers travel as user
//!   properties, the key as user property `x-transport-key`, the id as `message-id`;
//!   content type, `correlation-id` (as correlation data) and `reply_to` (as response
//!   topic) as MQTT 5 properties.
//! - Recovery: a lost connection ends its subscription (the dispatcher subscribes again,
//!   with backoff, on a new connection); the publishing connection is made again on the
//!   next publish.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish as MqttPublish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions, Request};
use tokio::sync::{mpsc, oneshot};

use super::mqtt_filter::{self, mqtt_name};
use super::{
    Backend, Capabilities, Delivery, Publish, Settle, Subscription, SubscriptionSpec,
    operation_error,
};
use crate::config::{BrokerConfig, MqttConfig};
use crate::error::BackendError;
use crate::message::{CONTENT_TYPE, Headers, Message};
use crate::publisher::CORRELATION_ID;

const KIND: &str = "mqtt";
const DEFAULT_URL: &str = "mqtt://127.0.0.1:1883";
/// User property carrying the message key.
pub const KEY_PROPERTY: &str = "x-transport-key";
/// User property carrying the message id.
pub const ID_PROPERTY: &str = "message-id";
/// Requests a client may queue for its event loop.
const REQUESTS: usize = 1024;

/// An MQTT 5 broker connection for publishing; subscriptions open their own.
pub struct MqttBackend {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    credentials: Credentials,
    settings: MqttConfig,
    connect_timeout: Duration,
    /// Incoming packets up to this size are accepted.
    max_packet: u32,
    /// The live publishing connection (read by every publish, under a lock held for
    /// the read alone).
    publisher: Mutex<Option<Arc<PublishLink>>>,
    /// Held while a publishing connection is being made, so one is made at a time.
    connecting: tokio::sync::Mutex<()>,
}

/// A user name and password.
type Credentials = Option<(String, String)>;

/// `mqtt://[user:password@]host[:port]` (also `tcp://`).
fn parse_url(url: &str) -> Result<(String, u16, Credentials), String> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .ok_or("the URL must begin with mqtt:// (no TLS: mqtts is not supported)")?;
    let rest = rest.trim_end_matches('/');
    let (credentials, address) = match rest.rsplit_once('@') {
        Some((credentials, address)) => {
            let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
            (Some((user.to_string(), password.to_string())), address)
        }
        None => (None, rest),
    };
    let (host, port) = match address.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse()
                .map_err(|_| format!("`{port}` is not a port number"))?,
        ),
        None => (address, 1883),
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok((host.to_string(), port, credentials))
}

/// Waits for the broker's CONNACK (and the SUBACK, when `subscribing`), polling `events`;
/// returns what a resumed session was sent meanwhile (to be handled first, not dropped).
async fn handshake(events: &mut EventLoop, subscribing: bool) -> Result<Vec<MqttPublish>, String> {
    let mut connected = false;
    let mut early = Vec::new();
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => early.push(publish),
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code != rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success {
                    return Err(format!("connection refused: {:?}", ack.code));
                }
                connected = true;
                if !subscribing {
                    return Ok(early);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) if connected => {
                use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
                return match ack.return_codes.first() {
                    Some(SubscribeReasonCode::Success(_)) => Ok(early),
                    other => Err(format!("subscription refused: {other:?}")),
                };
            }
            Ok(_) => {}
            Err(error) => return Err(error.to_string()),
        }
    }
}

impl MqttBackend {
    /// Checks the URL and connects the publishing connection (within
    /// `broker.connect_timeout`).
    pub async fn connect(config: &BrokerConfig) -> Result<Self, BackendError> {
        let url = config
            .url
            .clone()
            .unwrap_or_else(|| DEFAULT_URL.to_string());
        let (host, port, credentials) =
            parse_url(&url).map_err(|reason| BackendError::Connect {
                backend: KIND,
                url: crate::redact::redact_url(&url),
                reason,
            })?;
        let max_packet =
            u32::try_from(config.max_message_bytes.saturating_add(64 * 1024)).unwrap_or(u32::MAX);
        let inner = Arc::new(Inner {
            host,
            port,
            credentials,
            settings: config.mqtt.clone(),
            connect_timeout: config.connect_timeout,
            max_packet,
            publisher: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        });
        inner.publisher().await?;
        Ok(MqttBackend { inner })
    }
}

impl Inner {
    fn options(&self, client_id: String) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_max_packet_size(Some(self.max_packet));
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        options
    }

    fn connect_error(&self, reason: String) -> BackendError {
        BackendError::Connect {
            backend: KIND,
            url: format!("mqtt://{}:{}", self.host, self.port),
            reason,
        }
    }

    /// A client id unique in this process (two clients with one id take each other's
    /// session over) and, by pid, across processes on a host.
    fn client_id(&self, role: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("transport-{}-{role}-{n}", std::process::id())
    }

    /// The live publishing link, if there is one.
    fn live_publisher(&self) -> Option<Arc<PublishLink>> {
        self.publisher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|link| link.confirms.alive.load(Ordering::Acquire))
            .cloned()
    }

    /// The live publishing link, connecting again if the last one died.
    async fn publisher(&self) -> Result<Arc<PublishLink>, BackendError> {
        if let Some(live) = self.live_publisher() {
            return Ok(live);
        }
        let _connecting = self.connecting.lock().await;
        // (another publish may have connected while this one waited)
        if let Some(live) = self.live_publisher() {
            return Ok(live);
        }
        let (client, mut events) =
            AsyncClient::new(self.options(self.client_id("publisher")), REQUESTS);
        tokio::time::timeout(self.connect_timeout, handshake(&mut events, false))
            .await
            .map_err(|_| {
                self.connect_error(format!("no CONNACK within {:?}", self.connect_timeout))
            })?
            .map_err(|reason| self.connect_error(reason))?;
        let fresh = Arc::new(PublishLink {
            client,
            confirms: Arc::new(Confirms {
                alive: AtomicBool::new(true),
                waiting: Mutex::new(Waiting::default()),
            }),
            order: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(confirm_task(events, Arc::clone(&fresh.confirms)));
        *self
            .publisher
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&fresh));
        Ok(fresh)
    }
}

/// The publishing connection: its client, and who waits for which PUBACK.
struct PublishLink {
    client: AsyncClient,
    /// Shared with the connection's event loop task (which does not hold the client, so
    /// the connection ends when the backend lets go of it).
    confirms: Arc<Confirms>,
    /// Taken by a publish that found the client's request queue full, while it waits
    /// for room; publishes that come meanwhile queue behind it (so that requests and
    /// waiters stay in the same order).
    order: tokio::sync::Mutex<()>,
}

/// A publish on the slow path: when it ends, however it ends, it leaves the slow path.
struct SlowPublish<'a> {
    confirms: &'a Confirms,
}

impl Drop for SlowPublish<'_> {
    fn drop(&mut self) {
        self.confirms.lock().slow -= 1;
    }
}

type Confirm = oneshot::Sender<Result<(), String>>;

/// Waiters for a publishing connection's PUBACKs, and whether its event loop still runs.
struct Confirms {
    alive: AtomicBool,
    waiting: Mutex<Waiting>,
}

impl Confirms {
    /// (a guard is never held across an await)
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Waiters, in request order until the event loop names their packet id.
#[derive(Default)]
struct Waiting {
    queued: VecDeque<Confirm>,
    /// By packet id (1 to the connection's in-flight limit, so a short vector).
    sent: Vec<Option<Confirm>>,
    /// Publishes on the slow path (waiting for room in the request queue): while there
    /// are any, new publishes take it too.
    slow: usize,
}

impl Waiting {
    fn sent(&mut self, pkid: u16, waiter: Confirm) {
        let at = usize::from(pkid);
        if self.sent.len() <= at {
            self.sent.resize_with(at + 1, || None);
        }
        self.sent[at] = Some(waiter);
    }

    fn acknowledged(&mut self, pkid: u16) -> Option<Confirm> {
        self.sent.get_mut(usize::from(pkid)).and_then(Option::take)
    }
}

/// Polls the publishing connection; completes each publish when its PUBACK arrives.
/// Ends (failing every waiter) when the connection drops: the next publish connects
/// anew, so no packet id of this connection is ever matched with another's publish.
async fn confirm_task(mut events: EventLoop, confirms: Arc<Confirms>) {
    loop {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut waiting = confirms.lock();
                if let Some(waiter) = waiting.queued.pop_front() {
                    waiting.sent(pkid, waiter);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let waiter = confirms.lock().acknowledged(ack.pkid);
                if let Some(waiter) = waiter {
                    let outcome = match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                        other => Err(format!("the broker refused the message: {other:?}")),
                    };
                    let _ = waiter.send(outcome);
                }
            }
            Ok(_) => {}
            Err(error) => {
                confirms.alive.store(false, Ordering::Release);
                // the request queue closed first: a publish that comes after the waiters
                // are failed below is refused by the client, not queued to nobody
                drop(events);
                let mut waiting = confirms.lock();
                let waiting = &mut *waiting;
                let reason = format!("connection lost before the broker's PUBACK: {error}");
                let sent = waiting.sent.drain(..).flatten();
                for waiter in waiting.queued.drain(..).chain(sent) {
                    let _ = waiter.send(Err(reason.clone()));
                }
                return;
            }
        }
    }
}

/// Our message as an MQTT 5 publish's properties.
fn to_properties(message: &Message) -> PublishProperties {
    let mut properties = PublishProperties {
        // room for every header, the key and the id at once (not grown as they come)
        user_properties: Vec::with_capacity(message.headers.len() + 2),
        ..PublishProperties::default()
    };
    for (name, value) in message.headers.iter() {
        match name {
            CONTENT_TYPE => properties.content_type = Some(value.to_string()),
            CORRELATION_ID => {
                properties.correlation_data = Some(Bytes::copy_from_slice(value.as_bytes()));
            }
            _ => properties
                .user_properties
                .push((name.to_string(), value.to_string())),
        }
    }
    if let Some(key) = &message.key {
        properties
            .user_properties
            .push((KEY_PROPERTY.to_string(), key.clone()));
    }
    if let Some(id) = &message.id {
        properties
            .user_properties
            .push((ID_PROPERTY.to_string(), id.as_str().to_string()));
    }
    properties.response_topic.clone_from(&message.reply_to);
    properties
}

/// A consumed MQTT publish as our message.
fn from_publish(publish: MqttPublish) -> Message {
    let mut message = Message::new(publish.payload);
    let mut headers = Headers::new();
    if let Some(properties) = publish.properties {
        if let Some(content_type) = properties.content_type {
            headers.insert_received(CONTENT_TYPE, &content_type);
        }
        if let Some(correlation) = properties.correlation_data {
            headers.insert(CORRELATION_ID, super::text(&correlation));
        }
        for (name, value) in properties.user_properties {
            match name.as_str() {
                KEY_PROPERTY => message.key = Some(value),
                ID_PROPERTY => message.id = Some(value.into()),
                _ => headers.insert(name, value),
            }
        }
        message.reply_to = properties.response_topic;
    }
    message.headers = headers;
    message
}

/// Acknowledges a subscription's deliveries (tokens are packet ids).
struct Acker {
    client: AsyncClient,
}

impl Acker {
    fn puback(&self, pkid: u64) {
        let Ok(pkid) = u16::try_from(pkid) else {
            return;
        };
        let mut publish = MqttPublish::new("", QoS::AtLeastOnce, Bytes::new(), None);
        publish.pkid = pkid;
        if let Err(rumqttc::v5::ClientError::TryRequest(_)) = self.client.try_ack(&publish) {
            // the request queue is full: queue it without blocking the caller
            let client = self.client.clone();
            tokio::spawn(async move {
                let _ = client.ack(&publish).await;
            });
        }
    }
}

impl Settle for Acker {
    fn ack(&self, token: u64) {
        self.puback(token);
    }

    fn nack(&self, _token: u64, _delay: Duration, _message: &Arc<Message>, _attempt: u32) {
        // MQTT has no negative acknowledgement: left unacknowledged, the message comes
        // back when a persistent session reconnects
    }
}

impl MqttBackend {
    async fn start(&self, spec: &SubscriptionSpec) -> Result<Subscription, BackendError> {
        let inner = &self.inner;
        let persistent = inner.settings.client_id.as_ref();
        let client_id = match persistent {
            Some(id) => format!("{id}.{}", spec.subscriber.replace("::", ".")),
            None => inner.client_id("subscriber"),
        };
        let mut options = inner.options(client_id);
        options
            .set_manual_acks(true)
            .set_clean_start(persistent.is_none())
            .set_receive_maximum(Some(
                u16::try_from(spec.prefetch.clamp(1, 65_535)).unwrap_or(u16::MAX),
            ));
        if persistent.is_some() {
            let expiry = u32::try_from(inner.settings.session_expiry.as_secs()).unwrap_or(u32::MAX);
            options.set_session_expiry_interval(Some(expiry));
        }
        // a filter is the broker's already; a name takes its MQTT form
        let topic = mqtt_name(&spec.topic).into_owned();
        let filter = match &spec.group {
            Some(group) => format!("$share/{group}/{topic}"),
            None => topic,
        };
        let (client, mut events) = AsyncClient::new(options, REQUESTS);
        client
            .subscribe(filter.clone(), QoS::AtLeastOnce)
            .await
            .map_err(|e| operation_error(KIND, "subscribe", e))?;
        let early = tokio::time::timeout(inner.connect_timeout, handshake(&mut events, true))
            .await
            .map_err(|_| {
                inner.connect_error(format!("no SUBACK within {:?}", inner.connect_timeout))
            })?
            .map_err(|reason| {
                operation_error(KIND, "subscribe", format!("`{filter}`: {reason}"))
            })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let settle: Arc<dyn Settle> = Arc::new(Acker {
            client: client.clone(),
        });
        let subscriber = spec.subscriber.clone();
        let concrete_topics = spec.filter;
        let deliver = move |publish: MqttPublish| {
            let pkid = u64::from(publish.pkid);
            let attempt = if publish.dup { 2 } else { 1 };
            let topic = concrete_topics.then(|| Arc::<str>::from(super::text(&publish.topic)));
            let delivery =
                Delivery::settled_by(from_publish(publish), attempt, Arc::clone(&settle), pkid);
            match topic {
                Some(topic) => delivery.with_topic(topic),
                None => delivery,
            }
        };
        for publish in early {
            let _ = tx.send(deliver(publish));
        }
        tokio::spawn(async move {
            // keeps the client (and so the connection) alive as long as the subscription
            let _client = client;
            // made once: a new one per event would register a waiter per message
            let closed = tx.closed();
            tokio::pin!(closed);
            loop {
                tokio::select! {
                    biased;
                    event = events.poll() => match event {
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            if tx.send(deliver(publish)).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%subscriber, %error, "mqtt subscription connection lost");
                            return;
                        }
                    },
                    () = &mut closed => return,
                }
            }
        });
        Ok(tokio_stream_of(rx))
    }
}

fn tokio_stream_of(mut rx: mpsc::UnboundedReceiver<Delivery>) -> Subscription {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// A publish's wait for its PUBACK.
type Confirmed = oneshot::Receiver<Result<(), String>>;

/// A publish refused by a full request queue (or come while others wait for room in
/// it): it waits for room on a task of its own ([`queue_slowly`]).
struct Slow {
    done: Confirm,
    topic: String,
    payload: Bytes,
    properties: PublishProperties,
}

/// Hands a publish to the connection's request queue without waiting: the wait for its
/// PUBACK, and the request if it must take the slow path first.
fn hand(
    link: &PublishLink,
    topic: String,
    message: Message,
) -> Result<(Confirmed, Option<Slow>), BackendError> {
    let (done, confirmed) = oneshot::channel();
    let properties = to_properties(&message);
    let payload = message.payload;
    // Fast path: the request and its waiter queued together, under the waiters' lock
    // (never held across an await), when the request queue has room and nobody is
    // waiting for room.
    let mut waiting = link.confirms.lock();
    let slow = if waiting.slow > 0 {
        Slow {
            done,
            topic,
            payload,
            properties,
        }
    } else {
        match link.client.try_publish_with_properties(
            topic,
            QoS::AtLeastOnce,
            false,
            payload,
            properties,
        ) {
            // (the event loop names its packet id under this lock, so the waiter joins
            // before it can be looked for)
            Ok(()) => {
                waiting.queued.push_back(done);
                return Ok((confirmed, None));
            }
            // (a full queue, a closed one or a topic the client refuses: the slow path
            // says which)
            Err(rumqttc::v5::ClientError::TryRequest(Request::Publish(publish))) => Slow {
                done,
                topic: super::text(&publish.topic).into_owned(),
                payload: publish.payload,
                properties: publish.properties.unwrap_or_default(),
            },
            Err(error) => return Err(operation_error(KIND, "publish", error)),
        }
    };
    waiting.slow += 1;
    Ok((confirmed, Some(slow)))
}

/// Queues a publish [`hand`] could not, once the client's request queue has room.
async fn queue_slowly(link: Arc<PublishLink>, request: Slow) -> Result<(), BackendError> {
    let Slow {
        done,
        topic,
        payload,
        properties,
    } = request;
    // On a task of its own: once its request may be in the client's queue its waiter
    // must stay there, whether or not this caller still waits (a cancelled send could
    // otherwise take back a waiter whose request goes out, and every later PUBACK would
    // complete the wrong publish).
    let queued = tokio::spawn(async move {
        let _leaving = SlowPublish {
            confirms: &link.confirms,
        };
        let _order = link.order.lock().await;
        link.confirms.lock().queued.push_back(done);
        let queued = link
            .client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
            .await;
        if queued.is_err() {
            // refused: its request never reached the client (the last waiter queued is
            // this one: the others wait for the order)
            let _ = link.confirms.lock().queued.pop_back();
        }
        queued
    })
    .await;
    match queued {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(operation_error(KIND, "publish", error)),
        // (the runtime shutting down under it)
        Err(error) => Err(operation_error(KIND, "publish", error)),
    }
}

/// Waits for a handed publish's PUBACK.
async fn confirmation(confirmed: Confirmed) -> Result<(), BackendError> {
    match confirmed.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(operation_error(KIND, "publish", reason)),
        Err(_) => Err(operation_error(KIND, "publish", "the connection closed")),
    }
}

/// The rest of a publish once [`hand`] has it: room in the request queue if it needs
/// that, then the PUBACK.
async fn handed(
    link: Arc<PublishLink>,
    (confirmed, slow): (Confirmed, Option<Slow>),
) -> Result<(), BackendError> {
    if let Some(slow) = slow {
        queue_slowly(link, slow).await?;
    }
    confirmation(confirmed).await
}

impl MqttBackend {
    /// Publishes to the MQTT topic `topic` at QoS 1; completes after the broker's PUBACK.
    /// On a live connection the request is queued at once and only the wait for the
    /// PUBACK is boxed: 24 bytes, where a future holding the connecting path as well is
    /// ~4 KB, allocated, moved and freed for every publish.
    fn send(&self, topic: String, message: Message) -> Publish<'_> {
        let Some(link) = self.inner.live_publisher() else {
            return Publish::boxed(async move {
                let link = self.inner.publisher().await?;
                let handing = hand(&link, topic, message)?;
                handed(link, handing).await
            });
        };
        match hand(&link, topic, message) {
            Ok((confirmed, None)) => Publish::boxed(confirmation(confirmed)),
            Ok(handing) => Publish::boxed(handed(link, handing)),
            Err(error) => Publish::ready(Err(error)),
        }
    }
}

impl Backend for MqttBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: true,
            persistence: false,
            ordering: true,
            at_least_once: self.inner.settings.client_id.is_some(),
            native_redelivery: false,
            headers: true,
            keys: true,
        }
    }

    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> Publish<'a> {
        self.send(mqtt_name(topic).into_owned(), message)
    }

    fn reply<'a>(&'a self, address: &'a str, message: Message) -> Publish<'a> {
        // a response topic is an MQTT topic already
        self.send(address.to_string(), message)
    }

    fn subscribe<'a>(
        &'a self,
        spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>> {
        self.start(spec).boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        async move {
            let link = self
                .inner
                .publisher
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(link) = link {
                let _ = link.client.disconnect().await;
            }
            Ok(())
        }
        .boxed()
    }

    fn validate_topic(&self, topic: &str) -> Result<(), BackendError> {
        let invalid = |reason: &str| BackendError::InvalidTopic {
            backend: KIND,
            topic: topic.to_string(),
            reason: reason.to_string(),
        };
        if topic.starts_with('$') {
            return Err(invalid(
                "begins with `$`: such topics are the broker's own (`$SYS`, `$share`)",
            ));
        }
        if !topic.contains('/') {
            // a dotted name: the portable rule, `.` becomes MQTT's level separator
            return super::check_topic(KIND, topic);
        }
        // an MQTT topic name as it is (a foreign topic tree: `/hfp/v2/journey/...`)
        if topic.len() > mqtt_filter::MAX_FILTER_BYTES {
            return Err(invalid(
                "is longer than an MQTT topic may be (65,535 bytes)",
            ));
        }
        if topic.contains(['+', '#']) {
            return Err(invalid(
                "holds `+` or `#`: wildcards belong in a subscriber's `mqtt_filter`, not in a topic one publishes to",
            ));
        }
        if topic.chars().any(char::is_control) {
            return Err(invalid("contains a control character"));
        }
        Ok(())
    }

    fn validate_filter(&self, filter: &str) -> Result<(), BackendError> {
        mqtt_filter::check_filter(KIND, filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".to_string(), 1884, None)
        );
        assert_eq!(
            parse_url("mqtt://u:p@broker").unwrap(),
            ("broker".to_string(), 1883, Some(("u".into(), "p".into())))
        );
        assert!(parse_url("mqtts://broker").is_err());
        assert!(parse_url("mqtt://broker:port").is_err());
    }

    #[test]
    fn properties_round_trip() {
        let mut message = Message::new(&b"{}"[..])
            .with_header("trace-id", "t-1")
            .with_header(CORRELATION_ID, "c-1")
            .with_key("k-1");
        message
            .headers
            .insert_static(CONTENT_TYPE, "application/json");
        message.id = Some("m-1".into());
        message.reply_to = Some("replies/here".into());
        let mut publish = MqttPublish::new("a/b", QoS::AtLeastOnce, message.payload.clone(), None);
        publish.properties = Some(to_properties(&message));
        let back = from_publish(publish);
        assert_eq!(back.headers.get("trace-id"), Some("t-1"));
        assert_eq!(back.headers.get(CORRELATION_ID), Some("c-1"));
        assert_eq!(back.headers.get(CONTENT_TYPE), Some("application/json"));
        assert_eq!(back.key.as_deref(), Some("k-1"));
        assert_eq!(back.id.as_deref(), Some("m-1"));
        assert_eq!(back.reply_to.as_deref(), Some("replies/here"));
    }
}
