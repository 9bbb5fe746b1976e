//! One upstream: a configured one (its HTTP client with proxy, CA,
//! timeouts, redirect and address guards, and its credentials) or another
//! node's peer listener; and the health that decides whether it is tried
//! at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};

use super::auth::{parse_challenge, Challenge};
use super::body::error_chain;
use super::guard::{host_is_internal, proxy_hosts, redirect_policy, GuardedResolver};
use super::health::Health;
use super::ratelimit;
use super::token::{Auth, Bearer, Credentials, TokenOrigin};
use super::{AttemptError, UpstreamError};
use crate::config::{self, BreakerPolicy, Timeouts};
use crate::metrics::Metrics;
use crate::oci::media;

/// What an upstream client talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// One of a registry's configured upstreams (the WAN side).
    Upstream,
    /// Another node's tender, on its peer listener. A peer that sends no
    /// response headers within `patience` must show it is alive (answer
    /// `/healthz` within the rest of it) or it counts as down: an owner
    /// still waiting on its own slow upstream is waited for, a hung one is
    /// not.
    Peer { patience: Duration },
}

/// How requests are authenticated.
enum Authn {
    /// A registry's: its credentials, Basic or Bearer tokens by scope.
    Registry(Auth),
    /// The same header on every request (a peer's shared token).
    Fixed(HeaderValue),
}

pub struct UpstreamClient {
    pub registry: String,
    /// Base URL, e.g. `https://registry-1.docker.io`; also the metrics label.
    pub url: String,
    host: String,
    prefix: Option<String>,
    /// Appended to every request: a peer learns the registry from `ns`.
    query: Option<String>,
    http: reqwest::Client,
    auth: Authn,
    pub timeouts: Timeouts,
    /// Shared by every registry's client of one peer.
    pub health: Arc<Health>,
    /// A client's credentials may be sent here to check them.
    pub forwards_client_credentials: bool,
    pub role: Role,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("url", &self.url)
            .finish()
    }
}

