//! When the cache cannot hold a blob (disk full, below the free-space
//! watermark, a write error), each reader continues straight from upstream.
//!
//! The contract is the one of a fill: nothing a client receives is final
//! before the whole blob is verified. A reader hashes the blob from its first
//! byte (the part the abandoned fill already wrote comes from its file, the
//! rest from upstream), sends the bytes of its range as they come, and holds
//! back its last chunk until the digest matches. A range inside the blob
//! therefore downloads the whole blob: the price of a verified answer while
//! the disk is out of service.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::oci::{Digest, Hasher};
use crate::upstream::{error_chain, Upstreams};

/// Where a reader stands when it switches to upstream.
pub struct Position {
    /// The next byte to send.
    pub pos: u64,
    /// Where its range ends (exclusive); `None`: the blob's end.
    pub end: Option<u64>,
    /// The blob's size, if known.
    pub total: Option<u64>,
    /// Bytes of the blob the partial file holds, from its start.
    pub in_file: u64,
}

type Out = mpsc::Sender<io::Result<Bytes>>;

/// Sends `item` unless the client takes nothing for `stall`: a client that
/// stops reading must not hold an upstream connection open forever.
async fn send(out: &Out, item: io::Result<Bytes>, stall: Duration) -> bool {
    matches!(
        tokio::time::timeout(stall, out.send(item)).await,
        Ok(Ok(()))
    )
}

pub async fn stream(
    ups: &Upstreams,
    repo: &str,
    digest: Digest,
    at: Position,
    file: Option<Arc<File>>,
    out: Out,
) {
    let fail = |msg: String| Err(io::Error::other(msg));
    let Position {
        mut pos,
        end,
        total,
        in_file,
    } = at;
    // The hash starts with what the partial file holds up to where this
    // reader is (it sent those bytes from there); upstream gives the rest.
    let from = in_file.min(pos);
    let hasher = match (from, file) {
        (0, _) => Ok(Hasher::new()),
        (n, Some(f)) => tokio::task::spawn_blocking(move || hash_prefix(&f, n))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e))),
        (_, None) => Err(io::Error::other("no partial file to verify the prefix")),
    };
    let mut hasher = match hasher {
        Ok(h) => h,
        Err(e) => {
            let _ = out.send(Err(e)).await;
            return;
        }
    };
    let mut br = match ups.get_blob(repo, &digest, from, 0).await {
        Ok(b) => b,
        Err(e) => {
            let _ = out.send(fail(e.to_string())).await;
            return;
        }
    };
    let stall = br.upstream.timeouts.stall;
    let total = total.or(br.total);
    let want_end = end.or(total).unwrap_or(u64::MAX);
    let mut next = from; // the blob offset of the next upstream byte
    let mut held: Option<Bytes> = None;
    loop {
        let mut chunk = match tokio::time::timeout(stall, br.resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                let why = error_chain(&e.without_url());
                let _ = out.send(fail(format!("upstream body broke: {why}"))).await;
                return;
            }
            Err(_) => {
                let _ = out.send(fail("upstream body stalled".into())).await;
                return;
            }
        };
        if br.skip > 0 {
            let n = (br.skip as usize).min(chunk.len());
            br.skip -= n as u64;
            chunk = chunk.slice(n..);
        }
        let len = chunk.len() as u64;
        if total.is_some_and(|t| next + len > t) {
            let _ = out
                .send(fail("upstream sent more bytes than the blob has".into()))
                .await;
            return;
        }
        hasher.update(&chunk);
        // The part of this chunk the client asked for.
        let (lo, hi) = (pos.max(next), (next + len).min(want_end));
        if lo < hi {
            let part = chunk.slice((lo - next) as usize..(hi - next) as usize);
            pos = hi;
            if let Some(prev) = held.replace(part) {
                if !send(&out, Ok(prev), stall).await {
                    return;
                }
            }
        }
        next += len;
    }
    let actual = hasher.finish();
    if actual != digest || total.is_some_and(|t| next != t) {
        let _ = out
            .send(fail(format!(
                "pass-through body failed verification: got {actual} after {next} bytes"
            )))
            .await;
        return;
    }
    if end.is_some_and(|e| pos < e) {
        let _ = out.send(fail("upstream body ended early".into())).await;
        return;
    }
    if let Some(last) = held {
        send(&out, Ok(last), stall).await;
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
