//! An MQTT filter subscriber: registered with its filter, and runs on the in-process
//! broker (which matches filters itself), seeing each concrete topic.
use std::sync::Mutex;

use transport::prelude::*;

static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[derive(serde::Serialize, serde::Deserialize)]
struct Position {
    lat: f64,
}

#[transport::subscriber(mqtt_filter = "/hfp/v2/journey/+/vp/bus/#", group = "map")]
async fn position(_position: Position, ctx: &Context) {
    SEEN.lock().unwrap().push(ctx.topic().to_string());
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let registration = transport::registry::registrations()
        .into_iter()
        .find(|r| r.name == "position")
        .unwrap();
    assert!(registration.mqtt_filter);
    assert_eq!(registration.topic, "/hfp/v2/journey/+/vp/bus/#");
    let app = transport::App::new(transport::Config::for_test())
        .start()
        .await
        .unwrap();
    let topic = "/hfp/v2/journey/ongoing/vp/bus/0018/00423";
    app.publisher()
        .publish(topic, &Position { lat: 60.2 })
        .await
        .unwrap();
    for _ in 0..200 {
        if !SEEN.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(*SEEN.lock().unwrap(), [topic]);
    app.shutdown().await.unwrap();
}
