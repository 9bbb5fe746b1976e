//! Walking a registry's upstreams in order until one answers, with hedged
//! requests (see `hedge`): when the upstream being waited on is slower than
//! it usually is, the next one is asked too, and the first good answer
//! wins. The verdict when none succeeds comes from [`Walk`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use super::{hedge, AttemptError, Role, UpstreamClient, UpstreamError, Upstreams};

/// What a walk saw, summarised into its verdict when no upstream succeeded.
/// Only the registry's own upstreams count toward it: a peer that is down
/// must not turn an upstream's "not found" into "unavailable".
#[derive(Default)]
pub(super) struct Walk {
    not_found: usize,
    denied: usize,
    integrity: usize,
    tried: usize,
    failures: Vec<String>,
}

impl Walk {
    pub(super) fn record(&mut self, up: &UpstreamClient, e: &AttemptError) {
        if up.role != Role::Upstream {
            tracing::info!(registry = %up.registry, peer = %up.url, error = %e, "peer failed; trying the next");
            self.failures.push(format!("peer {}: {e}", up.url));
            return;
        }
        self.tried += 1;
        if e.is_not_found() {
            self.not_found += 1;
            // A 404 is an ordinary answer; anything else is worth an operator's eye.
            tracing::debug!(registry = %up.registry, upstream = %up.url, error = %e, "upstream does not have it");
        } else {
            if e.is_denied() {
                self.denied += 1;
            } else if matches!(e, AttemptError::DigestMismatch { .. }) {
                self.integrity += 1;
            }
            tracing::info!(registry = %up.registry, upstream = %up.url, error = %e, "upstream failed; trying the next");
        }
        self.failures.push(format!("{}: {e}", up.url));
    }

    /// An upstream skipped because its breaker is open or it asked us to back off.
    pub(super) fn skip(&mut self, up: &UpstreamClient) {
        if up.role != Role::Upstream {
            return; // a peer known to be down costs nothing, not even a word
        }
        self.tried += 1;
        self.failures.push(format!(
            "{}: skipped (circuit open or rate-limited)",
            up.url
        ));
    }

    pub(super) fn finish(self) -> UpstreamError {
        let summary = self.failures.join("; ");
        if self.tried == 0 && summary.is_empty() {
            UpstreamError::Unavailable("no upstream configured".into())
        } else if self.tried == 0 {
            UpstreamError::Unavailable(summary)
        } else if self.not_found == self.tried {
            UpstreamError::NotFound
        } else if self.denied == self.tried {
            UpstreamError::Denied(summary)
        } else if self.integrity > 0 && self.integrity + self.not_found == self.tried {
            UpstreamError::Integrity(summary)
        } else {
            UpstreamError::Unavailable(summary)
        }
    }
}

/// One request under way on one upstream.
struct Attempt<Fut> {
    up: Arc<UpstreamClient>,
    started: Instant,
    /// Whether a hedge was already started because of this attempt.
    hedged: bool,
    fut: Pin<Box<Fut>>,
}

/// Waits for the attempt in `slot`, or forever if there is none.
async fn finish<T, Fut>(slot: &mut Option<Attempt<Fut>>) -> Result<T, AttemptError>
where
    Fut: Future<Output = Result<T, AttemptError>>,
{
    match slot {
        Some(a) => a.fut.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

impl Upstreams {
    /// Tries `op` on each upstream from `first` on (wrapping around), skipping
    /// those whose breaker is open or that asked us to back off, until one
    /// succeeds; otherwise the walk's verdict. An attempt on one of the
    /// registry's own upstreams that takes longer than its hedge delay is
    /// raced by the same request on the next usable one (budget allowing);
    /// the loser is dropped, and an upstream that loses counts a failure.
    pub(super) async fn walk<T, F, Fut>(&self, first: usize, mut op: F) -> Result<T, UpstreamError>
    where
        F: FnMut(usize, Arc<UpstreamClient>) -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        let mut walk = Walk::default();
        let n = self.clients.len();
        let order: Vec<usize> = (0..n).map(|k| (first + k) % n.max(1)).collect();
        let mut pos = 0;
        self.hedges.note_request();
        let mut start = |pos: &mut usize, walk: &mut Walk, hedge: bool| -> Option<Attempt<Fut>> {
            while let Some(&i) = order.get(*pos) {
                let up = &self.clients[i];
                if hedge && up.role != Role::Upstream {
                    return None; // hedges go to the registry's own upstreams only
                }
                *pos += 1;
                if !up.health.allow() {
                    walk.skip(up);
                    continue;
                }
                return Some(Attempt {
                    up: up.clone(),
                    started: Instant::now(),
                    hedged: false,
                    fut: Box::pin(op(i, up.clone())),
                });
            }
            None
        };
        let mut a: Option<Attempt<Fut>> = None;
        let mut b: Option<Attempt<Fut>> = None;
        loop {
            if a.is_none() && b.is_none() {
                match start(&mut pos, &mut walk, false) {
                    Some(x) => a = Some(x),
                    None => return Err(walk.finish()),
                }
            }
            // A lone attempt on an own upstream may be hedged once, if an own
            // upstream is left to ask.
            let next_usable = order[pos.min(order.len())..].iter().any(|&i| {
                let up = &self.clients[i];
                up.role == Role::Upstream && up.health.looks_usable()
            });
            let hedge_at = match (&a, &b) {
                (Some(x), None) | (None, Some(x))
                    if x.up.role == Role::Upstream && !x.hedged && next_usable =>
                {
                    Some(x.started + hedge::delay(&x.up.health))
                }
                _ => None,
            };
            let (done, res) = tokio::select! {
                r = finish(&mut a) => (0, r),
                r = finish(&mut b) => (1, r),
                _ = sleep_until_opt(hedge_at) => {
                    let slow = a.as_mut().or(b.as_mut()).expect("a lone attempt");
                    slow.hedged = true;
                    if !self.hedges.try_take() {
                        continue;
                    }
                    let Some(h) = start(&mut pos, &mut walk, true) else {
                        continue;
                    };
                    tracing::info!(registry = %self.host, slow = %slow.up.url, next = %h.up.url,
                        waited = ?slow.started.elapsed(), "upstream slower than usual; hedging");
                    self.metrics.upstream_hedges.with_label_values(&[&self.host, "started"]).inc();
                    if a.is_none() { a = Some(h) } else { b = Some(h) }
                    continue;
                }
            };
            let (this, other) = if done == 0 {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            let Some(att) = this.take() else { continue };
            match res {
                Ok(v) => {
                    att.up.health.record_latency(att.started.elapsed());
                    if let Some(loser) = other.take() {
                        // Dropping it cancels the request; losing to a hedge
                        // counts toward its breaker like a failure.
                        if loser.started < att.started {
                            self.metrics
                                .upstream_hedges
                                .with_label_values(&[&self.host, "won"])
                                .inc();
                        }
                        loser.up.health.failure();
                    }
                    return Ok(v);
                }
                Err(e) => walk.record(&att.up, &e),
            }
        }
    }
}
