//! NSQ, through a client of our own (no maintained Rust NSQ client exists, and the TCP
//! protocol is small): `protocol.rs` is the frame codec, this file the backend.
//!
//! - A topic is an NSQ topic; a group is a channel (no group: an ephemeral channel per
//!   subscriber, `<unique>#ephemeral`). Names hold only ASCII letters, digits, `.`, `_`,
//!   `-`, at most 64 (checked at startup and on publish).
//! - A subscription is a connection of its own: `IDENTIFY` (client id, hostname,
//!   heartbeats, `msg_timeout`, user agent), `SUB`, then `RDY` = `prefetch`. Heartbeats
//!   are answered with `NOP`. A handled (or dead-lettered) message is `FIN`ished; a retry
//!   is `REQ` with the policy's delay (nsqd redelivers it, counting `attempts`, which is
//!   the context's attempt number); messages in progress for half of `msg_timeout` are
//!   `TOUCH`ed. When the subscription ends, `CLS` stops deliveries and what was delivered
//!   and not begun goes back with `REQ`.
//! - Publish: one connection, `PUB` (`DPUB` for a deferred message, `MPUB` for a
//!   batch), returning after nsqd's `OK`.
//! - NSQ messages are bodies only: headers and keys are not carried (a foreign
//!   producer's raw body is the payload as it is).
//! - Recovery: a lost connection ends its subscription (the dispatcher subscribes again,
//!   with backoff); the publishing connection is made again on the next publish.

pub mod protocol;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use self::protocol::{Command, Frame, FrameDecoder, MAGIC};
use super::{
    Backend, Capabilities, Delivery, Publish, Settle, Subscription, SubscriptionSpec,
    operation_error,
};
use crate::config::BrokerConfig;
use crate::error::BackendError;
use crate::message::Message;

const KIND: &str = "nsq";
const DEFAULT_URL: &str = "nsq://127.0.0.1:4150";
/// How long nsqd waits for a `FIN` before it delivers a message again.
const MSG_TIMEOUT: Duration = Duration::from_secs(60);
/// How often nsqd sends a heartbeat on a subscription's connection.
const HEARTBEAT: Duration = Duration::from_secs(30);
/// `max_rdy_count` of an nsqd that does not say (nsqd's default).
const DEFAULT_MAX_RDY: u64 = 2500;
/// How often a subscription makes the connections it lacks (the first wait after a
/// failed try; doubled on each further failure, up to `RECONNECT_MAX`).
const RECONNECT: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// How long a closing subscription keeps reading after `CLOSE_WAIT` once nothing comes.
const LINGER: Duration = Duration::from_millis(300);
/// How long a subscription waits for `CLOSE_WAIT` after `CLS`.
const CLOSE_WAIT_LIMIT: Duration = Duration::from_secs(5);

/// An NSQ connection for publishing; subscriptions open their own.
pub struct NsqBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// nsqd TCP addresses from the URL (`nsq://a:4150,b:4150`).
    addresses: Vec<String>,
    /// nsqlookupd HTTP addresses (`[broker.nsq] lookupd`).
    lookupd: Vec<String>,
    lookupd_poll_interval: Duration,
    connect_timeout: Duration,
    max_frame: usize,
    publisher: tokio::sync::Mutex<Option<Connection>>,
}

/// `nsq://host:port[,host:port...]` (nsqd TCP addresses) as `host:port`s.
fn tcp_addresses(url: &str) -> Result<Vec<String>, String> {
    let list = url
        .strip_prefix("nsq://")
        .unwrap_or(url)
        .trim_end_matches('/');
    list.split(',').map(host_port).collect()
}

/// `host:port`, or why it is not one.
fn host_port(address: &str) -> Result<String, String> {
    let expected = || format!("`{address}`: expected `host:port` (nsqd's TCP address)");
    let (host, port) = address.rsplit_once(':').ok_or_else(expected)?;
    if host.is_empty() || port.parse::<u16>().is_err() || address.contains(['@', '/', ' ']) {
        return Err(expected());
    }
    Ok(address.to_string())
}

