//! Warm throughput: 8 clients on a cached 64 MiB blob, GB/s, against nginx
//! (sendfile) serving the same file in the same run. Target: >= 0.8x nginx.
//!
//! `cargo bench --bench warm`

use testkit::bench as support;
use testkit::tender;

use std::time::Instant;

use testkit::fake::registry_toml;
use testkit::rng::random_bytes;

const SIZE: usize = 64 << 20;
const CLIENTS: usize = 8;
const ROUNDS: usize = 12;

/// 8 client threads, each downloading the URL path ROUNDS times; GB/s.
fn throughput(addr: &str, path: &str) -> f64 {
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (a, p) = (addr.to_string(), path.to_string());
            std::thread::spawn(move || (0..ROUNDS).map(|_| tender::raw_get(&a, &p)).sum::<u64>())
        })
        .collect();
    let bytes: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(bytes, (SIZE * CLIENTS * ROUNDS) as u64);
    bytes as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let (_rt, fake) = support::fake_upstream();
    let digest = fake.put_blob(random_bytes(SIZE, 7));
    let tmp = testkit::process::TempDir::new("tender-bench-warm");
    let t = tender::TenderProcess::start(
        tmp.path(),
        &registry_toml("docker.io", true, &[&fake.url()]),
        "",
    );
    let path = format!("/v2/library/bench/blobs/{digest}");
    let addr = format!("127.0.0.1:{}", t.port);
    tender::raw_get(&addr, &path); // fill the cache
    assert_eq!(fake.blob_gets(), 1);

    let blob_file = tmp
        .path()
        .join("cache/blobs/sha256")
        .join(&digest[7..9])
        .join(&digest[7..]);
    // The commit (fsync, rename) may land just after the client's last byte.
    assert!(testkit::process::wait_until(
        std::time::Duration::from_secs(10),
        || blob_file.exists()
    ));
    let root = tmp.subdir("www");
    std::fs::copy(&blob_file, root.join("blob")).unwrap();
    let nport = testkit::process::free_port();
    let _nginx = support::Nginx::start(&tmp.subdir("nginx"), &root, nport);
    let naddr = format!("127.0.0.1:{nport}");
    tender::raw_get(&naddr, "/blob"); // warm up both page caches

    let mut results = Vec::new();
    for round in 0..2 {
        let n = throughput(&naddr, "/blob");
        let tw = throughput(&addr, &path);
        results.push((n, tw));
        support::report(
            "warm",
            &[
                ("round", round.to_string()),
                ("clients", CLIENTS.to_string()),
                ("nginx_gbps", format!("{n:.2}")),
                ("tender_gbps", format!("{tw:.2}")),
                ("ratio", format!("{:.2}x", tw / n)),
                (
                    "tender_peak_rss_mib",
                    format!("{:.1}", support::peak_rss(t.pid()) as f64 / 1048576.0),
                ),
            ],
        );
    }
    assert_eq!(fake.blob_gets(), 1, "warm reads must not go upstream");
}