impl UpstreamClient {
    pub fn new(
        registry: &str,
        cfg: &config::Upstream,
        timeouts: Timeouts,
        breaker: BreakerPolicy,
        metrics: Arc<Metrics>,
    ) -> Result<UpstreamClient, UpstreamError> {
        let setup = |why: String| UpstreamError::Setup {
            upstream: cfg.url.clone(),
            why,
        };
        let base = reqwest::Url::parse(&cfg.url).map_err(|e| setup(e.to_string()))?;
        let host = base.host_str().unwrap_or_default().to_string();
        // Redirects (blob CDNs) are followed, but an upstream on the public
        // internet may not bounce tender to internal addresses.
        let upstream_internal = host_is_internal(&host);
        let proxies = proxy_hosts(cfg.proxy.as_deref());
        let mut b = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .dns_resolver(GuardedResolver::new(!upstream_internal, proxies))
            .redirect(redirect_policy(upstream_internal))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("tender/", env!("CARGO_PKG_VERSION")));
        if let Some(p) = &cfg.proxy {
            let proxy = reqwest::Proxy::all(p).map_err(|e| setup(format!("proxy {p}: {e}")))?;
            b = b.proxy(proxy);
        }
        if let Some(ca) = &cfg.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| setup(format!("ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup(format!("ca_file {}: {e}", ca.display())))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b.build().map_err(|e| setup(format!("http client: {e}")))?;
        let creds = match &cfg.credentials_file {
            Some(f) => Some(Credentials::read(f, &cfg.url)?),
            None => None,
        };
        Ok(UpstreamClient {
            registry: registry.to_string(),
            url: cfg.url.clone(),
            host,
            prefix: cfg.repository_prefix.clone(),
            query: None,
            http,
            auth: Authn::Registry(Auth::new(creds)),
            forwards_client_credentials: cfg.forward_client_credentials,
            role: Role::Upstream,
            timeouts,
            health: Arc::new(Health::new(
                breaker,
                metrics
                    .upstream_circuit_open
                    .with_label_values(&[registry, &cfg.url]),
                format!("{registry} {}", cfg.url),
            )),
            metrics,
        })
    }

    /// A client for `registry`'s content on the peer at `url` (normalised),
    /// sharing that peer's connection pool and health with its other
    /// registries' clients; every request carries the cluster's `token`.
    #[allow(clippy::too_many_arguments)]
    pub fn peer(
        url: &str,
        registry: &str,
        http: reqwest::Client,
        health: Arc<Health>,
        token: HeaderValue,
        timeouts: Timeouts,
        patience: Duration,
        metrics: Arc<Metrics>,
    ) -> UpstreamClient {
        UpstreamClient {
            registry: registry.to_string(),
            url: url.to_string(),
            host: String::new(),
            prefix: None,
            query: Some(format!("ns={registry}")),
            http,
            auth: Authn::Fixed(token),
            forwards_client_credentials: false,
            role: Role::Peer { patience },
            timeouts,
            health,
            metrics,
        }
    }

    /// `base/v2/<repo path>/<suffix>`, with this client's query.
    fn url_for(&self, repo_path: &str, suffix: &str) -> String {
        let mut url = format!("{}/v2/{}/{}", self.url, repo_path, suffix);
        if let Some(q) = &self.query {
            url.push(if suffix.contains('?') { '&' } else { '?' });
            url.push_str(q);
        }
        url
    }

    /// The counter of body bytes received from here: a peer's count as
    /// peer traffic, not as upstream (WAN) traffic.
    pub fn bytes_counter(&self) -> prometheus::IntCounter {
        match self.role {
            Role::Upstream => self
                .metrics
                .upstream_bytes
                .with_label_values(&[&self.registry, &self.url]),
            Role::Peer { .. } => self.metrics.peer_bytes.with_label_values(&["fetched"]),
        }
    }

    /// The repository name as this upstream knows it.
    pub fn repo_path(&self, repo: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}/{repo}"),
            None => repo.to_string(),
        }
    }

    /// Sends `method /v2/<prefix/repo>/<suffix>`, answering one auth challenge.
    /// Returns the response only for 2xx; every other status is an error that
    /// carries it. The outcome feeds the upstream's health.
    pub async fn send(
        &self,
        method: Method,
        repo: &str,
        suffix: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, AttemptError> {
        let res = async {
            let repo_path = self.repo_path(repo);
            let url = self.url_for(&repo_path, suffix);
            let scope = format!("repository:{repo_path}:pull");
            let first = match &self.auth {
                Authn::Registry(a) => a.cached(&scope),
                Authn::Fixed(h) => Some(h.clone()),
            };
            let mut resp = self
                .send_once(method.clone(), &url, headers.clone(), first)
                .await?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                let auth = self.answer(&resp, &scope, Bearer::Node).await?;
                if auth.is_some() {
                    resp = self.send_once(method, &url, headers, auth).await?;
                }
            }
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            let retry_after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Err(AttemptError::Status {
                status: status.as_u16(),
                retry_after,
            })
        }
        .await;
        self.note_health(&res);
        res
    }

    /// What an answer says about the upstream's health: alive (any answer
    /// but 5xx and 429), failing (5xx, timeouts, transport errors), or
    /// asking us to back off (429).
    fn note_health(&self, res: &Result<reqwest::Response, AttemptError>) {
        match res {
            Ok(_) => self.health.success(),
            Err(AttemptError::Status {
                status: 429,
                retry_after,
            }) => self.health.throttled(*retry_after),
            Err(AttemptError::Status { status, .. }) if *status >= 500 => self.health.failure(),
            // A peer that refuses the cluster token (another token, a stranger on its
            // address) is of no use until that changes.
            Err(AttemptError::Status {
                status: 401 | 403, ..
            }) if self.role != Role::Upstream => self.health.failure(),
            Err(AttemptError::Status { .. }) => self.health.success(), // alive, just a no
            Err(AttemptError::Timeout(_) | AttemptError::Transport(_)) => self.health.failure(),
            Err(_) => {}
        }
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
        mut headers: HeaderMap,
        auth: Option<HeaderValue>,
    ) -> Result<reqwest::Response, AttemptError> {
        if let Some(a) = auth {
            headers.insert(AUTHORIZATION, a);
        }
        let started = Instant::now();
        let fut = self.http.request(method, url).headers(headers).send();
        let res = self.await_headers(fut).await;
        let (out, status_label) = match res {
            Err(_) => (
                Err(AttemptError::Timeout("response headers")),
                "timeout".to_string(),
            ),
            Ok(Err(e)) => {
                let label = if e.is_connect() {
                    "connect_error"
                } else {
                    "error"
                };
                // No URL in the text: it may be a presigned redirect target.
                let why = error_chain(&e.without_url());
                (Err(AttemptError::Transport(why)), label.to_string())
            }
            Ok(Ok(r)) => {
                let label = r.status().as_u16().to_string();
                self.note_quota(r.headers());
                (Ok(r), label)
            }
        };
        match self.role {
            Role::Upstream => {
                self.metrics
                    .upstream_requests
                    .with_label_values(&[&self.registry, &self.url, &status_label])
                    .inc();
                self.metrics
                    .upstream_latency
                    .with_label_values(&[&self.registry, &self.url])
                    .observe(started.elapsed().as_secs_f64());
            }
            Role::Peer { .. } => self
                .metrics
                .peer_requests
                .with_label_values(&["fetched", &status_label])
                .inc(),
        }
        out
    }

    /// Exports the pull quota an upstream states (`ratelimit-limit`,
    /// `ratelimit-remaining`), as Docker Hub does on manifest requests.
    fn note_quota(&self, headers: &HeaderMap) {
        if self.role != Role::Upstream {
            return;
        }
        let quota = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(ratelimit::parse)
        };
        let labels = [self.registry.as_str(), self.url.as_str()];
        if let Some(q) = quota("ratelimit-limit") {
            let m = &self.metrics;
            m.ratelimit_limit
                .with_label_values(&labels)
                .set(q.count as i64);
            if let Some(w) = q.window_secs {
                m.ratelimit_window.with_label_values(&labels).set(w as i64);
            }
        }
        if let Some(q) = quota("ratelimit-remaining") {
            self.metrics
                .ratelimit_remaining
                .with_label_values(&labels)
                .set(q.count as i64);
        }
    }

    /// Waits for a response's headers: up to the header timeout from an
    /// upstream; from a peer, as long as it shows it is alive (see
    /// [`Role::Peer`]). `Err` when the wait is over.
    async fn await_headers<F>(&self, fut: F) -> Result<reqwest::Result<reqwest::Response>, ()>
    where
        F: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    {
        let header = self.timeouts.header;
        let Role::Peer { patience } = self.role else {
            return tokio::time::timeout(header, fut).await.map_err(|_| ());
        };
        tokio::pin!(fut);
        let half = patience / 2;
        if let Ok(r) = tokio::time::timeout(half, &mut fut).await {
            return Ok(r);
        }
        let probe = self
            .http
            .get(format!("{}/healthz", self.url))
            .timeout(patience - half)
            .send();
        tokio::select! {
            r = &mut fut => return Ok(r),
            p = probe => {
                if !p.is_ok_and(|r| r.status().is_success()) {
                    tracing::info!(peer = %self.url, ?patience, "peer sent no headers and no sign of life");
                    return Err(());
                }
            }
        }
        tokio::time::timeout(header.saturating_sub(patience), fut)
            .await
            .map_err(|_| ())
    }

    /// Whether a client may read `suffix` (`manifests/<ref>`, `blobs/<digest>`
    /// or `tags/list`) in `repo`, asked of this upstream with the client's
    /// `Authorization` instead of ours (`None`: as an anonymous client). A
    /// Bearer token is sent as is; Basic credentials go to the registry, or
    /// are exchanged for a token at its realm (never at a realm outside the
    /// upstream's domain); an anonymous client gets an anonymous token. Ok
    /// means it may.
    pub async fn check_client_access(
        &self,
        repo: &str,
        suffix: &str,
        client_auth: Option<&HeaderValue>,
    ) -> Result<(), AttemptError> {
        let repo_path = self.repo_path(repo);
        let url = self.url_for(&repo_path, suffix);
        let scope = format!("repository:{repo_path}:pull");
        // Registries answer tags/list to GET only.
        let method = if suffix.starts_with("tags/") {
            Method::GET
        } else {
            Method::HEAD
        };
        let is_basic = client_auth.is_some_and(|a| {
            a.as_bytes()
                .get(..6)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"basic "))
        });
        let first = client_auth.filter(|_| !is_basic).cloned();
        let mut headers = HeaderMap::new();
        if suffix.starts_with("manifests/") {
            // Without it a registry may hide an OCI manifest (distribution
            // answers 404 to a client that does not accept its type).
            headers.insert(ACCEPT, HeaderValue::from_static(media::ACCEPT_ALL));
        }
        let mut resp = self
            .send_once(method.clone(), &url, headers.clone(), first)
            .await?;
        let retry =
            resp.status() == StatusCode::UNAUTHORIZED && (is_basic || client_auth.is_none());
        if retry {
            let who = match client_auth {
                Some(a) => Bearer::Client(a),
                None => Bearer::Anonymous,
            };
            let Some(auth) = self.answer(&resp, &scope, who).await? else {
                return Err(AttemptError::Status {
                    status: 401,
                    retry_after: None,
                });
            };
            resp = self.send_once(method, &url, headers, Some(auth)).await?;
        }
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(AttemptError::Status {
                status: resp.status().as_u16(),
                retry_after: None,
            })
        }
    }

    /// The `Authorization` that answers a 401's challenge for `scope` on
    /// behalf of `who`: a Bearer token from the realm, or Basic credentials
    /// (ours, or the client's; an anonymous client has none). `None` when
    /// there is no challenge that can be answered.
    async fn answer(
        &self,
        resp: &reqwest::Response,
        scope: &str,
        who: Bearer<'_>,
    ) -> Result<Option<HeaderValue>, AttemptError> {
        // A peer that refuses the cluster token is refused, not negotiated with.
        let Authn::Registry(auth) = &self.auth else {
            return Ok(None);
        };
        Ok(match first_challenge(resp) {
            Some(Challenge::Bearer { realm, service, .. }) => Some(
                auth.fetch_token(&self.token_origin(), &realm, service.as_deref(), scope, who)
                    .await?,
            ),
            Some(Challenge::Basic) => match who {
                Bearer::Client(c) => Some(c.clone()),
                Bearer::Node => auth.use_basic(),
                Bearer::Anonymous => None,
            },
            None => None,
        })
    }

    fn token_origin(&self) -> TokenOrigin<'_> {
        TokenOrigin {
            http: &self.http,
            url: &self.url,
            host: &self.host,
            timeouts: self.timeouts,
            requests: self.metrics.upstream_requests.with_label_values(&[
                &self.registry,
                &self.url,
                "token",
            ]),
        }
    }

    /// Tokens this upstream holds now.
    pub fn token_count(&self) -> u64 {
        match &self.auth {
            Authn::Registry(a) => a.token_count(),
            Authn::Fixed(_) => 0,
        }
    }
}

/// The first `WWW-Authenticate` challenge tender can answer.
fn first_challenge(resp: &reqwest::Response) -> Option<Challenge> {
    resp.headers()
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(parse_challenge)
}
