//! Test support for tender's integration tests and benches.
//!
//! - [`fake`]: an in-process fake registry with request counters and fault
//!   injection, and a fake forward proxy;
//! - [`daemon`]: tender itself, in-process, on a free port;
//! - [`tender`]: the real `tender` binary as a child process;
//! - [`registry`], [`containerd`], [`docker`], [`image`]: drivers for real
//!   peers from Debian (distribution 2.8, containerd + ctr, Docker Engine,
//!   skopeo) and OCI images generated for them;
//! - [`faulty`]: upstreams dead below HTTP (refusing, stalling);
//! - [`cluster`]: node configs for the cluster tier;
//! - [`netns`], [`dns`]: network namespaces with shaped links, and a real
//!   dnsmasq, for multi-node (cluster) tests;
//! - [`prometheus`]: a real Prometheus server and its query API;
//! - [`pull`]: a strict image puller (one GET per blob, every byte checked);
//! - [`process`], [`http`], [`certs`], [`rng`]: tools, temp dirs, a blocking
//!   HTTP client, test certificates, the one seeded PRNG;
//! - [`bench`]: wrk, nginx and RSS helpers for the benches.
//!
//! Everything listens on loopback, or in network namespaces the tests make.

pub mod bench;
pub mod certs;
pub mod cluster;
pub mod containerd;
pub mod daemon;
pub mod dns;
pub mod docker;
pub mod fake;
pub mod faulty;
pub mod http;
pub mod image;
pub mod netns;
pub mod process;
pub mod prometheus;
pub mod pull;
pub mod registry;
pub mod rng;
pub mod tender;
