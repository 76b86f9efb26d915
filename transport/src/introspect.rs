//! Introspection of a service binary: what it subscribes to, as a table (`list`) or an
//! AsyncAPI 3.0.0 document (`asyncapi`), and whether it would start (`check`).
//!
//! Every binary whose `main` ends in [`App::run`] answers these commands when started with
//! them as its first argument, instead of consuming:
//!
//! ```text
//! my-service list
//! my-service asyncapi [--output FILE] [--title TEXT] [--api-version TEXT]
//! my-service check
//! ```
//!
//! Tests and tools reach the same through [`App::introspect`]:
//!
//! ```
//! use transport::introspect::Command;
//! let app = transport::App::new(transport::Config::default()).select(|_| false);
//! let mut out = Vec::new();
//! app.introspect(&Command::Check, &mut out)?;
//! assert!(String::from_utf8_lossy(&out).starts_with("ok:"));
//! # Ok::<(), transport::Error>(())
//! ```
//!
//! Message payload schemas come from `schemars`: a payload or reply type that implements
//! [`schemars::JsonSchema`] (re-exported as [`transport::schemars`](crate::schemars)) gets
//! its schema in the AsyncAPI document; other types get a message without a payload schema.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::app::App;
use crate::config::Config;
use crate::error::{Error, IntrospectError, StartupError};
use crate::registry::Registration;

/// The command lines introspection accepts (shown with usage errors).
pub const USAGE: &str = "<service> list | <service> asyncapi [--output FILE] [--title TEXT] [--api-version TEXT] | <service> check";

/// The service's version for `info.version`: the version of the crate declaring the
/// subscribers (the one most of them come from, if several), `0.0.0` when none is known.
fn service_version(registrations: &[&'static Registration]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for version in registrations.iter().filter_map(|r| r.crate_version) {
        *counts.entry(version).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, count)| *count)
        .map_or_else(|| "0.0.0".to_string(), |(version, _)| version.to_string())
}

/// The AsyncAPI version of the documents written by `asyncapi`.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// An introspection command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Print every registered subscriber as an aligned table.
    List,
    /// Write an AsyncAPI 3.0.0 document (JSON).
    AsyncApi(AsyncApiOptions),
    /// Validate configuration and bindings without connecting; fail on problems.
    Check,
}

/// Options of [`Command::AsyncApi`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AsyncApiOptions {
    /// Write the document to this file instead of the output.
    pub output: Option<PathBuf>,
    /// `info.title`; the program's name when started from the command line, else
    /// `"transport service"`.
    pub title: Option<String>,
    /// `info.version`; `"0.0.0"` when not given.
    pub api_version: Option<String>,
}

impl Command {
    /// The first arguments that select a command.
    pub const NAMES: [&'static str; 3] = ["list", "asyncapi", "check"];

    /// Reads a command from a process's arguments (the program name first, as
    /// [`std::env::args_os`] gives them). `Ok(None)` when the first argument is not one
    /// of [`Command::NAMES`]: the App then runs as usual.
    ///
    /// ```
    /// use transport::introspect::Command;
    /// assert_eq!(Command::from_args(["svc", "list"])?, Some(Command::List));
    /// assert_eq!(Command::from_args(["svc"])?, None);
    /// assert_eq!(Command::from_args(["svc", "--port", "80"])?, None);
    /// assert!(Command::from_args(["svc", "list", "--bogus"]).is_err());
    /// # Ok::<(), transport::IntrospectError>(())
    /// ```
    pub fn from_args<I, S>(args: I) -> Result<Option<Command>, IntrospectError>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut args = args.into_iter().map(Into::into);
        let program = args.next();
        let Some(first) = args.next() else {
            return Ok(None);
        };
        let rest: Vec<OsString> = args.collect();
        match first.to_str() {
            Some("list") => no_arguments("list", &rest).map(|()| Some(Command::List)),
            Some("check") => no_arguments("check", &rest).map(|()| Some(Command::Check)),
            Some("asyncapi") => {
                let mut options = asyncapi_options(&rest)?;
                if options.title.is_none() {
                    options.title = program
                        .as_deref()
                        .map(Path::new)
                        .and_then(Path::file_stem)
                        .map(|stem| stem.to_string_lossy().into_owned());
                }
                Ok(Some(Command::AsyncApi(options)))
            }
            _ => Ok(None),
        }
    }
}

fn usage(problem: String) -> IntrospectError {
    IntrospectError::Usage {
        problem,
        usage: USAGE,
    }
}

