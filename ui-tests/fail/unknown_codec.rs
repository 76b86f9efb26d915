#![allow(unused)]
#[transport::subscriber(topic = "orders", codec = "xml")]
async fn on_order(order: String) {}

fn main() {}
