#![allow(unused)]
use serde::Deserialize;

#[derive(Deserialize)]
pub struct Reading;

pub const READINGS: &str = "sensor.readings";

#[transport::subscriber(topic = READINGS)]
async fn on_reading(reading: Reading) {}

fn main() {}
