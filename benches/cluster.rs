//! The cluster tier on a cold rollout: four nodes pull a cold ~250 MB,
//! 6-layer image at the same moment over one shared ~1 Gbit/s upstream
//! link (the real registry in a network namespace behind a tbf-shaped
//! veth), each through its own tender and its own real containerd
//! (`ctr content fetch`). In the same run:
//!
//! - `one`: one node alone, cold: the yardstick;
//! - `standalone`: four nodes without the cluster tier;
//! - `peered`: four nodes with it;
//! - `owner_killed`: peered, and the owner of the largest layer is killed
//!   (SIGKILL) once it has streamed 32 MiB to its peers; the three
//!   survivors' time;
//! - `dead_peers`: peered, with a peer that accepts and never answers and
//!   one that refuses in every node's list.
//!
//! Reported per scenario: the time until the last node's pull is done (its
//! ratio to `one`), and the bytes the WAN carried (ratio to the image).
//! Targets (issue 10): WAN <= 1.10x the image (standalone: ~4x); peered
//! within 1.5x `one`; owner killed within 2.5x `one` + 1 s and WAN <= 2x;
//! dead peers within 1.5x `one` + 2 s and WAN <= 1.5x.
//!
//! `cargo bench --bench cluster` (as root: network namespaces; needs
//! containerd, ctr, docker-registry, skopeo, ip, tc). `CLUSTER_ROUNDS`
//! (default 3) rounds; medians. `CLUSTER_SCENARIOS=peered,dead_peers` and
//! `CLUSTER_CLIENTS=puller` narrow a run (`one` always runs).

use std::sync::{Arc, Barrier};
use std::time::Duration;

use testkit::bench::report;
use testkit::cluster::{ranked, Nodes, Wan};
use testkit::containerd::{write_hosts_toml, Containerd};
use testkit::faulty::{closed_port, StallServer};
use testkit::process::{require_tools, wait_until, TempDir};
use testkit::pull::pull;

const MIB: u64 = 1 << 20;
const REF: &str = "docker.io/library/app:v1";
/// The shared upstream link (`CLUSTER_LINK_MBIT` overrides).
const LINK_MBIT: u32 = 1000;

thread_local! {
    /// The CPU the last rollout took (see [`Outcome::cpu`]).
    static CPU: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// One scenario's outcome: when the last pull that had to finish did, and
/// what the WAN carried.
struct Outcome {
    secs: f64,
    wan: u64,
    /// CPU time the whole machine spent meanwhile, in core-seconds (every
    /// node and client shares this machine's cores; a real node has its own).
    cpu: f64,
}

/// Core-seconds the machine has been busy since boot (/proc/stat).
fn cpu_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice: this
    // machine's own work is user, nice, system, irq and softirq (steal is
    // another VM's; guest time is already in user).
    let busy: f64 = [0, 1, 2, 5, 6].iter().filter_map(|i| v.get(*i)).sum();
    busy / 100.0
}

/// What pulls the image on each node.
#[derive(Clone, Copy, PartialEq)]
enum Client {
    /// Real containerd: `ctr content fetch` into its content store.
    Containerd,
    /// testkit's strict puller: every blob hashed and checked, nothing
    /// written; most of the CPU is then tender's.
    Puller,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Containerd => "containerd",
            Client::Puller => "puller",
        }
    }
}

/// Each node's client pulls at the same moment; `victim`, if given, is
/// killed once it has streamed `kill_after` bytes to its peers, and its own
/// pull does not count. Returns the time of the slowest pull that counts.
fn rollout(
    tmp: &TempDir,
    name: &str,
    client: Client,
    nodes: &mut Nodes,
    victim: Option<(usize, u64)>,
) -> f64 {
    let ctrds: Vec<Option<(Containerd, std::path::PathBuf)>> = nodes
        .procs
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (client == Client::Containerd).then(|| {
                let hosts = tmp.subdir(&format!("{name}-hosts{i}"));
                write_hosts_toml(&hosts, "docker.io", &n.base(), "https://127.0.0.1:9");
                (
                    Containerd::start(&tmp.subdir(&format!("{name}-ctrd{i}"))),
                    hosts,
                )
            })
        })
        .collect();
    let bases: Vec<String> = nodes.procs.iter().map(|n| n.base()).collect();
    let go = Arc::new(Barrier::new(bases.len() + 1));
    let cpu0 = cpu_busy();
    let times = std::thread::scope(|s| {
        let pulls: Vec<_> = ctrds
            .iter()
            .zip(&bases)
            .map(|(ctrd, base)| {
                let go = go.clone();
                s.spawn(move || {
                    go.wait();
                    match ctrd {
                        Some((c, hosts)) => c.fetch(hosts, REF, false),
                        None => pull(base, "library/app", "v1").map(|p| p.elapsed),
                    }
                })
            })
            .collect();
        go.wait();
        if let Some((v, after)) = victim {
            let served = wait_until(Duration::from_secs(120), || {
                nodes.procs[v].metric("tender_peer_bytes_total{direction=\"served\"}")
                    >= after as f64
            });
            assert!(served, "{name}: the owner never served its peers");
            nodes.procs[v].signal("KILL");
        }
        pulls
            .into_iter()
            .map(|p| p.join().unwrap())
            .collect::<Vec<_>>()
    });
    CPU.with(|c| c.set(cpu_busy() - cpu0));
    if std::env::var_os("CLUSTER_CPU_DETAIL").is_some() {
        for n in &nodes.procs {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", n.pid())).unwrap_or_default();
            let f: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let t: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
                + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            eprintln!("  {name}: tender {} used {:.2} CPU-s", n.base(), t / 100.0);
        }
    }
    let mut slowest: f64 = 0.0;
    for (i, t) in times.into_iter().enumerate() {
        if victim.is_some_and(|(v, _)| v == i) {
            continue;
        }
        let t = t.unwrap_or_else(|e| panic!("{name}: node {i}'s pull failed: {e}"));
        slowest = slowest.max(t.as_secs_f64());
    }
    slowest
}

