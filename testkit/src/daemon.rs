//! tender in this process, on a free port, with its own cache dir: for
//! integration tests that look inside (metrics, the store).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tender::api::Api;
use tender::cache::Cache;
use tender::server::Running;

pub struct Daemon {
    pub running: Option<Running>,
    pub base: String,
    pub dir: std::path::PathBuf,
}

impl Daemon {
    pub async fn start(registries_toml: &str, extra: &str) -> Daemon {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tender-it-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Daemon::start_in(dir, registries_toml, extra).await
    }

    pub async fn start_in(dir: std::path::PathBuf, registries_toml: &str, extra: &str) -> Daemon {
        let text = format!(
            "listen = \"127.0.0.1:0\"\ncache_dir = \"{}\"\n{extra}\n{registries_toml}",
            dir.display()
        );
        let config = tender::config::Config::parse(&text, "test").unwrap();
        let running = tender::server::start(config).await.unwrap();
        let base = format!("http://{}", running.addr);
        Daemon {
            running: Some(running),
            base,
            dir,
        }
    }

    /// tender serving docker.io (the default registry) from `upstreams`, in order.
    pub async fn over(upstreams: &[&crate::fake::Fake]) -> Daemon {
        Daemon::start(&docker_io(upstreams), "").await
    }

    /// [`Daemon::over`] with its cache in `dir` and `extra` config lines.
    pub async fn over_in(
        dir: std::path::PathBuf,
        upstreams: &[&crate::fake::Fake],
        extra: &str,
    ) -> Daemon {
        Daemon::start_in(dir, &docker_io(upstreams), extra).await
    }

    pub fn api(&self) -> &Arc<Api> {
        &self.running.as_ref().expect("a running daemon").api
    }

    pub fn cache(&self) -> &Arc<Cache> {
        self.api().cache()
    }

    /// Whether the store holds blob `digest` (`sha256:...`) now.
    pub fn has_blob(&self, digest: &str) -> bool {
        let d = digest.parse().expect("a digest");
        self.cache()
            .store()
            .blob_size(&d)
            .expect("the store answers")
            .is_some()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` from this daemon.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.get_with(path, &[]).await
    }

    /// `GET path` with extra request headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = crate::http::client().get(self.url(path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("a response from tender")
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn metric(&self, sample: &str) -> f64 {
        let text = String::from_utf8(self.api().render_metrics()).unwrap();
        crate::tender::metric_value(&text, sample)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn docker_io(upstreams: &[&crate::fake::Fake]) -> String {
    let urls: Vec<String> = upstreams.iter().map(|f| f.url()).collect();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    crate::fake::registry_toml("docker.io", true, &urls)
}

/// A 2-worker runtime for synchronous tests that run an in-process fake.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
