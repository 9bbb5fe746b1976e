//! `tender containerd-hosts`: point containerd (or K3s, or Docker) at tender.

use std::path::{Path, PathBuf};

use super::hosts;
use super::{load_config, CliError};
use crate::oci::name::valid_registry_host;

#[derive(clap::Args)]
pub struct Args {
    /// tender's URL as the node's clients reach it.
    #[arg(long, value_name = "URL")]
    mirror: String,
    /// The hosts directory (containerd's config_path).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// A registry to write (repeatable; default: every configured one).
    #[arg(long = "registry", value_name = "HOST")]
    registries: Vec<String>,
    /// The config whose registries to write.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Put the newest backup back instead.
    #[arg(long)]
    restore: bool,
    #[arg(long, value_enum, default_value = "containerd")]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Containerd,
    K3s,
    Docker,
    All,
}

pub fn run(args: &Args) -> Result<i32, CliError> {
    let mirror = args.mirror.as_str();
    match reqwest::Url::parse(mirror) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => {
            return Err(CliError::Usage(format!(
                "--mirror {mirror:?} must be an http:// or https:// URL"
            )))
        }
    }
    let mirror = mirror.trim_end_matches('/');
    let mut registries: Vec<String> = args
        .registries
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    if registries.is_empty() {
        let config = load_config(args.config.as_deref())?;
        registries = config.registries.iter().map(|r| r.host.clone()).collect();
    }
    if let Some(h) = registries.iter().find(|h| !valid_registry_host(h)) {
        return Err(CliError::Usage(format!(
            "--registry {h:?} is not a registry host"
        )));
    }
    if args.restore && args.format != Format::Containerd {
        return Err(CliError::Usage(
            "--restore goes with --format containerd".into(),
        ));
    }
    match args.format {
        Format::Containerd => {
            let dir = args
                .dir
                .as_deref()
                .ok_or_else(|| CliError::Usage("--dir DIR is required".into()))?;
            write_hosts_files(dir, &registries, mirror, args.restore)?;
        }
        Format::K3s => print!("{}", hosts::k3s_registries_yaml(&registries, mirror)),
        Format::Docker => {
            if !registries.iter().any(|h| h == "docker.io") {
                eprintln!("tender: note: Docker's registry-mirrors apply to docker.io only");
            }
            print!("{}", hosts::docker_daemon_json(mirror));
        }
        Format::All => {
            for h in &registries {
                println!("# --- containerd: <config_path>/{h}/hosts.toml");
                print!("{}", hosts::hosts_toml(h, mirror));
            }
            println!("# --- k3s: /etc/rancher/k3s/registries.yaml");
            print!("{}", hosts::k3s_registries_yaml(&registries, mirror));
            println!("# --- docker: /etc/docker/daemon.json (docker.io only)");
            print!("{}", hosts::docker_daemon_json(mirror));
        }
    }
    Ok(0)
}

fn write_hosts_files(
    dir: &Path,
    registries: &[String],
    mirror: &str,
    restore: bool,
) -> Result<(), CliError> {
    for h in registries {
        let res = if restore {
            hosts::restore(dir, h)
        } else {
            hosts::install(dir, h, mirror)
        };
        match res {
            Ok(msg) => println!("{}: {msg}", dir.join(h).join("hosts.toml").display()),
            Err(e) => return Err(CliError::Failed(format!("{}: {e}", dir.join(h).display()))),
        }
    }
    Ok(())
}
