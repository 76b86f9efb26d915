#![allow(unused)]
pub struct Billing;

#[transport::service]
impl Billing {
    #[subscriber(topic = "orders")]
    #[subscriber(topic = "refunds")]
    async fn on_event(&self, event: String) {}
}

fn main() {}
