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

use crate::backend::{Backend, SubscriptionSpec};
use crate::error::{Error, StartupError};
use crate::message::Message;

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

impl Drop for Recording {
    fn drop(&mut self) {
        self.task.abort();
    }
}
