//! The `transport` command: scaffolding for services built with the `transport`
//! framework.
//!
//! - `transport new consumer <name> --topic <t>` writes a crate with a service subscribed
//!   to `t`, a test on the memory broker, a `transport.toml` and a README
//!   ([`consumer`]);
//! - `transport add subscriber <name> --topic <t>` adds a handler method to that service
//!   ([`service_file`]).
//!
//! Introspection (`list`, `asyncapi`, `check`) is not here: every service binary built
//! with the framework answers those itself (`transport::introspect`).

pub mod args;
pub mod broker;
pub mod codec;
pub mod consumer;
pub mod error;
pub mod names;
pub mod service_file;
pub mod subscriber;
pub mod template;

use std::path::{Path, PathBuf};

pub use error::CliError;

/// What a command did, for the user.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// `new consumer` wrote a crate.
    Created(consumer::Created),
    /// `add subscriber` changed a service file.
    Added(service_file::Added),
}

/// `base/path` without `.` components (`./x` -> `x`).
fn join(base: &Path, path: &Path) -> PathBuf {
    base.join(path)
        .components()
        .filter(|c| *c != std::path::Component::CurDir)
        .collect()
}

/// Runs a parsed command line, relative to `cwd`.
pub fn run(cli: args::Cli, cwd: &Path) -> Result<Outcome, CliError> {
    match cli.command {
        args::Command::New(args::New::Consumer(new)) => {
            let spec = consumer::ConsumerSpec {
                name: new.name,
                topic: new.topic,
                group: new.group,
                codec: new.codec,
                broker: new.broker,
                path: new.path,
                transport_path: new.transport_path,
                transport_version: new.transport_version,
                service: new.service,
                payload: new.payload,
                handler: new.handler,
            };
            consumer::create(&spec, cwd).map(Outcome::Created)
        }
        args::Command::Add(args::Add::Subscriber(add)) => {
            let crate_dir = join(cwd, &add.path);
            let spec = service_file::AddSpec {
                name: add.name,
                topic: add.topic,
                group: add.group,
                codec: add.codec,
                payload: add.payload,
                file: match add.file {
                    Some(file) => join(cwd, &file),
                    None => service_file::default_file(&crate_dir),
                },
                service: add.service,
            };
            service_file::add(&spec).map(Outcome::Added)
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Created(created) => {
                let feature = match created.broker.feature {
                    Some(feature) => format!(", feature `{feature}` of transport"),
                    None => String::new(),
                };
                let source = match &created.transport {
                    consumer::TransportSource::Path(path) => format!("path {}", path.display()),
                    consumer::TransportSource::Version(version) => format!("version {version}"),
                };
                writeln!(
                    f,
                    "created {} (broker `{}`{feature}; transport from {source}):",
                    created.dir.display(),
                    created.broker.kind
                )?;
                for file in &created.files {
                    writeln!(f, "  {}", file.display())?;
                }
                write!(f, "next: cd {} && cargo test", created.dir.display())
            }
            Outcome::Added(added) => {
                let sub = &added.subscriber;
                writeln!(
                    f,
                    "added `{}::{}` on topic `{}` ({}, payload `{}`) to {}",
                    added.service,
                    sub.handler,
                    sub.topic,
                    sub.codec.name(),
                    sub.payload,
                    added.file.display()
                )?;
                if added.added_topic {
                    writeln!(f, "  with the typed topic `{}`", sub.topic_const)?;
                }
                if added.added_payload {
                    writeln!(f, "  with the payload type `{}`", sub.payload)?;
                }
                if added.added_payload && sub.codec == codec::Codec::Protobuf {
                    writeln!(
                        f,
                        "  its derive needs `prost = \"0.14\"` in the crate's [dependencies]"
                    )?;
                }
                write!(f, "next: write its test, then `cargo test`")
            }
        }
    }
}
