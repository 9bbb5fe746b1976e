//! The wire contract (DESIGN.md §2) against an in-process fake upstream:
//! headers, ranges, Accept, errors, routing by `ns`, ordered fallback, token
//! auth, redirects, proxies, integrity and tag revalidation.

use testkit::fake;

use std::time::Duration;

use reqwest::StatusCode;
use testkit::daemon::Daemon;
use testkit::fake::{registry_toml, Fake, FakeProxy, Fault};
use testkit::rng::random_bytes;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn oci_error(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let v: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or_default();
    (
        status,
        v["errors"][0]["code"].as_str().unwrap_or("").to_string(),
    )
}

async fn one_upstream(fake: &Fake) -> Daemon {
    Daemon::over(&[fake]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_endpoint_answers_with_the_api_version() {
    let fake = Fake::start().await;
    let d = one_upstream(&fake).await;
    let r = d.get("/v2/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    assert_eq!(r.text().await.unwrap(), "{}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_by_tag_and_digest_carry_exact_bytes_and_headers() {
    let fake = Fake::start().await;
    let (md, _) = fake.put_image("library/app", "1.0", &[random_bytes(1000, 1)]);
    let d = one_upstream(&fake).await;
    let c = client();
    for reference in ["1.0", md.as_str()] {
        let url = d.url(&format!(
            "/v2/library/app/manifests/{reference}?ns=docker.io"
        ));
        let head = c.head(&url).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["docker-content-digest"], md.as_str());
        assert_eq!(head.headers()["content-type"], OCI_MANIFEST);
        let len: usize = head.headers()["content-length"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let get = c.get(&url).send().await.unwrap();
        assert_eq!(get.headers()["etag"], format!("\"{md}\"").as_str());
        let body = get.bytes().await.unwrap();
        assert_eq!(body.len(), len, "HEAD Content-Length must match the body");
        assert_eq!(fake::digest_of(&body), md, "exact stored bytes");
    }
    // Upstream saw one GET by tag; the by-digest request was a cache hit.
    assert_eq!(fake.count("GET", "/manifests/"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_is_honoured_an_index_is_never_sent_to_a_client_that_did_not_ask() {
    let fake = Fake::start().await;
    let index = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
    fake.put_manifest("library/multi", Some("latest"), OCI_INDEX, index);
    let d = one_upstream(&fake).await;
    let url = d.url("/v2/library/multi/manifests/latest?ns=docker.io");
    let r = client()
        .get(&url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(
        oci_error(r).await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
    let r = client()
        .get(&url)
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    // Tender always asks upstream for every manifest type, whatever the client accepts.
    let accept = fake.log().iter().find_map(|l| l.accept.clone()).unwrap();
    assert!(
        accept.contains(OCI_INDEX) && accept.contains(OCI_MANIFEST),
        "{accept}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_get_and_head_with_ranges_cached_and_uncached() {
    let fake = Fake::start().await;
    let data = random_bytes(300_000, 2);
    let digest = fake.put_blob(data.clone());
    let d = one_upstream(&fake).await;
    let c = client();
    let url = d.url(&format!("/v2/library/app/blobs/{digest}?ns=docker.io"));

    // HEAD of an uncached blob is answered from an upstream HEAD, no download.
    let h = c.head(&url).send().await.unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(h.headers()["content-length"], "300000");
    assert_eq!(h.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(h.headers()["accept-ranges"], "bytes");
    assert_eq!(fake.blob_gets(), 0);
    assert_eq!(fake.count("HEAD", "/blobs/"), 1);

    // A ranged first request (uncached) is answered from the fill.
    let r = c
        .get(&url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], "bytes 100-199/300000");
    assert_eq!(&r.bytes().await.unwrap()[..], &data[100..200]);

    for _ in 0..2 {
        // (second round: from the cache)
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-length"], "300000");
        assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
        for (range, want, cr) in [
            ("bytes=0-9", &data[0..10], "bytes 0-9/300000"),
            (
                "bytes=299990-",
                &data[299_990..],
                "bytes 299990-299999/300000",
            ),
            ("bytes=-5", &data[299_995..], "bytes 299995-299999/300000"),
            (
                "bytes=299999-400000",
                &data[299_999..],
                "bytes 299999-299999/300000",
            ),
        ] {
            let r = c.get(&url).header("range", range).send().await.unwrap();
            assert_eq!(r.status(), 206, "{range}");
            assert_eq!(r.headers()["content-range"], cr);
            assert_eq!(&r.bytes().await.unwrap()[..], want, "{range}");
        }
        let r = c
            .get(&url)
            .header("range", "bytes=300000-")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()["content-range"], "bytes */300000");
        let r = c
            .get(&url)
            .header("range", "bytes=9-1")
            .send()
            .await
            .unwrap();
        assert_eq!(
            oci_error(r).await,
            (StatusCode::BAD_REQUEST, "RANGE_INVALID".into())
        );
        let h = c.head(&url).send().await.unwrap();
        assert_eq!(h.headers()["content-length"], "300000");
    }
    assert_eq!(fake.blob_gets(), 1, "one upstream GET for everything above");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_clear_oci_errors() {
    let fake = Fake::start().await;
    let d = one_upstream(&fake).await;
    let c = client();
    for (method, path, status, code) in [
        (
            "GET",
            "/v2/library/app/blobs/sha256:baddigeststring",
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/library/app/manifests/sha256:xyz",
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/library/app/blobs/sha512:abcd",
            400,
            "DIGEST_INVALID",
        ),
        (
            "GET",
            "/v2/Library/App/manifests/latest",
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/library/a%2fb/manifests/latest",
            400,
            "NAME_INVALID",
        ),
        (
            "GET",
            "/v2/library/app/manifests/-bad-tag",
            400,
            "TAG_INVALID",
        ),
        (
            "GET",
            "/v2/library/app/manifests/latest?ns=%zz",
            400,
            "NAME_INVALID",
        ),
        (
            "PUT",
            "/v2/library/app/manifests/latest",
            405,
            "UNSUPPORTED",
        ),
        (
            "DELETE",
            "/v2/library/app/manifests/latest",
            405,
            "UNSUPPORTED",
        ),
        ("POST", "/v2/library/app/blobs/uploads/", 405, "UNSUPPORTED"),
        (
            "PATCH",
            "/v2/library/app/blobs/uploads/some-uuid",
            405,
            "UNSUPPORTED",
        ),
        ("GET", "/v2/_catalog", 405, "UNSUPPORTED"),
        ("GET", "/v3/whatever", 404, "NOT_FOUND"),
    ] {
        let r = c
            .request(method.parse().unwrap(), d.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            oci_error(r).await,
            (StatusCode::from_u16(status).unwrap(), code.to_string()),
            "{method} {path}"
        );
    }
    assert!(
        fake.log().is_empty(),
        "bad input must never reach an upstream: {:?}",
        fake.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ns_is_refused_without_any_outbound_connection() {
    let configured = Fake::start().await;
    let target = Fake::start().await; // what an attacker would like tender to dial
    let d = Daemon::start(&registry_toml("quay.io", false, &[&configured.url()]), "").await;
    let c = client();
    for ns in [
        target.addr.to_string(),
        "docker.io".into(),
        "169.254.169.254".into(),
    ] {
        let url = d.url(&format!("/v2/library/app/manifests/latest?ns={ns}"));
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(
            oci_error(r).await,
            (StatusCode::NOT_FOUND, "NAME_UNKNOWN".into()),
            "{ns}"
        );
    }
    // No ns and no default registry: refused too.
    let r = d.get("/v2/library/app/manifests/latest").await;
    assert_eq!(oci_error(r).await.0, StatusCode::NOT_FOUND);
    assert!(target.log().is_empty() && configured.log().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_ns_go_to_the_default_registry_and_ns_selects_others() {
    let hub = Fake::start().await;
    let quay = Fake::start().await;
    hub.put_image("library/app", "v1", &[b"hub".to_vec()]);
    quay.put_image("org/app", "v1", &[b"quay".to_vec()]);
    let toml = format!(
        "{}{}",
        registry_toml("docker.io", true, &[&hub.url()]),
        registry_toml("quay.io", false, &[&quay.url()])
    );
    let d = Daemon::start(&toml, "").await;
    let r = d.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    let r = d.get("/v2/org/app/manifests/v1?ns=quay.io&foo=bar").await;
    assert_eq!(r.status(), 200, "unknown query parameters are ignored");
    assert_eq!(hub.count("GET", "/manifests/"), 1);
    assert_eq!(quay.count("GET", "/manifests/"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_are_tried_in_order_falling_through_on_5xx_429_404_and_refused() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        format!("http://{a}")
    };
    let five = Fake::start().await;
    five.set_fault(Fault {
        status: Some(503),
        ..Fault::default()
    });
    let limited = Fake::start().await;
    limited.set_fault(Fault {
        status: Some(429),
        retry_after: Some(30),
        ..Fault::default()
    });
    let empty = Fake::start().await;
    let good = Fake::start().await;
    let (md, layers) = good.put_image("library/app", "v1", &[random_bytes(5000, 3)]);
    let d = Daemon::start(
        &registry_toml(
            "docker.io",
            true,
            &[
                &refused,
                &five.url(),
                &limited.url(),
                &empty.url(),
                &good.url(),
            ],
        ),
        "",
    )
    .await;
    let r = d.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    let r = d.get(&format!("/v2/library/app/blobs/{}", layers[0])).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 5000);
    for f in [&five, &limited, &empty, &good] {
        assert_eq!(f.count("GET", "/manifests/v1"), 1);
    }
    for f in [&five, &empty, &good] {
        assert_eq!(f.count("GET", "/blobs/"), 1);
    }
    // The 429 asked for 30 s of quiet: the blob request skipped it.
    assert_eq!(limited.count("GET", "/blobs/"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_content_is_404_and_unreachable_upstreams_are_503() {
    let a = Fake::start().await;
    let b = Fake::start().await;
    let d = Daemon::over(&[&a, &b]).await;
    let missing = fake::digest_of(b"nope");
    let r = d.get(&format!("/v2/x/blobs/{missing}")).await;
    assert_eq!(
        oci_error(r).await,
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN".into())
    );
    let r = d.get("/v2/x/manifests/nope").await;
    assert_eq!(
        oci_error(r).await,
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
    b.set_fault(Fault {
        status: Some(502),
        ..Fault::default()
    });
    let r = d.get("/v2/x/manifests/nope").await;
    assert_eq!(
        oci_error(r).await,
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE".into()),
        "a 404 here and a 5xx there is not 'unknown'"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_auth_is_answered_and_tokens_are_cached_per_repository() {
    let fake = Fake::start().await;
    fake.set_fault(Fault {
        require_token: true,
        token_basic: Some("robot:s3cret".into()),
        ..Fault::default()
    });
    let (_, layers) = fake.put_image(
        "library/app",
        "v1",
        &[random_bytes(1000, 4), random_bytes(1000, 5)],
    );
    let dir = std::env::temp_dir().join(format!("tender-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let creds = dir.join("harbor");
    std::fs::write(&creds, "robot:s3cret\n").unwrap();
    let toml = format!(
        "[[registry]]\nhost = \"docker.io\"\ndefault = true\n  [[registry.upstream]]\n  url = \"{}\"\n  credentials_file = \"{}\"\n",
        fake.url(),
        creds.display()
    );
    let d = Daemon::start(&toml, "").await;
    assert_eq!(d.get("/v2/library/app/manifests/v1").await.status(), 200);
    for l in &layers {
        let r = d.get(&format!("/v2/library/app/blobs/{l}")).await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    assert_eq!(
        fake.tokens_issued(),
        1,
        "one token for the repository, reused"
    );
    let token_req = fake.log().into_iter().find(|l| l.path == "/token").unwrap();
    assert!(
        token_req
            .query
            .contains("scope=repository%3Alibrary%2Fapp%3Apull"),
        "{}",
        token_req.query
    );
    assert_eq!(fake.count("GET", "/blobs/"), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_prefix_is_prepended_upstream_and_hidden_from_clients() {
    let harbor = Fake::start().await;
    harbor.put_image("dockerhub-proxy/library/app", "v1", &[b"x".to_vec()]);
    let toml = format!(
        "[[registry]]\nhost = \"docker.io\"\ndefault = true\n  [[registry.upstream]]\n  url = \"{}\"\n  repository_prefix = \"dockerhub-proxy\"\n",
        harbor.url()
    );
    let d = Daemon::start(&toml, "").await;
    assert_eq!(d.get("/v2/library/app/manifests/v1").await.status(), 200);
    let tags = d.get("/v2/library/app/tags/list?n=10").await;
    let tags: serde_json::Value = serde_json::from_slice(&tags.bytes().await.unwrap()).unwrap();
    assert_eq!(tags["name"], "library/app");
    assert_eq!(tags["tags"][0], "v1");
    assert_eq!(
        harbor.count("GET", "/v2/dockerhub-proxy/library/app/manifests/v1"),
        1
    );
    let tl = harbor
        .log()
        .into_iter()
        .find(|l| l.path.ends_with("/tags/list"))
        .unwrap();
    assert_eq!(tl.query, "n=10");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirects_are_followed_without_the_registry_authorization() {
    let registry = Fake::start().await;
    let cdn = Fake::start().await;
    let data = random_bytes(10_000, 6);
    let digest = cdn.put_blob(data.clone());
    registry.put_blob(data.clone());
    registry.set_fault(Fault {
        require_token: true,
        redirect_blobs_to: Some(cdn.url()),
        ..Fault::default()
    });
    let d = one_upstream(&registry).await;
    let r = d.get(&format!("/v2/library/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
    let cdn_req = cdn
        .log()
        .into_iter()
        .find(|l| l.path.starts_with("/cdn/"))
        .unwrap();
    assert_eq!(
        cdn_req.authorization, None,
        "registry credentials must not follow a redirect to another host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_blob_is_never_committed_and_the_client_transfer_is_aborted() {
    for fault in [
        Fault {
            flip_byte: true,
            ..Fault::default()
        },
        Fault {
            truncate: Some(150_000),
            ..Fault::default()
        },
    ] {
        // One upstream only: nowhere to resume from a good copy.
        let fake = Fake::start().await;
        let data = random_bytes(400_000, 7);
        let digest = fake.put_blob(data.clone());
        fake.set_fault(fault);
        let d = one_upstream(&fake).await;
        let url = d.url(&format!("/v2/library/app/blobs/{digest}"));
        let r = client().get(&url).send().await.unwrap();
        // Headers may already say 200; the body must then fail before its end.
        if r.status() == 200 {
            let body = r.bytes().await;
            assert!(
                body.is_err(),
                "a wrong blob must not arrive as a complete body"
            );
        } else {
            assert!(r.status().is_server_error());
        }
        let store_path = d
            .dir
            .join("blobs/sha256")
            .join(&digest[7..9])
            .join(&digest[7..]);
        // Give the fill a moment to finish cleaning up, then check nothing
        // unverified is under a final name or left in tmp/.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!store_path.exists(), "unverified blob committed");
        assert_eq!(std::fs::read_dir(d.dir.join("tmp")).unwrap().count(), 0);
        assert!(
            d.metric("tender_integrity_failures_total") >= 1.0
                || d.metric("tender_requests_total{kind=\"blob\",result=\"miss\"}") >= 1.0
        );
        // With the upstream fixed, the next request fetches afresh and succeeds.
        fake.set_fault(Fault::default());
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
        // The commit (fsync, rename) may land just after the client's last byte.
        for _ in 0..100 {
            if store_path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(store_path.exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_broken_mid_way_is_resumed_from_the_next_upstream_with_range() {
    let data = random_bytes(500_000, 8);
    let (fakes, digest) = Fake::several_with_blob(2, &data).await;
    let (bad, good) = (&fakes[0], &fakes[1]);
    bad.set_fault(Fault {
        truncate: Some(200_000),
        ..Fault::default()
    });
    let d = Daemon::over(&[bad, good]).await;
    let r = d.get(&format!("/v2/library/app/blobs/{digest}")).await;
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
    let resumed = good
        .log()
        .into_iter()
        .find(|l| l.path.contains("/blobs/"))
        .unwrap();
    let range = resumed.range.unwrap();
    let from: u64 = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from > 0 && from <= 200_000, "resumed from {range}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_an_upstream_that_ignores_range_skips_the_prefix() {
    let data = random_bytes(500_000, 9);
    let (fakes, digest) = Fake::several_with_blob(2, &data).await;
    let (bad, good) = (&fakes[0], &fakes[1]);
    bad.set_fault(Fault {
        truncate: Some(123_457),
        ..Fault::default()
    });
    good.set_fault(Fault {
        ignore_range: true,
        ..Fault::default()
    });
    let d = Daemon::over(&[bad, good]).await;
    let r = d.get(&format!("/v2/library/app/blobs/{digest}")).await;
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_whose_digest_does_not_match_is_rejected() {
    let fake = Fake::start().await;
    let (md, _) = fake.put_image("library/app", "v1", &[b"a".to_vec()]);
    fake.set_fault(Fault {
        lie_manifest_digest: Some(fake::digest_of(b"something else")),
        ..Fault::default()
    });
    let d = one_upstream(&fake).await;
    let r = d.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 502);
    // By digest the bytes must hash to the requested digest; a different
    // manifest under that digest is refused too.
    let other = fake.put_manifest("library/app", None, OCI_MANIFEST, r#"{"schemaVersion":2}"#);
    let _ = other;
    let wrong = fake::digest_of(b"not this manifest");
    let r = d.get(&format!("/v2/library/app/manifests/{wrong}")).await;
    assert_eq!(r.status(), 404);
    let _ = md;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_revalidated_with_head_after_ttl_and_served_stale_when_upstreams_fail() {
    let fake = Fake::start().await;
    let (md1, _) = fake.put_image("library/app", "v1", &[b"one".to_vec()]);
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&fake.url()]),
        "tag_ttl = \"300ms\"",
    )
    .await;
    let c = client();
    let url = d.url("/v2/library/app/manifests/v1");
    let digest = |r: &reqwest::Response| {
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_string()
    };

    let r = c.get(&url).send().await.unwrap();
    assert_eq!(digest(&r), md1);
    let r = c.get(&url).send().await.unwrap(); // within ttl: no upstream request
    assert_eq!(digest(&r), md1);
    assert_eq!(fake.log().len(), 1);

    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = c.get(&url).send().await.unwrap(); // past ttl, unchanged: one HEAD, no GET
    assert_eq!(digest(&r), md1);
    assert_eq!(fake.count("HEAD", "/manifests/v1"), 1);
    assert_eq!(fake.count("GET", "/manifests/"), 1);

    let (md2, _) = fake.put_image("library/app", "v1", &[b"two".to_vec()]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = c.get(&url).send().await.unwrap(); // changed: HEAD then GET
    assert_eq!(digest(&r), md2);
    assert_eq!(fake.count("GET", "/manifests/v1"), 2);

    fake.set_fault(Fault {
        status: Some(503),
        ..Fault::default()
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = c.get(&url).send().await.unwrap(); // every upstream fails: stale
    assert_eq!(r.status(), 200);
    assert_eq!(digest(&r), md2);
    assert_eq!(d.metric("tender_stale_tags_served_total"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_serves_after_a_restart_with_no_upstream_reachable() {
    let fake = Fake::start().await;
    let (md, layers) = fake.put_image("library/app", "v1", &[random_bytes(70_000, 10)]);
    let mut d = one_upstream(&fake).await;
    assert_eq!(d.get("/v2/library/app/manifests/v1").await.status(), 200);
    let r = d.get(&format!("/v2/library/app/blobs/{}", layers[0])).await;
    r.bytes().await.unwrap();
    d.stop().await;
    let dir = d.dir.clone();
    drop(fake);
    // The same cache directory, an upstream that refuses connections.
    let dead = "http://127.0.0.1:9";
    let d2 = Daemon::start_in(dir, &registry_toml("docker.io", true, &[dead]), "").await;
    let r = d2.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], md.as_str());
    let r = d2
        .get(&format!("/v2/library/app/blobs/{}", layers[0]))
        .await;
    assert_eq!(r.bytes().await.unwrap().len(), 70_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_the_contract_names() {
    let fake = Fake::start().await;
    let (_, layers) = fake.put_image("library/app", "v1", &[b"m".to_vec()]);
    let d = one_upstream(&fake).await;
    for _ in 0..2 {
        let r = d.get(&format!("/v2/library/app/blobs/{}", layers[0])).await;
        r.bytes().await.unwrap();
    }
    let text = d.get("/metrics").await.text().await.unwrap();
    for name in [
        "tender_requests_total{kind=\"blob\",result=\"hit\"} 1",
        "tender_requests_total{kind=\"blob\",result=\"miss\"} 1",
        "tender_upstream_requests_total{registry=\"docker.io\"",
        "tender_bytes_served_total{source=\"cache\"} 1",
        "tender_bytes_served_total{source=\"upstream\"} 1",
        "tender_cache_size_bytes",
        "tender_cache_evictions_total",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_upstream_uses_its_own_egress_proxy() {
    let behind_proxy = Fake::start().await;
    let direct = Fake::start().await;
    let data = random_bytes(50_000, 11);
    let digest = behind_proxy.put_blob(data.clone());
    direct.put_image("org/app", "v1", &[b"d".to_vec()]);
    let proxy = FakeProxy::start(behind_proxy.addr).await;
    // The first upstream's name does not resolve: only its proxy can reach it.
    let toml = format!(
        "[[registry]]\nhost = \"docker.io\"\ndefault = true\n  [[registry.upstream]]\n  url = \"http://registry.invalid\"\n  proxy = \"http://{}\"\n{}",
        proxy.addr,
        registry_toml("quay.io", false, &[&direct.url()])
    );
    let d = Daemon::start(&toml, "").await;
    let r = d.get(&format!("/v2/library/app/blobs/{digest}")).await;
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
    let seen = proxy.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![format!(
            "http://registry.invalid/v2/library/app/blobs/{digest}"
        )]
    );
    // Another registry's upstream without a proxy is dialled directly.
    let r = d.get("/v2/org/app/manifests/v1?ns=quay.io").await;
    assert_eq!(r.status(), 200);
    assert_eq!(proxy.seen.lock().unwrap().len(), 1);
    assert_eq!(direct.count("GET", "/manifests/v1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_upstream_cannot_redirect_tender_to_an_internal_address() {
    let registry = Fake::start().await;
    let internal = Fake::start().await; // stands for a metadata service or a private host
    let data = random_bytes(5_000, 12);
    let digest = registry.put_blob(data.clone());
    internal.put_blob(data);
    registry.set_fault(Fault {
        redirect_blobs_to: Some(internal.url()),
        ..Fault::default()
    });
    let proxy = FakeProxy::start(registry.addr).await;
    // A public name (reachable only through its egress proxy) ...
    let toml = format!(
        "[[registry]]\nhost = \"docker.io\"\ndefault = true\n  [[registry.upstream]]\n  url = \"http://registry.invalid\"\n  proxy = \"http://{}\"\n",
        proxy.addr
    );
    let d = Daemon::start(&toml, "").await;
    // ... that answers with a redirect to 127.0.0.1.
    let r = d.get(&format!("/v2/library/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 503);
    assert!(
        internal.log().is_empty(),
        "tender followed a redirect to an internal address"
    );
    assert_eq!(proxy.seen.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_is_skipped_by_its_circuit_breaker_and_probed_after_a_cooldown() {
    let bad = Fake::start().await;
    let good = Fake::start().await;
    let blobs: Vec<Vec<u8>> = (0..6).map(|i| random_bytes(1000, 60 + i)).collect();
    let digests: Vec<String> = blobs
        .iter()
        .map(|b| {
            bad.put_blob(b.clone());
            good.put_blob(b.clone())
        })
        .collect();
    bad.set_fault(Fault {
        status: Some(503),
        ..Fault::default()
    });
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&bad.url(), &good.url()]),
        "breaker_failures = 2\nbreaker_cooldown = \"300ms\"",
    )
    .await;
    let fetch = |i: usize| {
        let url = d.url(&format!("/v2/library/app/blobs/{}", digests[i]));
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .len()
        }
    };
    for i in 0..4 {
        assert_eq!(fetch(i).await, 1000);
    }
    assert_eq!(bad.blob_gets(), 2, "skipped once its circuit opened");
    assert_eq!(good.blob_gets(), 4);
    let gauge = format!(
        "tender_upstream_circuit_open{{registry=\"docker.io\",upstream=\"{}\"}}",
        bad.url()
    );
    assert_eq!(d.metric(&gauge), 1.0);
    // After the cool-down one request probes it; it still fails: reopened.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(fetch(4).await, 1000);
    assert_eq!(bad.blob_gets(), 3);
    // Fixed; after the (doubled) cool-down the probe succeeds and closes it.
    bad.set_fault(Fault::default());
    tokio::time::sleep(Duration::from_millis(650)).await;
    assert_eq!(fetch(5).await, 1000);
    assert_eq!(bad.blob_gets(), 4);
    assert_eq!(
        good.blob_gets(),
        5,
        "served by the recovered first upstream"
    );
    assert_eq!(d.metric(&gauge), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_honoured_and_client_retries_never_reach_the_upstream() {
    let limited = Fake::start().await;
    let digest = limited.put_blob(random_bytes(1000, 70));
    limited.set_fault(Fault {
        status: Some(429),
        retry_after: Some(30),
        ..Fault::default()
    });
    let d = one_upstream(&limited).await;
    // containerd retries a 429 at once, up to 5 times; tender answers 503
    // (so containerd moves on to its next host) and stays quiet upstream.
    for _ in 0..5 {
        let r = d.get(&format!("/v2/library/app/blobs/{digest}")).await;
        assert_eq!(
            oci_error(r).await,
            (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE".into())
        );
    }
    assert_eq!(limited.blob_gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_metrics_and_health_only() {
    let fake = Fake::start().await;
    let (_, layers) = fake.put_image("library/app", "v1", &[b"m".to_vec()]);
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&fake.url()]),
        "metrics_listen = \"127.0.0.1:0\"",
    )
    .await;
    let m = d.running.as_ref().unwrap().metrics_addr.unwrap();
    let c = client();
    for ok in ["/metrics", "/healthz", "/readyz"] {
        let r = c.get(format!("http://{m}{ok}")).send().await.unwrap();
        assert!(
            r.status() == 200 || (ok == "/readyz" && r.status() == 503),
            "{ok}: {}",
            r.status()
        );
    }
    for api in [
        "/v2/".to_string(),
        format!("/v2/library/app/blobs/{}", layers[0]),
    ] {
        let r = c.get(format!("http://{m}{api}")).send().await.unwrap();
        assert_eq!(
            r.status(),
            404,
            "{api} must not be served on the metrics listener"
        );
    }
    assert!(fake.log().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_content_encoding_never_leaks_into_stored_bytes_or_responses() {
    let fake = Fake::start().await;
    let data = random_bytes(100_000, 13);
    let digest = fake.put_blob(data.clone());
    let d = one_upstream(&fake).await;
    let url = d.url(&format!("/v2/library/app/blobs/{digest}"));
    // Bytes re-encoded on the way (what a gzip-ing proxy would send): never
    // decoded, so they fail verification and are not stored.
    fake.set_fault(Fault {
        content_encoding: Some("gzip".into()),
        flip_byte: true,
        ..Fault::default()
    });
    let r = client().get(&url).send().await.unwrap();
    assert!(r.status() != 200 || r.bytes().await.is_err());
    let stored = d
        .dir
        .join("blobs/sha256")
        .join(&digest[7..9])
        .join(&digest[7..]);
    assert!(!stored.exists());
    // A mislabelled but correct body is stored as the verified bytes, and
    // clients are never told about the upstream's encoding.
    fake.set_fault(Fault {
        content_encoding: Some("gzip".into()),
        ..Fault::default()
    });
    for _ in 0..2 {
        let r = client().get(&url).send().await.unwrap();
        assert!(r.headers().get("content-encoding").is_none());
        assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
    }
    // Tender never asks upstreams for an encoding.
    assert!(
        fake.log().iter().all(|l| l.accept_encoding.is_none()),
        "{:?}",
        fake.log()
    );
}
