//! Test support: drive REAL peers installed from Debian packages.
//!
//! - `docker-registry` (distribution 2.8) as an upstream (or as a proxy-mode registry, the peer to beat),
//! - `skopeo` to push generated OCI layouts into it,
//! - a private `containerd` daemon + `ctr` to pull through a hosts.toml mirror.
//!
//! Synchronous, std + sha2 + serde_json only. Everything listens on 127.0.0.1 only.
//!
//! Use from an integration test as
//! `#[path = "support/realparts.rs"] mod realparts;`
//!
//! Drop order matters: declare the [`TempDir`] FIRST so it is dropped LAST (after the daemons living in it).
//! Set `REALPARTS_KEEP=1` to keep temp dirs (logs, configs) for post-mortem.
//!
//! Verified here (containerd/ctr 1.6.20, distribution 2.8.2, skopeo 1.9.3, as root):
//! - a hosts.toml mirror must carry an explicit `http://` scheme; a scheme-less or `https://` host is
//!   dialled with TLS even with `ctr --plain-http` (that flag only affects hosts without a hosts.toml).
//!   No `skip_verify` needed. A hosts.toml with only `server` (no `[host]`) is rejected by 1.6.
//! - every request to the mirror carries `?ns=<registry host>`; distribution ignores it.
//! - the overlayfs snapshotter works for `ctr image pull` (override with `REALPARTS_SNAPSHOTTER=native`);
//!   no mounts remain after a pull. `ctr` fetches client-side, so only its `--hosts-dir` matters.
//! - skopeo needs `--preserve-digests`, else it gzips the tar layers on push and every digest changes.
//! - a pull issues HEAD manifest by tag, GET manifest by digest, GET config + each layer blob once.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// Tools, ports, temp dirs
// ---------------------------------------------------------------------------------------------

/// Debian package that provides each tool we know about.
fn package_for(tool: &str) -> &'static str {
    match tool {
        "containerd" | "ctr" | "containerd-shim-runc-v2" => "containerd",
        "docker-registry" => "docker-registry",
        "skopeo" => "skopeo",
        "runc" => "runc",
        "nginx" => "nginx",
        "wrk" => "wrk",
        "curl" => "curl",
        "openssl" => "openssl",
        "ip" => "iproute2",
        "unshare" | "nsenter" | "umount" | "mount" => "util-linux",
        _ => "(unknown package)",
    }
}

/// Absolute path of `tool` if it is on PATH (or in the usual sbin dirs) and executable.
pub fn which(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return p.is_file().then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let extra = [
        "/usr/local/sbin",
        "/usr/sbin",
        "/sbin",
        "/usr/local/bin",
        "/usr/bin",
        "/bin",
    ];
    let found = path
        .split(':')
        .filter(|s| !s.is_empty())
        .chain(extra)
        .map(|d| Path::new(d).join(tool))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        });
    found
}

/// Panic with a clear message if any tool is missing.
pub fn require_tools(tools: &[&str]) {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| which(t).is_none())
        .map(|t| format!("`{t}` (apt-get install -y {})", package_for(t)))
        .collect();
    if !missing.is_empty() {
        panic!(
            "realparts: required tool(s) not found on PATH: {}",
            missing.join(", ")
        );
    }
}

/// True if every tool is present (for tests that prefer to skip rather than fail).
pub fn have_tools(tools: &[&str]) -> bool {
    tools.iter().all(|t| which(t).is_some())
}

