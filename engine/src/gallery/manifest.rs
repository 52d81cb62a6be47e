//! The gallery folder's manifest: which segment files are live, their tombstones, and the
//! watermark. Replaced atomically (temp file, fsync, rename, fsync folder); never edited.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::GalleryError;
use super::writer::rename_durably;

/// File name of the manifest inside a gallery folder.
pub const MANIFEST_FILE: &str = "MANIFEST.json";
/// Manifest format version.
const MANIFEST_VERSION: u32 = 1;

/// The manifest's content.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub(crate) version: u32,
    pub(crate) dim: usize,
    /// Every template with an id up to this is contained in the listed segments.
    pub(crate) watermark: u64,
    /// Number for the next segment file.
    pub(crate) next_segment: u64,
    pub(crate) segments: Vec<SegmentRecord>,
}

/// One live segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SegmentRecord {
    /// File name inside the folder.
    pub(crate) file: String,
    /// Rows in the file (checked at open).
    pub(crate) rows: usize,
    /// Row numbers that are tombstoned.
    pub(crate) deleted: Vec<u32>,
}

impl Manifest {
    /// An empty manifest for `dim`.
    pub(crate) fn empty(dim: usize) -> Self {
        Self {
            version: MANIFEST_VERSION,
            dim,
            watermark: 0,
            next_segment: 1,
            segments: Vec::new(),
        }
    }

    /// Reads the manifest in `dir`, or `None` if there is none.
    pub(crate) fn load(dir: &Path) -> Result<Option<Self>, GalleryError> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(GalleryError::Io { path, source }),
        };
        let m: Self = serde_json::from_str(&text).map_err(|e| GalleryError::Manifest {
            path: path.clone(),
            what: format!(
                "unreadable ({e}); restore it or delete the folder to rebuild from the store"
            ),
        })?;
        if m.version != MANIFEST_VERSION {
            return Err(GalleryError::Manifest {
                path,
                what: format!(
                    "version {} is not supported (this build reads {MANIFEST_VERSION})",
                    m.version
                ),
            });
        }
        Ok(Some(m))
    }

    /// Writes the manifest into `dir` atomically and durably.
    pub(crate) fn store(&self, dir: &Path) -> Result<(), GalleryError> {
        let path = dir.join(MANIFEST_FILE);
        let tmp = dir.join(format!(".{MANIFEST_FILE}.{}.tmp", std::process::id()));
        let io = |source| GalleryError::Io {
            path: tmp.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| GalleryError::Manifest {
            path: path.clone(),
            what: format!("cannot encode: {e}"),
        })?;
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        rename_durably(&tmp, &path)
    }
}
