#![allow(unused)]
use transport::Context;

#[transport::subscriber(topic = "orders")]
async fn on_order(order: &str) {}

#[transport::subscriber(topic = "refunds")]
async fn on_refund(refund: String, ctx: Context) {}

fn main() {}
