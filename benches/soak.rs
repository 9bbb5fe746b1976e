//! Soak: a steady mixed load (warm blobs, cold blobs, ranged reads of both,
//! manifests by tag with revalidations, malformed requests) through a tender
//! process whose first upstream misbehaves in turn (silent, stalled
//! mid-body, 503s, corrupt bytes, truncated bodies, slow), its second one
//! healthy. Every `SOAK_SAMPLE_SECS` it records tender's RSS, open fds,
//! threads, runtime tasks and cache size; at the end it says whether they
//! stayed flat, and counts outcomes and errors by kind. Every body is checked
//! (digest or range bytes): a wrong byte fails the bench.
//!
//! `cargo bench --bench soak` (2 minutes); `SOAK_SECS=1800` for 30 minutes,
//! `SOAK_WORKERS` (default 4) concurrent clients, `SOAK_SAMPLE_SECS`
//! (default 10).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::bench::{current_rss, fake_upstream, report};
use testkit::fake::{digest_of, registry_toml, Fake, Fault};
use testkit::faulty::{FaultProxy, ProxyMode};
use testkit::process::TempDir;
use testkit::rng::{random_bytes, seeded, Rng};
use testkit::tender::{metric_value, TenderProcess};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const IMAGES: usize = 10;
/// Idle time after the load: tender's upstream pool closes connections idle for 60 s.
const IDLE_AFTER_SECS: u64 = 65;
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The first upstream's behaviour, in turn, each for `PHASE`.
const PHASE: Duration = Duration::from_secs(15);
const PHASES: [&str; 7] = [
    "clean",
    "silent",
    "stalled",
    "503",
    "corrupt",
    "truncated",
    "slow",
];

fn set_phase(name: &str, proxy: &FaultProxy, first: &Fake) {
    let (mode, fault) = match name {
        "silent" => (ProxyMode::Silent, Fault::default()),
        "stalled" => (ProxyMode::StallAfter(200 * KIB as u64), Fault::default()),
        "503" => (
            ProxyMode::Pass,
            Fault {
                status: Some(503),
                ..Fault::default()
            },
        ),
        "corrupt" => (
            ProxyMode::Pass,
            Fault {
                flip_byte: true,
                ..Fault::default()
            },
        ),
        "truncated" => (
            ProxyMode::Pass,
            Fault {
                truncate: Some(100 * KIB),
                ..Fault::default()
            },
        ),
        "slow" => (
            ProxyMode::Pass,
            Fault {
                chunk: Some(16 * KIB),
                chunk_delay: Some(Duration::from_millis(20)),
                ..Fault::default()
            },
        ),
        _ => (ProxyMode::Pass, Fault::default()),
    };
    proxy.set_mode(mode);
    proxy.reset();
    first.set_fault(fault);
}

/// What the clients saw, by kind.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<&'static str, u64>>);

impl Tally {
    fn add(&self, kind: &'static str) {
        *self.0.lock().unwrap().entry(kind).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        self.0.lock().unwrap().clone()
    }
}

/// Content both upstreams hold.
struct World {
    base: String,
    /// (digest, bytes) of every warm layer.
    warm: Vec<(String, Arc<Vec<u8>>)>,
    /// (repository, manifest digest) of the tagged images.
    tags: Vec<(String, String)>,
    upstreams: [Fake; 2],
}

fn get(
    client: &reqwest::blocking::Client,
    url: &str,
    headers: &[(&str, String)],
) -> Result<(u16, Option<String>, Vec<u8>), &'static str> {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().map_err(|_| "transport_error")?;
    let status = r.status().as_u16();
    let digest = r
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.bytes().map_err(|_| "body_broken")?;
    Ok((status, digest, body.to_vec()))
}

