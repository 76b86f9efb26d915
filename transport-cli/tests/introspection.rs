//! Introspection of a service binary, through `App::introspect` (what `my-service list |
//! asyncapi | check` run): the quickstart example's AsyncAPI document validates against
//! the AsyncAPI 3.0.0 JSON schema kept in `tests/schemas/`; `list` prints the subscribers
//! as a table; `check` passes or names every problem.

use std::path::Path;

use serde_json::Value;
use transport::introspect::{AsyncApiOptions, Command};
use transport::{App, Config, Error, IntrospectError};

/// The quickstart example itself, compiled into this test: its services register here.
#[allow(dead_code)]
#[path = "../../examples/quickstart.rs"]
mod quickstart;

/// Services covering what the quickstart does not: every codec, a payload without a
/// schema, a free function, a group. (Payload fields are only ever written by serde.)
#[allow(dead_code)]
mod shop {
    use serde::Deserialize;

    /// An order.
    #[derive(Debug, Deserialize, transport::schemars::JsonSchema)]
    #[schemars(crate = "transport::schemars")]
    pub struct Order {
        pub id: u64,
        pub lines: Vec<Line>,
    }

    /// A line of an order.
    #[derive(Debug, Deserialize, transport::schemars::JsonSchema)]
    #[schemars(crate = "transport::schemars")]
    pub struct Line {
        pub sku: String,
        pub quantity: u32,
    }

    /// No `JsonSchema`: the message has no payload schema, and it still compiles.
    #[derive(Debug, Deserialize)]
    pub struct Note {
        pub text: String,
    }

    pub struct Shop;

    #[transport::service]
    impl Shop {
        #[subscriber(topic = "shop.orders", group = "billing", codec = "msgpack")]
        async fn bill(&self, order: Order) {
            let _ = order;
        }

        #[subscriber(topic = "shop.raw", codec = "bytes")]
        async fn raw(&self, raw: Vec<u8>) {
            let _ = raw;
        }

        #[subscriber(topic = "shop.notes")]
        async fn note(&self, note: Note) {
            let _ = note;
        }
    }

    #[transport::subscriber(topic = "shop.audit", codec = "text")]
    async fn audit(line: String) {
        let _ = line;
    }
}

fn quickstart_app() -> App {
    App::new(Config::default()).select_module(concat!(module_path!(), "::quickstart"))
}

fn shop_app(config: &str) -> App {
    match Config::from_toml(config) {
        Ok(config) => App::new(config).select_module(concat!(module_path!(), "::shop")),
        Err(error) => panic!("test config does not parse: {error}"),
    }
}

/// Runs `command` on `app`; its result and what it wrote.
fn introspect(app: &App, command: Command) -> (Result<(), Error>, String) {
    let mut out = Vec::new();
    let result = app.introspect(&command, &mut out);
    (result, String::from_utf8_lossy(&out).into_owned())
}

fn asyncapi(app: &App) -> Value {
    let (result, out) = introspect(app, Command::AsyncApi(AsyncApiOptions::default()));
    if let Err(error) = result {
        panic!("asyncapi failed: {error}");
    }
    match serde_json::from_str(&out) {
        Ok(document) => document,
        Err(error) => panic!("asyncapi wrote no JSON ({error}):\n{out}"),
    }
}

fn asyncapi_validator() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/schemas/asyncapi-3.0.0.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("the AsyncAPI schema is JSON");
    jsonschema::validator_for(&schema)
        .unwrap_or_else(|error| panic!("the AsyncAPI schema does not compile: {error}"))
}

/// Every validation error of `document`, one per line.
fn violations(validator: &jsonschema::Validator, document: &Value) -> String {
    validator
        .iter_errors(document)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Follows a local `$ref` (`#/a/b`) within `document`.
fn resolve<'a>(document: &'a Value, reference: &Value) -> &'a Value {
    let Some(pointer) = reference.as_str().and_then(|r| r.strip_prefix('#')) else {
        panic!("not a local reference: {reference}");
    };
    document
        .pointer(pointer)
        .unwrap_or_else(|| panic!("`{pointer}` resolves to nothing"))
}

