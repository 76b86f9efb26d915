//! The saver example's service, tested in-process as the README's "Testing your service"
//! shows (`Config::for_test()`: a broker of this test's own), against the PostgreSQL the
//! tests run with (`scripts/brokers up`: 127.0.0.1:5432, database `test`), in a schema of
//! its own.

#[allow(dead_code)] // the example's `main` is not called here
#[path = "../saver/service.rs"]
mod service;
#[allow(dead_code)]
#[path = "../saver/store.rs"]
mod store;

use std::time::Duration;

use service::{EVENTS, READINGS, Report, SaverService, SensorData, USERS, UserReport};
use transport::{App, Config};

/// A pool on the test database, in a fresh schema.
async fn fresh_store() -> (deadpool_postgres::Pool, String) {
    let schema = format!(
        "saver_test_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let url = std::env::var("SAVER_DATABASE_URL").unwrap_or_else(|_| store::DEFAULT_URL.into());
    let pool = store::pool(&url, &schema).unwrap_or_else(|e| panic!("{e}"));
    store::migrate(&pool, &schema)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} (scripts/brokers up starts it): {e}"));
    (pool, schema)
}

async fn drop_schema(pool: &deadpool_postgres::Pool, schema: &str) {
    if let Ok(client) = pool.get().await {
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await;
    }
}

/// Polls the row counts until `done` holds them (or a while has passed).
async fn counts_until(
    pool: &deadpool_postgres::Pool,
    done: impl Fn(&store::Counts) -> bool,
) -> store::Counts {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let counts = store::counts(pool).await.unwrap_or_else(|e| panic!("{e}"));
        if done(&counts) || std::time::Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reports_land_in_postgres_once_and_a_malformed_one_is_dead_lettered()
-> Result<(), transport::Error> {
    let (pool, schema) = fresh_store().await;
    let app = App::new(Config::for_test())
        .select_module(concat!(module_path!(), "::service"))
        .service(SaverService::new(pool.clone()))
        .start()
        .await?;
    let dead = app.record("report.event.dlq").await?;
    let publisher = app.publisher();
    publisher
        .send(
            &EVENTS,
            &Report {
                id: 1,
                text: "disk 91% full".into(),
            },
        )
        .await?;
    // the same message twice (a redelivery): one row
    for _ in 0..2 {
        publisher
            .to(&USERS)
            .id("user-report-7")
            .send(&UserReport {
                user_id: 7,
                status: "online".into(),
            })
            .await?;
    }
    let readings: Vec<SensorData> = [(0, 20.0), (30_000, 22.0), (61_000, 30.0)]
        .into_iter()
        .map(|(offset, temperature)| SensorData {
            sensor_id: "s1".into(),
            ts_millis: 1_700_000_000_000 + offset,
            temperature,
            humidity: 50.0,
        })
        .collect();
    for _ in 0..2 {
        publisher
            .to(&READINGS)
            .id("batch-1")
            .send(&readings)
            .await?;
    }
    publisher
        .to("report.event")
        .send_bytes(&b"{\"id\": \"not a number\"}"[..])
        .await?;

    let letters = dead.wait_for(1, Duration::from_secs(10)).await;
    let counts = counts_until(&pool, |c| {
        c.report_events == 1 && c.user_reports == 1 && c.sensor_data == 3
    })
    .await;
    assert_eq!(
        counts,
        store::Counts {
            report_events: 1,
            user_reports: 1,
            sensor_data: 3
        }
    );
    assert_eq!(letters.len(), 1, "the malformed report is dead-lettered");
    assert_eq!(
        letters[0].headers.get("x-transport-error-kind"),
        Some("decode")
    );
    // the read side: one-minute buckets (1_700_000_000 s is 20 s into its minute)
    let averages = store::averages(&pool, 60)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(averages.len(), 2, "{averages:?}");
    assert_eq!((averages[0].readings, averages[0].temperature), (2, 21.0));
    assert_eq!((averages[1].readings, averages[1].temperature), (1, 30.0));
    app.shutdown().await?;
    drop_schema(&pool, &schema).await;
    Ok(())
}

#[tokio::test]
async fn a_second_insert_with_the_same_key_adds_nothing_and_is_no_error() {
    let (pool, schema) = fresh_store().await;
    let report = Report {
        id: 9,
        text: "again".into(),
    };
    let user = UserReport {
        user_id: 9,
        status: "away".into(),
    };
    let readings = vec![SensorData {
        sensor_id: "s9".into(),
        ts_millis: 1_700_000_000_000,
        temperature: 1.0,
        humidity: 2.0,
    }];
    // a redelivery is a success that writes nothing (not an error the handler would retry)
    for (attempt, new) in [(1, true), (2, false)] {
        let event = store::insert_event(&pool, "k", &report).await;
        assert_eq!(event.ok(), Some(new), "event, attempt {attempt}");
        let status = store::insert_user(&pool, "k", &user).await;
        assert_eq!(status.ok(), Some(new), "user, attempt {attempt}");
        let batch = store::insert_readings(&pool, "k", &readings).await;
        assert_eq!(
            batch.ok(),
            Some(u64::from(new)),
            "readings, attempt {attempt}"
        );
    }
    drop_schema(&pool, &schema).await;
}
