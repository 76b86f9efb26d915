#![allow(unused)]
use serde::Deserialize;
use transport::Topic;
use transport::codec::MsgPack;

#[derive(Deserialize)]
pub struct Reading;

pub const READINGS: Topic<Reading, MsgPack> = Topic::new("sensor.readings").with_codec::<MsgPack>();

#[transport::subscriber(topic = READINGS, codec = "json")]
async fn on_reading(reading: Reading) {}

fn main() {}
