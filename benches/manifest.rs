//! Hot manifest by tag (within tag_ttl): requests per second and p99 with
//! 32 connections (wrk). Target: >= 20,000 req/s on 2 cores, p99 < 5 ms.
//! tender runs with its default per-request info logging (to a file).
//!
//! `cargo bench --bench manifest`

use testkit::bench as support;
use testkit::tender;

use testkit::fake::registry_toml;

fn main() {
    let (_rt, fake) = support::fake_upstream();
    fake.put_image("library/app", "v1", &[b"layer".to_vec()]);
    let tmp = testkit::process::TempDir::new("tender-bench-manifest");
    let t = tender::TenderProcess::start(
        tmp.path(),
        &registry_toml("docker.io", true, &[&fake.url()]),
        "tag_ttl = \"1h\"",
    );
    let url = t.url("/v2/library/app/manifests/v1?ns=docker.io");
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
    assert_eq!(testkit::http::http_get(&url).unwrap().status, 200);
    for round in 0..2 {
        let r = support::wrk(&url, 2, 32, 8, &[accept]);
        assert_eq!(r.non_2xx, 0, "{}", r.raw);
        support::report(
            "manifest_by_tag",
            &[
                ("round", round.to_string()),
                ("connections", "32".into()),
                ("req_per_sec", format!("{:.0}", r.requests_per_sec)),
                ("p50_ms", format!("{:.2}", r.p50_ms)),
                ("p99_ms", format!("{:.2}", r.p99_ms)),
                (
                    "tender_peak_rss_mib",
                    format!("{:.1}", support::peak_rss(t.pid()) as f64 / 1048576.0),
                ),
            ],
        );
    }
    assert_eq!(
        fake.count("GET", "/manifests/"),
        1,
        "hot path must not go upstream"
    );
}
