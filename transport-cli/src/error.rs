//! Every way a `transport` command can fail, each with what to do about it.

use std::path::PathBuf;

/// A command failed; nothing was written unless the variant says so.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A name given on the command line is not usable.
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidName {
        /// What the name is for (`crate name`, `topic`, ...).
        what: &'static str,
        /// The name given.
        value: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// The broker has no backend in the transport crate yet.
    #[error(
        "broker `{broker}` is not available yet: the transport crate has no `{feature}` backend (available: {supported})"
    )]
    UnsupportedBroker {
        /// The broker asked for.
        broker: &'static str,
        /// The cargo feature it would need.
        feature: &'static str,
        /// The brokers that work.
        supported: String,
    },
    /// The transport crate at `--transport-path` does not declare the broker's feature.
    #[error(
        "the transport crate at {} declares no `{feature}` feature, which broker `{broker}` needs",
        manifest.display()
    )]
    FeatureMissing {
        /// The broker asked for.
        broker: &'static str,
        /// The cargo feature.
        feature: &'static str,
        /// The manifest read.
        manifest: PathBuf,
    },
    /// `--transport-path` does not lead to the transport crate.
    #[error("{} is not the transport crate: {reason}", path.display())]
    NotTransport {
        /// The path given.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// Some of the files to write exist already; nothing was written.
    #[error(
        "refusing to overwrite existing files in {}: {}; nothing was written (remove them or choose another --path)",
        dir.display(),
        list(files)
    )]
    WouldOverwrite {
        /// The crate's directory.
        dir: PathBuf,
        /// The files that exist.
        files: Vec<PathBuf>,
    },
    /// A file or directory could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was attempted (`read`, `write`, `create directory`).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An embedded template names a value the command did not provide (a bug in the CLI).
    #[error("template `{template}` uses `{{{{{placeholder}}}}}`, which has no value")]
    Template {
        /// The template's name.
        template: &'static str,
        /// The placeholder without a value.
        placeholder: String,
    },
    /// The service file does not parse as Rust.
    #[error("{}:{line}:{column}: cannot parse the service file: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// The parser's message.
        message: String,
    },
    /// The service file holds no `#[transport::service]` impl block.
    #[error(
        "{} has no `#[transport::service] impl ... {{ }}` block to add a subscriber to",
        path.display()
    )]
    NoService {
        /// The file.
        path: PathBuf,
    },
    /// Several service impl blocks, and `--service` did not pick one.
    #[error(
        "{} has several services ({}): choose one with --service",
        path.display(),
        services.join(", ")
    )]
    AmbiguousService {
        /// The file.
        path: PathBuf,
        /// The services found.
        services: Vec<String>,
    },
    /// `--service` names no service impl block of the file.
    #[error(
        "{} has no `#[transport::service]` impl block for `{wanted}` (found: {})",
        path.display(),
        found.join(", ")
    )]
    ServiceNotFound {
        /// The file.
        path: PathBuf,
        /// The service asked for.
        wanted: String,
        /// The services found.
        found: Vec<String>,
    },
    /// The service already has a method of that name.
    #[error("`{service}` already has a method `{method}` ({}:{line})", path.display())]
    MethodExists {
        /// The service.
        service: String,
        /// The method.
        method: String,
        /// The file.
        path: PathBuf,
        /// Where the method is.
        line: usize,
    },
    /// The topic constant's name is taken by a constant for another topic.
    #[error(
        "constant `{constant}` ({}:{line}) is not the typed topic `{topic}`; cannot add one of that name",
        path.display()
    )]
    ConstantClash {
        /// The constant's name.
        constant: String,
        /// The topic being added.
        topic: String,
        /// The file.
        path: PathBuf,
        /// Where the constant is.
        line: usize,
    },
    /// The options contradict the existing typed topic constant.
    #[error(
        "topic `{topic}` is declared as `{declaration}` ({}:{line}), which disagrees with {option}",
        path.display()
    )]
    TopicDisagrees {
        /// The topic.
        topic: String,
        /// The constant and its type (`ORDERS: transport::Topic<Orders>`).
        declaration: String,
        /// The option that disagrees.
        option: String,
        /// The file.
        path: PathBuf,
        /// Where the constant is.
        line: usize,
    },
}

fn list(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
