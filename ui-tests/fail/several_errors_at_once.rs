#![allow(unused)]
#[transport::subscriber(topik = "orders", codec = "yaml", group = "")]
fn on_order(order: String, extra: u32) {}

fn main() {}
