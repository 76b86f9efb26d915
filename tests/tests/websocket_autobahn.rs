//! Autobahn's fuzzing client against the WebSocket server (an echo through its
//! fallback handler): every case must end OK, NON-STRICT, INFORMATIONAL or
//! UNIMPLEMENTED, and so must every close. `scripts/autobahn` installs the suite (it
//! needs Python 2.7); where it is absent this test says why and passes, unless
//! `AUTOBAHN_REQUIRED=1` (set by `scripts/test` once the install worked).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use transport::ws::{RawFrame, Session, WsConfig, WsServer};

/// Where `scripts/autobahn` puts its `wstest` wrapper.
fn wstest() -> Option<PathBuf> {
    let path = match std::env::var_os("AUTOBAHN_WSTEST") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/transport-autobahn/wstest"),
    };
    path.exists().then_some(path)
}

/// The results Autobahn accepts as a pass.
const PASSING: [&str; 4] = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_fuzzing_client_finds_every_case_passing() {
    let Some(wstest) = wstest() else {
        let reason = "Autobahn's wstest is not installed (scripts/autobahn installs it where Python 2.7 exists)";
        assert!(
            std::env::var("AUTOBAHN_REQUIRED").as_deref() != Ok("1"),
            "{reason}, and AUTOBAHN_REQUIRED=1"
        );
        eprintln!("skipped: {reason}");
        return;
    };
    let server = WsServer::<()>::builder(WsConfig {
        // the suite sends messages up to 16 MiB, and from no particular origin
        max_message_bytes: 64 << 20,
        allowed_origins: vec!["*".into()],
        outbox: 4096,
        ..WsConfig::default()
    })
    .fallback(|frame: RawFrame, session: Session<()>| async move { session.send_raw(frame) })
    .build()
    .unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve(listener).await }
    });

    let work = tempfile::tempdir().unwrap();
    let reports = work.path().join("reports");
    let spec = serde_json::json!({
        "outdir": reports,
        "servers": [{ "agent": "transport", "url": format!("ws://{address}/ws") }],
        "cases": ["*"],
        "exclude-cases": [],
        "exclude-agent-cases": {}
    });
    let spec_path = work.path().join("fuzzingclient.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let run = tokio::process::Command::new(&wstest)
        .args(["-m", "fuzzingclient", "-s"])
        .arg(&spec_path)
        .current_dir(work.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20 * 60), run)
        .await
        .unwrap_or_else(|_| panic!("wstest did not finish within 20 minutes"))
        .unwrap_or_else(|e| panic!("running {}: {e}", wstest.display()));
    assert!(
        output.status.success(),
        "wstest failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(reports.join("index.json")).unwrap_or_else(|e| panic!("index.json: {e}")),
    )
    .unwrap();
    let cases = index["transport"]
        .as_object()
        .unwrap_or_else(|| panic!("no results for the agent: {index}"));
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut failing = Vec::new();
    for (case, result) in cases {
        let behavior = result["behavior"].as_str().unwrap_or("?");
        let close = result["behaviorClose"].as_str().unwrap_or("?");
        *counts.entry(behavior.to_string()).or_default() += 1;
        if !PASSING.contains(&behavior) || !PASSING.contains(&close) {
            failing.push(format!("{case}: {behavior} (close: {close})"));
        }
    }
    println!("autobahn: {} cases: {counts:?}", cases.len());
    assert!(cases.len() > 300, "only {} cases ran", cases.len());
    assert!(failing.is_empty(), "failing cases:\n{}", failing.join("\n"));
    server.shutdown().await;
    let _ = serving.await;
}
