//! `WWW-Authenticate` challenges and the registry token protocol
//! (Docker Hub style Bearer tokens, or plain Basic auth).

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parses one `WWW-Authenticate` value, e.g.
/// `Bearer realm="https://auth.docker.io/token",service="registry.docker.io"`.
/// Returns `None` for schemes tender cannot answer or malformed values.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let v = value.trim();
    let (scheme, rest) = match v.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => (&v[..i], v[i..].trim_start()),
        None => (v, ""),
    };
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest)?;
    let realm = params.get("realm")?.clone();
    if realm.is_empty() {
        return None;
    }
    Some(Challenge::Bearer {
        realm,
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

/// `key=value` or `key="quoted, \"escaped\""` pairs separated by commas.
/// Keys are case-insensitive.
fn parse_params(s: &str) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= b.len() {
            return Some(out);
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[ks..i].to_ascii_lowercase();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' || key.is_empty() {
            return None;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut val = Vec::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            loop {
                match b.get(i) {
                    None => return None, // unterminated quote
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        val.push(*b.get(i + 1)?);
                        i += 2;
                    }
                    Some(&c) => {
                        val.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && b[i] != b',' && !b[i].is_ascii_whitespace() {
                val.push(b[i]);
                i += 1;
            }
        }
        out.insert(key, String::from_utf8(val).ok()?);
    }
}

/// Parent domains shared by unrelated tenants: a sibling host under one of
/// these is not the same trust domain.
const SHARED_SUFFIXES: &[&str] = &[
    "azurecr.io",
    "amazonaws.com",
    "pkg.dev",
    "cloudfront.net",
    "appspot.com",
    "herokuapp.com",
    "github.io",
    "githubusercontent.com",
    "azurewebsites.net",
    "co.uk",
    "com.au",
    "co.jp",
    "com.br",
];

/// Whether credentials configured for `upstream_host` may be sent to a token
/// realm at `realm_host`: the same host, or a sibling under the same parent
/// domain (so `registry-1.docker.io` may use `auth.docker.io`, but not
/// `evil.example`, and `a.azurecr.io` not `b.azurecr.io`).
pub fn realm_in_trust_domain(upstream_host: &str, realm_host: &str) -> bool {
    if upstream_host.eq_ignore_ascii_case(realm_host) {
        return true;
    }
    let parent = |h: &str| -> Option<String> {
        if h.parse::<std::net::IpAddr>().is_ok() {
            return None;
        }
        let labels: Vec<&str> = h.split('.').collect();
        (labels.len() >= 2).then(|| labels[labels.len() - 2..].join(".").to_ascii_lowercase())
    };
    match (parent(upstream_host), parent(realm_host)) {
        (Some(a), Some(b)) => a == b && !SHARED_SUFFIXES.contains(&a.as_str()),
        _ => false,
    }
}

#[derive(serde::Deserialize)]
pub struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            }
        );
    }

    #[test]
    fn parses_quirky_forms() {
        let c = parse_challenge(r#"bearer  Realm = "https://x/t" , service=unquoted,scope="a\"b""#)
            .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://x/t".into(),
                service: Some("unquoted".into()),
                scope: Some("a\"b".into()),
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry""#),
            Some(Challenge::Basic)
        );
    }

    #[test]
    fn rejects_unusable_challenges() {
        assert_eq!(parse_challenge("Negotiate abc"), None);
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
        assert_eq!(parse_challenge(r#"Bearer realm="""#), None);
        assert_eq!(parse_challenge("Bearer =x"), None);
    }

    #[test]
    fn trust_domain() {
        assert!(realm_in_trust_domain(
            "registry-1.docker.io",
            "auth.docker.io"
        ));
        assert!(realm_in_trust_domain(
            "harbor.corp.example",
            "harbor.corp.example"
        ));
        assert!(!realm_in_trust_domain(
            "registry-1.docker.io",
            "docker.io.evil.example"
        ));
        assert!(!realm_in_trust_domain("127.0.0.1", "127.0.0.2"));
        assert!(!realm_in_trust_domain(
            "myorg.azurecr.io",
            "evil.azurecr.io"
        ));
        assert!(realm_in_trust_domain(
            "myorg.azurecr.io",
            "myorg.azurecr.io"
        ));
    }
}
