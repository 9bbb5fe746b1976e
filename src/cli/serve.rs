//! `tender serve`: run the daemon until SIGTERM/SIGINT; SIGHUP reloads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::CliError;
use crate::api::Api;
use crate::config::Config;

pub fn run(config: Config, path: Option<PathBuf>) -> Result<i32, CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("runtime: {e}")))?;
    rt.block_on(async move {
        let running = crate::server::start(config)
            .await
            .map_err(|e| CliError::Failed(e.to_string()))?;
        let api = running.api.clone();
        let config = api.cache().config();
        tracing::info!(
            cache_dir = %config.cache_dir.display(),
            cache_max_size = config.cache_max_size,
            registries = config.registries.len(),
            "serving"
        );
        handle_signals(&api, path.as_deref()).await;
        tracing::info!("shutting down: draining in-flight requests and fills");
        running.shutdown().await;
        Ok(0)
    })
}

/// Returns on SIGTERM or SIGINT; on SIGHUP reloads registries and upstreams
/// from the config file (a config that does not validate is reported and
/// the running one kept).
async fn handle_signals(api: &Arc<Api>, path: Option<&Path>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = tokio::signal::ctrl_c() => return,
            _ = hup.recv() => {
                let Some(p) = path else {
                    tracing::info!("SIGHUP: running on the embedded default config; nothing to reload");
                    continue;
                };
                let p = p.to_path_buf();
                match tokio::task::spawn_blocking(move || Config::load(Some(&p))).await {
                    Ok(Ok(c)) => {
                        if let Err(e) = api.cache().reload(&c, api.metrics()) {
                            tracing::error!(error = %e, "reload failed; keeping the running config");
                        }
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "reload: invalid config; keeping the running one"),
                    Err(e) => tracing::error!(error = %e, "reload task failed"),
                }
            }
        }
    }
}
