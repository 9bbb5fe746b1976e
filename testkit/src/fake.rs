//! An in-process fake registry: serves blobs and manifests put into it,
//! logs and counts every request, and injects faults. Also a fake forward
//! proxy.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Digest as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
    pub accept: Option<String>,
    pub accept_encoding: Option<String>,
}

/// Faults applied to `/v2/...` requests (never to `/token`).
#[derive(Clone, Default)]
pub struct Fault {
    /// Answer every registry request with this status.
    pub status: Option<u16>,
    pub retry_after: Option<u64>,
    /// Flip one byte in the middle of blob bodies.
    pub flip_byte: bool,
    /// Break blob bodies at this absolute offset in the blob (every time, with or without Range).
    pub truncate: Option<usize>,
    /// Send blob bodies in chunks of this size ...
    pub chunk: Option<usize>,
    /// ... with this pause between chunks.
    pub chunk_delay: Option<Duration>,
    /// Answer ranged blob requests with the whole blob (200).
    pub ignore_range: bool,
    /// Require `Authorization: Bearer <token>` issued by `/token`.
    pub require_token: bool,
    /// Require Basic credentials (user:pass) at `/token`.
    pub token_basic: Option<String>,
    /// Answer blob GETs with a 307 to `<base>/cdn/<digest>`.
    pub redirect_blobs_to: Option<String>,
    /// Send this `Docker-Content-Digest` on manifests instead of the true one.
    pub lie_manifest_digest: Option<String>,
    /// Hold blob bodies after the first chunk until `release()`.
    pub gate: bool,
    /// Serve blobs only under this repository (404 elsewhere), like a
    /// registry that scopes blobs to repositories.
    pub blob_repo: Option<String>,
    /// Delay blob responses (headers included) by this much.
    pub blob_delay: Option<Duration>,
    /// Answer blob GETs with `200` and an empty body, whatever the digest.
    pub empty_blobs: bool,
    /// Label blob bodies with this Content-Encoding (the bytes stay as stored).
    pub content_encoding: Option<String>,
    /// Pace blob bodies to this many bytes per second.
    pub rate: Option<u64>,
    /// Delay manifest responses (so that concurrent resolves overlap).
    pub manifest_delay: Option<Duration>,
    /// Answer a manifest for any repository and tag not put here: 404 for a
    /// tag starting with `miss`, else a small manifest of its own (its
    /// digest differs from every other tag's).
    pub any_tag: bool,
    /// Send Docker Hub's quota headers on manifests: (limit, remaining).
    pub ratelimit: Option<(u64, u64)>,
}

#[derive(Default)]
pub struct State {
    blobs: Mutex<HashMap<String, Bytes>>,
    manifests: Mutex<HashMap<String, (String, Bytes)>>,
    log: Mutex<Vec<Logged>>,
    pub fault: Mutex<Fault>,
    tokens_issued: AtomicUsize,
    /// Blob bodies whose receiver went away before their end.
    bodies_abandoned: AtomicUsize,
    gate: Notify,
}

