//! The checks: every problem with its fix, in the order a reader fixes
//! things: containerd's config, the hosts files, tender itself, then
//! settings that route around hosts.toml.

use super::containerd::{candidate_dirs, split_roots, table_name, CriConfig, Node, Reads, V2_1};
use super::hosts_toml::{check_hosts_toml, endpoint};
use super::{FileState, Finding, HostDir, Inputs, CERTS_D, DEFAULT_CONFIG_PATH_2_2, V3_IMAGES};

/// Every check, in order.
pub fn diagnose(inputs: &Inputs) -> Vec<Finding> {
    let node = Node::new(inputs);
    let mut out = Vec::new();
    config_file_findings(inputs, &node, &mut out);
    config_path_findings(inputs, &node, &mut out);
    hosts_findings(inputs, &node, &mut out);
    out.push(match &inputs.tender_probe {
        Ok(()) => Finding::ok(format!(
            "tender answers GET {}/v2/ (Docker-Distribution-Api-Version: registry/2.0)",
            inputs.mirror.trim_end_matches('/')
        )),
        Err(e) => Finding::problem(
            format!("tender does not answer at {}: {e}", inputs.mirror),
            format!(
                "start tender (`tender serve`, or check its DaemonSet pod) and make sure it listens where {} points; \
                 meanwhile containerd falls back to the origins, so pods start but nothing is cached",
                inputs.mirror
            ),
        ),
    });
    pull_path_findings(inputs, &node, &mut out);
    pinned_findings(inputs, &mut out);
    out
}

/// One finding per pinned image: complete on disk, incomplete (what is
/// missing), or not pinned (why).
pub(super) fn pinned_findings(inputs: &Inputs, out: &mut Vec<Finding>) {
    let report = match &inputs.pinned {
        None => return,
        Some(Err(e)) => {
            out.push(Finding::warn(
                format!("cannot read tender's pinned images: {e}"),
                "check tender's log; `curl <mirror>/pinned` shows the same report",
            ));
            return;
        }
        Some(Ok(r)) => r,
    };
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    for img in &report.images {
        let size = format!(
            "{:.1} MiB, {}/{} objects",
            mib(img.bytes),
            img.objects_stored,
            img.objects
        );
        out.push(match (&img.problem, img.pinned, img.complete) {
            (Some(p), false, _) => Finding::problem(
                format!("pinned image {} is not pinned: {p}", img.image),
                format!(
                    "raise prefetch.pinned_max_size (now {:.1} MiB) or pin fewer images, then reload tender (SIGHUP)",
                    mib(report.pinned_max_bytes)
                ),
            ),
            (_, true, true) => Finding::ok(format!(
                "pinned image {} is complete on disk ({size})",
                img.image
            )),
            (problem, _, _) => Finding::warn(
                format!(
                    "pinned image {} is not complete on disk ({size}; missing {}){}",
                    img.image,
                    img.missing.join(", "),
                    problem.as_ref().map(|p| format!("; {p}")).unwrap_or_default()
                ),
                format!(
                    "tender fetches it at start and every prefetch.interval; `tender prefetch {}` fetches it now (its upstreams must be reachable)",
                    img.image
                ),
            ),
        });
    }
    if !report.images.is_empty() {
        out.push(Finding::ok(format!(
            "pinned content takes {:.1} MiB of pinned_max_size {:.1} MiB",
            mib(report.pinned_bytes),
            mib(report.pinned_max_bytes)
        )));
    }
}

