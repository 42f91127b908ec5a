//! Every `unsafe` block of the crate: turning a mapping of the shm file into references to the
//! `#[repr(C)]` structures of `layout`.
//!
//! The mapping itself is made with memmap2's `MmapRaw` (safe to create: it hands out pointers, not
//! slices), read-write and shared for the supervisor and the workers, read-only for readers. We
//! never build a `&[u8]` over the mapping, because other processes change those bytes: all access
//! goes through references to atomics, which may be shared and mutated by anyone.
//! Flock and the file operations are done with safe std / nix calls elsewhere.

use std::fs::File;
use std::mem::{align_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64};

use memmap2::{MmapOptions, MmapRaw};

use crate::layout::{Header, RelayRecord, Slot, WorkerRecord};

/// Types that may be viewed in the shared mapping.
///
/// # Safety
/// Implementors must be an atomic integer, or `#[repr(C)]` and made only of atomics (or arrays of them), have no `Drop`
/// and no padding, so that every bit pattern is a valid value and concurrent access from other
/// processes through `&Self` is not a data race.
pub(crate) unsafe trait InShm: Sized + Sync {}

// SAFETY: the three layout structs are #[repr(C)], consist only of AtomicU32/AtomicU64
// fields and arrays of them, with sizes and offsets pinned by const asserts in `layout` (no padding).
unsafe impl InShm for Header {}
// SAFETY: as above.
unsafe impl InShm for Slot {}
// SAFETY: as above.
unsafe impl InShm for WorkerRecord {}
// SAFETY: as above (size pinned at 64 bytes in `layout`).
unsafe impl InShm for RelayRecord {}
// SAFETY: the cells of the connection matrix: an AtomicU32 has the size and alignment of a u32
// (asserted below), no padding, every bit pattern is a value, and it is made for shared access.
unsafe impl InShm for AtomicU32 {}

// Keep the reasoning above honest: atomics have the size of their integer.
const _: () = {
    assert!(
        size_of::<AtomicU64>() == 8 && size_of::<AtomicU32>() == 4 && align_of::<AtomicU32>() == 4
    );
};

/// A shared mapping of the whole shm file. The file descriptor may be closed once it exists:
/// the mapping keeps the file alive until it is dropped.
pub(crate) struct Mapping {
    raw: MmapRaw,
    /// Read-only mappings must only ever be loaded from (Relaxed loads of word size, the ones Rust
    /// allows on read-only memory); kept to check that in debug builds.
    writable: bool,
}

impl Mapping {
    /// Maps `len` bytes of `file` read-write, shared (the file must be open read-write).
    pub fn map_rw(file: &File, len: usize) -> std::io::Result<Mapping> {
        let raw = MmapOptions::new().len(len).map_raw(file)?;
        Ok(Mapping {
            raw,
            writable: true,
        })
    }

    /// Maps `len` bytes of `file` read-only, shared: stores by other processes are seen, and any
    /// store through this mapping would fault rather than change the file.
    pub fn map_read_only(file: &File, len: usize) -> std::io::Result<Mapping> {
        let raw = MmapOptions::new().len(len).map_raw_read_only(file)?;
        Ok(Mapping {
            raw,
            writable: false,
        })
    }

    /// The mapped length.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether stores through this mapping are allowed.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// A reference to the `T` at byte `offset`, or `None` when it does not lie entirely inside
    /// the mapping or is misaligned.
    pub fn get<T: InShm>(&self, offset: usize) -> Option<&T> {
        let end = offset.checked_add(size_of::<T>())?;
        if end > self.raw.len() {
            return None;
        }
        let ptr = self.raw.as_ptr().wrapping_add(offset);
        if !(ptr as usize).is_multiple_of(align_of::<T>()) {
            return None;
        }
        // SAFETY: the memory belongs to this Mapping (an mmap of the shm file that lives as long as
        // `self`, which the returned reference borrows); [offset, end) was checked to be inside it
        // and the pointer to be aligned for T. T: InShm is made only of atomics, so any content
        // is a valid T and changes by other processes are atomic accesses, not data races. The file
        // is never shrunk while mapped (only the supervisor writes it, and never truncates it).
        Some(unsafe { &*(ptr as *const T) })
    }

    /// `count` consecutive `T`s starting at byte `offset`, or `None` when they do not fit.
    pub fn slice<T: InShm>(&self, offset: usize, count: usize) -> Option<&[T]> {
        let bytes = count.checked_mul(size_of::<T>())?;
        let end = offset.checked_add(bytes)?;
        if end > self.raw.len() {
            return None;
        }
        let ptr = self.raw.as_ptr().wrapping_add(offset);
        if !(ptr as usize).is_multiple_of(align_of::<T>()) {
            return None;
        }
        // SAFETY: as in `get`: the range is inside this Mapping, which the slice borrows, aligned,
        // and every T in it is made of atomics, valid for any content and for concurrent access.
        Some(unsafe { std::slice::from_raw_parts(ptr as *const T, count) })
    }
}
