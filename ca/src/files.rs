//! Reading and writing PEM files; private keys are written with mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::authority::CaError;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads a text file.
pub fn read_text(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), CaError> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    // Replaced in one step, so a watcher never reads half a file.
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Writes a private key (or token file): readable by the owner only.
pub fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    write(path, text, 0o600)
}

/// Writes a certificate or other public file.
pub fn write_public(path: &Path, text: &str) -> Result<(), CaError> {
    write(path, text, 0o644)
}
