//! The App: collects the registered subscribers, binds them to the configured backend,
//! runs them, and shuts down gracefully.

use std::path::Path;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backend::{self, Backend, SubscriptionSpec};
use crate::config::Config;
use crate::context::SubscriptionInfo;
use crate::dead_letter::DeadLetters;
use crate::dispatch::Dispatcher;
use crate::error::{Error, StartupError};
use crate::publisher::Publisher;
use crate::registry::{self, HandlerFn, Instances, Registration};
use crate::testing::{Recordable, Recording};

type Selector = Arc<dyn Fn(&Registration) -> bool + Send + Sync>;

/// A service application, before it runs.
///
/// ```no_run
/// # struct SaverService;
/// #[tokio::main]
/// async fn main() -> Result<(), transport::Error> {
///     transport::App::from_env()?.service(SaverService).run().await
/// }
/// ```
pub struct App {
    config: Config,
    instances: Instances,
    backend: Option<Arc<dyn Backend>>,
    selector: Option<Selector>,
    shutdown: CancellationToken,
    /// WebSocket servers to run alongside the subscribers.
    #[cfg(feature = "websocket")]
    websockets: Vec<Arc<dyn crate::ws::Served>>,
    /// What handlers reach through their `Context` (the WebSocket servers, by type).
    extensions: crate::context::Extensions,
    health: crate::Health,
    /// Middleware around every handler, outermost first.
    layers: Vec<Arc<dyn crate::middleware::Middleware>>,
    /// Middleware around one subscriber's handler (inside the App-wide ones).
    layers_for: Vec<(String, Arc<dyn crate::middleware::Middleware>)>,
}

impl App {
    /// An App configured in code.
    pub fn new(config: Config) -> Self {
        App {
            config,
            instances: Instances::default(),
            backend: None,
            selector: None,
            shutdown: CancellationToken::new(),
            #[cfg(feature = "websocket")]
            websockets: Vec::new(),
            extensions: Default::default(),
            health: crate::Health::default(),
            layers: Vec::new(),
            layers_for: Vec::new(),
        }
    }

    /// Runs `middleware` around every subscriber's handler; middleware added earlier runs
    /// outside middleware added later (see [`crate::middleware`]).
    ///
    /// ```
    /// # fn demo(app: transport::App) -> transport::App {
    /// use transport::middleware::{ConcurrencyLimit, Idempotent, MemoryStore};
    /// app.layer(Idempotent::new(MemoryStore::new(100_000)))
    ///     .layer_for("SaverService::save", ConcurrencyLimit::new(4))
    /// # }
    /// ```
    pub fn layer(mut self, middleware: impl crate::middleware::Middleware) -> Self {
        self.layers.push(Arc::new(middleware));
        self
    }

    /// Runs `middleware` around the handler of the subscriber named `subscriber`
    /// (`Service::method`, or a function's name), inside the App-wide ones; a name that
    /// matches no subscriber is a startup error.
    pub fn layer_for(
        mut self,
        subscriber: &str,
        middleware: impl crate::middleware::Middleware,
    ) -> Self {
        self.layers_for
            .push((subscriber.to_string(), Arc::new(middleware)));
        self
    }

    /// This App's liveness and readiness, from now until it has shut down: to mount
    /// [`Health::router`](crate::Health::router) in a server of one's own before starting.
    pub fn health(&self) -> crate::Health {
        self.health.clone()
    }

    /// An App configured by `TRANSPORT_CONFIG` / `transport.toml` and `TRANSPORT_*`.
    pub fn from_env() -> Result<Self, Error> {
        Ok(App::new(Config::from_env()?))
    }

