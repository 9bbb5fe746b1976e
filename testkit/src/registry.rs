//! A real `docker-registry` (distribution 2.8, from Debian) on loopback:
//! as the upstream tender pulls from, or in proxy mode as the peer to beat.
//! Its access log is parsed to count what it served.
//!
//! Verified here (distribution 2.8.2): every request to a mirror carries
//! `?ns=<registry host>`; distribution ignores it.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::http_get;
use crate::netns::Netns;
use crate::process::{free_port, require_tools, tail_file, wait_until};

/// Where a registry listens.
#[derive(Clone, Copy)]
enum Place<'a> {
    Loopback,
    On(Ipv4Addr),
    Inside(&'a Netns),
}

/// One request as seen in the registry's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    /// Request URI as sent (path + query).
    pub uri: String,
    pub status: u16,
    /// Body bytes sent.
    pub bytes: u64,
}

/// A real `docker-registry` on 127.0.0.1:<port>, filesystem storage under `dir/data`, config in
/// `dir/config.yml`, log (JSON app log + combined-format access log) in `dir/registry.log`.
/// Drop kills it.
pub struct Registry {
    /// The address it listens on (127.0.0.1 unless started elsewhere).
    pub ip: String,
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

    /// A registry where every repository needs credentials: HTTP Basic
    /// (htpasswd, bcrypt) for `users` (user, password).
    pub fn start_with_users(dir: &Path, users: &[(&str, &str)]) -> Registry {
        require_tools(&["htpasswd"]);
        fs::create_dir_all(dir).unwrap();
        let mut file = String::new();
        for (user, pass) in users {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("spawn htpasswd");
            assert!(
                out.status.success(),
                "htpasswd: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            file.push_str(String::from_utf8_lossy(&out.stdout).trim());
            file.push('\n');
        }
        let path = dir.join("htpasswd");
        fs::write(&path, file).unwrap();
        Self::start_with(
            dir,
            &format!(
                "auth:\n  htpasswd:\n    realm: test-registry\n    path: {}\n",
                path.display()
            ),
        )
    }

    /// `extra_yaml` is appended to the generated config (top-level keys).
    pub fn start_with(dir: &Path, extra_yaml: &str) -> Registry {
        Self::start_at(dir, extra_yaml, Place::Loopback)
    }

    /// A plain storage registry inside `netns`, on its veth address: the
    /// host reaches it over that link (shape it for a WAN).
    pub fn start_in(dir: &Path, netns: &Netns) -> Registry {
        Self::start_at(dir, "", Place::Inside(netns))
    }

    /// A plain storage registry on the host, listening on `ip` (e.g. the
    /// host's end of a namespace's link, for processes inside it).
    pub fn start_on(dir: &Path, ip: Ipv4Addr) -> Registry {
        Self::start_at(dir, "", Place::On(ip))
    }

    fn start_at(dir: &Path, extra_yaml: &str, place: Place) -> Registry {
        require_tools(&["docker-registry"]);
        fs::create_dir_all(dir.join("data")).unwrap();
        let log_path = dir.join("registry.log");
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let (ip, port) = match place {
                Place::Inside(ns) => (ns.ns_ip.to_string(), 5000),
                Place::On(ip) => (ip.to_string(), free_port()),
                Place::Loopback => ("127.0.0.1".to_string(), free_port()),
            };
            let cfg = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {ip}:{port}\n  secret: realparts-not-secret\n\
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
            let mut cmd = match place {
                Place::Inside(ns) => ns.command("docker-registry"),
                _ => Command::new("docker-registry"),
            };
            let child = cmd
                .arg("serve")
                .arg(dir.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn docker-registry");
            let mut reg = Registry {
                ip: ip.clone(),
                port,
                dir: dir.to_path_buf(),
                log_path: log_path.clone(),
                child: Some(child),
            };
            let ready = wait_until(Duration::from_secs(15), || {
                if let Ok(Some(_)) = reg.child.as_mut().unwrap().try_wait() {
                    return true;
                }
                // 401: up, with authentication configured.
                matches!(http_get(&format!("http://{ip}:{port}/v2/")), Ok(r) if r.status == 200 || r.status == 401)
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

    /// "IP:PORT" (127.0.0.1 unless started elsewhere)
    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// "http://IP:PORT"
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
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
    let mut after = rest[q2 + 1..].split_whitespace();
    let status = after.next()?.parse().ok()?;
    let bytes = after.next().and_then(|b| b.parse().ok()).unwrap_or(0);
    Some(LoggedRequest {
        method,
        uri,
        status,
        bytes,
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
