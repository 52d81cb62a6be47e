//! The bytes behind a segment: a read-only memory map of its file, a resident copy in
//! huge-page-backed anonymous memory, or an owned copy (from bytes).
//!
//! Why resident: scanning is memory-bound, and hardware prefetchers stop at every page
//! boundary. This kernel (no `CONFIG_READ_ONLY_THP_FOR_FS`) maps ext4 page cache with 4 KiB
//! entries even when the cache holds 2 MiB folios, so a mapped 100k x 512 f32 scan reads
//! about 24.5 GB/s, while the same rows in `MADV_HUGEPAGE` anonymous memory read 28.5 GB/s.
//! A resident copy is also immune to SIGBUS if the file is truncated from outside. Opening it
//! reads the whole file, which `verify` does anyway.
//!
//! This is the only `unsafe` code in `gallery`. Mapping a file is unsafe because another
//! process could truncate or modify it while mapped. The invariant that keeps it sound
//! here: segment files are written once to a temporary name, fsynced, renamed into place
//! and never opened for writing again (see `writer.rs`); the gallery opens them read-only.
//! A file truncated behind our back by an outside actor raises SIGBUS on access; the README
//! documents this operational risk, as memmap2's own `Mmap` docs do.

#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Read};

use memmap2::{Advice, Mmap, MmapMut, MmapOptions};

/// Read-only bytes of a segment, 8-byte aligned at least (page-aligned when mapped).
pub(crate) enum Backing {
    /// A read-only map of the whole file.
    Mapped(Mmap),
    /// The file's bytes in anonymous memory advised for transparent huge pages.
    Resident { map: MmapMut, len: usize },
    /// A copy (from `Gallery::from_bytes`), in u64 words so that it is 8-byte aligned: every
    /// section offset is a multiple of 64, so f32 and u64 views cast without copying.
    Owned { words: Vec<u64>, len: usize },
}

impl Backing {
    /// Maps all of `file` read-only and asks the kernel to read it ahead.
    pub(crate) fn map(file: &File, populate: bool) -> io::Result<Self> {
        // SAFETY: the file was opened read-only, and segment files are immutable once renamed
        // into place (writers only ever create new files; see the module docs). The map is
        // never written through.
        let map = unsafe { MmapOptions::new().map(file) }?;
        // Advice is a hint; a kernel that refuses it changes nothing but speed. HugePage lets
        // the kernel map the page cache's large folios with 2 MiB entries: the scan then
        // crosses no 4 KiB page boundary, where hardware prefetchers stop (about 15% faster
        // on the measured machine).
        let _ = map.advise(Advice::HugePage);
        let _ = map.advise(if populate {
            Advice::PopulateRead
        } else {
            Advice::WillNeed
        });
        Ok(Self::Mapped(map))
    }

    /// Reads all `len` bytes of `file` into huge-page-advised anonymous memory.
    pub(crate) fn load(file: &mut File, len: usize) -> io::Result<Self> {
        // Anonymous maps are zero-filled and private: no file, no SIGBUS, no unsafe.
        let mut map = MmapOptions::new().len(len.max(1)).map_anon()?;
        let _ = map.advise(Advice::HugePage);
        file.read_exact(&mut map[..len])?;
        Ok(Self::Resident { map, len })
    }

    /// An aligned copy of `bytes`.
    pub(crate) fn copy_of(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Self::Owned {
            words,
            len: bytes.len(),
        }
    }

    /// The bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Resident { map, len } => &map[..*len],
            Self::Owned { words, len } => &bytemuck::cast_slice::<u64, u8>(words)[..*len],
        }
    }
}
