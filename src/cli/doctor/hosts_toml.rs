//! One hosts.toml, checked the way containerd's `parseHostsFile` reads it:
//! host order, capabilities, the URL each host key becomes, the fallback.

use toml::{Table, Value};

use super::containerd::{get_bool, one_line};
use super::Finding;

/// One hosts.toml, as containerd's `parseHostsFile` reads it.
pub(super) fn check_hosts_toml(
    registry: &str,
    path: &str,
    is_default: bool,
    text: &str,
    mirror: &str,
    rewrite: String,
) -> Finding {
    let table = match text.parse::<Table>() {
        Ok(t) => t,
        Err(e) => {
            return Finding::problem(
                format!(
                    "{registry}: {path} is not valid TOML ({}); containerd logs \"failed to decode\", ignores it and pulls from the origin",
                    one_line(&e.to_string())
                ),
                format!("fix or rewrite it (the old file is kept as a backup): {rewrite}"),
            )
        }
    };
    let host_table = table.get("host").and_then(Value::as_table);
    let ordered = host_keys_in_order(&table);
    // containerd rejects the whole file on a bad capability.
    let entries = ordered
        .iter()
        .map(|k| host_table.and_then(|h| h.get(k)).and_then(Value::as_table));
    for caps in entries
        .map(|t| t.and_then(|t| t.get("capabilities")))
        .chain(std::iter::once(table.get("capabilities")))
    {
        if let Err(e) = capabilities(caps) {
            return Finding::problem(
                format!("{registry}: {path}: {e}; containerd rejects the file and pulls {registry} from its origin"),
                format!("use only \"pull\", \"resolve\" and \"push\", or rewrite it: {rewrite}"),
            );
        }
    }
    let tender = endpoint(mirror, false);
    let position = ordered.iter().position(|key| {
        let entry = host_table
            .and_then(|h| h.get(key))
            .and_then(Value::as_table);
        let override_path = get_bool(entry, "override_path").unwrap_or(false);
        tender.is_some() && endpoint(key, override_path) == tender
    });
    let Some(position) = position else {
        let what = if ordered.is_empty() {
            format!("{registry}: {path} has no [host.\"...\"] entry, so containerd pulls {registry} from the server only")
        } else {
            format!(
                "{registry}: {path} sends pulls to {}, not to tender at {mirror}",
                ordered.join(", ")
            )
        };
        return Finding::problem(what, rewrite);
    };
    let key = &ordered[position];
    let entry = host_table
        .and_then(|h| h.get(key))
        .and_then(Value::as_table);
    let caps = capabilities(entry.and_then(|e| e.get("capabilities")))
        .ok()
        .flatten()
        .unwrap_or_else(|| vec!["pull".into(), "resolve".into(), "push".into()]);
    if !caps.iter().any(|c| c == "pull") {
        return Finding::problem(
            format!("{registry}: {path} lists tender without the \"pull\" capability, so containerd fetches nothing through it"),
            format!("set capabilities = [\"pull\", \"resolve\"] under [host.\"{key}\"], or rewrite it: {rewrite}"),
        );
    }
    let origin = crate::cli::hosts::origin_for(registry);
    let server = table.get("server").and_then(Value::as_str);
    let fallback = server.map_or(origin.clone(), str::to_string);
    if let Some(server) = server {
        let server_host = host_of(server);
        let accepted = [host_of(&origin), Some(registry.to_ascii_lowercase())];
        if server_host.is_none() || !accepted.contains(&server_host) {
            let what = format!("{registry}: {path} falls back to server {server:?}, not to {registry}'s origin {origin}");
            return if is_default {
                Finding::problem(
                    format!("{what}; a server in _default/hosts.toml applies to every registry"),
                    format!(
                        "remove `server` from _default/hosts.toml (containerd then falls back to each registry's own origin), or give {registry} its own file: {}",
                        rewrite
                    ),
                )
            } else {
                Finding::warn(
                    what,
                    format!("fine if deliberate; otherwise set server = \"{origin}\""),
                )
            };
        }
    }
    let via = if is_default { " (via _default)" } else { "" };
    let mut notes = Vec::new();
    if position > 0 {
        notes.push(format!(
            "containerd tries {} first",
            ordered[..position].join(", ")
        ));
    }
    if !caps.iter().any(|c| c == "resolve") {
        notes.push("without \"resolve\" tags are resolved at the origin and only content by digest comes through tender".to_string());
    }
    if notes.is_empty() {
        Finding::ok(format!(
            "{registry}: {path}{via} sends pulls to {} first, falls back to {fallback}",
            mirror.trim_end_matches('/')
        ))
    } else {
        Finding::warn(
            format!("{registry}: {path}{via} uses tender, but {}", notes.join("; ")),
            format!("put [host.\"{key}\"] first with capabilities = [\"pull\", \"resolve\"], or rewrite it: {rewrite}"),
        )
    }
}

/// `capabilities` as containerd accepts it: absent, or a list of
/// pull/resolve/push.
pub(super) fn capabilities(value: Option<&Value>) -> Result<Option<Vec<String>>, String> {
    let Some(value) = value else { return Ok(None) };
    let Some(list) = value.as_array() else {
        return Err("capabilities is not a list".to_string());
    };
    let mut caps = Vec::new();
    for c in list {
        let Some(c) = c.as_str() else {
            return Err(format!("capability {c:?} is not a string"));
        };
        let c = c.to_ascii_lowercase();
        if !matches!(c.as_str(), "pull" | "resolve" | "push") {
            return Err(format!("unknown capability {c:?}"));
        }
        caps.push(c);
    }
    Ok(Some(caps))
}

/// The `host` keys in file order, as containerd's `getSortedHosts` sorts
/// them (by the line each host's table starts on). The toml crate keeps
/// document order (`preserve_order`), which is the same order.
pub(super) fn host_keys_in_order(table: &Table) -> Vec<String> {
    table
        .get("host")
        .and_then(Value::as_table)
        .map(|h| h.keys().cloned().collect())
        .unwrap_or_default()
}

/// The base URL containerd requests for a host key or server: `https://` is
/// assumed without a scheme, and `/v2` is appended unless it is there or
/// `override_path` is set. Lowercase, no trailing slash.
pub(super) fn endpoint(key: &str, override_path: bool) -> Option<String> {
    let key = key.trim();
    let with_scheme = if key.starts_with("http") {
        key.to_string()
    } else {
        format!("https://{key}")
    };
    let url = reqwest::Url::parse(&with_scheme).ok()?;
    let host = url.host_str()?.to_ascii_lowercase();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let mut path = url.path().trim_end_matches('/').to_string();
    if !override_path && !path.ends_with("/v2") {
        path.push_str("/v2");
    }
    Some(format!("{}://{host}{port}{path}", url.scheme()))
}

/// `host[:port]` of a URL or bare host, lowercase.
pub(super) fn host_of(url: &str) -> Option<String> {
    let url = url.trim();
    let with_scheme = if url.starts_with("http") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let u = reqwest::Url::parse(&with_scheme).ok()?;
    let host = u.host_str()?.to_ascii_lowercase();
    Some(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    })
}
