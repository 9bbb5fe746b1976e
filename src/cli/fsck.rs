//! `tender fsck`: re-hash every cached object, remove and report the bad ones.

use std::path::Path;
use std::sync::Arc;

use super::CliError;
use crate::store::Store;

pub fn run(dir: &Path) -> Result<i32, CliError> {
    if !dir.join("blobs").is_dir() && !dir.join("manifests").is_dir() {
        return Err(CliError::Failed(format!(
            "{} is not a tender cache directory",
            dir.display()
        )));
    }
    let metrics = Arc::new(crate::metrics::Metrics::new());
    // Shared: a running tender's fills own the temp files.
    let store =
        Store::open_shared(dir, u64::MAX, metrics).map_err(|e| CliError::Failed(e.to_string()))?;
    let tally = store
        .fsck(|kind, d, why| println!("BAD {} {d}: {why}; removed", kind.name()))
        .map_err(|e| CliError::Failed(e.to_string()))?;
    println!("fsck: {} ok, {} bad", tally.ok, tally.bad);
    Ok(i32::from(tally.bad > 0))
}
