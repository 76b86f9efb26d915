#![allow(unused)]
use serde::Deserialize;
use transport::Topic;

#[derive(Deserialize)]
pub struct A;
#[derive(Deserialize)]
pub struct B;

const T_A: Topic<A> = Topic::new("x");

#[transport::subscriber(topic = T_A)]
async fn on_a(v: B) -> Result<(), transport::Error> {
    Ok(())
}

fn main() {}
