//! Test support: record what reaches a topic (published, replied, dead-lettered) and
//! wait for it, with no broker of your own, like FastStream's TestBroker.
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), transport::Error> {
//! use std::time::Duration;
//! let config = transport::Config::from_toml("[broker]\nname = \"doc-recording\"")?;
//! let app = transport::App::new(config).select(|_| false).start().await?;
//! let recording = app.record("greetings").await?;
//! app.publisher().publish("greetings", &"hello").await?;
//! let seen = recording.wait_for(1, Duration::from_secs(5)).await;
//! assert_eq!(&seen[0].payload[..], b"\"hello\"");
//! app.shutdown().await
//! # }
//! ```

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::Notify;

use std::marker::PhantomData;

use crate::backend::{Backend, SubscriptionSpec};
use crate::codec::Decoder;
use crate::error::{CodecError, Error, StartupError};
use crate::message::Message;
use crate::topic::Topic;

/// Messages seen on one topic since the recording started.
pub struct Recording {
    topic: String,
    seen: Arc<Mutex<Vec<Message>>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Recording {
    pub(crate) async fn start(backend: &Arc<dyn Backend>, topic: &str) -> Result<Self, Error> {
        let spec = SubscriptionSpec {
            topic: topic.to_string(),
            group: None,
            subscriber: format!("recording:{topic}"),
            prefetch: 1024,
            max_attempts: 1,
            consumer: None,
            filter: false,
        };
        let mut subscription =
            backend
                .subscribe(&spec)
                .await
                .map_err(|source| StartupError::Subscribe {
                    subscriber: spec.subscriber.clone(),
                    location: "transport::testing".into(),
                    topic: topic.to_string(),
                    source,
                })?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let changed = Arc::new(Notify::new());
        let task = tokio::spawn({
            let seen = Arc::clone(&seen);
            let changed = Arc::clone(&changed);
            async move {
                while let Some(delivery) = subscription.next().await {
                    seen.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((*delivery.message).clone());
                    delivery.ack();
                    changed.notify_waiters();
                }
            }
        });
        Ok(Recording {
            topic: topic.to_string(),
            seen,
            changed,
            task,
        })
    }

    /// The topic recorded.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Everything seen so far.
    pub fn messages(&self) -> Vec<Message> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `count` messages were seen or `timeout` passed; returns what
    /// was seen either way (check its length).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let seen = self.messages();
            if seen.len() >= count {
                return seen;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.messages();
            }
        }
    }
}

/// What [`Running::record`](crate::Running::record) records: a topic by name (a
/// [`Recording`] of raw messages) or a typed [`Topic`] (a [`TypedRecording`] of decoded
/// values).
pub trait Recordable {
    /// The recording this target gives.
    type Recording;
    /// The topic's name.
    fn topic_name(&self) -> &str;
    /// Wraps the raw recording.
    fn wrap(recording: Recording) -> Self::Recording;
}

impl Recordable for &str {
    type Recording = Recording;
    fn topic_name(&self) -> &str {
        self
    }
    fn wrap(recording: Recording) -> Recording {
        recording
    }
}

impl Recordable for &String {
    type Recording = Recording;
    fn topic_name(&self) -> &str {
        self
    }
    fn wrap(recording: Recording) -> Recording {
        recording
    }
}

impl<T, C: Decoder<T>> Recordable for &Topic<T, C> {
    type Recording = TypedRecording<T, C>;
    fn topic_name(&self) -> &str {
        self.name()
    }
    fn wrap(recording: Recording) -> TypedRecording<T, C> {
        TypedRecording {
            raw: recording,
            topic: PhantomData,
        }
    }
}

/// Values seen on a typed topic since the recording started, decoded with the topic's
/// codec.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// const GREETINGS: transport::Topic<String> = transport::Topic::new("greetings");
/// let app = transport::App::new(transport::Config::for_test()).select(|_| false).start().await?;
/// let recording = app.record(&GREETINGS).await?;
/// app.publisher().send(&GREETINGS, &"hello".to_string()).await?;
/// assert_eq!(recording.wait_for(1, Duration::from_secs(5)).await?, ["hello"]);
/// app.shutdown().await?;
/// # Ok(()) }
/// ```
pub struct TypedRecording<T, C> {
    raw: Recording,
    topic: PhantomData<fn() -> (T, C)>,
}

impl<T, C: Decoder<T>> TypedRecording<T, C> {
    /// The raw messages (headers, key, id).
    pub fn raw(&self) -> &Recording {
        &self.raw
    }

    /// Every value seen so far; an error if one does not decode.
    pub fn values(&self) -> Result<Vec<T>, CodecError> {
        decode_all::<T, C>(&self.raw.messages())
    }

    /// Waits until at least `count` messages were seen or `timeout` passed; returns
    /// what was seen either way, decoded (check its length).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Result<Vec<T>, CodecError> {
        decode_all::<T, C>(&self.raw.wait_for(count, timeout).await)
    }
}

fn decode_all<T, C: Decoder<T>>(messages: &[Message]) -> Result<Vec<T>, CodecError> {
    messages.iter().map(|m| C::decode(&m.payload)).collect()
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.task.abort();
    }
}
