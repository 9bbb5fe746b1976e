//! Nothing a client receives is final before it is verified: ranges of a
//! blob being filled, ranges streamed through when the disk cannot take a
//! blob, the empty blob; and a stored object that cannot be read is evicted
//! and fetched again.

use std::time::Duration;

use testkit::daemon::Daemon;
use testkit::fake::{Fake, Fault};
use testkit::http::client;
use testkit::rng::random_bytes;

const SIZE: usize = 1_000_000;

async fn get_range(d: &Daemon, digest: &str, range: &str) -> reqwest::Response {
    client()
        .get(d.url(&format!("/v2/library/app/blobs/{digest}")))
        .header("range", range)
        .send()
        .await
        .unwrap()
}

/// The fake flips the byte in the middle of what it sends: a range holding
/// it must never complete.
fn flipping() -> Fault {
    Fault {
        flip_byte: true,
        chunk: Some(16 << 10),
        chunk_delay: Some(Duration::from_millis(1)),
        ..Fault::default()
    }
}

/// A cache that cannot take any blob: every fill is streamed through.
const NO_ROOM: &str = "min_free_space = \"1000TiB\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_a_blob_being_filled_is_final_only_once_the_blob_is_verified() {
    let fake = Fake::start().await;
    let data = random_bytes(SIZE, 40);
    let digest = fake.put_blob(data.clone());
    fake.set_fault(flipping());
    let d = Daemon::over(&[&fake]).await;
    // The flipped byte (at SIZE / 2) lies inside this range, which ends well
    // before the blob's end.
    let r = get_range(&d, &digest, "bytes=400000-599999").await;
    assert!(
        r.status() != 206 || r.bytes().await.is_err(),
        "a range holding unverified (and wrong) bytes must not complete"
    );
    // A good copy serves ranges, from the fill or from the cache.
    fake.set_fault(Fault::default());
    let r = get_range(&d, &digest, "bytes=400000-599999").await;
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[400_000..600_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_streamed_through_is_verified_against_the_whole_blob() {
    let fake = Fake::start().await;
    let data = random_bytes(SIZE, 41);
    let digest = fake.put_blob(data.clone());
    let d = Daemon::over_in(
        std::env::temp_dir().join(format!("tender-integrity-pt-{}", std::process::id())),
        &[&fake],
        NO_ROOM,
    )
    .await;
    // Good bytes: the range, and the upstream was read from the first byte
    // (only the whole blob can be verified).
    let r = get_range(&d, &digest, "bytes=10-").await;
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[10..]);
    assert!(d.metric("tender_passthrough_total{reason=\"low_disk_space\"}") >= 1.0);
    let log = fake.log();
    let reads: Vec<_> = log.iter().filter(|l| l.path.contains("/blobs/")).collect();
    assert!(reads.iter().all(|l| l.range.is_none()), "{reads:?}");
    // A flipped byte upstream: neither an open range nor one inside the blob completes.
    fake.set_fault(flipping());
    for range in ["bytes=10-", "bytes=400000-599999"] {
        let r = get_range(&d, &digest, range).await;
        assert!(
            r.status() != 206 || r.bytes().await.is_err(),
            "{range}: wrong bytes completed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_empty_blob_is_served_when_streamed_through() {
    let fake = Fake::start().await;
    let empty = fake.put_blob(Vec::new());
    let d = Daemon::over_in(
        std::env::temp_dir().join(format!("tender-integrity-empty-{}", std::process::id())),
        &[&fake],
        NO_ROOM,
    )
    .await;
    let r = d.get(&format!("/v2/library/app/blobs/{empty}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_blob_that_cannot_be_read_is_evicted_and_fetched_again() {
    let fake = Fake::start().await;
    let data = random_bytes(100_000, 42);
    let digest = fake.put_blob(data.clone());
    let d = Daemon::over(&[&fake]).await;
    let path = format!("/v2/library/app/blobs/{digest}");
    assert_eq!(&d.get(&path).await.bytes().await.unwrap()[..], &data[..]);
    let stored = d
        .dir
        .join("blobs/sha256")
        .join(&digest[7..9])
        .join(&digest[7..]);
    for _ in 0..100 {
        if stored.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A directory where the blob should be: opening it as a blob fails.
    std::fs::remove_file(&stored).unwrap();
    std::fs::create_dir(&stored).unwrap();
    let r = d.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
    assert_eq!(
        d.metric("tender_cache_bad_objects_total{found=\"read\"}"),
        1.0
    );
    assert_eq!(fake.blob_gets(), 2, "fetched again");
    for _ in 0..100 {
        if stored.is_file() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stored.is_file(), "the good copy is cached again");
}
