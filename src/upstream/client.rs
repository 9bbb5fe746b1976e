//! One configured upstream: its HTTP client (proxy, CA, timeouts, redirect
//! policy), its credentials and its token cache.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};

use super::auth::{parse_challenge, realm_in_trust_domain, Challenge, TokenResponse};
use super::UpstreamError;
use crate::config::{self, Timeouts};
use crate::metrics::Metrics;

struct Credentials {
    user: String,
    pass: String,
}

// Never print secrets, not even in debug logs.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}:<redacted>)", self.user)
    }
}

struct CachedToken {
    header: HeaderValue,
    expires: Instant,
}

pub struct UpstreamClient {
    pub registry: String,
    /// Base URL, e.g. `https://registry-1.docker.io`; also the metrics label.
    pub url: String,
    host: String,
    prefix: Option<String>,
    http: reqwest::Client,
    creds: Option<Credentials>,
    /// Bearer tokens by scope.
    tokens: Mutex<HashMap<String, CachedToken>>,
    /// The upstream asked for Basic auth: send credentials up front.
    basic: AtomicBool,
    pub timeouts: Timeouts,
    pub health: super::health::Health,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("url", &self.url)
            .finish()
    }
}

/// Whether an address is one that a public registry's redirect must never
/// point at (metadata services, loopback, private networks).
pub fn is_internal_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // CGNAT 100.64/10
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal_ip(IpAddr::V4(v4)))
        }
    }
}

/// Name resolution that applies the redirect rules to what names resolve
/// to, so a hostname cannot smuggle tender to an internal address: answers
/// that are link-local are always dropped, and for a public upstream so are
/// loopback and private ones (its configured egress proxy excepted).
struct GuardedResolver {
    public_upstream: bool,
    proxy_host: Option<String>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let strict = self.public_upstream && self.proxy_host.as_deref() != Some(host.as_str());
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| {
                    let ip = a.ip();
                    let link_local = match ip {
                        IpAddr::V4(v4) => v4.is_link_local(),
                        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
                    };
                    let refused = link_local || (strict && is_internal_ip(ip));
                    !refused
                })
                .collect();
            if addrs.is_empty() {
                let e: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves only to addresses tender may not connect to").into();
                return Err(e);
            }
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// Link-local addresses (cloud metadata services such as 169.254.169.254):
/// never a redirect or token target, whatever the upstream.
fn host_is_link_local(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    match h.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_link_local(),
        Ok(IpAddr::V6(v6)) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
        Err(_) => false,
    }
}

fn host_is_internal(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.ends_with(".localhost")
        || h.parse::<IpAddr>().is_ok_and(is_internal_ip)
}

