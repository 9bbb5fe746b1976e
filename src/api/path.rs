//! Request-target parsing: the OCI distribution routes, validated against the
//! spec's grammar before anything touches the cache or an upstream.

use crate::oci::name::{valid_repository, valid_tag};
use crate::oci::{Digest, DigestError, Reference};

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
    /// `/v2/<name>/referrers/<digest>`: not offered; answered 404, on which
    /// the spec's clients fall back to the referrers tag schema.
    Referrers,
    /// Upload endpoints and `_catalog`: not offered by a pull-through cache.
    Unsupported {
        what: &'static str,
    },
    Metrics,
    Healthz,
    Readyz,
    /// `/cluster`: this node's peers and their health (JSON).
    Cluster,
    /// `/pinned`: the pinned images and whether each is complete on disk (JSON).
    Pinned,
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
        "/cluster" => return Ok(Route::Cluster),
        "/pinned" => return Ok(Route::Pinned),
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
        "referrers" => Ok(Route::Referrers),
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
}
