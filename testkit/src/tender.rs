//! Runs the real `tender` binary as a child process for end-to-end tests
//! and benches.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::http::http_get;
use crate::netns::Netns;
use crate::process::{free_port, signal, wait_until};

/// The `tender` binary: `TENDER_BIN`, else the one cargo built beside the
/// running test or bench (`target/<profile>/tender`; tests and benches run
/// from `target/<profile>/deps`).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TENDER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let bin = profile_dir.join("tender");
    assert!(
        bin.is_file(),
        "{} is not built (cargo builds it for integration tests and benches; or set TENDER_BIN)",
        bin.display()
    );
    bin
}

pub struct TenderProcess {
    child: Child,
    /// The address its local listener is on (127.0.0.1 unless started in a
    /// network namespace).
    pub host: String,
    pub port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl TenderProcess {
    /// Starts `tender serve` with `registries_toml` appended to a config that
    /// listens on a free port and caches under `dir/cache`.
    pub fn start(dir: &Path, registries_toml: &str, extra: &str) -> TenderProcess {
        let port = free_port();
        fs::create_dir_all(dir).unwrap();
        let config_path = dir.join("tender.toml");
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\ncache_dir = \"{}\"\n{extra}\n{registries_toml}",
            dir.join("cache").display()
        );
        fs::write(&config_path, config).unwrap();
        TenderProcess::start_with_config(dir, &config_path, port)
    }

    pub fn start_with_config(dir: &Path, config_path: &Path, port: u16) -> TenderProcess {
        TenderProcess::start_with_env(dir, config_path, port, &[])
    }

    pub fn start_with_env(
        dir: &Path,
        config_path: &Path,
        port: u16,
        env: &[(&str, &str)],
    ) -> TenderProcess {
        Self::launch(
            Command::new(binary()),
            "127.0.0.1",
            dir,
            config_path,
            port,
            env,
        )
    }

    /// Starts `tender serve --config config_path` inside `netns`, its local
    /// listener on `host:port` (an address of the namespace the test can
    /// reach).
    pub fn start_in_netns(
        netns: &Netns,
        host: &str,
        dir: &Path,
        config_path: &Path,
        port: u16,
    ) -> TenderProcess {
        Self::launch(netns.command(binary()), host, dir, config_path, port, &[])
    }

    fn launch(
        mut cmd: Command,
        host: &str,
        dir: &Path,
        config_path: &Path,
        port: u16,
        env: &[(&str, &str)],
    ) -> TenderProcess {
        let log_path = dir.join(format!("tender-{port}.log"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = cmd
            .args(["serve", "--config"])
            .arg(config_path)
            .env("TENDER_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tender");
        let t = TenderProcess {
            child,
            host: host.to_string(),
            port,
            config_path: config_path.to_path_buf(),
            log_path,
        };
        let url = t.url("/v2/");
        let up = wait_until(Duration::from_secs(20), || {
            http_get(&url).map(|r| r.status == 200).unwrap_or(false)
        });
        assert!(up, "tender did not come up:\n{}", t.log());
        t
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn base(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        String::from_utf8(http_get(&self.url("/metrics")).unwrap().body).unwrap()
    }

    /// The value of one sample line, e.g. `tender_requests_total{kind="blob",result="hit"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics(), sample)
    }

    /// SIGTERM and wait: tender drains connections and commits fills.
    pub fn stop(&mut self) {
        signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        assert!(signal(self.child.id(), sig), "kill -s {sig}");
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.child.wait().ok().and_then(|s| s.code())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

impl Drop for TenderProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A lean blocking HTTP/1.1 GET for load generation: returns the body
/// length, read into a reused 1 MiB buffer. Deliberately hand-rolled: the
/// benches run client and server on the same 2 cores, and a full client's
/// per-byte work would be measured as tender's.
pub fn raw_get(addr: &str, path: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    let body_start;
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed before headers");
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            body_start = i + 4;
            break;
        }
    }
    let text = String::from_utf8_lossy(&head[..body_start]).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    let len: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let mut got = (head.len() - body_start) as u64;
    while got < len {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "body ended early at {got} of {len}");
        got += n as u64;
    }
    got
}
