//! The response body type, and the one log line per request written when
//! the body is finished (so it can report bytes actually sent).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use tokio::sync::mpsc;

pub enum Inner {
    Empty,
    Full(Option<Bytes>),
    /// Chunks produced by a task; an `Err` aborts the client's transfer.
    Stream(mpsc::Receiver<io::Result<Bytes>>),
}

pub struct ResponseBody {
    inner: Inner,
    sent: u64,
    counter: Option<IntCounter>,
    log: Option<RequestLog>,
}

impl ResponseBody {
    pub fn empty() -> ResponseBody {
        ResponseBody::new(Inner::Empty)
    }

    pub fn full(b: impl Into<Bytes>) -> ResponseBody {
        ResponseBody::new(Inner::Full(Some(b.into())))
    }

    pub fn stream(rx: mpsc::Receiver<io::Result<Bytes>>) -> ResponseBody {
        ResponseBody::new(Inner::Stream(rx))
    }

    fn new(inner: Inner) -> ResponseBody {
        ResponseBody {
            inner,
            sent: 0,
            counter: None,
            log: None,
        }
    }

    /// Counts body bytes into `counter` (tender_bytes_served_total{source}).
    pub fn counted(mut self, counter: IntCounter) -> ResponseBody {
        self.counter = Some(counter);
        self
    }

    pub fn with_log(mut self, log: RequestLog) -> ResponseBody {
        self.log = Some(log);
        self
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        let res = match &mut this.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream(rx) => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => Poll::Ready(Some(Ok(Frame::data(b)))),
                Poll::Ready(Some(Err(e))) => {
                    if let Some(l) = &mut this.log {
                        l.aborted = Some(e.to_string());
                    }
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        };
        if let Poll::Ready(Some(Ok(f))) = &res {
            if let Some(d) = f.data_ref() {
                this.sent += d.len() as u64;
                if let Some(c) = &this.counter {
                    c.inc_by(d.len() as u64);
                }
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(b) => b.is_none(),
            Inner::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Stream(_) => SizeHint::default(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(l) = self.log.take() {
            l.emit(self.sent);
        }
    }
}

/// The fields of the per-request log line.
pub struct RequestLog {
    pub method: String,
    pub path: String,
    pub registry: String,
    pub repository: String,
    pub kind: &'static str,
    pub result: &'static str,
    pub status: u16,
    pub started: Instant,
    pub aborted: Option<String>,
}

impl RequestLog {
    fn emit(self, bytes: u64) {
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        if let Some(why) = &self.aborted {
            tracing::warn!(method = %self.method, path = %self.path, registry = %self.registry,
                repository = %self.repository, kind = self.kind, result = self.result,
                status = self.status, bytes, duration_ms = ms, aborted = %why, "request aborted");
        } else {
            tracing::info!(method = %self.method, path = %self.path, registry = %self.registry,
                repository = %self.repository, kind = self.kind, result = self.result,
                status = self.status, bytes, duration_ms = ms, "request");
        }
    }
}