fn run(tmp: &TempDir, w: &Wan, name: &str, client: Client) -> Outcome {
    w.reg.clear_log();
    let up = w.reg.url();
    let secs = match name {
        "one" => rollout(tmp, name, client, &mut Nodes::standalone(tmp, 1, &up), None),
        "standalone" => rollout(tmp, name, client, &mut Nodes::standalone(tmp, 4, &up), None),
        "peered" => rollout(
            tmp,
            name,
            client,
            &mut Nodes::peered(tmp, 4, &up, &[], ""),
            None,
        ),
        "owner_killed" => {
            let mut nodes = Nodes::peered(tmp, 4, &up, &[], "");
            let big = &w.img.layer_digests[0];
            let owner = ranked(&nodes.members, big)[0].to_string();
            let v = nodes.urls.iter().position(|u| *u == owner).unwrap();
            rollout(tmp, name, client, &mut nodes, Some((v, 32 * MIB)))
        }
        "dead_peers" => {
            let stalled = StallServer::start();
            let refusing = format!("http://127.0.0.1:{}", closed_port());
            let mut nodes = Nodes::peered(tmp, 4, &up, &[stalled.url(), refusing], "");
            rollout(tmp, name, client, &mut nodes, None)
        }
        _ => unreachable!(),
    };
    Outcome {
        secs,
        wan: w.sent(),
        cpu: CPU.with(|c| c.get()),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    require_tools(&["containerd", "ctr", "docker-registry", "skopeo", "ip", "tc"]);
    let rounds: usize = std::env::var("CLUSTER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let tmp = TempDir::new("tender-bench-cluster");
    let layers = [96 * MIB, 64 * MIB, 40 * MIB, 24 * MIB, 16 * MIB, 10 * MIB];
    let link: u32 = std::env::var("CLUSTER_LINK_MBIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LINK_MBIT);
    let w = Wan::start(&tmp, link, &layers, 2026);
    let image = w.img.total_bytes as f64;
    let all = ["one", "standalone", "peered", "owner_killed", "dead_peers"];
    // CLUSTER_SCENARIOS=one,peered and CLUSTER_CLIENTS=puller narrow the run.
    let wanted = |var: &str, name: &str| {
        std::env::var(var)
            .map(|v| v.split(',').any(|w| w == name))
            .unwrap_or(true)
    };
    let scenarios: Vec<&str> = all
        .into_iter()
        .filter(|s| *s == "one" || wanted("CLUSTER_SCENARIOS", s))
        .collect();
    let clients = [Client::Puller, Client::Containerd]
        .into_iter()
        .filter(|c| wanted("CLUSTER_CLIENTS", c.name()));
    for client in clients {
        let mut secs: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
        let mut wan: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
        let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
        for round in 0..rounds {
            for (i, name) in scenarios.iter().enumerate() {
                let dir = TempDir::new(&format!("tcb-{name}-{round}"));
                let o = run(&dir, &w, name, client);
                eprintln!(
                    "{} round {round} {name}: {:.2} s, WAN {:.2}x the image, {:.1} CPU-s",
                    client.name(),
                    o.secs,
                    o.wan as f64 / image,
                    o.cpu
                );
                cpu[i].push(o.cpu);
                secs[i].push(o.secs);
                wan[i].push(o.wan as f64 / image);
            }
        }
        let one = median(secs[0].clone());
        for (i, name) in scenarios.iter().enumerate() {
            let s = median(secs[i].clone());
            report(
                "cluster_rollout",
                &[
                    ("client", client.name().into()),
                    ("scenario", name.to_string()),
                    ("nodes", if i == 0 { "1" } else { "4" }.into()),
                    ("image_mb", format!("{:.0}", image / 1e6)),
                    ("link_mbit", link.to_string()),
                    ("rounds", rounds.to_string()),
                    ("secs", format!("{s:.2}")),
                    ("vs_one", format!("{:.2}", s / one)),
                    ("wan_x_image", format!("{:.2}", median(wan[i].clone()))),
                    ("cpu_core_s", format!("{:.1}", median(cpu[i].clone()))),
                ],
            );
        }
    }
}
