#![allow(unused)]
#[derive(serde::Deserialize)]
pub struct Order {
    pub id: u64,
}

#[transport::subscriber(topic = "orders", codec = "protobuf")]
async fn on_order(order: Order) {}

fn main() {}
