//! sha256 verification of model files against the checksums in `config.json`.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::FileEntry;
use crate::error::{Error, Result};

/// Hex sha256 of a file, streamed in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks size then sha256 of `path` against its config entry.
pub fn verify(path: &Path, entry: &FileEntry) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let actual = if meta.len() != entry.bytes {
        format!("(size {} bytes, expected {})", meta.len(), entry.bytes)
    } else {
        sha256_file(path)?
    };
    if actual != entry.sha256 {
        return Err(Error::Checksum { path: path.to_path_buf(), expected: entry.sha256.clone(), actual });
    }
    log::debug!("verified sha256 of {}", path.display());
    Ok(())
}
