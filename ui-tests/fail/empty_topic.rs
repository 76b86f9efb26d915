#![allow(unused)]
#[transport::subscriber(topic = "")]
async fn on_order(order: String) {}

#[transport::subscriber(topic = "orders", group = " ")]
async fn on_refund(refund: String) {}

fn main() {}
