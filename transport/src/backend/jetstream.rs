//! NATS JetStream (`kind = "jetstream"`): a topic is a subject captured by a stream, a
//! group is a durable pull consumer, delivery is at-least-once with ack / nak-with-delay.
//!
//! Streams are bound from `[broker.jetstream] streams` or created per topic
//! (`TRANSPORT_<topic>`). A group's durable consumer starts at the beginning of the stream
//! the first time it is created; a subscriber without a group gets an ephemeral consumer
//! that sees only new messages. The runtime enforces the attempt limit with the server's
//! delivery count, so consumers are created with unlimited `max_deliver` and nothing is
//! ever stranded by the server.
//!
//! Wire format as for NATS core (see `nats.rs`): body = payload, NATS headers, key in
//! `x-transport-key`, id in `Nats-Msg-Id` (which JetStream also deduplicates on).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::nats::{check_payload, connect_client, from_nats, operation_error, to_nats_headers};
use super::{Acknowledge, Backend, Capabilities, Delivery, Subscription, SubscriptionSpec};
use crate::config::{BrokerConfig, JetStreamConfig};
use crate::error::BackendError;
use crate::message::Message;

const KIND: &str = "jetstream";

enum AckOp {
    /// An ack kind for the delivery whose ack subject this is.
    Settle(async_nats::Subject, AckKind),
    Flush(oneshot::Sender<()>),
}

/// The JetStream backend.
pub struct JetStreamBackend {
    client: async_nats::Client,
    context: jetstream::Context,
    settings: JetStreamConfig,
    /// topic -> stream name, for topics whose stream is known to exist.
    streams: Mutex<HashMap<String, String>>,
    acks: mpsc::UnboundedSender<AckOp>,
}

impl JetStreamBackend {
    /// Connects to the server `config.url` names (JetStream must be enabled there).
    pub async fn connect(config: &BrokerConfig) -> Result<Self, BackendError> {
        let client = connect_client(config, KIND).await?;
        let context = jetstream::new(client.clone());
        // Fail at startup, not at the first publish, when JetStream is off.
        check_available(&client)
            .await
            .map_err(|reason| BackendError::Connect {
                backend: KIND,
                url: config
                    .url
                    .clone()
                    .unwrap_or_else(|| super::nats::DEFAULT_URL.into()),
                reason: format!("JetStream is not available: {reason}"),
            })?;
        let (acks, ack_rx) = mpsc::unbounded_channel();
        tokio::spawn(settle_acks(client.clone(), ack_rx));
        Ok(JetStreamBackend {
            client,
            context,
            settings: config.jetstream.clone(),
            streams: Mutex::new(HashMap::new()),
            acks,
        })
    }

