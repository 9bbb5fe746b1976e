//! Peak RSS of tender serving 32 concurrent 256 MiB blobs: (a) 32 distinct
//! cached blobs, one client each; (b) 32 clients on one uncached blob
//! (coalesced fill). Target: under 64 MiB.
//!
//! `cargo bench --bench rss`

use testkit::bench as support;
use testkit::tender;

use std::io::Write;

use testkit::fake::registry_toml;
use testkit::rng::random_bytes;

const SIZE: usize = 256 << 20;
const CLIENTS: usize = 32;

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1048576.0)
}

/// Writes a 256 MiB blob straight into the store layout; returns its digest.
fn write_cached_blob(cache: &std::path::Path, block: &[u8], i: usize) -> String {
    let mut h = ::tender::oci::Hasher::new();
    let header = format!("blob {i}\n");
    let tmp = cache.join(format!("tmp-{i}"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
    f.write_all(header.as_bytes()).unwrap();
    h.update(header.as_bytes());
    let mut left = SIZE - header.len();
    while left > 0 {
        let n = left.min(block.len());
        f.write_all(&block[..n]).unwrap();
        h.update(&block[..n]);
        left -= n;
    }
    f.flush().unwrap();
    let d = h.finish();
    let dir = cache.join("blobs/sha256").join(&d.hex()[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::rename(&tmp, dir.join(d.hex())).unwrap();
    d.to_string()
}

fn main() {
    let (_rt, fake) = support::fake_upstream();
    let tmp = testkit::process::TempDir::new("tender-bench-rss");
    let cache = tmp.path().join("tender/cache");
    std::fs::create_dir_all(&cache).unwrap();
    let block = random_bytes(1 << 20, 99);
    let digests: Vec<String> = (0..CLIENTS)
        .map(|i| write_cached_blob(&cache, &block, i))
        .collect();
    let cold = fake.put_blob(random_bytes(SIZE, 5));

    let t = tender::TenderProcess::start(
        &tmp.path().join("tender"),
        &registry_toml("docker.io", true, &[&fake.url()]),
        "cache_max_size = \"20GiB\"",
    );
    let addr = format!("127.0.0.1:{}", t.port);
    let base_rss = support::current_rss(t.pid());

    let run = |paths: Vec<String>| {
        let threads: Vec<_> = paths
            .into_iter()
            .map(|p| {
                let a = addr.clone();
                std::thread::spawn(move || tender::raw_get(&a, &p))
            })
            .collect();
        for th in threads {
            assert_eq!(th.join().unwrap(), SIZE as u64);
        }
    };
    let start = std::time::Instant::now();
    run(digests
        .iter()
        .map(|d| format!("/v2/library/bench/blobs/{d}"))
        .collect());
    let warm_secs = start.elapsed().as_secs_f64();
    let warm_peak = support::peak_rss(t.pid());
    support::report(
        "rss_cached",
        &[
            ("clients", CLIENTS.to_string()),
            ("blob_mib", "256".into()),
            ("distinct_blobs", CLIENTS.to_string()),
            ("seconds", format!("{warm_secs:.2}")),
            ("idle_rss_mib", mib(base_rss)),
            ("peak_rss_mib", mib(warm_peak)),
        ],
    );
    let start = std::time::Instant::now();
    run((0..CLIENTS)
        .map(|_| format!("/v2/library/bench/blobs/{cold}"))
        .collect());
    let cold_secs = start.elapsed().as_secs_f64();
    support::report(
        "rss_coalesced_fill",
        &[
            ("clients", CLIENTS.to_string()),
            ("blob_mib", "256".into()),
            ("upstream_gets", fake.blob_gets().to_string()),
            ("seconds", format!("{cold_secs:.2}")),
            ("peak_rss_mib", mib(support::peak_rss(t.pid()))),
        ],
    );
    assert_eq!(fake.blob_gets(), 1);
}
