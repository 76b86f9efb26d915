//! Redis streams (`kind = "redis-streams"`): a topic is a stream, a group is a consumer
//! group, delivery is at-least-once with `XACK`.
//!
//! Wire format: one stream entry per message. The field `payload` (`broker.redis.
//! payload_field`) holds the encoded body, `key` (`key_field`) the key, every other field
//! is a header (so `redis-cli XADD orders '*' payload '{"id":1}' trace-id t1` reaches a
//! typed subscriber). The entry id is the message id. An entry without a payload field
//! is delivered with an empty payload, fails to decode, and is dead-lettered.
//!
//! Redelivery is the broker's: a failed entry stays pending and is claimed again with
//! `XCLAIM` after the retry delay (the delivery count comes from `XPENDING`); entries a
//! crashed consumer left pending are taken over with `XAUTOCLAIM` once idle for
//! `claim_idle`. While a handler runs, its entry's idle time is refreshed, so slow
//! handlers are not stolen. Acks are batched: one `XACK` for all ids ready at once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{RedisError, Value};
use tokio::sync::{mpsc, oneshot};

use super::redis::{connect_manager, operation_error};
use super::{Acknowledge, Backend, Capabilities, Delivery, Subscription, SubscriptionSpec};
use crate::config::{BrokerConfig, RedisConfig};
use crate::error::BackendError;
use crate::message::{Headers, Message};

const KIND: &str = "redis-streams";
/// How long one blocking read waits before looking again.
const BLOCK: Duration = Duration::from_millis(1000);
/// Most ids acknowledged by one `XACK`.
const ACK_BATCH: usize = 1024;

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
        let (_, commands) = connect_manager(config, KIND, None).await?;
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

