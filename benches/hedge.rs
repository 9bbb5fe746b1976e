//! What a misbehaving first upstream costs a real containerd pull through
//! tender (default timeouts), against the same pull with a clean first
//! upstream. The first upstream is a TCP fault proxy in front of the real
//! registry (distribution 2.8); the second is the registry itself.
//!
//! - `clean`: the proxy passes everything;
//! - `silent`: it accepts and never answers (hedged after the hedge delay);
//! - `stall_mid_blob`: it sends the first 8 MiB of what the registry sends
//!   on a connection, then goes silent with the connection open (the 64 MiB
//!   layer stops mid-way; the watchdog resumes it elsewhere).
//!
//! Targets (issue 11): silent <= 1.5 s added to the pull, stall mid-blob
//! <= 1.5 s added; digests always right (containerd checks every one).
//!
//! `cargo bench --bench hedge` (needs containerd, ctr, docker-registry,
//! skopeo). `HEDGE_RUNS` (default 3) runs per scenario; medians.

use std::net::SocketAddr;

use testkit::bench::report;
use testkit::containerd::{write_hosts_toml, Containerd};
use testkit::fake::registry_toml;
use testkit::faulty::{FaultProxy, ProxyMode};
use testkit::image::{make_oci_layout, skopeo_push};
use testkit::process::{require_tools, TempDir};
use testkit::registry::Registry;
use testkit::tender::TenderProcess;

const MIB: u64 = 1 << 20;
const REF: &str = "docker.io/library/hedge:v1";

/// One cold pull through a fresh tender whose first upstream is a proxy in
/// `mode`: the pull's wall time, and tender's hedge and stall counts.
fn pull(tmp: &TempDir, name: &str, reg: &Registry, mode: ProxyMode) -> (f64, f64, f64) {
    let target: SocketAddr = reg.host().parse().unwrap();
    let proxy = FaultProxy::start(target, mode);
    let t = TenderProcess::start(
        &tmp.subdir(&format!("tender-{name}")),
        &registry_toml("docker.io", true, &[&proxy.url(), &reg.url()]),
        "",
    );
    let hosts = tmp.subdir(&format!("hosts-{name}"));
    write_hosts_toml(&hosts, "docker.io", &t.base(), "https://127.0.0.1:9");
    let c = Containerd::start(&tmp.subdir(&format!("ctrd-{name}")));
    let secs = c
        .fetch(&hosts, REF, false)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", t.log()))
        .as_secs_f64();
    let hedges = t.metric("tender_upstream_hedges_total{outcome=\"won\",registry=\"docker.io\"}");
    let stalls = t
        .metrics()
        .lines()
        .filter(|l| l.starts_with("tender_upstream_stalls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b);
    (secs, hedges, stalls)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    require_tools(&["containerd", "ctr", "docker-registry", "skopeo"]);
    let runs: usize = std::env::var("HEDGE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tmp = TempDir::new("tender-bench-hedge");
    let img = make_oci_layout(&tmp.subdir("layout"), "v1", &[64 * MIB, 2 * MIB, MIB], 11);
    let reg = Registry::start(&tmp.subdir("registry"));
    skopeo_push(&img, &format!("{}/library/hedge:v1", reg.host()));
    let scenarios = [
        ("clean", ProxyMode::Pass),
        ("silent", ProxyMode::Silent),
        ("stall_mid_blob", ProxyMode::StallAfter(8 * MIB)),
    ];
    let mut secs = vec![Vec::new(); scenarios.len()];
    let mut hedges = vec![0.0; scenarios.len()];
    let mut stalls = vec![0.0; scenarios.len()];
    for run in 0..runs {
        for (i, (name, mode)) in scenarios.iter().enumerate() {
            let dir = TempDir::new(&format!("thb-{name}-{run}"));
            let (s, h, st) = pull(&dir, name, &reg, *mode);
            eprintln!("run {run} {name}: {s:.2} s (hedges won {h}, stalls {st})");
            secs[i].push(s);
            hedges[i] += h;
            stalls[i] += st;
        }
    }
    let clean = median(secs[0].clone());
    for (i, (name, _)) in scenarios.iter().enumerate() {
        let s = median(secs[i].clone());
        report(
            "hedge_containerd_pull",
            &[
                ("scenario", name.to_string()),
                ("image_mib", "67".into()),
                ("runs", runs.to_string()),
                ("secs", format!("{s:.2}")),
                ("added_s", format!("{:.2}", s - clean)),
                ("hedges_won", format!("{:.0}", hedges[i])),
                ("stalls_resumed", format!("{:.0}", stalls[i])),
            ],
        );
    }
}