pub(super) fn config_file_findings(inputs: &Inputs, node: &Node, out: &mut Vec<Finding>) {
    let label = &inputs.containerd_config_label;
    if node.version.is_none() {
        out.push(Finding::warn(
            "containerd's version is unknown (`containerd --version` did not run here); version-specific checks below are hedged",
            "run `tender doctor` on the node itself, with containerd on PATH",
        ));
    }
    if let Some(f) = &node.config_error {
        out.push(f.clone());
        return;
    }
    let Some(cri) = &node.cri else { return };
    match (&inputs.containerd_config, cri.file_version) {
        (FileState::Missing, _) => out.push(Finding::ok(format!(
            "{label} does not exist: {} runs on its built-in defaults",
            node.version_text()
        ))),
        (_, Some(v)) => out.push(Finding::ok(format!(
            "{} reads {label} (config version {v})",
            node.version_text()
        ))),
        (_, None) if cri.has_plugins => out.push(Finding::warn(
            format!("{label} has no `version` line, so containerd reads it as the old version 1 format (which containerd 2.x no longer supports)"),
            "put `version = 2` (containerd 1.x) or `version = 3` (containerd 2.x) at the top, with the matching plugin names",
        )),
        (_, None) => out.push(Finding::ok(format!(
            "{} reads {label} (no settings that matter here)",
            node.version_text()
        ))),
    }
    if !cri.imports.is_empty() {
        out.push(Finding::warn(
            format!(
                "{label} imports {}; settings in imported files are not checked here",
                cri.imports.join(", ")
            ),
            "check those files for registry, config_path and use_local_image_pull settings too (`containerd config dump` shows the merged result)",
        ));
    }
}

pub(super) fn config_path_snippet(node: &Node, dir: &str) -> String {
    format!(
        "in the containerd config, under {}, set\n  config_path = \"{dir}\"\nthen restart containerd",
        node.registry_table()
    )
}

pub(super) fn config_path_findings(inputs: &Inputs, node: &Node, out: &mut Vec<Finding>) {
    let Some(cri) = &node.cri else { return };
    let version = node.version_text();
    let mirrors_set = !cri.mirrors.is_empty();
    let hosts_cmd = format!(
        "tender containerd-hosts --mirror {} --dir {CERTS_D}",
        inputs.mirror
    );

    if let Some(misplaced) = &cri.misplaced {
        out.push(Finding::problem(
            format!(
                "registry settings are under {misplaced}, which {version} does not read with this config version{}",
                match cri.file_version {
                    Some(v) => format!(" ({v})"),
                    None => String::new(),
                }
            ),
            format!(
                "move them to {}, then restart containerd",
                node.registry_table()
            ),
        ));
    }

    match &node.reads {
        Reads::Dirs { path, builtin: false } => {
            let dirs = split_roots(path);
            let note = if dirs.len() > 1 {
                format!(" ({} directories, searched in this order)", dirs.len())
            } else {
                String::new()
            };
            out.push(Finding::ok(format!(
                "containerd config_path = \"{path}\"{note}, in {}",
                node.registry_table()
            )));
        }
        Reads::Dirs { path, builtin: true } => out.push(Finding::warn(
            format!("config_path is not set; {version} uses its built-in default \"{path}\""),
            format!(
                "set it explicitly to one directory (that also avoids the transfer-service problem below):\n{}",
                config_path_snippet(node, CERTS_D)
            ),
        )),
        Reads::Nothing if mirrors_set => {} // the mirrors finding says it
        Reads::Nothing if cri.misplaced.is_some() => {}
        Reads::Nothing => out.push(Finding::problem(
            format!("config_path is not set: {version} reads no hosts.toml, so every pull goes straight to the registries"),
            format!("{}\nand write the hosts files: {hosts_cmd}", config_path_snippet(node, CERTS_D)),
        )),
        Reads::MaybeBuiltin if cri.misplaced.is_some() => {}
        Reads::MaybeBuiltin => out.push(Finding::problem(
            format!(
                "config_path is not set: containerd 1.x to 2.1 then read no hosts.toml; 2.2+ falls back to \"{DEFAULT_CONFIG_PATH_2_2}\", \
                 which its default (transfer service) pull cannot use"
            ),
            format!("{}\nand write the hosts files: {hosts_cmd}", config_path_snippet(node, CERTS_D)),
        )),
        Reads::Unknown => {}
    }

    if mirrors_set {
        out.push(mirrors_finding(inputs, node, cri));
    }

    let explicit = matches!(node.reads, Reads::Dirs { builtin: false, .. });
    if explicit && !cri.tls_configs.is_empty() {
        let what = format!(
            "registry.configs.<host>.tls is set for {} together with config_path: containerd 1.x refuses this \
             (\"`configs.tls` cannot be set when `config_path` is provided\") and the CRI plugin does not load",
            cri.tls_configs.join(", ")
        );
        let fix = "move the TLS settings into that registry's hosts.toml (ca, client, skip_verify) and delete the configs.<host>.tls tables";
        match node.version {
            Some(v) if v.0 >= 2 => {}
            Some(_) => out.push(Finding::problem(what, fix)),
            None => out.push(Finding::warn(what, fix)),
        }
    }
}