/// An entry as a message: payload field, key field, every other field a header.
fn to_message(entry: &StreamId, settings: &RedisConfig) -> Message {
    let mut message = Message {
        id: Some(entry.id.clone()),
        ..Message::default()
    };
    let mut headers = Headers::new();
    let mut fields: Vec<(&String, &Value)> = entry.map.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    for (field, value) in fields {
        let bytes = match value {
            Value::BulkString(bytes) => Bytes::copy_from_slice(bytes),
            Value::SimpleString(text) => Bytes::copy_from_slice(text.as_bytes()),
            Value::Int(n) => Bytes::from(n.to_string()),
            _ => continue,
        };
        if *field == settings.payload_field {
            message.payload = bytes;
        } else if *field == settings.key_field {
            message.key = Some(String::from_utf8_lossy(&bytes).into_owned());
        } else {
            headers.insert(field.as_str(), String::from_utf8_lossy(&bytes));
        }
    }
    message.headers = headers;
    message
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

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        message: Message,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        async move {
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
                command.arg("message-id").arg(id);
            }
            let mut connection = self.commands.clone();
            command
                .query_async::<String>(&mut connection)
                .await
                .map(drop)
                .map_err(|e| operation_error(KIND, "publish", e))
        }
        .boxed()
    }

    fn subscribe<'a>(
        &'a self,
        spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>> {
        async move {
            // Blocking reads get a connection of their own: a BLOCK would stall every
            // other command on a shared one.
            let (_, reader) = connect_manager(&self.config, KIND, None).await?;
            let (tx, mut rx) = mpsc::channel(spec.prefetch.max(1));
            let count = spec.prefetch.clamp(1, 1000);
            match &spec.group {
                None => {
                    let mut connection = self.commands.clone();
                    let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
                        .arg(&spec.topic)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1)
                        .query_async(&mut connection)
                        .await
                        .map_err(|e| operation_error(KIND, "subscribe", e))?;
                    let start = newest
                        .ids
                        .first()
                        .map_or_else(|| "0-0".to_string(), |e| e.id.clone());
                    let fan_out = FanOut {
                        reader,
                        stream: spec.topic.clone(),
                        settings: self.settings().clone(),
                        count,
                    };
                    tokio::spawn(fan_out.run(start, tx));
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
                    let (settle_tx, settle_rx) = mpsc::unbounded_channel();
                    let shared = Arc::new(Shared {
                        stream: spec.topic.clone(),
                        group: group.clone(),
                        consumer: self.consumer.clone(),
                        group_start: start,
                        settings: self.settings().clone(),
                        in_flight: Mutex::new(HashSet::new()),
                        settle: settle_tx.clone(),
                        commands: self.commands.clone(),
                        count,
                    });
                    self.settlers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(settle_tx);
                    tokio::spawn(Arc::clone(&shared).read(reader, tx.clone()));
                    tokio::spawn(shared.settle(self.commands.clone(), settle_rx, tx));
                }
            }
            Ok(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed())
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

/// A subscriber without a group: reads new entries, acknowledges nothing.
struct FanOut {
    reader: ConnectionManager,
    stream: String,
    settings: RedisConfig,
    count: usize,
}

impl FanOut {
    async fn run(mut self, mut last: String, tx: mpsc::Sender<Delivery>) {
        let mut backoff = Duration::from_millis(100);
        while !tx.is_closed() {
            let read: Result<Option<StreamReadReply>, RedisError> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(self.count)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(&last)
                .query_async(&mut self.reader)
                .await;
            match read {
                Ok(reply) => {
                    backoff = Duration::from_millis(100);
                    for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                        last = entry.id.clone();
                        let delivery = Delivery::unacknowledged(to_message(&entry, &self.settings));
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
    Ack(String),
    Retry {
        id: String,
        attempt: u32,
        delay: Duration,
    },
    Release(String),
    Flush(oneshot::Sender<()>),
}

/// State shared by a group subscription's reader and settler.
struct Shared {
    stream: String,
    group: String,
    consumer: String,
    group_start: &'static str,
    settings: RedisConfig,
    /// Entries handed to the runtime and not yet settled (or waiting for a retry).
    in_flight: Mutex<HashSet<String>>,
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

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn delivery(&self, entry: &StreamId, attempt: u32) -> Delivery {
        self.in_flight().insert(entry.id.clone());
        Delivery::new(
            to_message(entry, &self.settings),
            attempt,
            Box::new(StreamAcker {
                id: Some(entry.id.clone()),
                attempt,
                settle: self.settle.clone(),
            }),
        )
    }

    async fn recreate_group(&self, connection: &mut ConnectionManager) {
        tracing::warn!(backend = KIND, stream = %self.stream, group = %self.group, "group missing (server restarted?); creating it again");
        if let Err(error) =
            create_group(connection, &self.stream, &self.group, self.group_start).await
        {
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
            let batch = (tx.max_capacity() / 2).clamp(1, self.count);
            let permits = match tx.reserve_many(batch).await {
                Ok(permits) => permits,
                Err(_) => return,
            };
            let read: Result<Option<StreamReadReply>, RedisError> = redis::cmd("XREADGROUP")
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
                        // Read after the subscription ended: leave the entries pending
                        // (no handler will see them here; they are claimed elsewhere).
                        return;
                    }
                    let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
                    // COUNT = batch, so every entry has its permit.
                    for (permit, entry) in permits.zip(entries) {
                        permit.send(self.delivery(&entry, 1));
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

    /// Acks in batches, claims entries for retries and from dead consumers, keeps this
    /// consumer's in-flight entries fresh.
    async fn settle(
        self: Arc<Self>,
        mut connection: ConnectionManager,
        mut ops: mpsc::UnboundedReceiver<Settle>,
        tx: mpsc::Sender<Delivery>,
    ) {
        let mut tick =
            tokio::time::interval(self.settings.claim_interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut acks: Vec<String> = Vec::new();
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut cursor = "0-0".to_string();
        loop {
            tokio::select! {
                op = ops.recv() => {
                    let Some(op) = op else { return };
                    self.take(op, &mut acks, &mut flushes, &tx);
                    while acks.len() < ACK_BATCH {
                        match ops.try_recv() {
                            Ok(op) => self.take(op, &mut acks, &mut flushes, &tx),
                            Err(_) => break,
                        }
                    }
                    if !acks.is_empty() {
                        self.ack(&mut connection, &mut acks).await;
                    }
                    for flush in flushes.drain(..) {
                        let _ = flush.send(());
                    }
                }
                _ = tick.tick() => {
                    if tx.is_closed() {
                        // The subscription ended: settle what is queued, then stop.
                        while let Ok(op) = ops.try_recv() {
                            self.take(op, &mut acks, &mut flushes, &tx);
                        }
                        self.ack(&mut connection, &mut acks).await;
                        for flush in flushes.drain(..) {
                            let _ = flush.send(());
                        }
                        if ops.is_closed() || self.in_flight().is_empty() {
                            return;
                        }
                        // Handlers still draining keep their entries.
                        self.refresh(&mut connection).await;
                        continue;
                    }
                    self.refresh(&mut connection).await;
                    self.claim_abandoned(&mut connection, &tx, &mut cursor).await;
                }
            }
        }
    }

    fn take(
        self: &Arc<Self>,
        op: Settle,
        acks: &mut Vec<String>,
        flushes: &mut Vec<oneshot::Sender<()>>,
        tx: &mpsc::Sender<Delivery>,
    ) {
        match op {
            Settle::Ack(id) => acks.push(id),
            Settle::Release(id) => {
                self.in_flight().remove(&id);
            }
            Settle::Flush(done) => flushes.push(done),
            Settle::Retry { id, attempt, delay } => {
                let this = Arc::clone(self);
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    this.redeliver(id, attempt, tx).await;
                });
            }
        }
    }

    async fn ack(&self, connection: &mut ConnectionManager, ids: &mut Vec<String>) {
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

    /// Claims one entry back to this consumer after a failed attempt and delivers it
    /// again with the broker's delivery count.
    async fn redeliver(&self, id: String, attempt: u32, tx: mpsc::Sender<Delivery>) {
        let mut connection = self.commands.clone();
        self.claim_and_send(&mut connection, &id, attempt, &tx, true)
            .await;
    }

    /// Resets the idle time of this consumer's in-flight entries, so no other consumer
    /// takes them over while their handlers run.
    async fn refresh(&self, connection: &mut ConnectionManager) {
        let ids: Vec<String> = self.in_flight().iter().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let half_idle = (self.settings.claim_idle / 2).as_millis() as u64;
        let refreshed: Result<Value, RedisError> = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(half_idle)
            .arg(&ids[..])
            .arg("JUSTID")
            .query_async(connection)
            .await;
        if let Err(error) = refreshed {
            tracing::debug!(backend = KIND, %error, "cannot refresh in-flight entries");
        }
    }

    /// Takes over entries that other (crashed) consumers left pending for `claim_idle`.
    async fn claim_abandoned(
        &self,
        connection: &mut ConnectionManager,
        tx: &mpsc::Sender<Delivery>,
        cursor: &mut String,
    ) {
        // Claim only what the subscription has room for: this task must never wait on
        // the handlers (acks and refreshes would stall behind it).
        let room = tx.capacity().min(self.count);
        if room == 0 || self.saturated() {
            return;
        }
        let idle = self.settings.claim_idle.as_millis() as u64;
        let claimed: Result<StreamAutoClaimReply, RedisError> = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(idle)
            .arg(cursor.as_str())
            .arg("COUNT")
            .arg(room)
            .arg("JUSTID")
            .query_async(connection)
            .await;
        let ids = match claimed {
            Ok(reply) => {
                // Go on from where this scan stopped next time (`0-0`: start over).
                *cursor = reply.next_stream_id;
                reply.claimed.into_iter().map(|e| e.id)
            }
            Err(error) => {
                if is_no_group(&error) {
                    self.recreate_group(connection).await;
                } else {
                    tracing::debug!(backend = KIND, %error, "XAUTOCLAIM failed");
                }
                return;
            }
        };
        let fresh: Vec<String> = {
            let in_flight = self.in_flight();
            ids.filter(|id| !in_flight.contains(id)).collect()
        };
        for id in fresh {
            let attempt = self.delivery_count(connection, &id).await.unwrap_or(1) + 1;
            self.claim_and_send(connection, &id, attempt, tx, false)
                .await;
        }
    }

    async fn delivery_count(&self, connection: &mut ConnectionManager, id: &str) -> Option<u32> {
        let pending: Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(id)
            .arg(id)
            .arg(1)
            .query_async(connection)
            .await
            .ok()?;
        // [[id, consumer, idle, deliveries]]
        let Value::Array(rows) = pending else {
            return None;
        };
        let Some(Value::Array(row)) = rows.into_iter().next() else {
            return None;
        };
        match row.get(3) {
            Some(Value::Int(n)) => u32::try_from(*n).ok(),
            _ => None,
        }
    }

    /// `XCLAIM` (min idle 0) returns the entry and counts one more delivery. With `wait`
    /// the delivery waits for room in the subscription; without, a full subscription
    /// leaves the entry pending (it is claimed again later).
    async fn claim_and_send(
        &self,
        connection: &mut ConnectionManager,
        id: &str,
        attempt: u32,
        tx: &mpsc::Sender<Delivery>,
        wait: bool,
    ) {
        let claimed: Result<redis::streams::StreamClaimReply, RedisError> = redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(id)
            .query_async(connection)
            .await;
        match claimed {
            Ok(reply) => match reply.ids.into_iter().next() {
                Some(entry) => {
                    let delivery = self.delivery(&entry, attempt);
                    let sent = if wait {
                        tx.send(delivery).await.is_ok()
                    } else {
                        tx.try_send(delivery).is_ok()
                    };
                    if !sent {
                        // The dropped delivery released its entry: it stays pending and
                        // is claimed again (here or by another consumer).
                        self.in_flight().remove(id);
                    }
                }
                None => {
                    // Trimmed or deleted meanwhile: nothing left to deliver.
                    self.in_flight().remove(id);
                    let _ = redis::cmd("XACK")
                        .arg(&self.stream)
                        .arg(&self.group)
                        .arg(id)
                        .query_async::<i64>(connection)
                        .await;
                }
            },
            Err(error) => {
                tracing::warn!(backend = KIND, %error, id, "XCLAIM failed; the entry stays pending");
                self.in_flight().remove(id);
            }
        }
    }
}

struct StreamAcker {
    id: Option<String>,
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
        // Never finished (cut off at shutdown): leave it pending for another consumer.
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
        let fine = Config::from_toml("[broker.redis]\nclaim_idle = \"1s\"\nclaim_interval = \"200ms\"");
        assert!(fine.is_ok(), "{fine:?}");
        assert!(Config::default().validate().is_ok());
    }
}
