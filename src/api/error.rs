//! API errors, and the one place where any error becomes an HTTP status and
//! an OCI JSON error body.

use hyper::header::{HeaderValue, CONTENT_RANGE, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::body::ResponseBody;
use super::path::PathError;
use super::range::RangeError;
use crate::cache::CacheError;
use crate::oci::ErrorCode;
use crate::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Path(#[from] PathError),
    #[error("the ns query parameter is not a registry host")]
    BadNamespace,
    #[error("{0} is not supported by a pull-through cache")]
    Unsupported(&'static str),
    #[error("method not allowed: this mirror is read-only")]
    MethodNotAllowed,
    #[error("the referrers API is not offered by this mirror")]
    NoReferrers,
    #[error("the manifest has media type {0}, which the request's Accept header does not allow")]
    NotAcceptable(String),
    #[error("{0}")]
    Range(#[from] RangeError),
    #[error("{0}")]
    Cache(#[from] CacheError),
    /// On the peer listener, a request without the cluster's token.
    #[error(
        "this listener serves the nodes of a tender cluster only: the cluster token is required"
    )]
    PeerTokenRequired,
    /// On the peer listener: only the pull API and health are served there.
    #[error("not served on the peer listener")]
    NotForPeers,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, ErrorCode) {
        use ErrorCode as C;
        use StatusCode as S;
        match self {
            ApiError::Path(PathError::NotFound) => (S::NOT_FOUND, C::NotFound),
            ApiError::Path(PathError::NameInvalid(_)) => (S::BAD_REQUEST, C::NameInvalid),
            ApiError::Path(PathError::TagInvalid(_)) => (S::BAD_REQUEST, C::TagInvalid),
            ApiError::Path(PathError::DigestInvalid { .. }) => (S::BAD_REQUEST, C::DigestInvalid),
            ApiError::BadNamespace => (S::BAD_REQUEST, C::NameInvalid),
            ApiError::Unsupported(_) | ApiError::MethodNotAllowed => {
                (S::METHOD_NOT_ALLOWED, C::Unsupported)
            }
            ApiError::NotAcceptable(_) => (S::NOT_FOUND, C::ManifestUnknown),
            ApiError::NoReferrers | ApiError::NotForPeers => (S::NOT_FOUND, C::NotFound),
            ApiError::PeerTokenRequired => (S::UNAUTHORIZED, C::Unauthorized),
            ApiError::Range(RangeError::Malformed(_)) => (S::BAD_REQUEST, C::RangeInvalid),
            ApiError::Range(RangeError::Unsatisfiable { .. }) => {
                (S::RANGE_NOT_SATISFIABLE, C::RangeInvalid)
            }
            ApiError::Cache(e) => match e {
                CacheError::UnknownNamespace(_) | CacheError::NoDefaultRegistry => {
                    (S::NOT_FOUND, C::NameUnknown)
                }
                CacheError::BlobUnknown => (S::NOT_FOUND, C::BlobUnknown),
                CacheError::ManifestUnknown => (S::NOT_FOUND, C::ManifestUnknown),
                CacheError::Unauthorized => (S::UNAUTHORIZED, C::Unauthorized),
                CacheError::Upstream(UpstreamError::NotFound) => (S::NOT_FOUND, C::NameUnknown),
                CacheError::Upstream(UpstreamError::Denied(_)) => (S::FORBIDDEN, C::Denied),
                CacheError::Upstream(
                    UpstreamError::Unavailable(_) | UpstreamError::Setup { .. },
                ) => (S::SERVICE_UNAVAILABLE, C::Unavailable),
                CacheError::Upstream(UpstreamError::Integrity(_)) => (S::BAD_GATEWAY, C::Unknown),
                CacheError::Store(_) | CacheError::Internal(_) | CacheError::Cluster(_) => {
                    (S::INTERNAL_SERVER_ERROR, C::Unknown)
                }
            },
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The error as an OCI error response.
    pub fn to_response(&self) -> Response<ResponseBody> {
        let (status, code) = self.parts();
        let detail = match self {
            ApiError::Cache(CacheError::UnknownNamespace(ns)) => serde_json::json!({ "ns": ns }),
            _ => serde_json::Value::Null,
        };
        // An upstream failure's details (upstream URLs, redirect targets
        // that may be presigned) go to the log, not to the client.
        let message = match self {
            ApiError::Cache(CacheError::Upstream(e)) => e.client_message().to_string(),
            e => e.to_string(),
        };
        let body = serde_json::json!({
            "errors": [{ "code": code.as_str(), "message": message, "detail": detail }]
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
        if matches!(self, ApiError::Cache(CacheError::Unauthorized)) {
            // containerd and Docker send a host credentials only after it
            // challenges them: the pod's pull-secret credentials come next.
            h.insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tender\", charset=\"UTF-8\""),
            );
        }
        if matches!(self, ApiError::PeerTokenRequired) {
            h.insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tender-peers\", error=\"invalid_token\""),
            );
        }
        if matches!(self, ApiError::Unsupported(_) | ApiError::MethodNotAllowed) {
            h.insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        resp
    }
}
