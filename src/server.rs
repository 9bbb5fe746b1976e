//! Listeners and the connection loop. Shutdown is a parameter; draining is
//! bounded by a grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::App;
use crate::config::Config;
use crate::metrics::Metrics;

/// How long in-flight responses may take to finish after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Slowloris guard: a client must send its request headers within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often access order is written to the store's mtimes.
const ACCESS_FLUSH_INTERVAL: Duration = Duration::from_secs(30);

/// A started daemon.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    prefetcher: Option<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight responses finish (bounded by the
    /// grace period), then returns.
    pub async fn shutdown(mut self) {
        if let Some(p) = self.prefetcher.take() {
            p.abort();
        }
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

/// Binds the listeners and starts serving; returns once listening. The
/// store index is rebuilt in the background: lookups go to disk directly,
/// so the cache serves from the first request.
pub async fn start(config: Config) -> Result<Running, String> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", config.listen))?;
    let metrics_listener = match config.metrics_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| format!("metrics_listen {a}: {e}"))?,
        ),
        None => None,
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "listening beyond loopback without TLS: any host that can reach this address can pull through this cache");
    }

    let metrics = Arc::new(Metrics::new());
    let app = App::new(config, metrics)?;

    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        match store.rebuild_index() {
            Ok(n) => tracing::info!(
                objects = n,
                bytes = store.total_size(),
                ms = t.elapsed().as_millis() as u64,
                "cache indexed"
            ),
            Err(e) => tracing::error!(error = %e, "cache index rebuild failed"),
        }
    });

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let app2 = app.clone();
    let task = tokio::spawn(async move {
        serve(app2, listener, metrics_listener, async {
            let _ = stop_rx.await;
        })
        .await
    });
    tracing::info!(%addr, metrics = ?metrics_addr, "tender listening");
    let prefetcher = app.config.prefetch.clone().map(|p| {
        let mut own = addr;
        if own.ip().is_unspecified() {
            own.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        tokio::spawn(scheduled_prefetch(format!("http://{own}"), p))
    });
    Ok(Running {
        addr,
        metrics_addr,
        app,
        stop: Some(stop_tx),
        task,
        prefetcher,
    })
}

/// Pulls the configured images through this tender now and then every
/// `interval`, so that a node has them before its pods ask.
async fn scheduled_prefetch(base: String, p: crate::config::Prefetch) {
    let client = match reqwest::Client::builder().no_proxy().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "prefetch disabled: no HTTP client");
            return;
        }
    };
    let platform = crate::prefetch::node_platform();
    tokio::time::sleep(Duration::from_secs(1)).await;
    loop {
        for image in &p.images {
            let started = std::time::Instant::now();
            match crate::prefetch::prefetch(&client, &base, image, platform, &mut |_| {}).await {
                Ok(bytes) => {
                    tracing::info!(image = %image, bytes, ms = started.elapsed().as_millis() as u64, "prefetched")
                }
                Err(e) => tracing::warn!(image = %image, error = %e, "prefetch failed"),
            }
        }
        tokio::time::sleep(p.interval).await;
    }
}

/// Serves until `shutdown` resolves, then drains.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let flusher = {
        let store = app.store.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ACCESS_FLUSH_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = store.clone();
                let _ = tokio::task::spawn_blocking(move || s.flush_access_times()).await;
            }
        })
    };
    let metrics_task = metrics_listener.map(|l| {
        let app = app.clone();
        let g = graceful.clone();
        tokio::spawn(async move { accept_loop(app, l, &g, Listener::MetricsOnly).await })
    });
    tokio::select! {
        _ = accept_loop(app.clone(), listener, &graceful, Listener::Api) => {}
        _ = shutdown => {}
    }
    if let Some(t) = metrics_task {
        t.abort();
        // Wait for it to drop its handle on `graceful`, which we unwrap below.
        let _ = t.await;
    }
    flusher.abort();
    let store = app.store.clone();
    let _ = tokio::task::spawn_blocking(move || store.flush_access_times()).await;
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    // Drain connections, then let fills that are still running (a client
    // may have gone, or got its last byte before the commit) finish and
    // commit, all within one grace period.
    let fills = app.fills.clone();
    let drain = async move {
        graceful.shutdown().await;
        while !fills.is_empty() {
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
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    Api,
    MetricsOnly,
}

async fn accept_loop(
    app: Arc<App>,
    listener: TcpListener,
    graceful: &GracefulShutdown,
    kind: Listener,
) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let app = app.clone();
            async move {
                if kind == Listener::MetricsOnly
                    && !matches!(req.uri().path(), "/metrics" | "/healthz" | "/readyz")
                {
                    let mut r = hyper::Response::new(crate::api::body::ResponseBody::full(
                        "only /metrics, /healthz and /readyz are served here\n",
                    ));
                    *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                    return Ok::<_, Infallible>(r);
                }
                Ok::<_, Infallible>(app.handle(req).await)
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(64 << 10)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
