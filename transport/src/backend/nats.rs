//! NATS core (`kind = "nats"`), over async-nats: a topic is a subject, a group is a queue
//! group, delivery is at-most-once (core NATS keeps nothing), headers travel natively.
//!
//! Wire format: the body is the payload as encoded by the codec; headers are NATS
//! headers; the key travels in the `x-transport-key` header and the message id in
//! `Nats-Msg-Id`. A plain NATS client publishing a JSON body reaches a typed subscriber.
//!
//! A message that carries a reply subject (a `nats req`, another framework's request)
//! reaches the runtime with it as `Message::reply_to`.
//!
//! async-nats reconnects with backoff and resubscribes by itself; publishes made while
//! disconnected are buffered by the client. Every wait on the network is bounded: connect
//! by `broker.connect_timeout`, a publish by [`PUBLISH_TIMEOUT`], the flush of `close` by
//! [`CLOSE_TIMEOUT`] (a shutdown while the server is down ends, reporting what was not
//! flushed).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};

use super::dropped::Drops;
use super::{
    Backend, Capabilities, Delivery, Publish, Subscription, SubscriptionSpec, operation_error,
};
use crate::config::BrokerConfig;
use crate::error::BackendError;
use crate::message::{Headers, Message};

const KIND: &str = "nats";
/// The header carrying a message's key.
pub const KEY_HEADER: &str = "x-transport-key";
/// The header carrying a message's id (JetStream deduplicates on it).
pub const ID_HEADER: &str = "Nats-Msg-Id";
/// Where NATS listens when `broker.url` is not set.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";
/// How long a publish may wait for room in the client's buffer (while the server is
/// unreachable) or, on JetStream, for the stream's confirmation.
pub const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long `close` waits for what is buffered to reach the server.
pub const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether `name` is a header NATS or JetStream acts on (`Nats-Msg-Id`,
/// `Nats-Expected-Stream`, `Nats-Expected-Last-Sequence`, ...; any `Nats-*` header,
/// compared case-insensitively): never copied into a new message such as a dead letter.
pub fn is_nats_header(name: &str) -> bool {
    name.get(..5)
        .is_some_and(|start| start.eq_ignore_ascii_case("nats-"))
}

/// `url` without its credentials (`nats://user:pass@host` -> `nats://***@host`), for
/// errors and logs.
pub(crate) fn redacted_url(url: &str) -> String {
    crate::redact::redact_url(url)
}

/// Flushes the client's buffer, giving up after [`CLOSE_TIMEOUT`] (the server is down).
pub(crate) async fn bounded_flush(
    client: &async_nats::Client,
    kind: &'static str,
) -> Result<(), BackendError> {
    match tokio::time::timeout(CLOSE_TIMEOUT, client.flush()).await {
        Ok(result) => result.map_err(|e| operation_error(kind, "flush", e)),
        Err(_) => Err(operation_error(
            kind,
            "flush",
            format!(
                "the server did not take the buffered messages within {CLOSE_TIMEOUT:?} (unreachable?)"
            ),
        )),
    }
}

/// Connects a NATS client as `config` says; fails fast when the server is unreachable.
pub(crate) async fn connect_client(
    config: &BrokerConfig,
    kind: &'static str,
) -> Result<(async_nats::Client, Arc<PayloadLimit>), BackendError> {
    let url = config
        .url
        .clone()
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let connect_error = |reason: String| BackendError::Connect {
        backend: kind,
        url: redacted_url(&url),
        reason: reason.replace(url.as_str(), &redacted_url(&url)),
    };
    // Credentials go to the client as options, not inside the server address, so that
    // they never show in the client's own logs (it logs server addresses at debug).
    let (address, credentials) = split_credentials(&url);
    let options = match credentials {
        Some(Credentials::UserPassword(user, password)) => {
            async_nats::ConnectOptions::new().user_and_password(user, password)
        }
        Some(Credentials::Token(token)) => async_nats::ConnectOptions::new().token(token),
        None => async_nats::ConnectOptions::new(),
    };
    // Fail fast at startup when the server is unreachable; once connected, async-nats
    // reconnects (with backoff) and resubscribes by itself, without limit.
    let limit = Arc::new(PayloadLimit::default());
    let connected = Arc::clone(&limit);
    // whether the connection was lost: the next `Connected` is a reconnection
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // what the client dropped for subscribers too slow to take it (NATS core)
    let drops = Arc::new(Mutex::new(Drops::new(kind)));
    let client = options
        .name(format!("transport/{}", std::process::id()))
        .connection_timeout(config.connect_timeout)
        .max_reconnects(None)
        .event_callback(move |event| {
            let connected = Arc::clone(&connected);
            let lost = Arc::clone(&lost);
            let drops = Arc::clone(&drops);
            async move {
                match event {
                    // the client's queue for a subscription (65,536 messages) was full:
                    // one message dropped (at-most-once), an event each (as many as the
                    // client's event queue holds: a lower bound)
                    async_nats::Event::SlowConsumer(subscription) => {
                        let due = drops.lock().unwrap_or_else(PoisonError::into_inner).one();
                        if let Some(due) = due {
                            tracing::warn!(
                                backend = kind,
                                subscription,
                                dropped = due.dropped,
                                dropped_total = due.total,
                                "subscriber too slow: the client's queue for it is full, messages dropped (at-most-once)"
                            );
                        }
                    }
                    async_nats::Event::ServerError(error) => {
                        tracing::warn!(backend = kind, %error, "nats server error");
                    }
                    async_nats::Event::Disconnected => {
                        lost.store(true, Ordering::Release);
                        tracing::warn!(backend = kind, "disconnected; reconnecting")
                    }
                    async_nats::Event::Connected => {
                        if lost.swap(false, Ordering::AcqRel) {
                            crate::metrics::reconnected(kind);
                        }
                        // possibly another server, with another limit
                        connected.stale.store(true, Ordering::Release);
                        tracing::info!(backend = kind, "connected");
                    }
                    other => tracing::debug!(backend = kind, event = %other, "nats event"),
                }
            }
        })
        .connect(address.as_str())
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    Ok((client, limit))
}

/// The server's `max_payload`, read from the client once per connection: reading it costs
/// a copy of everything the server said about itself (`Client::server_info`), too much
/// for every publish.
pub(crate) struct PayloadLimit {
    limit: AtomicUsize,
    /// Set by each (re)connection: the limit is read again at the next publish.
    stale: AtomicBool,
}

impl Default for PayloadLimit {
    fn default() -> Self {
        PayloadLimit {
            limit: AtomicUsize::new(0),
            stale: AtomicBool::new(true),
        }
    }
}

impl PayloadLimit {
    fn get(&self, client: &async_nats::Client) -> usize {
        if self.stale.swap(false, Ordering::AcqRel) {
            self.limit
                .store(client.server_info().max_payload, Ordering::Release);
        }
        self.limit.load(Ordering::Acquire)
    }
}

/// What a NATS URL's userinfo carries.
#[derive(Debug, PartialEq, Eq)]
enum Credentials {
    /// `nats://user:password@host`
    UserPassword(String, String),
    /// `nats://token@host`
    Token(String),
}

/// The server addresses without userinfo (comma-separated, as given), and the first
/// address's credentials, percent-decoded.
fn split_credentials(url: &str) -> (String, Option<Credentials>) {
    let mut credentials = None;
    let addresses: Vec<String> = url
        .split(',')
        .map(|one| match crate::redact::split_userinfo(one) {
            (scheme, Some(userinfo), host) => {
                if credentials.is_none() {
                    credentials = Some(match userinfo.split_once(':') {
                        Some((user, password)) => Credentials::UserPassword(
                            percent_decode(user),
                            percent_decode(password),
                        ),
                        None => Credentials::Token(percent_decode(userinfo)),
                    });
                }
                format!("{scheme}{host}")
            }
            (_, None, _) => one.to_string(),
        })
        .collect();
    (addresses.join(","), credentials)
}

/// `%XX` escapes decoded (userinfo may escape `@`, `:`...); anything else kept.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| text.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A round trip through the server: once it returns, the server has processed everything
/// this connection sent before (`flush` only empties the client's buffer). A request to a
/// subject nobody serves comes back as "no responders".
pub(crate) async fn round_trip(
    client: &async_nats::Client,
) -> Result<(), async_nats::RequestError> {
    let subject = format!("_TRANSPORT.SYNC.{}", client.new_inbox().replace('.', "_"));
    match client.request(subject, bytes::Bytes::new()).await {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
        Err(error) => Err(error),
    }
}

/// Our message's headers, key and id as NATS headers.
/// A header NATS cannot carry (names: printable ASCII without `:`; values: no CR/LF) is an
/// error, not a panic inside the client.
pub(crate) fn to_nats_headers(
    message: &Message,
    kind: &'static str,
) -> Result<async_nats::HeaderMap, BackendError> {
    let mut headers = async_nats::HeaderMap::new();
    let key = message
        .key
        .as_deref()
        .map(|key| (Some(KEY_HEADER), KEY_HEADER, key));
    let id = message
        .id
        .as_deref()
        .map(|id| (Some(ID_HEADER), ID_HEADER, id));
    for (constant, name, value) in message.headers.iter_with_static().chain(key).chain(id) {
        // (a constant's name is one of the framework's own: valid by construction)
        let name_ok = constant.is_some()
            || (!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':'));
        if !name_ok || value.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err(BackendError::Operation {
                backend: kind,
                operation: "publish",
                reason: format!(
                    "header `{}` cannot travel in NATS headers (names: printable ASCII without `:`; values: no line breaks)",
                    name.escape_debug()
                ),
            });
        }
        // a name the framework set from a constant is used as it is: neither parsed nor
        // copied (the id and the content type are on every message)
        match constant {
            Some(constant) => headers.insert(async_nats::HeaderName::from_static(constant), value),
            None => headers.insert(name, value),
        }
    }
    Ok(headers)
}