/// A free TCP port on 127.0.0.1 (bind :0, read it, close). Racy by nature; callers that spawn a
/// server on it should retry on "address in use".
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A directory under the system temp dir, removed on drop (after unmounting anything below it).
/// `REALPARTS_KEEP=1` keeps it.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        // Keep it short: containerd's unix socket lives below it (108-byte sun_path limit).
        let path =
            std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos:x}", std::process::id()));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// `self.path().join(p)`, created as a directory.
    pub fn subdir(&self, p: &str) -> PathBuf {
        let d = self.path.join(p);
        fs::create_dir_all(&d).unwrap();
        d
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("REALPARTS_KEEP").is_some() {
            eprintln!("realparts: keeping {}", self.path.display());
            return;
        }
        unmount_under(&self.path);
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Unmount (lazily, deepest first) every mount point at or below `dir`, from /proc/self/mountinfo.
pub fn unmount_under(dir: &Path) {
    let Ok(dir) = fs::canonicalize(dir) else {
        return;
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    for p in points {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&p)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline, backslash as \ooo
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Poll `f` every 50 ms until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail_file(p: &Path, max: usize) -> String {
    let s = fs::read(p).unwrap_or_default();
    let start = s.len().saturating_sub(max);
    String::from_utf8_lossy(&s[start..]).into_owned()
}

/// Send SIGTERM via `kill(1)` (std has no signal API), wait up to `grace`, then SIGKILL. Always reaps.
fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Output of [`run_with_timeout`].
#[derive(Debug)]
pub struct RunOutput {
    pub success: bool,
    /// Exit status as text, or "timed out after ..." (the process was killed).
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

/// Run `cmd` with piped stdout/stderr; SIGKILL it if it outlives `timeout`.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> std::io::Result<RunOutput> {
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let ho = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let he = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let (success, status) = loop {
        if let Some(st) = child.try_wait()? {
            break (st.success(), st.to_string());
        }
        if t.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            break (false, format!("timed out after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = t.elapsed();
    Ok(RunOutput {
        success,
        status,
        stdout: ho.join().unwrap_or_default(),
        stderr: he.join().unwrap_or_default(),
        elapsed,
    })
}

fn tail_str(b: &[u8], max: usize) -> String {
    let start = b.len().saturating_sub(max);
    String::from_utf8_lossy(&b[start..]).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Minimal HTTP/1.1 client (plain http only), for readiness checks and simple assertions
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request over a fresh connection (`Connection: close`). `url` = `http://host:port/path?query`.
/// Body is read to EOF (chunked is decoded); for HEAD the body is empty.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "only http:// urls")
    })?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let hdr_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..hdr_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[hdr_end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if method == "HEAD" {
        body.clear();
    } else if chunked {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let nl = body[i..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("chunk size"))?;
            let sz_str = String::from_utf8_lossy(&body[i..i + nl]).into_owned();
            let sz = usize::from_str_radix(sz_str.split(';').next().unwrap().trim(), 16)
                .map_err(|_| bad("chunk size hex"))?;
            i += nl + 2;
            if sz == 0 {
                break;
            }
            if i + sz > body.len() {
                return Err(bad("truncated chunk"));
            }
            out.extend_from_slice(&body[i..i + sz]);
            i += sz + 2;
        }
        body = out;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

pub fn http_get(url: &str) -> std::io::Result<HttpResponse> {
    http_request("GET", url, &[])
}

// ---------------------------------------------------------------------------------------------
// OCI layout generation
// ---------------------------------------------------------------------------------------------

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
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

/// Write a small blob into layout/blobs/sha256; returns (digest, size).
fn write_blob(layout: &Path, data: &[u8]) -> (String, u64) {
    let d = sha256_digest(data);
    fs::write(blob_path(layout, &d), data).unwrap();
    (d, data.len() as u64)
}

/// Fill `buf` (len multiple of 8) with xorshift64* output. Cheap even at opt-level 0 (8 bytes/step).
fn fill_random(state: &mut u64, buf: &mut [u8]) {
    let mut x = *state;
    for chunk in buf.chunks_exact_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        chunk.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    *state = x;
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A ustar header for a regular file (mode 0644, uid/gid 0, mtime 0).
fn tar_header(name: &str, size: u64) -> [u8; 512] {
    assert!(name.len() < 100, "tar name too long");
    assert!(size < 0o777_7777_7777, "tar member too large for ustar");
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let put = |h: &mut [u8; 512], off: usize, len: usize, v: u64| {
        let s = format!("{:0width$o}\0", v, width = len - 1);
        h[off..off + len].copy_from_slice(s.as_bytes());
    };
    put(&mut h, 100, 8, 0o644); // mode
    put(&mut h, 108, 8, 0); // uid
    put(&mut h, 116, 8, 0); // gid
    put(&mut h, 124, 12, size); // size
    put(&mut h, 136, 12, 0); // mtime
    h[156] = b'0'; // regular file
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{:06o}\0 ", sum);
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// Hashing writer that counts bytes.
struct HashWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    n: u64,
}

impl<W: Write> HashWriter<W> {
    fn put(&mut self, b: &[u8]) {
        self.inner.write_all(b).unwrap();
        self.hasher.update(b);
        self.n += b.len() as u64;
    }
}

/// Write one layer tar (one file of `size` pseudo-random bytes named `name`) into the layout.
/// Returns (digest, blob size).
fn write_layer(layout: &Path, name: &str, size: u64, seed: u64) -> (String, u64) {
    let tmp = layout
        .join("blobs")
        .join("sha256")
        .join(format!(".tmp-{name}"));
    let f = File::create(&tmp).unwrap();
    let mut w = HashWriter {
        inner: BufWriter::with_capacity(1 << 20, f),
        hasher: Sha256::new(),
        n: 0,
    };
    w.put(&tar_header(name, size));
    let mut state = splitmix(seed) | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        let n8 = (n + 7) & !7;
        fill_random(&mut state, &mut buf[..n8]);
        w.put(&buf[..n]);
        left -= n as u64;
    }
    let pad = (512 - (size % 512) as usize) % 512;
    w.put(&vec![0u8; pad + 1024]); // pad + two zero end-of-archive blocks
    let HashWriter { inner, hasher, n } = w;
    inner.into_inner().unwrap().sync_all().ok();
    let digest = format!("sha256:{}", hex(&hasher.finalize()));
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
    for (i, &sz) in layer_sizes.iter().enumerate() {
        let name = format!("realparts-{seed:x}-{i}.bin");
        let (d, n) = write_layer(dir, &name, sz, seed ^ splitmix(i as u64 + 1));
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

// ---------------------------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------------------------

/// `skopeo copy oci:<layout>:<tag> docker://<dest>` over plain http, digests preserved (no recompression:
/// without `--preserve-digests` skopeo would gzip the tar layers and change every digest).
/// `dest` is e.g. "127.0.0.1:5000/library/foo:v1". Panics with skopeo's output on failure.
pub fn skopeo_push(image: &TestImage, dest: &str) {
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
    .args(["--retry-times", "0"])
    .arg(&src)
    .arg(format!("docker://{dest}"));
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

// ---------------------------------------------------------------------------------------------
// docker-registry (distribution 2.8)
// ---------------------------------------------------------------------------------------------

/// One request as seen in the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// Request URI as sent (path + query).
    pub uri: String,
    pub status: u16,
}

/// A real `docker-registry` on 127.0.0.1:<port>, filesystem storage under `dir/data`, config in
/// `dir/config.yml`, log (JSON app log + combined-format access log) in `dir/registry.log`.
/// Drop kills it.
pub struct Registry {
    pub port: u16,
    pub dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl Registry {
    /// Plain storage registry (accepts pushes). Waits until `GET /v2/` answers.
    pub fn start(dir: &Path) -> Registry {
        Self::start_with(dir, "")
    }

    /// Pull-through cache registry (distribution proxy mode) in front of `remote_url`
    /// (e.g. "http://127.0.0.1:5000"); the "peer to beat". Pushes to it are refused.
    pub fn start_proxy(dir: &Path, remote_url: &str) -> Registry {
        Self::start_with(dir, &format!("proxy:\n  remoteurl: {remote_url}\n"))
    }

    /// `extra_yaml` is appended to the generated config (top-level keys).
    pub fn start_with(dir: &Path, extra_yaml: &str) -> Registry {
        require_tools(&["docker-registry"]);
        fs::create_dir_all(dir.join("data")).unwrap();
        let log_path = dir.join("registry.log");
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let cfg = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: realparts-not-secret\n\
                 {extra_yaml}",
                data = dir.join("data").display()
            );
            fs::write(dir.join("config.yml"), cfg).unwrap();
            let _ = fs::remove_file(&log_path);
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(dir.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            let mut reg = Registry {
                port,
                dir: dir.to_path_buf(),
                log_path: log_path.clone(),
                child: Some(child),
            };
            let ready = wait_until(Duration::from_secs(15), || {
                if let Ok(Some(_)) = reg.child.as_mut().unwrap().try_wait() {
                    return true;
                }
                matches!(http_get(&format!("http://127.0.0.1:{port}/v2/")), Ok(r) if r.status == 200)
            });
            let exited = matches!(reg.child.as_mut().unwrap().try_wait(), Ok(Some(_)));
            if ready && !exited {
                return reg;
            }
            last_err = tail_file(&log_path, 4000);
            drop(reg);
            if !last_err.contains("address already in use") {
                break;
            }
        }
        panic!("docker-registry did not start; log tail:\n{last_err}");
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// "http://127.0.0.1:PORT"
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Wait until the log file has not grown for 150 ms (max 3 s). The access-log line is written just
    /// after the response completes, so a client can finish before its request shows up in the log.
    pub fn settle(&self) {
        let mut last = u64::MAX;
        let mut stable_since = Instant::now();
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            let len = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
            if len != last {
                last = len;
                stable_since = Instant::now();
            } else if stable_since.elapsed() >= Duration::from_millis(150) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Every request handled so far (access-log lines), after [`settle`](Self::settle).
    pub fn requests_detailed(&self) -> Vec<LoggedRequest> {
        self.settle();
        let text = fs::read_to_string(&self.log_path).unwrap_or_default();
        text.lines().filter_map(parse_access_line).collect()
    }

    /// (method, uri) of every request handled so far, parsed from the access log.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.requests_detailed()
            .into_iter()
            .map(|r| (r.method, r.uri))
            .collect()
    }

    /// Count of `GET .../blobs/sha256:...` requests so far (any status).
    pub fn blob_gets(&self) -> usize {
        self.requests_detailed()
            .iter()
            .filter(|r| r.method == "GET" && r.uri.contains("/blobs/sha256:"))
            .count()
    }

    /// Count of GETs of one blob digest.
    pub fn blob_gets_of(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest}");
        self.requests_detailed()
            .iter()
            .filter(|r| {
                r.method == "GET" && r.uri.split('?').next().unwrap_or("").ends_with(&needle)
            })
            .count()
    }

    /// Truncate the log: later `requests()` only see newer requests.
    pub fn clear_log(&self) {
        self.settle();
        // Safe because the registry's stdout/stderr fd was opened O_APPEND (see start_with).
        let _ = fs::OpenOptions::new()
            .write(true)
            .open(&self.log_path)
            .and_then(|f| f.set_len(0));
    }
}

/// `127.0.0.1 - - [21/Nov/2026:19:41:19 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "curl/7.88.1"`
fn parse_access_line(line: &str) -> Option<LoggedRequest> {
    if line.starts_with('{') {
        return None;
    }
    let q1 = line.find("] \"")? + 3;
    let rest = &line[q1..];
    let q2 = rest.find('"')?;
    let mut parts = rest[..q2].split(' ');
    let method = parts.next()?.to_string();
    let uri = parts.next()?.to_string();
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    let status = rest[q2 + 1..].split_whitespace().next()?.parse().ok()?;
    Some(LoggedRequest {
        method,
        uri,
        status,
    })
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// containerd + ctr
// ---------------------------------------------------------------------------------------------

/// Namespace used for every ctr call.
pub const CTR_NAMESPACE: &str = "realparts";

/// A private containerd daemon: root/state/socket/config/log all under `dir`. Drop stops it
/// (SIGTERM, then SIGKILL) and lazily unmounts anything left under `dir`.
pub struct Containerd {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log_path: PathBuf,
    /// Snapshotter used by [`pull`](Self::pull) ("overlayfs" unless `REALPARTS_SNAPSHOTTER` says otherwise).
    pub snapshotter: String,
    /// `pull`/`fetch` kill ctr and return Err after this long (default 300 s).
    pub ctr_timeout: Duration,
    child: Option<Child>,
}

impl Containerd {
    pub fn start(dir: &Path) -> Containerd {
        require_tools(&["containerd", "ctr"]);
        fs::create_dir_all(dir).unwrap();
        let dir = fs::canonicalize(dir).unwrap();
        let root = dir.join("root");
        let state = dir.join("state");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&state).unwrap();
        let mut socket = dir.join("c.sock");
        if socket.as_os_str().len() > 100 {
            // sun_path is 108 bytes incl. NUL, and ttrpc appends ".ttrpc".
            let n = COUNTER.fetch_add(1, Ordering::SeqCst);
            socket = PathBuf::from(format!("/tmp/rp-ctrd-{}-{n}.sock", std::process::id()));
        }
        let log_path = dir.join("containerd.log");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = root.display(),
            state = state.display(),
            sock = socket.display(),
            opt = dir.join("opt").display(),
        );
        fs::write(dir.join("config.toml"), config).unwrap();
        let log = File::create(&log_path).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd {
            dir: dir.clone(),
            socket,
            log_path,
            snapshotter: std::env::var("REALPARTS_SNAPSHOTTER")
                .unwrap_or_else(|_| "overlayfs".into()),
            ctr_timeout: Duration::from_secs(300),
            child: Some(child),
        };
        let ok = wait_until(Duration::from_secs(30), || {
            if let Ok(Some(_)) = c.child.as_mut().unwrap().try_wait() {
                return true;
            }
            c.ctr()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
        let exited = matches!(c.child.as_mut().unwrap().try_wait(), Ok(Some(_)));
        if !ok || exited {
            panic!(
                "containerd did not start (exited: {exited}); log tail:\n{}",
                tail_file(&c.log_path, 6000)
            );
        }
        c
    }

    /// A `ctr -a <socket> -n realparts` command to add arguments to.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(CTR_NAMESPACE)
            .stdin(Stdio::null());
        cmd
    }

    fn run_timed(&self, mut cmd: Command) -> Result<Duration, String> {
        let out =
            run_with_timeout(&mut cmd, self.ctr_timeout).map_err(|e| format!("spawn ctr: {e}"))?;
        if out.success {
            Ok(out.elapsed)
        } else {
            // ctr's progress output on stdout is long; keep its tail.
            Err(format!(
                "{:?} failed ({}):\nstderr: {}\nstdout tail: {}",
                cmd,
                out.status,
                tail_str(&out.stderr, 8000),
                tail_str(&out.stdout, 3000)
            ))
        }
    }

    fn registry_args(cmd: &mut Command, hosts_dir: &Path, plain_http: bool) {
        cmd.arg("--hosts-dir").arg(hosts_dir);
        if plain_http {
            cmd.arg("--plain-http");
        }
    }

    /// Full pull incl. unpack into `self.snapshotter`. Returns the wall time of the `ctr` command.
    pub fn pull(
        &self,
        hosts_dir: &Path,
        reference: &str,
        plain_http: bool,
    ) -> Result<Duration, String> {
        let mut cmd = self.ctr();
        cmd.args(["image", "pull", "--snapshotter", &self.snapshotter]);
        Self::registry_args(&mut cmd, hosts_dir, plain_http);
        cmd.arg(reference);
        self.run_timed(cmd)
    }

    /// `ctr content fetch` (fetch all blobs, no unpack, no image record).
    pub fn fetch(
        &self,
        hosts_dir: &Path,
        reference: &str,
        plain_http: bool,
    ) -> Result<Duration, String> {
        let mut cmd = self.ctr();
        cmd.args(["content", "fetch"]);
        Self::registry_args(&mut cmd, hosts_dir, plain_http);
        cmd.arg(reference);
        self.run_timed(cmd)
    }

    fn ctr_stdout(&self, args: &[&str]) -> String {
        let out = self.ctr().args(args).output().expect("spawn ctr");
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Digests in the content store (`ctr content ls -q`).
    pub fn content_digests(&self) -> Vec<String> {
        self.ctr_stdout(&["content", "ls", "-q"])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Image names (`ctr image ls -q`).
    pub fn images(&self) -> Vec<String> {
        self.ctr_stdout(&["image", "ls", "-q"])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Remove an image record and its content (synchronous GC), so the next pull fetches again.
    pub fn remove_image(&self, reference: &str) {
        let _ = self
            .ctr()
            .args(["image", "rm", "--sync", reference])
            .output();
        let digests = self.content_digests();
        if !digests.is_empty() {
            let _ = self.ctr().args(["content", "rm"]).args(&digests).output();
        }
    }

    /// Snapshot keys for the current snapshotter (`ctr snapshot ls`).
    pub fn snapshots(&self) -> Vec<String> {
        self.ctr_stdout(&["snapshot", "--snapshotter", &self.snapshotter, "ls"])
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(10));
        }
        unmount_under(&self.dir);
        if !self.socket.starts_with(&self.dir) {
            let _ = fs::remove_file(&self.socket);
            let _ = fs::remove_file(format!("{}.ttrpc", self.socket.display()));
        }
    }
}

/// Write `<hosts_dir>/<registry_host>/hosts.toml`:
/// ```toml
/// server = "<server>"
/// [host."<mirror_url>"]
///   capabilities = ["pull", "resolve"]
/// ```
/// In tests `server` must be unreachable loopback, e.g. `https://127.0.0.1:9`.
pub fn write_hosts_toml(hosts_dir: &Path, registry_host: &str, mirror_url: &str, server: &str) {
    write_hosts_toml_multi(hosts_dir, registry_host, &[mirror_url], server);
}

/// Like [`write_hosts_toml`] with several mirrors, tried in order before `server`.
pub fn write_hosts_toml_multi(
    hosts_dir: &Path,
    registry_host: &str,
    mirror_urls: &[&str],
    server: &str,
) {
    // containerd 1.6 rejects a hosts.toml without any [host] table ("invalid `host` tree").
    assert!(
        !mirror_urls.is_empty(),
        "hosts.toml needs at least one [host] (containerd 1.6)"
    );
    for m in mirror_urls {
        // A scheme-less host means https, even with `ctr --plain-http`.
        assert!(
            m.starts_with("http://") || m.starts_with("https://"),
            "mirror url needs a scheme: {m}"
        );
    }
    let d = hosts_dir.join(registry_host);
    fs::create_dir_all(&d).unwrap();
    let mut s = format!("server = \"{server}\"\n");
    for m in mirror_urls {
        s.push_str(&format!(
            "\n[host.\"{m}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ));
    }
    fs::write(d.join("hosts.toml"), s).unwrap();
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