fn no_arguments(command: &str, rest: &[OsString]) -> Result<(), IntrospectError> {
    match rest.first() {
        None => Ok(()),
        Some(extra) => Err(usage(format!(
            "`{command}` takes no arguments, got `{}`",
            extra.to_string_lossy()
        ))),
    }
}

fn asyncapi_options(rest: &[OsString]) -> Result<AsyncApiOptions, IntrospectError> {
    let mut options = AsyncApiOptions::default();
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        let (name, inline) = match text.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_string(), Some(value)),
            _ => (text.to_string(), None),
        };
        let mut value = |name: &str| -> Result<OsString, IntrospectError> {
            match inline {
                Some(value) => Ok(OsString::from(value)),
                None => args
                    .next()
                    .cloned()
                    .ok_or_else(|| usage(format!("`{name}` needs a value"))),
            }
        };
        match name.as_str() {
            "--output" | "-o" => options.output = Some(PathBuf::from(value(&name)?)),
            "--title" => options.title = Some(value(&name)?.to_string_lossy().into_owned()),
            "--api-version" => {
                options.api_version = Some(value(&name)?.to_string_lossy().into_owned());
            }
            _ => {
                return Err(usage(format!(
                    "`asyncapi` does not take `{text}` (it takes --output, --title, --api-version)"
                )));
            }
        }
    }
    Ok(options)
}

/// Runs `command` for `app`, writing to standard output (or the `--output` file).
/// What [`App::run`] does when the process was started with a command. A failure other
/// than `check`'s (which printed its problems) is also printed to standard error, as a
/// sentence, before it is returned.
pub fn run(app: &App, command: &Command) -> Result<(), Error> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = app.introspect(command, &mut out).and_then(|()| {
        out.flush().map_err(|source| {
            IntrospectError::Write {
                target: "standard output".into(),
                source,
            }
            .into()
        })
    });
    if let Err(error) = &result {
        report(error);
    }
    result
}

/// Prints a command's failure for a person (the `Debug` form that `main` prints after
/// it is terse). `check`'s failure printed its problems already.
pub(crate) fn report(error: &Error) {
    if !matches!(
        error,
        Error::Introspect(IntrospectError::CheckFailed { .. })
    ) {
        let _ = writeln!(std::io::stderr(), "error: {error}");
    }
}

/// What [`App::introspect`] does, given what the App knows.
pub(crate) fn execute(app: &App, command: &Command, out: &mut dyn Write) -> Result<(), Error> {
    let write_error = |source| IntrospectError::Write {
        target: "the output".into(),
        source,
    };
    match command {
        Command::List => {
            let table = list(&app.registrations(), app.config());
            out.write_all(table.as_bytes()).map_err(write_error)?;
            Ok(())
        }
        Command::AsyncApi(options) => {
            let document = asyncapi(&app.registrations(), app.config(), options);
            let mut text =
                serde_json::to_string_pretty(&document).map_err(IntrospectError::Serialize)?;
            text.push('\n');
            match &options.output {
                None => out.write_all(text.as_bytes()).map_err(write_error)?,
                Some(path) => {
                    std::fs::write(path, text).map_err(|source| IntrospectError::Write {
                        target: path.display().to_string(),
                        source,
                    })?;
                    writeln!(out, "wrote {}", path.display()).map_err(write_error)?;
                }
            }
            Ok(())
        }
        Command::Check => match app.check() {
            Ok(()) => {
                let count = app.registrations().len();
                writeln!(
                    out,
                    "ok: {count} subscriber{} bound, broker `{}`, configuration valid",
                    if count == 1 { "" } else { "s" },
                    app.config().broker.kind
                )
                .map_err(write_error)?;
                Ok(())
            }
            Err(error) => {
                let problems = problems(&error);
                for problem in &problems {
                    writeln!(out, "error: {problem}").map_err(write_error)?;
                }
                Err(IntrospectError::CheckFailed {
                    problems: problems.len(),
                }
                .into())
            }
        },
    }
}

/// Each problem of an error on its own (a [`StartupError::Many`] holds several).
fn problems(error: &Error) -> Vec<String> {
    match error {
        Error::Startup(startup) => match startup.as_ref() {
            StartupError::Many(all) => all.iter().map(ToString::to_string).collect(),
            one => vec![one.to_string()],
        },
        other => vec![other.to_string()],
    }
}

