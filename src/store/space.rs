//! Room on the cache's file system: the free-space watermark a fill must
//! leave, and the pause after a disk-level write failure.

use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::FreeSpace;

/// How long the cache counts as unwritable after a write failed with
/// ENOSPC, EIO or EROFS, before a fill tries the disk again.
const DISK_BACKOFF: Duration = Duration::from_secs(10);

/// Why a fill cannot be cached; the blob streams through instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRoom {
    /// A recent write failure paused caching.
    WritesPaused,
    /// Taking the blob would go below `min_free_space`.
    LowDiskSpace,
    /// Creating the temp file failed.
    DiskError,
}

impl NoRoom {
    /// The `reason` label of `tender_passthrough_total`.
    pub fn label(self) -> &'static str {
        match self {
            NoRoom::WritesPaused => "disk_full",
            NoRoom::LowDiskSpace => "low_disk_space",
            NoRoom::DiskError => "disk_error",
        }
    }
}

pub struct Space {
    min_free: FreeSpace,
    failed_at: Mutex<Option<Instant>>,
}

impl Space {
    pub fn new(min_free: FreeSpace) -> Space {
        Space {
            min_free,
            failed_at: Mutex::new(None),
        }
    }

    pub fn writes_paused(&self) -> bool {
        let g = self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
        g.is_some_and(|t| t.elapsed() < DISK_BACKOFF)
    }

    pub fn note_write_failure(&self, e: &io::Error) {
        let disk_level = matches!(
            e.raw_os_error(),
            Some(libc::ENOSPC)
                | Some(libc::EDQUOT)
                | Some(libc::EROFS)
                | Some(libc::EIO)
                | Some(libc::EACCES)
        );
        if disk_level {
            *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
    }

    /// How many bytes short the file system at `root` is of taking `extra`
    /// more while keeping the watermark free; `None` if it has the room (or
    /// cannot be asked).
    pub fn deficit(&self, root: &Path, extra: u64) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(root).ok()?;
        let frag = st.fragment_size();
        let avail = st.blocks_available() * frag;
        let size = st.blocks() * frag;
        let min = match self.min_free {
            FreeSpace::Percent(p) => (size as f64 * p / 100.0) as u64,
            FreeSpace::Bytes(b) => b,
        };
        let need = min.saturating_add(extra);
        (avail < need).then(|| need - avail)
    }
}
