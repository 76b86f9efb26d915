//! `transport new consumer` end to end: the binary scaffolds a crate into a temporary
//! directory, the crate builds, is formatted, passes its own generated test, and its
//! binary answers `list` and `check`; then `transport add subscriber` adds a second
//! handler that builds and lists too. Once for the memory broker, once for NATS (which
//! proves the generated `features = ["nats"]` builds).
//!
//! Builds go to one target directory under `CARGO_TARGET_TMPDIR`, shared by both crates
//! and kept between runs, with this workspace's `Cargo.lock`, so a repeated run rebuilds
//! only the generated crates.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scaffolded")
}

fn text(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"))
}

/// Runs the `transport` binary in `cwd`.
fn transport(cwd: &Path, args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_transport"))
        .args(args)
        .current_dir(cwd))
}

/// Runs cargo in the generated crate, in the shared target directory.
fn cargo(dir: &Path, args: &[&str]) -> Output {
    run(Command::new(env!("CARGO"))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS"))
}

/// The generated crate's binary, built by `cargo test`.
fn binary(dir: &Path, args: &[&str]) -> Output {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("crate dir name");
    run(Command::new(target_dir().join("debug").join(name))
        .args(args)
        .current_dir(dir))
}

fn assert_success(output: &Output, what: &str) {
    assert!(output.status.success(), "{what} failed\n{}", text(output));
}

/// Scaffolds `name` with `options`, then builds and tests it; returns its directory
/// (inside `parent`).
fn scaffold_and_test(parent: &Path, name: &str, options: &[&str], handler_test: &str) -> PathBuf {
    let transport_crate = workspace().join("transport");
    let transport_path = transport_crate.to_str().expect("UTF-8 path");
    let mut args = vec!["new", "consumer", name, "--transport-path", transport_path];
    args.extend_from_slice(options);
    let created = transport(parent, &args);
    assert_success(&created, "transport new consumer");
    let dir = parent.join(name);
    let stdout = String::from_utf8_lossy(&created.stdout);
    assert!(
        stdout.starts_with(&format!("created {}", dir.display())),
        "{stdout}"
    );
    for file in [
        "Cargo.toml",
        "transport.toml",
        "README.md",
        "src/lib.rs",
        "src/main.rs",
        "src/service.rs",
        "tests/service.rs",
    ] {
        assert!(dir.join(file).is_file(), "{file} was not written");
    }
    // resolve dependencies exactly as this workspace does
    std::fs::copy(workspace().join("Cargo.lock"), dir.join("Cargo.lock")).expect("copy Cargo.lock");

    let fmt = cargo(&dir, &["fmt", "--check"]);
    assert_success(&fmt, "cargo fmt --check of the generated crate");
    let test = cargo(&dir, &["test"]);
    assert_success(&test, "cargo test of the generated crate");
    let stdout = String::from_utf8_lossy(&test.stdout);
    for line in [
        format!("test {handler_test} ... ok"),
        "test transport_toml_is_a_valid_configuration ... ok".to_string(),
    ] {
        assert!(stdout.contains(&line), "`{line}` missing\n{}", text(&test));
    }
    dir
}

#[test]
fn a_memory_consumer_builds_and_passes_its_test_and_takes_another_subscriber() {
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = scaffold_and_test(
        parent.path(),
        "memory-consumer",
        &["--topic", "sensor.readings", "--codec", "msgpack"],
        "a_message_on_sensor_readings_reaches_handle",
    );
    let toml = std::fs::read_to_string(dir.join("transport.toml")).expect("transport.toml");
    assert!(toml.contains("kind = \"memory\"\n"), "{toml}");

    // the binary answers introspection commands instead of consuming
    let list = binary(&dir, &["list"]);
    assert_success(&list, "memory-consumer list");
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(
        table.lines().nth(1).is_some_and(|row| row.starts_with(
            "MemoryConsumer  handle      sensor.readings  -      msgpack  SensorReadings  -      src/service.rs:"
        )),
        "{table}"
    );
    assert_success(&binary(&dir, &["check"]), "memory-consumer check");

    // a second scaffold into the same directory overwrites nothing
    let before = std::fs::read_to_string(dir.join("src/service.rs")).expect("service.rs");
    let again = transport(
        parent.path(),
        &["new", "consumer", "memory-consumer", "--topic", "other"],
    );
    assert!(!again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite existing files"),
        "{}",
        text(&again)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("src/service.rs")).expect("service.rs"),
        before
    );

    // add a subscriber, then build and list again
    let added = transport(
        &dir,
        &[
            "add",
            "subscriber",
            "on_refund",
            "--topic",
            "refunds",
            "--group",
            "billing",
        ],
    );
    assert_success(&added, "transport add subscriber");
    let build = cargo(&dir, &["build"]);
    assert_success(&build, "cargo build after add subscriber");
    let list = binary(&dir, &["list"]);
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(
        table.lines().any(|row| row.starts_with(
            "MemoryConsumer  on_refund   refunds          billing  json     Refunds "
        )),
        "{table}"
    );
    assert_success(&binary(&dir, &["check"]), "memory-consumer check after add");
}

#[test]
fn a_nats_consumer_builds_with_the_nats_feature_and_passes_its_test() {
    let parent = tempfile::tempdir().expect("temp dir");
    let dir = scaffold_and_test(
        parent.path(),
        "nats-consumer",
        &[
            "--topic", "orders", "--group", "billing", "--broker", "nats",
        ],
        "a_message_on_orders_reaches_handle",
    );
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).expect("Cargo.toml");
    assert!(manifest.contains("features = [\"nats\"]"), "{manifest}");
    let toml = std::fs::read_to_string(dir.join("transport.toml")).expect("transport.toml");
    assert!(
        toml.contains("kind = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n"),
        "{toml}"
    );
    // `check` validates without connecting: no NATS server is needed
    let check = binary(&dir, &["check"]);
    assert_success(&check, "nats-consumer check");
    assert_eq!(
        String::from_utf8_lossy(&check.stdout),
        "ok: 1 subscriber bound, broker `nats`, configuration valid\n"
    );
}
