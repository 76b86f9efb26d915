//! Methods of a service, with and without context, unit and `Result` returns.
use std::sync::atomic::{AtomicU64, Ordering};

use transport::prelude::*;

#[derive(Default)]
pub struct Billing {
    total: AtomicU64,
}

#[transport::service]
impl Billing {
    /// Ordinary methods sit beside subscribers.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    #[subscriber(topic = "payments")]
    async fn add(&self, cents: u64) {
        self.total.fetch_add(cents, Ordering::Relaxed);
    }

    #[subscriber(topic = "refunds", group = "billing", codec = "json")]
    async fn refund(&self, cents: u64, ctx: &Context) -> Result<(), Error> {
        if ctx.attempt() > 3 {
            return Err(Error::msg("too many attempts"));
        }
        self.total.fetch_sub(cents, Ordering::Relaxed);
        Ok(())
    }

    #[subscriber(topic = "totals.request", reply = "totals.reply")]
    async fn report(&self, _request: String) -> Result<u64, Error> {
        Ok(self.total())
    }
}

fn main() {
    let all = transport::registry::registrations();
    let refund = all.iter().find(|r| r.name == "Billing::refund").expect("registered");
    assert_eq!(refund.topic, "refunds");
    assert_eq!(refund.group, Some("billing"));
    assert_eq!(refund.payload_type, "u64");
    assert!(refund.file.ends_with("service_methods.rs"));
    assert_eq!(Billing::default().total(), 0);
}
