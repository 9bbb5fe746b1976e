//! Pinned images (`[prefetch] pinned`): kept out of the LRU however full the
//! cache gets, capped by `pinned_max_size` with a clear refusal, pinned again
//! from disk after a restart with every upstream down, and returned to the
//! LRU when removed from the config.

use std::time::Duration;

use serde_json::Value;
use testkit::daemon::Daemon;
use testkit::fake::{registry_toml, Fake};
use testkit::rng::random_bytes;

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `library/pause:3.10` as a multi-arch index whose node-platform manifest
/// has one `layer_size` layer (the other platform is never fetched).
/// Returns the blob digests of the node's platform (config and layer).
fn put_pause(fake: &Fake, layer_size: usize) -> Vec<String> {
    let (md, layers) = fake.put_image(
        "library/pause",
        "amd64-build",
        &[random_bytes(layer_size, 7)],
    );
    let (os, arch) = tender::oci::node_platform();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{INDEX}","manifests":[
          {{"mediaType":"{MANIFEST}","digest":"{md}","size":1,"platform":{{"os":"{os}","architecture":"{arch}"}}}},
          {{"mediaType":"{MANIFEST}","digest":"sha256:{}","size":1,"platform":{{"os":"linux","architecture":"mips"}}}}]}}"#,
        "0".repeat(64)
    );
    fake.put_manifest("library/pause", Some("3.10"), INDEX, index);
    let manifest = fake.manifest_body("library/pause", &md).unwrap();
    let config: Value = serde_json::from_slice(&manifest).unwrap();
    let mut blobs = vec![config["config"]["digest"].as_str().unwrap().to_string()];
    blobs.extend(layers);
    blobs
}

