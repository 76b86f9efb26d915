#![allow(unused)]
pub struct Billing;

#[transport::service]
impl Billing {
    #[subscriber(topic = "orders")]
    async fn on_order(&mut self, order: String) {}

    #[subscriber(topic = "refunds")]
    async fn on_refund(self, refund: String) {}
}

fn main() {}