pub(super) fn mirrors_finding(inputs: &Inputs, node: &Node, cri: &CriConfig) -> Finding {
    let table = node.registry_table();
    let fix = format!(
        "delete the {}.mirrors] tables (hosts.toml files replace them), set config_path, restart containerd, and write the hosts files:\n  \
         tender containerd-hosts --mirror {} --dir {CERTS_D}",
        table.trim_end_matches(']'),
        inputs.mirror
    );
    if matches!(node.reads, Reads::Dirs { builtin: false, .. }) {
        return Finding::problem(
            format!(
                "both registry.mirrors and config_path are set in {table}: containerd refuses this combination \
                 (\"`mirrors` cannot be set when `config_path` is provided\"), the CRI plugin does not load, and the node cannot pull or start pods"
            ),
            fix,
        );
    }
    let tender = endpoint(&inputs.mirror, false);
    let endpoints_for = |registry: &str| {
        cri.mirrors
            .iter()
            .find(|(h, _)| h == registry)
            .or_else(|| cri.mirrors.iter().find(|(h, _)| h == "*"))
            .map(|(_, e)| e.as_slice())
            .unwrap_or_default()
    };
    let bypassing: Vec<&str> = inputs
        .registries
        .iter()
        .filter(|r| {
            !endpoints_for(r)
                .iter()
                .any(|e| tender.is_some() && endpoint(e, false) == tender)
        })
        .map(String::as_str)
        .collect();
    if bypassing.is_empty() {
        Finding::warn(
            "registry.mirrors (deprecated) sends pulls to tender; containerd reads no hosts.toml while it is set",
            fix,
        )
    } else {
        Finding::problem(
            format!(
                "registry.mirrors (deprecated) is set, so containerd reads no hosts.toml, and it does not send {} to tender",
                bypassing.join(", ")
            ),
            fix,
        )
    }
}

pub(super) fn hosts_findings(inputs: &Inputs, node: &Node, out: &mut Vec<Finding>) {
    if let (Some(dir), Reads::Dirs { path, .. }) = (&inputs.hosts_dir_override, &node.reads) {
        if !split_roots(path).contains(dir) {
            out.push(Finding::warn(
                format!("checking {dir} as asked, but containerd reads \"{path}\""),
                "pass one of containerd's directories to --hosts-dir, or change config_path",
            ));
        }
    }
    let caveat = match (&inputs.hosts_dir_override, &node.reads) {
        (Some(_), _) | (None, Reads::Dirs { .. }) => "",
        (None, Reads::Nothing) => " (containerd does not read this directory yet, see above)",
        (None, Reads::MaybeBuiltin) => " (read only by containerd 2.2+ while config_path is unset)",
        (None, Reads::Unknown) => " (whether containerd reads it is unknown, see above)",
    };
    for registry in &inputs.registries {
        let mut f = registry_finding(inputs, node, registry);
        f.what.push_str(caveat);
        out.push(f);
    }
}

/// The directory containerd uses for `registry`: the first candidate that
/// exists, root by root.
pub(super) fn host_dir_for<'a>(
    inputs: &'a Inputs,
    roots: &[String],
    registry: &str,
) -> Option<&'a HostDir> {
    roots.iter().find_map(|root| {
        candidate_dirs(registry).into_iter().find_map(|name| {
            inputs
                .host_dirs
                .iter()
                .find(|d| d.root == *root && d.name == name)
        })
    })
}

