//! Typed topics from another module: subscriber, typed reply, typed publish from a
//! handler's context, and a topic with its own codec.
mod topics {
    use serde::{Deserialize, Serialize};
    use transport::Topic;
    use transport::codec::MsgPack;

    #[derive(Serialize, Deserialize)]
    pub struct Reading {
        pub celsius: f64,
    }
    #[derive(Serialize, Deserialize)]
    pub struct Alert {
        pub message: String,
    }

    pub const READINGS: Topic<Reading> = Topic::new("sensor.readings");
    pub const ALERTS: Topic<Alert> = Topic::new("sensor.alerts");
    pub const COMPACT: Topic<Reading, MsgPack> = Topic::new("sensor.compact").with_codec::<MsgPack>();
}

use topics::{Alert, Reading};
use transport::prelude::*;

pub struct Monitor;

#[transport::service]
impl Monitor {
    #[subscriber(topic = topics::READINGS, group = "monitor", reply = topics::ALERTS)]
    async fn check(&self, reading: Reading) -> Result<Alert, Error> {
        Ok(Alert { message: format!("{} °C", reading.celsius) })
    }

    #[subscriber(topic = topics::COMPACT, codec = "msgpack")]
    async fn compact(&self, reading: Reading, ctx: &Context) -> Result<(), Error> {
        ctx.publisher().send(&topics::READINGS, &reading).await?;
        Ok(())
    }
}

#[transport::subscriber(topic = topics::ALERTS)]
async fn on_alert(alert: Alert) {
    let _ = alert.message;
}

fn main() {
    let all = transport::registry::registrations();
    let check = all.iter().find(|r| r.name == "Monitor::check").expect("registered");
    assert_eq!(check.topic, "sensor.readings");
    assert_eq!(check.topic_const, Some("topics::READINGS"));
    assert_eq!(check.reply, Some("sensor.alerts"));
    assert_eq!(check.reply_type, Some("Alert"));
    let compact = all.iter().find(|r| r.name == "Monitor::compact").expect("registered");
    assert_eq!(compact.codec, "msgpack");
}
