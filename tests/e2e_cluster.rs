//! The cluster tier with real parts: several `tender` processes as nodes
//! (peer listeners on 127.0.1.k), the real distribution registry in a
//! network namespace behind a shaped link (the WAN), real containerd on
//! every node, a real dnsmasq for membership. Counts, not timings: what the
//! registry's access log says crossed the WAN.
//!
//! Needs root (network namespaces), containerd, docker-registry, skopeo,
//! dnsmasq, ip and tc: scripts/test installs them.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use testkit::cluster::{cluster_toml, ranked, token_file, Nodes, Wan};
use testkit::containerd::{write_hosts_toml, Containerd};
use testkit::dns::Dnsmasq;
use testkit::fake::registry_toml;
use testkit::faulty::{closed_port, StallServer};
use testkit::image::{make_oci_layout, skopeo_push};
use testkit::netns::Netns;
use testkit::process::{free_port, wait_until, TempDir};
use testkit::pull::pull;
use testkit::registry::Registry;
use testkit::tender::TenderProcess;

const MIB: u64 = 1 << 20;
const REF: &str = "docker.io/library/app:v1";

#[test]
fn a_cold_rollout_on_every_node_crosses_the_wan_once() {
    let tmp = TempDir::new("tender-e2e-rollout");
    let w = Wan::start(
        &tmp,
        400,
        &[8 * MIB, 6 * MIB, 4 * MIB, 3 * MIB, 2 * MIB, MIB],
        41,
    );
    let c = Nodes::peered(&tmp, 4, &w.reg.url(), &[], "");
    let ctrds: Vec<(Containerd, std::path::PathBuf)> = c
        .procs
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let hosts = tmp.subdir(&format!("hosts{i}"));
            write_hosts_toml(&hosts, "docker.io", &node.base(), "https://127.0.0.1:9");
            (Containerd::start(&tmp.subdir(&format!("ctrd{i}"))), hosts)
        })
        .collect();
    // Every node's containerd pulls at the same moment.
    let go = Arc::new(Barrier::new(ctrds.len()));
    std::thread::scope(|s| {
        let pulls: Vec<_> = ctrds
            .iter()
            .map(|(ctrd, hosts)| {
                let go = go.clone();
                s.spawn(move || {
                    go.wait();
                    ctrd.fetch(hosts, REF, false)
                })
            })
            .collect();
        for p in pulls {
            if let Err(e) = p.join().unwrap() {
                panic!("a pull failed: {e}\n{}", c.logs());
            }
        }
    });
    for (ctrd, _) in &ctrds {
        let have = ctrd.content_digests();
        for d in w.img.all_digests() {
            assert!(have.contains(&d), "containerd holds {d}");
        }
    }
    for d in w.blob_digests() {
        assert_eq!(w.reg.blob_gets_of(&d), 1, "{d} crossed the WAN once");
    }
    assert_eq!(
        w.manifest_requests(),
        1,
        "the tag's owner asked for the manifest once: {:?}",
        w.reg.requests()
    );
    let sent = w.sent();
    eprintln!(
        "cold rollout: the WAN carried {sent} bytes for a {}-byte image",
        w.img.total_bytes
    );
    assert!(
        sent as f64 <= 1.10 * w.img.total_bytes as f64,
        "the WAN carried {sent} bytes for a {}-byte image",
        w.img.total_bytes
    );
    // Three of the four nodes took each blob from its owner.
    let from_peers = c.metric_sum("tender_bytes_served_total{source=\"peer\"}");
    let blob_bytes = (w.img.total_bytes - w.img.blob(&w.img.manifest_digest).len() as u64) as f64;
    assert!(
        from_peers >= 2.9 * blob_bytes - 1e6 && from_peers <= 3.0 * blob_bytes + 1e5,
        "{from_peers} bytes from peers for {blob_bytes} bytes of blobs"
    );
}

