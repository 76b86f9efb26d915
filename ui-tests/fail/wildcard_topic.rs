#![allow(unused)]
#[transport::subscriber(topic = "orders.*")]
async fn on_order(order: String) {}

#[transport::subscriber(topic = "orders..created")]
async fn on_created(order: String) {}

#[transport::subscriber(topic = "orders", reply = "replies.#")]
async fn on_request(order: String) -> Result<String, transport::Error> {
    Ok(order)
}

fn main() {}
