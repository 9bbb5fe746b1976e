//! Client configuration for nodes: containerd `hosts.toml` files (written
//! with backups, restorable), a K3s `registries.yaml` and a Docker
//! `daemon.json` snippet.

use std::io;
use std::path::{Path, PathBuf};

/// First line of every file tender writes, so it can recognise its own.
const MARK: &str = "# Written by `tender containerd-hosts`";

/// The origin containerd falls back to when tender cannot answer.
pub use crate::oci::name::origin_url as origin_for;

pub fn hosts_toml(host: &str, mirror: &str) -> String {
    format!(
        "{MARK}: pull {host} through the node-local tender\n\
         # mirror; containerd falls back to the origin (server) if tender cannot answer.\n\
         server = \"{origin}\"\n\
         \n\
         [host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        origin = origin_for(host)
    )
}

/// K3s renders this into containerd hosts.toml; K3s keeps each registry's
/// default endpoint as the last fallback.
pub fn k3s_registries_yaml(hosts: &[String], mirror: &str) -> String {
    let mut s = String::from("# /etc/rancher/k3s/registries.yaml: pull through the node-local tender mirror.\nmirrors:\n");
    for h in hosts {
        s.push_str(&format!(
            "  \"{h}\":\n    endpoint:\n      - \"{mirror}\"\n"
        ));
    }
    s
}

/// Docker's `registry-mirrors` apply to docker.io only.
pub fn docker_daemon_json(mirror: &str) -> String {
    format!("{{\n  \"registry-mirrors\": [\"{mirror}\"]\n}}\n")
}

fn backups(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if name == "hosts.toml.tender-bak" {
            out.push((0, e.path()));
        } else if let Some(n) = name
            .strip_prefix("hosts.toml.tender-bak.")
            .and_then(|n| n.parse().ok())
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes `<dir>/<host>/hosts.toml` atomically. A different existing file
/// is first kept as `hosts.toml.tender-bak` (`.tender-bak.N` if taken);
/// an identical one is left alone.
pub fn install(dir: &Path, host: &str, mirror: &str) -> io::Result<String> {
    let hdir = dir.join(host);
    let path = hdir.join("hosts.toml");
    let text = hosts_toml(host, mirror);
    std::fs::create_dir_all(&hdir)?;
    let mut saved = None;
    match std::fs::read(&path) {
        Ok(old) if old == text.as_bytes() => return Ok("unchanged".into()),
        Ok(_) => {
            let next = backups(&hdir)?.last().map_or(0, |(n, _)| n + 1);
            let b = if next == 0 {
                hdir.join("hosts.toml.tender-bak")
            } else {
                hdir.join(format!("hosts.toml.tender-bak.{next}"))
            };
            std::fs::copy(&path, &b)?;
            saved = Some(b);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let tmp = hdir.join(".hosts.toml.tender-tmp");
    std::fs::write(&tmp, &text)?;
    std::fs::rename(&tmp, &path)?;
    Ok(match saved {
        Some(b) => format!("written (previous saved as {})", b.display()),
        None => "written".into(),
    })
}

/// Undoes [`install`]: puts the newest backup back byte for byte, or, with
/// no backup, removes a file tender wrote. Anything else is left alone.
pub fn restore(dir: &Path, host: &str) -> io::Result<String> {
    let hdir = dir.join(host);
    let path = hdir.join("hosts.toml");
    if let Some((_, b)) = backups(&hdir)?.pop() {
        let tmp = hdir.join(".hosts.toml.tender-tmp");
        std::fs::copy(&b, &tmp)?;
        std::fs::rename(&tmp, &path)?;
        std::fs::remove_file(&b)?;
        return Ok(format!("restored from {}", b.display()));
    }
    match std::fs::read(&path) {
        Ok(text) if text.starts_with(MARK.as_bytes()) => {
            std::fs::remove_file(&path)?;
            let _ = std::fs::remove_dir(&hdir); // only if now empty
            Ok("removed (tender wrote it; there was nothing before)".into())
        }
        Ok(_) => Ok("left alone (not written by tender)".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok("nothing to restore".into()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tender-hosts-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn install_then_restore_puts_the_previous_file_back_byte_for_byte() {
        let d = tempdir("roundtrip");
        let mine = b"server = \"https://mine.example\"\r\n# odd bytes \xff\n".to_vec();
        std::fs::create_dir_all(d.join("quay.io")).unwrap();
        std::fs::write(d.join("quay.io/hosts.toml"), &mine).unwrap();
        install(&d, "quay.io", "http://127.0.0.1:5050").unwrap();
        assert_eq!(
            install(&d, "quay.io", "http://127.0.0.1:5050").unwrap(),
            "unchanged"
        );
        assert!(std::fs::read_to_string(d.join("quay.io/hosts.toml"))
            .unwrap()
            .starts_with(MARK));
        restore(&d, "quay.io").unwrap();
        assert_eq!(std::fs::read(d.join("quay.io/hosts.toml")).unwrap(), mine);
        assert!(backups(&d.join("quay.io")).unwrap().is_empty());
        // A host tender created from nothing is removed again.
        install(&d, "ghcr.io", "http://127.0.0.1:5050").unwrap();
        restore(&d, "ghcr.io").unwrap();
        assert!(!d.join("ghcr.io").exists());
        // An operator's file with no backup is never touched.
        assert_eq!(
            restore(&d, "quay.io").unwrap(),
            "left alone (not written by tender)"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn k3s_and_docker_snippets_follow_their_documented_shapes() {
        let y = k3s_registries_yaml(
            &["docker.io".into(), "quay.io".into()],
            "http://127.0.0.1:5050",
        );
        assert!(
            y.contains(
                "mirrors:\n  \"docker.io\":\n    endpoint:\n      - \"http://127.0.0.1:5050\"\n"
            ),
            "{y}"
        );
        let j: serde_json::Value =
            serde_json::from_str(&docker_daemon_json("http://127.0.0.1:5050")).unwrap();
        assert_eq!(j["registry-mirrors"][0], "http://127.0.0.1:5050");
    }
}
