#![allow(unused)]
use transport::Context;

#[transport::subscriber(topic = "orders")]
async fn on_order() {}

#[transport::subscriber(topic = "refunds")]
async fn on_refund(ctx: &Context) {}

fn main() {}
