//! No state grows without bound with what clients ask: 100,000 distinct
//! random repositories and tags (half unknown upstream) leave memory entries
//! and disk use under their bounds.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use tender::cache::{manifests, tags};
use testkit::daemon::Daemon;
use testkit::fake::{registry_toml, Fake, Fault};
use testkit::rng::seeded;

const REQUESTS: usize = 100_000;
const WORKERS: usize = 32;
const CACHE_MAX: u64 = 8 << 20;

/// Disk used under `dir` as `du` counts it: allocated blocks of every file
/// and directory (and a file's length where the file system stores it inline).
fn disk_used(dir: &Path) -> u64 {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    let own = (meta.blocks() * 512).max(meta.len());
    if !meta.is_dir() {
        return own;
    }
    own + std::fs::read_dir(dir)
        .unwrap()
        .map(|e| disk_used(&e.unwrap().path()))
        .sum::<u64>()
}

fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| {
                let p = e.unwrap().path();
                if p.is_dir() {
                    files_under(&p)
                } else {
                    1
                }
            })
            .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_tags_and_repositories_leave_memory_and_disk_within_their_bounds() {
    let fake = Fake::start().await;
    fake.set_fault(Fault {
        any_tag: true,
        // Every new repository costs a token: the token cache is exercised too.
        require_token: true,
        ..Fault::default()
    });
    // On tmpfs where there is one: the test writes 50,000 records and
    // manifests, each fsynced, which a tmpfs does at memory speed.
    let base = if Path::new("/dev/shm").is_dir() {
        Path::new("/dev/shm").to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("tender-bounded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = Daemon::start_in(
        dir.clone(),
        &registry_toml("docker.io", true, &[&fake.url()]),
        &format!("cache_max_size = \"{CACHE_MAX}\"\nmin_free_space = \"0\""),
    )
    .await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let base_url = Arc::new(d.url(""));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (client, base_url) = (client.clone(), base_url.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = seeded(w as u64);
            let (mut ok, mut missing) = (0, 0);
            for i in (w..REQUESTS).step_by(WORKERS) {
                let repo = format!("r{}/app{}", rng.u32(..), i % 97);
                let tag = if i % 2 == 0 {
                    format!("miss-{}", rng.u64(..))
                } else {
                    format!("t{}", rng.u64(..))
                };
                let url = format!("{base_url}/v2/{repo}/manifests/{tag}?ns=docker.io");
                let r = client.get(&url).send().await.unwrap();
                match r.status().as_u16() {
                    200 => ok += 1,
                    404 => missing += 1,
                    s => panic!("{url}: {s}"),
                }
                r.bytes().await.unwrap();
            }
            (ok, missing)
        }));
    }
    let (mut ok, mut missing) = (0, 0);
    for w in workers {
        let (o, m) = w.await.unwrap();
        ok += o;
        missing += m;
    }
    assert_eq!((ok, missing), (REQUESTS / 2, REQUESTS / 2));
    // Each manifest was asked for once with a token (after one 401 that
    // sent tender for the token: every repository is new).
    let authorized_gets = fake
        .log()
        .iter()
        .filter(|l| l.method == "GET" && l.path.contains("/manifests/"))
        .filter(|l| l.authorization.is_some())
        .count();
    assert_eq!(authorized_gets, REQUESTS);

    let cache = d.cache();
    let tags_in_memory = cache.manifests().tags().memory_entries();
    let (manifests_in_memory, manifest_bytes) = cache.manifests().memory_usage();
    let tokens = cache.registry(Some("docker.io")).unwrap().clients()[0].token_count();
    let store = cache.store();
    let on_disk = disk_used(&dir);
    let files: usize = ["blobs", "manifests", "tags", "tmp"]
        .iter()
        .map(|d| files_under(&dir.join(d)))
        .sum();
    eprintln!(
        "after {REQUESTS} requests: {tags_in_memory} tags and {manifests_in_memory} manifests \
         ({manifest_bytes} bytes) in memory, {tokens} tokens, {} objects and {files} files \
         taking {on_disk} bytes on disk (store says {}), cache_max_size {CACHE_MAX}",
        store.entry_count(),
        store.disk_usage()
    );
    assert!(tags_in_memory <= tags::MEMORY_ENTRIES, "{tags_in_memory}");
    assert!(
        manifest_bytes <= manifests::MEMORY_BYTES,
        "{manifest_bytes}"
    );
    assert!(tokens <= 1024, "{tokens} tokens");
    assert!(store.disk_usage() <= CACHE_MAX, "{}", store.disk_usage());
    assert!(
        on_disk <= CACHE_MAX,
        "{on_disk} bytes under {} for an {CACHE_MAX}-byte cache",
        dir.display()
    );
    assert_eq!(
        std::fs::read_dir(dir.join("tmp")).unwrap().count(),
        0,
        "no temp files left behind"
    );
    // Nothing is under the cache dir that the store does not know of.
    assert_eq!(files, store.entry_count());
    // And the cache still works: a recent tag is served from it.
    assert!(store.entry_count() > 0);
}
