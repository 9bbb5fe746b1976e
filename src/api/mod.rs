//! The OCI distribution pull API. This layer only parses and validates
//! requests, asks the [`Cache`] and maps its answers and errors to HTTP; all
//! cache policy lives in the cache.
//!
//! - `path`, `query`, `range`: the request target, `ns` and `Range`, checked
//!   against the spec's grammar before anything else sees them;
//! - `response`: the headers the wire contract promises;
//! - `error`: the one place errors become OCI JSON;
//! - `body`: the response body and the per-request log line.

pub mod body;
pub mod error;
pub mod path;
pub mod query;
pub mod range;
pub mod response;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RANGE};
use hyper::{Method, Request, Response, StatusCode};

use crate::cache::{Cache, Caller, Outcome};
use crate::cluster::PEER_HEADER;
use crate::metrics::Metrics;
use crate::oci::{Digest, Reference};
use crate::upstream::Upstreams;
use body::{RequestLog, ResponseBody};
use error::ApiError;
use path::Route;
use response::{blob_response, json_response, text_response, BlobPlan};

/// The daemon's request handler, shared by every connection of a listener.
pub struct Api {
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    /// Serves the peer listener: other nodes only, with the cluster token.
    for_peers: bool,
}

/// What the per-request log line and metrics say about a request.
struct Info {
    kind: &'static str,
    result: &'static str,
    registry: String,
    repository: String,
}

impl Api {
    /// The handler of the local listener (this node's clients).
    pub fn new(cache: Arc<Cache>, metrics: Arc<Metrics>) -> Api {
        Api {
            cache,
            metrics,
            for_peers: false,
        }
    }

    /// The handler of the peer listener: every request but `/healthz` and
    /// `/readyz` must carry the cluster token, and is answered as owner.
    pub fn for_peers(cache: Arc<Cache>, metrics: Arc<Metrics>) -> Api {
        Api {
            cache,
            metrics,
            for_peers: true,
        }
    }

    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The metrics in Prometheus text format, with the gauges that are
    /// computed when scraped brought up to date.
    pub fn render_metrics(&self) -> Vec<u8> {
        if let Some(c) = self.cache.cluster() {
            self.metrics.peers.set(c.live_peers() as i64);
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let tasks = rt.metrics().num_alive_tasks();
            self.metrics.runtime_tasks.set(tasks as i64);
        }
        self.metrics.render()
    }

