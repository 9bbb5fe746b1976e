//! Request-target parsing: the OCI distribution routes, validated against the
//! spec's grammar before anything touches the cache or an upstream.

use crate::digest::{Digest, DigestError};

/// Longest repository name accepted (distribution's limit).
pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    Manifest {
        name: String,
        reference: Reference,
    },
    Blob {
        name: String,
        digest: Digest,
    },
    TagsList {
        name: String,
    },
    /// Upload endpoints, `_catalog`, referrers: not offered by a pull-through cache.
    Unsupported {
        what: &'static str,
    },
    Metrics,
    Healthz,
    Readyz,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("not found")]
    NotFound,
    #[error("invalid repository name {0:?}")]
    NameInvalid(String),
    #[error("invalid tag {0:?}")]
    TagInvalid(String),
    #[error("invalid digest {given:?}: {source}")]
    DigestInvalid {
        given: String,
        #[source]
        source: DigestError,
    },
}

/// Parses the path part of a request target (no query).
pub fn parse(path: &str) -> Result<Route, PathError> {
    match path {
        "/v2" | "/v2/" => return Ok(Route::Base),
        "/metrics" => return Ok(Route::Metrics),
        "/healthz" => return Ok(Route::Healthz),
        "/readyz" => return Ok(Route::Readyz),
        _ => {}
    }
    let rest = path.strip_prefix("/v2/").ok_or(PathError::NotFound)?;
    if rest == "_catalog" {
        return Ok(Route::Unsupported { what: "catalog" });
    }
    // The name may itself contain `/`, so anchor on the trailing route words.
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::TagsList {
            name: name_of(name)?,
        });
    }
    if let Some(i) = rest.find("/blobs/uploads") {
        let tail = &rest[i + "/blobs/uploads".len()..];
        if tail.is_empty() || tail.starts_with('/') {
            return Ok(Route::Unsupported {
                what: "blob upload",
            });
        }
    }
    let (head, last) = rest.rsplit_once('/').ok_or(PathError::NotFound)?;
    let (name, kind) = head.rsplit_once('/').ok_or(PathError::NotFound)?;
    match kind {
        "manifests" => {
            let name = name_of(name)?;
            let reference = if last.contains(':') {
                Reference::Digest(parse_digest(last)?)
            } else if valid_tag(last) {
                Reference::Tag(last.to_string())
            } else {
                return Err(PathError::TagInvalid(last.to_string()));
            };
            Ok(Route::Manifest { name, reference })
        }
        "blobs" => {
            let name = name_of(name)?;
            Ok(Route::Blob {
                name,
                digest: parse_digest(last)?,
            })
        }
        "referrers" => Ok(Route::Unsupported { what: "referrers" }),
        _ => Err(PathError::NotFound),
    }
}

fn parse_digest(s: &str) -> Result<Digest, PathError> {
    s.parse().map_err(|source| PathError::DigestInvalid {
        given: s.to_string(),
        source,
    })
}

fn name_of(s: &str) -> Result<String, PathError> {
    if valid_repository(s) {
        Ok(s.to_string())
    } else {
        Err(PathError::NameInvalid(s.to_string()))
    }
}