/// One operation, checked; returns its outcome kind.
fn op(world: &World, client: &reqwest::blocking::Client, rng: &mut Rng) -> &'static str {
    let base = &world.base;
    let roll = rng.u32(0..100);
    let blob_url = |d: &str| format!("{base}/v2/library/soak/blobs/{d}");
    match roll {
        // Warm blob, whole.
        0..40 => {
            let (d, _) = &world.warm[rng.usize(0..world.warm.len())];
            match get(client, &blob_url(d), &[]) {
                Ok((200, _, body)) if digest_of(&body) == *d => "warm_ok",
                Ok((200, _, _)) => "WRONG_BYTES",
                Ok(_) => "warm_bad_status",
                Err(e) => e,
            }
        }
        // Warm blob, a range.
        40..55 => {
            let (d, data) = &world.warm[rng.usize(0..world.warm.len())];
            let start = rng.usize(0..data.len() - 1);
            let end = rng.usize(start..data.len());
            match get(
                client,
                &blob_url(d),
                &[("range", format!("bytes={start}-{end}"))],
            ) {
                Ok((206, _, body)) if body == data[start..=end] => "range_ok",
                Ok((206, _, _)) => "WRONG_BYTES",
                Ok(_) => "range_bad_status",
                Err(e) => e,
            }
        }
        // Cold blob (whole, or first asked for as a range), then forgotten
        // by the upstreams so that nothing grows in the harness.
        55..75 => {
            let size = rng.usize(64 * KIB..2 * MIB);
            let data = random_bytes(size, rng.u64(..));
            let d = digest_of(&data);
            for u in &world.upstreams {
                u.put_blob(data.clone());
            }
            let ranged = rng.u8(0..4) == 0;
            let out = if ranged {
                let start = rng.usize(0..size - 1);
                match get(
                    client,
                    &blob_url(&d),
                    &[("range", format!("bytes={start}-"))],
                ) {
                    Ok((206, _, body)) if body == data[start..] => "cold_range_ok",
                    Ok((206, _, _)) => "WRONG_BYTES",
                    Ok(_) => "cold_bad_status",
                    Err(e) => e,
                }
            } else {
                match get(client, &blob_url(&d), &[]) {
                    Ok((200, _, body)) if digest_of(&body) == d => "cold_ok",
                    Ok((200, _, _)) => "WRONG_BYTES",
                    Ok(_) => "cold_bad_status",
                    Err(e) => e,
                }
            };
            for u in &world.upstreams {
                u.remove_blob(&d);
            }
            out
        }
        // A manifest by tag (tag_ttl is short: many are revalidations).
        75..95 => {
            let (repo, md) = &world.tags[rng.usize(0..world.tags.len())];
            let url = format!("{base}/v2/{repo}/manifests/v1");
            match get(client, &url, &[("accept", ACCEPT.to_string())]) {
                Ok((200, Some(d), body)) if d == *md && digest_of(&body) == *md => "manifest_ok",
                Ok((200, _, _)) => "WRONG_BYTES",
                Ok(_) => "manifest_bad_status",
                Err(e) => e,
            }
        }
        // Malformed requests: a clear 4xx, nothing else.
        _ => {
            let bad = [
                format!("{base}/v2/library/soak/blobs/sha256:zz"),
                format!("{base}/v2/library/soak/manifests/v1?ns=unknown.example"),
                format!("{base}/v2/Bad..Name/manifests/v1"),
            ];
            let url = &bad[rng.usize(0..bad.len())];
            match get(client, url, &[]) {
                Ok((400..=404, _, _)) => "malformed_refused",
                Ok(_) => "malformed_bad_status",
                Err(e) => e,
            }
        }
    }
}

/// One sample of the tender process.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: u64,
    rss: u64,
    fds: u64,
    threads: u64,
    tasks: u64,
    cache: u64,
    inflight: u64,
}

fn sample(t: &TenderProcess, at: u64) -> Sample {
    let pid = t.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let metrics = t.metrics();
    Sample {
        at,
        rss: current_rss(pid),
        fds,
        threads,
        tasks: metric_value(&metrics, "tender_runtime_tasks") as u64,
        cache: metric_value(&metrics, "tender_cache_size_bytes") as u64,
        inflight: metric_value(&metrics, "tender_inflight_fetches") as u64,
    }
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / MIB as f64)
}

