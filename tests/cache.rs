//! The cache engine: one upstream fetch per blob however many clients ask,
//! leaders that go away, ranged followers, failure propagation, LRU bounds.

use std::time::Duration;

use testkit::daemon::Daemon;
use testkit::fake::{registry_toml, Fake, Fault};
use testkit::rng::random_bytes;

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn slow() -> Fault {
    // 2 MiB in 32 chunks of 64 KiB, 5 ms apart: ~160 ms of transfer.
    Fault {
        chunk: Some(64 << 10),
        chunk_delay: Some(Duration::from_millis(5)),
        ..Fault::default()
    }
}

use testkit::http::fetch as get;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_fetch_upstream_once() {
    let fake = Fake::start().await;
    let data = random_bytes(2 << 20, 1);
    let digest = fake.put_blob(data.clone());
    fake.set_fault(slow());
    let d = Daemon::over(&[&fake]).await;
    // Clients in different repositories share the fill: blobs are keyed by digest alone.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            tokio::spawn(get(
                d.url(&format!("/v2/team{i}/app/blobs/{digest}?ns=docker.io")),
                None,
            ))
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), data);
    }
    assert_eq!(
        fake.blob_gets(),
        1,
        "16 concurrent clients, one upstream GET"
    );
    let coalesced = d.metric("tender_requests_total{kind=\"blob\",result=\"coalesced\"}");
    let miss = d.metric("tender_requests_total{kind=\"blob\",result=\"miss\"}");
    assert_eq!((miss, coalesced), (1.0, 15.0));
    assert_eq!(d.metric("tender_inflight_fetches"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_followers_join_the_fill_and_get_their_bytes() {
    let fake = Fake::start().await;
    let data = random_bytes(2 << 20, 2);
    let digest = fake.put_blob(data.clone());
    fake.set_fault(slow());
    let d = Daemon::over(&[&fake]).await;
    let url = d.url(&format!("/v2/library/app/blobs/{digest}"));
    let full = tokio::spawn(get(url.clone(), None));
    tokio::time::sleep(Duration::from_millis(20)).await;
    // containerd 2.1+ style: open-ended parallel chunks, plus closed and suffix ranges.
    let ranges = [
        (0usize, None),
        (1 << 20, None),
        (100, Some(199)),
        (2_000_000, Some(2_097_151)),
    ];
    let tasks: Vec<_> = ranges
        .iter()
        .map(|(a, b)| {
            let r = match b {
                Some(b) => format!("bytes={a}-{b}"),
                None => format!("bytes={a}-"),
            };
            tokio::spawn(get(url.clone(), Some(r)))
        })
        .collect();
    let suffix = tokio::spawn(get(url.clone(), Some("bytes=-1000".into())));
    for ((a, b), t) in ranges.iter().zip(tasks) {
        let end = b.map_or(data.len(), |b| b + 1);
        assert_eq!(t.await.unwrap().unwrap(), &data[*a..end]);
    }
    assert_eq!(suffix.await.unwrap().unwrap(), &data[data.len() - 1000..]);
    assert_eq!(full.await.unwrap().unwrap(), data);
    assert_eq!(fake.blob_gets(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_disconnects_does_not_cancel_the_fill() {
    let fake = Fake::start().await;
    let data = random_bytes(1 << 20, 3);
    let digest = fake.put_blob(data.clone());
    fake.set_fault(Fault {
        gate: true,
        ..Fault::default()
    });
    let d = Daemon::over(&[&fake]).await;
    let url = d.url(&format!("/v2/library/app/blobs/{digest}"));
    // The leader gets its headers, reads a little, and hangs up.
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    let follower = tokio::spawn(get(url.clone(), None));
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.release();
    assert_eq!(follower.await.unwrap().unwrap(), data);
    assert_eq!(fake.blob_gets(), 1);
    // And the blob was committed: the next request is a hit.
    assert_eq!(get(url, None).await.unwrap(), data);
    assert_eq!(
        d.metric("tender_requests_total{kind=\"blob\",result=\"hit\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fill_fails_every_follower_at_once_and_the_next_request_starts_afresh() {
    let fake = Fake::start().await;
    let data = random_bytes(1 << 20, 4);
    let digest = fake.put_blob(data.clone());
    fake.set_fault(Fault {
        flip_byte: true,
        gate: true,
        ..Fault::default()
    });
    let d = Daemon::over(&[&fake]).await;
    let url = d.url(&format!("/v2/library/app/blobs/{digest}"));
    let tasks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(get(url.clone(), None)))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.release();
    for t in tasks {
        let res = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("no follower may hang");
        assert!(
            res.unwrap().is_err(),
            "a corrupt fill must abort every client"
        );
    }
    assert_eq!(fake.blob_gets(), 1);
    fake.set_fault(Fault::default());
    assert_eq!(get(url, None).await.unwrap(), data);
    assert_eq!(fake.blob_gets(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tag_and_digest_resolves_cost_one_upstream_request() {
    let fake = Fake::start().await;
    let (md, _) = fake.put_image("library/app", "v1", &[b"x".to_vec()]);
    fake.set_fault(Fault {
        manifest_delay: Some(Duration::from_millis(100)),
        ..Fault::default()
    });
    let d = Daemon::over(&[&fake]).await;
    let by_tag: Vec<_> = (0..10)
        .map(|_| tokio::spawn(get(d.url("/v2/library/app/manifests/v1"), None)))
        .collect();
    for t in by_tag {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fake.count("GET", "/manifests/"), 1);
    // A manifest not cached yet, by digest, from many clients at once.
    let other = fake.put_manifest(
        "library/app",
        None,
        "application/vnd.oci.image.manifest.v1+json",
        r#"{"schemaVersion":2,"layers":[]}"#,
    );
    let by_digest: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(get(
                d.url(&format!("/v2/library/app/manifests/{other}")),
                None,
            ))
        })
        .collect();
    for t in by_digest {
        t.await.unwrap().unwrap();
    }
    assert_eq!(fake.count("GET", &format!("/manifests/{other}")), 1);
    let _ = md;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lru_stays_bounded_and_a_blob_evicted_mid_read_still_completes() {
    let fake = Fake::start().await;
    let blobs: Vec<Vec<u8>> = (0..5).map(|i| random_bytes(400_000, 10 + i)).collect();
    let digests: Vec<String> = blobs.iter().map(|b| fake.put_blob(b.clone())).collect();
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&fake.url()]),
        "cache_max_size = \"1MB\"",
    )
    .await;
    let url = |i: usize| d.url(&format!("/v2/library/app/blobs/{}", digests[i]));
    assert_eq!(get(url(0), None).await.unwrap(), blobs[0]);
    // Start reading blob 0 from the cache, slowly.
    let mut slow_reader = client().get(url(0)).send().await.unwrap();
    let first = slow_reader.chunk().await.unwrap().unwrap();
    // Fill the cache past its bound: blob 0 (least recently used) is evicted.
    for (i, blob) in blobs.iter().enumerate().skip(1) {
        assert_eq!(&get(url(i), None).await.unwrap(), blob);
    }
    let path = d
        .dir
        .join("blobs/sha256")
        .join(&digests[0][7..9])
        .join(&digests[0][7..]);
    assert!(!path.exists(), "blob 0 should have been evicted");
    assert!(
        d.cache().store().total_size() <= 1_000_000,
        "store over its bound: {}",
        d.cache().store().total_size()
    );
    assert!(d.metric("tender_cache_evictions_total") >= 1.0);
    // The reader that had it open still gets every byte.
    let mut got = first.to_vec();
    while let Some(c) = slow_reader.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert_eq!(got, blobs[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_larger_than_the_whole_cache_is_streamed_through_without_being_kept() {
    let fake = Fake::start().await;
    let data = random_bytes(3 << 20, 20);
    let digest = fake.put_blob(data.clone());
    let d = Daemon::start(
        &registry_toml("docker.io", true, &[&fake.url()]),
        "cache_max_size = \"1MiB\"",
    )
    .await;
    let url = d.url(&format!("/v2/library/app/blobs/{digest}"));
    assert_eq!(get(url.clone(), None).await.unwrap(), data);
    assert_eq!(d.cache().store().total_size(), 0);
    assert_eq!(std::fs::read_dir(d.dir.join("tmp")).unwrap().count(), 0);
    assert_eq!(
        d.metric("tender_passthrough_total{reason=\"larger_than_cache\"}"),
        1.0
    );
    assert_eq!(get(url, None).await.unwrap(), data);
    assert_eq!(fake.blob_gets(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_from_another_repository_is_not_failed_by_the_leaders_not_found() {
    let fake = Fake::start().await;
    let data = random_bytes(100_000, 30);
    let digest = fake.put_blob(data.clone());
    fake.set_fault(Fault {
        blob_repo: Some("library/app".into()),
        blob_delay: Some(Duration::from_millis(300)),
        ..Fault::default()
    });
    let d = Daemon::over(&[&fake]).await;
    // The leader asks under a repository that does not have the blob ...
    let wrong = tokio::spawn(get(d.url(&format!("/v2/nope/blobs/{digest}")), None));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ... and a client of the right repository joins its fill meanwhile.
    let right = tokio::spawn(get(d.url(&format!("/v2/library/app/blobs/{digest}")), None));
    assert!(wrong.await.unwrap().is_err());
    assert_eq!(right.await.unwrap().unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_body_for_a_non_empty_digest_is_never_a_complete_response() {
    let fake = Fake::start().await;
    let digest = fake.put_blob(random_bytes(1000, 31));
    fake.set_fault(Fault {
        empty_blobs: true,
        ..Fault::default()
    });
    let d = Daemon::over(&[&fake]).await;
    let r = d.get(&format!("/v2/library/app/blobs/{digest}")).await;
    assert!(
        r.status().is_server_error(),
        "a lying empty body must fail, got {}",
        r.status()
    );
    // The real empty blob is served (and verified).
    let empty = fake.put_blob(Vec::new());
    let r = d.get(&format!("/v2/library/app/blobs/{empty}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
}
