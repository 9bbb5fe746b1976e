//! Platforms: the one this node runs.

/// The node's platform in OCI terms (`os`, `architecture`).
pub fn node_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    ("linux", arch)
}