/// The payload schema of an operation's only message, and the message.
fn operation_message<'a>(document: &'a Value, operation: &str) -> &'a Value {
    let operation = &document["operations"][operation];
    let messages = operation["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{operation}");
    let in_channel = resolve(document, &messages[0]["$ref"]);
    resolve(document, &in_channel["$ref"])
}

fn line_of(needle: &str) -> usize {
    include_str!("introspection.rs")
        .lines()
        .position(|line| line.contains(needle))
        .map(|index| index + 1)
        .unwrap_or_else(|| panic!("`{needle}` is not in this file"))
}

#[test]
fn the_quickstart_asyncapi_document_validates_against_the_asyncapi_3_schema() {
    let document = asyncapi(&quickstart_app());
    let validator = asyncapi_validator();
    let problems = violations(&validator, &document);
    assert!(problems.is_empty(), "{problems}\n{document:#}");

    assert_eq!(document["asyncapi"], "3.0.0");
    assert_eq!(
        document["channels"]["sensor.readings"]["address"],
        "sensor.readings"
    );
    assert_eq!(
        document["channels"]["sensor.summaries"]["address"],
        "sensor.summaries"
    );
    let operations = document["operations"].as_object().expect("operations");
    let mut actions: Vec<(&str, &str, &str)> = operations
        .iter()
        .map(|(id, op)| {
            let channel = resolve(&document, &op["channel"]["$ref"]);
            (
                id.as_str(),
                op["action"].as_str().unwrap_or("?"),
                channel["address"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            ("Aggregator.aggregate", "receive", "sensor.readings"),
            ("Aggregator.aggregate.reply", "send", "sensor.summaries"),
            ("Display.show", "receive", "sensor.summaries"),
        ]
    );
    assert_eq!(
        operations["Aggregator.aggregate"]["x-transport-group"],
        "aggregator"
    );

    // messages carry the codec's content type and the payload types' schemas
    let reading = operation_message(&document, "Aggregator.aggregate");
    assert_eq!(reading["contentType"], "application/json");
    let schema = resolve(&document, &reading["payload"]["$ref"]);
    let mut fields: Vec<&String> = schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .collect();
    fields.sort();
    assert_eq!(fields, ["humidity", "room", "temperature"]);
    let summary = operation_message(&document, "Display.show");
    assert_eq!(
        summary,
        operation_message(&document, "Aggregator.aggregate.reply")
    );
    assert_eq!(
        resolve(&document, &summary["payload"]["$ref"])["required"][1],
        "readings"
    );

    // the validator does reject what the schema forbids
    let mut broken = document.clone();
    broken["operations"]["Display.show"]["action"] = Value::from("consume");
    assert!(
        !violations(&validator, &broken).is_empty(),
        "an unknown action must not validate"
    );
}

#[test]
fn asyncapi_covers_every_codec_and_types_without_schemas() {
    let document = asyncapi(&shop_app(
        "[broker]\nkind = \"memory\"\nurl = \"nats://127.0.0.1:4222\"",
    ));
    let problems = violations(&asyncapi_validator(), &document);
    assert!(problems.is_empty(), "{problems}\n{document:#}");

    let order = operation_message(&document, "Shop.bill");
    assert_eq!(order["contentType"], "application/msgpack");
    // nested types land in components.schemas, referenced from the payload's schema
    let schema = resolve(&document, &order["payload"]["$ref"]);
    let line = resolve(&document, &schema["properties"]["lines"]["items"]["$ref"]);
    assert_eq!(line["properties"]["quantity"]["type"], "integer");

    let raw = operation_message(&document, "Shop.raw");
    assert_eq!(raw["contentType"], "application/octet-stream");
    assert_eq!(
        raw["payload"],
        serde_json::json!({ "type": "string", "format": "binary" })
    );
    let note = operation_message(&document, "Shop.note");
    assert!(
        note.get("payload").is_none(),
        "`Note` has no JsonSchema: {note}"
    );
    let audit = operation_message(&document, "audit");
    assert_eq!(audit["contentType"], "text/plain; charset=utf-8");
    assert_eq!(audit["payload"]["type"], "string");

    // the configured broker is the server
    assert_eq!(document["servers"]["memory"]["host"], "127.0.0.1:4222");
    assert_eq!(document["servers"]["memory"]["protocol"], "nats");
}

#[test]
fn asyncapi_output_goes_to_the_named_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("api.json");
    let options = AsyncApiOptions {
        output: Some(file.clone()),
        title: Some("shop".into()),
        api_version: Some("1.2.3".into()),
    };
    let (result, out) = introspect(&shop_app(""), Command::AsyncApi(options));
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(out, format!("wrote {}\n", file.display()));
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("written")).expect("JSON");
    assert_eq!(written["info"]["title"], "shop");
    assert_eq!(written["info"]["version"], "1.2.3");
}

