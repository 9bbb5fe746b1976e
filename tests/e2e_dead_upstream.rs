//! End to end with real parts: a real containerd pulls
//! `docker.io/library/...` through tender whose FIRST upstream is dead, in
//! one way per test, and whose second upstream is a real distribution
//! (`docker-registry`) holding the image. containerd's own `server` fallback
//! is unreachable, so the pull can only succeed through tender.
//!
//! Each test asserts that the pull succeeds, that every digest of the image
//! is in containerd's content store, that the pull takes well under the 30 s
//! after which containerd gives up on a host (a sanity bound, not a
//! benchmark), and — the point — what it cost: the real registry served each
//! blob exactly once, and the dead upstream saw only what it had to.
//!
//! Needs containerd, ctr, docker-registry and skopeo (Debian packages,
//! installed by `scripts/test`); fails, not skips, without them.

use testkit::faulty;
use testkit::tender;

use std::fs;
use std::time::Duration;

use faulty::StallServer;
use testkit::containerd::*;
use testkit::daemon::runtime;
use testkit::fake::{Fake, Fault};
use testkit::image::*;
use testkit::process::*;
use testkit::registry::*;
use testkit::tender::TenderProcess;

const UNREACHABLE_ORIGIN: &str = "https://127.0.0.1:9";
const REPO: &str = "library/deadup";
const TAG: &str = "v1";
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Two layers; both are larger than [`BREAK_AT`], the config is smaller.
const LAYERS: [u64; 2] = [2 * MIB, 512 * KIB];
/// Where the resetting upstream breaks every blob body.
const BREAK_AT: usize = 300 << 10;
/// Short timeouts so that a dead upstream costs seconds, not minutes.
const TIMEOUTS: &str =
    "connect_timeout = \"1s\"\nheader_timeout = \"2s\"\nstall_timeout = \"2s\"\n";
/// containerd gives up on a host whose headers take 30 s; a pull through a
/// dead first upstream must stay far from that.
const PULL_BOUND: Duration = Duration::from_secs(30);

/// A generated image pushed into a fresh real registry, whose log is then
/// cleared so that it shows only what tender asks for.
fn image_in_registry(tmp: &TempDir, seed: u64) -> (TestImage, Registry) {
    require_tools(&["containerd", "ctr", "docker-registry", "skopeo"]);
    let img = make_oci_layout(&tmp.subdir("layout"), TAG, &LAYERS, seed);
    let reg = Registry::start(&tmp.subdir("registry"));
    skopeo_push(&img, &format!("{}/{REPO}:{TAG}", reg.host()));
    reg.clear_log();
    (img, reg)
}

/// tender for docker.io with `first` as the first upstream and the real
/// registry second.
fn tender_with(tmp: &TempDir, first: &str, reg: &Registry) -> TenderProcess {
    let toml = format!(
        "[[registry]]\nhost = \"docker.io\"\ndefault = true\n  [[registry.upstream]]\n  url = \"{first}\"\n  [[registry.upstream]]\n  url = \"{}\"\n",
        reg.url()
    );
    TenderProcess::start(&tmp.subdir("tender"), &toml, TIMEOUTS)
}

/// A fresh containerd pulls the image through tender (hosts.toml: tender,
/// then an unreachable `server`). Asserts success, content and the time
/// bound; returns containerd (drop it before `tmp`) and the pull's wall time.
fn pull_through(
    tmp: &TempDir,
    case: &str,
    t: &TenderProcess,
    img: &TestImage,
) -> (Containerd, Duration) {
    let hosts = tmp.subdir("hosts");
    write_hosts_toml(&hosts, "docker.io", &t.base(), UNREACHABLE_ORIGIN);
    let mut c = Containerd::start(&tmp.subdir("ctrd"));
    c.ctr_timeout = Duration::from_secs(90);
    let reference = format!("docker.io/{REPO}:{TAG}");
    let elapsed = c
        .pull(&hosts, &reference, false)
        .unwrap_or_else(|e| panic!("{case}: pull failed: {e}\ntender log:\n{}", t.log()));
    eprintln!("{case}: ctr image pull took {elapsed:.2?}");
    let content = c.content_digests();
    for d in img.all_digests() {
        assert!(
            content.contains(&d),
            "{case}: {d} missing from containerd's content store: {content:?}"
        );
    }
    assert!(
        elapsed < PULL_BOUND,
        "{case}: the pull took {elapsed:?}\ntender log:\n{}",
        t.log()
    );
    (c, elapsed)
}