fn prefetch_toml(pinned: &[&str], images: &[&str], pinned_max: &str) -> String {
    let list = |l: &[&str]| {
        l.iter()
            .map(|i| format!("\"{i}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[prefetch]\npinned = [{}]\nimages = [{}]\npinned_max_size = \"{pinned_max}\"\ninterval = \"1h\"\n",
        list(pinned),
        list(images)
    )
}

/// Starts tender on `dir` with `cache_max_size` and a `[prefetch]` section.
async fn start(dir: std::path::PathBuf, upstream: &str, cache_max: &str, prefetch: &str) -> Daemon {
    Daemon::start_in(
        dir,
        &format!(
            "{prefetch}\n{}",
            registry_toml("docker.io", true, &[upstream])
        ),
        &format!("cache_max_size = \"{cache_max}\""),
    )
    .await
}

async fn report(d: &Daemon) -> Value {
    let r = d.get("/pinned").await;
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// Waits until `image`'s entry in `/pinned` satisfies `ok`; returns it.
async fn wait_for(d: &Daemon, image: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = report(d).await;
        let entry = r["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["image"] == image)
            .cloned()
            .unwrap_or(Value::Null);
        if ok(&entry) {
            return entry;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{image} never got there: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pulls `n` distinct 100 KiB images (manifest and blobs) through tender,
/// from registry `ns` (the default one if `None`).
async fn fill(d: &Daemon, fake: &Fake, n: u64, seed: u64, ns: Option<&str>) {
    let query = ns.map(|n| format!("?ns={n}")).unwrap_or_default();
    for i in 0..n {
        let repo = format!("library/app{seed}-{i}");
        let data = random_bytes(100 * 1024, seed * 1000 + i);
        let (_, layers) = fake.put_image(&repo, "v1", &[data]);
        let r = d
            .get_with(
                &format!("/v2/{repo}/manifests/v1{query}"),
                &[("accept", MANIFEST)],
            )
            .await;
        assert_eq!(r.status(), 200);
        for l in layers {
            let r = d.get(&format!("/v2/{repo}/blobs/{l}{query}")).await;
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
    }
}

const PAUSE: &str = "docker.io/library/pause:3.10";
const WARM: &str = "docker.io/library/warm:v1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_images_survive_lru_pressure_and_unpinned_prefetches_do_not() {
    let fake = Fake::start().await;
    let pause = put_pause(&fake, 300 * 1024);
    let (_, warm) = fake.put_image("library/warm", "v1", &[random_bytes(300 * 1024, 8)]);
    let tmp = testkit::process::TempDir::new("tender-pinned");
    let d = start(
        tmp.subdir("cache"),
        &fake.url(),
        "2MiB",
        &prefetch_toml(&[PAUSE], &[WARM], "1MiB"),
    )
    .await;
    let entry = wait_for(&d, PAUSE, |e| e["complete"] == true && e["pinned"] == true).await;
    // Tag record, index, platform manifest, config, layer.
    assert_eq!(entry["objects"], 5, "{entry}");
    assert!(testkit::process::wait_until(
        Duration::from_secs(10),
        || { warm.iter().all(|l| d.has_blob(l)) }
    ));
    assert_eq!(d.metric("tender_pinned_images{state=\"complete\"}"), 1.0);
    let pinned_bytes = d.metric("tender_cache_pinned_bytes");
    assert!(pinned_bytes >= 300.0 * 1024.0, "{pinned_bytes}");

    // 3 MiB of other images through a 2 MiB cache.
    fill(&d, &fake, 30, 1, None).await;
    assert!(d.metric("tender_cache_evictions_total") > 0.0);
    for b in &pause {
        assert!(d.has_blob(b), "pinned blob {b} was evicted");
    }
    assert!(
        !warm.iter().all(|l| d.has_blob(l)),
        "the unpinned prefetched image left by the LRU"
    );
    let entry = wait_for(&d, PAUSE, |e| e["complete"] == true).await;
    assert_eq!(entry["objects_stored"], 5, "{entry}");
    assert_eq!(d.metric("tender_cache_pinned_bytes"), pinned_bytes);

    // The other platform was never fetched.
    assert_eq!(fake.count("GET", &"0".repeat(64)), 0);

    // `tender doctor` reads the same report from the running tender.
    let base = d.base.clone();
    let inputs = tokio::task::spawn_blocking(move || {
        let none = std::path::Path::new("/nonexistent/config.toml");
        tender::cli::doctor::gather(none, None, &["docker.io".to_string()], &base)
    })
    .await
    .unwrap();
    let findings = tender::cli::doctor::diagnose(&inputs);
    assert!(
        findings.iter().any(|f| f
            .what
            .contains("pinned image docker.io/library/pause:3.10 is complete on disk")),
        "{findings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_over_pinned_max_size_is_refused_with_a_clear_error() {
    let fake = Fake::start().await;
    let pause = put_pause(&fake, 300 * 1024);
    let tmp = testkit::process::TempDir::new("tender-pinned-cap");
    let d = start(
        tmp.subdir("cache"),
        &fake.url(),
        "4MiB",
        &prefetch_toml(&[PAUSE], &[], "200KiB"),
    )
    .await;
    let entry = wait_for(&d, PAUSE, |e| e["problem"].is_string()).await;
    let problem = entry["problem"].as_str().unwrap();
    assert!(
        problem.contains("pinned_max_size") && problem.contains("not pinned"),
        "{problem}"
    );
    assert_eq!(entry["pinned"], false);
    assert_eq!(d.metric("tender_cache_pinned_bytes"), 0.0);
    assert_eq!(d.metric("tender_pinned_images{state=\"not_pinned\"}"), 1.0);
    assert_eq!(d.metric("tender_pinned_images{state=\"complete\"}"), 0.0);
    // Still prefetched: it is in the cache, under the LRU (the last blob's
    // commit may trail its last byte to the client).
    assert!(testkit::process::wait_until(
        Duration::from_secs(10),
        || { pause.iter().all(|b| d.has_blob(b)) }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_every_upstream_down_pins_from_disk_and_a_reload_unpins() {
    let fake = Fake::start().await;
    let pause = put_pause(&fake, 300 * 1024);
    let tmp = testkit::process::TempDir::new("tender-pinned-restart");
    let prefetch = prefetch_toml(&[PAUSE], &[], "1MiB");
    let mut d = start(tmp.subdir("cache"), &fake.url(), "2MiB", &prefetch).await;
    wait_for(&d, PAUSE, |e| e["complete"] == true && e["pinned"] == true).await;
    d.stop().await;

    // Air-gapped from here on: docker.io's only upstream is a closed port.
    // Another registry fills the cache.
    let dead = "http://127.0.0.1:9";
    let other = Fake::start().await;
    let config = format!(
        "{prefetch}\n{}\n{}",
        registry_toml("docker.io", true, &[dead]),
        registry_toml("other.io", false, &[&other.url()])
    );
    let d = Daemon::start_in(tmp.subdir("cache"), &config, "cache_max_size = \"2MiB\"").await;
    wait_for(&d, PAUSE, |e| e["pinned"] == true && e["complete"] == true).await;
    fill(&d, &other, 30, 2, Some("other.io")).await;
    assert!(d.metric("tender_cache_evictions_total") > 0.0);
    assert!(
        pause.iter().all(|b| d.has_blob(b)),
        "pinned through the fill"
    );

    // Reload without the pin: its content is the LRU's again.
    let unpinned = format!(
        "listen = \"127.0.0.1:0\"\ncache_dir = \"{}\"\ncache_max_size = \"2MiB\"\n{}\n{}\n{}",
        tmp.subdir("cache").display(),
        prefetch_toml(&[], &[], "1MiB"),
        registry_toml("docker.io", true, &[dead]),
        registry_toml("other.io", false, &[&other.url()])
    );
    let config = tender::config::Config::parse(&unpinned, "test").unwrap();
    d.cache().reload(&config, d.api().metrics()).unwrap();
    assert_eq!(d.metric("tender_cache_pinned_bytes"), 0.0);
    assert_eq!(report(&d).await["images"].as_array().unwrap().len(), 0);
    for state in ["complete", "incomplete", "not_pinned"] {
        let sample = format!("tender_pinned_images{{state=\"{state}\"}}");
        assert_eq!(d.metric(&sample), 0.0, "{sample}");
    }
    fill(&d, &other, 30, 3, Some("other.io")).await;
    assert!(
        !pause.iter().all(|b| d.has_blob(b)),
        "unpinned content is evicted like any other"
    );
}
