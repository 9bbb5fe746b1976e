//! N = 1, 8, 16, 32 concurrent clients on one uncached 64 MiB blob from an
//! upstream paced to ~1 Gbit/s: upstream GETs (must be 1) and total time
//! against one client's time (target: within 1.3x).
//!
//! `cargo bench --bench coalesce`

use testkit::bench as support;
use testkit::tender;

use std::time::Instant;

use testkit::fake::{registry_toml, Fake, Fault};
use testkit::rng::random_bytes;

const SIZE: usize = 64 << 20;
const RATE: u64 = 125_000_000; // ~1 Gbit/s

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let fake = Fake::start().await;
        let data = random_bytes(SIZE, 42);
        let digest = fake.put_blob(data);
        fake.set_fault(Fault {
            rate: Some(RATE),
            chunk: Some(64 << 10),
            ..Fault::default()
        });
        let mut base = None;
        for n in [1usize, 8, 16, 32] {
            let tmp = testkit::process::TempDir::new("tender-bench-coalesce");
            let toml = registry_toml("docker.io", true, &[&fake.url()]);
            let t =
                tokio::task::block_in_place(|| tender::TenderProcess::start(tmp.path(), &toml, ""));
            fake.clear_log();
            let path = format!("/v2/library/bench/blobs/{digest}");
            let addr = format!("127.0.0.1:{}", t.port);
            let start = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (a, p) = (addr.clone(), path.clone());
                    std::thread::spawn(move || tender::raw_get(&a, &p))
                })
                .collect();
            for task in tasks {
                let got = tokio::task::block_in_place(|| task.join().unwrap());
                assert_eq!(got, SIZE as u64);
            }
            let secs = start.elapsed().as_secs_f64();
            let one = *base.get_or_insert(secs);
            support::report(
                "coalesce",
                &[
                    ("clients", n.to_string()),
                    ("blob_mib", (SIZE >> 20).to_string()),
                    ("upstream_gets", fake.blob_gets().to_string()),
                    ("seconds", format!("{secs:.3}")),
                    ("vs_one_client", format!("{:.2}x", secs / one)),
                    (
                        "peak_rss_mib",
                        format!("{:.1}", support::peak_rss(t.pid()) as f64 / 1048576.0),
                    ),
                ],
            );
            assert_eq!(fake.blob_gets(), 1, "coalescing broken");
        }
    });
}
