//! The saver example's service, tested in-process as the README's "Testing your service"
//! shows: `Config::for_test()` (a broker of this test's own), no broker to install.

#[allow(dead_code)] // the example's `main` is not called here
#[path = "../saver.rs"]
mod saver;

use std::time::Duration;

use transport::{App, Config};

#[tokio::test]
async fn a_report_is_saved_and_a_malformed_one_is_dead_lettered() -> Result<(), transport::Error> {
    let service = std::sync::Arc::new(saver::SaverService::default());
    let app = App::new(Config::for_test())
        .select_module(concat!(module_path!(), "::saver"))
        .service_arc(std::sync::Arc::clone(&service))
        .start()
        .await?;
    let dead = app.record("report.event.dlq").await?;
    app.publisher()
        .publish(
            "report.event",
            &saver::Report {
                id: 1,
                text: "disk 91% full".into(),
            },
        )
        .await?;
    app.publisher()
        .to("report.event")
        .send_bytes(&b"{\"id\": \"not a number\"}"[..])
        .await?;
    let letters = dead.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(service.saved(), 1, "the report is saved");
    assert_eq!(letters.len(), 1, "the malformed report is dead-lettered");
    assert_eq!(
        letters[0].headers.get("x-transport-error-kind"),
        Some("decode")
    );
    app.shutdown().await?;
    Ok(())
}
