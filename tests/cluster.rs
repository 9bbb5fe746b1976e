//! The cluster tier, in process: nodes are tender daemons on loopback
//! ports, upstreams and misbehaving peers are fakes that count what they
//! are asked. (tests/e2e_cluster.rs runs the tier with real processes, a
//! real registry behind a shaped link, real DNS and real containerd.)

use std::time::Duration;

use testkit::cluster::{cluster_toml, ranked, token_file, TOKEN};
use testkit::daemon::Daemon;
use testkit::fake::{digest_of, registry_toml, Fake, Fault};
use testkit::faulty::{closed_port, StallServer};
use testkit::http::{client, fetch};
use testkit::process::{free_port, TempDir};
use testkit::rng::random_bytes;

/// Nodes over the same upstream, each peering with all the others (and
/// with `extra_peers`, which are not nodes).
struct Cluster {
    nodes: Vec<Daemon>,
    /// Peer URL of each node, in `nodes` order.
    urls: Vec<String>,
    /// Every member's URL: the nodes' and the extra peers'.
    members: Vec<String>,
    _tmp: TempDir,
}

async fn cluster(n: usize, upstream: &Fake, extra_peers: &[String], extra: &str) -> Cluster {
    let tmp = TempDir::new("tender-cluster");
    let token = token_file(tmp.path());
    let listens: Vec<String> = (0..n)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let urls: Vec<String> = listens.iter().map(|l| format!("http://{l}")).collect();
    let mut members = urls.clone();
    members.extend(extra_peers.iter().cloned());
    let mut nodes = Vec::new();
    for (i, listen) in listens.iter().enumerate() {
        let table = cluster_toml(listen, &members, None, &token, "peer_timeout = \"1s\"");
        let node = Daemon::start_in(
            tmp.path().join(format!("node{i}")),
            &registry_toml("docker.io", true, &[&upstream.url()]),
            &format!("{extra}\n{table}"),
        )
        .await;
        nodes.push(node);
    }
    Cluster {
        nodes,
        urls,
        members,
        _tmp: tmp,
    }
}

/// A random blob whose owner among `members` is `owner`.
fn blob_owned_by(members: &[String], owner: &str, seed: u64, len: usize) -> Vec<u8> {
    (0..1000)
        .map(|i| random_bytes(len, seed * 1000 + i))
        .find(|b| ranked(members, &digest_of(b))[0] == owner)
        .expect("some blob is owned by each member")
}

async fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn json(r: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

fn blob_path(digest: &str) -> String {
    format!("/v2/library/app/blobs/{digest}")
}

fn peer_addr(d: &Daemon) -> String {
    format!(
        "http://{}",
        d.running
            .as_ref()
            .unwrap()
            .peer_addr
            .expect("a peer listener")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_401_and_unknown_ns_dials_nothing() {
    let fake = Fake::start().await;
    let digest = fake.put_blob(random_bytes(1000, 1));
    let c = cluster(1, &fake, &[], "").await;
    let peer = peer_addr(&c.nodes[0]);
    let http = client();
    for auth in [
        None,
        Some("Bearer not-the-token-at-all"),
        Some("Basic dGVzdDp0ZXN0"),
    ] {
        let mut req = http.get(format!("{peer}{}", blob_path(&digest)));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert!(r
            .headers()
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap().starts_with("Bearer ")));
        let body = json(r).await;
        assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    }
    let bearer = format!("Bearer {TOKEN}");
    for ns in ["evil.example.com", "127.0.0.1", &fake.addr.to_string()] {
        let r = http
            .get(format!("{peer}{}?ns={ns}", blob_path(&digest)))
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "ns={ns}");
        let body = json(r).await;
        assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN");
    }
    assert!(
        fake.log().is_empty(),
        "nothing was dialled: {:?}",
        fake.log()
    );
    // Health is open to all; metrics and status are not served to peers.
    assert_eq!(
        http.get(format!("{peer}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    for p in ["/metrics", "/cluster"] {
        let r = http
            .get(format!("{peer}{p}"))
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{p}");
    }
    // With the token, the peer listener serves the registry API.
    let r = http
        .get(format!("{peer}{}?ns=docker.io", blob_path(&digest)))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(fake.blob_gets(), 1);
    let served =
        c.nodes[0].metric("tender_peer_requests_total{direction=\"served\",result=\"miss\"}");
    assert_eq!(served, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_blob_crosses_the_upstream_once_whichever_nodes_ask() {
    let fake = Fake::start().await;
    let blobs: Vec<Vec<u8>> = (0..12)
        .map(|i| random_bytes(300_000 + i * 1000, 10 + i as u64))
        .collect();
    let digests: Vec<String> = blobs.iter().map(|b| fake.put_blob(b.clone())).collect();
    let c = cluster(3, &fake, &[], "").await;
    // Every node asks for every blob at once.
    let mut tasks = Vec::new();
    for node in &c.nodes {
        for (d, b) in digests.iter().zip(&blobs) {
            let url = node.url(&blob_path(d));
            let want = b.clone();
            tasks.push(tokio::spawn(async move {
                assert_eq!(fetch(url, None).await.unwrap(), want);
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    for d in &digests {
        assert_eq!(fake.count("GET", d), 1, "{d} crossed the upstream once");
    }
    let peer_bytes: f64 = c
        .nodes
        .iter()
        .map(|n| n.metric("tender_bytes_served_total{source=\"peer\"}"))
        .sum();
    let total: usize = blobs.iter().map(Vec::len).sum();
    // Each blob reached the two nodes that do not own it from its owner.
    assert_eq!(peer_bytes, 2.0 * total as f64);
    // Each node keeps what it served: a second round is all hits.
    for node in &c.nodes {
        let hits = || node.metric("tender_requests_total{kind=\"blob\",result=\"hit\"}");
        let before = hits();
        for (d, b) in digests.iter().zip(&blobs) {
            assert_eq!(&fetch(node.url(&blob_path(d)), None).await.unwrap(), b);
        }
        assert_eq!(hits() - before, 12.0);
    }
    assert_eq!(fake.blob_gets(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_is_resolved_once_for_the_cluster_by_its_owner() {
    let fake = Fake::start().await;
    fake.put_image("library/app", "v1", &[random_bytes(1000, 3)]);
    fake.set_fault(Fault {
        manifest_delay: Some(Duration::from_millis(100)),
        ..Fault::default()
    });
    let c = cluster(3, &fake, &[], "tag_ttl = \"60s\"").await;
    let mut tasks = Vec::new();
    for node in &c.nodes {
        for _ in 0..3 {
            let url = node.url("/v2/library/app/manifests/v1");
            tasks.push(tokio::spawn(async move {
                let r = client()
                    .get(url)
                    .header("accept", "application/vnd.oci.image.manifest.v1+json")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let asked = fake.count("GET", "/manifests/") + fake.count("HEAD", "/manifests/");
    assert_eq!(asked, 1, "{:?}", fake.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_breaks_mid_body_is_resumed_from_where_it_broke() {
    let upstream = Fake::start().await;
    let bad_peer = Fake::start().await;
    let c_urls = [format!("http://127.0.0.1:{}", free_port()), bad_peer.url()];
    // A blob the bad peer owns, so the node asks it first.
    let data = blob_owned_by(&c_urls, &bad_peer.url(), 7, 2_000_000);
    let digest = upstream.put_blob(data.clone());
    bad_peer.put_blob(data.clone());
    bad_peer.set_fault(Fault {
        truncate: Some(700_000),
        ..Fault::default()
    });
    let tmp = TempDir::new("tender-cluster-break");
    let token = token_file(tmp.path());
    let listen = c_urls[0].trim_start_matches("http://");
    let node = Daemon::start_in(
        tmp.path().join("node"),
        &registry_toml("docker.io", true, &[&upstream.url()]),
        &cluster_toml(listen, &c_urls, None, &token, ""),
    )
    .await;
    assert_eq!(
        fetch(node.url(&blob_path(&digest)), None).await.unwrap(),
        data
    );
    assert_eq!(bad_peer.blob_gets(), 1);
    let resumed: Vec<_> = upstream
        .log()
        .into_iter()
        .filter(|l| l.path.contains("/blobs/"))
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0].range.as_deref(), Some("bytes=700000-"));
    assert_eq!(
        node.metric("tender_peer_requests_total{direction=\"fetched\",result=\"broken_body\"}"),
        1.0
    );
    assert!(wait_for(|| node.has_blob(&digest)).await, "committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_peer_never_gets_its_bytes_served_whole_and_is_skipped() {
    let upstream = Fake::start().await;
    let liar = Fake::start().await;
    let urls = [format!("http://127.0.0.1:{}", free_port()), liar.url()];
    let data = blob_owned_by(&urls, &liar.url(), 8, 500_000);
    let digest = upstream.put_blob(data.clone());
    liar.put_blob(data.clone());
    liar.set_fault(Fault {
        flip_byte: true,
        ..Fault::default()
    });
    let tmp = TempDir::new("tender-cluster-liar");
    let token = token_file(tmp.path());
    let node = Daemon::start_in(
        tmp.path().join("node"),
        &registry_toml("docker.io", true, &[&upstream.url()]),
        &cluster_toml(
            urls[0].trim_start_matches("http://"),
            &urls,
            None,
            &token,
            "",
        ),
    )
    .await;
    let url = node.url(&blob_path(&digest));
    // The first client's transfer is cut before its last byte: it never
    // holds a complete wrong blob.
    let first = fetch(url.clone(), None).await;
    assert!(first.is_err(), "a corrupt body must not complete");
    assert!(!node.has_blob(&digest));
    // The liar's breaker is open: the retry goes to the upstream.
    assert_eq!(fetch(url, None).await.unwrap(), data);
    assert_eq!(liar.blob_gets(), 1);
    assert_eq!(upstream.blob_gets(), 1);
    assert!(wait_for(|| node.has_blob(&digest)).await, "committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_costs_one_short_timeout_not_one_per_request() {
    let upstream = Fake::start().await;
    let stalled = StallServer::start();
    let refusing = format!("http://127.0.0.1:{}", closed_port());
    let me = format!("http://127.0.0.1:{}", free_port());
    let members = [me.clone(), stalled.url(), refusing.clone()];
    // Blobs the stalled peer owns, with the refusing one next.
    let blobs: Vec<Vec<u8>> = (0..400)
        .map(|i| random_bytes(100_000, 500 + i))
        .filter(|b| ranked(&members, &digest_of(b))[..2] == [stalled.url(), refusing.clone()])
        .take(3)
        .collect();
    assert_eq!(blobs.len(), 3);
    let digests: Vec<String> = blobs.iter().map(|b| upstream.put_blob(b.clone())).collect();
    let tmp = TempDir::new("tender-cluster-dead");
    let token = token_file(tmp.path());
    let node = Daemon::start_in(
        tmp.path().join("node"),
        &registry_toml("docker.io", true, &[&upstream.url()]),
        &cluster_toml(
            me.trim_start_matches("http://"),
            &members,
            None,
            &token,
            "peer_timeout = \"1s\"",
        ),
    )
    .await;
    assert_eq!(
        fetch(node.url(&blob_path(&digests[0])), None)
            .await
            .unwrap(),
        blobs[0]
    );
    let accepted = stalled.accepted();
    assert!(
        (1..=2).contains(&accepted),
        "the request, and a liveness probe: {accepted}"
    );
    for (d, b) in digests.iter().zip(&blobs).skip(1) {
        assert_eq!(&fetch(node.url(&blob_path(d)), None).await.unwrap(), b);
    }
    assert_eq!(
        stalled.accepted(),
        accepted,
        "its breaker is open: not asked again"
    );
    assert_eq!(upstream.blob_gets(), 3);
    assert_eq!(
        node.metric("tender_peer_requests_total{direction=\"fetched\",result=\"timeout\"}"),
        1.0
    );
    assert_eq!(node.metric("tender_peers"), 0.0, "both are down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_waiting_on_a_slow_upstream_is_waited_for() {
    let fake = Fake::start().await;
    fake.set_fault(Fault {
        blob_delay: Some(Duration::from_millis(2500)),
        ..Fault::default()
    });
    let pre = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let urls: Vec<String> = pre.iter().map(|l| format!("http://{l}")).collect();
    let data = blob_owned_by(&urls, &urls[1], 9, 200_000);
    let digest = fake.put_blob(data.clone());
    let tmp = TempDir::new("tender-cluster-slow");
    let token = token_file(tmp.path());
    let mut nodes = Vec::new();
    for (i, l) in pre.iter().enumerate() {
        nodes.push(
            Daemon::start_in(
                tmp.path().join(format!("n{i}")),
                &registry_toml("docker.io", true, &[&fake.url()]),
                &cluster_toml(l, &urls, None, &token, "peer_timeout = \"500ms\""),
            )
            .await,
        );
    }
    assert_eq!(
        fetch(nodes[0].url(&blob_path(&digest)), None)
            .await
            .unwrap(),
        data
    );
    assert_eq!(
        fake.blob_gets(),
        1,
        "the node did not go around its live owner"
    );
    assert_eq!(
        nodes[0].metric("tender_bytes_served_total{source=\"peer\"}"),
        200_000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_the_peers_and_their_health() {
    let fake = Fake::start().await;
    let refusing = format!("http://127.0.0.1:{}", closed_port());
    let c = cluster(2, &fake, std::slice::from_ref(&refusing), "").await;
    let status = json(
        client()
            .get(c.nodes[0].url("/cluster"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status["advertise"], c.urls[0]);
    let peers: Vec<(String, String)> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["url"].as_str().unwrap().into(),
                p["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut want: Vec<String> = c
        .members
        .iter()
        .filter(|m| **m != c.urls[0])
        .cloned()
        .collect();
    want.sort();
    assert_eq!(peers.iter().map(|p| p.0.clone()).collect::<Vec<_>>(), want);
    assert!(peers.iter().all(|p| p.1 == "up"), "nothing failed yet");
    assert_eq!(c.nodes[0].metric("tender_peers"), 2.0);
    // A blob the refusing peer owns marks it down.
    let data = blob_owned_by(&c.members, &refusing, 11, 10_000);
    let digest = fake.put_blob(data.clone());
    assert_eq!(
        fetch(c.nodes[0].url(&blob_path(&digest)), None)
            .await
            .unwrap(),
        data
    );
    let status = json(
        client()
            .get(c.nodes[0].url("/cluster"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let down: Vec<&str> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "down")
        .map(|p| p["url"].as_str().unwrap())
        .collect();
    assert_eq!(down, [refusing.as_str()]);
    assert_eq!(c.nodes[0].metric("tender_peers"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_token_is_skipped_and_shows_as_down() {
    let fake = Fake::start().await;
    let listens = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let urls: Vec<String> = listens.iter().map(|l| format!("http://{l}")).collect();
    let tmp = TempDir::new("tender-cluster-tokens");
    let mut nodes = Vec::new();
    for (i, l) in listens.iter().enumerate() {
        let token = tmp.subdir(&format!("t{i}")).join("token");
        std::fs::write(&token, format!("token-of-node-{i}-0123456789")).unwrap();
        nodes.push(
            Daemon::start_in(
                tmp.path().join(format!("n{i}")),
                &registry_toml("docker.io", true, &[&fake.url()]),
                &cluster_toml(l, &urls, None, &token, ""),
            )
            .await,
        );
    }
    let blobs: Vec<Vec<u8>> = (0..2)
        .map(|i| blob_owned_by(&urls, &urls[1], 20 + i, 50_000))
        .collect();
    for b in &blobs {
        let d = fake.put_blob(b.clone());
        assert_eq!(&fetch(nodes[0].url(&blob_path(&d)), None).await.unwrap(), b);
    }
    assert_eq!(
        nodes[0].metric("tender_peer_requests_total{direction=\"fetched\",result=\"401\"}"),
        1.0,
        "asked once, then skipped"
    );
    assert_eq!(nodes[0].metric("tender_peers"), 0.0);
    assert_eq!(fake.blob_gets(), 2, "both from the node's own upstream");
}
