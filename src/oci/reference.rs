//! References: what a manifest request names (a tag or a digest), and whole
//! image references as people write them (`alpine:3.19`, `quay.io/org/app@sha256:...`).

use std::fmt;

use super::digest::Digest;
use super::name::{valid_registry_host, valid_repository, valid_tag};

/// The last path segment of a manifest request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// An image reference, normalised the way Docker and containerd do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    /// A tag or a digest.
    pub reference: String,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.reference.contains(':') {
            '@'
        } else {
            ':'
        };
        write!(
            f,
            "{}/{}{sep}{}",
            self.registry, self.repository, self.reference
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not an image reference: {why}")]
pub struct ImageRefError {
    given: String,
    why: String,
}

impl std::str::FromStr for ImageRef {
    type Err = ImageRefError;

    /// Parses `alpine`, `alpine:3.19`, `org/app`, `quay.io/org/app:1`,
    /// `ghcr.io/x/y@sha256:...`: the first component names a registry if it
    /// has a `.` or `:` or is `localhost`; Docker Hub names get `library/`.
    fn from_str(s: &str) -> Result<ImageRef, ImageRefError> {
        let bad = |why: &str| ImageRefError {
            given: s.to_string(),
            why: why.to_string(),
        };
        let (name, reference) = match s.split_once('@') {
            Some((n, d)) => {
                d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?;
                (n, d.to_string())
            }
            None => {
                // A tag follows the last ':' after the last '/'.
                let slash = s.rfind('/').map_or(0, |i| i + 1);
                match s[slash..].rfind(':') {
                    Some(i) => (&s[..slash + i], s[slash + i + 1..].to_string()),
                    None => (s, "latest".to_string()),
                }
            }
        };
        let (registry, repo) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
            _ => registry,
        };
        let repository = if registry == "docker.io" && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        if !valid_registry_host(&registry) {
            return Err(bad("invalid registry host"));
        }
        if !valid_repository(&repository) {
            return Err(bad("invalid repository name"));
        }
        if !reference.contains(':') && !valid_tag(&reference) {
            return Err(bad("invalid tag"));
        }
        Ok(ImageRef {
            registry,
            repository,
            reference,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> (String, String, String) {
        let x: ImageRef = s.parse().unwrap();
        (x.registry, x.repository, x.reference)
    }

    #[test]
    fn references_normalise_like_docker() {
        let o = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(r("alpine"), o("docker.io", "library/alpine", "latest"));
        assert_eq!(r("alpine:3.19"), o("docker.io", "library/alpine", "3.19"));
        assert_eq!(r("org/app:1"), o("docker.io", "org/app", "1"));
        assert_eq!(
            r("index.docker.io/library/busybox"),
            o("docker.io", "library/busybox", "latest")
        );
        assert_eq!(r("quay.io/org/app:v2"), o("quay.io", "org/app", "v2"));
        assert_eq!(
            r("localhost:5000/app"),
            o("localhost:5000", "app", "latest")
        );
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(r(&format!("ghcr.io/x/y@{d}")), o("ghcr.io", "x/y", d));
        for bad in [
            "",
            "UPPER/case",
            "ghcr.io/x@sha256:zz",
            "a:b:c:",
            "quay.io/../x",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }
}