/// The `list` table: one row per subscriber, columns aligned, sorted as registered.
pub fn list(registrations: &[&'static Registration], config: &Config) -> String {
    let header = [
        "SERVICE",
        "SUBSCRIBER",
        "TOPIC",
        "GROUP",
        "CODEC",
        "PAYLOAD",
        "REPLY",
        "LOCATION",
    ]
    .map(String::from);
    let mut rows = vec![header];
    for registration in registrations {
        let (service, subscriber) = match registration.service {
            Some(service) => (
                service.type_name.to_string(),
                registration
                    .name
                    .strip_prefix(service.type_name)
                    .and_then(|rest| rest.strip_prefix("::"))
                    .unwrap_or(registration.name)
                    .to_string(),
            ),
            None => ("-".to_string(), registration.name.to_string()),
        };
        let group = config
            .subscriber(registration.name)
            .group
            .or_else(|| registration.group.map(str::to_string))
            .unwrap_or_else(|| "-".into());
        let reply = match (registration.reply, registration.reply_type) {
            (Some(topic), Some(ty)) => format!("{topic} ({})", compact_type(ty)),
            (Some(topic), None) => topic.to_string(),
            _ => "-".into(),
        };
        rows.push([
            service,
            subscriber,
            registration.topic.to_string(),
            group,
            registration.codec.to_string(),
            compact_type(registration.payload_type),
            reply,
            registration.location(),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in &rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width + 2 - cell.chars().count()));
        }
        table.push_str(line.trim_end());
        table.push('\n');
    }
    if registrations.is_empty() {
        table.push_str("(no subscribers registered)\n");
    }
    table
}