#[test]
fn survivors_finish_when_an_owner_is_killed_mid_rollout() {
    let tmp = TempDir::new("tender-e2e-kill");
    let w = Wan::start(&tmp, 200, &[48 * MIB, 4 * MIB, 2 * MIB], 42);
    let mut c = Nodes::peered(&tmp, 4, &w.reg.url(), &[], "");
    let big = &w.img.layer_digests[0];
    let owner = ranked(&c.members, big)[0].to_string();
    let victim = c.urls.iter().position(|u| *u == owner).unwrap();
    let survivors: Vec<String> = (0..c.procs.len())
        .filter(|i| *i != victim)
        .map(|i| c.procs[i].base())
        .collect();
    let results = std::thread::scope(|s| {
        let pulls: Vec<_> = survivors
            .iter()
            .map(|base| s.spawn(move || pull(base, "library/app", "v1")))
            .collect();
        // Once the owner is streaming the big layer to its peers, kill it.
        let v = &c.procs[victim];
        let streaming = wait_until(Duration::from_secs(60), || {
            v.metric("tender_peer_bytes_total{direction=\"served\"}") > (8 * MIB) as f64
        });
        assert!(streaming, "the owner never served its peers:\n{}", c.logs());
        c.procs[victim].signal("KILL");
        pulls
            .into_iter()
            .map(|p| p.join().unwrap())
            .collect::<Vec<_>>()
    });
    for (base, r) in survivors.iter().zip(&results) {
        if let Err(e) = r {
            panic!("the client of {base} saw a failure: {e}\n{}", c.logs());
        }
    }
    let sent = w.sent();
    eprintln!(
        "owner killed: the WAN carried {sent} bytes for a {}-byte image",
        w.img.total_bytes
    );
    assert!(
        sent <= 2 * w.img.total_bytes,
        "the WAN carried {sent} bytes for a {}-byte image",
        w.img.total_bytes
    );
    // The survivors resumed: ranged GETs of the big layer, not new ones from 0.
    let big_gets: Vec<_> = w
        .reg
        .requests_detailed()
        .into_iter()
        .filter(|r| r.method == "GET" && r.uri.contains(big.as_str()))
        .collect();
    assert!(big_gets.len() <= 3, "{big_gets:?}");
    c.procs[victim].kill();
}

#[test]
fn a_stalled_and_a_refusing_peer_cost_one_timeout_and_no_extra_wan_bytes() {
    let tmp = TempDir::new("tender-e2e-deadpeers");
    let w = Wan::start(
        &tmp,
        400,
        &[8 * MIB, 6 * MIB, 4 * MIB, 3 * MIB, 2 * MIB, MIB],
        43,
    );
    let stalled = StallServer::start();
    let refusing = format!("http://127.0.0.1:{}", closed_port());
    let c = Nodes::peered(
        &tmp,
        2,
        &w.reg.url(),
        &[stalled.url(), refusing],
        "peer_timeout = \"1s\"",
    );
    let results = std::thread::scope(|s| {
        let pulls: Vec<_> = c
            .procs
            .iter()
            .map(|n| {
                let base = n.base();
                s.spawn(move || pull(&base, "library/app", "v1"))
            })
            .collect();
        pulls
            .into_iter()
            .map(|p| p.join().unwrap())
            .collect::<Vec<_>>()
    });
    for r in &results {
        if let Err(e) = r {
            panic!("a pull failed: {e}\n{}", c.logs());
        }
    }
    for d in w.blob_digests() {
        assert_eq!(w.reg.blob_gets_of(&d), 1, "{d} crossed the WAN once");
    }
    // Each node waited on the stalled peer once per request in flight when
    // it first stalled, never after its breaker opened.
    let waits =
        c.metric_sum("tender_peer_requests_total{direction=\"fetched\",result=\"timeout\"}");
    let keys = w.blob_digests().len() + 1;
    assert!(waits >= 1.0 && waits <= (2 * keys) as f64, "{waits}");
    let before = stalled.accepted();
    for n in &c.procs {
        pull(&n.base(), "library/app", "v1").unwrap();
    }
    assert_eq!(stalled.accepted(), before, "a warm pull asks no peer");
}

