//! The bytes behind a segment: a read-only memory map of its file, or an owned copy.
//!
//! This is the only `unsafe` code in `gallery`. Mapping a file is unsafe because another
//! process could truncate or modify it while mapped. The invariant that keeps it sound
//! here: segment files are written once to a temporary name, fsynced, renamed into place
//! and never opened for writing again (see `writer.rs`); the gallery opens them read-only.
//! A file truncated behind our back by an outside actor raises SIGBUS on access; the README
//! documents this operational risk, as memmap2's own `Mmap` docs do.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use memmap2::{Advice, Mmap, MmapOptions};

/// Read-only bytes of a segment, 8-byte aligned at least (page-aligned when mapped).
pub(crate) enum Backing {
    /// A read-only map of the whole file.
    Mapped(Mmap),
    /// A copy (from `Gallery::from_bytes`), in u64 words so that it is 8-byte aligned: every
    /// section offset is a multiple of 64, so f32 and u64 views cast without copying.
    Owned { words: Vec<u64>, len: usize },
}

impl Backing {
    /// Maps all of `file` read-only and asks the kernel to read it ahead.
    pub(crate) fn map(file: &File, populate: bool) -> io::Result<Self> {
        let mut opts = MmapOptions::new();
        if populate {
            opts.populate();
        }
        // SAFETY: the file was opened read-only, and segment files are immutable once renamed
        // into place (writers only ever create new files; see the module docs). The map is
        // never written through.
        let map = unsafe { opts.map(file) }?;
        // Advice is a hint; a kernel that refuses it changes nothing but speed.
        let _ = map.advise(Advice::WillNeed);
        Ok(Backing::Mapped(map))
    }

    /// An aligned copy of `bytes`.
    pub(crate) fn copy_of(bytes: &[u8]) -> Self {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
        Backing::Owned {
            words,
            len: bytes.len(),
        }
    }

    /// The bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned { words, len } => &bytemuck::cast_slice::<u64, u8>(words)[..*len],
        }
    }
}
