#![allow(unused)]
use serde::Serialize;
use transport::{Publisher, Topic};

#[derive(Serialize)]
pub struct Reading {
    pub celsius: f64,
}
#[derive(Serialize)]
pub struct Order {
    pub id: u64,
}

pub const READINGS: Topic<Reading> = Topic::new("sensor.readings");

async fn produce(publisher: Publisher) -> Result<(), transport::PublishError> {
    // the builder keeps the topic's type: headers and key do not lose the check
    publisher
        .to(&READINGS)
        .header("site", "lab")
        .key("probe-7")
        .send(&Order { id: 1 })
        .await
}

fn main() {}
