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
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

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
    // Certificates first: a bad one fails before anything listens.
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let metrics_tls = config.metrics_tls.as_ref().map(tls_acceptor).transpose()?;
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
    if !addr.ip().is_loopback() && tls.is_none() {
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
        serve(app2, listener, metrics_listener, tls, metrics_tls, async {
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
        let scheme = if app.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tokio::spawn(scheduled_prefetch(format!("{scheme}://{own}"), p))
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
    // This talks to tender's own listener on loopback; with TLS there, its
    // certificate is for the node's clients, so this one connection skips
    // verification.
    let client = match reqwest::Client::builder()
        .no_proxy()
        .danger_accept_invalid_certs(base.starts_with("https://127.0.0.1"))
        .build()
    {
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
    tls: Option<TlsAcceptor>,
    metrics_tls: Option<TlsAcceptor>,
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
    let limits = ConnLimits::new(
        app.config.max_connections,
        app.config.max_connections_per_client,
        app.metrics.connections_rejected.clone(),
    );
    let metrics_task = metrics_listener.map(|l| {
        let app = app.clone();
        let g = graceful.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            accept_loop(app, l, &g, Listener::MetricsOnly, metrics_tls, limits).await
        })
    });
    let scrubber = app.config.scrub_interval.map(|every| {
        let store = app.store.clone();
        let rate = app.config.scrub_rate;
        tokio::spawn(async move {
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            // Set when this task is aborted at shutdown, to end a pass early.
            struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);
            impl Drop for StopOnDrop {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let _stop_on_drop = StopOnDrop(stop.clone());
            loop {
                tokio::time::sleep(every).await;
                let (s, st) = (store.clone(), stop.clone());
                if let Ok((checked, corrupt)) =
                    tokio::task::spawn_blocking(move || s.scrub_pass(rate, &st)).await
                {
                    tracing::info!(checked, corrupt, "scrub pass done");
                }
            }
        })
    });
    tokio::select! {
        _ = accept_loop(app.clone(), listener, &graceful, Listener::Api, tls, limits) => {}
        _ = shutdown => {}
    }
    if let Some(t) = scrubber {
        t.abort();
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

/// Connection limits, in all and per client IP, so that one misbehaving
/// client cannot take every connection (slowloris is bounded separately by
/// the header read timeout).
pub struct ConnLimits {
    max_total: usize,
    max_per_client: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    rejected: prometheus::IntCounter,
}

/// One admitted connection; dropping it frees its place.
struct ConnPermit {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
}

impl ConnLimits {
    fn new(
        max_total: usize,
        max_per_client: usize,
        rejected: prometheus::IntCounter,
    ) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            max_total,
            max_per_client,
            open: Mutex::new((0, HashMap::new())),
            rejected,
        })
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnPermit> {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let per = g.1.get(&ip).copied().unwrap_or(0);
        if g.0 >= self.max_total || per >= self.max_per_client {
            self.rejected.inc();
            return None;
        }
        g.0 += 1;
        g.1.insert(ip, per + 1);
        Some(ConnPermit {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut g = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

/// A rustls acceptor for a certificate chain and key in PEM files.
pub fn tls_acceptor(files: &crate::config::TlsFiles) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate found",
            files.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| format!("{}: {e}", files.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_loop(
    app: Arc<App>,
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