pub(super) fn registry_finding(inputs: &Inputs, node: &Node, registry: &str) -> Finding {
    let roots = &node.roots;
    let first_root = roots.first().map_or(CERTS_D, String::as_str);
    let write_cmd = |root: &str| {
        format!(
            "tender containerd-hosts --mirror {} --dir {root} --registry {registry}",
            inputs.mirror
        )
    };
    let Some(dir) = host_dir_for(inputs, roots, registry) else {
        return Finding::problem(
            format!(
                "{registry}: no hosts.toml for it under {} (looked for {}): containerd pulls it straight from the origin",
                roots.join(", "),
                candidate_dirs(registry)
                    .iter()
                    .map(|n| format!("{n}/"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            write_cmd(first_root),
        );
    };
    let path = format!("{}/{}/hosts.toml", dir.root.trim_end_matches('/'), dir.name);
    let rewrite = if dir.name == registry || dir.name == "_default" {
        write_cmd(&dir.root)
    } else {
        format!(
            "containerd looks in {}/{}/ before {}/{registry}/: put a hosts.toml pointing at {} there, or remove that directory and run {}",
            dir.root, dir.name, dir.root, inputs.mirror, write_cmd(&dir.root)
        )
    };
    let text = match &dir.hosts_toml {
        FileState::Present(text) => text,
        FileState::Missing => {
            return Finding::problem(
                format!(
                    "{registry}: containerd uses {}/{}/ but it has no hosts.toml (only certificates are read there), so {registry} is pulled from its origin",
                    dir.root, dir.name
                ),
                rewrite,
            )
        }
        FileState::Unreadable(e) => {
            return Finding::problem(format!("{registry}: cannot read {path}: {e}"), rewrite)
        }
    };
    check_hosts_toml(
        registry,
        &path,
        dir.name == "_default",
        text,
        &inputs.mirror,
        rewrite,
    )
}

pub(super) fn pull_path_findings(inputs: &Inputs, node: &Node, out: &mut Vec<Finding>) {
    let Some(cri) = &node.cri else { return };
    let maybe_2_1 = match node.version {
        Some(v) => v >= V2_1,
        None => cri.file_version.unwrap_or(0) >= 3 || cri.use_local_image_pull.is_some(),
    };
    let hedge = if node.version.is_none() {
        "if containerd is 2.1 or newer, "
    } else {
        ""
    };
    if cri.discard_unpacked_layers {
        let mut what = "discard_unpacked_layers = true: containerd deletes compressed layers from its content store after unpacking; \
             pulls still go through hosts.toml, and a layer this node discarded comes back from tender's cache on the next pull"
            .to_string();
        if maybe_2_1 {
            what.push_str(&format!(
                " ({hedge}it also turns off the transfer service for CRI pulls)"
            ));
        }
        out.push(Finding::ok(what));
    }
    if !maybe_2_1 {
        return;
    }
    let reasons = cri.local_pull_reasons();
    if !reasons.is_empty() {
        out.push(Finding::ok(format!(
            "{hedge}CRI pulls use containerd's local resolver ({}), which searches every config_path directory: hosts.toml applies",
            reasons.join(", ")
        )));
        return;
    }
    let path = match &node.reads {
        Reads::Dirs { path, .. } => path,
        // config_path unset or unknown: already reported above.
        _ => return,
    };
    let roots = split_roots(path);
    if roots.len() > 1 {
        let keep = roots
            .iter()
            .find(|r| inputs.host_dirs.iter().any(|d| &d.root == *r))
            .unwrap_or(&roots[0]);
        let what = format!(
            "{hedge}CRI pulls go through containerd's transfer service, which takes config_path \"{path}\" as ONE directory, \
             finds no hosts.toml and pulls straight from the origins (containerd issues #12415, #12636)"
        );
        let fix = format!(
            "either set config_path = \"{keep}\" (a single directory) under {}, or set use_local_image_pull = true under {}; then restart containerd",
            node.registry_table(),
            table_name(V3_IMAGES, None)
        );
        out.push(if node.version.is_some() {
            Finding::problem(what, fix)
        } else {
            Finding::warn(what, fix)
        });
    } else {
        out.push(Finding::ok(format!(
            "{hedge}CRI pulls go through containerd's transfer service, which uses config_path as its hosts directory: hosts.toml applies"
        )));
    }
}