    /// Answers one request. Never fails: errors become OCI error responses.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
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
            if self.for_peers {
                self.metrics
                    .peer_requests
                    .with_label_values(&["served", info.result])
                    .inc();
            } else {
                self.metrics
                    .requests
                    .with_label_values(&[info.kind, info.result])
                    .inc();
            }
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
        &self,
        req: &Request<Incoming>,
        info: &mut Info,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let route = path::parse(req.uri().path())?;
        if self.for_peers {
            match route {
                Route::Healthz | Route::Readyz => {}
                Route::Metrics | Route::Cluster | Route::Pinned => {
                    return Err(ApiError::NotForPeers)
                }
                _ => {
                    let token = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
                    if !self.cache.cluster().is_some_and(|c| c.admits(token)) {
                        return Err(ApiError::PeerTokenRequired);
                    }
                }
            }
        }
        let head = req.method() == Method::HEAD;
        if req.method() != Method::GET && !head {
            return Err(match route {
                Route::Unsupported { what } => ApiError::Unsupported(what),
                _ => ApiError::MethodNotAllowed,
            });
        }
        let (name, kind) = match &route {
            Route::Base => return Ok(json_response(Bytes::from_static(b"{}"), head)),
            Route::Metrics => {
                let mut r = Response::new(ResponseBody::full(self.render_metrics()));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                return Ok(r);
            }
            Route::Healthz => return Ok(text_response(StatusCode::OK, "ok\n")),
            Route::Cluster => return Ok(self.cluster_status(head)),
            Route::Pinned => {
                let report = self.cache.pinned_report().await;
                let body = serde_json::to_vec(&report).unwrap_or_default();
                return Ok(json_response(Bytes::from(body), head));
            }
            Route::Readyz => {
                return Ok(if self.cache.is_ready() {
                    text_response(StatusCode::OK, "ready\n")
                } else {
                    text_response(StatusCode::SERVICE_UNAVAILABLE, "indexing cache\n")
                })
            }
            Route::Unsupported { what } => return Err(ApiError::Unsupported(what)),
            Route::Referrers => return Err(ApiError::NoReferrers),
            Route::Manifest { name, .. } => (name, "manifest"),
            Route::Blob { name, .. } => (name, "blob"),
            Route::TagsList { name } => (name, "tags"),
        };
        info.kind = kind;
        info.repository = name.clone();
        let ns = match query::param(req.uri().query(), "ns") {
            None => None,
            Some(Ok(ns)) => Some(ns),
            Some(Err(_)) => return Err(ApiError::BadNamespace),
        };
        let ups = self.cache.registry(ns.as_deref())?;
        info.registry = ups.host.clone();
        let caller = if self.for_peers {
            let from = req.headers().get(PEER_HEADER);
            Caller::Peer {
                from: from.and_then(|v| v.to_str().ok()),
            }
        } else {
            Caller::Client(req.headers().get(AUTHORIZATION))
        };
        match route {
            Route::Manifest { name, reference } => {
                self.manifest(&ups, &name, &reference, req.headers(), caller, head, info)
                    .await
            }
            Route::Blob { name, digest } => {
                self.blob(&ups, &name, digest, req.headers(), caller, head, info)
                    .await
            }
            Route::TagsList { name } => {
                let query = query::tags_pagination(req.uri().query());
                let body = self.cache.tags_list(&ups, &name, &query, caller).await?;
                info.result = Outcome::Miss.as_str();
                Ok(json_response(body, head))
            }
            _ => Err(ApiError::MethodNotAllowed),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn manifest(
        &self,
        ups: &Arc<Upstreams>,
        name: &str,
        reference: &Reference,
        headers: &HeaderMap,
        caller: Caller<'_>,
        head: bool,
        info: &mut Info,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let answer = self.cache.manifest(ups, name, reference, caller).await?;
        info.result = answer.outcome.as_str();
        let m = &answer.manifest;
        if !response::accepts(headers, &m.media_type) {
            return Err(ApiError::NotAcceptable(m.media_type.clone()));
        }
        let counter = self.served_counter(answer.outcome, m.from_peer);
        Ok(response::manifest_response(m, headers, head, |b| {
            ResponseBody::full(b).counted(counter)
        }))
    }

    #[allow(clippy::too_many_arguments)]
    async fn blob(
        &self,
        ups: &Arc<Upstreams>,
        name: &str,
        digest: Digest,
        headers: &HeaderMap,
        caller: Caller<'_>,
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
        if head {
            let (size, outcome) = self.cache.blob_head(ups, name, digest, caller).await?;
            info.result = outcome.as_str();
            return Ok(match size {
                Some(size) => BlobPlan::new(digest, size, range)?.response(ResponseBody::empty()),
                None => blob_response(ResponseBody::empty(), &digest),
            });
        }
        let blob = self.cache.blob(ups, name, digest, caller).await?;
        info.result = blob.outcome.as_str();
        let counter = self.served_counter(blob.outcome, blob.from_peer);
        Ok(match blob.size {
            Some(size) => {
                let plan = BlobPlan::new(digest, size, range)?;
                let body = blob.stream(plan.start, Some(plan.end));
                plan.response(ResponseBody::stream(body).counted(counter))
            }
            // No length from upstream: a range cannot be placed before the
            // fill ends, and waiting for that would stall the client. Serve
            // the whole body (RFC 9110 lets a server ignore Range; containerd
            // then skips to its offset).
            None => blob_response(
                ResponseBody::stream(blob.stream(0, None)).counted(counter),
                &digest,
            ),
        })
    }

    /// The counter of body bytes sent: to a peer, or to a client by where
    /// they came from.
    fn served_counter(&self, outcome: Outcome, from_peer: bool) -> prometheus::IntCounter {
        if self.for_peers {
            return self.metrics.peer_bytes.with_label_values(&["served"]);
        }
        let source = match (outcome, from_peer) {
            (Outcome::Hit, _) => "cache",
            (_, true) => "peer",
            (_, false) => "upstream",
        };
        self.metrics.bytes_served.with_label_values(&[source])
    }

    /// `/cluster`: this node and its peers with their health; `{}` (and
    /// 404) without a cluster tier.
    fn cluster_status(&self, head: bool) -> Response<ResponseBody> {
        match self.cache.cluster() {
            Some(c) => {
                let body = serde_json::to_vec(&c.status()).unwrap_or_default();
                json_response(Bytes::from(body), head)
            }
            None => text_response(StatusCode::NOT_FOUND, "no cluster tier configured\n"),
        }
    }
}