fn blob_size(img: &TestImage, digest: &str) -> u64 {
    fs::metadata(img.blob_path(digest)).unwrap().len()
}

/// One access-log line of the registry, with the response's body size.
#[derive(Debug, Clone)]
struct Access {
    method: String,
    path: String,
    status: u16,
    bytes: u64,
}

/// `... "GET /v2/x/blobs/sha256:.. HTTP/1.1" 206 1234 "" "tender/0.1.0"`
fn registry_access(reg: &Registry) -> Vec<Access> {
    reg.settle();
    let text = fs::read_to_string(&reg.log_path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('{'))
        .filter_map(|line| {
            let rest = &line[line.find("] \"")? + 3..];
            let (request, after) = rest.split_once('"')?;
            let mut r = request.split(' ');
            let (method, uri, proto) = (r.next()?, r.next()?, r.next()?);
            if !proto.starts_with("HTTP/") {
                return None;
            }
            let mut f = after.split_whitespace();
            let status = f.next()?.parse().ok()?;
            let bytes = f.next().and_then(|b| b.parse().ok()).unwrap_or(0);
            Some(Access {
                method: method.to_string(),
                path: uri.split('?').next().unwrap_or("").to_string(),
                status,
                bytes,
            })
        })
        .collect()
}

fn blob_gets<'a>(log: &'a [Access], digest: &str) -> Vec<&'a Access> {
    let suffix = format!("/blobs/{digest}");
    log.iter()
        .filter(|a| a.method == "GET" && a.path.ends_with(&suffix))
        .collect()
}

