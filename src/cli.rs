//! Command line: `tender serve`, `tender containerd-hosts`, `tender fsck`.
//! Usage and config errors exit 64 (EX_USAGE) before anything listens.

use std::path::{Path, PathBuf};

use crate::config::{valid_registry_host, Config};
use crate::hosts;

const USAGE: &str = "\
tender: node-local pull-through cache for container images

usage:
  tender serve [--config FILE] [--log-format text|json]
      Serve the OCI pull API. Without --config, an embedded default is used
      (listen 127.0.0.1:5050; docker.io, registry.k8s.io, gcr.io, quay.io,
      ghcr.io from their origins; cache in the per-user cache directory).
  tender containerd-hosts --mirror URL --dir DIR [--registry HOST ...] [--config FILE]
                         [--restore] [--format containerd|k3s|docker|all]
      Write DIR/<registry>/hosts.toml for each registry (default: every
      configured one) so that containerd pulls through tender at URL and falls
      back to the origin. Existing files are backed up, never overwritten;
      --restore puts the newest backup back. --format k3s|docker|all prints a
      K3s registries.yaml, a Docker daemon.json snippet, or everything.
  tender fsck [--cache-dir DIR] [--config FILE]
      Re-hash every cached object; remove and report the bad ones. Exits 1 if
      any was bad.
  tender prefetch IMAGE... [--url URL | --config FILE] [--platform os/arch]
      Pull images through a running tender to warm its cache (from a
      multi-arch index, only the node's platform). URL defaults to the
      config's listen address.
  tender doctor [--containerd-config FILE] [--hosts-dir DIR] [--mirror URL] [--config FILE]
      Check this node: containerd's config_path, the hosts files pointing at
      tender, tender answering, and settings that bypass mirrors; each problem
      with its fix. Exits 1 if any problem was found.
  tender status [--url URL | --config FILE]
      Cache size, entries, hit ratio and in-flight fetches of a running tender.
  tender print-default-config
  tender --version

Logging: TENDER_LOG sets the level filter (e.g. info, debug, tender=debug);
TENDER_LOG_FORMAT=json (or serve --log-format json) writes JSON lines.
Signals (serve): SIGTERM/SIGINT drain and stop; SIGHUP reloads registries
and upstreams from the config file.
";

pub const EX_USAGE: i32 = 64;

pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = std::env::var("TENDER_LOG_FORMAT").is_ok_and(|v| v == "json")
        || args
            .windows(2)
            .any(|w| w[0] == "--log-format" && w[1] == "json")
        || args.iter().any(|a| a == "--log-format=json");
    init_tracing(json);
    match run(&args) {
        Ok(code) => code,
        Err(CliError::Usage(msg)) => {
            eprintln!("tender: {msg}\n\n{USAGE}");
            EX_USAGE
        }
        Err(CliError::Config(msg)) => {
            eprintln!("tender: {msg}");
            EX_USAGE
        }
        Err(CliError::Failed(msg)) => {
            eprintln!("tender: {msg}");
            1
        }
    }
}