#[test]
fn list_prints_every_subscriber_as_an_aligned_table() {
    let app = shop_app("[subscribers.\"Shop::note\"]\ngroup = \"from-config\"");
    let (result, out) = introspect(&app, Command::List);
    assert!(result.is_ok(), "{result:?}");
    let file = file!();
    let at = |needle| format!("{file}:{}", line_of(needle));
    let expected = format!(
        "\
SERVICE  SUBSCRIBER  TOPIC        GROUP        CODEC    PAYLOAD  REPLY  LOCATION
Shop     bill        shop.orders  billing      msgpack  Order    -      {}
Shop     note        shop.notes   from-config  json     Note     -      {}
Shop     raw         shop.raw     -            bytes    Vec<u8>  -      {}
-        audit       shop.audit   -            text     String   -      {}
",
        at("async fn bill("),
        at("async fn note("),
        at("async fn raw("),
        at("async fn audit("),
    );
    assert_eq!(out, expected);

    let (_, quickstart) = introspect(&quickstart_app(), Command::List);
    let rows: Vec<&str> = quickstart.lines().collect();
    assert_eq!(rows.len(), 3, "{quickstart}");
    let aggregate_line = include_str!("../../examples/quickstart.rs")
        .lines()
        .position(|line| line.contains("async fn aggregate("))
        .map(|index| index + 1)
        .expect("the quickstart has `aggregate`");
    assert!(
        rows[1].starts_with(
            "Aggregator  aggregate   sensor.readings   aggregator  json   Hygrothermograph  sensor.summaries (Summary)  "
        ) && rows[1].ends_with(&format!("examples/quickstart.rs:{aggregate_line}")),
        "{quickstart}"
    );
}

#[test]
fn check_passes_when_the_app_would_start() {
    let app = shop_app("[subscribers.\"Shop::bill\"]\nconcurrency = 4").service(shop::Shop);
    let (result, out) = introspect(&app, Command::Check);
    assert!(result.is_ok(), "{result:?}: {out}");
    assert_eq!(
        out,
        "ok: 4 subscribers bound, broker `memory`, configuration valid\n"
    );
}

#[test]
fn check_names_every_problem_and_fails() {
    // no `Shop` instance, and a config section for a subscriber that does not exist
    let app = shop_app("[subscribers.\"Shop::refund\"]\nconcurrency = 2");
    let (result, out) = introspect(&app, Command::Check);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        matches!(result, Err(Error::Introspect(IntrospectError::CheckFailed { problems })) if problems == lines.len()),
        "{result:?}: {out}"
    );
    assert!(
        lines[0].starts_with(
            "error: config section `subscribers.\"Shop::refund\"` names no registered subscriber"
        ),
        "{out}"
    );
    for (line, method) in lines[1..].iter().zip(["bill", "note", "raw"]) {
        assert!(
            line.starts_with(&format!(
                "error: subscriber `Shop::{method}` ({}:{}) is a method of `Shop`, but no `Shop` instance was provided",
                file!(),
                line_of(&format!("async fn {method}("))
            )),
            "{out}"
        );
    }
    assert_eq!(lines.len(), 4, "{out}");

    // a broker this build does not know
    let app = shop_app("[broker]\nkind = \"carrier-pigeon\"").service(shop::Shop);
    let (result, out) = introspect(&app, Command::Check);
    assert!(result.is_err());
    assert!(
        out.starts_with("error: unknown broker kind `carrier-pigeon` in config (known: memory"),
        "{out}"
    );
    // `check` is what `start` checks first
    assert!(app.check().is_err());
}

#[test]
fn asyncapi_takes_the_service_crates_version_unless_given() {
    // the subscribers are declared in this crate: its version is the service's
    let document = asyncapi(&quickstart_app());
    assert_eq!(document["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_ne!(document["info"]["version"], "0.0.0");
}
