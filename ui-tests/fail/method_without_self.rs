#![allow(unused)]
pub struct Billing;

#[transport::service]
impl Billing {
    #[subscriber(topic = "orders")]
    async fn on_order(order: String) {}
}

fn main() {}