enum CliError {
    Usage(String),
    Config(String),
    Failed(String),
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

/// Minimal flag parsing: `--flag value` or `--flag=value`, repeatable.
struct Flags {
    pairs: Vec<(String, String)>,
}

impl Flags {
    /// `known` flags take a value; `switches` take none (their value is "true").
    fn parse(args: &[String], known: &[&str], switches: &[&str]) -> Result<Flags, CliError> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(flag) = a.strip_prefix("--") else {
                return Err(CliError::Usage(format!("unexpected argument {a:?}")));
            };
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None if switches.contains(&flag) => (flag.to_string(), "true".to_string()),
                None => {
                    let v = it
                        .next()
                        .ok_or_else(|| CliError::Usage(format!("--{flag} needs a value")))?;
                    (flag.to_string(), v.clone())
                }
            };
            if !known.contains(&name.as_str()) && !switches.contains(&name.as_str()) {
                return Err(CliError::Usage(format!("unknown flag --{name}")));
            }
            pairs.push((name, value));
        }
        Ok(Flags { pairs })
    }

    fn one<'a>(&'a self, name: &'a str) -> Result<Option<&'a str>, CliError> {
        let mut vals = self.all(name);
        let first = vals.next();
        if vals.next().is_some() {
            return Err(CliError::Usage(format!("--{name} given more than once")));
        }
        Ok(first)
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn run(args: &[String]) -> Result<i32, CliError> {
    let Some(cmd) = args.first() else {
        return Err(CliError::Usage("a command is required".into()));
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "serve" => {
            let flags = Flags::parse(rest, &["config", "log-format"], &[])?;
            match flags.one("log-format")? {
                None | Some("text") | Some("json") => {}
                Some(f) => {
                    return Err(CliError::Usage(format!(
                        "--log-format {f:?}: expected text or json"
                    )))
                }
            }
            let path = flags.one("config")?.map(PathBuf::from);
            let config = load_config(path.as_deref().and_then(Path::to_str))?;
            serve(config, path)
        }
        "containerd-hosts" => {
            let flags = Flags::parse(
                rest,
                &["mirror", "dir", "registry", "config", "format"],
                &["restore"],
            )?;
            containerd_hosts(&flags)
        }
        "fsck" => {
            let flags = Flags::parse(rest, &["cache-dir", "config"], &[])?;
            let dir = match flags.one("cache-dir")? {
                Some(d) => PathBuf::from(d),
                None => load_config(flags.one("config")?)?.cache_dir,
            };
            fsck(&dir)
        }
        "prefetch" => {
            let (images, flags): (Vec<String>, Vec<String>) = {
                let mut images = Vec::new();
                let mut flags = Vec::new();
                let mut it = rest.iter();
                while let Some(a) = it.next() {
                    if a.starts_with("--") {
                        flags.push(a.clone());
                        if !a.contains('=') {
                            if let Some(v) = it.next() {
                                flags.push(v.clone());
                            }
                        }
                    } else {
                        images.push(a.clone());
                    }
                }
                (images, flags)
            };
            let flags = Flags::parse(&flags, &["url", "config", "platform"], &[])?;
            if images.is_empty() {
                return Err(CliError::Usage("prefetch needs at least one IMAGE".into()));
            }
            let refs = images
                .iter()
                .map(|i| crate::prefetch::parse_ref(i).map_err(CliError::Usage))
                .collect::<Result<Vec<_>, _>>()?;
            let base = base_url(&flags)?;
            let platform = match flags.one("platform")? {
                None => {
                    let (os, arch) = crate::prefetch::node_platform();
                    (os.to_string(), arch.to_string())
                }
                Some(p) => match p.split_once('/') {
                    Some((o, a)) if !o.is_empty() && !a.is_empty() => {
                        (o.to_string(), a.to_string())
                    }
                    _ => {
                        return Err(CliError::Usage(format!(
                            "--platform {p:?}: expected os/arch"
                        )))
                    }
                },
            };
            prefetch_cmd(&base, &refs, (&platform.0, &platform.1))
        }
        "doctor" => {
            let flags = Flags::parse(
                rest,
                &["containerd-config", "hosts-dir", "mirror", "config"],
                &[],
            )?;
            doctor_cmd(&flags)
        }
        "status" => {
            let flags = Flags::parse(rest, &["url", "config"], &[])?;
            status_cmd(&base_url(&flags)?)
        }
        "print-default-config" => {
            print!("{}", crate::config::DEFAULT_CONFIG);
            Ok(0)
        }
        "--version" | "version" => {
            println!("tender {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        "--help" | "-h" | "help" => {
            print!("{USAGE}");
            Ok(0)
        }
        other => Err(CliError::Usage(format!("unknown command {other:?}"))),
    }
}

fn load_config(path: Option<&str>) -> Result<Config, CliError> {
    Config::load(path.map(Path::new)).map_err(|e| CliError::Config(e.to_string()))
}

fn serve(config: Config, path: Option<PathBuf>) -> Result<i32, CliError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("runtime: {e}")))?;
    rt.block_on(async move {
        let running = crate::server::start(config)
            .await
            .map_err(CliError::Failed)?;
        let app = running.app.clone();
        tracing::info!(
            cache_dir = %app.config.cache_dir.display(),
            cache_max_size = app.config.cache_max_size,
            registries = app.config.registries.len(),
            "serving"
        );
        handle_signals(&app, path.as_deref()).await;
        tracing::info!("shutting down: draining in-flight requests and fills");
        running.shutdown().await;
        Ok(0)
    })
}

