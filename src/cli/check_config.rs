//! `tender check-config`: validate a config with the parser `serve` uses.

use std::path::Path;

use super::CliError;
use crate::config::{Config, ConfigError};

pub fn run(path: Option<&Path>) -> Result<i32, CliError> {
    let origin = path.map_or("embedded default config".to_string(), |p| {
        p.display().to_string()
    });
    match Config::load(path) {
        Ok(c) => {
            println!(
                "{origin}: valid ({} registries, {} upstreams, cache {} bytes at {})",
                c.registries.len(),
                c.registries
                    .iter()
                    .map(|r| r.upstreams.len())
                    .sum::<usize>(),
                c.cache_max_size,
                c.cache_dir.display()
            );
            Ok(0)
        }
        Err(ConfigError::Invalid { origin, problems }) => {
            for p in &problems {
                println!("{origin}: {}: {}", p.key, p.message);
            }
            println!("{origin}: {} problem(s)", problems.len());
            Ok(1)
        }
        Err(e) => {
            println!("{e}");
            Ok(1)
        }
    }
}
