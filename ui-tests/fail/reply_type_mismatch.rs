#![allow(unused)]
use serde::{Deserialize, Serialize};
use transport::{Error, Topic};

#[derive(Deserialize)]
pub struct Request;
#[derive(Serialize)]
pub struct Summary;
#[derive(Serialize)]
pub struct Report;

pub const REQUESTS: Topic<Request> = Topic::new("requests");
pub const SUMMARIES: Topic<Summary> = Topic::new("summaries");

#[transport::subscriber(topic = REQUESTS, reply = SUMMARIES)]
async fn summarize(request: Request) -> Result<Report, Error> {
    Ok(Report)
}

fn main() {}
