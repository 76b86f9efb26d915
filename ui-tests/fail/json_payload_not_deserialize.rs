#![allow(unused)]
pub struct Order {
    pub id: u64,
}

#[transport::subscriber(topic = "orders", codec = "json")]
async fn on_order(order: Order) {}

#[transport::subscriber(topic = "orders.v2", codec = "msgpack", group = "g")]
async fn on_order_v2(order: Order) {}

fn main() {}
