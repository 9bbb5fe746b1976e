//! A private `containerd` daemon and `ctr`, pulling through a hosts.toml mirror.
//!
//! Verified here (containerd/ctr 1.6.20, as root):
//! - a hosts.toml mirror must carry an explicit `http://` scheme; a scheme-less or `https://` host is
//!   dialled with TLS even with `ctr --plain-http` (that flag only affects hosts without a hosts.toml).
//!   A hosts.toml with only `server` (no `[host]`) is rejected by 1.6.
//! - the overlayfs snapshotter works for `ctr image pull` (override with `REALPARTS_SNAPSHOTTER=native`);
//!   no mounts remain after a pull. `ctr` fetches client-side, so only its `--hosts-dir` matters.
//! - a pull issues HEAD manifest by tag, GET manifest by digest, GET config + each layer blob once.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{
    require_tools, run_with_timeout, tail_file, tail_str, terminate, unique, unmount_under,
    wait_until,
};

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
            let n = unique();
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

    /// `ctr ARGS --hosts-dir DIR [--plain-http] REFERENCE`, timed.
    fn run_pull(
        &self,
        args: &[&str],
        hosts_dir: &Path,
        reference: &str,
        plain_http: bool,
    ) -> Result<Duration, String> {
        let mut cmd = self.ctr();
        cmd.args(args).arg("--hosts-dir").arg(hosts_dir);
        if plain_http {
            cmd.arg("--plain-http");
        }
        cmd.arg(reference);
        self.run_timed(cmd)
    }

    /// Full pull incl. unpack into `self.snapshotter`. Returns the wall time of the `ctr` command.
    pub fn pull(
        &self,
        hosts_dir: &Path,
        reference: &str,
        plain_http: bool,
    ) -> Result<Duration, String> {
        let args = ["image", "pull", "--snapshotter", &self.snapshotter];
        self.run_pull(&args, hosts_dir, reference, plain_http)
    }

    /// [`Containerd::pull`] with credentials `user:password` (`ctr --user`),
    /// which containerd offers any host that challenges it, as it does the
    /// pull-secret credentials kubelet passes without a server address.
    pub fn pull_as(
        &self,
        hosts_dir: &Path,
        reference: &str,
        user: &str,
    ) -> Result<Duration, String> {
        let args = [
            "image",
            "pull",
            "--snapshotter",
            &self.snapshotter,
            "--user",
            user,
        ];
        self.run_pull(&args, hosts_dir, reference, false)
    }

    /// `ctr content fetch` (fetch all blobs, no unpack, no image record).
    pub fn fetch(
        &self,
        hosts_dir: &Path,
        reference: &str,
        plain_http: bool,
    ) -> Result<Duration, String> {
        self.run_pull(&["content", "fetch"], hosts_dir, reference, plain_http)
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
