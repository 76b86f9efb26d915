#![allow(unused)]
#[transport::subscriber(topic = "orders")]
async fn on_order(order: String, customer: String) {}

fn main() {}
