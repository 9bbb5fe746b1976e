//! Content digests: parsed and validated once at the edge, then carried as a
//! 32-byte value so that the cache index stays small and comparisons are cheap.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// A sha256 content digest. sha256 is the only algorithm tender stores; other
/// well-formed algorithms are reported as unsupported rather than malformed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest must have the form <algorithm>:<hex>")]
    Malformed,
    #[error("unsupported digest algorithm {0:?}: only sha256 is supported")]
    UnsupportedAlgorithm(String),
    #[error("a sha256 digest needs exactly 64 lowercase hex characters")]
    BadEncoding,
}

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(sha2::Sha256::digest(bytes).into())
    }

    /// Parses the bare 64-character lowercase hex form used in store file names.
    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return Err(DigestError::BadEncoding);
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(Digest(out))
    }

    pub fn hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

fn nibble(c: u8) -> Result<u8, DigestError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(DigestError::BadEncoding),
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    /// Follows the OCI grammar: `algorithm ":" encoded`, where the algorithm is
    /// components of `[a-z0-9]+` joined by `[+._-]`.
    fn from_str(s: &str) -> Result<Digest, DigestError> {
        let (alg, enc) = s.split_once(':').ok_or(DigestError::Malformed)?;
        let alg_ok = !alg.is_empty()
            && alg.split(['+', '.', '_', '-']).all(|c| {
                !c.is_empty()
                    && c.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            });
        let enc_ok = !enc.is_empty()
            && enc
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b'_' || b == b'-');
        if !alg_ok || !enc_ok {
            return Err(DigestError::Malformed);
        }
        if alg != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(alg.to_string()));
        }
        Digest::from_hex(enc)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Incremental sha256 over a stream of chunks.
#[derive(Default, Clone)]
pub struct Hasher(sha2::Sha256);

impl Hasher {
    pub fn new() -> Hasher {
        Hasher::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_round_trip() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::of(b""));
    }

    #[test]
    fn rejects_malformed_digests() {
        for bad in [
            "sha256:baddigeststring",
            "sha256:",
            ":abc",
            "sha256",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85/",
            "sha256:../../../../etc/passwd",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn other_algorithms_are_unsupported_not_malformed() {
        let e = "sha512:abcd".parse::<Digest>().unwrap_err();
        assert_eq!(e, DigestError::UnsupportedAlgorithm("sha512".into()));
    }

    #[test]
    fn incremental_hash_matches_one_shot() {
        let mut h = Hasher::new();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), Digest::of(b"hello world"));
    }
}