/// `tender_upstream_requests_total` of one upstream, by status label.
fn upstream_statuses(t: &TenderProcess, url: &str) -> Vec<(String, f64)> {
    let text = t.metrics();
    let mut out: Vec<(String, f64)> = text
        .lines()
        .filter(|l| l.starts_with("tender_upstream_requests_total{"))
        .filter(|l| l.contains(&format!("upstream=\"{url}\"")))
        .filter_map(|l| {
            let s = l.split("status=\"").nth(1)?.split('"').next()?.to_string();
            Some((s, l.rsplit_once(' ')?.1.parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The registry served the whole image once: one GET of the manifest (by
/// tag; containerd's GET by digest is then a hit in tender) and exactly one
/// whole-body GET of the config and of each layer, and nothing else.
fn assert_registry_served_everything_once(case: &str, reg: &Registry, img: &TestImage) {
    let log = registry_access(reg);
    let manifests: Vec<_> = log
        .iter()
        .filter(|a| a.path.contains("/manifests/"))
        .collect();
    assert_eq!(
        manifests.len(),
        1,
        "{case}: manifest requests at the registry: {manifests:?}"
    );
    assert_eq!(
        (manifests[0].method.as_str(), manifests[0].status),
        ("GET", 200),
        "{case}"
    );
    let mut blobs = img.layer_digests.clone();
    blobs.push(img.config_digest.clone());
    for d in &blobs {
        assert_eq!(
            reg.blob_gets_of(d),
            1,
            "{case}: {d} must be fetched from the registry exactly once"
        );
        let gets = blob_gets(&log, d);
        assert_eq!(
            (gets[0].status, gets[0].bytes),
            (200, blob_size(img, d)),
            "{case}: {d} in one whole body"
        );
    }
    assert_eq!(
        log.len(),
        blobs.len() + 1,
        "{case}: unexpected registry requests: {log:?}"
    );
}

/// A real registry holding a generated image; in front of it, first, a fake
/// upstream holding the same image and answering with a fault; tender over
/// both. Fields drop in order, the temp dir last.
struct FaultyFirst {
    t: TenderProcess,
    fake: Fake,
    _rt: tokio::runtime::Runtime,
    reg: Registry,
    img: TestImage,
    tmp: TempDir,
}

fn faulty_first(name: &str, seed: u64, fault: Fault) -> FaultyFirst {
    let tmp = TempDir::new(&format!("tender-dead-{name}"));
    let (img, reg) = image_in_registry(&tmp, seed);
    let rt = runtime();
    let fake = fake_with_image(&rt, &img, fault);
    let t = tender_with(&tmp, &fake.url(), &reg);
    FaultyFirst {
        t,
        fake,
        _rt: rt,
        reg,
        img,
        tmp,
    }
}

/// An in-process fake upstream holding the very same manifest and blobs
/// (same bytes, so same digests) as the real registry, with `fault`.
fn fake_with_image(rt: &tokio::runtime::Runtime, img: &TestImage, fault: Fault) -> Fake {
    let fake = rt.block_on(Fake::start());
    let manifest = img.blob(&img.manifest_digest);
    let d = fake.put_manifest(REPO, Some(TAG), MT_OCI_MANIFEST, manifest);
    assert_eq!(d, img.manifest_digest);
    let mut blobs = img.layer_digests.clone();
    blobs.push(img.config_digest.clone());
    for d in &blobs {
        assert_eq!(fake.put_blob(img.blob(d)), *d);
    }
    fake.set_fault(fault);
    fake
}

/// tender's "blob body broke; resuming" line for `digest`: its offset.
fn resume_offsets(t: &TenderProcess, digest: &str) -> Vec<u64> {
    t.log()
        .lines()
        .filter(|l| l.contains("resuming") && l.contains(digest))
        .filter_map(|l| {
            l.split("offset=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The first upstream's blob bodies broke at some offset; tender resumed
/// each layer from the registry with `Range`: the registry's log shows one
/// 206 per layer carrying exactly the rest of the blob, nothing else (the
/// manifest and the small config came whole from the first upstream).
fn assert_layers_resumed_from_registry(
    case: &str,
    t: &TenderProcess,
    reg: &Registry,
    img: &TestImage,
) {
    let log = registry_access(reg);
    for d in &img.layer_digests {
        assert_eq!(
            reg.blob_gets_of(d),
            1,
            "{case}: {d}: one GET at the registry"
        );
        let offsets = resume_offsets(t, d);
        assert_eq!(
            offsets.len(),
            1,
            "{case}: {d}: one resume in tender's log\n{}",
            t.log()
        );
        let gets = blob_gets(&log, d);
        let size = blob_size(img, d);
        assert!(offsets[0] > 0 && offsets[0] < size, "{case}: {offsets:?}");
        assert_eq!(
            (gets[0].status, gets[0].bytes),
            (206, size - offsets[0]),
            "{case}: {d} ({size} bytes) resumed at {} with a Range request",
            offsets[0]
        );
    }
    assert_eq!(
        log.len(),
        img.layer_digests.len(),
        "{case}: only the ranged layer GETs reach the registry: {log:?}"
    );
}

#[test]
fn first_upstream_refuses_connections() {
    let case = "refused";
    let tmp = TempDir::new("tender-dead-refused");
    let (img, reg) = image_in_registry(&tmp, 31);
    let dead = format!("http://127.0.0.1:{}", faulty::closed_port());
    let t = tender_with(&tmp, &dead, &reg);
    let (_c, _elapsed) = pull_through(&tmp, case, &t, &img);

    assert_registry_served_everything_once(case, &reg, &img);
    let statuses = upstream_statuses(&t, &dead);
    eprintln!("{case}: dead upstream: {statuses:?}");
    assert!(
        !statuses.is_empty() && statuses.iter().all(|(s, _)| s == "connect_error"),
        "{case}: every attempt on the dead upstream is a connect error: {statuses:?}"
    );
}

#[test]
fn first_upstream_accepts_and_never_answers() {
    let case = "accept-and-stall";
    let tmp = TempDir::new("tender-dead-stall");
    let (img, reg) = image_in_registry(&tmp, 32);
    let stall = StallServer::start();
    let t = tender_with(&tmp, &stall.url(), &reg);
    let (_c, _elapsed) = pull_through(&tmp, case, &t, &img);

    assert_registry_served_everything_once(case, &reg, &img);
    let statuses = upstream_statuses(&t, &stall.url());
    eprintln!(
        "{case}: dead upstream: {statuses:?}, {} connections accepted",
        stall.accepted()
    );
    assert!(stall.accepted() >= 1, "{case}: tender never tried it");
    // Attempts on it are hedged on the registry and lose (cancelled); any
    // that ran out its clock timed out.
    assert!(
        statuses.iter().all(|(s, _)| s == "timeout"),
        "{case}: no attempt on the stalling upstream ends otherwise: {statuses:?}"
    );
    let won = t.metric("tender_upstream_hedges_total{outcome=\"won\",registry=\"docker.io\"}");
    assert!(
        won >= 1.0,
        "{case}: the registry won hedges against it ({won})"
    );
}

#[test]
fn first_upstream_resets_blob_bodies_after_some_bytes() {
    let case = "reset-mid-body";
    let s = faulty_first(
        "reset",
        33,
        Fault {
            truncate: Some(BREAK_AT),
            // A pause after each 64 KiB lets every byte before the break
            // reach the wire: without it hyper may drop the chunk it had
            // buffered when the body errors, and the break lands earlier.
            chunk: Some(64 << 10),
            chunk_delay: Some(Duration::from_millis(10)),
            ..Fault::default()
        },
    );
    assert!(
        blob_size(&s.img, &s.img.config_digest) < BREAK_AT as u64,
        "the config must come whole from the breaking upstream"
    );
    let (_c, _elapsed) = pull_through(&s.tmp, case, &s.t, &s.img);

    assert_layers_resumed_from_registry(case, &s.t, &s.reg, &s.img);
    let mut offsets = 0;
    for d in &s.img.layer_digests {
        // Every byte that arrived before the break is kept.
        let at = resume_offsets(&s.t, d)[0];
        assert_eq!(at, BREAK_AT as u64, "{case}: {d} resumed at {at}");
        offsets += at;
        let at_fake: Vec<_> = s
            .fake
            .log()
            .into_iter()
            .filter(|l| l.method == "GET" && l.path.ends_with(&format!("/blobs/{d}")))
            .collect();
        assert_eq!(at_fake.len(), 1, "{case}: {d}: {at_fake:?}");
        assert_eq!(at_fake[0].range, None, "{case}: {d}");
    }
    // No byte was fetched twice: what tender got from the breaking upstream
    // (the manifest and the config, then each layer's prefix) and from the
    // registry (each layer's rest) adds up to the image.
    let metrics = s.t.metrics();
    let from = |url: &str| {
        tender::metric_value(
            &metrics,
            &format!("tender_upstream_bytes_total{{registry=\"docker.io\",upstream=\"{url}\"}}"),
        ) as u64
    };
    let layer_bytes: u64 = s
        .img
        .layer_digests
        .iter()
        .map(|d| blob_size(&s.img, d))
        .sum();
    let manifest = s.img.blob(&s.img.manifest_digest).len() as u64;
    assert_eq!(
        from(&s.fake.url()),
        manifest + blob_size(&s.img, &s.img.config_digest) + offsets,
        "{case}: bytes from the breaking upstream\n{metrics}"
    );
    assert_eq!(
        from(&s.reg.url()),
        layer_bytes - offsets,
        "{case}: bytes from the registry\n{metrics}"
    );
    eprintln!(
        "{case}: breaking upstream: {:?}; resumed at {:?}; registry: {:?}",
        upstream_statuses(&s.t, &s.fake.url()),
        s.img
            .layer_digests
            .iter()
            .map(|d| resume_offsets(&s.t, d))
            .collect::<Vec<_>>(),
        registry_access(&s.reg)
            .iter()
            .map(|a| (a.status, a.bytes))
            .collect::<Vec<_>>()
    );
}

#[test]
fn first_upstream_stalls_mid_body() {
    let case = "stall-mid-body";
    // Headers and a first 64 KiB chunk, then nothing, connection open.
    let s = faulty_first(
        "bodystall",
        34,
        Fault {
            gate: true,
            ..Fault::default()
        },
    );
    let (_c, _elapsed) = pull_through(&s.tmp, case, &s.t, &s.img);

    assert_layers_resumed_from_registry(case, &s.t, &s.reg, &s.img);
    let log = s.t.log();
    assert!(
        log.contains("no bytes for 1s"),
        "{case}: the progress watchdog (1 s, not stall_timeout's 2 s) must end the stalled bodies\n{log}"
    );
    let stalls = s.t.metric(&format!(
        "tender_upstream_stalls_total{{registry=\"docker.io\",upstream=\"{}\"}}",
        s.fake.url()
    ));
    assert_eq!(
        stalls,
        s.img.layer_digests.len() as f64,
        "{case}: one per layer"
    );
    eprintln!(
        "{case}: stalling upstream: {:?}; registry: {:?}",
        upstream_statuses(&s.t, &s.fake.url()),
        registry_access(&s.reg)
            .iter()
            .map(|a| (a.status, a.bytes))
            .collect::<Vec<_>>()
    );
}

#[test]
fn first_upstream_answers_503_to_everything() {
    let case = "503";
    let s = faulty_first(
        "503",
        35,
        Fault {
            status: Some(503),
            ..Fault::default()
        },
    );
    let (_c, _elapsed) = pull_through(&s.tmp, case, &s.t, &s.img);

    assert_registry_served_everything_once(case, &s.reg, &s.img);
    let statuses = upstream_statuses(&s.t, &s.fake.url());
    eprintln!(
        "{case}: dead upstream: {statuses:?}; it saw {} requests",
        s.fake.log().len()
    );
    assert!(
        !statuses.is_empty() && statuses.iter().all(|(s, _)| s == "503"),
        "{case}: {statuses:?}"
    );
    // One try per distinct object (manifest, config, layers) at most.
    assert!(
        s.fake.log().len() <= s.img.layer_digests.len() + 2,
        "{case}: the failing upstream was asked again and again: {:?}",
        s.fake.log()
    );
}

#[test]
fn first_upstream_answers_429_with_retry_after() {
    let case = "429";
    let s = faulty_first(
        "429",
        36,
        Fault {
            status: Some(429),
            retry_after: Some(60),
            ..Fault::default()
        },
    );
    let (_c, _elapsed) = pull_through(&s.tmp, case, &s.t, &s.img);

    assert_registry_served_everything_once(case, &s.reg, &s.img);
    let statuses = upstream_statuses(&s.t, &s.fake.url());
    eprintln!(
        "{case}: rate-limiting upstream: {statuses:?}; it saw {:?}",
        s.fake
            .log()
            .iter()
            .map(|l| format!("{} {}", l.method, l.path))
            .collect::<Vec<_>>()
    );
    // Retry-After is honoured: after the first 429 tender leaves it alone
    // for the rest of the pull, rather than asking for every object.
    assert_eq!(
        s.fake.log().len(),
        1,
        "{case}: the rate-limiting upstream must be asked once: {:?}",
        s.fake.log()
    );
    assert_eq!(statuses, [("429".to_string(), 1.0)], "{case}");
}
