//! The error codes of the distribution spec's JSON error bodies
//! (`{"errors":[{"code","message","detail"}]}`), plus the few tender adds.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    ManifestUnknown,
    NameUnknown,
    NameInvalid,
    TagInvalid,
    DigestInvalid,
    Unsupported,
    Denied,
    Unauthorized,
    /// Not in the spec: every upstream failed (tender's own; clients fall back on the 5xx).
    Unavailable,
    /// Not in the spec: a malformed `Range` header.
    RangeInvalid,
    /// Not in the spec: a path that is no API route.
    NotFound,
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
