//! `transport`: message-driven services. Annotate methods with `#[subscriber]`, choose the
//! broker in configuration, and the runtime does the rest: decode, call, retry,
//! dead-letter, acknowledge, drain.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use transport::prelude::*;
//!
//! #[derive(Debug, Serialize, Deserialize)]
//! pub struct Hygrothermograph { pub humidity: f64, pub temperature: f64 }
//!
//! pub struct SaverService;
//!
//! #[transport::service]
//! impl SaverService {
//!     #[subscriber(topic = "sensor.ts", group = "saver")]
//!     async fn save(&self, reading: Hygrothermograph, ctx: &Context) -> Result<(), Error> {
//!         tracing::info!(topic = ctx.topic(), ?reading, "saved");
//!         Ok(())
//!     }
//! }
//! ```
#![deny(missing_docs)]

mod app;
pub mod backend;
pub mod codec;
pub mod config;
mod context;
pub mod dead_letter;
pub mod dispatch;
mod error;
pub mod health;
pub mod introspect;
mod message;
pub mod metrics;
pub mod middleware;
#[cfg(feature = "prometheus")]
pub mod observe;
#[cfg(feature = "opentelemetry")]
pub mod otel;
mod publisher;
mod redact;
pub mod registry;
pub mod testing;
mod topic;
pub mod trace;
#[cfg(feature = "websocket")]
pub mod ws;

pub use app::{App, Running, ShutdownHandle};
pub use config::Config;
pub use context::Context;
pub use dead_letter::{DeadLetter, DeadLetters};
pub use error::{
    BackendError, CodecError, ConfigError, Error, HandlerError, IntrospectError, PublishError,
    StartupError, Verdict,
};
pub use health::Health;
pub use message::{
    CONTENT_TYPE, GENERATED_ID_PREFIX, Headers, Message, MessageId, is_generated_id, message_id,
};
pub use publisher::{CORRELATION_ID, Destination, Outgoing, Publisher, TypedOutgoing};
pub use topic::Topic;
pub use transport_macros::{service, subscriber};

/// The `schemars` crate this build uses for payload schemas (`asyncapi` command). Derive
/// `JsonSchema` through it to get a schema without a dependency of your own:
///
/// ```
/// #[derive(serde::Deserialize, transport::schemars::JsonSchema)]
/// #[schemars(crate = "transport::schemars")]
/// pub struct Reading { pub celsius: f64 }
/// ```
pub use schemars;

/// The names a service author needs: `use transport::prelude::*;`.
pub mod prelude {
    pub use crate::{Context, Error, Headers, Message, Publisher, Topic, service, subscriber};
}

/// What generated code reaches. Not a public API: no stability promise.
#[doc(hidden)]
pub mod __private;
