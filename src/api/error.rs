//! API errors and the one place they become HTTP status codes and OCI JSON.

use hyper::header::{HeaderValue, CONTENT_RANGE, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::body::ResponseBody;
use super::path::PathError;
use super::range::RangeError;
use crate::upstream::FetchError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Path(#[from] PathError),
    #[error("registry {0:?} is not served by this mirror")]
    UnknownNamespace(String),
    #[error("no ns given and no default registry is configured")]
    NoDefaultRegistry,
    #[error("the ns query parameter is not a registry host")]
    BadNamespace,
    #[error("{0} is not supported by a pull-through cache")]
    Unsupported(&'static str),
    #[error("method not allowed: this mirror is read-only")]
    MethodNotAllowed,
    #[error("blob unknown")]
    BlobUnknown,
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("the manifest has media type {0}, which the request's Accept header does not allow")]
    NotAcceptable(String),
    #[error("{0}")]
    Range(#[from] RangeError),
    #[error("{0}")]
    Upstream(FetchError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        use ApiError::*;
        match self {
            Path(PathError::NotFound) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Path(PathError::NameInvalid(_)) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            Path(PathError::TagInvalid(_)) => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
            Path(PathError::DigestInvalid { .. }) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            UnknownNamespace(_) | NoDefaultRegistry => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            BadNamespace => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            Unsupported(_) | MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            BlobUnknown => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            ManifestUnknown | NotAcceptable(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            Range(RangeError::Malformed(_)) => (StatusCode::BAD_REQUEST, "RANGE_INVALID"),
            Range(RangeError::Unsatisfiable { .. }) => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID")
            }
            Upstream(FetchError::NotFound) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            Upstream(FetchError::Denied(_)) => (StatusCode::FORBIDDEN, "DENIED"),
            Upstream(FetchError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
            }
            Upstream(FetchError::Integrity(_)) => (StatusCode::BAD_GATEWAY, "UNKNOWN"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The error as an OCI error response.
    pub fn to_response(&self) -> Response<ResponseBody> {
        let (status, code) = self.parts();
        let detail = match self {
            ApiError::UnknownNamespace(ns) => serde_json::json!({ "ns": ns }),
            ApiError::Upstream(e) => serde_json::json!({ "upstream": e.to_string() }),
            _ => serde_json::Value::Null,
        };
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": self.to_string(), "detail": detail }]
        });
        let mut resp = Response::new(ResponseBody::full(body.to_string()));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            "docker-distribution-api-version",
            HeaderValue::from_static("registry/2.0"),
        );
        if let ApiError::Range(RangeError::Unsatisfiable { total }) = self {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                h.insert(CONTENT_RANGE, v);
            }
        }
        if matches!(self, ApiError::Unsupported(_) | ApiError::MethodNotAllowed) {
            h.insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        resp
    }
}

/// Maps a fetch failure for a specific kind of object.
pub fn fetch_error(e: FetchError, unknown: ApiError) -> ApiError {
    match e {
        FetchError::NotFound => unknown,
        other => ApiError::Upstream(other),
    }
}