impl UpstreamClient {
    pub fn new(
        registry: &str,
        cfg: &config::Upstream,
        timeouts: Timeouts,
        breaker: super::health::BreakerPolicy,
        metrics: Arc<Metrics>,
    ) -> Result<UpstreamClient, String> {
        let base = reqwest::Url::parse(&cfg.url).map_err(|e| format!("{}: {e}", cfg.url))?;
        let host = base.host_str().unwrap_or_default().to_string();
        // Redirects (blob CDNs) are followed, but an upstream on the public
        // internet may not bounce tender to internal addresses. reqwest drops
        // Authorization when a redirect changes host.
        let upstream_internal = host_is_internal(&host);
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                return attempt.error("more than 5 redirects");
            }
            let url = attempt.url().clone();
            if !matches!(url.scheme(), "http" | "https") {
                return attempt.error(format!("redirect to unsupported scheme {}", url.scheme()));
            }
            match url.host_str() {
                Some(h) if host_is_link_local(h) || (!upstream_internal && host_is_internal(h)) => {
                    let msg = format!("redirect to internal address {h} refused");
                    attempt.error(msg)
                }
                Some(_) => attempt.follow(),
                None => attempt.error("redirect without a host"),
            }
        });
        let proxy_host = cfg
            .proxy
            .as_deref()
            .and_then(|p| reqwest::Url::parse(p).ok())
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        let resolver = Arc::new(GuardedResolver {
            public_upstream: !upstream_internal,
            proxy_host,
        });
        let mut b = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .dns_resolver(resolver)
            .redirect(policy)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("tender/", env!("CARGO_PKG_VERSION")));
        if let Some(p) = &cfg.proxy {
            let proxy = reqwest::Proxy::all(p).map_err(|e| format!("proxy {p}: {e}"))?;
            b = b.proxy(proxy);
        }
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| format!("http client for {}: {e}", cfg.url))?;
        let creds = match &cfg.credentials_file {
            Some(f) => Some(read_credentials(f)?),
            None => None,
        };
        Ok(UpstreamClient {
            registry: registry.to_string(),
            url: cfg.url.clone(),
            host,
            prefix: cfg.repository_prefix.clone(),
            http,
            creds,
            tokens: Mutex::new(HashMap::new()),
            basic: AtomicBool::new(false),
            timeouts,
            health: super::health::Health::new(
                breaker,
                metrics
                    .upstream_circuit_open
                    .with_label_values(&[registry, &cfg.url]),
                format!("{registry} {}", cfg.url),
            ),
            metrics,
        })
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
    ) -> Result<reqwest::Response, UpstreamError> {
        let res = self.send_inner(method, repo, suffix, headers).await;
        match &res {
            Ok(_) => self.health.success(),
            Err(UpstreamError::Status {
                status: 429,
                retry_after,
            }) => self.health.throttled(*retry_after),
            Err(UpstreamError::Status { status, .. }) if *status >= 500 => self.health.failure(),
            Err(UpstreamError::Status { .. }) => self.health.success(), // alive, just a no
            Err(UpstreamError::Timeout(_) | UpstreamError::Transport(_)) => self.health.failure(),
            Err(_) => {}
        }
        res
    }

    async fn send_inner(
        &self,
        method: Method,
        repo: &str,
        suffix: &str,
        headers: HeaderMap,
    ) -> Result<reqwest::Response, UpstreamError> {
        let repo_path = self.repo_path(repo);
        let url = format!("{}/v2/{}/{}", self.url, repo_path, suffix);
        let scope = format!("repository:{repo_path}:pull");
        let mut resp = self
            .send_once(
                method.clone(),
                &url,
                headers.clone(),
                self.cached_auth(&scope),
            )
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let challenge = first_challenge(&resp);
            let auth = match challenge {
                Some(Challenge::Bearer { realm, service, .. }) => Some(
                    self.fetch_token(&realm, service.as_deref(), &scope, None)
                        .await?,
                ),
                Some(Challenge::Basic) => {
                    self.basic.store(true, Ordering::Relaxed);
                    self.basic_header()
                }
                None => None,
            };
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
        Err(UpstreamError::Status {
            status: status.as_u16(),
            retry_after,
        })
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
        mut headers: HeaderMap,
        auth: Option<HeaderValue>,
    ) -> Result<reqwest::Response, UpstreamError> {
        if let Some(a) = auth {
            headers.insert(AUTHORIZATION, a);
        }
        let started = Instant::now();
        let fut = self.http.request(method, url).headers(headers).send();
        let res = tokio::time::timeout(self.timeouts.header, fut).await;
        let labels = [self.registry.as_str(), self.url.as_str()];
        let status_label;
        let out = match res {
            Err(_) => {
                status_label = "timeout".to_string();
                Err(UpstreamError::Timeout("response headers"))
            }
            Ok(Err(e)) => {
                status_label = if e.is_connect() {
                    "connect_error"
                } else {
                    "error"
                }
                .to_string();
                Err(UpstreamError::Transport(e.to_string()))
            }
            Ok(Ok(r)) => {
                status_label = r.status().as_u16().to_string();
                Ok(r)
            }
        };
        self.metrics
            .upstream_requests
            .with_label_values(&[labels[0], labels[1], &status_label])
            .inc();
        self.metrics
            .upstream_latency
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        out
    }

    /// `HEAD /v2/<prefix/repo>/<suffix>` with a client's `Authorization`
    /// instead of ours: a Bearer token is sent as is; Basic credentials are
    /// sent to the registry, or exchanged for a token at its realm (never to
    /// a realm outside the upstream's domain). Ok means the client may read it.
    pub async fn check_client_access(
        &self,
        repo: &str,
        suffix: &str,
        client_auth: &HeaderValue,
    ) -> Result<(), UpstreamError> {
        let repo_path = self.repo_path(repo);
        let url = format!("{}/v2/{}/{}", self.url, repo_path, suffix);
        let scope = format!("repository:{repo_path}:pull");
        let is_basic = client_auth
            .as_bytes()
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"basic "));
        let first = if is_basic {
            None
        } else {
            Some(client_auth.clone())
        };
        let mut resp = self
            .send_once(Method::HEAD, &url, HeaderMap::new(), first)
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED && is_basic {
            let challenge = first_challenge(&resp);
            let auth = match challenge {
                Some(Challenge::Bearer { realm, service, .. }) => {
                    self.fetch_token(&realm, service.as_deref(), &scope, Some(client_auth))
                        .await?
                }
                Some(Challenge::Basic) => client_auth.clone(),
                None => {
                    return Err(UpstreamError::Status {
                        status: 401,
                        retry_after: None,
                    })
                }
            };
            resp = self
                .send_once(Method::HEAD, &url, HeaderMap::new(), Some(auth))
                .await?;
        }
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(UpstreamError::Status {
                status: resp.status().as_u16(),
                retry_after: None,
            })
        }
    }

    fn cached_auth(&self, scope: &str) -> Option<HeaderValue> {
        if let Ok(tokens) = self.tokens.lock() {
            if let Some(t) = tokens.get(scope) {
                if t.expires > Instant::now() {
                    return Some(t.header.clone());
                }
            }
        }
        if self.basic.load(Ordering::Relaxed) {
            return self.basic_header();
        }
        None
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let c = self.creds.as_ref()?;
        let raw = format!("{}:{}", c.user, c.pass);
        let mut v = HeaderValue::from_str(&format!("Basic {}", base64(raw.as_bytes()))).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// Gets a Bearer token for `scope` from the challenge's realm, with our
    /// own credentials (`client_auth` None; the token is cached) or with a
    /// client's Basic credentials (not cached: it is that client's token).
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        client_auth: Option<&HeaderValue>,
    ) -> Result<HeaderValue, UpstreamError> {
        let realm_url = reqwest::Url::parse(realm)
            .map_err(|e| UpstreamError::Auth(format!("token realm {realm:?} is not a URL: {e}")))?;
        if realm_url.scheme() != "https" && !self.url.starts_with("http://") {
            return Err(UpstreamError::Auth(format!(
                "token realm {realm:?} is not https for an https upstream"
            )));
        }
        let realm_host = realm_url.host_str().unwrap_or_default().to_string();
        if host_is_link_local(&realm_host)
            || (!host_is_internal(&self.host) && host_is_internal(&realm_host))
        {
            return Err(UpstreamError::Auth(format!(
                "token realm {realm_host} is an internal address; refused"
            )));
        }
        let mut q: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(s) = service {
            q.push(("service", s));
        }
        let mut req = self.http.get(realm_url).query(&q);
        let trusted = realm_in_trust_domain(&self.host, &realm_host);
        match client_auth {
            Some(a) if trusted => req = req.header(AUTHORIZATION, a.clone()),
            Some(_) => {
                return Err(UpstreamError::Auth(format!(
                    "token realm {realm_host} is outside the upstream's domain; a client's credentials are not sent there"
                )))
            }
            None => {
                if let Some(c) = &self.creds {
                    if trusted {
                        req = req.basic_auth(&c.user, Some(&c.pass));
                    } else {
                        tracing::warn!(upstream = %self.url, realm = %realm_host,
                            "token realm outside the upstream's domain: asking anonymously");
                    }
                }
            }
        }
        let resp = tokio::time::timeout(self.timeouts.header, req.send())
            .await
            .map_err(|_| UpstreamError::Timeout("token response"))?
            .map_err(|e| {
                UpstreamError::Transport(format!(
                    "token request: {}",
                    error_chain(&e.without_url())
                ))
            })?;
        self.metrics
            .upstream_requests
            .with_label_values(&[&self.registry, &self.url, "token"])
            .inc();
        if !resp.status().is_success() {
            return Err(UpstreamError::Auth(format!(
                "token endpoint answered {}",
                resp.status()
            )));
        }
        let body = read_limited(resp, 1 << 20, self.timeouts.stall).await?;
        let tr: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Auth(format!("token response is not JSON: {e}")))?;
        let token = tr
            .token
            .or(tr.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| UpstreamError::Auth("token response has no token".into()))?;
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| UpstreamError::Auth("token has invalid characters".into()))?;
        header.set_sensitive(true);
        // The spec's default lifetime is 60 s; renew a little early.
        // Clamped: a hostile or broken expires_in must not overflow Instant.
        let ttl = Duration::from_secs(tr.expires_in.unwrap_or(60).clamp(10, 86_400));
        let expires = Instant::now() + ttl - Duration::from_secs(5);
        if client_auth.is_some() {
            return Ok(header);
        }
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.retain(|_, t| t.expires > Instant::now());
            tokens.insert(
                scope.to_string(),
                CachedToken {
                    header: header.clone(),
                    expires,
                },
            );
        }
        Ok(header)
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

