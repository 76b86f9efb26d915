//! `transport new consumer`: a ready crate with one service, one subscriber, its test, its
//! configuration and a README, written only where no file would be overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::broker::{Broker, BrokerInfo};
use crate::codec::{Codec, PayloadShape};
use crate::error::CliError;
use crate::names;
use crate::subscriber::Subscriber;
use crate::template;

/// Where the generated crate gets `transport` from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportSource {
    /// A path dependency (absolute).
    Path(PathBuf),
    /// A registry version requirement.
    Version(String),
}

/// What `new consumer` was asked for.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    /// The crate's name.
    pub name: String,
    /// The first subscriber's topic.
    pub topic: String,
    /// Its group.
    pub group: Option<String>,
    /// Its codec.
    pub codec: Codec,
    /// The broker of `transport.toml`.
    pub broker: Broker,
    /// The crate's directory; `./<name>` when `None`.
    pub path: Option<PathBuf>,
    /// `transport` as a path dependency.
    pub transport_path: Option<PathBuf>,
    /// `transport` as a version requirement.
    pub transport_version: Option<String>,
    /// The service type's name; the crate's name in CamelCase when `None`.
    pub service: Option<String>,
    /// The payload type's name; see [`Subscriber::new`].
    pub payload: Option<String>,
    /// The handler method's name.
    pub handler: String,
}

/// A crate written by [`create`].
#[derive(Clone, Debug)]
pub struct Created {
    /// Its directory.
    pub dir: PathBuf,
    /// The files written, relative to `dir`.
    pub files: Vec<PathBuf>,
    /// The broker configured.
    pub broker: BrokerInfo,
    /// Where `transport` comes from.
    pub transport: TransportSource,
}

/// The crate, planned: every file with its content, nothing written yet.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The crate's directory.
    pub dir: PathBuf,
    /// Relative path and content of each file.
    pub files: Vec<(PathBuf, String)>,
    /// The broker configured.
    pub broker: BrokerInfo,
    /// Where `transport` comes from.
    pub transport: TransportSource,
}

/// The transport crate next to this tool's sources, when the tool runs from a checkout.
fn sibling_transport() -> Option<PathBuf> {
    let candidate = Path::new(env!("CARGO_MANIFEST_DIR")).join("../transport");
    candidate
        .join("Cargo.toml")
        .is_file()
        .then(|| candidate.canonicalize().ok())
        .flatten()
}

/// Checks that `dir` holds the transport crate and that it declares `feature`.
fn check_transport_path(dir: &Path, broker: BrokerInfo) -> Result<PathBuf, CliError> {
    let not_transport = |reason: String| CliError::NotTransport {
        path: dir.to_path_buf(),
        reason,
    };
    let dir = dir
        .canonicalize()
        .map_err(|error| not_transport(format!("it cannot be opened ({error})")))?;
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|error| not_transport(format!("it has no readable Cargo.toml ({error})")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|error| not_transport(format!("its Cargo.toml does not parse ({error})")))?;
    let name = table
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str);
    if name != Some("transport") {
        return Err(not_transport(format!(
            "its Cargo.toml names the package {}",
            name.map_or("nothing".to_string(), |n| format!("`{n}`"))
        )));
    }
    if let Some(feature) = broker.feature {
        let declared = table
            .get("features")
            .and_then(toml::Value::as_table)
            .is_some_and(|features| features.contains_key(feature));
        if !declared {
            return Err(CliError::FeatureMissing {
                broker: broker.kind,
                feature,
                manifest,
            });
        }
    }
    Ok(dir)
}

