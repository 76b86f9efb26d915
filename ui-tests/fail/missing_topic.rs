#![allow(unused)]
#[transport::subscriber(group = "billing")]
async fn on_order(order: String) {}

#[transport::subscriber]
async fn on_refund(refund: String) {}

fn main() {}
