//! A real Prometheus (Debian's package) scrapes tender's `metrics_listen`
//! as the chart's ServiceMonitor would (job `tender-metrics`), pulls go
//! through tender, and the hit ratio and bytes saved are read back through
//! the Prometheus HTTP API, with the expressions the chart's dashboard uses.
//! (The alerts' firing conditions are unit-tested with `promtool test
//! rules` in scripts/check-deploy.)

use std::time::Duration;

use testkit::daemon::runtime;
use testkit::fake::{registry_toml, Fake};
use testkit::http::http_get;
use testkit::process::{free_port, wait_until, TempDir};
use testkit::prometheus::Prometheus;
use testkit::rng::random_bytes;
use testkit::tender::TenderProcess;

/// A dashboard query with Grafana's variables filled in.
fn panel_query(title: &str) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/tender/dashboards/tender.json"
    );
    let d: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let expr = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == title && p["type"] == "stat")
        .unwrap_or_else(|| panic!("no stat panel {title:?}"))["targets"][0]["expr"]
        .as_str()
        .unwrap()
        .to_string();
    expr.replace("$__range", "10m").replace("$instance", ".*")
}

#[test]
fn prometheus_scrapes_tender_and_reads_back_hit_ratio_and_bytes_saved() {
    let rt = runtime();
    let fake = rt.block_on(Fake::start());
    let data = random_bytes(500_000, 7);
    let digest = fake.put_blob(data.clone());
    let tmp = TempDir::new("tender-e2e-prom");
    let mport = free_port();
    let t = TenderProcess::start(
        &tmp.subdir("tender"),
        &registry_toml("docker.io", true, &[&fake.url()]),
        &format!("metrics_listen = \"127.0.0.1:{mport}\""),
    );
    let prom = Prometheus::start(
        &tmp.subdir("prometheus"),
        &[("tender-metrics", &format!("127.0.0.1:{mport}"))],
    );
    assert!(
        wait_until(Duration::from_secs(30), || prom
            .value("up{job=\"tender-metrics\"}")
            == Some(1.0)),
        "Prometheus scrapes tender"
    );
    // Scraped once before any pull, so the dashboard's increase() sees them all.
    std::thread::sleep(Duration::from_secs(2));
    let url = t.url(&format!("/v2/library/app/blobs/{digest}"));
    for _ in 0..4 {
        assert_eq!(http_get(&url).unwrap().body, data);
    }
    // One miss, then three hits (the fill commits before the second pull ends).
    let own = |sample: &str| t.metric(sample);
    let hits = own("tender_requests_total{kind=\"blob\",result=\"hit\"}");
    let all = hits
        + own("tender_requests_total{kind=\"blob\",result=\"miss\"}")
        + own("tender_requests_total{kind=\"blob\",result=\"coalesced\"}");
    assert_eq!(all, 4.0);
    let saved = own("tender_bytes_served_total{source=\"cache\"}");
    assert_eq!(saved, hits * data.len() as f64);
    assert!(
        wait_until(Duration::from_secs(30), || prom
            .value("sum(tender_requests_total{job=\"tender-metrics\"})")
            == Some(4.0)),
        "Prometheus saw the pulls"
    );
    let ratio = prom
        .value("sum(tender_requests_total{result=\"hit\"}) / sum(tender_requests_total)")
        .unwrap();
    assert_eq!(ratio, hits / all);
    assert_eq!(
        prom.value("sum(tender_bytes_served_total{source=\"cache\"})"),
        Some(saved)
    );
    // The dashboard's own stat panels compute the same from the scraped series.
    let hit_ratio = prom
        .value(&panel_query("Hit ratio"))
        .expect("the panel has a value");
    assert!(
        (hit_ratio - hits / all).abs() < 0.05,
        "{hit_ratio} vs {}",
        hits / all
    );
    let bytes_saved = prom
        .value(&panel_query("Bytes saved"))
        .expect("the panel has a value");
    assert!(
        (bytes_saved - saved).abs() <= saved * 0.2,
        "{bytes_saved} vs {saved} (increase() extrapolates)"
    );
}
