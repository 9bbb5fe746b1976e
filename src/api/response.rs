//! Building responses: the headers the wire contract promises for blobs and
//! manifests, which bytes a ranged response carries, and `Accept`.

use bytes::Bytes;
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, IF_NONE_MATCH,
};
use hyper::{Response, StatusCode};

use super::body::ResponseBody;
use super::range::{RangeError, RangeSpec};
use crate::cache::Manifest;
use crate::oci::Digest;

const API_VERSION: &str = "docker-distribution-api-version";

/// Which bytes of a blob a response carries.
pub struct BlobPlan {
    digest: Digest,
    size: u64,
    pub start: u64,
    /// Exclusive.
    pub end: u64,
    partial: bool,
}

impl BlobPlan {
    pub fn new(
        digest: Digest,
        size: u64,
        range: Option<RangeSpec>,
    ) -> Result<BlobPlan, RangeError> {
        Ok(match range {
            None => BlobPlan {
                digest,
                size,
                start: 0,
                end: size,
                partial: false,
            },
            Some(spec) => {
                let r = spec.resolve(size)?;
                BlobPlan {
                    digest,
                    size,
                    start: r.start,
                    end: r.end + 1,
                    partial: true,
                }
            }
        })
    }

    /// 200 or 206 with `Content-Length` (and `Content-Range`) for the plan.
    pub fn response(&self, body: ResponseBody) -> Response<ResponseBody> {
        let mut resp = blob_response(body, &self.digest);
        let h = resp.headers_mut();
        h.insert(CONTENT_LENGTH, HeaderValue::from(self.end - self.start));
        if self.partial {
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            let cr = format!("bytes {}-{}/{}", self.start, self.end - 1, self.size);
            resp.headers_mut().insert(CONTENT_RANGE, header_value(&cr));
        }
        resp
    }
}

/// A blob response's headers, without a length (the plan adds it when known).
pub fn blob_response(body: ResponseBody, d: &Digest) -> Response<ResponseBody> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert("docker-content-digest", header_value(&d.to_string()));
    h.insert(ETAG, header_value(&format!("\"{d}\"")));
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=31536000"));
    h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    resp
}

/// A manifest response: exact bytes (none for HEAD, or for a matching
/// `If-None-Match`: 304), its media type, digest and length.
pub fn manifest_response(
    m: &Manifest,
    headers: &HeaderMap,
    head: bool,
    body: impl FnOnce(Bytes) -> ResponseBody,
) -> Response<ResponseBody> {
    let etag = format!("\"{}\"", m.digest);
    let not_modified = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if head || not_modified {
        Response::new(ResponseBody::empty())
    } else {
        Response::new(body(m.bytes.clone()))
    };
    if not_modified {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, header_value(&m.media_type));
    h.insert("docker-content-digest", header_value(&m.digest.to_string()));
    h.insert(ETAG, header_value(&etag));
    h.insert(CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
    h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    resp
}

pub fn json_response(body: Bytes, head: bool) -> Response<ResponseBody> {
    let len = body.len();
    let mut resp = Response::new(if head {
        ResponseBody::empty()
    } else {
        ResponseBody::full(body)
    });
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
    resp
}

pub fn text_response(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(text));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

pub fn header_value(s: &str) -> HeaderValue {
    // Every caller passes validated ASCII (digests, media types from upstream
    // headers or manifests); fall back rather than panic if one is not.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Whether the request's `Accept` allows `media_type`. No `Accept` (or
/// `*/*`) allows anything.
pub fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut saw_any = false;
    for v in headers.get_all(ACCEPT) {
        let Ok(v) = v.to_str() else { continue };
        for part in v.split(',') {
            let t = part.split(';').next().unwrap_or("").trim();
            if t.is_empty() {
                continue;
            }
            saw_any = true;
            if t == "*/*" || t == "application/*" || t.eq_ignore_ascii_case(media_type) {
                return true;
            }
        }
    }
    !saw_any
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media;

    #[test]
    fn accept_header_rules() {
        let mut h = HeaderMap::new();
        assert!(accepts(&h, media::OCI_INDEX));
        h.insert(ACCEPT, HeaderValue::from_static(media::OCI_MANIFEST));
        assert!(!accepts(&h, media::OCI_INDEX));
        assert!(accepts(&h, media::OCI_MANIFEST));
        h.append(ACCEPT, HeaderValue::from_static("*/*;q=0.1"));
        assert!(accepts(&h, media::OCI_INDEX));
    }
}
