#![allow(unused)]
#[transport::subscriber(topic = "orders")]
async fn on_order<T: serde::de::DeserializeOwned>(order: T) {}

fn main() {}
