//! OCI images generated for tests: an OCI layout on disk with random
//! uncompressed tar layers, and `skopeo` to push it into a registry.
//!
//! skopeo needs `--preserve-digests`, else it gzips the tar layers on push
//! and every digest changes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::process::{require_tools, run_with_timeout, tail_str};
use crate::rng::{seeded, RandomReader};

pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

#[derive(Debug, Clone)]
pub struct TestImage {
    pub layout_dir: PathBuf,
    pub tag: String,
    /// "sha256:<hex>" of the OCI image manifest.
    pub manifest_digest: String,
    pub config_digest: String,
    /// Layer blob digests, in manifest order (= diff_ids: layers are uncompressed).
    pub layer_digests: Vec<String>,
    /// Sum of the sizes of all blobs of the image: manifest + config + layer tars.
    pub total_bytes: u64,
}

impl TestImage {
    /// Every digest a full pull must bring in: manifest, config, layers.
    pub fn all_digests(&self) -> Vec<String> {
        let mut v = vec![self.manifest_digest.clone(), self.config_digest.clone()];
        v.extend(self.layer_digests.iter().cloned());
        v
    }

    /// Path of a blob in the layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        blob_path(&self.layout_dir, digest)
    }

    /// Bytes of a blob in the layout (e.g. the manifest).
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        fs::read(self.blob_path(digest)).unwrap()
    }
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    layout.join("blobs").join("sha256").join(hex)
}

/// GOARCH-style name of the host architecture.
pub fn host_goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    }
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Write a small blob into layout/blobs/sha256; returns (digest, size).
fn write_blob(layout: &Path, data: &[u8]) -> (String, u64) {
    let d = sha256_digest(data);
    fs::write(blob_path(layout, &d), data).unwrap();
    (d, data.len() as u64)
}

/// A writer that hashes and counts what passes through.
struct HashWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    n: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hasher.update(&b[..n]);
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Write one layer tar (one file of `size` pseudo-random bytes named `name`)
/// into the layout. Returns (digest, blob size).
fn write_layer(layout: &Path, name: &str, size: u64, seed: u64) -> (String, u64) {
    let tmp = layout
        .join("blobs")
        .join("sha256")
        .join(format!(".tmp-{name}"));
    let f = File::create(&tmp).unwrap();
    let w = HashWriter {
        inner: BufWriter::with_capacity(1 << 20, f),
        hasher: Sha256::new(),
        n: 0,
    };
    let mut tar = tar::Builder::new(w);
    let mut header = tar::Header::new_ustar();
    header.set_path(name).unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    tar.append(&header, RandomReader(seeded(seed)).take(size))
        .unwrap();
    let w = tar.into_inner().unwrap();
    let HashWriter { inner, hasher, n } = w;
    inner.into_inner().unwrap().sync_all().ok();
    let digest = format!("sha256:{:x}", hasher.finalize());
    fs::rename(&tmp, blob_path(layout, &digest)).unwrap();
    (digest, n)
}

/// Write an OCI image layout with one single-platform image:
/// `layer_sizes.len()` uncompressed tar layers, each holding one pseudo-random file
/// `/realparts-<seed>-<i>.bin` of the given size (deterministic from `seed`), a config for
/// linux/<host arch>, an OCI manifest, and index.json tagging it with `tag`.
/// `dir` is created if needed; an existing layout there is replaced (index.json is rewritten).
pub fn make_oci_layout(dir: &Path, tag: &str, layer_sizes: &[u64], seed: u64) -> TestImage {
    use serde_json::json;
    fs::create_dir_all(dir.join("blobs").join("sha256")).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();

    let mut layers = Vec::new();
    let mut total = 0u64;
    let mut seeds = seeded(seed);
    for (i, &sz) in layer_sizes.iter().enumerate() {
        let name = format!("realparts-{seed:x}-{i}.bin");
        let (d, n) = write_layer(dir, &name, sz, seeds.u64(..));
        total += n;
        layers.push((d, n));
    }
    let diff_ids: Vec<&str> = layers.iter().map(|(d, _)| d.as_str()).collect();
    let history: Vec<_> = (0..layers.len())
        .map(|i| json!({"created": "1970-01-01T00:00:00Z", "created_by": format!("realparts layer {i} seed {seed}")}))
        .collect();
    let config = json!({
        "architecture": host_goarch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    let (config_digest, config_size) = write_blob(dir, &serde_json::to_vec(&config).unwrap());
    total += config_size;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": layers.iter().map(|(d, n)| json!({"mediaType": MT_OCI_LAYER_TAR, "digest": d, "size": n})).collect::<Vec<_>>(),
    });
    let (manifest_digest, manifest_size) = write_blob(dir, &serde_json::to_vec(&manifest).unwrap());
    total += manifest_size;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [{
            "mediaType": MT_OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    TestImage {
        layout_dir: dir.to_path_buf(),
        tag: tag.to_string(),
        manifest_digest,
        config_digest,
        layer_digests: layers.into_iter().map(|(d, _)| d).collect(),
        total_bytes: total,
    }
}

/// `skopeo copy oci:<layout>:<tag> docker://<dest>` over plain http, digests preserved.
/// `dest` is e.g. "127.0.0.1:5000/library/foo:v1". Panics with skopeo's output on failure.
pub fn skopeo_push(image: &TestImage, dest: &str) {
    skopeo_push_as(image, dest, None)
}

/// [`skopeo_push`] with registry credentials `user:password`.
pub fn skopeo_push_as(image: &TestImage, dest: &str, creds: Option<&str>) {
    require_tools(&["skopeo"]);
    let src = format!("oci:{}:{}", image.layout_dir.display(), image.tag);
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "--insecure-policy",
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ])
    .args(["--retry-times", "0"]);
    if let Some(c) = creds {
        cmd.args(["--dest-creds", c]);
    }
    cmd.arg(&src).arg(format!("docker://{dest}"));
    let out = run_with_timeout(&mut cmd, Duration::from_secs(600)).expect("spawn skopeo");
    if !out.success {
        panic!(
            "skopeo copy {src} docker://{dest} failed ({}):\n{}\n{}",
            out.status,
            tail_str(&out.stdout, 4000),
            tail_str(&out.stderr, 8000)
        );
    }
}

/// Map of digest -> size of every blob in an OCI layout (for assertions).
pub fn layout_blobs(layout: &Path) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    if let Ok(rd) = fs::read_dir(layout.join("blobs").join("sha256")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() == 64 {
                m.insert(
                    format!("sha256:{name}"),
                    e.metadata().map(|m| m.len()).unwrap_or(0),
                );
            }
        }
    }
    m
}