#[test]
fn membership_follows_the_headless_service_records() {
    let tmp = TempDir::new("tender-e2e-dns");
    let ns = Netns::create();
    let dns = Dnsmasq::start_in(
        &ns,
        &tmp.subdir("dns"),
        std::net::Ipv4Addr::new(127, 0, 0, 53),
    );
    // The registry on the host's end of the link; the nodes inside.
    let reg = Registry::start_on(&tmp.subdir("registry"), ns.host_ip);
    let img = make_oci_layout(&tmp.subdir("layout"), "v1", &[3 * MIB, 2 * MIB, MIB], 44);
    skopeo_push(&img, &format!("{}/library/app:v1", reg.host()));
    reg.clear_log();
    let token = token_file(tmp.path());
    let service = "tender-peers.kube-system.svc.cluster.local";
    let ips: Vec<std::net::Ipv4Addr> = (1..=3)
        .map(|k| std::net::Ipv4Addr::new(127, 0, 1, k))
        .collect();
    dns.set(service, &ips[..2]);
    let mut procs = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let dir = tmp.subdir(&format!("node{i}"));
        let port = free_port();
        let config = dir.join("tender.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"{}:{port}\"\ncache_dir = \"{}\"\n{}\n{}",
                ns.ns_ip,
                dir.join("cache").display(),
                cluster_toml(
                    &format!("{ip}:5051"),
                    &[],
                    Some(&format!("{service}:5051")),
                    &token,
                    "dns_interval = \"500ms\""
                ),
                registry_toml("docker.io", true, &[&reg.url()]),
            ),
        )
        .unwrap();
        procs.push(TenderProcess::start_in_netns(
            &ns,
            &ns.ns_ip.to_string(),
            &dir,
            &config,
            port,
        ));
    }
    let peers_of = |n: &TenderProcess| -> Vec<String> {
        let r = testkit::http::http_get(&n.url("/cluster")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let mut p: Vec<String> = v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["url"].as_str().unwrap().to_string())
            .collect();
        p.sort();
        p
    };
    let url = |ip: &std::net::Ipv4Addr| format!("http://{ip}:5051");
    // Node 3 is not in the records yet: nodes 1 and 2 know each other only,
    // node 3 knows them.
    assert!(wait_until(Duration::from_secs(10), || peers_of(&procs[0])
        == [url(&ips[1])]));
    assert!(wait_until(Duration::from_secs(10), || peers_of(&procs[2])
        == [url(&ips[0]), url(&ips[1])]));
    // The Service gains node 3: everyone sees everyone.
    dns.set(service, &ips);
    for (i, p) in procs.iter().enumerate() {
        let want: Vec<String> = ips
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, ip)| url(ip))
            .collect();
        assert!(
            wait_until(Duration::from_secs(10), || peers_of(p) == want),
            "node {i}: {:?}",
            peers_of(p)
        );
    }
    // A rollout through all three crosses the link once per blob.
    std::thread::scope(|s| {
        let pulls: Vec<_> = procs
            .iter()
            .map(|n| {
                let base = n.base();
                s.spawn(move || pull(&base, "library/app", "v1"))
            })
            .collect();
        for p in pulls {
            p.join().unwrap().unwrap();
        }
    });
    for d in img.layer_digests.iter().chain([&img.config_digest]) {
        assert_eq!(reg.blob_gets_of(d), 1, "{d}");
    }
    // A DNS outage keeps the last answer; a record that goes away removes
    // its node.
    dns.set(service, &[ips[0], ips[2]]);
    assert!(wait_until(Duration::from_secs(10), || peers_of(&procs[0])
        == [url(&ips[2])]));
    drop(dns);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(peers_of(&procs[0]), [url(&ips[2])]);
    assert!(procs[0]
        .log()
        .contains("cannot resolve peers; keeping the last known"));
    drop(procs);
    drop(reg);
}
