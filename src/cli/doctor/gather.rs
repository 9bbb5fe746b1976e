//! Reading the node: containerd's config file and version, the hosts
//! directories containerd would use, a `GET /v2/` to tender and its
//! pinned images (`GET /pinned`).

use std::io;
use std::path::Path;
use std::time::Duration;

use super::containerd::{candidate_dirs, Node};
use super::{FileState, HostDir, Inputs, PROBE_TIMEOUT};
use crate::cache::pins::PinnedReport;

/// Reads the node: the containerd config, the hosts directories containerd
/// would use for `registries` (or `hosts_dir_override`), `containerd
/// --version`, and probes tender at `mirror`.
pub fn gather(
    containerd_config: &Path,
    hosts_dir_override: Option<&Path>,
    registries: &[String],
    mirror: &str,
) -> Inputs {
    let mut inputs = Inputs {
        containerd_config: read_file(containerd_config),
        containerd_config_label: containerd_config.display().to_string(),
        containerd_version: containerd_version(),
        hosts_dir_override: hosts_dir_override.map(|p| p.display().to_string()),
        host_dirs: Vec::new(),
        registries: registries.to_vec(),
        mirror: mirror.to_string(),
        tender_probe: probe_tender(mirror, PROBE_TIMEOUT),
        pinned: None,
    };
    if inputs.tender_probe.is_ok() {
        inputs.pinned = pinned(mirror, PROBE_TIMEOUT);
    }
    let roots = Node::new(&inputs).roots;
    for root in &roots {
        for registry in registries {
            for name in candidate_dirs(registry) {
                let dir = Path::new(root).join(&name);
                let seen = inputs
                    .host_dirs
                    .iter()
                    .any(|d| d.root == *root && d.name == name);
                if !seen && dir.exists() {
                    inputs.host_dirs.push(HostDir {
                        root: root.clone(),
                        name,
                        hosts_toml: read_file(&dir.join("hosts.toml")),
                    });
                }
            }
        }
    }
    inputs
}

/// `GET <mirror>/pinned`: the pinned images as tender finds them on disk.
/// `None` from a tender without that endpoint (404).
fn pinned(mirror: &str, timeout: Duration) -> Option<Result<PinnedReport, String>> {
    let url = format!("{}/pinned", mirror.trim_end_matches('/'));
    request_apart("request", timeout, move |client| async move {
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| describe_request_error(&e, timeout))?;
        match resp.status() {
            reqwest::StatusCode::NOT_FOUND => return Ok(None),
            s if !s.is_success() => return Err(format!("GET {url} answered {s}")),
            _ => {}
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| describe_request_error(&e, timeout))?;
        serde_json::from_slice::<PinnedReport>(&body)
            .map(Some)
            .map_err(|e| format!("GET {url}: unreadable answer: {e}"))
    })
    .transpose()
}

/// `GET <mirror>/v2/`: 200 with `Docker-Distribution-Api-Version:
/// registry/2.0`, within `timeout`, without any proxy. Runs on its own thread
/// and runtime, so it may be called from async code too.
pub fn probe_tender(mirror: &str, timeout: Duration) -> Result<(), String> {
    match reqwest::Url::parse(mirror) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => return Err(format!("{mirror:?} is not an http:// or https:// URL")),
    }
    let url = format!("{}/v2/", mirror.trim_end_matches('/'));
    request_apart("probe", timeout, move |client| async move {
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| describe_request_error(&e, timeout))?;
        let status = resp.status();
        let api = resp
            .headers()
            .get("docker-distribution-api-version")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string());
        match (status.as_u16(), api.as_deref()) {
            (200, Some("registry/2.0")) => Ok(()),
            (200, Some(other)) => Err(format!(
                "GET {url} answered 200 with Docker-Distribution-Api-Version {other:?}, not \"registry/2.0\""
            )),
            (200, None) => Err(format!(
                "GET {url} answered 200 without Docker-Distribution-Api-Version: not a registry"
            )),
            _ => Err(format!("GET {url} answered {status}")),
        }
    })
}

/// Runs `work` on a thread and runtime of its own (so that async callers may
/// use it too), with a client that uses no proxy, follows no redirect and
/// gives up after `timeout`. `what` names it in errors.
fn request_apart<T, F, Fut>(what: &'static str, timeout: Duration, work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce(reqwest::Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let run = move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the {what}: {e}"))?;
        runtime.block_on(async {
            let client = reqwest::Client::builder()
                .no_proxy()
                .connect_timeout(timeout)
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("cannot start the {what}: {e}"))?;
            work(client).await
        })
    };
    std::thread::spawn(run)
        .join()
        .unwrap_or_else(|_| Err(format!("the {what} thread panicked")))
}

pub(super) fn describe_request_error(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {}s", timeout.as_secs());
    }
    let mut innermost = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        innermost = s.to_string();
        source = s.source();
    }
    if e.is_connect() {
        format!("cannot connect: {innermost}")
    } else {
        innermost
    }
}

pub(super) fn read_file(path: &Path) -> FileState {
    match std::fs::read_to_string(path) {
        Ok(text) => FileState::Present(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => FileState::Missing,
        Err(e) => FileState::Unreadable(e.to_string()),
    }
}

pub(super) fn containerd_version() -> Option<String> {
    let out = std::process::Command::new("containerd")
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}
