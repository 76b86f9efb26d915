#![allow(unused)]
#[transport::subscriber(topic = "orders")]
fn on_order(order: String) {}

fn main() {}
