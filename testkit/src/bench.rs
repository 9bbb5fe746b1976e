//! Bench helpers: wrk and nginx runners, RSS sampling, result lines.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A one-worker runtime (the benches keep the other core for tender) and a
/// fake registry running on it.
pub fn fake_upstream() -> (tokio::runtime::Runtime, crate::fake::Fake) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let fake = rt.block_on(crate::fake::Fake::start());
    (rt, fake)
}

/// Parsed `wrk --latency` output.
#[derive(Debug, Default)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub transfer_bytes_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
    pub raw: String,
}

fn parse_size(s: &str) -> f64 {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("GB") {
        (n, 1024.0 * 1024.0 * 1024.0)
    } else if let Some(n) = s.strip_suffix("MB") {
        (n, 1024.0 * 1024.0)
    } else if let Some(n) = s.strip_suffix("KB") {
        (n, 1024.0)
    } else if let Some(n) = s.strip_suffix('B') {
        (n, 1.0)
    } else {
        (s, 1.0)
    };
    num.trim().parse::<f64>().unwrap_or(0.0) * mult
}

fn parse_ms(s: &str) -> f64 {
    let s = s.trim();
    if let Some(n) = s.strip_suffix("us") {
        n.parse::<f64>().unwrap_or(0.0) / 1000.0
    } else if let Some(n) = s.strip_suffix("ms") {
        n.parse().unwrap_or(0.0)
    } else if let Some(n) = s.strip_suffix('s') {
        n.parse::<f64>().unwrap_or(0.0) * 1000.0
    } else {
        0.0
    }
}

/// Runs `wrk --latency -t threads -c conns -d secs url` (with optional headers).
pub fn wrk(url: &str, threads: u32, conns: u32, secs: u32, headers: &[&str]) -> WrkResult {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "--latency",
        "-t",
        &threads.to_string(),
        "-c",
        &conns.to_string(),
        "-d",
        &format!("{secs}s"),
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(url)
        .stderr(Stdio::inherit())
        .output()
        .expect("run wrk (apt-get install wrk)");
    let raw = String::from_utf8_lossy(&out.stdout).to_string();
    let mut r = WrkResult {
        raw: raw.clone(),
        ..WrkResult::default()
    };
    for line in raw.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            r.requests_per_sec = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("Transfer/sec:") {
            r.transfer_bytes_per_sec = parse_size(v);
        } else if let Some(v) = l.strip_prefix("50%") {
            r.p50_ms = parse_ms(v);
        } else if let Some(v) = l.strip_prefix("99%") {
            r.p99_ms = parse_ms(v);
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    r
}

/// An nginx serving `root` on 127.0.0.1:`port` with sendfile, until dropped.
pub struct Nginx {
    child: std::process::Child,
}

impl Nginx {
    pub fn start(dir: &Path, root: &Path, port: u16) -> Nginx {
        std::fs::create_dir_all(dir).unwrap();
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off; worker_processes auto; pid {d}/nginx.pid; error_log {d}/error.log;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;\n\
                   client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
                   uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
                   server {{ listen 127.0.0.1:{port}; root {}; }} }}\n",
                root.display()
            ),
        )
        .unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nginx");
        let child = Command::new(nginx)
            .args(["-c"])
            .arg(&conf)
            .args(["-e"])
            .arg(dir.join("error.log"))
            .spawn()
            .expect("start nginx (apt-get install nginx-light)");
        let url = format!("http://127.0.0.1:{port}/");
        std::thread::sleep(Duration::from_millis(200));
        let _ = url;
        Nginx { child }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, so that the master stops its workers too.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Peak resident set size (VmHWM) of a process, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") * 1024
}

pub fn current_rss(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One result line, greppable: `bench <name> key=value ...`.
pub fn report(name: &str, fields: &[(&str, String)]) {
    let mut line = format!("bench {name}");
    for (k, v) in fields {
        line.push_str(&format!(" {k}={v}"));
    }
    println!("{line}");
}
