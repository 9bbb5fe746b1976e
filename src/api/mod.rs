//! The OCI distribution pull API: routing by `ns`, manifests, blobs and tag
//! lists, answered from the cache or through single-flight upstream fetches.

pub mod body;
pub mod error;
pub mod path;
pub mod range;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, IF_NONE_MATCH, RANGE,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;

use crate::cache::fill::{self, FillContext, Fills};
use crate::cache::store::Store;
use crate::cache::{Flights, Manifest, ManifestCache, Shared, Tags};
use crate::config::Config;
use crate::digest::Digest;
use crate::metrics::Metrics;
use crate::upstream::{FetchError, FetchedManifest, Upstreams};
use body::{RequestLog, ResponseBody};
use error::{fetch_error, ApiError};
use path::{Reference, Route};
use range::RangeSpec;

/// Registries by host, and the one serving requests without `ns`.
pub struct Routes {
    registries: HashMap<String, Arc<RegistryCtx>>,
    default: Option<Arc<RegistryCtx>>,
}

impl Routes {
    fn build(config: &Config, metrics: &Arc<Metrics>) -> Result<Routes, String> {
        let mut registries = HashMap::new();
        let mut default = None;
        for r in &config.registries {
            let ctx = Arc::new(RegistryCtx {
                host: r.host.clone(),
                upstreams: Arc::new(Upstreams::new(r, config.timeouts, config.breaker, metrics)?),
                verify_client_credentials: r.verify_client_credentials,
                verified: std::sync::Mutex::default(),
            });
            if r.default {
                default = Some(ctx.clone());
            }
            registries.insert(r.host.clone(), ctx);
        }
        Ok(Routes {
            registries,
            default,
        })
    }
}

pub struct RegistryCtx {
    pub host: String,
    pub upstreams: Arc<Upstreams>,
    verify_client_credentials: bool,
    /// (hash of a client's Authorization, repository) → when an upstream
    /// last confirmed that those credentials may read the repository.
    verified: std::sync::Mutex<HashMap<(Digest, String), Instant>>,
}

/// A tag resolution's outcome, shared by coalesced callers.
struct TagOutcome {
    manifest: Arc<Manifest>,
    result: &'static str,
}

/// The daemon's state, shared by every connection.
pub struct App {
    pub config: Config,
    /// Swapped whole on reload (SIGHUP); requests in flight keep the routes
    /// they started with.
    routes: std::sync::RwLock<Arc<Routes>>,
    pub store: Arc<Store>,
    pub fills: Arc<Fills>,
    pub tags: Tags,
    manifests: ManifestCache,
    tag_flights: Arc<Flights<String, TagOutcome>>,
    /// Keyed by repository too: a "not found" in one repository must not
    /// answer another's request (manifests are small; a rare duplicate
    /// fetch is the price).
    digest_flights: Arc<Flights<(Digest, String, String), Manifest>>,
    pub metrics: Arc<Metrics>,
    fill_ctx: FillContext,
}

/// What the per-request log line and metrics say about a request.
struct Info {
    kind: &'static str,
    result: &'static str,
    registry: String,
    repository: String,
}

impl App {
    pub fn new(config: Config, metrics: Arc<Metrics>) -> Result<Arc<App>, String> {
        let store = Arc::new(
            Store::open(&config.cache_dir, config.cache_max_size, metrics.clone())
                .map_err(|e| format!("cache_dir {}: {e}", config.cache_dir.display()))?
                .with_min_free(config.min_free_space),
        );
        let tags = Tags::new(config.cache_dir.join("tags"))
            .map_err(|e| format!("cache_dir {}: {e}", config.cache_dir.display()))?;
        let routes = std::sync::RwLock::new(Arc::new(Routes::build(&config, &metrics)?));
        let fills = Arc::new(Fills::default());
        Ok(Arc::new(App {
            fill_ctx: FillContext {
                store: store.clone(),
                metrics: metrics.clone(),
                fills: fills.clone(),
            },
            config,
            routes,
            store,
            fills,
            tags,
            manifests: ManifestCache::new(64 << 20),
            tag_flights: Arc::default(),
            digest_flights: Arc::default(),
            metrics,
        }))
    }