/// What nsqlookupd's `/lookup` answers: the nsqds that have the topic.
#[derive(serde::Deserialize)]
struct Lookup {
    #[serde(default)]
    producers: Vec<Producer>,
    /// nsqlookupd before 1.0 wrapped the answer
    data: Option<Box<Lookup>>,
}

#[derive(serde::Deserialize)]
struct Producer {
    broadcast_address: String,
    tcp_port: u16,
}

/// Asks the nsqlookupd at `lookupd` (`host:port` or `http://host:port`) which nsqds have
/// `topic`: their TCP addresses.
async fn lookup(lookupd: &str, topic: &str, timeout: Duration) -> Result<Vec<String>, String> {
    let host = lookupd
        .strip_prefix("http://")
        .unwrap_or(lookupd)
        .trim_end_matches('/');
    let exchange = async {
        let mut stream = TcpStream::connect(host).await.map_err(|e| e.to_string())?;
        let request = format!("GET /lookup?topic={topic} HTTP/1.0\r\nHost: {host}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        // a lookup answer is small; a hostile server is cut off at 1 MiB
        (&mut stream)
            .take(1 << 20)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not an HTTP answer".to_string())?;
    if head.contains(" 404 ") {
        // no nsqd has the topic yet
        return Ok(Vec::new());
    }
    let mut lookup: Lookup = serde_json::from_str(body).map_err(|e| e.to_string())?;
    if let Some(data) = lookup.data.take() {
        lookup = *data;
    }
    Ok(lookup
        .producers
        .into_iter()
        .map(|p| format!("{}:{}", p.broadcast_address, p.tcp_port))
        .collect())
}

/// One TCP connection to nsqd, before it is split for a subscription.
struct Connection {
    read: OwnedReadHalf,
    write: OwnedWriteHalf,
    buffer: BytesMut,
    decoder: FrameDecoder,
    /// The largest `RDY` nsqd takes on it (negotiated by `IDENTIFY`).
    max_rdy: u64,
}

/// What nsqd answers to `IDENTIFY` with `feature_negotiation` (the settings it took).
#[derive(serde::Deserialize)]
struct Negotiated {
    max_rdy_count: Option<u64>,
    max_msg_size: Option<u64>,
}

impl Connection {
    /// Connects, sends the magic and `IDENTIFY`, and reads its answer.
    async fn open(
        address: &str,
        identify: serde_json::Value,
        timeout: Duration,
        max_frame: usize,
    ) -> Result<Self, BackendError> {
        let connect_error = |reason: String| BackendError::Connect {
            backend: KIND,
            url: format!("nsq://{address}"),
            reason,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| connect_error(format!("no connection within {timeout:?}")))?
            .map_err(|e| connect_error(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let mut connection = Connection {
            read,
            write,
            buffer: BytesMut::with_capacity(64 * 1024),
            decoder: FrameDecoder { limit: max_frame },
            max_rdy: DEFAULT_MAX_RDY,
        };
        let body = serde_json::to_vec(&identify).map_err(|e| connect_error(e.to_string()))?;
        let mut out = BytesMut::new();
        out.extend_from_slice(MAGIC);
        Command::Identify(&body).encode(&mut out);
        let answer = tokio::time::timeout(timeout, connection.send_and_confirm(&out))
            .await
            .map_err(|_| connect_error(format!("no IDENTIFY answer within {timeout:?}")))?
            .map_err(|e| connect_error(e.to_string()))?;
        // `OK` from an nsqd that negotiates nothing; else the settings it took
        if let Ok(negotiated) = serde_json::from_slice::<Negotiated>(&answer) {
            connection.max_rdy = negotiated.max_rdy_count.unwrap_or(DEFAULT_MAX_RDY).max(1);
            if let Some(size) = negotiated.max_msg_size {
                // a frame holds the message's header and body
                let limit = usize::try_from(size)
                    .unwrap_or(usize::MAX)
                    .saturating_add(64);
                connection.decoder.limit = connection.decoder.limit.min(limit).max(64);
            }
        }
        Ok(connection)
    }

    async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        loop {
            if let Some(frame) = self
                .decoder
                .decode(&mut self.buffer)
                .map_err(|e| operation_error(KIND, "read", e))?
            {
                return Ok(frame);
            }
            let read = self
                .read
                .read_buf(&mut self.buffer)
                .await
                .map_err(|e| operation_error(KIND, "read", e))?;
            if read == 0 {
                return Err(operation_error(KIND, "read", "nsqd closed the connection"));
            }
        }
    }

    /// Writes `bytes` (one command) and waits for its answer: `OK` or a response body
    /// (IDENTIFY's), or the error nsqd gives. Heartbeats meanwhile are answered.
    async fn send_and_confirm(&mut self, bytes: &[u8]) -> Result<bytes::Bytes, BackendError> {
        self.write
            .write_all(bytes)
            .await
            .map_err(|e| operation_error(KIND, "write", e))?;
        loop {
            match self.read_frame().await? {
                Frame::Response(body) if body == protocol::HEARTBEAT => {
                    let mut out = BytesMut::new();
                    Command::Nop.encode(&mut out);
                    self.write
                        .write_all(&out)
                        .await
                        .map_err(|e| operation_error(KIND, "write", e))?;
                }
                Frame::Response(body) => return Ok(body),
                Frame::Error(error) => {
                    return Err(operation_error(
                        KIND,
                        "command",
                        String::from_utf8_lossy(&error),
                    ));
                }
                Frame::Message(_) => {}
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn identify(client_id: &str, heartbeat: Option<Duration>) -> serde_json::Value {
    serde_json::json!({
        "client_id": client_id,
        "hostname": hostname(),
        "feature_negotiation": true,
        "heartbeat_interval": heartbeat.map_or(-1, |h| i64::try_from(h.as_millis()).unwrap_or(i64::MAX)),
        "msg_timeout": MSG_TIMEOUT.as_millis() as u64,
        "user_agent": concat!("transport/", env!("CARGO_PKG_VERSION")),
    })
}

/// A number no other connection of this process has.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl NsqBackend {
    /// Checks the URL and connects the publishing connection (within
    /// `broker.connect_timeout`).
    pub async fn connect(config: &BrokerConfig) -> Result<Self, BackendError> {
        let url = config.url.as_deref().unwrap_or(DEFAULT_URL);
        let addresses = tcp_addresses(url).map_err(|reason| BackendError::Connect {
            backend: KIND,
            url: crate::redact::redact_url(url),
            reason,
        })?;
        let settings = &config.nsq;
        let inner = Arc::new(Inner {
            addresses,
            lookupd: settings.lookupd.clone(),
            lookupd_poll_interval: settings.lookupd_poll_interval,
            connect_timeout: config.connect_timeout,
            // nsqd's default `--max-msg-size` is 1 MiB; a frame adds its headers
            max_frame: config.max_message_bytes.saturating_add(64),
            publisher: tokio::sync::Mutex::new(None),
        });
        let connection = inner.open_publisher().await?;
        *inner.publisher.lock().await = Some(connection);
        Ok(NsqBackend { inner })
    }
}

impl Inner {
    /// A publishing connection to the first configured nsqd that answers.
    async fn open_publisher(&self) -> Result<Connection, BackendError> {
        let id = format!("transport-{}-publisher-{}", std::process::id(), unique());
        let mut failure = None;
        for address in &self.addresses {
            // heartbeats off: an idle publishing connection is not read between publishes
            match Connection::open(
                address,
                identify(&id, None),
                self.connect_timeout,
                self.max_frame,
            )
            .await
            {
                Ok(connection) => return Ok(connection),
                Err(error) => failure = Some(error),
            }
        }
        Err(failure.unwrap_or_else(|| operation_error(KIND, "publish", "no nsqd address")))
    }

    /// The nsqds a subscription to `topic` reads from: the configured ones, and those
    /// nsqlookupd names (a lookupd that does not answer is logged and skipped).
    async fn discover(&self, topic: &str) -> Vec<String> {
        let mut addresses = if self.lookupd.is_empty() {
            self.addresses.clone()
        } else {
            Vec::new()
        };
        for lookupd in &self.lookupd {
            match lookup(lookupd, topic, self.connect_timeout).await {
                Ok(found) => addresses.extend(found),
                Err(error) => tracing::warn!(%lookupd, topic, %error, "nsqlookupd lookup failed"),
            }
        }
        addresses.sort();
        addresses.dedup();
        addresses
    }

    /// Sends one publishing command and waits for `OK`; a broken connection is made
    /// again and the command sent once more.
    async fn publish(&self, command: Command<'_>) -> Result<(), BackendError> {
        let mut out = BytesMut::new();
        command.encode(&mut out);
        let mut publisher = self.publisher.lock().await;
        for attempt in 0..2 {
            if publisher.is_none() {
                *publisher = Some(self.open_publisher().await?);
            }
            let Some(connection) = publisher.as_mut() else {
                continue;
            };
            match connection.send_and_confirm(&out).await {
                Ok(_) => return Ok(()),
                Err(BackendError::Operation {
                    operation: "command",
                    reason,
                    ..
                }) => {
                    // nsqd refused it (E_BAD_MESSAGE...): the connection is fine
                    return Err(operation_error(KIND, "publish", reason));
                }
                Err(error) => {
                    *publisher = None;
                    if attempt == 1 {
                        return Err(operation_error(KIND, "publish", error));
                    }
                }
            }
        }
        Err(operation_error(KIND, "publish", "no connection"))
    }
}

/// What a subscription's writer sends.
enum Out {
    Rdy(u64),
    Fin(u64),
    Req(u64, Duration),
    Touch(u64),
    Nop,
    Cls,
}

fn message_id(token: u64) -> protocol::MessageId {
    let mut id = [0u8; protocol::ID_LEN];
    let text = format!("{token:016x}");
    id.copy_from_slice(text.as_bytes());
    id
}

/// Writes a subscription's commands; ends when every sender (the reader and the
/// settle handle) is gone.
async fn writer(mut write: OwnedWriteHalf, mut commands: mpsc::UnboundedReceiver<Out>) {
    let mut out = BytesMut::new();
    let mut batch = Vec::new();
    while commands.recv_many(&mut batch, 256).await > 0 {
        for command in batch.drain(..) {
            match command {
                Out::Rdy(count) => Command::Rdy(count).encode(&mut out),
                Out::Fin(token) => Command::Fin(&message_id(token)).encode(&mut out),
                Out::Req(token, delay) => Command::Req {
                    id: &message_id(token),
                    timeout_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                }
                .encode(&mut out),
                Out::Touch(token) => Command::Touch(&message_id(token)).encode(&mut out),
                Out::Nop => Command::Nop.encode(&mut out),
                Out::Cls => Command::Cls.encode(&mut out),
            }
        }
        if let Err(error) = write.write_all(&out).await {
            tracing::debug!(%error, "nsq connection gone: unsettled messages come back");
            return;
        }
        out.clear();
    }
}

/// Settles a subscription's deliveries (tokens are message ids) and knows which are in
/// progress, to `TOUCH` them.
struct Settler {
    commands: mpsc::UnboundedSender<Out>,
    open: Mutex<HashMap<u64, Instant>>,
}

impl Settler {
    fn settle(&self, token: u64, command: Out) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&token);
        let _ = self.commands.send(command);
    }
}

impl Settle for Settler {
    fn ack(&self, token: u64) {
        self.settle(token, Out::Fin(token));
    }

    fn nack(&self, token: u64, delay: Duration, _message: &Arc<Message>, _attempt: u32) {
        self.settle(token, Out::Req(token, delay));
    }

    fn dropped(&self, token: u64, _message: &Arc<Message>, _attempt: u32) {
        self.settle(token, Out::Req(token, Duration::ZERO));
    }
}

/// One subscription: its connections (one per nsqd that has the topic), all feeding one
/// stream of deliveries.
struct Consumer {
    inner: Arc<Inner>,
    topic: String,
    channel: String,
    prefetch: usize,
    subscriber: String,
    deliveries: mpsc::UnboundedSender<Delivery>,
    /// Each live connection's command queue and largest `RDY`, by nsqd address.
    connections: Mutex<HashMap<String, (mpsc::UnboundedSender<Out>, u64)>>,
}

impl Consumer {
    fn connected(&self) -> Vec<String> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    /// Shares `prefetch` out as each connection's `RDY` (at least 1 each).
    fn share_rdy(&self) {
        let connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let each = u64::try_from(self.prefetch / connections.len().max(1)).unwrap_or(u64::MAX);
        for (commands, max_rdy) in connections.values() {
            let _ = commands.send(Out::Rdy(each.clamp(1, *max_rdy)));
        }
    }

    /// Connects to the nsqd at `address`, subscribes, and starts its reader.
    async fn connect(self: &Arc<Self>, address: &str) -> Result<(), BackendError> {
        let inner = &self.inner;
        let client_id = format!("transport-{}-{}", std::process::id(), unique());
        let mut connection = Connection::open(
            address,
            identify(&client_id, Some(HEARTBEAT)),
            inner.connect_timeout,
            inner.max_frame,
        )
        .await?;
        let mut out = BytesMut::new();
        Command::Sub {
            topic: &self.topic,
            channel: &self.channel,
        }
        .encode(&mut out);
        connection
            .send_and_confirm(&out)
            .await
            .map_err(|e| operation_error(KIND, "subscribe", format!("`{}`: {e}", self.topic)))?;
        let Connection {
            read,
            write,
            buffer,
            decoder,
            max_rdy,
        } = connection;
        let (commands, outgoing) = mpsc::unbounded_channel();
        tokio::spawn(writer(write, outgoing));
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(address.to_string(), (commands.clone(), max_rdy));
        let this = Arc::clone(self);
        let address = address.to_string();
        tokio::spawn(async move {
            this.read(read, buffer, decoder, commands).await;
            this.connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&address);
        });
        Ok(())
    }

    /// Reads one connection's frames until it closes, or until the subscription ends
    /// and nsqd has stopped sending.
    async fn read(
        &self,
        mut read: OwnedReadHalf,
        mut buffer: BytesMut,
        decoder: FrameDecoder,
        commands: mpsc::UnboundedSender<Out>,
    ) {
        let tx = &self.deliveries;
        let subscriber = &self.subscriber;
        let settler = Arc::new(Settler {
            commands: commands.clone(),
            open: Mutex::new(HashMap::new()),
        });
        let settle: Arc<dyn Settle> = Arc::clone(&settler) as Arc<dyn Settle>;
        let mut touch = tokio::time::interval(MSG_TIMEOUT / 4);
        // Once the subscription ends: `CLS`, then reading on until `deadline`, at most
        // `CLOSE_WAIT_LIMIT` for `CLOSE_WAIT`, then until the connection has been quiet
        // for `LINGER` (messages nsqd had already sent may still come: they are handed
        // back, since nsqd hands back a message lost with a connection only at its
        // `msg_timeout`).
        let mut closing = false;
        let mut close_waited = false;
        let deadline = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(deadline);
        loop {
            let frame = loop {
                match decoder.decode(&mut buffer) {
                    Ok(Some(frame)) => break Some(Ok(frame)),
                    Ok(None) => {}
                    Err(error) => break Some(Err(operation_error(KIND, "read", error))),
                }
                tokio::select! {
                    () = tx.closed(), if !closing => {
                        // the subscription ended: no more deliveries
                        let _ = commands.send(Out::Cls);
                        closing = true;
                        deadline.as_mut().reset(tokio::time::Instant::now() + CLOSE_WAIT_LIMIT);
                    }
                    () = &mut deadline, if closing => break None,
                    _ = touch.tick() => {
                        let now = Instant::now();
                        let open = settler.open.lock().unwrap_or_else(PoisonError::into_inner);
                        for (token, since) in open.iter() {
                            if now.duration_since(*since) >= MSG_TIMEOUT / 2 {
                                let _ = commands.send(Out::Touch(*token));
                            }
                        }
                    }
                    read = read.read_buf(&mut buffer) => match read {
                        Ok(0) => break Some(Err(operation_error(KIND, "read", "nsqd closed the connection"))),
                        Ok(_) => {}
                        Err(error) => break Some(Err(operation_error(KIND, "read", error))),
                    },
                }
            };
            match frame {
                None => return,
                Some(Err(error)) => {
                    if !closing {
                        tracing::warn!(%subscriber, %error, "nsq subscription connection lost");
                    }
                    return;
                }
                Some(Ok(Frame::Response(body))) => {
                    if body == protocol::HEARTBEAT {
                        let _ = commands.send(Out::Nop);
                    } else if body == protocol::CLOSE_WAIT {
                        close_waited = true;
                        deadline
                            .as_mut()
                            .reset(tokio::time::Instant::now() + LINGER);
                    }
                }
                Some(Ok(Frame::Error(error))) => {
                    tracing::warn!(%subscriber, error = %String::from_utf8_lossy(&error), "nsqd error");
                }
                Some(Ok(Frame::Message(message))) => {
                    let Some(token) = std::str::from_utf8(&message.id)
                        .ok()
                        .and_then(|id| u64::from_str_radix(id, 16).ok())
                    else {
                        tracing::warn!(%subscriber, "nsq message id is not hex: left to time out");
                        continue;
                    };
                    if closing {
                        // sent before nsqd saw `CLS`: back at once
                        let _ = commands.send(Out::Req(token, Duration::ZERO));
                        if close_waited {
                            deadline
                                .as_mut()
                                .reset(tokio::time::Instant::now() + LINGER);
                        }
                        continue;
                    }
                    settler
                        .open
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(token, Instant::now());
                    let mut ours = Message::new(message.body);
                    ours.id = std::str::from_utf8(&message.id).ok().map(Into::into);
                    let delivery = Delivery::settled_by(
                        ours,
                        u32::from(message.attempts),
                        Arc::clone(&settle),
                        token,
                    );
                    // a closed receiver hands the delivery back on drop
                    let _ = tx.send(delivery);
                }
            }
        }
    }

    /// Keeps the subscription connected until it ends: connects to the nsqds it is not
    /// connected to (the configured ones, and those nsqlookupd names for the topic, asked
    /// every `lookupd_poll_interval`), and shares `RDY` out again when that changes.
    async fn maintain(self: Arc<Self>) {
        let mut lookup_at = Instant::now() + self.inner.lookupd_poll_interval;
        let mut known: Vec<String> = Vec::new();
        // per nsqd that would not connect: the wait before the next try, and when
        let mut backoff: HashMap<String, (Duration, Instant)> = HashMap::new();
        let mut shared_among = self.connected().len();
        loop {
            tokio::select! {
                () = self.deliveries.closed() => return,
                () = tokio::time::sleep(RECONNECT) => {}
            }
            if Instant::now() >= lookup_at || known.is_empty() {
                known = self.inner.discover(&self.topic).await;
                lookup_at = Instant::now() + self.inner.lookupd_poll_interval;
            }
            let connected = self.connected();
            let mut made = false;
            for address in known.iter().filter(|a| !connected.contains(a)) {
                if backoff
                    .get(address)
                    .is_some_and(|(_, next)| Instant::now() < *next)
                {
                    continue;
                }
                match self.connect(address).await {
                    Ok(()) => {
                        tracing::info!(subscriber = %self.subscriber, %address, "nsq connection made");
                        backoff.remove(address);
                        made = true;
                    }
                    Err(error) => {
                        let wait = backoff
                            .get(address)
                            .map_or(RECONNECT, |(wait, _)| (*wait * 2).min(RECONNECT_MAX));
                        tracing::debug!(subscriber = %self.subscriber, %address, %error, retry_in = ?wait, "nsq connection not made");
                        backoff.insert(address.clone(), (wait, Instant::now() + wait));
                    }
                }
            }
            // a connection made (it has no `RDY` yet) or lost: `prefetch` is shared out
            // again
            let now_among = self.connected().len();
            if made || now_among != shared_among {
                self.share_rdy();
                shared_among = now_among;
            }
        }
    }
}

impl NsqBackend {
    async fn start(&self, spec: &SubscriptionSpec) -> Result<Subscription, BackendError> {
        let inner = &self.inner;
        let channel = match &spec.group {
            Some(group) => group.clone(),
            None => format!("t{}-{}#ephemeral", std::process::id(), unique()),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let consumer = Arc::new(Consumer {
            inner: Arc::clone(inner),
            topic: spec.topic.clone(),
            channel,
            prefetch: spec.prefetch.max(1),
            subscriber: spec.subscriber.clone(),
            deliveries: tx,
            connections: Mutex::new(HashMap::new()),
        });
        let mut failure = None;
        for address in inner.discover(&spec.topic).await {
            if let Err(error) = consumer.connect(&address).await {
                failure.get_or_insert(error);
            }
        }
        if consumer.connected().is_empty()
            && let Some(error) = failure
        {
            return Err(error);
        }
        // (no nsqd has the topic yet, as nsqlookupd says: connections come when one has)
        consumer.share_rdy();
        tokio::spawn(Arc::clone(&consumer).maintain());
        Ok(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|delivery| (delivery, rx))
        })
        .boxed())
    }
}

impl Backend for NsqBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: true,
            persistence: true,
            ordering: false,
            at_least_once: true,
            native_redelivery: true,
            headers: false,
            keys: false,
        }
    }

    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> Publish<'a> {
        Publish::boxed(async move {
            self.inner
                .publish(Command::Pub {
                    topic,
                    body: &message.payload,
                })
                .await
        })
    }

    fn publish_deferred<'a>(
        &'a self,
        topic: &'a str,
        message: Message,
        delay: Duration,
    ) -> Publish<'a> {
        Publish::boxed(async move {
            self.inner
                .publish(Command::Dpub {
                    topic,
                    defer_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    body: &message.payload,
                })
                .await
        })
    }

    fn publish_batch<'a>(&'a self, topic: &'a str, messages: Vec<Message>) -> Publish<'a> {
        Publish::boxed(async move {
            if messages.is_empty() {
                return Ok(());
            }
            let bodies: Vec<bytes::Bytes> = messages.into_iter().map(|m| m.payload).collect();
            self.inner
                .publish(Command::Mpub {
                    topic,
                    bodies: &bodies,
                })
                .await
        })
    }

    fn subscribe<'a>(
        &'a self,
        spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>> {
        self.start(spec).boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        async move {
            if let Some(mut connection) = self.inner.publisher.lock().await.take() {
                let _ = connection.write.shutdown().await;
            }
            Ok(())
        }
        .boxed()
    }

    fn validate_topic(&self, topic: &str) -> Result<(), BackendError> {
        super::check_topic(KIND, topic)?;
        match protocol::name_problem(topic) {
            Some(reason) => Err(BackendError::InvalidTopic {
                backend: KIND,
                topic: topic.to_string(),
                reason,
            }),
            None => Ok(()),
        }
    }

    fn max_message_size(&self) -> Option<usize> {
        // nsqd's default `--max-msg-size`
        Some(1024 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_nsqd_tcp_addresses() {
        assert_eq!(
            tcp_addresses("nsq://127.0.0.1:4150").unwrap(),
            ["127.0.0.1:4150"]
        );
        assert_eq!(tcp_addresses("a:1,b:2").unwrap(), ["a:1", "b:2"]);
        for bad in ["nsq://host", "nsq://u:p@h:1", "nsq://h:x", "nsq://a:1,"] {
            assert!(tcp_addresses(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn message_ids_round_trip_through_tokens() {
        let id = *b"0a1b2c3d4e5f6789";
        let token = u64::from_str_radix(std::str::from_utf8(&id).unwrap(), 16).unwrap();
        assert_eq!(message_id(token), id);
    }
}