/// Returns on SIGTERM or SIGINT; on SIGHUP reloads registries and upstreams
/// from the config file (a config that does not validate is reported and
/// the running one kept).
async fn handle_signals(app: &std::sync::Arc<crate::api::App>, path: Option<&Path>) {
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
                        if let Err(e) = app.reload(&c) {
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

fn containerd_hosts(flags: &Flags) -> Result<i32, CliError> {
    let mirror = flags
        .one("mirror")?
        .ok_or_else(|| CliError::Usage("--mirror URL is required".into()))?;
    match reqwest::Url::parse(mirror) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => {
            return Err(CliError::Usage(format!(
                "--mirror {mirror:?} must be an http:// or https:// URL"
            )))
        }
    }
    let mirror = mirror.trim_end_matches('/');
    let mut hosts: Vec<String> = flags
        .all("registry")
        .map(|h| h.to_ascii_lowercase())
        .collect();
    if hosts.is_empty() {
        let config = load_config(flags.one("config")?)?;
        hosts = config.registries.iter().map(|r| r.host.clone()).collect();
    }
    for h in &hosts {
        if !valid_registry_host(h) {
            return Err(CliError::Usage(format!(
                "--registry {h:?} is not a registry host"
            )));
        }
    }
    let restore = match flags.one("restore")? {
        None => false,
        Some("true") => true,
        Some(v) => {
            return Err(CliError::Usage(format!(
                "--restore takes no value, got {v:?}"
            )))
        }
    };
    let format = flags.one("format")?.unwrap_or("containerd");
    let dir = flags.one("dir")?;
    match (format, restore) {
        ("containerd", _) => {
            let dir = dir.ok_or_else(|| CliError::Usage("--dir DIR is required".into()))?;
            let dir = Path::new(dir);
            for h in &hosts {
                let res = if restore {
                    hosts::restore(dir, h)
                } else {
                    hosts::install(dir, h, mirror)
                };
                match res {
                    Ok(msg) => println!("{}: {msg}", dir.join(h).join("hosts.toml").display()),
                    Err(e) => {
                        return Err(CliError::Failed(format!("{}: {e}", dir.join(h).display())))
                    }
                }
            }
        }
        (_, true) => {
            return Err(CliError::Usage(
                "--restore goes with --format containerd".into(),
            ))
        }
        ("k3s", _) => print!("{}", hosts::k3s_registries_yaml(&hosts, mirror)),
        ("docker", _) => {
            if !hosts.iter().any(|h| h == "docker.io") {
                eprintln!("tender: note: Docker's registry-mirrors apply to docker.io only");
            }
            print!("{}", hosts::docker_daemon_json(mirror));
        }
        ("all", _) => {
            for h in &hosts {
                println!("# --- containerd: <config_path>/{h}/hosts.toml");
                print!("{}", hosts::hosts_toml(h, mirror));
            }
            println!("# --- k3s: /etc/rancher/k3s/registries.yaml");
            print!("{}", hosts::k3s_registries_yaml(&hosts, mirror));
            println!("# --- docker: /etc/docker/daemon.json (docker.io only)");
            print!("{}", hosts::docker_daemon_json(mirror));
        }
        (other, _) => {
            return Err(CliError::Usage(format!(
                "--format {other:?}: expected containerd, k3s, docker or all"
            )))
        }
    }
    Ok(0)
}

fn fsck(dir: &Path) -> Result<i32, CliError> {
    use crate::cache::store::{split_manifest_file, Kind, Store};
    use crate::digest::Hasher;
    use std::io::Read;
    if !dir.join("blobs").is_dir() && !dir.join("manifests").is_dir() {
        return Err(CliError::Failed(format!(
            "{} is not a tender cache directory",
            dir.display()
        )));
    }
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    // Shared: a running tender's fills own the temp files.
    let store =
        Store::open_shared(dir, u64::MAX, metrics).map_err(|e| CliError::Failed(e.to_string()))?;
    let objects = store.list().map_err(|e| CliError::Failed(e.to_string()))?;
    let (mut ok, mut bad) = (0usize, 0usize);
    for (kind, d, path) in objects {
        let verdict = (|| -> std::io::Result<Result<(), String>> {
            let mut f = std::fs::File::open(&path)?;
            match kind {
                Kind::Blob => {
                    let mut h = Hasher::new();
                    let mut buf = vec![0u8; 1 << 20];
                    loop {
                        let n = f.read(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                    let actual = h.finish();
                    Ok(if actual == d {
                        Ok(())
                    } else {
                        Err(format!("content hashes to {actual}"))
                    })
                }
                Kind::Manifest => {
                    let mut buf = Vec::new();
                    f.read_to_end(&mut buf)?;
                    Ok(match split_manifest_file(&buf) {
                        None => Err("missing media type line".into()),
                        Some((_, body)) => {
                            let actual = crate::digest::Digest::of(body);
                            if actual == d {
                                Ok(())
                            } else {
                                Err(format!("content hashes to {actual}"))
                            }
                        }
                    })
                }
            }
        })();
        let verdict = verdict.unwrap_or_else(|e| Err(format!("unreadable: {e}")));
        match verdict {
            Ok(()) => ok += 1,
            Err(why) => {
                bad += 1;
                println!("BAD {} {d}: {why}; removed", kind_name(kind));
                if let Err(e) = store.remove(kind, &d) {
                    eprintln!("tender: could not remove {}: {e}", path.display());
                }
            }
        }
    }
    println!("fsck: {ok} ok, {bad} bad");
    Ok(if bad > 0 { 1 } else { 0 })
}

fn kind_name(k: crate::cache::store::Kind) -> &'static str {
    match k {
        crate::cache::store::Kind::Blob => "blob",
        crate::cache::store::Kind::Manifest => "manifest",
    }
}

/// A client for a tender on this node. A loopback https URL is tender's own
/// listener, whose certificate is meant for other clients: not verified.
fn local_client(base: &str) -> Result<reqwest::Client, CliError> {
    let loopback = base.starts_with("https://127.0.0.1")
        || base.starts_with("https://localhost")
        || base.starts_with("https://[::1]");
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(5))
        .danger_accept_invalid_certs(loopback)
        .build()
        .map_err(|e| CliError::Failed(e.to_string()))
}

/// The running tender to talk to: `--url`, else the config's listen address.
fn base_url(flags: &Flags) -> Result<String, CliError> {
    if let Some(u) = flags.one("url")? {
        return Ok(u.trim_end_matches('/').to_string());
    }
    let c = load_config(flags.one("config")?)?;
    let mut addr = c.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if c.tls.is_some() { "https" } else { "http" };
    Ok(format!("{scheme}://{addr}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("runtime: {e}")))
}

fn prefetch_cmd(
    base: &str,
    refs: &[crate::prefetch::ImageRef],
    platform: (&str, &str),
) -> Result<i32, CliError> {
    use crate::prefetch::Event;
    use std::io::Write;
    // SAFETY: isatty only inspects the file descriptor.
    let tty = unsafe { libc::isatty(2) } == 1;
    let client = local_client(base)?;
    let mut failed = 0;
    runtime()?.block_on(async {
        for r in refs {
            let started = std::time::Instant::now();
            let mut progress = |ev: Event<'_>| {
                let mut err = std::io::stderr();
                match ev {
                    Event::Manifest { image, digest } => {
                        let _ = writeln!(err, "{image}: manifest {digest}");
                    }
                    Event::BlobProgress {
                        index,
                        count,
                        digest,
                        done,
                        total,
                    } if tty => {
                        let pct = (done * 100).checked_div(total).unwrap_or(0);
                        let _ = write!(
                            err,
                            "\r  [{}/{count}] {} {pct:>3}% {:.1}/{:.1} MiB   ",
                            index + 1,
                            short(digest),
                            mib(done),
                            mib(total)
                        );
                    }
                    Event::BlobProgress { .. } => {}
                    Event::BlobDone {
                        index,
                        count,
                        digest,
                        bytes,
                    } => {
                        if tty {
                            let _ = write!(err, "\r");
                        }
                        let _ = writeln!(
                            err,
                            "  [{}/{count}] {} {:.1} MiB done          ",
                            index + 1,
                            short(digest),
                            mib(bytes)
                        );
                    }
                }
            };
            match crate::prefetch::prefetch(&client, base, r, platform, &mut progress).await {
                Ok(bytes) => println!(
                    "{r}: ok, {:.1} MiB in {:.1}s",
                    mib(bytes),
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => {
                    failed += 1;
                    println!("{r}: FAILED: {e}");
                }
            }
        }
    });
    Ok(if failed > 0 { 1 } else { 0 })
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(19)]
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

fn status_cmd(base: &str) -> Result<i32, CliError> {
    let url = format!("{base}/metrics");
    let c = local_client(base)?;
    let text = runtime()?.block_on(async {
        let r = c
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("{url}: HTTP {}", r.status()));
        }
        r.text().await.map_err(|e| format!("{url}: {e}"))
    });
    let text = text.map_err(|e| CliError::Failed(format!("tender is not answering: {e}")))?;
    let sum = |prefix: &str, filter: &dyn Fn(&str) -> bool| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && filter(l))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    };
    let requests = |result: &str| {
        sum("tender_requests_total{", &|l: &str| {
            l.contains(&format!("result=\"{result}\""))
        })
    };
    let (hit, miss, coalesced, error) = (
        requests("hit"),
        requests("miss"),
        requests("coalesced"),
        requests("error"),
    );
    let served = hit + miss + coalesced;
    let ratio = if served > 0.0 {
        hit / served * 100.0
    } else {
        0.0
    };
    let from_cache = sum("tender_bytes_served_total{", &|l: &str| {
        l.contains("source=\"cache\"")
    });
    let from_upstream = sum("tender_bytes_served_total{", &|l: &str| {
        l.contains("source=\"upstream\"")
    });
    println!("tender at {base}");
    println!(
        "  cache size       {:.1} MiB in {} objects",
        mib(sum("tender_cache_size_bytes", &|_| true) as u64),
        sum("tender_cache_entries", &|_| true)
    );
    println!("  hit ratio        {ratio:.1}% ({hit} hits, {miss} misses, {coalesced} coalesced, {error} errors)");
    println!(
        "  bytes served     {:.1} MiB from cache, {:.1} MiB from upstreams",
        mib(from_cache as u64),
        mib(from_upstream as u64)
    );
    println!(
        "  in-flight        {} fetches",
        sum("tender_inflight_fetches", &|_| true)
    );
    println!(
        "  evictions        {}",
        sum("tender_cache_evictions_total", &|_| true)
    );
    Ok(0)
}

fn doctor_cmd(flags: &Flags) -> Result<i32, CliError> {
    use crate::doctor;
    let containerd_config = flags
        .one("containerd-config")?
        .unwrap_or(doctor::DEFAULT_CONTAINERD_CONFIG);
    let cfg = load_config(flags.one("config")?)?;
    let registries: Vec<String> = cfg.registries.iter().map(|r| r.host.clone()).collect();
    let mirror = flags
        .one("mirror")?
        .map(str::to_string)
        .unwrap_or_else(|| doctor::mirror_from_listen(cfg.listen));
    let inputs = doctor::gather(
        Path::new(containerd_config),
        flags.one("hosts-dir")?.map(Path::new),
        &registries,
        &mirror,
    );
    let findings = doctor::diagnose(&inputs);
    print!("{}", doctor::render(&findings));
    Ok(doctor::exit_code(&findings))
}
