//! A service whose one handler never finishes, for the signal tests: the first SIGTERM /
//! SIGINT starts a drain that would take a minute; a second one must end the process
//! at once.

use std::time::Duration;

use transport::{App, Config};

/// Handles `slow.drain` by sleeping for an hour.
pub struct Stuck;

#[transport::service]
impl Stuck {
    #[subscriber(topic = "slow.drain")]
    async fn hang(&self, _n: u32) {
        println!("handling");
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), transport::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::stderr)
        .init();
    let mut config = Config::for_test();
    config.shutdown.drain_timeout = Duration::from_secs(60);
    // a second App on the same in-process broker feeds the service once it listens
    let feeder = App::new(config.clone()).select(|_| false).start().await?;
    tokio::spawn(async move {
        loop {
            // the in-process broker drops what nobody listens to yet: send until taken
            let _ = feeder.publisher().publish("slow.drain", &1).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    App::new(config).service(Stuck).run().await?;
    println!("stopped");
    Ok(())
}
