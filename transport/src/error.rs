//! Error types. Every failure a user or a broker can cause is a typed variant here.

use std::error::Error as StdError;
use std::fmt;

/// The framework's top-level error: what `App` methods return, and what a handler may
/// return (`Result<(), transport::Error>`).
///
/// A handler can also return any error type `E: Into<transport::Error>`, including
/// `Box<dyn std::error::Error + Send + Sync>`, so `?` works on any standard error there.
///
/// Its `Debug` output is the readable message followed by its causes (as anyhow's is),
/// so `fn main() -> Result<(), transport::Error>` prints something a person can act on.
#[derive(thiserror::Error)]
pub enum Error {
    /// The configuration could not be read or is invalid.
    #[error(transparent)]
    Config(Box<ConfigError>),
    /// The application could not start (bindings, instances, subscriptions).
    #[error(transparent)]
    Startup(Box<StartupError>),
    /// The broker reported a failure.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Publishing a message failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Encoding or decoding a payload failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A handler reported a failure of its own.
    #[error(transparent)]
    Handler(#[from] HandlerError),
    /// An introspection command (`list`, `asyncapi`, `check`) failed.
    #[error(transparent)]
    Introspect(#[from] IntrospectError),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The WebSocket server could not be built, or a send through it failed.
    #[cfg(feature = "websocket")]
    #[error(transparent)]
    WebSocket(#[from] crate::ws::WsError),
}

impl Error {
    /// A handler failure described by a message.
    ///
    /// ```
    /// let err = transport::Error::msg("temperature sensor offline");
    /// assert_eq!(err.to_string(), "temperature sensor offline");
    /// ```
    pub fn msg(message: impl fmt::Display) -> Self {
        Error::Handler(HandlerError::new(Box::new(MessageError(
            message.to_string(),
        ))))
    }

    /// A handler failure caused by another error.
    pub fn handler(source: impl StdError + Send + Sync + 'static) -> Self {
        Error::Handler(HandlerError::new(Box::new(source)))
    }

    /// Returned by a handler: retry this message after `delay` (instead of the retry
    /// policy's backoff), still within `max_attempts`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let err = transport::Error::msg("rate limited").retry_after(Duration::from_secs(5));
    /// assert_eq!(err.verdict(), transport::Verdict::RetryAfter(Duration::from_secs(5)));
    /// ```
    pub fn retry_after(self, delay: std::time::Duration) -> Self {
        self.with_verdict(Verdict::RetryAfter(delay))
    }

    /// Returned by a handler: do not retry, dead-letter the message now (it can never
    /// succeed: a validation failure, say).
    pub fn dead_letter(self) -> Self {
        self.with_verdict(Verdict::DeadLetter)
    }

    /// Returned by a handler: drop the message (acknowledged, neither retried nor
    /// dead-lettered; logged): it no longer matters.
    pub fn discard(self) -> Self {
        self.with_verdict(Verdict::Discard)
    }

    /// What a handler returning this error asks for: [`Verdict::Retry`] unless it said
    /// otherwise.
    pub fn verdict(&self) -> Verdict {
        match self {
            Error::Handler(error) => error.verdict,
            _ => Verdict::Retry,
        }
    }

    pub(crate) fn with_verdict(self, verdict: Verdict) -> Self {
        match self {
            Error::Handler(mut error) => {
                error.verdict = verdict;
                Error::Handler(error)
            }
            other => Error::Handler(HandlerError {
                source: Box::new(other),
                verdict,
            }),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")?;
        let mut source = StdError::source(self);
        let mut causes = Vec::new();
        while let Some(cause) = source {
            let text = cause.to_string();
            // thiserror's `{source}` in a message repeats the cause: show it once
            if !causes.iter().any(|c: &String| c == &text) && !self.to_string().ends_with(&text) {
                causes.push(text);
            }
            source = cause.source();
        }
        if !causes.is_empty() {
            write!(f, "\n\nCaused by:")?;
            for (index, cause) in causes.iter().enumerate() {
                write!(f, "\n    {index}: {cause}")?;
            }
        }
        Ok(())
    }
}

impl From<ConfigError> for Error {
    fn from(error: ConfigError) -> Self {
        Error::Config(Box::new(error))
    }
}

impl From<StartupError> for Error {
    fn from(error: StartupError) -> Self {
        Error::Startup(Box::new(error))
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Error::msg(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Error::msg(message)
    }
}

impl From<Box<dyn StdError + Send + Sync>> for Error {
    fn from(source: Box<dyn StdError + Send + Sync>) -> Self {
        Error::Handler(HandlerError::new(source))
    }
}

/// What a failed handler asks the dispatcher to do with its message
/// ([`Error::retry_after`], [`Error::dead_letter`], [`Error::discard`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Retry with the policy's backoff, dead-letter after `max_attempts` (the default).
    Retry,
    /// Retry after this delay, dead-letter after `max_attempts`.
    RetryAfter(std::time::Duration),
    /// Dead-letter now, without retrying.
    DeadLetter,
    /// Acknowledge and drop: no retry, no dead letter.
    Discard,
}

/// A failure reported by user code (a handler), kept with its source chain and what the
/// handler asked for.
#[derive(Debug)]
pub struct HandlerError {
    source: Box<dyn StdError + Send + Sync>,
    verdict: Verdict,
}

impl HandlerError {
    fn new(source: Box<dyn StdError + Send + Sync>) -> Self {
        HandlerError {
            source,
            verdict: Verdict::Retry,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl StdError for HandlerError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.source()
    }
}

#[derive(Debug)]
struct MessageError(String);

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for MessageError {}

/// Encoding or decoding a payload failed.
#[derive(Debug, thiserror::Error)]
#[error("{codec} codec: {reason}")]
pub struct CodecError {
    /// Name of the codec (`json`, `msgpack`, ...).
    pub codec: &'static str,
    /// What went wrong, as the codec library put it.
    pub reason: String,
}

impl CodecError {
    /// A codec failure with the codec's name and the library's message.
    pub fn new(codec: &'static str, reason: impl fmt::Display) -> Self {
        CodecError {
            codec,
            reason: reason.to_string(),
        }
    }
}

/// Publishing a message failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The value could not be encoded.
    #[error("cannot publish to `{topic}`: {source}")]
    Encode {
        /// Destination topic.
        topic: String,
        /// The codec's error.
        source: CodecError,
    },
    /// The broker did not accept the message.
    #[error("cannot publish to `{topic}`: {source}")]
    Backend {
        /// Destination topic.
        topic: String,
        /// The broker's error.
        source: BackendError,
    },
}

/// A failure reported by a broker backend. Its `Debug` output is its message (URLs
/// redacted), like its `Display`.
#[derive(thiserror::Error)]
pub enum BackendError {
    /// The broker could not be reached. The URL's password never shows in the message.
    #[error(
        "cannot connect to {backend} at {}: {reason}",
        crate::redact::redact_url(url)
    )]
    Connect {
        /// Backend kind.
        backend: &'static str,
        /// Where it was reached for.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The backend is shut down and takes no more work.
    #[error("the {backend} backend is closed")]
    Closed {
        /// Backend kind.
        backend: &'static str,
    },
    /// The message is larger than the backend accepts.
    #[error("message of {size} bytes exceeds the {backend} limit of {limit} bytes")]
    TooLarge {
        /// Backend kind.
        backend: &'static str,
        /// Payload size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A topic name this backend cannot use.
    #[error("invalid topic `{topic}` for {backend}: it {reason}")]
    InvalidTopic {
        /// Backend kind.
        backend: &'static str,
        /// The topic as given.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The broker refused or failed an operation.
    #[error("{backend}: {operation} failed: {reason}")]
    Operation {
        /// Backend kind.
        backend: &'static str,
        /// What was attempted (publish, subscribe, ack ...).
        operation: &'static str,
        /// The broker's or client's message.
        reason: String,
    },
    /// A feature this backend does not have (deferred publishing on a broker without
    /// it...).
    #[error("{backend} cannot {what}")]
    Unsupported {
        /// Backend kind.
        backend: &'static str,
        /// What was asked for.
        what: &'static str,
    },
}

impl fmt::Debug for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackendError({self})")
    }
}

/// The configuration could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file was named but cannot be read.
    #[error("cannot read config file `{path}`: {source}")]
    File {
        /// The path as given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML or environment values do not form a valid configuration. The message
    /// names each offending key as written (`subscriber.backoff`) and where it came from.
    #[error("invalid configuration: {}", describe_figment(.0))]
    Invalid(Box<figment::Error>),
    /// `broker.kind` names no backend.
    #[error("unknown broker kind `{kind}` in config (known: {known})")]
    UnknownBackend {
        /// The name given.
        kind: String,
        /// Every name this build knows.
        known: String,
    },
    /// `broker.kind` names a backend whose cargo feature is off in this build.
    #[error(
        "broker kind `{kind}` is not compiled in: enable the `{feature}` feature of the `transport` crate"
    )]
    BackendNotEnabled {
        /// The name given.
        kind: String,
        /// The cargo feature to enable.
        feature: &'static str,
    },
    /// A codec name in config is not known.
    #[error("unknown codec `{name}` for `{key}` in config (known: {known})")]
    UnknownCodec {
        /// The config key holding it.
        key: String,
        /// The name given.
        name: String,
        /// Every codec name known.
        known: String,
    },
    /// A value is out of its allowed range.
    #[error("invalid value for `{key}`: {reason}")]
    Value {
        /// The config key.
        key: String,
        /// What is allowed.
        reason: String,
    },
}

/// Every error figment collected, one per key: `` `subscriber.backoff`: <what> (<source>) ``,
/// without figment's profile prefix (`default.`).
fn describe_figment(error: &figment::Error) -> String {
    let parts: Vec<String> = error
        .clone()
        .into_iter()
        .map(|e| {
            let mut text = String::new();
            if !e.path.is_empty() {
                text.push_str(&format!("`{}`: ", e.path.join(".")));
            }
            text.push_str(&e.kind.to_string());
            if let Some(metadata) = &e.metadata {
                match &metadata.source {
                    Some(source) => text.push_str(&format!(" (in {} {source})", metadata.name)),
                    None => text.push_str(&format!(" (in {})", metadata.name)),
                }
            }
            text
        })
        .collect();
    parts.join("; ")
}

impl From<figment::Error> for ConfigError {
    fn from(err: figment::Error) -> Self {
        ConfigError::Invalid(Box::new(err))
    }
}

/// The application could not start. Each variant names the subscriber it concerns and
/// where it is declared.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A method subscriber's service instance was never given to the App.
    #[error(
        "subscriber `{subscriber}` ({location}) is a method of `{service}`, but no `{service}` instance was provided: call `.service(...)` with one on the App"
    )]
    MissingInstance {
        /// `Service::method`.
        subscriber: String,
        /// The service type.
        service: String,
        /// `file:line` of the method.
        location: String,
    },
    /// Two subscribers of one service share a topic and group.
    #[error(
        "subscribers `{first}` ({first_location}) and `{second}` ({second_location}) both subscribe to topic `{topic}` with {group}: give one of them another group"
    )]
    DuplicateSubscription {
        /// The first subscriber.
        first: String,
        /// Where it is declared.
        first_location: String,
        /// The second subscriber.
        second: String,
        /// Where it is declared.
        second_location: String,
        /// The shared topic.
        topic: String,
        /// The shared group, described.
        group: String,
    },
    /// Configuration names a subscriber that is not registered.
    #[error(
        "config section `subscribers.\"{name}\"` names no registered subscriber (registered: {known})"
    )]
    UnknownSubscriber {
        /// The name in config.
        name: String,
        /// The registered names.
        known: String,
    },
    /// [`App::layer_for`](crate::App::layer_for) names a subscriber that is not registered.
    #[error("App::layer_for(\"{name}\", ..) names no registered subscriber (registered: {known})")]
    UnknownLayerTarget {
        /// The name given.
        name: String,
        /// The registered names.
        known: String,
    },
    /// A subscriber's effective settings are invalid.
    #[error("subscriber `{subscriber}` ({location}): {reason}")]
    InvalidSubscriber {
        /// The subscriber.
        subscriber: String,
        /// Where it is declared.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// A topic the subscriber uses (its own, its dead-letter or its reply topic) is not a
    /// valid name for the backend.
    #[error("subscriber `{subscriber}` ({location}): {role} `{topic}` is not usable: {source}")]
    InvalidTopic {
        /// The subscriber.
        subscriber: String,
        /// Where it is declared.
        location: String,
        /// `topic`, `dead-letter topic` or `reply topic`.
        role: &'static str,
        /// The topic name.
        topic: String,
        /// The backend's reason.
        source: BackendError,
    },
    /// The broker refused a subscription.
    #[error("subscriber `{subscriber}` ({location}) could not subscribe to `{topic}`: {source}")]
    Subscribe {
        /// The subscriber.
        subscriber: String,
        /// Where it is declared.
        location: String,
        /// Its topic.
        topic: String,
        /// The broker's error.
        source: BackendError,
    },
    /// Several of the above at once.
    #[error("{} problems prevent startup:{}", .0.len(), list(.0))]
    Many(Vec<StartupError>),
}

fn list(errors: &[StartupError]) -> String {
    errors.iter().map(|e| format!("\n  - {e}")).collect()
}

impl StartupError {
    /// One error, or [`StartupError::Many`] when there are several.
    pub(crate) fn from_all(mut errors: Vec<StartupError>) -> Option<StartupError> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(StartupError::Many(errors)),
        }
    }
}

/// An introspection command (`my-service list | asyncapi | check`) could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectError {
    /// The command line does not fit the command.
    #[error("{problem}\nusage: {usage}")]
    Usage {
        /// What is wrong with the arguments.
        problem: String,
        /// The accepted command lines.
        usage: &'static str,
    },
    /// The output could not be written.
    #[error("cannot write {target}: {source}")]
    Write {
        /// Where it was written (`standard output` or a path).
        target: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The AsyncAPI document could not be serialized.
    #[error("cannot serialize the AsyncAPI document: {0}")]
    Serialize(#[source] serde_json::Error),
    /// `check` found problems (it printed each of them).
    #[error("check found {problems} problem(s)")]
    CheckFailed {
        /// How many.
        problems: usize,
    },
}
