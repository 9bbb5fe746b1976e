//! When the cache cannot hold a blob (disk full, below the free-space
//! watermark, a write error), each reader continues straight from upstream
//! with `Range` from where it is. A whole-blob read is still verified before
//! its last chunk is sent, re-hashing the prefix it already sent from the
//! partial file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::oci::{Digest, Hasher};
use crate::upstream::Upstreams;

/// Where a reader stands in the blob when it switches to upstream.
pub struct Position {
    /// The next byte to send.
    pub pos: u64,
    /// Where the reader's range began.
    pub start: u64,
    /// Where it ends (exclusive); `None`: the blob's end.
    pub end: Option<u64>,
    /// The blob's size, if known.
    pub total: Option<u64>,
}

pub async fn stream(
    ups: &Upstreams,
    repo: &str,
    digest: Digest,
    at: Position,
    file: Option<Arc<File>>,
    out: mpsc::Sender<io::Result<Bytes>>,
) {
    let fail = |msg: String| io::Error::other(msg);
    let Position {
        mut pos,
        start,
        end,
        total,
    } = at;
    let whole = start == 0 && (end.is_none() || end == total);
    let mut hasher = None;
    if whole {
        let prefix = match (pos, file) {
            (0, _) => Ok(Hasher::new()),
            (n, Some(f)) => tokio::task::spawn_blocking(move || hash_prefix(&f, n))
                .await
                .unwrap_or_else(|e| Err(io::Error::other(e))),
            (_, None) => Err(fail("no partial file to verify the prefix".into())),
        };
        match prefix {
            Ok(h) => hasher = Some(h),
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        }
    }
    let mut br = match ups.get_blob(repo, &digest, pos, 0).await {
        Ok(b) => b,
        Err(e) => {
            let _ = out.send(Err(fail(e.to_string()))).await;
            return;
        }
    };
    let stall = br.upstream.timeouts.stall;
    let stop = end.or(total).or(br.total);
    let mut held: Option<Bytes> = None;
    loop {
        let mut chunk = match tokio::time::timeout(stall, br.resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                let why = crate::upstream::error_chain(&e.without_url());
                let _ = out
                    .send(Err(fail(format!("upstream body broke: {why}"))))
                    .await;
                return;
            }
            Err(_) => {
                let _ = out.send(Err(fail("upstream body stalled".into()))).await;
                return;
            }
        };
        if br.skip > 0 {
            let n = (br.skip as usize).min(chunk.len());
            br.skip -= n as u64;
            chunk = chunk.slice(n..);
        }
        if let Some(s) = stop {
            let room = s.saturating_sub(pos) as usize;
            if chunk.len() > room {
                if whole {
                    let _ = out
                        .send(Err(fail(
                            "upstream sent more bytes than the blob has".into(),
                        )))
                        .await;
                    return;
                }
                chunk.truncate(room);
            }
        }
        if chunk.is_empty() {
            if stop.is_some_and(|s| pos >= s) {
                break;
            }
            continue;
        }
        if let Some(h) = &mut hasher {
            h.update(&chunk);
        }
        pos += chunk.len() as u64;
        if let Some(prev) = held.replace(chunk) {
            if out.send(Ok(prev)).await.is_err() {
                return;
            }
        }
        if !whole && stop.is_some_and(|s| pos >= s) {
            break;
        }
    }
    if let Some(h) = hasher {
        let actual = h.finish();
        if actual != digest || total.is_some_and(|t| pos != t) {
            let _ = out
                .send(Err(fail(format!(
                    "pass-through body failed verification: got {actual}"
                ))))
                .await;
            return;
        }
    } else if stop.is_some_and(|s| pos < s) {
        let _ = out
            .send(Err(fail("upstream body ended early".into())))
            .await;
        return;
    }
    if let Some(last) = held {
        let _ = out.send(Ok(last)).await;
    }
}

fn hash_prefix(file: &File, len: u64) -> io::Result<Hasher> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    while pos < len {
        let want = ((len - pos) as usize).min(buf.len());
        let n = file.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Err(io::Error::other("partial file shorter than what was sent"));
        }
        h.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(h)
}
