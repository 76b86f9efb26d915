#![allow(unused)]
// `#` only as the whole last level
#[transport::subscriber(mqtt_filter = "/hfp/#/bus")]
async fn hash_inside(position: String) {}

// `+` only as a whole level
#[transport::subscriber(mqtt_filter = "/hfp/v2/bus+")]
async fn plus_inside(position: String) {}

// a shared subscription is what `group` declares
#[transport::subscriber(mqtt_filter = "$share/map/hfp/#")]
async fn shared(position: String) {}

// a topic name or a filter, not both
#[transport::subscriber(topic = "positions", mqtt_filter = "/hfp/#")]
async fn both(position: String) {}

// a literal, not an expression
#[transport::subscriber(mqtt_filter = concat!("/hfp", "/#"))]
async fn not_literal(position: String) {}

fn main() {}