/// A NATS message as ours: key and id come out of their headers; `reply_to` is the
/// message's reply subject (pass `None` where the reply subject is not a reply address,
/// such as a JetStream ack subject).
pub(crate) fn from_nats(
    payload: Bytes,
    headers: Option<&async_nats::HeaderMap>,
    reply_to: Option<&async_nats::Subject>,
) -> Message {
    let mut message = Message::new(payload);
    message.reply_to = reply_to.map(|subject| subject.as_str().to_string());
    let Some(nats_headers) = headers else {
        return message;
    };
    let mut headers = Headers::new();
    for (name, values) in nats_headers.iter() {
        let name = name.as_ref();
        let Some(value) = values.last() else { continue };
        match name {
            KEY_HEADER => message.key = Some(value.as_str().to_string()),
            ID_HEADER => message.id = Some(value.as_str().into()),
            _ => headers.insert_received(name, value.as_str()),
        }
    }
    message.headers = headers;
    message
}

/// Refuses a message over the server's `max_payload` (headers count towards it).
pub(crate) fn check_payload(
    client: &async_nats::Client,
    limit: &PayloadLimit,
    kind: &'static str,
    message: &Message,
) -> Result<(), BackendError> {
    let size = wire_size(message);
    let limit = limit.get(client);
    if size > limit {
        return Err(BackendError::TooLarge {
            backend: kind,
            size,
            limit,
        });
    }
    Ok(())
}

