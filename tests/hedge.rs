//! Stalls cost little: a silent upstream is hedged, a body that stops is
//! resumed elsewhere within `progress_timeout`, and hedges are budgeted.
//! Counts, not timings: which upstream was asked what, and the metrics.
//! (benches/hedge.rs measures the time with real containerd.)

use std::time::Duration;

use testkit::daemon::Daemon;
use testkit::fake::{registry_toml, Fake, Fault};
use testkit::faulty::StallServer;
use testkit::http::fetch;
use testkit::rng::random_bytes;

fn blob_path(digest: &str) -> String {
    format!("/v2/library/app/blobs/{digest}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_first_upstream_is_hedged_and_the_hedge_wins() {
    let silent = StallServer::start();
    let good = Fake::start().await;
    let data = random_bytes(300_000, 1);
    let digest = good.put_blob(data.clone());
    // Long timeouts: without the hedge the request would wait 30 s.
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&silent.url(), &good.url()]),
        "header_timeout = \"30s\"",
    )
    .await;
    assert_eq!(fetch(d.url(&blob_path(&digest)), None).await.unwrap(), data);
    assert_eq!(good.blob_gets(), 1);
    assert_eq!(silent.accepted(), 1);
    let m = |o: &str| {
        d.metric(&format!(
            "tender_upstream_hedges_total{{outcome=\"{o}\",registry=\"docker.io\"}}"
        ))
    };
    assert_eq!((m("started"), m("won")), (1.0, 1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_keeps_losing_to_hedges_is_skipped() {
    let silent = StallServer::start();
    let good = Fake::start().await;
    let blobs: Vec<Vec<u8>> = (0..8).map(|i| random_bytes(10_000, 10 + i)).collect();
    let digests: Vec<String> = blobs.iter().map(|b| good.put_blob(b.clone())).collect();
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&silent.url(), &good.url()]),
        "header_timeout = \"30s\"\nbreaker_failures = 3",
    )
    .await;
    for (dg, b) in digests.iter().zip(&blobs) {
        assert_eq!(&fetch(d.url(&blob_path(dg)), None).await.unwrap(), b);
    }
    // Three losses open its breaker: the other five go straight to the good one.
    assert_eq!(silent.accepted(), 3);
    assert_eq!(good.blob_gets(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedges_are_budgeted_when_the_whole_registry_is_slow() {
    let slow: Vec<Fake> = vec![Fake::start().await, Fake::start().await];
    let blobs: Vec<Vec<u8>> = (0..50).map(|i| random_bytes(4_000, 100 + i)).collect();
    let mut digests = Vec::new();
    for f in &slow {
        f.set_fault(Fault {
            blob_delay: Some(Duration::from_millis(900)),
            ..Fault::default()
        });
        digests = blobs.iter().map(|b| f.put_blob(b.clone())).collect();
    }
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&slow[0].url(), &slow[1].url()]),
        "breaker_failures = 1000",
    )
    .await;
    let tasks: Vec<_> = digests
        .iter()
        .zip(&blobs)
        .map(|(dg, b)| {
            let (url, want) = (d.url(&blob_path(dg)), b.clone());
            tokio::spawn(async move { assert_eq!(fetch(url, None).await.unwrap(), want) })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let started =
        d.metric("tender_upstream_hedges_total{outcome=\"started\",registry=\"docker.io\"}");
    // 50 requests at once: the five saved-up hedges, not 50.
    assert!((1.0..=6.0).contains(&started), "{started} hedges");
    let asked = slow[0].blob_gets() + slow[1].blob_gets();
    assert_eq!(
        asked as f64,
        50.0 + started,
        "one request each, plus the hedges"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_is_resumed_elsewhere_within_the_progress_window() {
    let stops = Fake::start().await;
    let good = Fake::start().await;
    let data = random_bytes(2_000_000, 3);
    let digest = stops.put_blob(data.clone());
    good.put_blob(data.clone());
    stops.set_fault(Fault {
        chunk: Some(256 << 10),
        gate: true, // the first 256 KiB, then nothing, connection open
        ..Fault::default()
    });
    // A stall timeout of a minute: only the watchdog resumes early.
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&stops.url(), &good.url()]),
        "stall_timeout = \"60s\"\nprogress_timeout = \"1s\"",
    )
    .await;
    assert_eq!(fetch(d.url(&blob_path(&digest)), None).await.unwrap(), data);
    let resumed: Vec<_> = good
        .log()
        .into_iter()
        .filter(|l| l.path.contains("/blobs/"))
        .collect();
    assert_eq!(resumed.len(), 1);
    assert_eq!(
        resumed[0].range.as_deref(),
        Some("bytes=262144-"),
        "the bytes already received were kept"
    );
    let stalls = d.metric(&format!(
        "tender_upstream_stalls_total{{registry=\"docker.io\",upstream=\"{}\"}}",
        stops.url()
    ));
    assert_eq!(stalls, 1.0);
    stops.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nowhere_else_to_go_a_slow_body_is_waited_for() {
    let only = Fake::start().await;
    let data = random_bytes(1_000_000, 4);
    let digest = only.put_blob(data.clone());
    // 250 KB/s: gaps between chunks are longer than the progress window.
    only.set_fault(Fault {
        chunk: Some(256 << 10),
        chunk_delay: Some(Duration::from_millis(1200)),
        ..Fault::default()
    });
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&only.url()]),
        "progress_timeout = \"1s\"",
    )
    .await;
    assert_eq!(fetch(d.url(&blob_path(&digest)), None).await.unwrap(), data);
    assert_eq!(only.blob_gets(), 1, "not resumed: there was nowhere better");
}
