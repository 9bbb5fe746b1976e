//! Credentials and tokens for one upstream: its `username:password` file,
//! Basic auth once the upstream asked for it, and Bearer tokens from the
//! realm it names, cached by scope (bounded; expired tokens are refetched).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderValue, AUTHORIZATION};

use super::auth::{realm_in_trust_domain, TokenResponse};
use super::body::{error_chain, read_limited};
use super::guard::{host_is_internal, host_is_link_local};
use super::{AttemptError, UpstreamError};
use crate::config::Timeouts;

/// Scopes (repositories) whose token one upstream keeps at once.
const MAX_TOKENS: u64 = 1024;

pub struct Credentials {
    user: String,
    pass: String,
}

// Never print secrets, not even in debug logs.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}:<redacted>)", self.user)
    }
}

impl Credentials {
    /// Reads a file holding one line `username:password` (a mounted Secret)
    /// for the upstream at `url`.
    pub fn read(path: &std::path::Path, url: &str) -> Result<Credentials, UpstreamError> {
        let bad = |why: String| UpstreamError::Setup {
            upstream: url.to_string(),
            why: format!("credentials_file {}: {why}", path.display()),
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let line = text.trim_end_matches(['\r', '\n']);
        let (user, pass) = line
            .split_once(':')
            .ok_or_else(|| bad("expected one line `username:password`".into()))?;
        if user.is_empty() {
            return Err(bad("empty username".into()));
        }
        Ok(Credentials {
            user: user.to_string(),
            pass: pass.to_string(),
        })
    }
}

#[derive(Clone)]
struct CachedToken {
    header: HeaderValue,
    expires: Instant,
}

/// What one upstream authenticates with.
pub struct Auth {
    creds: Option<Credentials>,
    tokens: moka::sync::Cache<String, CachedToken>,
    /// The upstream asked for Basic auth: send credentials up front.
    basic: AtomicBool,
}

impl Auth {
    pub fn new(creds: Option<Credentials>) -> Auth {
        Auth {
            creds,
            tokens: moka::sync::Cache::builder()
                .max_capacity(MAX_TOKENS)
                // Token lifetimes are clamped to a day; nothing lives longer.
                .time_to_live(Duration::from_secs(86_400))
                .build(),
            basic: AtomicBool::new(false),
        }
    }

    /// The `Authorization` to send first for `scope`: a live cached token,
    /// or Basic credentials once the upstream asked for them.
    pub fn cached(&self, scope: &str) -> Option<HeaderValue> {
        if let Some(t) = self.tokens.get(scope) {
            if t.expires > Instant::now() {
                return Some(t.header);
            }
        }
        if self.basic.load(Ordering::Relaxed) {
            return self.basic_header();
        }
        None
    }

    /// The upstream challenged with Basic: our credentials, from now on up front.
    pub fn use_basic(&self) -> Option<HeaderValue> {
        self.basic.store(true, Ordering::Relaxed);
        self.basic_header()
    }

