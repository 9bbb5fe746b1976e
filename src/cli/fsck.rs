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
    // Refused while a tender serves this cache: it could re-commit an object
    // between our read and our removal, or evict one we are reading.
    let store = Store::open(dir, u64::MAX, metrics).map_err(|e| CliError::Failed(e.to_string()))?;
    let tally = store
        .fsck(|kind, d, why| println!("BAD {} {d}: {why}; removed", kind.name()))
        .map_err(|e| CliError::Failed(e.to_string()))?;
    println!("fsck: {} ok, {} bad", tally.ok, tally.bad);
    Ok(i32::from(tally.bad > 0))
}
