#![allow(unused)]
#[transport::subscriber(topic = 42)]
async fn on_order(order: String) {}

#[transport::subscriber(topic = "orders", group = billing)]
async fn on_refund(refund: String) {}

fn main() {}
