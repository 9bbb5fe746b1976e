//! Fuzzes the `Range` header parser, `tender::api::range::parse`, and
//! `RangeSpec::resolve` against a set of blob sizes chosen around the parsed
//! numbers (0, 1, start, start+1, end, end+1, n, u64::MAX, ...).
//!
//! The input is the header value as text, so the corpus stays human-readable.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tender::api::range::{self, ByteRange, RangeError, RangeSpec};

fuzz_target!(|data: &[u8]| {
    // Any UTF-8 must be handled without panicking; lossy conversion also
    // feeds replacement characters through the trimming and splitting.
    match std::str::from_utf8(data) {
        Ok(s) => check(s),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn check(v: &str) {
    let parsed = range::parse(v);
    assert_eq!(parsed, range::parse(v), "deterministic: {v:?}");

    // A header in the canonical form `bytes=<a>-<b>` / `bytes=<a>-` / `bytes=-<n>`,
    // with numbers that fit in u64 and a <= b, must be accepted as exactly that.
    if let Some(set) = v.strip_prefix("bytes=") {
        if let Some((a, b)) = set.split_once('-') {
            let na = a.parse::<u64>().ok().filter(|_| is_digits(a));
            let nb = b.parse::<u64>().ok().filter(|_| is_digits(b));
            let want = match (a.is_empty(), na, b.is_empty(), nb) {
                (true, _, false, Some(n)) => Some(RangeSpec::Suffix(n)),
                (false, Some(s), true, _) => Some(RangeSpec::From {
                    start: s,
                    end: None,
                }),
                (false, Some(s), false, Some(e)) if s <= e => Some(RangeSpec::From {
                    start: s,
                    end: Some(e),
                }),
                _ => None,
            };
            if let Some(want) = want {
                assert_eq!(parsed, Ok(Some(want)), "{v:?}");
            }
        }
    }

    match parsed {
        Ok(None) => {
            // Ignored only for another unit or a multi-range set.
            let (unit, set) = v.trim().split_once('=').expect("Ok(None) needs a '='");
            assert!(
                !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(','),
                "{v:?} ignored"
            );
        }
        Err(RangeError::Malformed(shown)) => {
            assert!(shown.chars().count() <= 100, "{v:?}");
            assert!(v.starts_with(&shown), "{v:?}");
        }
        Err(RangeError::Unsatisfiable { .. }) => panic!("parse returned Unsatisfiable: {v:?}"),
        Ok(Some(spec)) => {
            if let RangeSpec::From {
                start,
                end: Some(end),
            } = spec
            {
                assert!(start <= end, "{v:?}: {spec:?}");
            }
            // Re-serialising gives the same spec back.
            let text = match spec {
                RangeSpec::From { start, end: None } => format!("bytes={start}-"),
                RangeSpec::From {
                    start,
                    end: Some(e),
                } => format!("bytes={start}-{e}"),
                RangeSpec::Suffix(n) => format!("bytes=-{n}"),
            };
            assert_eq!(range::parse(&text), Ok(Some(spec)), "{v:?} -> {text:?}");

            let mut totals = vec![0, 1, 2, 100, u64::MAX - 1, u64::MAX];
            let nums: Vec<u64> = match spec {
                RangeSpec::From { start, end } => {
                    let mut n = vec![start];
                    n.extend(end);
                    n
                }
                RangeSpec::Suffix(n) => vec![n],
            };
            for n in nums {
                totals.extend([n.saturating_sub(1), n, n.saturating_add(1)]);
            }
            for total in totals {
                check_resolve(v, spec, total);
            }
        }
    }
}

fn check_resolve(v: &str, spec: RangeSpec, total: u64) {
    match spec.resolve(total) {
        Ok(r) => {
            let ByteRange { start, end } = r;
            assert!(start <= end, "{v:?} total {total}: {r:?}");
            assert!(end < total, "{v:?} total {total}: {r:?}");
            assert!(
                r.len() >= 1 && r.len() <= total,
                "{v:?} total {total}: {r:?}"
            );
            assert!(!r.is_empty());
            assert_eq!(
                r.content_range(total),
                format!("bytes {start}-{end}/{total}")
            );
            match spec {
                RangeSpec::From { start: s, end: e } => {
                    assert_eq!(start, s, "{v:?} total {total}");
                    assert_eq!(end, e.unwrap_or(u64::MAX).min(total - 1), "{v:?} {total}");
                }
                RangeSpec::Suffix(n) => {
                    assert_eq!(end, total - 1, "{v:?} total {total}");
                    assert_eq!(r.len(), n.min(total), "{v:?} total {total}");
                }
            }
        }
        Err(RangeError::Unsatisfiable { total: t }) => {
            assert_eq!(t, total);
            let unsat = match spec {
                RangeSpec::From { start, .. } => start >= total,
                RangeSpec::Suffix(n) => n == 0 || total == 0,
            };
            assert!(unsat, "{v:?}: {spec:?} refused for a blob of {total}");
        }
        Err(e) => panic!("resolve returned {e:?} for {v:?}"),
    }
}
