//! Typed topics: a topic name bound to its payload type and codec, declared once and
//! shared by producers and consumers.

use std::fmt;
use std::marker::PhantomData;

use crate::codec::{Codec, Json};

/// A topic whose messages carry `T`, encoded with codec `C` (JSON unless said otherwise).
///
/// Declare it once, in a module both sides use:
///
/// ```
/// use transport::Topic;
/// use transport::codec::MsgPack;
/// # #[derive(serde::Serialize, serde::Deserialize)] pub struct Reading { pub celsius: f64 }
/// pub const READINGS: Topic<Reading> = Topic::new("sensor.readings");
/// pub const COMPACT: Topic<Reading, MsgPack> = Topic::new("sensor.compact").with_codec::<MsgPack>();
/// assert_eq!(READINGS.name(), "sensor.readings");
/// assert_eq!(COMPACT.codec_name(), "msgpack");
/// ```
///
/// `#[subscriber(topic = READINGS)]` then requires the handler's payload to be `Reading`,
/// and `publisher.send(&READINGS, &value)` accepts only a `&Reading`.
pub struct Topic<T, C = Json> {
    name: &'static str,
    _types: PhantomData<fn() -> (T, C)>,
}

impl<T> Topic<T, Json> {
    /// A topic named `name` carrying `T` as JSON.
    pub const fn new(name: &'static str) -> Self {
        Topic {
            name,
            _types: PhantomData,
        }
    }
}

impl<T, C> Topic<T, C> {
    /// The same topic with another codec.
    pub const fn with_codec<C2: Codec>(self) -> Topic<T, C2> {
        Topic {
            name: self.name,
            _types: PhantomData,
        }
    }

    /// The topic's name on the broker.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T, C: Codec> Topic<T, C> {
    /// The name of the topic's codec.
    pub const fn codec_name(&self) -> &'static str {
        C::NAME
    }
}

impl<T, C> Clone for Topic<T, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T, C> Copy for Topic<T, C> {}

impl<T, C: Codec> fmt::Debug for Topic<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .field("payload", &std::any::type_name::<T>())
            .field("codec", &C::NAME)
            .finish()
    }
}
