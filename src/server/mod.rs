//! Listeners and the connection loop. Shutdown is a parameter; draining is
//! bounded by a grace period. Background work (index rebuild, access-time
//! flushes, scrub, scheduled prefetch) lives in `tasks`.

mod limits;
mod tasks;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::api::body::ResponseBody;
use crate::api::Api;
use crate::cache::{Cache, CacheError};
use crate::config::Config;
use crate::metrics::Metrics;
use limits::ConnLimits;

/// How long in-flight responses may take to finish after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Slowloris guard: a client must send its request headers within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {why}", file.display())]
    Tls { file: PathBuf, why: String },
    #[error("{0}")]
    Cache(#[from] CacheError),
}

/// A started daemon.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// The peer listener's address (the cluster tier).
    pub peer_addr: Option<SocketAddr>,
    pub api: Arc<Api>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Keeps the `[prefetch]` images warm and the pinned ones pinned.
    prefetcher: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight responses finish (bounded by the
    /// grace period), then returns.
    pub async fn shutdown(mut self) {
        self.prefetcher.abort();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the daemon stops on its own (it does not, unless shut down).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

/// Binds the listeners and starts serving; returns once listening. The
/// store index is rebuilt in the background: lookups go to disk directly,
/// so the cache serves from the first request.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    // Certificates first: a bad one fails before anything listens.
    let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
    let metrics_tls = config.metrics_tls.as_ref().map(tls::acceptor).transpose()?;
    let listener = bind("listen", config.listen).await?;
    let metrics_listener = match config.metrics_listen {
        Some(a) => Some(bind("metrics_listen", a).await?),
        None => None,
    };
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        what: "listen",
        addr: config.listen,
        source,
    })?;
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let peer_listener = match &config.cluster {
        Some(c) => Some(bind("cluster.listen", c.listen).await?),
        None => None,
    };
    let peer_addr = peer_listener.as_ref().and_then(|l| l.local_addr().ok());
    if !addr.ip().is_loopback() && tls.is_none() {
        tracing::warn!(%addr, "listening beyond loopback without TLS: any host that can reach this address can pull through this cache");
    }

    let metrics = Arc::new(Metrics::new());
    let tls_on = config.tls.is_some();
    let cache = Arc::new(Cache::open(config, metrics.clone())?);
    tasks::rebuild_index(cache.store().clone());
    let api = Arc::new(Api::new(cache.clone(), metrics.clone()));
    let own = crate::config::listen_url(addr, tls_on);
    let prefetcher = tokio::spawn(tasks::keep_warm(own, cache.clone()));
    let listeners = Listeners {
        api: listener,
        tls,
        metrics: metrics_listener,
        metrics_tls,
        peers: peer_listener.map(|l| (l, Arc::new(Api::for_peers(cache, metrics)))),
    };

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let api2 = api.clone();
    let task = tokio::spawn(async move {
        serve(api2, listeners, async {
            let _ = stop_rx.await;
        })
        .await
    });
    tracing::info!(%addr, metrics = ?metrics_addr, peers = ?peer_addr, "tender listening");
    Ok(Running {
        addr,
        metrics_addr,
        peer_addr,
        api,
        stop: Some(stop_tx),
        task,
        prefetcher,
    })
}

/// The bound listeners: the local API (with TLS if configured), the
/// metrics-only listener, and the peer listener with its own handler.
struct Listeners {
    api: TcpListener,
    tls: Option<TlsAcceptor>,
    metrics: Option<TcpListener>,
    metrics_tls: Option<TlsAcceptor>,
    peers: Option<(TcpListener, Arc<Api>)>,
}

/// Serves until `shutdown` resolves, then drains.
async fn serve(api: Arc<Api>, listeners: Listeners, shutdown: impl Future<Output = ()>) {
    let cache = api.cache().clone();
    let graceful = Arc::new(GracefulShutdown::new());
    let flusher = tasks::flush_access_times(cache.store().clone());
    let scrubber = tasks::scrub(&cache);
    let membership = cache
        .cluster()
        .map(|c| tokio::spawn(crate::cluster::run_membership(c.clone())));
    let config = cache.config();
    let limits = ConnLimits::new(
        config.max_connections,
        config.max_connections_per_client,
        api.metrics().connections_rejected.clone(),
    );
    let mut side_tasks = Vec::new();
    if let Some(l) = listeners.metrics {
        let (api, g, limits) = (api.clone(), graceful.clone(), limits.clone());
        let tls = listeners.metrics_tls;
        side_tasks.push(tokio::spawn(async move {
            accept_loop(api, l, &g, Listener::MetricsOnly, tls, limits).await
        }));
    }
    if let Some((l, peer_api)) = listeners.peers {
        let (g, limits) = (graceful.clone(), limits.clone());
        side_tasks.push(tokio::spawn(async move {
            accept_loop(peer_api, l, &g, Listener::Peers, None, limits).await
        }));
    }
    tokio::select! {
        _ = accept_loop(api.clone(), listeners.api, &graceful, Listener::Api, listeners.tls, limits) => {}
        _ = shutdown => {}
    }
    for t in scrubber.into_iter().chain(membership) {
        t.abort();
    }
    for t in side_tasks {
        t.abort();
        // Wait for it to drop its handle on `graceful`, which we unwrap below.
        let _ = t.await;
    }
    flusher.abort();
    let store = cache.store().clone();
    let _ = tokio::task::spawn_blocking(move || store.flush_access_times()).await;
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    // Drain connections, then let fills that are still running (a client
    // may have gone, or got its last byte before the commit) finish and
    // commit, all within one grace period.
    let drain = async move {
        graceful.shutdown().await;
        while cache.fills_in_flight() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    match tokio::time::timeout(SHUTDOWN_GRACE, drain).await {
        Ok(()) => tracing::info!("drained: connections closed, fills committed"),
        Err(_) => tracing::warn!("grace period over; abandoning remaining connections and fills"),
    }
}

/// What a listener serves. `metrics_listen` is meant for the pod or node
/// IP (Prometheus), so it must never expose the pull API beyond loopback.
/// The peer listener serves other nodes (its handler checks their token).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    Api,
    MetricsOnly,
    Peers,
}

async fn accept_loop(
    api: Arc<Api>,
    listener: TcpListener,
    graceful: &GracefulShutdown,
    kind: Listener,
    tls: Option<TlsAcceptor>,
    limits: Arc<ConnLimits>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = limits.admit(peer.ip()) else {
            tracing::warn!(client = %peer.ip(), "connection limit reached; closing the new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let api = api.clone();
            async move {
                if kind == Listener::MetricsOnly
                    && !matches!(req.uri().path(), "/metrics" | "/healthz" | "/readyz")
                {
                    let mut r = hyper::Response::new(ResponseBody::full(
                        "only /metrics, /healthz and /readyz are served here\n",
                    ));
                    *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                    return Ok::<_, Infallible>(r);
                }
                Ok::<_, Infallible>(api.handle(req).await)
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            // Request heads are small; these are exact limits (431 beyond).
            .max_header_size(64 << 10)
            .max_headers(100)
            .max_buf_size(64 << 10);
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let res = match tls {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), svc))
                        .await
                }
                Some(acceptor) => {
                    // The handshake shares the slowloris bound.
                    let stream =
                        match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), svc))
                        .await
                }
            };
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