fn print_sample(s: &Sample, phase: &str, ops: u64) {
    report(
        "soak_sample",
        &[
            ("t", s.at.to_string()),
            ("phase", phase.to_string()),
            ("rss_mib", mib(s.rss)),
            ("fds", s.fds.to_string()),
            ("threads", s.threads.to_string()),
            ("tasks", s.tasks.to_string()),
            ("cache_mib", mib(s.cache)),
            ("inflight", s.inflight.to_string()),
            ("ops", ops.to_string()),
        ],
    );
}

fn main() {
    let secs = env("SOAK_SECS", 120);
    let every = env("SOAK_SAMPLE_SECS", 10).max(1);
    let workers = env("SOAK_WORKERS", 4).max(1);
    let (rt, first) = fake_upstream();
    let second = rt.block_on(Fake::start());
    let proxy = FaultProxy::start(first.addr, ProxyMode::Pass);

    let mut warm = Vec::new();
    let mut tags = Vec::new();
    for i in 0..IMAGES {
        let layers = [
            random_bytes(MIB, 100 + i as u64),
            random_bytes(256 * KIB, 200 + i as u64),
        ];
        let repo = format!("library/app{i}");
        let mut md = String::new();
        for u in [&first, &second] {
            (md, _) = u.put_image(&repo, "v1", &layers);
        }
        for l in layers {
            warm.push((digest_of(&l), Arc::new(l)));
        }
        tags.push((repo, md));
    }

    let tmp = TempDir::new("tender-bench-soak");
    let t = TenderProcess::start(
        &tmp.subdir("tender"),
        &registry_toml("docker.io", true, &[&proxy.url(), &second.url()]),
        // A cache a few times the warm set: cold blobs keep the LRU busy.
        // A short breaker cool-down: the first upstream is tried again (and
        // fails again) within each phase.
        "cache_max_size = \"128MiB\"\ntag_ttl = \"2s\"\nbreaker_cooldown = \"5s\"",
    );
    let world = Arc::new(World {
        base: t.base(),
        warm,
        tags,
        upstreams: [first, second],
    });
    // Warm-up: every image through each upstream (the second one while the
    // first answers 503), so that connection pools and their housekeeping
    // tasks exist before the baseline is taken.
    let client = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .expect("a client");
    for phase in ["clean", "503", "clean"] {
        set_phase(phase, &proxy, &world.upstreams[0]);
        for (repo, md) in &world.tags {
            let url = format!("{}/v2/{repo}/manifests/{md}", world.base);
            let r = get(&client, &url, &[("accept", ACCEPT.to_string())]);
            assert!(matches!(r, Ok((200, _, _))), "warm-up {url}: {r:?}");
        }
        for (d, _) in &world.warm {
            let r = get(
                &client,
                &format!("{}/v2/library/soak/blobs/{d}", world.base),
                &[],
            );
            assert!(matches!(r, Ok((200, _, _))), "warm-up {d}");
        }
    }
    drop(client);
    std::thread::sleep(Duration::from_secs(1));
    let idle = sample(&t, 0);
    print_sample(&idle, "idle", 0);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|w| {
            let (world, stop, tally) = (world.clone(), stop.clone(), tally.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(60))
                    .build()
                    .expect("a client");
                let mut rng = seeded(w);
                while !stop.load(Ordering::Relaxed) {
                    let outcome = op(&world, &client, &mut rng);
                    tally.add(outcome);
                }
            })
        })
        .collect();

    let mut samples = Vec::new();
    let mut phase_at = Instant::now();
    let mut phase = 0;
    set_phase(PHASES[phase], &proxy, &world.upstreams[0]);
    let mut next_sample = every;
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(200));
        if phase_at.elapsed() >= PHASE {
            phase = (phase + 1) % PHASES.len();
            set_phase(PHASES[phase], &proxy, &world.upstreams[0]);
            phase_at = Instant::now();
            for u in &world.upstreams {
                u.clear_log();
            }
        }
        let at = started.elapsed().as_secs();
        if at >= next_sample {
            next_sample += every;
            let s = sample(&t, at);
            let ops: u64 = tally.snapshot().values().sum();
            print_sample(&s, PHASES[phase], ops);
            samples.push(s);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for th in threads {
        th.join().expect("a worker");
    }
    set_phase("clean", &proxy, &world.upstreams[0]);
    // Idle again: client connections close (clients dropped), fills end,
    // and idle upstream connections leave tender's pool (60 s).
    std::thread::sleep(Duration::from_secs(IDLE_AFTER_SECS));
    let after = sample(&t, started.elapsed().as_secs());
    print_sample(&after, "idle_after", tally.snapshot().values().sum());

    let outcomes = tally.snapshot();
    let total: u64 = outcomes.values().sum();
    let mut fields: Vec<(&str, String)> = vec![("ops", total.to_string())];
    for (k, v) in &outcomes {
        fields.push((k, v.to_string()));
    }
    let metrics = t.metrics();
    let m = |s: &str| metric_value(&metrics, s) as u64;
    let sum = |prefix: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    fields.extend([
        (
            "tender_errors",
            sum("tender_requests_total{kind=\"blob\",result=\"error\"}").to_string(),
        ),
        (
            "integrity_failures",
            m("tender_integrity_failures_total").to_string(),
        ),
        (
            "hedges_won",
            sum("tender_upstream_hedges_total{outcome=\"won\"").to_string(),
        ),
        ("stalls", sum("tender_upstream_stalls_total{").to_string()),
        ("evictions", m("tender_cache_evictions_total").to_string()),
    ]);
    report("soak_outcomes", &fields);

    // Flat: RSS from the end of the first quarter (warm-up: cache filling,
    // pools growing) to the last sample under load; fds, tasks and threads
    // back to their idle values (within 4) once the load is over.
    let from = samples[samples.len() / 4];
    let to = *samples.last().expect("at least one sample");
    let peak = |f: fn(&Sample) -> u64| samples.iter().map(f).max().unwrap_or(0);
    let rss_flat = to.rss <= from.rss + (from.rss / 5).max(8 * MIB as u64);
    let fds_flat = after.fds <= idle.fds + 4;
    let tasks_flat = after.tasks <= idle.tasks + 4;
    let threads_flat = after.threads <= idle.threads.max(from.threads);
    report(
        "soak_flatness",
        &[
            ("seconds", secs.to_string()),
            ("rss_mib_from", mib(from.rss)),
            ("rss_mib_to", mib(to.rss)),
            ("rss_mib_peak", mib(peak(|s| s.rss))),
            ("rss", if rss_flat { "flat" } else { "GROWING" }.into()),
            ("fds_idle", idle.fds.to_string()),
            ("fds_peak", peak(|s| s.fds).to_string()),
            ("fds_after", after.fds.to_string()),
            ("fds", if fds_flat { "flat" } else { "LEAKING" }.into()),
            ("tasks_idle", idle.tasks.to_string()),
            ("tasks_peak", peak(|s| s.tasks).to_string()),
            ("tasks_after", after.tasks.to_string()),
            ("tasks", if tasks_flat { "flat" } else { "LEAKING" }.into()),
            ("threads_after", after.threads.to_string()),
            (
                "threads",
                if threads_flat { "flat" } else { "GROWING" }.into(),
            ),
        ],
    );
    let wrong = outcomes.get("WRONG_BYTES").copied().unwrap_or(0);
    assert_eq!(wrong, 0, "tender served bytes that do not match");
    assert!(
        rss_flat && fds_flat && tasks_flat && threads_flat,
        "resources did not stay flat (see soak_flatness)"
    );
    drop(rt);
}
