//! The typed-topic check seen from a crate outside this workspace that depends on
//! `transport` by path, as a user's crate would: a payload type that differs from the
//! topic's fails `cargo check` with a message naming the constant; the right one passes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn write_crate(dir: &Path, payload: &str) {
    let transport = Path::new(env!("CARGO_MANIFEST_DIR")).join("../transport");
    let manifest = format!(
        "[package]\nname = \"outside\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n[workspace]\n\n[dependencies]\ntransport = {{ path = {:?} }}\nserde = {{ version = \"1\", features = [\"derive\"] }}\n",
        transport
            .canonicalize()
            .expect("the transport crate exists")
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).expect("write manifest");
    std::fs::create_dir_all(dir.join("src")).expect("create src");
    let source = format!(
        r#"#[derive(serde::Deserialize)]
pub struct A;
#[derive(serde::Deserialize)]
pub struct B;

const T_A: transport::Topic<A> = transport::Topic::new("x");

#[transport::subscriber(topic = T_A)]
async fn on_a(v: {payload}) -> Result<(), transport::Error> {{
    let _ = v;
    Ok(())
}}
"#
    );
    std::fs::write(dir.join("src/lib.rs"), source).expect("write lib.rs");
    // Resolve dependencies exactly as this workspace does.
    let lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
    std::fs::copy(lock, dir.join("Cargo.lock")).expect("copy Cargo.lock");
}

fn cargo_check(dir: &Path, target: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO"))
        .args(["check", "--quiet", "--message-format", "short"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_crate_outside_the_workspace_gets_the_typed_topic_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("outside-workspace");

    write_crate(dir.path(), "B");
    let (ok, stderr) = cargo_check(dir.path(), &target);
    assert!(!ok, "a `B` payload on a `Topic<A>` must not compile");
    assert!(
        stderr.contains("error[E0277]: the payload type `B` does not match topic `T_A`"),
        "the error names the constant and the types:\n{stderr}"
    );

    write_crate(dir.path(), "A");
    let (ok, stderr) = cargo_check(dir.path(), &target);
    assert!(ok, "an `A` payload on a `Topic<A>` compiles:\n{stderr}");
}