/// An error and its causes, e.g. "error sending request: connection refused".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

fn read_credentials(path: &std::path::Path) -> Result<Credentials, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("credentials_file {}: {e}", path.display()))?;
    let line = text.trim_end_matches(['\r', '\n']);
    let (user, pass) = line.split_once(':').ok_or_else(|| {
        format!(
            "credentials_file {}: expected one line `username:password`",
            path.display()
        )
    })?;
    if user.is_empty() {
        return Err(format!(
            "credentials_file {}: empty username",
            path.display()
        ));
    }
    Ok(Credentials {
        user: user.to_string(),
        pass: pass.to_string(),
    })
}

/// Reads a whole body of at most `limit` bytes, with the stall timeout
/// between chunks.
pub async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    stall: Duration,
) -> Result<Bytes, UpstreamError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(UpstreamError::TooLarge { limit });
    }
    let mut buf = BytesMut::new();
    loop {
        let chunk = tokio::time::timeout(stall, resp.chunk())
            .await
            .map_err(|_| UpstreamError::Timeout("body stalled"))?
            .map_err(|e| {
                UpstreamError::Transport(format!("body: {}", error_chain(&e.without_url())))
            })?;
        match chunk {
            Some(c) => {
                if buf.len() + c.len() > limit {
                    return Err(UpstreamError::TooLarge { limit });
                }
                buf.extend_from_slice(&c);
            }
            None => return Ok(buf.freeze()),
        }
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[tokio::test]
    async fn names_resolving_to_internal_addresses_are_refused_for_public_upstreams() {
        use reqwest::dns::Resolve;
        use std::str::FromStr;
        let name = || reqwest::dns::Name::from_str("localhost").unwrap();
        let public = GuardedResolver {
            public_upstream: true,
            proxy_host: None,
        };
        assert!(
            public.resolve(name()).await.is_err(),
            "localhost -> 127.0.0.1 must be refused"
        );
        let via_proxy = GuardedResolver {
            public_upstream: true,
            proxy_host: Some("localhost".into()),
        };
        assert!(
            via_proxy.resolve(name()).await.is_ok(),
            "the configured proxy may be internal"
        );
        let internal = GuardedResolver {
            public_upstream: false,
            proxy_host: None,
        };
        assert!(internal.resolve(name()).await.is_ok());
    }

    #[test]
    fn link_local_is_refused_even_for_internal_upstreams() {
        assert!(host_is_link_local("169.254.169.254"));
        assert!(host_is_link_local("[fe80::1]"));
        assert!(!host_is_link_local("10.0.0.1"));
    }

    #[test]
    fn internal_addresses() {
        for h in [
            "127.0.0.1",
            "169.254.169.254",
            "10.1.2.3",
            "192.168.0.1",
            "[::1]",
            "localhost",
            "100.64.0.1",
            "[fe80::1]",
        ] {
            assert!(host_is_internal(h), "{h}");
        }
        for h in ["8.8.8.8", "registry-1.docker.io", "[2606:4700::1]"] {
            assert!(!host_is_internal(h), "{h}");
        }
    }
}
