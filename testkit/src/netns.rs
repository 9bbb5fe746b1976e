//! Network namespaces for multi-node tests (root only): a namespace joined
//! to the host by a veth pair on its own /24, whose link can be shaped with
//! `tc` (a WAN in front of a registry) and which can have its own resolver
//! (`ip netns exec` bind-mounts `/etc/netns/<name>/resolv.conf` over
//! `/etc/resolv.conf`). Drop deletes the namespace, its veth pair and its
//! `/etc/netns` directory.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::process::require_tools;

pub struct Netns {
    pub name: String,
    /// The host's end of the veth pair.
    pub host_ip: Ipv4Addr,
    /// The namespace's end.
    pub ns_ip: Ipv4Addr,
    /// The namespace-side interface (shaped by [`Netns::shape`]).
    ns_if: String,
}

/// Fails the test with the command's output unless it succeeds.
fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// Panics unless the test runs as root: multi-node tests need network
/// namespaces, and must fail rather than skip where they cannot run.
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "this test needs root (network namespaces); run it as scripts/test does in CI"
    );
}

impl Netns {
    /// A new namespace with loopback up and a veth pair to the host:
    /// `10.<pid-derived>.<n>.1` on the host, `.2` inside.
    pub fn create() -> Netns {
        require_root();
        require_tools(&["ip", "tc"]);
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        remove_stale();
        let name = format!("tnd{pid}-{n}");
        let tag = format!("{:x}{n}", pid % 0x10000);
        let (host_if, ns_if) = (format!("th{tag}"), format!("tn{tag}"));
        let b = 64 + (pid % 128) as u8;
        let c = (n % 250) as u8 + 1;
        let host_ip = Ipv4Addr::new(10, b, c, 1);
        let ns_ip = Ipv4Addr::new(10, b, c, 2);
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name,
            host_ip,
            ns_ip,
            ns_if,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns.ns_if,
        ]);
        ip(&["link", "set", &ns.ns_if, "netns", &ns.name]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ns.ip(&["addr", "add", &format!("{ns_ip}/24"), "dev", &ns.ns_if]);
        ns.ip(&["link", "set", &ns.ns_if, "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.name, "ip"];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// `program` to be run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Shapes what leaves the namespace over its veth (what a server inside
    /// sends to the host) to `mbit` Mbit/s, like a WAN link shared by every
    /// node behind it: a token bucket (`tbf`; kernels without `netem`
    /// have it too), with a burst of 4 ms of traffic.
    pub fn shape(&self, mbit: u32) {
        let burst = (u64::from(mbit) * 1_000_000 / 8 / 250).max(64 << 10);
        run(self.command("tc").args([
            "qdisc",
            "replace",
            "dev",
            &self.ns_if,
            "root",
            "tbf",
            "rate",
            &format!("{mbit}mbit"),
            "burst",
            &burst.to_string(),
            "latency",
            "50ms",
        ]));
    }

    /// Makes processes started with [`Netns::command`] resolve names with
    /// `nameserver`.
    pub fn set_nameserver(&self, nameserver: Ipv4Addr) {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:1 attempts:2\n"),
        )
        .unwrap();
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }
}

/// Deletes the namespaces of test processes that are gone (killed before
/// their drop ran), which could otherwise clash with new ones.
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix("tnd").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(name));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end, and with it the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}
