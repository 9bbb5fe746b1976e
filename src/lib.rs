//! tender: a node-local pull-through cache for OCI images.

pub mod api;
pub mod cache;
pub mod cli;
pub mod config;
pub mod digest;
pub mod doctor;
pub mod hosts;
pub mod metrics;
pub mod prefetch;
pub mod server;
pub mod upstream;
