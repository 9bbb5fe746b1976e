//! A strict image puller: what containerd fetches (the manifest by tag,
//! then the config and every layer, three at a time), each blob in one
//! GET with no retry, hashed as it arrives and checked against its digest
//! and size. A broken body, a short one or a wrong byte is a failed pull:
//! this is the client that shows whether any client ever saw one.

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// What a pull brought in.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// (digest, size) of the manifest, the config and the layers.
    pub blobs: Vec<(String, u64)>,
    pub bytes: u64,
    pub elapsed: Duration,
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()
        .expect("an HTTP client")
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Pulls `repo:tag` from the registry API at `base` (e.g. a tender node's
/// local URL; no `ns`, so its default registry).
pub fn pull(base: &str, repo: &str, tag: &str) -> Result<Pulled, String> {
    let started = Instant::now();
    let http = client();
    let r = http
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header(
            "accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .map_err(|e| format!("manifest: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("manifest: status {}", r.status()));
    }
    let claimed = r
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r.bytes().map_err(|e| format!("manifest body: {e}"))?;
    let md = format!("sha256:{}", hex(&Sha256::digest(&body)));
    if claimed.as_deref().is_some_and(|c| c != md) {
        return Err(format!("manifest digest {md}, claimed {claimed:?}"));
    }
    let m: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("manifest JSON: {e}"))?;
    let mut wanted = vec![(
        m["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        m["config"]["size"].as_u64().unwrap_or(0),
    )];
    for l in m["layers"].as_array().into_iter().flatten() {
        wanted.push((
            l["digest"].as_str().unwrap_or_default().to_string(),
            l["size"].as_u64().unwrap_or(0),
        ));
    }
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let wanted = Arc::new(wanted);
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let (http, next, failures, wanted) =
                (http.clone(), next.clone(), failures.clone(), wanted.clone());
            let base = base.to_string();
            let repo = repo.to_string();
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((digest, size)) = wanted.get(i) else {
                    return;
                };
                if let Err(e) = fetch_blob(&http, &base, &repo, digest, *size) {
                    failures.lock().unwrap().push(format!("{digest}: {e}"));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "a pull worker panicked".to_string())?;
    }
    let failures = failures.lock().unwrap().clone();
    if !failures.is_empty() {
        return Err(failures.join("; "));
    }
    let mut blobs = vec![(md, body.len() as u64)];
    blobs.extend(wanted.iter().cloned());
    Ok(Pulled {
        bytes: blobs.iter().map(|b| b.1).sum(),
        blobs,
        elapsed: started.elapsed(),
    })
}

fn fetch_blob(
    http: &reqwest::blocking::Client,
    base: &str,
    repo: &str,
    digest: &str,
    size: u64,
) -> Result<(), String> {
    let mut r = http
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("status {}", r.status()));
    }
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let k = r
            .read(&mut buf)
            .map_err(|e| format!("body broke at {n}: {e}"))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    let got = format!("sha256:{}", hex(&h.finalize()));
    if n != size || got != digest {
        return Err(format!("got {n} bytes hashing to {got}, want {size}"));
    }
    Ok(())
}
