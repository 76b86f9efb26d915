#![allow(unused)]
#[transport::subscriber(topic = "orders", codec = "text")]
async fn on_order(order: u64) {}

#[transport::subscriber(topic = "refunds", codec = "bytes")]
async fn on_refund(refund: String) {}

fn main() {}