/// A type as written by the macro (`Vec < u8 >`), without the token spacing (`Vec<u8>`).
fn compact_type(ty: &str) -> String {
    let mut out = String::with_capacity(ty.len());
    let mut chars = ty.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' {
            // keep the space only between two word characters (`dyn Trait`, `&'a str`)
            let before = out.chars().last().is_some_and(is_word);
            let after = chars.peek().copied().is_some_and(is_word);
            if before && after {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '\''
}

/// A name usable as an AsyncAPI component or channel key (`^[A-Za-z0-9._-]+$`).
fn key(text: &str) -> String {
    let key: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let key = key.trim_matches('_').replace("__", "_");
    if key.is_empty() { "_".into() } else { key }
}

/// A JSON pointer segment (`~` and `/` escaped).
fn pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// One message kind: a type with a content type.
struct MessageKind {
    id: String,
    type_name: String,
    content_type: &'static str,
    payload: Option<Value>,
}

/// The messages of the document, one per (type, content type), with unique ids.
#[derive(Default)]
struct Messages {
    all: Vec<MessageKind>,
}

impl Messages {
    fn id_of(
        &mut self,
        type_name: &str,
        content_type: &'static str,
        payload: impl FnOnce() -> Option<Value>,
    ) -> String {
        let type_name = compact_type(type_name);
        if let Some(found) = self
            .all
            .iter()
            .find(|m| m.type_name == type_name && m.content_type == content_type)
        {
            return found.id.clone();
        }
        let base = key(&type_name);
        let mut id = base.clone();
        let mut n = 2;
        while self.all.iter().any(|m| m.id == id) {
            id = format!("{base}_{n}");
            n += 1;
        }
        self.all.push(MessageKind {
            id: id.clone(),
            type_name,
            content_type,
            payload: payload(),
        });
        id
    }
}

/// A channel: one per topic.
struct Channel {
    id: String,
    messages: Vec<String>,
}

/// The AsyncAPI 3.0.0 document of `registrations`: one channel per topic (address = the
/// topic's name), a `receive` operation per subscriber, a `send` operation per reply, one
/// message per payload type and content type, payload schemas in `components.schemas`.
pub fn asyncapi(
    registrations: &[&'static Registration],
    config: &Config,
    options: &AsyncApiOptions,
) -> Value {
    let mut generator = SchemaSettings::draft07()
        .with(|settings| {
            settings.definitions_path = "/components/schemas".into();
            settings.meta_schema = None;
        })
        .into_generator();
    let mut messages = Messages::default();
    let mut channels: BTreeMap<String, Channel> = BTreeMap::new();
    let mut operations = Map::new();

    for registration in registrations {
        let payload_id =
            messages.id_of(registration.payload_type, registration.content_type, || {
                payload_schema(
                    registration.codec,
                    registration.payload_schema,
                    &mut generator,
                )
            });
        let channel_id = add_to_channel(&mut channels, registration.topic, &payload_id);
        let group = config
            .subscriber(registration.name)
            .group
            .or_else(|| registration.group.map(str::to_string));
        let mut operation = json!({
            "action": "receive",
            "channel": { "$ref": format!("#/channels/{}", pointer(&channel_id)) },
            "messages": [{
                "$ref": format!("#/channels/{}/messages/{}", pointer(&channel_id), pointer(&payload_id))
            }],
            "title": registration.name,
            "x-transport-codec": registration.codec,
            "x-transport-location": registration.location(),
        });
        if let (Some(group), Some(fields)) = (group, operation.as_object_mut()) {
            fields.insert("x-transport-group".into(), Value::String(group));
        }
        let operation_id = key(&registration.name.replace("::", "."));
        operations.insert(operation_id.clone(), operation);

        if let Some(reply) = registration.reply {
            let reply_type = registration.reply_type.unwrap_or("reply");
            let content_type = registration
                .reply_content_type
                .unwrap_or(registration.content_type);
            let reply_id = messages.id_of(reply_type, content_type, || {
                (registration.reply_schema)(&mut generator).map(|schema| schema.to_value())
            });
            let channel_id = add_to_channel(&mut channels, reply, &reply_id);
            operations.insert(
                format!("{operation_id}.reply"),
                json!({
                    "action": "send",
                    "channel": { "$ref": format!("#/channels/{}", pointer(&channel_id)) },
                    "messages": [{
                        "$ref": format!("#/channels/{}/messages/{}", pointer(&channel_id), pointer(&reply_id))
                    }],
                    "title": format!("reply of {}", registration.name),
                    "x-transport-location": registration.location(),
                }),
            );
        }
    }

    let channels: Map<String, Value> = channels
        .into_iter()
        .map(|(address, channel)| {
            let refs: Map<String, Value> = channel
                .messages
                .iter()
                .map(|message| {
                    (
                        message.clone(),
                        json!({ "$ref": format!("#/components/messages/{}", pointer(message)) }),
                    )
                })
                .collect();
            (channel.id, json!({ "address": address, "messages": refs }))
        })
        .collect();
    let component_messages: Map<String, Value> = messages
        .all
        .into_iter()
        .map(|message| {
            let mut object = json!({
                "name": message.id,
                "title": message.type_name,
                "contentType": message.content_type,
            });
            if let (Some(payload), Some(fields)) = (message.payload, object.as_object_mut()) {
                fields.insert("payload".into(), payload);
            }
            (message.id, object)
        })
        .collect();
    let schemas = generator.take_definitions(true);

    let mut document = json!({
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": options.title.clone().unwrap_or_else(|| "transport service".into()),
            "version": options.api_version.clone().unwrap_or_else(|| service_version(registrations)),
            "description": "The subscribers registered in this service, as written by its `asyncapi` command.",
        },
        "defaultContentType": <crate::codec::Json as crate::codec::Codec>::CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": component_messages,
            "schemas": schemas,
        },
    });
    if let (Some(server), Some(fields)) = (server(config), document.as_object_mut()) {
        fields.insert("servers".into(), server);
    }
    document
}

/// Adds a message to the channel of `topic`; returns the channel's id.
fn add_to_channel(channels: &mut BTreeMap<String, Channel>, topic: &str, message: &str) -> String {
    let id = match channels.get(topic) {
        Some(channel) => channel.id.clone(),
        None => {
            let base = key(topic);
            let mut id = base.clone();
            let mut n = 2;
            while channels.values().any(|c| c.id == id) {
                id = format!("{base}_{n}");
                n += 1;
            }
            id
        }
    };
    let channel = channels
        .entry(topic.to_string())
        .or_insert_with(|| Channel {
            id: id.clone(),
            messages: Vec::new(),
        });
    if !channel.messages.iter().any(|m| m == message) {
        channel.messages.push(message.to_string());
    }
    id
}

fn payload_schema(
    codec: &str,
    schema: crate::registry::SchemaFn,
    generator: &mut schemars::SchemaGenerator,
) -> Option<Value> {
    if codec == "bytes" {
        // raw bytes: whatever the Rust type (`Vec<u8>`, `Bytes`), the payload is opaque
        return Some(json!({ "type": "string", "format": "binary" }));
    }
    schema(generator).map(|schema| schema.to_value())
}

