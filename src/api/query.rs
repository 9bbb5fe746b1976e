//! The request's query string: `ns` (which registry) and the `tags/list`
//! pagination parameters. Unknown parameters are ignored.

use crate::oci::name::valid_tag;

/// The first value of query parameter `key`, decoded as a form value
/// (`+` is a space, `%XX` a byte). A value that is not validly encoded (a `%`
/// not followed by two hex digits, or bytes that are not UTF-8) is
/// `Some(Err)`, so the caller can refuse it rather than guess.
/// A query value that is not validly encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadEncoding;

pub fn param(query: Option<&str>, key: &str) -> Option<Result<String, BadEncoding>> {
    let raw = query?
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(k, _)| *k == key)?
        .1;
    // percent_decode passes a malformed escape through as text ("%zz", and
    // "%+1", which from_str_radix would even accept as a sign): refuse those.
    let b = raw.as_bytes();
    let escapes_ok = b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || b.get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_ok {
        return Some(Err(BadEncoding));
    }
    let spaced = raw.replace('+', " ");
    Some(
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| BadEncoding),
    )
}

/// The `tags/list` pagination parameters to forward upstream: `n` and
/// `last`, only when well-formed.
pub fn tags_pagination(query: Option<&str>) -> String {
    let mut out = Vec::new();
    if let Some(Ok(n)) = param(query, "n") {
        if !n.is_empty() && n.len() <= 6 && n.bytes().all(|b| b.is_ascii_digit()) {
            out.push(format!("n={n}"));
        }
    }
    if let Some(Ok(last)) = param(query, "last") {
        if valid_tag(&last) {
            out.push(format!("last={last}"));
        }
    }
    out.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        let ok = |q: &str| param(Some(q), "ns").map(|r| r.ok());
        assert_eq!(ok("ns=docker.io"), Some(Some("docker.io".into())));
        assert_eq!(
            ok("foo=1&ns=localhost%3A5000"),
            Some(Some("localhost:5000".into()))
        );
        assert_eq!(ok("foo=1"), None);
        assert_eq!(param(None, "ns").map(|r| r.ok()), None);
        assert_eq!(ok("ns=%zz"), Some(None));
        // Found by the fuzzer: a sign is not a hex digit.
        assert_eq!(ok("ns=%+1"), Some(None));
        assert_eq!(ok("ns=docker%+2eio"), Some(None));
        assert_eq!(ok("ns=%ff"), Some(None), "not UTF-8");
        assert_eq!(ok("ns=a+b%2B"), Some(Some("a b+".into())));
    }

    #[test]
    fn tags_query_forwards_only_valid_pagination() {
        assert_eq!(tags_pagination(Some("n=10&last=v1&evil=1")), "n=10&last=v1");
        assert_eq!(tags_pagination(Some("n=abc&last=../x")), "");
        assert_eq!(tags_pagination(None), "");
    }
}