fn check_version(version: &str) -> Result<(), CliError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || " .,^~=<>*+-".contains(c);
    if version.trim().is_empty() || !version.chars().all(allowed) {
        return Err(CliError::InvalidName {
            what: "transport version",
            value: version.to_string(),
            reason: "it is not a version requirement such as `0.1` or `=0.1.0`".into(),
        });
    }
    Ok(())
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// Plans the crate: checks every name and option, renders every file.
pub fn plan(spec: &ConsumerSpec, cwd: &Path) -> Result<Plan, CliError> {
    names::crate_name(&spec.name)?;
    let subscriber = Subscriber::new(
        &spec.handler,
        &spec.topic,
        spec.group.as_deref(),
        spec.codec,
        spec.payload.as_deref(),
    )?;
    let service = match &spec.service {
        Some(service) => {
            names::type_name("service type", service)?;
            service.clone()
        }
        None => names::camel_case(&spec.name),
    };
    if service == subscriber.payload {
        return Err(CliError::InvalidName {
            what: "service type",
            value: service,
            reason:
                "it is also the payload type's name: choose another with --service or --payload"
                    .into(),
        });
    }
    let broker = spec.broker.supported_info()?;
    let transport = match (&spec.transport_path, &spec.transport_version) {
        (Some(path), _) => TransportSource::Path(check_transport_path(&cwd.join(path), broker)?),
        (None, Some(version)) => {
            check_version(version)?;
            TransportSource::Version(version.clone())
        }
        (None, None) => match sibling_transport() {
            Some(path) => TransportSource::Path(check_transport_path(&path, broker)?),
            None => TransportSource::Version(env!("CARGO_PKG_VERSION").to_string()),
        },
    };
    let dir: PathBuf = cwd
        .join(spec.path.as_deref().unwrap_or(Path::new(&spec.name)))
        .components()
        .filter(|c| *c != std::path::Component::CurDir)
        .collect();

    let mut values = subscriber.values();
    let lib_name = names::snake_case(&spec.name);
    let transport_dependency = {
        let source = match &transport {
            TransportSource::Path(path) => {
                format!("path = {}", toml_string(&path.to_string_lossy()))
            }
            TransportSource::Version(version) => format!("version = {}", toml_string(version)),
        };
        match broker.feature {
            Some(feature) => format!("{source}, features = [{}]", toml_string(feature)),
            None => source,
        }
    };
    let mut test_imports = vec![service.clone(), subscriber.topic_const.clone()];
    if subscriber.defines_payload() {
        test_imports.push(subscriber.payload.clone());
    }
    values
        .set("crate_name", &spec.name)
        .set("lib_name", &lib_name)
        .set("service", &service)
        .set("broker_kind", broker.kind)
        .set(
            "broker_url",
            broker
                .url
                .map(|url| format!("url = {}\n", toml_string(url)))
                .unwrap_or_default(),
        )
        .set("transport_dependency", transport_dependency)
        .set(
            "extra_dependencies",
            if spec.codec.shape() == PayloadShape::ProstStruct {
                "prost = \"0.14\"\n"
            } else {
                ""
            },
        )
        .set("payload_definition", subscriber.payload_definition()?)
        .set("topic_definition", subscriber.topic_definition()?)
        .set("subscriber", subscriber.method(true)?)
        .set("test_imports", format!("{{{}}}", test_imports.join(", ")))
        .set("sample", spec.codec.sample(&subscriber.payload))
        .set(
            "group_sentence",
            match &subscriber.group {
                Some(group) => format!(" in group `{group}`"),
                None => String::new(),
            },
        )
        .set(
            "example_group",
            subscriber.group.as_deref().unwrap_or("refunds"),
        )
        .set("broker_note", broker_note(broker));

    let files = [
        ("Cargo.toml", template::CARGO_TOML),
        ("transport.toml", template::TRANSPORT_TOML),
        ("README.md", template::README),
        (".gitignore", template::GITIGNORE),
        ("src/lib.rs", template::LIB_RS),
        ("src/main.rs", template::MAIN_RS),
        ("src/service.rs", template::SERVICE_RS),
        ("tests/service.rs", template::TEST_RS),
    ]
    .into_iter()
    .map(|(path, template)| {
        template::render(template, &values).map(|text| (PathBuf::from(path), tidy(&text)))
    })
    .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan {
        dir,
        files,
        broker,
        transport,
    })
}

/// One trailing newline, no trailing spaces.
fn tidy(text: &str) -> String {
    let mut out: String = text
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n");
    while out.ends_with('\n') {
        out.pop();
    }
    out.push('\n');
    out
}

fn broker_note(broker: BrokerInfo) -> String {
    match (broker.kind, broker.url, broker.feature) {
        ("memory", _, _) => "The memory broker lives inside the process: only an App of the same process \
            publishes to it, as the test does. To consume from a network broker, set `broker.kind` and \
            `broker.url` in `transport.toml` and enable the backend's feature of `transport` in \
            `Cargo.toml` (or generate the crate with `--broker`)."
            .to_string(),
        (kind, Some(url), Some(feature)) => format!(
            "`cargo run` needs the `{kind}` broker at `{url}` (set `broker.url` in `transport.toml`, or \
             `TRANSPORT_BROKER__URL`, to reach another). The `{feature}` feature of `transport` carries \
             its backend."
        ),
        (kind, _, _) => format!("`cargo run` needs a `{kind}` broker."),
    }
}

