//! The link-time registry of subscribers: what `#[subscriber]` submits, how the App
//! collects it, and the checks made before anything is consumed.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::context::Context;
use crate::error::{CodecError, Error, StartupError};

/// A subscriber, as described at compile time by `#[subscriber]`.
///
/// Submitted to the link-time registry; [`registrations`] lists them all.
pub struct Registration {
    /// `Service::method` for a method, the function's name for a free function.
    pub name: &'static str,
    /// The service the method belongs to, or `None` for a free function.
    pub service: Option<ServiceInfo>,
    /// The topic name.
    pub topic: &'static str,
    /// `topic` is an MQTT topic filter (`mqtt_filter = "..."`), not a topic name.
    pub mqtt_filter: bool,
    /// The path of the typed topic constant, when `topic = SOME_CONST` was used.
    pub topic_const: Option<&'static str>,
    /// The group, if any.
    pub group: Option<&'static str>,
    /// The codec's name.
    pub codec: &'static str,
    /// The payload type, as written.
    pub payload_type: &'static str,
    /// The `content-type` of the codec (`application/json`, ...).
    pub content_type: &'static str,
    /// The payload type's JSON schema, when it implements `schemars::JsonSchema`.
    pub payload_schema: SchemaFn,
    /// Where the `Ok` value is published, if anywhere.
    pub reply: Option<&'static str>,
    /// The reply's type, as written, when `reply` is set.
    pub reply_type: Option<&'static str>,
    /// The `content-type` of the reply's codec, when `reply` is set.
    pub reply_content_type: Option<&'static str>,
    /// The reply type's JSON schema, when `reply` is set and the type implements
    /// `schemars::JsonSchema`.
    pub reply_schema: SchemaFn,
    /// Source file of the handler.
    pub file: &'static str,
    /// Line of the handler.
    pub line: u32,
    /// Module of the handler.
    pub module_path: &'static str,
    /// The version of the crate declaring the handler (its `CARGO_PKG_VERSION`), the
    /// `asyncapi` document's version unless given.
    pub crate_version: Option<&'static str>,
    /// Builds the callable handler from the App's service instances.
    pub bind: fn(&Instances) -> Option<HandlerFn>,
}

/// A type's JSON schema, generated into `generator` (named types land in its
/// definitions and come back as a `$ref`); `None` when the type has no `JsonSchema`.
pub type SchemaFn = fn(&mut schemars::SchemaGenerator) -> Option<schemars::Schema>;

impl Registration {
    /// `file:line` of the handler.
    pub fn location(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("service", &self.service.map(|s| s.type_name))
            .field("topic", &self.topic)
            .field("mqtt_filter", &self.mqtt_filter)
            .field("topic_const", &self.topic_const)
            .field("group", &self.group)
            .field("codec", &self.codec)
            .field("payload_type", &self.payload_type)
            .field("content_type", &self.content_type)
            .field("reply", &self.reply)
            .field("reply_type", &self.reply_type)
            .field("location", &self.location())
            .finish()
    }
}

/// The service type a method subscriber runs on.
#[derive(Clone, Copy)]
pub struct ServiceInfo {
    /// The type as written in the `impl`.
    pub type_name: &'static str,
    /// Its `TypeId` (a function, since `TypeId::of` is not `const` on stable).
    pub type_id: fn() -> TypeId,
}

inventory::collect!(Registration);

/// Every subscriber linked into this binary, sorted by name then location.
pub fn registrations() -> Vec<&'static Registration> {
    let mut all: Vec<&'static Registration> = inventory::iter::<Registration>.into_iter().collect();
    all.sort_by(|a, b| (a.name, a.file, a.line, a.topic).cmp(&(b.name, b.file, b.line, b.topic)));
    all
}

/// What a handler run ends in, as seen by the dispatcher.
#[derive(Debug)]
pub enum Outcome {
    /// Handled: acknowledge.
    Handled,
    /// The handler failed: retry per policy, then dead-letter.
    Failed(Error),
    /// The payload does not decode: dead-letter at once (it never will decode).
    Undecodable(CodecError),
}

/// A bound handler: decodes, calls the user's function, maps the result. Called for a
/// boxed future ([`HandlerFn::call`]), or run in a [`HandlerSlot`] that holds one
/// delivery's future after another without an allocation each (the generated glue has
/// one; a handler wrapped by middleware has not).
#[derive(Clone)]
pub struct HandlerFn {
    call: Arc<dyn Fn(Context) -> BoxFuture<'static, Outcome> + Send + Sync>,
    slot: Option<Arc<dyn Fn() -> Box<dyn HandlerSlot> + Send + Sync>>,
}

