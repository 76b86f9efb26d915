#![allow(unused)]
#[transport::subscriber(topic = "orders")]
async fn on_order(order: String) -> u32 {
    7
}

#[transport::subscriber(topic = "refunds")]
async fn on_refund(refund: String) -> Result<(), std::num::ParseIntError> {
    Ok(())
}

fn main() {}
