//! Runnable examples live beside this crate (`cargo run --example quickstart`); this library
//! only helps the example tests find them.

use std::path::PathBuf;
use std::process::Command;

/// The path of example `name`, built for the profile of the running test binary.
///
/// `cargo test` builds a package's examples only when it runs all its targets, so the
/// example is (re)built here, with the same cargo, profile, features and target directory: a no-op
/// when it is up to date, and never a stale binary.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("no test binary path: {e}"));
    // <target>/<profile>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()));
    let binary = profile_dir.join("examples").join(name);
    {
        let target_dir = profile_dir.parent().unwrap_or(profile_dir);
        let mut build = Command::new(env!("CARGO"));
        build
            .args([
                "build",
                "--quiet",
                "-p",
                "transport-examples",
                "--example",
                name,
            ])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        // the features this test was built with (else the example loses its Kafka)
        if cfg!(feature = "kafka") {
            build.args(["--features", "kafka"]);
        }
        let status = build
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo: {e}"));
        assert!(status.success(), "building example `{name}` failed");
    }
    binary
}

/// The body of `GET path` from the HTTP server at `address` (`host:port`), which must
/// answer 200: for the tests of the examples' HTTP sides.
pub fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)
        .unwrap_or_else(|e| panic!("connect to {address}: {e}"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("request {path}: {e}"));
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|e| panic!("response to {path}: {e}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{path}: {head}");
    body.to_string()
}

/// The node_modules holding playwright-core, if the browser tests can run here (Chromium,
/// node and playwright-core present); else `None` after saying why, or a panic when
/// `BROWSER_TEST_REQUIRED=1` (set by `scripts/test` once `scripts/browser` installed them).
pub fn browser_tools() -> Option<PathBuf> {
    fn find() -> Result<PathBuf, String> {
        let modules = match std::env::var_os("PLAYWRIGHT_MODULES") {
            Some(path) => PathBuf::from(path),
            None => PathBuf::from(std::env::var_os("HOME").ok_or("no HOME")?)
                .join(".cache/transport-browser/node_modules"),
        };
        if !modules.join("playwright-core").exists() {
            return Err(format!("no playwright-core in {}", modules.display()));
        }
        if !std::path::Path::new("/usr/bin/chromium").exists() {
            return Err("no /usr/bin/chromium".to_string());
        }
        match Command::new("node").arg("--version").output() {
            Ok(output) if output.status.success() => Ok(modules),
            _ => Err("no node".to_string()),
        }
    }
    find().map_or_else(|reason| skip(&reason), Some)
}

/// Leaflet's `dist` directory for the realtime map's page, if `npm ci` put it there.
pub fn leaflet() -> Option<PathBuf> {
    let dist =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("realtimemap/web/node_modules/leaflet/dist");
    if dist.join("leaflet.js").exists() {
        Some(dist)
    } else {
        skip(&format!("no Leaflet in {}", dist.display()))
    }
}

fn skip<T>(reason: &str) -> Option<T> {
    assert!(
        std::env::var("BROWSER_TEST_REQUIRED").as_deref() != Ok("1"),
        "{reason} (scripts/browser installs it), and BROWSER_TEST_REQUIRED=1"
    );
    eprintln!("skipped: {reason} (scripts/browser installs it)");
    None
}