    /// The stream capturing `topic`, created if needed.
    async fn stream_for(&self, topic: &str) -> Result<String, BackendError> {
        if let Some(name) = self.streams.lock().await.get(topic) {
            return Ok(name.clone());
        }
        let (name, subjects) = match self.settings.streams.iter().find(|s| {
            s.subjects
                .iter()
                .any(|pattern| subject_matches(pattern, topic))
        }) {
            Some(binding) => (binding.name.clone(), binding.subjects.clone()),
            None => (
                format!("{}{}", self.settings.stream_prefix, sanitize(topic)),
                vec![topic.to_string()],
            ),
        };
        let config = stream::Config {
            name: name.clone(),
            subjects,
            max_age: self.settings.max_age,
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
            .map_err(|e| operation_error("create stream", KIND, format!("stream `{name}`: {e}")))?;
        self.streams
            .lock()
            .await
            .insert(topic.to_string(), name.clone());
        Ok(name)
    }

    fn consumer_config(&self, spec: &SubscriptionSpec) -> consumer::pull::Config {
        let base = consumer::pull::Config {
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            max_deliver: -1,
            filter_subject: spec.topic.clone(),
            max_ack_pending: self.settings.max_ack_pending,
            ..Default::default()
        };
        match &spec.group {
            Some(group) => consumer::pull::Config {
                durable_name: Some(sanitize(&format!("{group}__{}", spec.topic))),
                deliver_policy: consumer::DeliverPolicy::All,
                ..base
            },
            // Named, so that after a pull error the same consumer (and its position) is
            // bound again; the server removes it once nobody pulls for a while.
            None => consumer::pull::Config {
                name: Some(sanitize(&format!(
                    "fanout_{}_{}",
                    spec.subscriber,
                    self.client.new_inbox()
                ))),
                deliver_policy: consumer::DeliverPolicy::New,
                inactive_threshold: Duration::from_secs(60),
                ..base
            },
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

/// Stream and consumer names may not hold `.`, `*`, `>`, whitespace or path separators.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | '*' | '>' | '/' | '\\' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect()
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

/// Sends acks in order, without waiting for the server per message: an ack is a plain
/// publish to the delivery's ack subject.
async fn settle_acks(client: async_nats::Client, mut ops: mpsc::UnboundedReceiver<AckOp>) {
    while let Some(op) = ops.recv().await {
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
}

/// Deliveries handed out and not yet settled (queued for a handler or running), by
/// stream sequence, with their ack subjects.
#[derive(Clone, Default)]
struct Unsettled(Arc<std::sync::Mutex<HashMap<u64, async_nats::Subject>>>);

impl Unsettled {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, async_nats::Subject>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Tells the server, every third of `ack_wait`, that unsettled deliveries are still being
/// worked on (`+WPI`), so a backlog waiting locally or a slow handler is not redelivered
/// elsewhere meanwhile. Ends once the subscription is gone and nothing is left unsettled.
async fn keep_in_progress(
    unsettled: Unsettled,
    acks: mpsc::UnboundedSender<AckOp>,
    ack_wait: Duration,
    subscription: mpsc::Sender<Delivery>,
) {
    let period = (ack_wait / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let subjects: Vec<async_nats::Subject> = unsettled.map().values().cloned().collect();
        if subjects.is_empty() && subscription.is_closed() {
            return;
        }
        for subject in subjects {
            if acks
                .send(AckOp::Settle(subject, AckKind::Progress))
                .is_err()
            {
                return;
            }
        }
    }
}

struct JetStreamAcker {
    subject: Option<async_nats::Subject>,
    sequence: u64,
    unsettled: Unsettled,
    acks: mpsc::UnboundedSender<AckOp>,
}

impl JetStreamAcker {
    fn settle(&mut self, kind: AckKind) {
        if let Some(subject) = self.subject.take() {
            self.unsettled.map().remove(&self.sequence);
            // Closed only after the backend is closed; the server redelivers then.
            let _ = self.acks.send(AckOp::Settle(subject, kind));
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

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        async move {
            check_payload(&self.client, KIND, &message)?;
            self.stream_for(topic).await?;
            let headers = to_nats_headers(&message, KIND)?;
            let ack = self
                .context
                .publish_with_headers(topic.to_string(), headers, message.payload)
                .await
                .map_err(|e| operation_error("publish", KIND, e))?;
            ack.await
                .map(drop)
                .map_err(|e| operation_error("publish", KIND, e))
        }
        .boxed()
    }

    fn subscribe<'a>(
        &'a self,
        spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>> {
        async move {
            let stream_name = self.stream_for(&spec.topic).await?;
            let config = self.consumer_config(spec);
            let stream = self
                .context
                .get_stream(&stream_name)
                .await
                .map_err(|e| operation_error("subscribe", KIND, e))?;
            let consumer = create_consumer(&stream, &config)
                .await
                .map_err(|e| operation_error("subscribe", KIND, e))?;
            let (tx, rx) = mpsc::channel(spec.prefetch.max(1));
            let unsettled = Unsettled::default();
            tokio::spawn(keep_in_progress(
                unsettled.clone(),
                self.acks.clone(),
                self.settings.ack_wait,
                tx.clone(),
            ));
            let pump = Pump {
                context: self.context.clone(),
                stream_name,
                config,
                prefetch: spec.prefetch.max(1),
                acks: self.acks.clone(),
                subscriber: spec.subscriber.clone(),
                unsettled,
                last_sequence: 0,
            };
            tokio::spawn(pump.run(consumer, tx));
            Ok(tokio_stream_from(rx))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        async move {
            let (done, flushed) = oneshot::channel();
            if self.acks.send(AckOp::Flush(done)).is_ok() {
                let _ = flushed.await;
            }
            self.client
                .flush()
                .await
                .map_err(|e| operation_error("flush", KIND, e))
        }
        .boxed()
    }
}

async fn create_consumer(
    stream: &stream::Stream,
    config: &consumer::pull::Config,
) -> Result<consumer::PullConsumer, async_nats::Error> {
    match config.durable_name.as_ref().or(config.name.as_ref()) {
        Some(name) => Ok(stream.get_or_create_consumer(name, config.clone()).await?),
        None => Ok(stream.create_consumer(config.clone()).await?),
    }
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Delivery>) -> Subscription {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Pulls from one consumer into the subscription's channel; recreates the consumer and
/// its pull stream after errors (server restarts, missed heartbeats).
struct Pump {
    context: jetstream::Context,
    stream_name: String,
    config: consumer::pull::Config,
    prefetch: usize,
    acks: mpsc::UnboundedSender<AckOp>,
    subscriber: String,
    unsettled: Unsettled,
    /// The stream sequence of the last message handed out (to resume a lost consumer).
    last_sequence: u64,
}

impl Pump {
    async fn run(mut self, mut consumer: consumer::PullConsumer, tx: mpsc::Sender<Delivery>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match consumer
                .stream()
                .max_messages_per_batch(self.prefetch)
                .heartbeat(Duration::from_secs(2))
                .expires(Duration::from_secs(10))
                .messages()
                .await
            {
                Ok(mut messages) => loop {
                    // Stop pulling the moment the subscription is dropped, so the server
                    // hands what is left to the other members at once.
                    let item = tokio::select! {
                        _ = tx.closed() => return,
                        item = messages.next() => item,
                    };
                    match item {
                        Some(Ok(message)) => {
                            backoff = Duration::from_millis(100);
                            let (attempt, sequence) = message.info().map_or((1, 0), |info| {
                                (
                                    u32::try_from(info.delivered).unwrap_or(u32::MAX),
                                    info.stream_sequence,
                                )
                            });
                            self.last_sequence = self.last_sequence.max(sequence);
                            let jetstream::Message { message, .. } = message;
                            if let Some(subject) = &message.reply {
                                self.unsettled.map().insert(sequence, subject.clone());
                            }
                            let delivery = Delivery::new(
                                from_nats(message.payload, message.headers.as_ref()),
                                attempt,
                                Box::new(JetStreamAcker {
                                    subject: message.reply,
                                    sequence,
                                    unsettled: self.unsettled.clone(),
                                    acks: self.acks.clone(),
                                }),
                            );
                            if tx.send(delivery).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(error)) => {
                            tracing::warn!(backend = KIND, subscriber = %self.subscriber, %error, "pull failed; resubscribing");
                            break;
                        }
                        None => break,
                    }
                },
                Err(error) => {
                    tracing::warn!(backend = KIND, subscriber = %self.subscriber, %error, "cannot pull; retrying");
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            // A group-less consumer the server removed meanwhile resumes after the last
            // message handed out, not at "new messages only".
            if self.config.durable_name.is_none() && self.last_sequence > 0 {
                self.config.deliver_policy = consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: self.last_sequence + 1,
                };
            }
            match self.context.get_stream(&self.stream_name).await {
                Ok(stream) => match create_consumer(&stream, &self.config).await {
                    Ok(fresh) => consumer = fresh,
                    Err(error) => {
                        tracing::warn!(backend = KIND, subscriber = %self.subscriber, %error, "cannot recreate consumer")
                    }
                },
                Err(error) => {
                    tracing::warn!(backend = KIND, subscriber = %self.subscriber, %error, "stream unavailable")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(sanitize("a b>*/"), "a_b___");
    }
}
