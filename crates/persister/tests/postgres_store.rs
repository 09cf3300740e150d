//! The PostgreSQL store passes the same conformance suite as the SQLite store, against a real
//! PostgreSQL, in a database of its own.

#[tokio::test]
async fn postgres_store_conforms() {
    let Some(url) = tick_core::testenv::service("DATABASE_URL") else {
        return;
    };
    let db = format!("tickflow_test_{}", std::process::id());
    let test_url = persister::conformance::fresh_database(&url, &db).await;
    let admin = persister::postgres::connect(&url).await.unwrap();
    {
        persister::conformance::check_store_at(&test_url.parse().unwrap()).await;
        // The ticks landed in a daily partition created on demand.
        let c = persister::postgres::connect(&test_url).await.unwrap();
        let parts: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_inherits WHERE inhparent = 'ticks'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            parts >= 5,
            "partitions for today+3 and the test's day, got {parts}"
        );
    }
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}