/// Writes `plan`: first checks that none of its files exists (then writes nothing),
/// then creates each file, never replacing one.
pub fn write(plan: &Plan) -> Result<Created, CliError> {
    let existing: Vec<PathBuf> = plan
        .files
        .iter()
        .map(|(path, _)| path)
        .filter(|path| plan.dir.join(path).exists())
        .cloned()
        .collect();
    if !existing.is_empty() {
        return Err(CliError::WouldOverwrite {
            dir: plan.dir.clone(),
            files: existing,
        });
    }
    for (path, text) in &plan.files {
        let full = plan.dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).map_err(|source| CliError::Io {
                action: "create directory",
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let io_error = |source| CliError::Io {
            action: "write",
            path: full.clone(),
            source,
        };
        // `create_new`: a file that appeared since the check is not replaced either
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&full)
            .map_err(io_error)?;
        file.write_all(text.as_bytes()).map_err(io_error)?;
        tracing::debug!(path = %full.display(), "written");
    }
    format_sources(plan);
    Ok(Created {
        dir: plan.dir.clone(),
        files: plan.files.iter().map(|(path, _)| path.clone()).collect(),
        broker: plan.broker,
        transport: plan.transport.clone(),
    })
}

/// Formats the generated Rust files with `rustfmt` when it is installed; the files are
/// valid Rust either way.
fn format_sources(plan: &Plan) {
    let sources: Vec<PathBuf> = plan
        .files
        .iter()
        .filter(|(path, _)| path.extension().is_some_and(|e| e == "rs"))
        .map(|(path, _)| plan.dir.join(path))
        .collect();
    match Command::new("rustfmt")
        .args(["--edition", "2024"])
        .args(&sources)
        .output()
    {
        Ok(output) if output.status.success() => {}
        Ok(output) => tracing::warn!(
            stderr = %String::from_utf8_lossy(&output.stderr),
            "rustfmt failed; the files are left as generated"
        ),
        Err(error) => tracing::debug!(%error, "rustfmt not run"),
    }
}

