//! The chatroom example in a real browser: its binary started as a user would, Chromium
//! pages driven by playwright-core (`browser/chatroom.cjs`): A sends, B in the same room
//! shows it as text (a `<script>` payload is not executed), C in another room never sees
//! it, A's rename is announced, D joining late is shown the room's history, closing A
//! fires the disconnect hook (B shows that A left); then SIGTERM stops the binary cleanly. `scripts/browser`
//! installs Chromium and playwright-core; where they are absent this test says why and
//! passes, unless `BROWSER_TEST_REQUIRED=1` (set by `scripts/test` once they installed).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use transport_examples::{browser_tools, example_binary};

#[test]
fn browsers_chat_in_rooms_safely_with_history_and_a_closed_page_is_announced() {
    let Some(modules) = browser_tools() else {
        return;
    };
    let mut chatroom = Command::new(example_binary("chatroom"))
        .env("TRANSPORT_WEBSOCKET__ADDRESS", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start the chatroom: {e}"));
    let mut lines = BufReader::new(chatroom.stdout.take().expect("its stdout")).lines();
    let first = lines
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("the chatroom printed nothing"));
    let url = first
        .strip_prefix("chatroom listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .to_string();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/chatroom.cjs");
    let browser = Command::new("node")
        .arg(&script)
        .arg(&url)
        .env("NODE_PATH", &modules)
        .output()
        .unwrap_or_else(|e| panic!("run node: {e}"));
    // stop the chatroom either way: SIGTERM, then its logs
    let _ = Command::new("kill")
        .args(["-TERM", &chatroom.id().to_string()])
        .status();
    let status = wait(&mut chatroom, Duration::from_secs(15));
    let mut logs = String::new();
    if let Some(mut stderr) = chatroom.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut logs);
    }
    assert!(
        browser.status.success(),
        "the browser test failed:\n{}\n{}\nchatroom logs:\n{logs}",
        String::from_utf8_lossy(&browser.stdout),
        String::from_utf8_lossy(&browser.stderr)
    );
    println!("{}", String::from_utf8_lossy(&browser.stdout).trim());
    assert!(
        logs.contains("joined") && logs.contains("left"),
        "hooks not logged:\n{logs}"
    );
    assert_eq!(
        status,
        Some(0),
        "the chatroom did not stop cleanly:\n{logs}"
    );
}

/// The exit code within `limit`, or `None` (then killed).
fn wait(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
