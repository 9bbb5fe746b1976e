//! Index rebuild at start: 100,000 cached objects must index in under 2 s.
//!
//! `cargo bench --bench index`

use testkit::bench as support;

use std::sync::Arc;
use std::time::Instant;

use tender::metrics::Metrics;
use tender::oci::Digest;
use tender::store::Store;

const OBJECTS: usize = 100_000;

fn main() {
    let dir = std::env::temp_dir().join(format!("tender-bench-index-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    {
        let s = Store::open(&dir, u64::MAX, Arc::new(Metrics::new())).unwrap();
        let start = Instant::now();
        for i in 0..OBJECTS {
            let body = format!("object {i}");
            let d = Digest::of(body.as_bytes());
            let p = s.path(tender::store::Kind::Blob, &d);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        eprintln!(
            "created {OBJECTS} objects in {:.1}s",
            start.elapsed().as_secs_f64()
        );
    }
    for (label, drop_caches) in [("warm_dentries", false), ("cold_dentries", true)] {
        if drop_caches {
            // Needs root; otherwise this run is as warm as the first.
            let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
        }
        let s = Store::open(&dir, u64::MAX, Arc::new(Metrics::new())).unwrap();
        let start = Instant::now();
        let n = s.rebuild_index().unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(n, OBJECTS);
        support::report(
            "index_rebuild",
            &[
                ("case", label.into()),
                ("objects", n.to_string()),
                ("seconds", format!("{secs:.3}")),
            ],
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