/// The OCI repository grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
/// It excludes `..`, empty components, percent-encoding and leading separators,
/// which is what makes names safe to use in upstream URLs.
pub fn valid_repository(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__` or `-+`, always followed by alnum.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// The OCI tag grammar: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Returns the first value of query parameter `key`, percent-decoded.
/// Unknown parameters are ignored; an undecodable value counts as absent-but-present
/// and is returned as `Some(Err)` so the caller can refuse it.
pub fn query_param(query: Option<&str>, key: &str) -> Option<Result<String, ()>> {
    let q = query?;
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return Some(percent_decode(v));
        }
    }
    None
}

fn percent_decode(s: &str) -> Result<String, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).ok_or(())?;
                // from_str_radix would accept a sign ("%+1"); an escape is two hex digits.
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(());
                }
                let hs = std::str::from_utf8(hex).map_err(|_| ())?;
                out.push(u8::from_str_radix(hs, 16).map_err(|_| ())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_routes() {
        assert_eq!(parse("/v2/").unwrap(), Route::Base);
        assert_eq!(
            parse("/v2/library/alpine/manifests/3.19").unwrap(),
            Route::Manifest {
                name: "library/alpine".into(),
                reference: Reference::Tag("3.19".into())
            }
        );
        assert!(matches!(
            parse(&format!("/v2/a/b/c/blobs/{D}")).unwrap(),
            Route::Blob { name, .. } if name == "a/b/c"
        ));
        assert_eq!(
            parse("/v2/library/alpine/tags/list").unwrap(),
            Route::TagsList {
                name: "library/alpine".into()
            }
        );
        // A repository may legitimately be called "manifests" or "blobs".
        assert!(matches!(
            parse("/v2/blobs/manifests/latest").unwrap(),
            Route::Manifest { name, .. } if name == "blobs"
        ));
    }

    #[test]
    fn uploads_and_catalog_are_unsupported() {
        for p in [
            "/v2/library/alpine/blobs/uploads/",
            "/v2/library/alpine/blobs/uploads/abc-123",
            "/v2/_catalog",
        ] {
            assert!(
                matches!(parse(p).unwrap(), Route::Unsupported { .. }),
                "{p}"
            );
        }
    }

    #[test]
    fn rejects_bad_names_tags_and_digests() {
        assert!(matches!(
            parse("/v2/../etc/manifests/latest"),
            Err(PathError::NameInvalid(_))
        ));
        assert!(matches!(
            parse("/v2/Library/alpine/manifests/latest"),
            Err(PathError::NameInvalid(_))
        ));
        assert!(matches!(
            parse("/v2/library//alpine/manifests/latest"),
            Err(PathError::NameInvalid(_))
        ));
        assert!(matches!(
            parse("/v2/lib%2e%2e/alpine/manifests/latest"),
            Err(PathError::NameInvalid(_))
        ));
        assert!(matches!(
            parse("/v2/library/alpine/manifests/-bad"),
            Err(PathError::TagInvalid(_))
        ));
        assert!(matches!(
            parse("/v2/library/alpine/blobs/sha256:baddigeststring"),
            Err(PathError::DigestInvalid { .. })
        ));
        assert!(matches!(
            parse("/v2/library/alpine/blobs/latest"),
            Err(PathError::DigestInvalid { .. })
        ));
        assert_eq!(parse("/v3/x"), Err(PathError::NotFound));
        assert_eq!(parse("/v2/alpine"), Err(PathError::NotFound));
    }

    #[test]
    fn repository_grammar() {
        for ok in [
            "a",
            "library/alpine",
            "a-b",
            "a--b",
            "a__b",
            "a.b/c_d",
            "x0/y1/z2",
        ] {
            assert!(valid_repository(ok), "{ok}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a..b", "a___b", "-a", "a-", ".", "..", "a/../b", "a b",
        ] {
            assert!(!valid_repository(bad), "{bad}");
        }
        assert!(!valid_repository(&"a".repeat(MAX_NAME_LEN + 1)));
    }

    #[test]
    fn tag_grammar() {
        assert!(valid_tag("latest"));
        assert!(valid_tag("_x.Y-1"));
        assert!(!valid_tag(".hidden"));
        assert!(!valid_tag(&"a".repeat(129)));
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("ns=docker.io"), "ns"),
            Some(Ok("docker.io".into()))
        );
        assert_eq!(
            query_param(Some("foo=1&ns=localhost%3A5000"), "ns"),
            Some(Ok("localhost:5000".into()))
        );
        assert_eq!(query_param(Some("foo=1"), "ns"), None);
        assert_eq!(query_param(None, "ns"), None);
        assert_eq!(query_param(Some("ns=%zz"), "ns"), Some(Err(())));
        // Found by the fuzzer: a sign is not a hex digit.
        assert_eq!(query_param(Some("ns=%+1"), "ns"), Some(Err(())));
        assert_eq!(query_param(Some("ns=docker%+2eio"), "ns"), Some(Err(())));
    }
}
