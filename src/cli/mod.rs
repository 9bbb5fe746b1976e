//! The command line. Usage and config errors exit 64 (EX_USAGE) before
//! anything listens; other failures exit 1.

mod check_config;
pub mod doctor;
mod fsck;
pub mod hosts;
mod hosts_cmd;
mod prefetch_cmd;
mod serve;
mod status;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError};

pub const EX_USAGE: i32 = 64;

const AFTER_HELP: &str = "\
Logging: TENDER_LOG sets the level filter (e.g. info, debug, tender=debug);
TENDER_LOG_FORMAT=json (or serve --log-format json) writes JSON lines.
Signals (serve): SIGTERM/SIGINT drain and stop; SIGHUP reloads registries
and upstreams from the config file.";

#[derive(Parser)]
#[command(
    name = "tender",
    version,
    about = "tender: node-local pull-through cache for container images",
    after_help = AFTER_HELP,
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OCI pull API.
    ///
    /// Without --config, an embedded default is used (listen 127.0.0.1:5050;
    /// docker.io, registry.k8s.io, gcr.io, quay.io, ghcr.io from their
    /// origins; cache in the per-user cache directory).
    Serve {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_enum, value_name = "text|json")]
        log_format: Option<LogFormat>,
    },
    /// Write DIR/<registry>/hosts.toml so that containerd pulls through tender.
    ///
    /// One file for each registry (default: every configured one), pointing
    /// containerd at tender at URL with the origin as fallback. Existing files
    /// are backed up, never overwritten; --restore puts the newest backup
    /// back. --format k3s|docker|all prints a K3s registries.yaml, a Docker
    /// daemon.json snippet, or everything.
    ContainerdHosts(hosts_cmd::Args),
    /// Re-hash every cached object; remove and report the bad ones (exit 1 if any).
    Fsck {
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Pull images through a running tender to warm its cache.
    ///
    /// From a multi-arch index only the node's platform (or --platform). URL
    /// defaults to the config's listen address.
    Prefetch {
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
        #[command(flatten)]
        target: Target,
        #[arg(long, value_name = "os/arch")]
        platform: Option<String>,
    },
    /// Check this node: does containerd really pull through tender?
    ///
    /// containerd's config_path, the hosts files pointing at tender, tender
    /// answering, and settings that bypass mirrors; each problem with its fix.
    /// Exits 1 if any problem was found.
    Doctor {
        #[arg(long, value_name = "FILE", default_value = doctor::DEFAULT_CONTAINERD_CONFIG)]
        containerd_config: PathBuf,
        #[arg(long, value_name = "DIR")]
        hosts_dir: Option<PathBuf>,
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Cache size, entries, hit ratio and in-flight fetches of a running tender.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Validate a config (no --config: the embedded default) with the parser
    /// `serve` uses; print every problem with its key (exit 0 when valid).
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the embedded default config.
    PrintDefaultConfig,
}

/// Which running tender a client command talks to.
#[derive(clap::Args)]
struct Target {
    /// The tender's URL, e.g. http://127.0.0.1:5050.
    #[arg(long, value_name = "URL", conflicts_with = "config")]
    url: Option<String>,
    /// Take the URL from this config's listen address.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl Target {
    fn base_url(&self) -> Result<String, CliError> {
        match &self.url {
            Some(u) => Ok(u.trim_end_matches('/').to_string()),
            None => Ok(load_config(self.config.as_deref())?.local_url()),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// How a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags or arguments (exit 64).
    #[error("{0}")]
    Usage(String),
    /// The config does not load (exit 64).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The command ran and failed (exit 1).
    #[error("{0}")]
    Failed(String),
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return clap_error(e),
    };
    let json = std::env::var("TENDER_LOG_FORMAT").is_ok_and(|v| v == "json")
        || matches!(
            cli.command,
            Command::Serve {
                log_format: Some(LogFormat::Json),
                ..
            }
        );
    init_tracing(json);
    match run(cli.command) {
        Ok(code) => code,
        Err(CliError::Failed(msg)) => {
            eprintln!("tender: {msg}");
            1
        }
        Err(e) => {
            eprintln!("tender: {e}");
            EX_USAGE
        }
    }
}

/// Prints clap's verdict: help and version on stdout (exit 0), usage errors
/// on stderr (exit 64), an unknown flag named as such.
fn clap_error(e: clap::Error) -> i32 {
    use clap::error::{ContextKind, ErrorKind};
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            print!("{e}");
            0
        }
        ErrorKind::UnknownArgument => {
            let arg = e
                .get(ContextKind::InvalidArg)
                .map(|a| a.to_string())
                .unwrap_or_default();
            eprintln!("tender: unknown flag {arg}");
            eprint!("{}", e.render());
            EX_USAGE
        }
        _ => {
            eprint!("{}", e.render());
            EX_USAGE
        }
    }
}

fn init_tracing(json: bool) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let filter: Targets = std::env::var("TENDER_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| "info".parse().expect("valid default filter"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = if json {
        tracing_subscriber::registry()
            .with(fmt.json().flatten_event(true))
            .with(filter)
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(fmt)
            .with(filter)
            .try_init()
    };
}

fn run(command: Command) -> Result<i32, CliError> {
    match command {
        Command::Serve { config, .. } => {
            let loaded = load_config(config.as_deref())?;
            serve::run(loaded, config)
        }
        Command::ContainerdHosts(args) => hosts_cmd::run(&args),
        Command::Fsck { cache_dir, config } => {
            let dir = match cache_dir {
                Some(d) => d,
                None => load_config(config.as_deref())?.cache_dir,
            };
            fsck::run(&dir)
        }
        Command::Prefetch {
            images,
            target,
            platform,
        } => prefetch_cmd::run(&images, &target.base_url()?, platform.as_deref()),
        Command::Doctor {
            containerd_config,
            hosts_dir,
            mirror,
            config,
        } => {
            let cfg = load_config(config.as_deref())?;
            let registries: Vec<String> = cfg.registries.iter().map(|r| r.host.clone()).collect();
            let mirror = mirror.unwrap_or_else(|| cfg.local_url());
            let inputs = doctor::gather(
                &containerd_config,
                hosts_dir.as_deref(),
                &registries,
                &mirror,
            );
            let findings = doctor::diagnose(&inputs);
            print!("{}", doctor::render(&findings));
            Ok(doctor::exit_code(&findings))
        }
        Command::Status { target } => status::run(&target.base_url()?),
        Command::CheckConfig { config } => check_config::run(config.as_deref()),
        Command::PrintDefaultConfig => {
            print!("{}", crate::config::DEFAULT_CONFIG);
            Ok(0)
        }
    }
}

fn load_config(path: Option<&Path>) -> Result<Config, CliError> {
    Ok(Config::load(path)?)
}

/// A runtime for the client commands (one thread is plenty).
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("runtime: {e}")))
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
