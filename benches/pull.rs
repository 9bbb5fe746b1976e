//! Real containerd pulling a 256 MiB, 5-layer image: straight from the
//! upstream registry (distribution 2.8), through tender cold and warm, and
//! through distribution's proxy mode (the peer to beat) cold and warm. Each
//! pull uses a fresh containerd, so nothing comes from its own store.
//!
//! `cargo bench --bench pull` (needs containerd, ctr, docker-registry, skopeo)

use testkit::bench as support;
use testkit::tender;

use testkit::containerd::*;
use testkit::image::*;
use testkit::process::*;
use testkit::registry::*;

const MIB: u64 = 1 << 20;
const REF: &str = "docker.io/library/big:v1";

fn pull_via(tmp: &TempDir, name: &str, mirror: &str, fetch_only: bool) -> f64 {
    let hosts = tmp.subdir(&format!("hosts-{name}"));
    write_hosts_toml(&hosts, "docker.io", mirror, "https://127.0.0.1:9");
    let c = Containerd::start(&tmp.subdir(&format!("ctrd-{name}")));
    let d = if fetch_only {
        c.fetch(&hosts, REF, false)
    } else {
        c.pull(&hosts, REF, false)
    };
    d.unwrap_or_else(|e| panic!("{name}: {e}")).as_secs_f64()
}

fn main() {
    require_tools(&["containerd", "ctr", "docker-registry", "skopeo"]);
    let tmp = TempDir::new("tender-bench-pull");
    let img = make_oci_layout(
        &tmp.subdir("layout"),
        "v1",
        &[96 * MIB, 64 * MIB, 48 * MIB, 32 * MIB, 16 * MIB],
        3,
    );
    let reg = Registry::start(&tmp.subdir("registry"));
    skopeo_push(&img, &format!("{}/library/big:v1", reg.host()));
    let toml = format!("[[registry]]\nhost = \"docker.io\"\ndefault = true\n  [[registry.upstream]]\n  url = \"{}\"\n", reg.url());

    const RUNS: usize = 3;
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    for (mode, fetch_only) in [("pull", false), ("content_fetch", true)] {
        let (mut direct, mut t_cold, mut t_warm, mut p_cold, mut p_warm) =
            (vec![], vec![], vec![], vec![], vec![]);
        let (mut t_cold_gets, mut t_warm_gets, mut p_cold_gets, mut p_warm_gets) = (0, 0, 0, 0);
        for run in 0..RUNS {
            let tag = format!("{mode}-{run}");
            direct.push(pull_via(
                &tmp,
                &format!("direct-{tag}"),
                &reg.url(),
                fetch_only,
            ));
            let t = tender::TenderProcess::start(&tmp.subdir(&format!("tender-{tag}")), &toml, "");
            reg.clear_log();
            t_cold.push(pull_via(
                &tmp,
                &format!("tender-cold-{tag}"),
                &t.base(),
                fetch_only,
            ));
            t_cold_gets = reg.blob_gets();
            reg.clear_log();
            t_warm.push(pull_via(
                &tmp,
                &format!("tender-warm-{tag}"),
                &t.base(),
                fetch_only,
            ));
            t_warm_gets = reg.blob_gets();
            drop(t);
            let proxy = Registry::start_proxy(&tmp.subdir(&format!("proxy-{tag}")), &reg.url());
            reg.clear_log();
            p_cold.push(pull_via(
                &tmp,
                &format!("proxy-cold-{tag}"),
                &proxy.url(),
                fetch_only,
            ));
            p_cold_gets = reg.blob_gets();
            reg.clear_log();
            p_warm.push(pull_via(
                &tmp,
                &format!("proxy-warm-{tag}"),
                &proxy.url(),
                fetch_only,
            ));
            p_warm_gets = reg.blob_gets();
        }
        support::report(
            "containerd_256mib",
            &[
                ("mode", mode.into()),
                ("runs", RUNS.to_string()),
                ("direct_s", format!("{:.2}", median(direct))),
                ("tender_cold_s", format!("{:.2}", median(t_cold))),
                ("tender_warm_s", format!("{:.2}", median(t_warm))),
                ("tender_upstream_blob_gets_cold", t_cold_gets.to_string()),
                ("tender_upstream_blob_gets_warm", t_warm_gets.to_string()),
                ("registry_proxy_cold_s", format!("{:.2}", median(p_cold))),
                ("registry_proxy_warm_s", format!("{:.2}", median(p_warm))),
                (
                    "registry_proxy_upstream_blob_gets_cold",
                    p_cold_gets.to_string(),
                ),
                (
                    "registry_proxy_upstream_blob_gets_warm",
                    p_warm_gets.to_string(),
                ),
            ],
        );
    }
}