    fn basic_header(&self) -> Option<HeaderValue> {
        let c = self.creds.as_ref()?;
        let raw = format!("{}:{}", c.user, c.pass);
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        let mut v = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// Tokens held now (for tests of the bound).
    pub fn token_count(&self) -> u64 {
        self.tokens.run_pending_tasks();
        self.tokens.entry_count()
    }
}

/// The upstream a token is fetched for.
pub struct TokenOrigin<'a> {
    pub http: &'a reqwest::Client,
    /// The upstream's base URL and host (a realm must be in its trust domain).
    pub url: &'a str,
    pub host: &'a str,
    pub timeouts: Timeouts,
    /// Counts token requests (`tender_upstream_requests_total{status="token"}`).
    pub requests: prometheus::IntCounter,
}

/// On whose behalf a token is asked for.
#[derive(Clone, Copy)]
pub enum Bearer<'a> {
    /// tender's own (the upstream's credentials, if any); cached by scope.
    Node,
    /// A client's, with its `Authorization`; not cached.
    Client(&'a HeaderValue),
    /// Nobody's: what an anonymous client may read; not cached.
    Anonymous,
}

impl Auth {
    /// Gets a Bearer token for `scope` from the challenge's realm on behalf
    /// of `who`. Credentials (ours or a client's) go only to a realm in the
    /// upstream's trust domain.
    pub async fn fetch_token(
        &self,
        origin: &TokenOrigin<'_>,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        who: Bearer<'_>,
    ) -> Result<HeaderValue, AttemptError> {
        let realm_url = reqwest::Url::parse(realm)
            .map_err(|e| AttemptError::Auth(format!("token realm {realm:?} is not a URL: {e}")))?;
        if realm_url.scheme() != "https" && !origin.url.starts_with("http://") {
            return Err(AttemptError::Auth(format!(
                "token realm {realm:?} is not https for an https upstream"
            )));
        }
        let realm_host = realm_url.host_str().unwrap_or_default().to_string();
        if host_is_link_local(&realm_host)
            || (!host_is_internal(origin.host) && host_is_internal(&realm_host))
        {
            return Err(AttemptError::Auth(format!(
                "token realm {realm_host} is an internal address; refused"
            )));
        }
        let mut q: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(s) = service {
            q.push(("service", s));
        }
        let mut req = origin.http.get(realm_url).query(&q);
        let trusted = realm_in_trust_domain(origin.host, &realm_host);
        match who {
            Bearer::Client(a) if trusted => req = req.header(AUTHORIZATION, a.clone()),
            Bearer::Client(_) => {
                return Err(AttemptError::Auth(format!(
                    "token realm {realm_host} is outside the upstream's domain; a client's credentials are not sent there"
                )))
            }
            Bearer::Anonymous => {}
            Bearer::Node => {
                if let Some(c) = &self.creds {
                    if trusted {
                        req = req.basic_auth(&c.user, Some(&c.pass));
                    } else {
                        tracing::warn!(upstream = %origin.url, realm = %realm_host,
                            "token realm outside the upstream's domain: asking anonymously");
                    }
                }
            }
        }
        let resp = tokio::time::timeout(origin.timeouts.header, req.send())
            .await
            .map_err(|_| AttemptError::Timeout("token response"))?
            .map_err(|e| {
                AttemptError::Transport(format!("token request: {}", error_chain(&e.without_url())))
            })?;
        origin.requests.inc();
        if !resp.status().is_success() {
            return Err(AttemptError::Auth(format!(
                "token endpoint answered {}",
                resp.status()
            )));
        }
        let body = read_limited(resp, 1 << 20, origin.timeouts.stall).await?;
        let tr: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| AttemptError::Auth(format!("token response is not JSON: {e}")))?;
        let token = tr
            .token
            .or(tr.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AttemptError::Auth("token response has no token".into()))?;
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| AttemptError::Auth("token has invalid characters".into()))?;
        header.set_sensitive(true);
        if !matches!(who, Bearer::Node) {
            return Ok(header);
        }
        // The spec's default lifetime is 60 s; renew a little early.
        // Clamped: a hostile or broken expires_in must not overflow Instant.
        let ttl = Duration::from_secs(tr.expires_in.unwrap_or(60).clamp(10, 86_400));
        self.tokens.insert(
            scope.to_string(),
            CachedToken {
                header: header.clone(),
                expires: Instant::now() + ttl - Duration::from_secs(5),
            },
        );
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_base64_encoded() {
        let dir = std::env::temp_dir().join(format!("tender-creds-{}", std::process::id()));
        std::fs::write(&dir, "foo:bar\n").unwrap();
        let a = Auth::new(Some(Credentials::read(&dir, "https://x").unwrap()));
        assert_eq!(a.use_basic().unwrap(), "Basic Zm9vOmJhcg==");
        assert_eq!(a.cached("repository:x:pull").unwrap(), "Basic Zm9vOmJhcg==");
        std::fs::remove_file(&dir).unwrap();
    }
}
