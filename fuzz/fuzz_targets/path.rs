//! Fuzzes the request-target parser: `tender::api::path::parse` (routes,
//! repository names, tags), `tender::oci::Digest::from_str` (used by it for
//! digest references) and `tender::api::query::param` (percent-decoding
//! of `ns`, `n`, `last`).
//!
//! The input is read as a request target: `<path>[?<query>]`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tender::api::path::{self, PathError, Route};
use tender::api::query;
use tender::oci::name::{valid_repository, valid_tag, MAX_NAME_LEN};
use tender::oci::{Digest, DigestError, Reference};

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let (p, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };

    check_route(p);
    // Every path segment (and the whole input) goes through the digest parser too,
    // so it is exercised on inputs that are not shaped like a full route.
    check_digest(target);
    for seg in p.split('/') {
        check_digest(seg);
    }
    for key in ["ns", "n", "last"] {
        check_query(query, key);
    }
});

fn check_name(name: &str, p: &str) {
    assert!(valid_repository(name), "{p:?}: name {name:?}");
    assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN, "{p:?}");
    assert!(!name.contains(".."), "{p:?}: name {name:?} has ..");
    assert!(!name.contains('%'), "{p:?}: name {name:?} has %");
    assert!(!name.contains("//"), "{p:?}: name {name:?} has //");
    assert!(
        !name.starts_with('/') && !name.ends_with('/'),
        "{p:?}: name {name:?}"
    );
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)),
        "{p:?}: name {name:?} has a byte outside [a-z0-9._-/]"
    );
    // No component is a dot-segment or starts with a separator.
    for c in name.split('/') {
        assert!(c != "." && c != "..", "{p:?}");
        assert!(
            c.as_bytes()[0].is_ascii_alphanumeric(),
            "{p:?}: component {c:?}"
        );
    }
}

fn check_route(p: &str) {
    let parsed = path::parse(p);
    // Deterministic.
    assert_eq!(parsed, path::parse(p), "{p:?}");
    match parsed {
        Ok(Route::Base) => assert!(p == "/v2" || p == "/v2/", "{p:?}"),
        Ok(Route::Metrics) => assert_eq!(p, "/metrics"),
        Ok(Route::Healthz) => assert_eq!(p, "/healthz"),
        Ok(Route::Readyz) => assert_eq!(p, "/readyz"),
        Ok(Route::Cluster) => assert_eq!(p, "/cluster"),
        Ok(Route::Pinned) => assert_eq!(p, "/pinned"),
        Ok(Route::Referrers) => assert!(p.starts_with("/v2/") && p.contains("/referrers/"), "{p:?}"),
        Ok(Route::Unsupported { what }) => {
            assert!(p.starts_with("/v2/"), "{p:?}");
            assert!(
                matches!(what, "catalog" | "blob upload"),
                "{p:?}: {what}"
            );
        }
        Ok(Route::Manifest { name, reference }) => {
            check_name(&name, p);
            match &reference {
                Reference::Tag(t) => {
                    assert!(valid_tag(t), "{p:?}: tag {t:?}");
                    assert!(!t.contains(':') && !t.contains('/'), "{p:?}");
                }
                Reference::Digest(d) => check_digest_value(d),
            }
            assert_eq!(format!("/v2/{name}/manifests/{reference}"), p);
        }
        Ok(Route::Blob { name, digest }) => {
            check_name(&name, p);
            check_digest_value(&digest);
            assert_eq!(format!("/v2/{name}/blobs/{digest}"), p);
        }
        Ok(Route::TagsList { name }) => {
            check_name(&name, p);
            assert_eq!(format!("/v2/{name}/tags/list"), p);
        }
        Err(PathError::NotFound) => {}
        Err(PathError::NameInvalid(n)) => {
            assert!(!valid_repository(&n), "{p:?}: rejected a valid name");
            assert!(p.contains(&n), "{p:?}");
        }
        Err(PathError::TagInvalid(t)) => {
            assert!(!valid_tag(&t), "{p:?}: rejected a valid tag");
            assert!(p.ends_with(&format!("/{t}")), "{p:?}");
        }
        Err(PathError::DigestInvalid { given, source }) => {
            assert_eq!(given.parse::<Digest>(), Err(source), "{p:?}");
            assert!(p.ends_with(&format!("/{given}")), "{p:?}");
        }
    }
}

fn check_digest_value(d: &Digest) {
    let s = d.to_string();
    assert_eq!(s.len(), 7 + 64);
    assert_eq!(s.parse::<Digest>().as_ref(), Ok(d));
    assert_eq!(Digest::from_hex(&d.hex()).as_ref(), Ok(d));
}

fn is_lower_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_digest(s: &str) {
    match s.parse::<Digest>() {
        Ok(d) => {
            // Only the canonical form is accepted, so printing gives the input back.
            assert_eq!(d.to_string(), s, "{s:?}");
            check_digest_value(&d);
        }
        Err(DigestError::UnsupportedAlgorithm(alg)) => {
            assert_ne!(alg, "sha256", "{s:?}");
            assert!(s.starts_with(&format!("{alg}:")), "{s:?}");
        }
        Err(DigestError::BadEncoding) => {
            let enc = s
                .strip_prefix("sha256:")
                .expect("BadEncoding only for sha256");
            assert!(!is_lower_hex64(enc), "{s:?}");
        }
        Err(DigestError::Malformed) => {
            // Anything of the form sha256:<64 lowercase hex> must be accepted.
            if let Some(enc) = s.strip_prefix("sha256:") {
                assert!(!is_lower_hex64(enc), "{s:?}");
            }
        }
    }
    if let Some(enc) = s.strip_prefix("sha256:") {
        assert_eq!(is_lower_hex64(enc), s.parse::<Digest>().is_ok(), "{s:?}");
    }
}

/// An independent, strict reference decoder for `application/x-www-form-urlencoded`
/// values: `%` must be followed by exactly two hex digits, `+` is a space.
fn reference_decode(v: &str) -> Result<String, ()> {
    let b = v.as_bytes();
    let hex = |c: u8| -> Result<u8, ()> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(()),
        }
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = hex(*b.get(i + 1).ok_or(())?)?;
                let lo = hex(*b.get(i + 2).ok_or(())?)?;
                out.push(hi << 4 | lo);
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

fn check_query(query: Option<&str>, key: &str) {
    let got = query::param(query, key).map(|r| r.map_err(|_| ()));
    let Some(q) = query else {
        assert_eq!(got, None);
        return;
    };
    // The first pair whose key is `key`, as the doc comment promises.
    let first = q
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == key);
    match first {
        None => assert_eq!(got, None, "{q:?} {key}"),
        Some((_, raw)) => {
            let want = reference_decode(raw);
            assert_eq!(
                got,
                Some(want),
                "query {q:?}, key {key:?}, raw value {raw:?}"
            );
        }
    }
}