/// Plans and writes a new consumer crate.
pub fn create(spec: &ConsumerSpec, cwd: &Path) -> Result<Created, CliError> {
    write(&plan(spec, cwd)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> ConsumerSpec {
        ConsumerSpec {
            name: name.into(),
            topic: "orders".into(),
            group: Some("billing".into()),
            codec: Codec::Json,
            broker: Broker::Memory,
            path: None,
            transport_path: None,
            transport_version: Some("0.1".into()),
            service: None,
            payload: None,
            handler: "handle".into(),
        }
    }

    fn file<'a>(plan: &'a Plan, path: &str) -> &'a str {
        plan.files
            .iter()
            .find(|(p, _)| p == Path::new(path))
            .map(|(_, text)| text.as_str())
            .unwrap_or_else(|| panic!("{path} not planned"))
    }

    #[test]
    fn the_plan_wires_names_broker_and_dependency_together() {
        let mut spec = spec("orders-consumer");
        spec.broker = Broker::RedisStreams;
        let planned = plan(&spec, Path::new("/work")).unwrap();
        assert_eq!(planned.dir, Path::new("/work/orders-consumer"));
        let manifest = file(&planned, "Cargo.toml");
        assert!(
            manifest.contains("name = \"orders-consumer\""),
            "{manifest}"
        );
        assert!(manifest.contains("\n[workspace]\n"), "{manifest}");
        assert!(
            manifest.contains("transport = { version = \"0.1\", features = [\"redis\"] }"),
            "{manifest}"
        );
        let config = file(&planned, "transport.toml");
        assert!(config.contains("kind = \"redis-streams\"\nurl = \"redis://127.0.0.1:6379\"\n"));
        assert!(
            config.contains("# [subscribers.\"OrdersConsumer::handle\"]"),
            "{config}"
        );
        let service = file(&planned, "src/service.rs");
        assert!(service.contains("pub struct OrdersConsumer {"), "{service}");
        assert!(service.contains("#[subscriber(topic = ORDERS, group = \"billing\")]"));
        let main = file(&planned, "src/main.rs");
        assert!(
            main.contains("use orders_consumer::service::OrdersConsumer;"),
            "{main}"
        );
        assert!(
            main.contains(".service(OrdersConsumer::default())\n        .run()"),
            "{main}"
        );
        let test = file(&planned, "tests/service.rs");
        assert!(test.contains("use orders_consumer::service::{OrdersConsumer, ORDERS, Orders};"));
        assert!(test.contains(".send(&ORDERS, &Orders { id: 1, body: \"hello\".into() })"));
        for (path, text) in &planned.files {
            assert!(
                !text.contains("{{"),
                "{} has an unrendered placeholder",
                path.display()
            );
        }
    }

    #[test]
    fn text_and_protobuf_payloads_fit_their_codec() {
        let mut text = spec("lines");
        text.codec = Codec::Text;
        let planned = plan(&text, Path::new("/w")).unwrap();
        let service = file(&planned, "src/service.rs");
        assert!(
            !service.contains("pub struct Orders"),
            "String needs no struct: {service}"
        );
        assert!(service.contains("transport::Topic<String, transport::codec::Text>"));
        assert!(file(&planned, "tests/service.rs").contains("&\"hello\".to_string()"));

        let mut proto = spec("protos");
        proto.codec = Codec::Protobuf;
        let planned = plan(&proto, Path::new("/w")).unwrap();
        assert!(
            file(&planned, "src/service.rs")
                .contains("#[derive(Clone, PartialEq, prost::Message)]")
        );
        assert!(file(&planned, "Cargo.toml").contains("prost = \"0.14\""));
    }

    #[test]
    fn bad_options_are_refused_before_anything_is_planned() {
        let error = |spec: ConsumerSpec| plan(&spec, Path::new("/w")).unwrap_err().to_string();
        assert!(error(spec("9lives")).starts_with("invalid crate name `9lives`"));
        let mut bad = spec("ok");
        bad.topic = "orders.*".into();
        assert!(error(bad).contains("wildcards are not supported"));
        let mut bad = spec("ok");
        bad.transport_version = Some("1\"; evil = \"".into());
        assert!(error(bad).starts_with("invalid transport version"));
        let mut bad = spec("orders");
        bad.service = Some("Orders".into());
        assert!(error(bad).contains("also the payload type's name"));
        let mut bad = spec("ok");
        bad.transport_version = None;
        bad.transport_path = Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        assert!(error(bad).contains(
            "is not the transport crate: its Cargo.toml names the package `transport-cli`"
        ));
    }

    #[test]
    fn a_transport_path_must_declare_the_brokers_feature() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[package]\nname = \"transport\"\n[features]\nnats = []\n",
        )
        .unwrap();
        let mut nats = spec("ok");
        nats.transport_version = None;
        nats.transport_path = Some(dir.path().to_path_buf());
        nats.broker = Broker::Jetstream;
        let planned = plan(&nats, Path::new("/w")).unwrap();
        assert!(file(&planned, "Cargo.toml").contains("features = [\"nats\"]"));
        nats.broker = Broker::Redis;
        let error = plan(&nats, Path::new("/w")).unwrap_err().to_string();
        assert!(
            error.contains("declares no `redis` feature, which broker `redis` needs"),
            "{error}"
        );
    }

    #[test]
    fn existing_files_are_never_overwritten() {
        let parent = tempfile::tempdir().unwrap();
        let mut spec = spec("orders-consumer");
        spec.path = Some(PathBuf::from("svc"));
        let planned = plan(&spec, parent.path()).unwrap();
        // one file of the crate exists already: nothing at all is written
        std::fs::create_dir_all(planned.dir.join("src")).unwrap();
        std::fs::write(planned.dir.join("src/main.rs"), "// mine\n").unwrap();
        match write(&planned) {
            Err(CliError::WouldOverwrite { dir, files }) => {
                assert_eq!(dir, planned.dir);
                assert_eq!(files, [PathBuf::from("src/main.rs")]);
            }
            other => panic!("expected WouldOverwrite, got {other:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(planned.dir.join("src/main.rs")).unwrap(),
            "// mine\n"
        );
        assert!(!planned.dir.join("Cargo.toml").exists());

        std::fs::remove_file(planned.dir.join("src/main.rs")).unwrap();
        let created = write(&planned).unwrap();
        assert_eq!(created.files.len(), planned.files.len());
        for (path, _) in &planned.files {
            assert!(planned.dir.join(path).is_file(), "{}", path.display());
        }
        // and a second run refuses, listing every file
        match write(&planned) {
            Err(CliError::WouldOverwrite { files, .. }) => {
                assert_eq!(files.len(), planned.files.len())
            }
            other => panic!("expected WouldOverwrite, got {other:?}"),
        }
    }
}