/// The bytes `message` takes on the wire: payload plus NATS headers (key and id included).
pub(crate) fn wire_size(message: &Message) -> usize {
    // "NATS/1.0\r\n" + "name: value\r\n" per header + "\r\n"
    let header_bytes: usize = 12
        + message
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
        + message
            .key
            .as_ref()
            .map_or(0, |k| KEY_HEADER.len() + k.len() + 4)
        + message
            .id
            .as_ref()
            .map_or(0, |i| ID_HEADER.len() + i.len() + 4);
    message.payload.len() + header_bytes
}

/// The NATS core backend.
pub struct NatsBackend {
    client: async_nats::Client,
    limit: Arc<PayloadLimit>,
}

impl NatsBackend {
    /// Connects to the server `config.url` names.
    pub async fn connect(config: &BrokerConfig) -> Result<Self, BackendError> {
        let (client, limit) = connect_client(config, KIND).await?;
        Ok(NatsBackend { client, limit })
    }
}

impl Backend for NatsBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            groups: true,
            persistence: false,
            ordering: true,
            at_least_once: false,
            native_redelivery: false,
            headers: true,
            keys: true,
        }
    }

    fn publish<'a>(&'a self, topic: &'a str, message: Message) -> Publish<'a> {
        Publish::boxed(async move {
            check_payload(&self.client, &self.limit, KIND, &message)?;
            let headers = to_nats_headers(&message, KIND)?;
            let publish =
                self.client
                    .publish_with_headers(topic.to_string(), headers, message.payload);
            match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
                Ok(result) => result.map_err(|e| operation_error(KIND, "publish", e)),
                Err(_) => Err(operation_error(
                    KIND,
                    "publish",
                    format!(
                        "the client's buffer stayed full for {PUBLISH_TIMEOUT:?} (server unreachable?)"
                    ),
                )),
            }
        })
    }

    fn subscribe<'a>(
        &'a self,
        spec: &'a SubscriptionSpec,
    ) -> BoxFuture<'a, Result<Subscription, BackendError>> {
        async move {
            let subscriber = match &spec.group {
                Some(group) => {
                    self.client
                        .queue_subscribe(spec.topic.clone(), group.clone())
                        .await
                }
                None => self.client.subscribe(spec.topic.clone()).await,
            }
            .map_err(|e| operation_error(KIND, "subscribe", e))?;
            // Make sure the server has the interest before the App reports "subscribed".
            round_trip(&self.client)
                .await
                .map_err(|e| operation_error(KIND, "subscribe", e))?;
            let stream = subscriber.map(|message| {
                Delivery::unacknowledged(from_nats(
                    message.payload,
                    message.headers.as_ref(),
                    message.reply.as_ref(),
                ))
            });
            Ok(stream.boxed())
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        async move { bounded_flush(&self.client, KIND).await }.boxed()
    }

    fn owns_header(&self, name: &str) -> bool {
        is_nats_header(name)
    }

    fn max_message_size(&self) -> Option<usize> {
        Some(self.client.server_info().max_payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_of_the_address() {
        assert_eq!(
            split_credentials("nats://alice:s%40cret@h1:4222,nats://h2:4222"),
            (
                "nats://h1:4222,nats://h2:4222".to_string(),
                Some(Credentials::UserPassword("alice".into(), "s@cret".into()))
            )
        );
        assert_eq!(
            split_credentials("nats://tok@127.0.0.1"),
            (
                "nats://127.0.0.1".to_string(),
                Some(Credentials::Token("tok".into()))
            )
        );
        assert_eq!(
            split_credentials("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222".to_string(), None)
        );
    }

    #[test]
    fn credentials_never_reach_an_error() {
        assert_eq!(
            redacted_url("nats://alice:s3cret@example.com:4222"),
            "nats://alice:***@example.com:4222"
        );
        assert_eq!(redacted_url("nats://tok@h/x@y"), "nats://***@h/x@y");
        assert_eq!(
            redacted_url("nats://127.0.0.1:4222"),
            "nats://127.0.0.1:4222"
        );
        assert_eq!(redacted_url("user:pw@host"), "user:***@host");
    }

    #[test]
    fn nats_headers_are_the_brokers() {
        for name in [
            "Nats-Msg-Id",
            "nats-msg-id",
            "NATS-EXPECTED-STREAM",
            "Nats-Expected-Last-Sequence",
            "Nats-Expected-Last-Subject-Sequence",
            "Nats-Rollup",
        ] {
            assert!(is_nats_header(name), "{name}");
        }
        for name in [
            "trace-id",
            "content-type",
            "nats",
            "x-nats-msg-id",
            "ñats-x",
        ] {
            assert!(!is_nats_header(name), "{name}");
        }
    }
}
