//! Downloading Dukascopy hours from a base URL (a local server over the fixture directory)
//! yields exactly what reading the directory yields; a missing hour (404) is an empty hour.

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::StatusCode;
use axum::routing::get;
use ingest::dukascopy::{DukascopySource, HOUR_NS, Location};
use ingest::source::TickSource;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/dukascopy")
}

async fn all(mut src: DukascopySource) -> Vec<tick_core::Tick> {
    let mut out = vec![];
    while src.next_batch(&mut out).await.unwrap() {}
    out
}

#[tokio::test]
async fn download_matches_the_directory() {
    let app = Router::new().route(
        "/{*path}",
        get(|UrlPath(path): UrlPath<String>| async move {
            std::fs::read(fixtures().join(path)).map_err(|_| StatusCode::NOT_FOUND)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // 2019-02-03T22:00Z .. 2019-02-04T03:00Z: two missing hours, then three real ones.
    let from = 1_549_238_400_000_000_000 - 2 * HOUR_NS;
    let to = from + 5 * HOUR_NS;
    let symbols = vec!["EURUSD".to_string()];
    let web = all(DukascopySource::new(
        Location::Url(format!("http://{addr}")),
        symbols.clone(),
        from,
        to,
    ))
    .await;
    let dir = all(DukascopySource::new(
        Location::Dir(fixtures()),
        symbols,
        from,
        to,
    ))
    .await;
    assert!(web.len() > 8_000, "{}", web.len());
    assert_eq!(web.len(), dir.len());
    for (w, d) in web.iter().zip(&dir) {
        assert_eq!(
            (&w.key, w.bid, w.ask, w.ts_event_ns),
            (&d.key, d.bid, d.ask, d.ts_event_ns)
        );
    }
}
