//! The deployable example stops gracefully on SIGTERM and SIGINT, and answers the
//! introspection commands through `App::run`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn saver() -> Command {
    let mut command = Command::new(transport_examples::example_binary("saver"));
    command
        .env_remove("TRANSPORT_CONFIG")
        // the read side on a free port: two of these tests may run at once
        .env("SAVER_HTTP", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    command
}

fn stops_on(signal: &str) {
    let mut child = saver()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the saver example was built by cargo test");
    let stdout = child.stdout.take().expect("piped");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let line = lines_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("never subscribed: {seen:?}"));
        let subscribed = line.contains("subscribed");
        seen.push(line);
        if subscribed {
            break;
        }
    }
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "still running after {signal}");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(100));
    let rest: Vec<String> = lines_rx.try_iter().collect();
    assert!(
        exit.success(),
        "exit status after {signal}: {exit:?}; before: {seen:?}; after: {rest:?}"
    );
    assert!(
        rest.iter().any(|l| l.contains("shutting down"))
            && rest.iter().any(|l| l.contains("stopped")),
        "logs after {signal}: {rest:?}"
    );
}

#[test]
fn sigterm_drains_and_exits_zero() {
    stops_on("-TERM");
}

#[test]
fn sigint_drains_and_exits_zero() {
    stops_on("-INT");
}

#[test]
fn list_prints_the_subscribers_instead_of_consuming() {
    let output = saver().arg("list").output().expect("runs");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("SaverService"))
        .map(|row| row.split_whitespace().take(6).collect())
        .collect();
    assert_eq!(
        rows,
        [
            [
                "SaverService",
                "save_event",
                "report.event",
                "saver",
                "json",
                "Report"
            ],
            [
                "SaverService",
                "save_readings",
                "sensor.batch",
                "saver",
                "json",
                "Vec<SensorData>"
            ],
            [
                "SaverService",
                "save_user",
                "report.user",
                "saver",
                "json",
                "UserReport"
            ],
        ],
        "{stdout}"
    );
}
