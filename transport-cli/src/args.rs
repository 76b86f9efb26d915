//! The command line, as clap parses it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::broker::Broker;
use crate::codec::Codec;

/// Scaffolding for services built with the `transport` framework: a new consumer crate in
/// one command, then more subscribers in it. Works offline: the templates are built in.
#[derive(Debug, Parser)]
#[command(name = "transport", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create something new.
    #[command(subcommand)]
    New(New),
    /// Add to a crate made by `transport new`.
    #[command(subcommand)]
    Add(Add),
}

/// `transport new ...`.
#[derive(Debug, Subcommand)]
pub enum New {
    /// A crate with a service subscribed to one topic, its test, its configuration and a README.
    Consumer(NewConsumer),
}

/// `transport add ...`.
#[derive(Debug, Subcommand)]
pub enum Add {
    /// A handler method on another (or the same) topic, in the crate's service.
    Subscriber(AddSubscriber),
}

/// `transport new consumer <name> --topic <topic> ...`.
#[derive(Debug, Args)]
pub struct NewConsumer {
    /// The crate's name (letters, digits, `-`, `_`).
    pub name: String,
    /// The topic to consume.
    #[arg(long)]
    pub topic: String,
    /// Consume as a member of this group (competing consumers); fan-out when absent.
    #[arg(long)]
    pub group: Option<String>,
    /// How payloads are encoded.
    #[arg(long, value_enum, default_value_t = Codec::Json)]
    pub codec: Codec,
    /// The broker `transport.toml` configures.
    #[arg(long, value_enum, default_value_t = Broker::Memory)]
    pub broker: Broker,
    /// The crate's directory [default: ./NAME].
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Depend on the transport crate at this path [default: this tool's checkout, if any].
    #[arg(long, conflicts_with = "transport_version")]
    pub transport_path: Option<PathBuf>,
    /// Depend on this version of transport from the registry.
    #[arg(long)]
    pub transport_version: Option<String>,
    /// The service type's name [default: the crate's name in CamelCase].
    #[arg(long)]
    pub service: Option<String>,
    /// The payload type's name [default: the topic in CamelCase].
    #[arg(long)]
    pub payload: Option<String>,
    /// The handler method's name.
    #[arg(long, default_value = "handle")]
    pub handler: String,
}

/// `transport add subscriber <name> --topic <topic> ...`.
#[derive(Debug, Args)]
pub struct AddSubscriber {
    /// The handler method's name (snake_case).
    pub name: String,
    /// The topic to consume.
    #[arg(long)]
    pub topic: String,
    /// Consume as a member of this group; fan-out when absent.
    #[arg(long)]
    pub group: Option<String>,
    /// How payloads are encoded [default: the topic's, when the service file declares it; else json].
    #[arg(long, value_enum)]
    pub codec: Option<Codec>,
    /// The payload type's name [default: the topic's, when declared; else the topic in CamelCase].
    #[arg(long)]
    pub payload: Option<String>,
    /// The crate's directory.
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
    /// The service file [default: PATH/src/service.rs].
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The service type, when the file has several.
    #[arg(long)]
    pub service: Option<String>,
}
