#![allow(unused)]
pub struct Billing;

impl Billing {
    #[transport::subscriber(topic = "orders")]
    async fn on_order(&self, order: String) {}
}

fn main() {}