/// `servers` for a configured network broker (`scheme://[user@]host[:port][/path]`).
fn server(config: &Config) -> Option<Value> {
    let url = config.broker.url.as_deref()?;
    let kind = config.broker.kind.as_str();
    let (protocol, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.to_string(), rest),
        None => (kind.to_string(), url),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, Some(path)),
        None => (rest, None),
    };
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.is_empty() {
        return None;
    }
    let mut server = json!({
        "host": host,
        "protocol": protocol,
        "description": format!("broker.kind = \"{kind}\""),
    });
    if let (Some(path), Some(fields)) = (path.filter(|p| !p.is_empty()), server.as_object_mut()) {
        fields.insert("pathname".into(), Value::String(format!("/{path}")));
    }
    Some(json!({ key(kind): server }))
}

/// The App's introspection entry points (defined here: introspection reads the App, the
/// App does not depend on introspection).
impl App {
    /// Runs an introspection command (`list`, `asyncapi`, `check`), writing to `out`
    /// (an `asyncapi --output` document goes to its file). What [`App::run`] does when
    /// the process was started with such a command; see [`introspect`](crate::introspect).
    ///
    /// `check` that finds problems writes each, then returns
    /// [`IntrospectError::CheckFailed`](crate::IntrospectError::CheckFailed).
    pub fn introspect(&self, command: &Command, out: &mut dyn std::io::Write) -> Result<(), Error> {
        execute(self, command, out)
    }

    /// When the process was started with an introspection command as its first argument
    /// (`list`, `asyncapi`, `check`), runs it on standard output and returns `true`; else
    /// returns `false` and does nothing. [`App::run`] begins with this; call it yourself
    /// before [`App::start`] when your `main` starts the App itself:
    ///
    /// ```no_run
    /// # async fn demo(app: transport::App) -> Result<(), transport::Error> {
    /// if app.run_command_from_args()? {
    ///     return Ok(()); // `my-service list | asyncapi | check` is done
    /// }
    /// let running = app.start().await?;
    /// # running.shutdown().await }
    /// ```
    pub fn run_command_from_args(&self) -> Result<bool, Error> {
        match Command::from_args(std::env::args_os()) {
            Ok(Some(command)) => run(self, &command).map(|()| true),
            Ok(None) => Ok(false),
            Err(error) => {
                let error = error.into();
                report(&error);
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_from_the_first_argument_only() {
        assert_eq!(
            Command::from_args(["svc", "check"]).unwrap(),
            Some(Command::Check)
        );
        assert_eq!(Command::from_args(["svc", "serve", "list"]).unwrap(), None);
        assert_eq!(Command::from_args(Vec::<String>::new()).unwrap(), None);
        let Some(Command::AsyncApi(options)) = Command::from_args([
            "/usr/bin/saver",
            "asyncapi",
            "-o",
            "api.json",
            "--api-version=2.1.0",
        ])
        .unwrap() else {
            panic!("asyncapi expected");
        };
        assert_eq!(options.output, Some(PathBuf::from("api.json")));
        assert_eq!(options.title.as_deref(), Some("saver"));
        assert_eq!(options.api_version.as_deref(), Some("2.1.0"));
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let error = Command::from_args(["svc", "asyncapi", "--output"]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("`--output` needs a value\nusage: "),
            "{error}"
        );
        let error = Command::from_args(["svc", "check", "now"]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("`check` takes no arguments, got `now`"),
            "{error}"
        );
        let error = Command::from_args(["svc", "asyncapi", "--yaml"]).unwrap_err();
        assert!(error.to_string().contains("`--yaml`"), "{error}");
    }

    #[test]
    fn types_and_keys_are_tidied() {
        assert_eq!(compact_type("Vec < u8 >"), "Vec<u8>");
        assert_eq!(compact_type("Box < dyn Trait >"), "Box<dyn Trait>");
        assert_eq!(compact_type("topics :: Reading"), "topics::Reading");
        assert_eq!(key("Vec<u8>"), "Vec_u8");
        assert_eq!(key("sensor.readings"), "sensor.readings");
        assert_eq!(key("a/b c"), "a_b_c");
    }

    #[test]
    fn a_network_broker_becomes_a_server() {
        let config = Config::from_toml(
            "[broker]\nkind = \"memory\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/vhost\"",
        )
        .unwrap();
        assert_eq!(
            server(&config),
            Some(json!({ "memory": {
                "host": "127.0.0.1:5672",
                "protocol": "amqp",
                "pathname": "/vhost",
                "description": "broker.kind = \"memory\"",
            }}))
        );
        assert_eq!(server(&Config::default()), None);
    }
}
