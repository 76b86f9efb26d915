#![allow(unused)]
#[transport::subscriber(topic = "orders", queue = "billing")]
async fn on_order(order: String) {}

fn main() {}
