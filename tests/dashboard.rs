//! The admin dashboard's server side: `GET /` serves the page, `GET /history` the sampled
//! rates, read from the same counters as `/status`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::{header, StatusCode};

#[tokio::test]
async fn the_page_and_the_history_come_from_the_admin_listener() {
    let a = Backend::start("a").await;
    let (proxy, admin) = Proxy::start_with_admin(&pool_config("", "", &[&a])).await;

    let page = get(admin, "/", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    assert!(page.text().contains("/history"));
    assert_eq!(
        post(admin, "/history", &[]).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    // Traffic until a sample shows it as a rate (one sample every 2 s; bounded loop).
    let start = Instant::now();
    let mut sent = 0;
    let rate = loop {
        for _ in 0..5 {
            assert_eq!(get(proxy.addr, "/", &[]).await.status, StatusCode::OK);
            sent += 1;
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&get(admin, "/history", &[]).await.body).unwrap();
        assert_eq!(doc["capacity"], 450);
        assert_eq!(doc["interval_ms"], 2000);
        let pool = doc["pools"].as_object().unwrap().values().next().unwrap();
        let series = &pool["backends"]["a"];
        let n = doc["t"].as_array().unwrap().len();
        assert_eq!(series["requests_per_s"].as_array().unwrap().len(), n);
        assert_eq!(series["in_flight"].as_array().unwrap().len(), n);
        let last = series["requests_per_s"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find_map(|v| v.as_f64());
        if let Some(r) = last.filter(|r| *r > 0.0) {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no rate after {sent} requests"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Never more than what was sent, over one interval of about 2 s.
    assert!(rate <= f64::from(sent) / 1.9, "{rate}/s from {sent}");
}
