//! A real `dnsmasq` (Debian) inside a network namespace, serving A records
//! from a hosts file that tests rewrite (SIGHUP makes dnsmasq re-read it):
//! the records of a headless Service, as a cluster's DNS would serve them.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::netns::Netns;
use crate::process::{require_tools, signal, tail_file, wait_until};

pub struct Dnsmasq {
    hosts: PathBuf,
    log: PathBuf,
    child: Child,
    /// The namespace it serves.
    netns: String,
}

impl Dnsmasq {
    /// Starts dnsmasq in `netns` on `listen`:53, answering only from its
    /// own hosts file (no upstream resolvers, no /etc/hosts), with TTL 0,
    /// and makes it the namespace's resolver.
    pub fn start_in(netns: &Netns, dir: &Path, listen: Ipv4Addr) -> Dnsmasq {
        require_tools(&["dnsmasq", "getent"]);
        fs::create_dir_all(dir).unwrap();
        let hosts = dir.join("records");
        // Written before dnsmasq starts: a SIGHUP before it sets its
        // handlers would kill it.
        fs::write(&hosts, "127.0.0.9 dnsmasq-ready.test\n").unwrap();
        let log = dir.join("dnsmasq.log");
        let child = netns
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--port=53",
                "--user=root",
                "--pid-file=",
                "--log-queries",
            ])
            .arg(format!("--listen-address={listen}"))
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--log-facility={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq");
        netns.set_nameserver(listen);
        let d = Dnsmasq {
            hosts,
            log,
            child,
            netns: netns.name.clone(),
        };
        let ready = wait_until(Duration::from_secs(10), || {
            d.lookup("dnsmasq-ready.test") == vec![Ipv4Addr::new(127, 0, 0, 9)]
        });
        assert!(
            ready,
            "dnsmasq did not answer:\n{}",
            tail_file(&d.log, 4000)
        );
        d
    }

    /// Makes `name` resolve to exactly `ips` (none: NXDOMAIN), from now on.
    pub fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        let mut text = fs::read_to_string(&self.hosts).unwrap_or_default();
        text = text
            .lines()
            .filter(|l| l.split_whitespace().nth(1) != Some(name))
            .map(|l| format!("{l}\n"))
            .collect();
        for ip in ips {
            text.push_str(&format!("{ip} {name}\n"));
        }
        fs::write(&self.hosts, text).unwrap();
        assert!(signal(self.child.id(), "HUP"), "SIGHUP dnsmasq");
    }

    /// What `name` resolves to in the namespace now (getent, through the
    /// namespace's resolv.conf; `ahostsv4` asks with AI_ADDRCONFIG, so the
    /// namespace needs an IPv4 address besides loopback, which
    /// [`Netns::create`] gives it).
    pub fn lookup(&self, name: &str) -> Vec<Ipv4Addr> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.netns, "getent", "ahostsv4", name])
            .output()
            .expect("spawn getent");
        let mut ips: Vec<Ipv4Addr> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
