#![allow(unused)]
#[transport::subscriber(topic = "orders", group = "a", topic = "orders.v2")]
async fn on_order(order: String) {}

fn main() {}