    /// Replaces the registries and their upstreams with those of `config`
    /// (SIGHUP). Requests already under way finish with the old ones. Other
    /// settings need a restart; a change to them is reported and ignored.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let routes = Routes::build(config, &self.metrics)?;
        let old = &self.config;
        let mut ignored = Vec::new();
        if config.listen != old.listen || config.metrics_listen != old.metrics_listen {
            ignored.push("listen/metrics_listen");
        }
        if config.cache_dir != old.cache_dir || config.cache_max_size != old.cache_max_size {
            ignored.push("cache_dir/cache_max_size");
        }
        if config.tag_ttl != old.tag_ttl || config.min_free_space != old.min_free_space {
            ignored.push("tag_ttl/min_free_space");
        }
        if !ignored.is_empty() {
            tracing::warn!(settings = ?ignored, "these settings change only on restart");
        }
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
        tracing::info!(
            registries = config.registries.len(),
            "registries and upstreams reloaded"
        );
        Ok(())
    }

    /// Answers one request. Never fails: errors become OCI error responses.
    pub async fn handle(self: &Arc<Self>, req: Request<Incoming>) -> Response<ResponseBody> {
        let started = Instant::now();
        let mut info = Info {
            kind: "other",
            result: "-",
            registry: String::new(),
            repository: String::new(),
        };
        let resp = match self.route(&req, &mut info).await {
            Ok(r) => r,
            Err(e) => {
                info.result = "error";
                if e.status().is_server_error() {
                    tracing::warn!(path = %req.uri().path(), error = %e, "request failed");
                }
                e.to_response()
            }
        };
        if matches!(info.kind, "manifest" | "blob" | "tags") {
            self.metrics
                .requests
                .with_label_values(&[info.kind, info.result])
                .inc();
        }
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let log = RequestLog {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            registry: info.registry,
            repository: info.repository,
            kind: info.kind,
            result: info.result,
            status,
            started,
            aborted: None,
        };
        Response::from_parts(parts, body.with_log(log))
    }

    async fn route(
        self: &Arc<Self>,
        req: &Request<Incoming>,
        info: &mut Info,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let route = path::parse(req.uri().path())?;
        let head = req.method() == Method::HEAD;
        if req.method() != Method::GET && !head {
            return Err(match route {
                Route::Unsupported { what } => ApiError::Unsupported(what),
                _ => ApiError::MethodNotAllowed,
            });
        }
        match route {
            Route::Base => Ok(json_response(Bytes::from_static(b"{}"), head)),
            Route::Metrics => {
                let mut r = Response::new(ResponseBody::full(self.metrics.render()));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                Ok(r)
            }
            Route::Healthz => Ok(text_response(StatusCode::OK, "ok\n")),
            Route::Readyz => Ok(if self.store.is_indexed() {
                text_response(StatusCode::OK, "ready\n")
            } else {
                text_response(StatusCode::SERVICE_UNAVAILABLE, "indexing cache\n")
            }),
            Route::Unsupported { what } => Err(ApiError::Unsupported(what)),
            Route::Manifest { name, reference } => {
                info.kind = "manifest";
                let reg = self.registry(req.uri().query())?;
                info.registry = reg.host.clone();
                info.repository = name.clone();
                self.authorize(
                    &reg,
                    &name,
                    &format!("manifests/{reference}"),
                    req.headers(),
                )
                .await?;
                self.manifest(&reg, &name, reference, req.headers(), head, info)
                    .await
            }
            Route::Blob { name, digest } => {
                info.kind = "blob";
                let reg = self.registry(req.uri().query())?;
                info.registry = reg.host.clone();
                info.repository = name.clone();
                self.authorize(&reg, &name, &format!("blobs/{digest}"), req.headers())
                    .await?;
                self.blob(&reg, &name, digest, req.headers(), head, info)
                    .await
            }
            Route::TagsList { name } => {
                info.kind = "tags";
                let reg = self.registry(req.uri().query())?;
                info.registry = reg.host.clone();
                info.repository = name.clone();
                let query = tags_query(req.uri().query());
                let body = reg
                    .upstreams
                    .tags_list(&name, &query)
                    .await
                    .map_err(|e| fetch_error(e, ApiError::Upstream(FetchError::NotFound)))?;
                info.result = "miss";
                Ok(json_response(body, head))
            }
        }
    }

    /// The AlwaysVerify policy: a client that presents credentials to a
    /// registry with `verify_client_credentials` gets cached content only
    /// after an upstream confirms, with those credentials, that it may read
    /// the repository (confirmations are reused for `tag_ttl`). Clients
    /// without credentials get the node's trust (kubelet's IfNotPresent).
    async fn authorize(
        &self,
        reg: &RegistryCtx,
        name: &str,
        suffix: &str,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        if !reg.verify_client_credentials {
            return Ok(());
        }
        let Some(auth) = headers.get(hyper::header::AUTHORIZATION) else {
            return Ok(());
        };
        let key = (Digest::of(auth.as_bytes()), name.to_string());
        let ttl = self.config.tag_ttl;
        {
            let v = reg.verified.lock().unwrap_or_else(|p| p.into_inner());
            if v.get(&key).is_some_and(|t| t.elapsed() < ttl) {
                return Ok(());
            }
        }
        let mut auth = auth.clone();
        auth.set_sensitive(true);
        match reg
            .upstreams
            .verify_client_access(name, suffix, &auth)
            .await
        {
            Ok(()) => {
                let mut v = reg.verified.lock().unwrap_or_else(|p| p.into_inner());
                if v.len() > 10_000 {
                    v.retain(|_, t| t.elapsed() < ttl);
                }
                v.insert(key, Instant::now());
                Ok(())
            }
            Err(FetchError::NotFound) if suffix.starts_with("blobs/") => Err(ApiError::BlobUnknown),
            Err(FetchError::NotFound) => Err(ApiError::ManifestUnknown),
            // Fail closed: without a confirmation, nothing is served.
            Err(e) => Err(ApiError::Upstream(e)),
        }
    }

    /// The registry a request is for: `ns` if given (closed world: only
    /// configured registries), else the default registry.
    fn registry(&self, query: Option<&str>) -> Result<Arc<RegistryCtx>, ApiError> {
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match path::query_param(query, "ns") {
            None => routes.default.clone().ok_or(ApiError::NoDefaultRegistry),
            Some(Err(())) => Err(ApiError::BadNamespace),
            Some(Ok(ns)) => {
                let ns = ns.to_ascii_lowercase();
                routes.registries.get(&ns).cloned().ok_or_else(|| {
                    let shown: String = ns.chars().take(255).collect();
                    ApiError::UnknownNamespace(shown)
                })
            }
        }
    }

    async fn manifest(
        self: &Arc<Self>,
        reg: &Arc<RegistryCtx>,
        name: &str,
        reference: Reference,
        headers: &HeaderMap,
        head: bool,
        info: &mut Info,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let (m, result) = match reference {
            Reference::Digest(d) => self.manifest_by_digest(reg, name, d).await?,
            Reference::Tag(t) => self.manifest_by_tag(reg, name, t).await?,
        };
        info.result = result;
        if !accepts(headers, &m.media_type) {
            return Err(ApiError::NotAcceptable(m.media_type.clone()));
        }
        let etag = format!("\"{}\"", m.digest);
        let not_modified = headers
            .get(IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        let mut resp = if head || not_modified {
            Response::new(ResponseBody::empty())
        } else {
            Response::new(ResponseBody::full(m.bytes.clone()).counted(self.served_counter(result)))
        };
        if not_modified {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
        }
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, header_value(&m.media_type));
        h.insert("docker-content-digest", header_value(&m.digest.to_string()));
        h.insert(ETAG, header_value(&etag));
        h.insert(CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
        h.insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
        Ok(resp)
    }

    fn served_counter(&self, result: &str) -> prometheus::IntCounter {
        let source = if result == "hit" { "cache" } else { "upstream" };
        self.metrics.bytes_served.with_label_values(&[source])
    }

    /// A manifest from memory or disk, re-verified when read from disk.
    async fn manifest_local(&self, d: &Digest) -> Option<Arc<Manifest>> {
        if let Some(m) = self.manifests.get(d) {
            self.store.mark_used(crate::cache::store::Kind::Manifest, d);
            return Some(m);
        }
        let store = self.store.clone();
        let d = *d;
        let read = tokio::task::spawn_blocking(move || store.read_manifest(&d))
            .await
            .ok()?;
        match read {
            Ok(Some((media_type, bytes))) => {
                if Digest::of(&bytes) != d {
                    tracing::warn!(digest = %d, "stored manifest failed verification; dropping it");
                    self.metrics.integrity_failures.inc();
                    let store = self.store.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        store.remove(crate::cache::store::Kind::Manifest, &d)
                    })
                    .await;
                    return None;
                }
                let m = Arc::new(Manifest {
                    digest: d,
                    media_type,
                    bytes,
                });
                self.manifests.insert(m.clone());
                Some(m)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(digest = %d, error = %e, "cannot read stored manifest");
                None
            }
        }
    }

    /// Keeps a verified manifest in memory and on disk.
    async fn keep_manifest(&self, fm: FetchedManifest) -> Arc<Manifest> {
        let m = Arc::new(Manifest {
            digest: fm.digest,
            media_type: fm.media_type,
            bytes: fm.bytes,
        });
        self.manifests.insert(m.clone());
        let store = self.store.clone();
        let m2 = m.clone();
        let res = tokio::task::spawn_blocking(move || {
            store.put_manifest(&m2.digest, &m2.media_type, &m2.bytes)
        })
        .await;
        if let Ok(Err(e)) = res {
            tracing::warn!(digest = %m.digest, error = %e, "manifest served but not cached");
        }
        m
    }

    async fn manifest_by_digest(
        self: &Arc<Self>,
        reg: &Arc<RegistryCtx>,
        name: &str,
        d: Digest,
    ) -> Result<(Arc<Manifest>, &'static str), ApiError> {
        if let Some(m) = self.manifest_local(&d).await {
            return Ok((m, "hit"));
        }
        let app = self.clone();
        let reg = reg.clone();
        let name = name.to_string();
        let (res, joined) = self
            .digest_flights
            .run((d, reg.host.clone(), name.clone()), move || async move {
                // Another flight may have stored it since our lookup.
                if let Some(m) = app.manifest_local(&d).await {
                    return Ok(m);
                }
                let fm = reg
                    .upstreams
                    .get_manifest(&name, &d.to_string(), Some(&d))
                    .await?;
                Ok(app.keep_manifest(fm).await)
            })
            .await;
        let m = res.map_err(|e| fetch_error(e, ApiError::ManifestUnknown))?;
        Ok((m, if joined { "coalesced" } else { "miss" }))
    }

    async fn manifest_by_tag(
        self: &Arc<Self>,
        reg: &Arc<RegistryCtx>,
        name: &str,
        tag: String,
    ) -> Result<(Arc<Manifest>, &'static str), ApiError> {
        let key = Tags::key(&reg.host, name, &tag);
        // Hot path: a fresh tag whose manifest is in memory touches no disk.
        if let Some(e) = self.tags.get_mem(&key) {
            if e.is_fresh(self.config.tag_ttl) {
                if let Some(m) = self.manifests.get(&e.digest) {
                    self.store
                        .mark_used(crate::cache::store::Kind::Manifest, &m.digest);
                    return Ok((m, "hit"));
                }
            }
        }
        let app = self.clone();
        let reg = reg.clone();
        let name = name.to_string();
        let k = key.clone();
        let (res, joined) = self
            .tag_flights
            .run(key, move || async move {
                app.refresh_tag(&reg, &name, &tag, &k).await
            })
            .await;
        let out = res.map_err(|e| fetch_error(e, ApiError::ManifestUnknown))?;
        Ok((
            out.manifest.clone(),
            if joined { "coalesced" } else { out.result },
        ))
    }

    /// Resolves a tag that is unknown or past `tag_ttl`: revalidate with an
    /// upstream HEAD (no body unless the digest changed), or fetch it; serve
    /// the last known digest if every upstream fails.
    async fn refresh_tag(
        &self,
        reg: &RegistryCtx,
        name: &str,
        tag: &str,
        key: &str,
    ) -> Shared<TagOutcome> {
        let prior = self.tags.get(key).await;
        let prior_m = match prior {
            Some(p) => self.manifest_local(&p.digest).await,
            None => None,
        };
        let outcome =
            |manifest: Arc<Manifest>, result| Ok(Arc::new(TagOutcome { manifest, result }));
        if let (Some(p), Some(m)) = (prior, &prior_m) {
            if p.is_fresh(self.config.tag_ttl) {
                return outcome(m.clone(), "hit");
            }
            match reg.upstreams.head_manifest(name, tag).await {
                Ok(h) if h.digest == Some(p.digest) => {
                    self.tags.set(key, p.digest).await;
                    return outcome(m.clone(), "hit");
                }
                Ok(_) => {} // changed, or no digest header: fetch it
                Err(FetchError::NotFound) => {
                    self.tags.remove(key).await;
                    return Err(FetchError::NotFound);
                }
                Err(e) => {
                    self.metrics.stale_served.inc();
                    tracing::warn!(registry = %reg.host, repository = name, tag, error = %e,
                        "every upstream failed; serving the last known digest");
                    return outcome(m.clone(), "hit");
                }
            }
        }
        match reg.upstreams.get_manifest(name, tag, None).await {
            Ok(fm) => {
                let d = fm.digest;
                let m = self.keep_manifest(fm).await;
                self.tags.set(key, d).await;
                outcome(m, "miss")
            }
            Err(FetchError::NotFound) => {
                if prior.is_some() {
                    self.tags.remove(key).await;
                }
                Err(FetchError::NotFound)
            }
            Err(e) => match prior_m {
                Some(m) => {
                    self.metrics.stale_served.inc();
                    tracing::warn!(registry = %reg.host, repository = name, tag, error = %e,
                        "every upstream failed; serving the last known digest");
                    outcome(m, "hit")
                }
                None => Err(e),
            },
        }
    }

    async fn blob(
        self: &Arc<Self>,
        reg: &Arc<RegistryCtx>,
        name: &str,
        digest: Digest,
        headers: &HeaderMap,
        head: bool,
        info: &mut Info,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let range = match headers.get(RANGE) {
            Some(v) => {
                let s = v
                    .to_str()
                    .map_err(|_| range::RangeError::Malformed("non-ASCII Range header".into()))?;
                range::parse(s)?
            }
            None => None,
        };
        let store = self.store.clone();
        let hit = tokio::task::spawn_blocking(move || store.open_blob(&digest))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(|e| ApiError::Internal(format!("cache read: {e}")))?;
        if let Some((file, size)) = hit {
            info.result = "hit";
            let plan = BlobPlan::new(digest, size, range)?;
            if head {
                return Ok(plan.response(ResponseBody::empty()));
            }
            let (tx, rx) = mpsc::channel(1);
            let file = Arc::new(file);
            let (start, end) = (plan.start, plan.end);
            tokio::spawn(async move { fill::stream_file(file, start, end, tx).await });
            return Ok(plan.response(ResponseBody::stream(rx).counted(self.served_counter("hit"))));
        }
        if head {
            // An uncached blob's HEAD is answered without downloading it.
            if let Some(size) = self.fills.get(&digest).and_then(|f| f.known_size()) {
                info.result = "coalesced";
                return Ok(BlobPlan::new(digest, size, range)?.response(ResponseBody::empty()));
            }
            let size = reg
                .upstreams
                .head_blob(name, &digest)
                .await
                .map_err(|e| fetch_error(e, ApiError::BlobUnknown))?;
            info.result = "miss";
            return Ok(match size {
                Some(size) => BlobPlan::new(digest, size, range)?.response(ResponseBody::empty()),
                None => blob_headers(Response::new(ResponseBody::empty()), &digest),
            });
        }
        let (mut fill, mut leader) =
            self.fills
                .join_or_start(&self.fill_ctx, reg.upstreams.clone(), name, digest);
        let mut started = fill.started().await;
        // Joined a fill for another repository or registry that could not
        // find (or may not read) the blob: ask our own upstreams once.
        if matches!(started, Err(FetchError::NotFound | FetchError::Denied(_)))
            && !fill.fetches_as(&reg.host, name)
        {
            (fill, leader) =
                self.fills
                    .join_or_start(&self.fill_ctx, reg.upstreams.clone(), name, digest);
            started = fill.started().await;
        }
        info.result = match (leader, fill.is_complete()) {
            (true, _) => "miss",
            // Verified and about to be committed: as good as a hit.
            (false, true) => "hit",
            (false, false) => "coalesced",
        };
        let mut total = started.map_err(|e| fetch_error(e, ApiError::BlobUnknown))?;
        if total == Some(0) {
            // A zero-length answer is complete the moment its headers are
            // sent, so it must be verified first (it is instant for the
            // real empty blob, and fails for a lying upstream).
            total = Some(
                fill.finished()
                    .await
                    .map_err(|e| fetch_error(e, ApiError::BlobUnknown))?,
            );
        }
        let counter = self.served_counter(info.result);
        let (tx, rx) = mpsc::channel(1);
        let resp = match total {
            Some(size) => {
                let plan = BlobPlan::new(digest, size, range)?;
                let (start, end) = (plan.start, plan.end);
                tokio::spawn(async move { fill.stream(start, Some(end), tx).await });
                plan.response(ResponseBody::stream(rx).counted(counter))
            }
            // No length from upstream: a range cannot be placed before the
            // fill ends, and waiting for that would stall the client. Serve
            // the whole body (RFC 9110 lets a server ignore Range; containerd
            // then skips to its offset).
            None => {
                tokio::spawn(async move { fill.stream(0, None, tx).await });
                blob_headers(
                    Response::new(ResponseBody::stream(rx).counted(counter)),
                    &digest,
                )
            }
        };
        Ok(resp)
    }
}