    /// An App configured by the TOML file at `path`, with `TRANSPORT_*` on top.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        Ok(App::new(Config::from_file(path.as_ref())?))
    }

    /// The configuration in effect.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Provides the instance that a service's subscriber methods run on.
    pub fn service<S: Send + Sync + 'static>(self, instance: S) -> Self {
        self.service_arc(Arc::new(instance))
    }

    /// Like [`App::service`], for an instance already shared.
    pub fn service_arc<S: Send + Sync + 'static>(mut self, instance: Arc<S>) -> Self {
        self.instances.insert(instance);
        self
    }

    /// Runs `server` alongside the subscribers: bound to its `address` at start (build it
    /// from `app.config().websocket` to take `[websocket]` from the configuration), its
    /// sessions closed with 1001 and drained at shutdown. Subscribers reach it through
    /// [`Context::websocket`](crate::Context::websocket) (a broker in, browsers out).
    #[cfg(feature = "websocket")]
    pub fn websocket<S: Send + Sync + 'static>(mut self, server: crate::ws::WsServer<S>) -> Self {
        self.extensions.insert(server.clone());
        self.websockets.push(Arc::new(server));
        self
    }

    /// Uses this backend instead of the one the configuration names.
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Runs only the registered subscribers `keep` accepts (all by default). Useful when
    /// one binary holds several services, and in tests.
    pub fn select(mut self, keep: impl Fn(&Registration) -> bool + Send + Sync + 'static) -> Self {
        self.selector = Some(Arc::new(keep));
        self
    }

    /// Runs only the subscribers declared in `module` or its submodules
    /// (`module_path!()` for the current one).
    pub fn select_module(self, module: &'static str) -> Self {
        self.select(move |r| {
            r.module_path == module
                || r.module_path
                    .strip_prefix(module)
                    .is_some_and(|rest| rest.starts_with("::"))
        })
    }

    /// The subscribers this App would run.
    pub fn registrations(&self) -> Vec<&'static Registration> {
        let mut all = registry::registrations();
        if let Some(keep) = &self.selector {
            all.retain(|r| keep(r));
        }
        all
    }

    /// Checks what [`App::start`] checks before it connects, without connecting: the
    /// configuration's values and broker kind, the `[subscribers."..."]` sections, and
    /// the bindings (every method's service instance provided, no two subscribers of one
    /// service on one topic and group). Every binding problem is reported at once.
    ///
    /// ```
    /// let app = transport::App::new(transport::Config::default()).select(|_| false);
    /// assert!(app.check().is_ok());
    /// ```
    pub fn check(&self) -> Result<(), Error> {
        self.prepare().map(drop)
    }

    /// Every subscribed, dead-letter and reply topic `validate_topic` refuses, and every
    /// MQTT filter `validate_filter` refuses.
    fn topic_errors(
        &self,
        registrations: &[&'static Registration],
        validate_topic: &dyn Fn(&str) -> Result<(), crate::error::BackendError>,
        validate_filter: &dyn Fn(&str) -> Result<(), crate::error::BackendError>,
    ) -> Vec<StartupError> {
        let mut errors = Vec::new();
        for registration in registrations {
            if registration.mqtt_filter
                && let Err(source) = validate_filter(registration.topic)
            {
                errors.push(StartupError::InvalidTopic {
                    subscriber: registration.name.to_string(),
                    location: registration.location(),
                    role: "MQTT filter",
                    topic: registration.topic.to_string(),
                    source,
                });
            }
            let topics = [
                (
                    "topic",
                    (!registration.mqtt_filter).then(|| registration.topic.to_string()),
                ),
                (
                    "dead-letter topic",
                    Some(self.dead_letter_topic(registration)),
                ),
                ("reply topic", registration.reply.map(str::to_string)),
            ];
            for (role, topic) in topics {
                let Some(topic) = topic else { continue };
                if let Err(source) = validate_topic(&topic) {
                    errors.push(StartupError::InvalidTopic {
                        subscriber: registration.name.to_string(),
                        location: registration.location(),
                        role,
                        topic,
                        source,
                    });
                }
            }
        }
        errors
    }

    fn dead_letter_topic(&self, registration: &Registration) -> String {
        dead_letter_topic(
            &self.config.subscriber(registration.name).dead_letter,
            registration,
        )
    }

    /// The checks shared by [`App::check`] and [`App::start`], all before connecting;
    /// the bound handlers. Topics are checked with the given backend's rule, else with
    /// the portable one ([`App::start`] checks them again with the backend it connects).
    fn prepare(&self) -> Result<Vec<(&'static Registration, HandlerFn)>, Error> {
        self.config.validate()?;
        if self.backend.is_none() {
            backend::check_kind(&self.config.broker.kind)?;
        }
        let registrations = self.registrations();
        let mut errors = match &self.backend {
            Some(backend) => {
                self.topic_errors(&registrations, &|t| backend.validate_topic(t), &|f| {
                    backend.validate_filter(f)
                })
            }
            None => {
                let kind: &'static str = backend::KINDS
                    .iter()
                    .find(|(name, _, _)| *name == self.config.broker.kind)
                    .map_or("broker", |(name, _, _)| name);
                self.topic_errors(&registrations, &|t| backend::check_topic(kind, t), &|f| {
                    match kind {
                        "memory" | "mqtt" => backend::mqtt_filter::check_filter(kind, f),
                        _ => Err(backend::filters_unsupported(kind, f)),
                    }
                })
            }
        };
        // the registered names, for errors naming an unknown one
        let known = || {
            registrations
                .iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        for name in self.config.subscribers.keys() {
            if !registrations
                .iter()
                .any(|r| r.name.eq_ignore_ascii_case(name))
            {
                errors.push(StartupError::UnknownSubscriber {
                    name: name.clone(),
                    known: known(),
                });
            }
        }
        for (name, _) in &self.layers_for {
            if !registrations.iter().any(|r| r.name == name.as_str()) {
                errors.push(StartupError::UnknownLayerTarget {
                    name: name.clone(),
                    known: known(),
                });
            }
        }
        let bound = match registry::bind_all(&registrations, &self.instances) {
            Ok(bound) => bound
                .into_iter()
                .map(|(registration, handler)| (registration, self.wrapped(registration, handler)))
                .collect(),
            Err(mut bind_errors) => {
                errors.append(&mut bind_errors);
                Vec::new()
            }
        };
        match StartupError::from_all(errors) {
            Some(error) => Err(error.into()),
            None => Ok(bound),
        }
    }

    /// Checks bindings and connects, then starts every subscriber. Returns once all
    /// subscriptions are in place; the returned handle publishes and shuts down.
    pub async fn start(self) -> Result<Running, Error> {
        // everything that can be checked offline, before connecting
        let bound = self.prepare()?;
        let backend = match &self.backend {
            Some(backend) => Arc::clone(backend),
            None => {
                let backend = backend::connect(&self.config.broker).await?;
                // the connected backend's own topic rule (it may be stricter)
                let registrations: Vec<_> = bound.iter().map(|(r, _)| *r).collect();
                let errors =
                    self.topic_errors(&registrations, &|t| backend.validate_topic(t), &|f| {
                        backend.validate_filter(f)
                    });
                if let Some(error) = StartupError::from_all(errors) {
                    self.close_within(&backend).await;
                    return Err(error.into());
                }
                backend
            }
        };
        // the recorder is installed before any handle is registered
        let metrics_stop = CancellationToken::new();
        let metrics_endpoint = match self.metrics_endpoint(&metrics_stop).await {
            Ok(endpoint) => endpoint,
            Err(error) => {
                if self.backend.is_none() {
                    self.close_within(&backend).await;
                }
                return Err(error);
            }
        };
        self.health.set_backend(&backend);
        let capabilities = backend.capabilities();
        let publisher = Publisher::new(
            Arc::clone(&backend),
            self.config.publisher_codec(),
            self.config.broker.max_message_bytes,
            &self.config.publisher.propagate_headers,
            self.config.publisher.trace_context,
        );
        let shutdown = self.shutdown.clone();
        let drain_timeout = self.config.shutdown.drain_timeout;
        let dead_letters = DeadLetters::default();
        let mut tasks = JoinSet::new();

        for (registration, handler) in bound {
            let settings = self.config.subscriber(registration.name);
            let group = settings
                .group
                .clone()
                .or_else(|| registration.group.map(str::to_string));
            let spec = SubscriptionSpec {
                topic: registration.topic.to_string(),
                group: group.clone(),
                subscriber: registration.name.to_string(),
                // a backend may cap queued + running deliveries at `prefetch`: never
                // below what the handlers can take at once
                prefetch: settings.prefetch.max(settings.concurrency),
                max_attempts: settings.retry.max_attempts,
                consumer: settings.consumer.clone(),
                filter: registration.mqtt_filter,
            };
            let subscription = match backend.subscribe(&spec).await {
                Ok(subscription) => subscription,
                Err(source) => {
                    shutdown.cancel();
                    tasks.join_all().await;
                    self.close_within(&backend).await;
                    return Err(StartupError::Subscribe {
                        subscriber: registration.name.to_string(),
                        location: registration.location(),
                        topic: spec.topic,
                        source,
                    }
                    .into());
                }
            };
            tracing::info!(
                subscriber = registration.name,
                topic = registration.topic,
                group = group.as_deref(),
                backend = backend.kind(),
                "subscribed"
            );
            let info = Arc::new(SubscriptionInfo {
                topic: Arc::from(registration.topic),
                group: group.map(Arc::from),
                subscriber: registration.name,
                publisher: publisher.clone(),
                extensions: self.extensions.clone(),
            });
            let dispatcher = Dispatcher {
                bound: self.health.subscribed(registration.name, &info.topic),
                trace: self.config.publisher.trace_context,
                metrics: crate::metrics::SubscriberMetrics::new(
                    registration.name,
                    &info.topic,
                    info.group.as_deref(),
                ),
                registration,
                handler,
                info,
                concurrency: settings.concurrency,
                dead_letter_topic: dead_letter_topic(&settings.dead_letter, registration),
                retry: settings.retry,
                ordered: settings.ordered,
                handler_timeout: settings.handler_timeout,
                max_message_bytes: self.config.broker.max_message_bytes,
                capabilities,
                backend: Arc::clone(&backend),
                spec,
                dead_letters: dead_letters.clone(),
            };
            tasks.spawn(dispatcher.run(subscription, shutdown.child_token(), drain_timeout));
        }

        #[cfg(feature = "websocket")]
        let mut websocket_addresses = Vec::new();
        #[cfg(feature = "websocket")]
        for server in &self.websockets {
            match server.bind().await {
                Ok((address, serving)) => {
                    tracing::info!(%address, "websocket server listening");
                    websocket_addresses.push(address);
                    tasks.spawn(async move {
                        if let Err(error) = serving.await {
                            tracing::error!(%error, "websocket server stopped");
                        }
                    });
                }
                Err(error) => {
                    shutdown.cancel();
                    for server in &self.websockets {
                        server.shutdown().await;
                    }
                    tasks.join_all().await;
                    self.close_within(&backend).await;
                    return Err(error.into());
                }
            }
        }
        let metrics_address = metrics_endpoint.map(|(address, serving)| {
            tracing::info!(%address, "metrics endpoint listening (GET /metrics)");
            (address, tokio::spawn(serving))
        });
        self.health.set_phase(crate::health::Phase::Running);
        Ok(Running {
            health: self.health,
            backend,
            publisher,
            shutdown,
            tasks,
            metrics_stop,
            metrics_endpoint: metrics_address,
            dead_letters,
            drain_timeout,
            close_timeout: self.config.shutdown.close_timeout,
            #[cfg(feature = "websocket")]
            websockets: self.websockets,
            #[cfg(feature = "websocket")]
            websocket_addresses,
        })
    }

    /// `[metrics] address`: the Prometheus recorder installed and the endpoint bound
    /// (served once spawned, until `stop`).
    async fn metrics_endpoint(
        &self,
        stop: &CancellationToken,
    ) -> Result<
        Option<(
            std::net::SocketAddr,
            futures_util::future::BoxFuture<'static, ()>,
        )>,
        Error,
    > {
        let Some(address) = self.config.metrics.address else {
            return Ok(None);
        };
        #[cfg(feature = "prometheus")]
        {
            let (bound, serving) =
                crate::observe::serve(address, self.health.clone(), stop.clone()).await?;
            Ok(Some((bound, Box::pin(serving))))
        }
        #[cfg(not(feature = "prometheus"))]
        {
            let _ = (address, stop);
            Err(crate::metrics::MetricsError::NoExporter.into())
        }
    }

    /// `handler` inside the middleware that applies to `registration`.
    fn wrapped(&self, registration: &Registration, handler: HandlerFn) -> HandlerFn {
        if self.layers.is_empty() && self.layers_for.is_empty() {
            return handler;
        }
        let layers: Vec<_> = self
            .layers
            .iter()
            .cloned()
            .chain(
                self.layers_for
                    .iter()
                    .filter(|(name, _)| name == registration.name)
                    .map(|(_, layer)| Arc::clone(layer)),
            )
            .collect();
        crate::middleware::wrap(handler, &layers)
    }

    /// Closes `backend` after a failed start, within `shutdown.close_timeout`.
    async fn close_within(&self, backend: &Arc<dyn Backend>) {
        close_backend(backend, self.config.shutdown.close_timeout).await;
    }

    /// A handle that stops this App gracefully, from another task, once it runs (before
    /// it runs, the App stops as soon as it has started).
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), transport::Error> {
    /// let app = transport::App::new(transport::Config::default()).select(|_| false);
    /// let stop = app.shutdown_handle();
    /// let service = tokio::spawn(app.run());
    /// stop.shutdown();
    /// service.await.expect("not panicked")
    /// # }
    /// ```
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Starts, then runs until SIGINT / SIGTERM (or [`ShutdownHandle::shutdown`]), then
    /// drains in-flight handlers and disconnects.
    ///
    /// When the process was started with `list`, `asyncapi` or `check` as its first
    /// argument, runs that [introspection](crate::introspect) command instead and returns.
    pub async fn run(self) -> Result<(), Error> {
        if self.run_command_from_args()? {
            return Ok(());
        }
        let signals = TerminationSignals::install();
        let running = self.start().await?;
        running.run_with(signals).await
    }
}

/// SIGINT and SIGTERM, listened for from creation on (so a signal that arrives while the
/// App is starting is not lost to the default action).
struct TerminationSignals {
    #[cfg(unix)]
    listeners: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl TerminationSignals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listeners = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM/SIGINT; falling back to Ctrl-C");
                    None
                }
            };
            TerminationSignals { listeners }
        }
        #[cfg(not(unix))]
        {
            TerminationSignals {}
        }
    }

    async fn received(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.listeners {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Closes `backend`, giving up (with a warning) after `timeout`: shutdown finishes
/// even while the broker is down.
async fn close_backend(backend: &Arc<dyn Backend>, timeout: std::time::Duration) {
    match tokio::time::timeout(timeout, backend.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "closing the backend failed"),
        Err(_) => tracing::warn!(
            backend = backend.kind(),
            ?timeout,
            "closing the backend did not finish within shutdown.close_timeout; giving up on it"
        ),
    }
}

/// A started App.
pub struct Running {
    health: crate::Health,
    backend: Arc<dyn Backend>,
    publisher: Publisher,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
    /// Stops the metrics endpoint, once the rest has shut down.
    metrics_stop: CancellationToken,
    metrics_endpoint: Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>,
    dead_letters: DeadLetters,
    drain_timeout: std::time::Duration,
    close_timeout: std::time::Duration,
    #[cfg(feature = "websocket")]
    websockets: Vec<Arc<dyn crate::ws::Served>>,
    #[cfg(feature = "websocket")]
    websocket_addresses: Vec<std::net::SocketAddr>,
}

/// How long past `drain_timeout` shutdown waits for the dispatchers to return.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Triggers a graceful shutdown from anywhere (clonable).
#[derive(Clone, Debug)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Begins shutdown: subscribers stop fetching and drain.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

impl Running {
    /// Runs until SIGINT / SIGTERM (or [`ShutdownHandle::shutdown`]), then shuts down
    /// gracefully; a second signal exits the process at once (status 130). The rest of
    /// [`App::run`], for a `main` that starts the App itself to keep its publisher:
    ///
    /// ```no_run
    /// # async fn demo(app: transport::App) -> Result<(), transport::Error> {
    /// if app.run_command_from_args()? {
    ///     return Ok(());
    /// }
    /// let running = app.start().await?;
    /// let publisher = running.publisher().clone();
    /// tokio::spawn(async move { publisher.publish("heartbeat", &"up").await });
    /// running.run().await
    /// # }
    /// ```
    pub async fn run(self) -> Result<(), Error> {
        self.run_with(TerminationSignals::install()).await
    }

    async fn run_with(self, mut signals: TerminationSignals) -> Result<(), Error> {
        let handle = self.shutdown_handle();
        tokio::select! {
            _ = signals.received() => tracing::info!("signal received; shutting down (a second signal exits at once)"),
            _ = handle.0.cancelled() => tracing::info!("shutdown requested; shutting down"),
        }
        tokio::select! {
            result = self.shutdown() => result,
            _ = signals.received() => {
                tracing::warn!("second signal: exiting now, without finishing the drain");
                std::process::exit(130)
            }
        }
    }

    /// Publishes through the App's backend.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// The backend in use.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// A handle that begins shutdown when called.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Where each WebSocket server given to [`App::websocket`] listens, in that order
    /// (the port chosen when `address` ends in `:0`).
    #[cfg(feature = "websocket")]
    pub fn websocket_addresses(&self) -> &[std::net::SocketAddr] {
        &self.websocket_addresses
    }

    /// Its liveness and readiness (ready until shutdown begins, while every subscription
    /// is bound and the backend connected).
    pub fn health(&self) -> &crate::Health {
        &self.health
    }

    /// Where the metrics endpoint listens (`[metrics] address`, with the port chosen when
    /// it ends in `:0`), if there is one.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics_endpoint.as_ref().map(|(address, _)| *address)
    }

    /// Records every message published to `topic` from now on (a fan-out subscription
    /// of its own), for tests and tools: `record("audit")` keeps raw messages,
    /// `record(&READINGS)` (a typed [`Topic`](crate::Topic)) decodes them to its type.
    pub async fn record<R: Recordable>(&self, topic: R) -> Result<R::Recording, Error> {
        Recording::start(&self.backend, topic.topic_name())
            .await
            .map(R::wrap)
    }

    /// The dead letters this App published (the last [`KEPT`](crate::dead_letter::KEPT))
    /// and how many dead-letter publishes failed: where the in-process broker's dead
    /// letters stay visible when nobody subscribes to the dead-letter topic.
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    /// Stops fetching, waits for in-flight handlers (up to `shutdown.drain_timeout`),
    /// then flushes acknowledgements and disconnects (up to `shutdown.close_timeout`):
    /// it returns within those bounds even while the broker is down.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.health.set_phase(crate::health::Phase::Draining);
        self.shutdown.cancel();
        // WebSocket sessions close (1001) and drain while the subscribers do
        #[cfg(feature = "websocket")]
        let websockets = std::mem::take(&mut self.websockets);
        let sessions_closed = async {
            #[cfg(feature = "websocket")]
            for server in &websockets {
                server.shutdown().await;
            }
        };
        // Each dispatcher drains within drain_timeout; one whose handler blocks its
        // thread cannot even be cancelled: it is left behind, not waited for.
        let tasks = &mut self.tasks;
        let (drained, ()) = tokio::join!(
            tokio::time::timeout(self.drain_timeout + DRAIN_GRACE, async {
                while let Some(joined) = tasks.join_next().await {
                    if let Err(error) = joined {
                        tracing::error!(%error, "a dispatcher task failed");
                    }
                }
            }),
            sessions_closed
        );
        if drained.is_err() {
            tracing::error!(
                subscribers = self.tasks.len(),
                "subscribers still running after the drain timeout (a handler blocking its thread?); left behind"
            );
            self.tasks.abort_all();
            self.tasks.detach_all();
        }
        close_backend(&self.backend, self.close_timeout).await;
        self.health.set_phase(crate::health::Phase::Stopped);
        // the endpoint answered until now (a last scrape sees the drain's counts)
        self.metrics_stop.cancel();
        if let Some((_, serving)) = self.metrics_endpoint.take() {
            let _ = tokio::time::timeout(self.close_timeout, serving).await;
        }
        Ok(())
    }
}

/// A subscriber's dead-letter topic: `template` (`dead_letter` in config) with `{topic}`
/// replaced by the topic, or, for an MQTT filter, by the subscriber's name with `::` as
/// `.` (`RealtimeMap.position.dlq`): a filter is no topic one can publish to.
fn dead_letter_topic(template: &str, registration: &Registration) -> String {
    if registration.mqtt_filter {
        template.replace("{topic}", &registration.name.replace("::", "."))
    } else {
        template.replace("{topic}", registration.topic)
    }
}