pub struct Fake {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

pub fn digest_of(b: &[u8]) -> String {
    let h = sha2::Sha256::digest(b);
    let mut s = String::from("sha256:");
    for x in h {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

impl Fake {
    pub async fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(st, addr, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Fake { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `n` fakes that each hold `data` as a blob, and its digest.
    pub async fn several_with_blob(n: usize, data: &[u8]) -> (Vec<Fake>, String) {
        let mut fakes = Vec::new();
        let mut digest = String::new();
        for _ in 0..n {
            let f = Fake::start().await;
            digest = f.put_blob(data.to_vec());
            fakes.push(f);
        }
        (fakes, digest)
    }

    pub fn put_blob(&self, data: impl Into<Bytes>) -> String {
        let data = data.into();
        let d = digest_of(&data);
        self.state.blobs.lock().unwrap().insert(d.clone(), data);
        d
    }

    /// Stores a manifest under `repo` by digest and, if given, by tag.
    pub fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        body: impl Into<Bytes>,
    ) -> String {
        let body = body.into();
        let d = digest_of(&body);
        let mut m = self.state.manifests.lock().unwrap();
        m.insert(
            format!("{repo}@{d}"),
            (media_type.to_string(), body.clone()),
        );
        if let Some(t) = tag {
            m.insert(format!("{repo}:{t}"), (media_type.to_string(), body));
        }
        d
    }

    /// Forgets blob `digest` (it answers 404 from now on).
    pub fn remove_blob(&self, digest: &str) {
        self.state.blobs.lock().unwrap().remove(digest);
    }

    /// The body of manifest `digest` stored under `repo`.
    pub fn manifest_body(&self, repo: &str, digest: &str) -> Option<Bytes> {
        let m = self.state.manifests.lock().unwrap();
        m.get(&format!("{repo}@{digest}")).map(|(_, b)| b.clone())
    }

    /// An image manifest referencing `config` and `layers` (digests, sizes).
    pub fn put_image(&self, repo: &str, tag: &str, layers: &[Vec<u8>]) -> (String, Vec<String>) {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let cd = self.put_blob(config.clone());
        let mut lds = Vec::new();
        let mut layer_json = Vec::new();
        for l in layers {
            let d = self.put_blob(l.clone());
            layer_json.push(format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
                l.len()
            ));
            lds.push(d);
        }
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{}]}}"#,
            config.len(),
            layer_json.join(",")
        );
        let md = self.put_manifest(
            repo,
            Some(tag),
            "application/vnd.oci.image.manifest.v1+json",
            manifest,
        );
        (md, lds)
    }

    pub fn set_fault(&self, f: Fault) {
        *self.state.fault.lock().unwrap() = f;
    }

    pub fn release(&self) {
        self.state.fault.lock().unwrap().gate = false;
        self.state.gate.notify_waiters();
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        self.log()
            .iter()
            .filter(|l| l.method == method && l.path.contains(path_contains))
            .count()
    }

    pub fn blob_gets(&self) -> usize {
        self.count("GET", "/blobs/")
    }

    /// Blob bodies the other side stopped taking before their end (it closed
    /// the connection).
    pub fn bodies_abandoned(&self) -> usize {
        self.state.bodies_abandoned.load(Ordering::SeqCst)
    }

    pub fn tokens_issued(&self) -> usize {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn resp(status: u16, body: ResponseBody) -> Response<ResponseBody> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

fn error(status: u16, code: &str) -> Response<ResponseBody> {
    let mut r = resp(
        status,
        ResponseBody::full(format!(
            r#"{{"errors":[{{"code":"{code}","message":"fake"}}]}}"#
        )),
    );
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

async fn handle(
    st: Arc<State>,
    addr: SocketAddr,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let logged = Logged {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        authorization: h("authorization"),
        range: h("range"),
        accept: h("accept"),
        accept_encoding: h("accept-encoding"),
    };
    st.log.lock().unwrap().push(logged.clone());
    let fault = st.fault.lock().unwrap().clone();
    let path = logged.path.clone();

    if path == "/token" {
        if let Some(basic) = &fault.token_basic {
            let want = format!("Basic {}", b64(basic.as_bytes()));
            if logged.authorization.as_deref() != Some(want.as_str()) {
                return error(401, "UNAUTHORIZED");
            }
        }
        let n = st.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
        return resp(
            200,
            ResponseBody::full(format!(r#"{{"token":"tok-{n}","expires_in":300}}"#)),
        );
    }
    if let Some(rest) = path.strip_prefix("/cdn/") {
        if logged.authorization.is_some() {
            return error(400, "CDN_GOT_AUTHORIZATION");
        }
        let Some(data) = st.blobs.lock().unwrap().get(rest).cloned() else {
            return error(404, "BLOB_UNKNOWN");
        };
        return resp(200, ResponseBody::full(data));
    }
    if fault.require_token {
        let ok = logged
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer tok-"));
        if !ok {
            let mut r = error(401, "UNAUTHORIZED");
            r.headers_mut().insert(
                "www-authenticate",
                format!(r#"Bearer realm="http://{addr}/token",service="fake""#)
                    .parse()
                    .unwrap(),
            );
            return r;
        }
    }
    if let Some(s) = fault.status {
        let mut r = error(s, "FAULT");
        if let Some(ra) = fault.retry_after {
            r.headers_mut()
                .insert("retry-after", ra.to_string().parse().unwrap());
        }
        return r;
    }
    if path == "/v2/" {
        return resp(200, ResponseBody::full("{}"));
    }
    let head = logged.method == "HEAD";
    let Some(rest) = path.strip_prefix("/v2/") else {
        return error(404, "NOT_FOUND");
    };
    if let Some(name) = rest.strip_suffix("/tags/list") {
        let m = st.manifests.lock().unwrap();
        let mut tags: Vec<String> = m
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{name}:")).map(str::to_string))
            .collect();
        tags.sort();
        if tags.is_empty() {
            return error(404, "NAME_UNKNOWN");
        }
        let body = serde_json::json!({"name": name, "tags": tags}).to_string();
        return resp(200, ResponseBody::full(body));
    }
    if let Some(i) = rest.rfind("/manifests/") {
        let (name, reference) = (&rest[..i], &rest[i + "/manifests/".len()..]);
        let key = if reference.contains(':') {
            format!("{name}@{reference}")
        } else {
            format!("{name}:{reference}")
        };
        if let Some(d) = fault.manifest_delay {
            tokio::time::sleep(d).await;
        }
        let stored = st.manifests.lock().unwrap().get(&key).cloned();
        let Some((mt, body)) = stored.or_else(|| any_tag(&fault, name, reference)) else {
            return error(404, "MANIFEST_UNKNOWN");
        };
        let digest = fault
            .lie_manifest_digest
            .clone()
            .unwrap_or_else(|| digest_of(&body));
        let len = body.len();
        let mut r = resp(
            200,
            if head {
                ResponseBody::empty()
            } else {
                ResponseBody::full(body)
            },
        );
        let hm = r.headers_mut();
        hm.insert("content-type", mt.parse().unwrap());
        hm.insert("docker-content-digest", digest.parse().unwrap());
        hm.insert("content-length", len.into());
        if let Some((limit, remaining)) = fault.ratelimit {
            hm.insert(
                "ratelimit-limit",
                format!("{limit};w=21600").parse().unwrap(),
            );
            hm.insert(
                "ratelimit-remaining",
                format!("{remaining};w=21600").parse().unwrap(),
            );
        }
        return r;
    }
    if let Some(i) = rest.rfind("/blobs/") {
        let digest = &rest[i + "/blobs/".len()..];
        if let Some(d) = fault.blob_delay {
            tokio::time::sleep(d).await;
        }
        if fault.blob_repo.as_deref().is_some_and(|r| r != &rest[..i]) {
            return error(404, "BLOB_UNKNOWN");
        }
        let Some(data) = st.blobs.lock().unwrap().get(digest).cloned() else {
            return error(404, "BLOB_UNKNOWN");
        };
        if fault.empty_blobs && !head {
            return resp(200, ResponseBody::empty());
        }
        if head {
            let mut r = resp(200, ResponseBody::empty());
            r.headers_mut().insert("content-length", data.len().into());
            r.headers_mut()
                .insert("docker-content-digest", digest.parse().unwrap());
            return r;
        }
        if let Some(base) = &fault.redirect_blobs_to {
            let mut r = resp(307, ResponseBody::empty());
            r.headers_mut()
                .insert("location", format!("{base}/cdn/{digest}").parse().unwrap());
            return r;
        }
        let total = data.len();
        let mut start = 0usize;
        let mut status = 200;
        if let (Some(rg), false) = (&logged.range, fault.ignore_range) {
            if let Some(s) = rg.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')) {
                start = s.parse().unwrap();
                status = 206;
            }
        }
        let mut body = data.slice(start..).to_vec();
        if fault.flip_byte && !body.is_empty() {
            let mid = body.len() / 2;
            body[mid] ^= 0xff;
        }
        let len = body.len();
        let (tx, rx) = mpsc::channel(2);
        let st2 = st.clone();
        tokio::spawn(async move {
            let chunk = fault.chunk.unwrap_or(64 << 10);
            let limit = fault
                .truncate
                .map_or(body.len(), |t| t.saturating_sub(start))
                .min(body.len());
            let mut pos = 0;
            let mut first = true;
            let paced_from = tokio::time::Instant::now();
            while pos < limit {
                let end = (pos + chunk).min(limit);
                if tx
                    .send(Ok(Bytes::copy_from_slice(&body[pos..end])))
                    .await
                    .is_err()
                {
                    st2.bodies_abandoned.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                pos = end;
                if first && fault.gate {
                    // Register before checking, so a release in between is not missed.
                    let released = st2.gate.notified();
                    tokio::pin!(released);
                    released.as_mut().enable();
                    let still_gated = st2.fault.lock().unwrap().gate;
                    if still_gated {
                        released.await;
                    }
                }
                first = false;
                if let Some(d) = fault.chunk_delay {
                    tokio::time::sleep(d).await;
                }
                if let Some(rate) = fault.rate {
                    let due = paced_from + Duration::from_secs_f64(pos as f64 / rate as f64);
                    tokio::time::sleep_until(due).await;
                }
            }
            if limit < body.len() {
                // Let hyper write out what was sent first: on a body error it
                // drops the connection with whatever is still buffered, and
                // the fault is "breaks after N bytes", not "never answers".
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx
                    .send(Err(std::io::Error::other("fault: truncated")))
                    .await;
            }
        });
        let mut r = resp(status, ResponseBody::stream(rx));
        let hm = r.headers_mut();
        hm.insert("content-length", len.into());
        hm.insert("docker-content-digest", digest.parse().unwrap());
        if let Some(ce) = &fault.content_encoding {
            hm.insert("content-encoding", ce.parse().unwrap());
        }
        if status == 206 {
            hm.insert(
                "content-range",
                format!("bytes {start}-{}/{total}", total - 1)
                    .parse()
                    .unwrap(),
            );
        }
        return r;
    }
    error(404, "NOT_FOUND")
}

/// The manifest `Fault::any_tag` answers for `name:reference`, if any.
fn any_tag(fault: &Fault, name: &str, reference: &str) -> Option<(String, Bytes)> {
    if !fault.any_tag || reference.contains(':') || reference.starts_with("miss") {
        return None;
    }
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest_of(b"{}"),
            "size": 2
        },
        "layers": [],
        "annotations": {"tag": format!("{name}:{reference}")}
    });
    Some((
        "application/vnd.oci.image.manifest.v1+json".to_string(),
        Bytes::from(body.to_string()),
    ))
}

/// Standard base64 (for Basic credentials).
pub fn b64(input: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(input)
}

/// `[[registry]]` TOML for `host` with the given upstream URLs, in order.
pub fn registry_toml(host: &str, default: bool, upstreams: &[&str]) -> String {
    let mut s = format!("[[registry]]\nhost = \"{host}\"\ndefault = {default}\n");
    for u in upstreams {
        s.push_str(&format!("  [[registry.upstream]]\n  url = \"{u}\"\n"));
    }
    s
}

/// A forward HTTP proxy that sends every request, whatever host it names,
/// to `target`, and records the absolute request targets it received.
pub struct FakeProxy {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeProxy {
    pub async fn start(target: SocketAddr) -> FakeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, client) = (seen2.clone(), client.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (seen, client) = (seen.clone(), client.clone());
                        async move {
                            seen.lock().unwrap().push(req.uri().to_string());
                            let pq = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str().to_string())
                                .unwrap_or_default();
                            let mut out = client
                                .request(req.method().clone(), format!("http://{target}{pq}"));
                            for (k, v) in req.headers() {
                                if k != "host" && k != "proxy-connection" {
                                    out = out.header(k, v);
                                }
                            }
                            let r = out.send().await.unwrap();
                            let mut resp = Response::new(ResponseBody::empty());
                            *resp.status_mut() = r.status();
                            *resp.headers_mut() = r.headers().clone();
                            let body = r.bytes().await.unwrap();
                            *resp.body_mut() = ResponseBody::full(body);
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeProxy { addr, seen, task }
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The fake's response body: whole, empty, or chunks from a task (an `Err`
/// breaks the connection mid-body).
pub enum ResponseBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<std::io::Result<Bytes>>),
}

impl ResponseBody {
    pub fn empty() -> ResponseBody {
        ResponseBody::Full(None)
    }

    pub fn full(b: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::Full(Some(b.into()))
    }

    pub fn stream(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> ResponseBody {
        ResponseBody::Stream(rx)
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::io::Result<hyper::body::Frame<Bytes>>>> {
        use std::task::Poll;
        match &mut *self {
            ResponseBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(hyper::body::Frame::data(b)))),
            ResponseBody::Stream(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(r)) => Poll::Ready(Some(r.map(hyper::body::Frame::data))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