/// Which bytes of a blob a response carries.
struct BlobPlan {
    digest: Digest,
    size: u64,
    start: u64,
    /// Exclusive.
    end: u64,
    partial: bool,
}

impl BlobPlan {
    fn new(digest: Digest, size: u64, range: Option<RangeSpec>) -> Result<BlobPlan, ApiError> {
        Ok(match range {
            None => BlobPlan {
                digest,
                size,
                start: 0,
                end: size,
                partial: false,
            },
            Some(spec) => {
                let r = spec.resolve(size)?;
                BlobPlan {
                    digest,
                    size,
                    start: r.start,
                    end: r.end + 1,
                    partial: true,
                }
            }
        })
    }

    fn response(&self, body: ResponseBody) -> Response<ResponseBody> {
        let mut resp = blob_headers(Response::new(body), &self.digest);
        let h = resp.headers_mut();
        h.insert(CONTENT_LENGTH, HeaderValue::from(self.end - self.start));
        if self.partial {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let cr = format!("bytes {}-{}/{}", self.start, self.end - 1, self.size);
            resp.headers_mut().insert(CONTENT_RANGE, header_value(&cr));
        }
        resp
    }
}

fn blob_headers(mut resp: Response<ResponseBody>, d: &Digest) -> Response<ResponseBody> {
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert("docker-content-digest", header_value(&d.to_string()));
    h.insert(ETAG, header_value(&format!("\"{d}\"")));
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=31536000"));
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

fn header_value(s: &str) -> HeaderValue {
    // Every caller passes validated ASCII (digests, media types from upstream
    // headers or manifests); fall back rather than panic if one is not.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn json_response(body: Bytes, head: bool) -> Response<ResponseBody> {
    let len = body.len();
    let mut resp = Response::new(if head {
        ResponseBody::empty()
    } else {
        ResponseBody::full(body)
    });
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    resp
}

fn text_response(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// Whether the request's `Accept` allows `media_type`. No `Accept` (or
/// `*/*`) allows anything.
pub fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut saw_any = false;
    for v in headers.get_all(ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(',') {
            let t = part.split(';').next().unwrap_or("").trim();
            if t.is_empty() {
                continue;
            }
            saw_any = true;
            if t == "*/*" || t == "application/*" || t.eq_ignore_ascii_case(media_type) {
                return true;
            }
        }
    }
    !saw_any
}

/// Only the pagination parameters are forwarded to upstreams, and only
/// when well-formed.
fn tags_query(query: Option<&str>) -> String {
    let mut out = Vec::new();
    if let Some(Ok(n)) = path::query_param(query, "n") {
        if !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()) {
            out.push(format!("n={n}"));
        }
    }
    if let Some(Ok(last)) = path::query_param(query, "last") {
        if path::valid_tag(&last) {
            out.push(format!("last={last}"));
        }
    }
    out.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_header_rules() {
        let mut h = HeaderMap::new();
        assert!(accepts(&h, crate::upstream::MEDIA_OCI_INDEX));
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        );
        assert!(!accepts(&h, crate::upstream::MEDIA_OCI_INDEX));
        assert!(accepts(&h, crate::upstream::MEDIA_OCI_MANIFEST));
        h.append(ACCEPT, HeaderValue::from_static("*/*;q=0.1"));
        assert!(accepts(&h, crate::upstream::MEDIA_OCI_INDEX));
    }

    #[test]
    fn tags_query_forwards_only_valid_pagination() {
        assert_eq!(tags_query(Some("n=10&last=v1&evil=1")), "n=10&last=v1");
        assert_eq!(tags_query(Some("n=abc&last=../x")), "");
        assert_eq!(tags_query(None), "");
    }
}
