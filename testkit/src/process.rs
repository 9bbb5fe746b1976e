//! Tools on the machine, free ports, temp dirs, and running commands with
//! time limits.
//!
//! Drop order matters in tests: declare the [`TempDir`] FIRST so it is
//! dropped LAST (after the daemons living in it). `REALPARTS_KEEP=1` keeps
//! temp dirs (logs, configs) for post-mortem.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Debian package that provides each tool we know about.
fn package_for(tool: &str) -> &'static str {
    match tool {
        "containerd" | "ctr" | "containerd-shim-runc-v2" => "containerd",
        "docker-registry" => "docker-registry",
        "skopeo" => "skopeo",
        "runc" => "runc",
        "nginx" => "nginx-light",
        "wrk" => "wrk",
        "curl" => "curl",
        "openssl" => "openssl",
        "ip" => "iproute2",
        "dnsmasq" => "dnsmasq",
        "dockerd" | "docker" => "docker.io",
        "prometheus" | "promtool" => "prometheus",
        "htpasswd" => "apache2-utils",
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

/// Panics with a clear message (and the package to install) if any tool is missing.
pub fn require_tools(tools: &[&str]) {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| which(t).is_none())
        .map(|t| format!("`{t}` (apt-get install -y {})", package_for(t)))
        .collect();
    if !missing.is_empty() {
        panic!("required tool(s) not found on PATH: {}", missing.join(", "));
    }
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

/// A process-unique number (for names of sockets and dirs).
pub fn unique() -> u64 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A directory under the system temp dir, removed on drop (after unmounting anything below it).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        // Keep it short: containerd's unix socket lives below it (108-byte sun_path limit).
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos:x}",
            std::process::id(),
            unique()
        ));
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
            eprintln!("keeping {}", self.path.display());
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

/// The last `max` bytes of a file, as text (for failure messages).
pub fn tail_file(p: &Path, max: usize) -> String {
    tail_str(&fs::read(p).unwrap_or_default(), max)
}

/// The last `max` bytes, as text.
pub fn tail_str(b: &[u8], max: usize) -> String {
    let start = b.len().saturating_sub(max);
    String::from_utf8_lossy(&b[start..]).into_owned()
}

/// Sends a signal by name (`TERM`, `KILL`, `HUP`, ...) with `kill(1)`.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args(["-s", sig, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Always reaps.
pub fn terminate(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    signal(child.id(), "TERM");
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
    let mut so = child.stdout.take().expect("piped stdout");
    let mut se = child.stderr.take().expect("piped stderr");
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
