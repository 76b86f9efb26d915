//! Free-function subscribers in every supported shape.
use serde::Deserialize;
use transport::{Context, Error};

#[derive(Deserialize)]
pub struct Order {
    pub id: u64,
}

#[transport::subscriber(topic = "orders")]
async fn unit(order: Order) {
    let _ = order.id;
}

#[transport::subscriber(topic = "orders", group = "a")]
async fn with_context(order: Order, ctx: &Context) -> Result<(), Error> {
    let _ = (order.id, ctx.topic());
    Ok(())
}

#[transport::subscriber(topic = "orders", group = "b")]
async fn context_first(ctx: &transport::Context, order: Order) {
    let _ = (order.id, ctx.attempt());
}

#[transport::subscriber(topic = "orders", group = "c")]
async fn boxed_error(order: Order) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let _: u32 = "7".parse()?;
    let _ = order.id;
    Ok(())
}

#[transport::subscriber(topic = "orders", group = "d")]
async fn publish_error(order: Order, ctx: &Context) -> Result<(), transport::PublishError> {
    ctx.publisher().publish("audit", &order.id).await
}

#[transport::subscriber(topic = "orders.request", reply = "orders.reply")]
async fn reply(order: Order) -> Result<u64, Error> {
    Ok(order.id)
}

fn main() {
    let names: Vec<&str> = transport::registry::registrations().iter().map(|r| r.name).collect();
    assert_eq!(names, ["boxed_error", "context_first", "publish_error", "reply", "unit", "with_context"]);
}
