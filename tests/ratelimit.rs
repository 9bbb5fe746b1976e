//! The rate-limit economy: the pull quota an upstream states is exported,
//! revalidating an unchanged tag costs HEADs only (Docker Hub counts
//! manifest GETs as pulls), and a 429's `Retry-After` is honoured.

use std::time::Duration;

use testkit::daemon::Daemon;
use testkit::fake::{registry_toml, Fake, Fault};
use testkit::http::client;
use testkit::rng::random_bytes;

const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

async fn get_tag(d: &Daemon) -> u16 {
    client()
        .get(d.url("/v2/library/app/manifests/v1"))
        .header("accept", ACCEPT)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stated_quota_is_exported() {
    let fake = Fake::start().await;
    fake.put_image("library/app", "v1", &[random_bytes(100, 1)]);
    fake.set_fault(Fault {
        ratelimit: Some((100, 76)),
        ..Fault::default()
    });
    let d = Daemon::start(&registry_toml("docker.io", true, &[&fake.url()]), "").await;
    assert_eq!(get_tag(&d).await, 200);
    let labels = format!("{{registry=\"docker.io\",upstream=\"{}\"}}", fake.url());
    assert_eq!(
        d.metric(&format!("tender_upstream_ratelimit_limit{labels}")),
        100.0
    );
    assert_eq!(
        d.metric(&format!("tender_upstream_ratelimit_remaining{labels}")),
        76.0
    );
    assert_eq!(
        d.metric(&format!("tender_upstream_ratelimit_window_seconds{labels}")),
        21600.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidating_an_unchanged_tag_a_hundred_times_costs_no_manifest_get() {
    let fake = Fake::start().await;
    fake.put_image("library/app", "v1", &[random_bytes(100, 2)]);
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&fake.url()]),
        "tag_ttl = \"1ms\"",
    )
    .await;
    assert_eq!(get_tag(&d).await, 200);
    assert_eq!(fake.count("GET", "/manifests/"), 1);
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(3)).await;
        assert_eq!(get_tag(&d).await, 200);
    }
    assert_eq!(fake.count("GET", "/manifests/"), 1, "no pull counted");
    assert_eq!(
        fake.count("HEAD", "/manifests/"),
        100,
        "one HEAD per revalidation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_honoured_for_its_retry_after() {
    let fake = Fake::start().await;
    fake.put_image("library/app", "v1", &[random_bytes(100, 3)]);
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&fake.url()]),
        "tag_ttl = \"1ms\"",
    )
    .await;
    assert_eq!(get_tag(&d).await, 200);
    fake.set_fault(Fault {
        status: Some(429),
        retry_after: Some(2),
        ..Fault::default()
    });
    fake.clear_log();
    // The first revalidation meets the 429; the tag is served stale, and
    // nothing more is asked of the upstream until Retry-After has passed.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(3)).await;
        assert_eq!(get_tag(&d).await, 200, "the last known digest");
    }
    assert_eq!(fake.log().len(), 1, "{:?}", fake.log());
    fake.set_fault(Fault::default());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get_tag(&d).await, 200);
    assert_eq!(
        fake.count("HEAD", "/manifests/"),
        2,
        "asked again after Retry-After"
    );
}
