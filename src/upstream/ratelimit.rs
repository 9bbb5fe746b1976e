//! Docker Hub's pull quota, as its responses state it:
//! `ratelimit-limit: 100;w=21600` and `ratelimit-remaining: 76;w=21600`
//! (requests per window of `w` seconds; the IETF RateLimit header draft's
//! form). tender exports the last values an upstream sent as gauges, so an
//! operator sees how close a node is to being cut off before it is.

/// A quota header's value: the count, and the window in seconds if given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub count: u64,
    pub window_secs: Option<u64>,
}

/// Parses `N`, `N;w=S`, or a list whose first item is that (`N;w=S, M;w=T`:
/// the first policy is the one that applies). Anything else is `None`.
pub fn parse(value: &str) -> Option<Quota> {
    let first = value.split(',').next()?.trim();
    let mut parts = first.split(';');
    let count = parts.next()?.trim().parse().ok()?;
    let mut window_secs = None;
    for p in parts {
        let (k, v) = p.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("w") {
            window_secs = Some(v.trim().trim_matches('"').parse().ok()?);
        }
    }
    Some(Quota { count, window_secs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_forms() {
        assert_eq!(
            parse("100;w=21600"),
            Some(Quota {
                count: 100,
                window_secs: Some(21600)
            })
        );
        assert_eq!(
            parse(" 76 ; w=21600 "),
            Some(Quota {
                count: 76,
                window_secs: Some(21600)
            })
        );
        assert_eq!(
            parse("200"),
            Some(Quota {
                count: 200,
                window_secs: None
            })
        );
        assert_eq!(parse("100;w=21600, 10;w=60").map(|q| q.count), Some(100));
        assert_eq!(
            parse("5;comment=\"x\";w=60").map(|q| q.window_secs),
            Some(Some(60))
        );
    }

    #[test]
    fn garbage_is_none() {
        for v in ["", "abc", "-1", "1;w=abc", "1;w", "18446744073709551616"] {
            assert_eq!(parse(v), None, "{v:?}");
        }
    }
}