impl HandlerFn {
    /// A handler called for a boxed future each time.
    pub fn new(
        call: impl Fn(Context) -> BoxFuture<'static, Outcome> + Send + Sync + 'static,
    ) -> Self {
        HandlerFn {
            call: Arc::new(call),
            slot: None,
        }
    }

    /// A handler that can also make slots to run in (see [`HandlerSlot`]).
    pub(crate) fn with_slot(
        call: impl Fn(Context) -> BoxFuture<'static, Outcome> + Send + Sync + 'static,
        slot: impl Fn() -> Box<dyn HandlerSlot> + Send + Sync + 'static,
    ) -> Self {
        HandlerFn {
            call: Arc::new(call),
            slot: Some(Arc::new(slot)),
        }
    }

    /// The handler's future for the delivery `ctx` is the context of.
    pub fn call(&self, ctx: Context) -> BoxFuture<'static, Outcome> {
        (self.call)(ctx)
    }

    /// A place to run this handler one delivery after another, if it has one.
    pub(crate) fn slot(&self) -> Option<Box<dyn HandlerSlot>> {
        self.slot.as_ref().map(|make| make())
    }
}

impl fmt::Debug for HandlerFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerFn")
            .field("slot", &self.slot.is_some())
            .finish()
    }
}

/// Where one handler's future lives while it runs, reused from one delivery to the next
/// (made by [`HandlerFn`]; one per dispatcher running deliveries one at a time).
pub trait HandlerSlot: Send {
    /// Starts the handler for the delivery `ctx` is the context of, in place of the last
    /// one (which [`clear`](Self::clear) ended).
    fn start(&mut self, ctx: Context);
    /// Polls the running handler (`Pending` when none runs).
    fn poll_run(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Outcome>;
    /// Drops the running handler's future, finished or not.
    fn clear(&mut self);
}

/// Service instances provided with [`App::service`](crate::App::service), by type.
#[derive(Default, Clone)]
pub struct Instances {
    by_type: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl Instances {
    pub(crate) fn insert<S: Send + Sync + 'static>(&mut self, instance: Arc<S>) {
        self.by_type.insert(TypeId::of::<S>(), instance);
    }

    /// The instance of `S`, if one was provided.
    pub fn get<S: Send + Sync + 'static>(&self) -> Option<Arc<S>> {
        self.by_type
            .get(&TypeId::of::<S>())
            .cloned()
            .and_then(|any| any.downcast::<S>().ok())
    }
}

/// Binds every registration to its instance, after checking the set is coherent.
/// All problems are reported at once, in registration order.
pub(crate) fn bind_all(
    registrations: &[&'static Registration],
    instances: &Instances,
) -> Result<Vec<(&'static Registration, HandlerFn)>, Vec<StartupError>> {
    let mut errors = duplicate_subscriptions(registrations);
    let mut bound = Vec::with_capacity(registrations.len());
    for registration in registrations {
        match (registration.bind)(instances) {
            Some(handler) => bound.push((*registration, handler)),
            None => errors.push(StartupError::MissingInstance {
                subscriber: registration.name.to_string(),
                service: registration
                    .service
                    .map_or("<free function>", |s| s.type_name)
                    .to_string(),
                location: registration.location(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(bound)
    } else {
        Err(errors)
    }
}

/// Two subscribers of one service (or two free functions) on one topic and one group
/// would compete with each other for every message: certainly a mistake.
fn duplicate_subscriptions(registrations: &[&'static Registration]) -> Vec<StartupError> {
    let mut seen: HashMap<(Option<TypeId>, &str, &str), &Registration> = HashMap::new();
    let mut errors = Vec::new();
    for registration in registrations {
        let Some(group) = registration.group else {
            continue;
        };
        let service = registration.service.map(|s| (s.type_id)());
        match seen.get(&(service, registration.topic, group)) {
            Some(first) => errors.push(StartupError::DuplicateSubscription {
                first: first.name.to_string(),
                first_location: first.location(),
                second: registration.name.to_string(),
                second_location: registration.location(),
                topic: registration.topic.to_string(),
                group: format!("group `{group}`"),
            }),
            None => {
                seen.insert((service, registration.topic, group), registration);
            }
        }
    }
    errors
}
