//! HTTP `Range` header handling for blobs (RFC 9110 §14): one byte range.

/// A resolved, satisfiable byte range: `start..=end` within a blob of `total` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn content_range(&self, total: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, total)
    }
}

/// The parsed form of a `Range` header, before the blob size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=a-b` or `bytes=a-`.
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("malformed Range header {0:?}: expected bytes=<start>-[<end>] or bytes=-<suffix>")]
    Malformed(String),
    #[error("range not satisfiable for a blob of {total} bytes")]
    Unsatisfiable { total: u64 },
}

/// Parses a `Range` header value. `Ok(None)` means the header should be ignored
/// (a unit other than bytes, or several ranges, which a server may serve whole).
pub fn parse(value: &str) -> Result<Option<RangeSpec>, RangeError> {
    let malformed = || RangeError::Malformed(value.chars().take(100).collect());
    let v = value.trim();
    let Some((unit, set)) = v.split_once('=') else {
        return Err(malformed());
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ok(None);
    }
    if set.contains(',') {
        return Ok(None);
    }
    let (a, b) = set.trim().split_once('-').ok_or_else(malformed)?;
    let num = |s: &str| -> Result<u64, RangeError> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(malformed());
        }
        s.parse().map_err(|_| malformed())
    };
    if a.is_empty() {
        let n = num(b)?;
        return Ok(Some(RangeSpec::Suffix(n)));
    }
    let start = num(a)?;
    let end = if b.is_empty() { None } else { Some(num(b)?) };
    if let Some(e) = end {
        if e < start {
            return Err(malformed());
        }
    }
    Ok(Some(RangeSpec::From { start, end }))
}

impl RangeSpec {
    /// Resolves against the blob size; the end is clamped to the last byte.
    pub fn resolve(self, total: u64) -> Result<ByteRange, RangeError> {
        let unsat = RangeError::Unsatisfiable { total };
        match self {
            RangeSpec::From { start, end } => {
                // `parse` never yields end < start, but the fields are public.
                if start >= total || end.is_some_and(|e| e < start) {
                    return Err(unsat);
                }
                let end = end.map_or(total - 1, |e| e.min(total - 1));
                Ok(ByteRange { start, end })
            }
            RangeSpec::Suffix(n) => {
                if n == 0 || total == 0 {
                    return Err(unsat);
                }
                let n = n.min(total);
                Ok(ByteRange {
                    start: total - n,
                    end: total - 1,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &str, total: u64) -> Result<Option<ByteRange>, RangeError> {
        parse(v).and_then(|s| s.map(|s| s.resolve(total)).transpose())
    }

    #[test]
    fn resolves_the_three_forms() {
        assert_eq!(
            r("bytes=0-9", 100).unwrap(),
            Some(ByteRange { start: 0, end: 9 })
        );
        assert_eq!(
            r("bytes=90-", 100).unwrap(),
            Some(ByteRange { start: 90, end: 99 })
        );
        assert_eq!(
            r("bytes=-10", 100).unwrap(),
            Some(ByteRange { start: 90, end: 99 })
        );
        assert_eq!(
            r("bytes=-1000", 100).unwrap(),
            Some(ByteRange { start: 0, end: 99 })
        );
        assert_eq!(
            r("bytes=50-1000", 100).unwrap(),
            Some(ByteRange { start: 50, end: 99 })
        );
    }

    #[test]
    fn unsatisfiable_and_malformed() {
        assert_eq!(
            r("bytes=100-", 100),
            Err(RangeError::Unsatisfiable { total: 100 })
        );
        assert_eq!(
            r("bytes=-0", 100),
            Err(RangeError::Unsatisfiable { total: 100 })
        );
        assert_eq!(
            r("bytes=0-", 0),
            Err(RangeError::Unsatisfiable { total: 0 })
        );
        for bad in [
            "bytes=abc",
            "bytes=5-1",
            "bytes=-",
            "bytes=1-2-3",
            "bytes",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
        ] {
            assert!(matches!(parse(bad), Err(RangeError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn ignores_other_units_and_multiple_ranges() {
        assert_eq!(parse("items=0-1").unwrap(), None);
        assert_eq!(parse("bytes=0-1,5-6").unwrap(), None);
    }
}
