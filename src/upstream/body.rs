//! Reading upstream responses: whole small bodies with a size limit, blob
//! bodies positioned at a requested offset, and error texts without URLs.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::CONTENT_RANGE;

use super::AttemptError;

/// An error and its causes, e.g. "error sending request: connection refused".
/// Callers strip URLs first (`reqwest::Error::without_url`): a redirect
/// target may be a presigned URL whose signature must not reach logs or clients.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Reads a whole body of at most `limit` bytes, with the stall timeout
/// between chunks.
pub async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    stall: Duration,
) -> Result<Bytes, AttemptError> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(AttemptError::TooLarge { limit });
    }
    let mut buf = BytesMut::new();
    loop {
        let chunk = tokio::time::timeout(stall, resp.chunk())
            .await
            .map_err(|_| AttemptError::Timeout("body stalled"))?
            .map_err(|e| {
                AttemptError::Transport(format!("body: {}", error_chain(&e.without_url())))
            })?;
        match chunk {
            Some(c) => {
                if buf.len() + c.len() > limit {
                    return Err(AttemptError::TooLarge { limit });
                }
                buf.extend_from_slice(&c);
            }
            None => return Ok(buf.freeze()),
        }
    }
}

/// Checks a blob response against the requested offset: how many leading
/// bytes to drop (the upstream ignored `Range` and sent from 0) and the
/// blob's total size, when the upstream said.
pub fn position_blob(
    resp: &reqwest::Response,
    offset: u64,
) -> Result<(u64, Option<u64>), AttemptError> {
    let len = resp.content_length();
    match resp.status().as_u16() {
        200 => Ok((offset, len)),
        206 => {
            let cr = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| AttemptError::Invalid("206 without Content-Range".into()))?;
            let (start, total) = parse_content_range(cr)
                .ok_or_else(|| AttemptError::Invalid(format!("bad Content-Range {cr:?}")))?;
            if start != offset {
                return Err(AttemptError::Invalid(format!(
                    "asked for bytes from {offset}, got Content-Range {cr:?}"
                )));
            }
            Ok((0, total))
        }
        s => Err(AttemptError::Invalid(format!(
            "unexpected status {s} for a blob"
        ))),
    }
}

/// `bytes a-b/total` → (a, total); total is `None` for `*`.
pub fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, _b) = range.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((a.parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-99/100"),
            Some((10, Some(100)))
        );
        assert_eq!(parse_content_range("bytes 0-9/*"), Some((0, None)));
        assert_eq!(parse_content_range("items 0-9/10"), None);
    }
}
