//! Signals: a second SIGTERM / SIGINT during a drain ends the process at once.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn second_signal_exits_at_once(signal: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_slow_drain"))
        .env_remove("TRANSPORT_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the slow_drain binary was built by cargo test");
    let stdout = child.stdout.take().expect("piped");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = lines_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the handler started");
    assert_eq!(line, "handling");
    let pid = child.id().to_string();
    let kill = |signal: &str| {
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    };
    kill(signal);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the first signal starts a drain, which waits for the handler"
    );
    kill(signal);
    let deadline = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running 5 s after the second {signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(exit.code(), Some(130), "{exit:?}");
}

#[test]
fn a_second_sigterm_exits_at_once() {
    second_signal_exits_at_once("-TERM");
}

#[test]
fn a_second_sigint_exits_at_once() {
    second_signal_exits_at_once("-INT");
}
