//! tender: a node-local pull-through cache for OCI images.
//!
//! A request flows one way: `api` (parse, validate) → `cache` (the facade
//! owning every cache policy) → `cache::inflight` (one fetch per key however
//! many ask) → `upstream` (the ordered upstreams of a registry) → `store`
//! (verified bytes on disk); in a cluster, `cluster` puts the peers that
//! own a key in front of the upstreams. `oci` is the shared vocabulary; `config` and
//! `metrics` are read by all; `server` runs listeners and background work;
//! `cli` is the command line. See docs/ARCHITECTURE.md.

pub mod api;
pub mod cache;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod metrics;
pub mod oci;
pub mod prefetch;
pub mod server;
pub mod store;
pub mod upstream;
