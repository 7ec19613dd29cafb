//! What a file's metadata says of its content, so that a change is seen
//! without reading the file: a write changes its size or change time, and
//! a replacement by rename (a Kubernetes ConfigMap or Secret volume swaps a
//! symlink) changes its inode.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A file's identity and the times and size its writes change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of `meta`.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The stamp of the file at `path` now (through symlinks), `None` when
    /// it cannot be looked at.
    pub fn at(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|meta| Self::of(&meta))
    }
}
