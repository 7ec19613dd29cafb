//! The global allocator: mimalloc, asked for a plain block whenever one of
//! its size class already has the alignment the layout needs.
//!
//! The `mimalloc` crate's allocator asks for every block with
//! `mi_malloc_aligned`. mimalloc 3 serves that from its fast path only when
//! the size class's free list has a block at hand; otherwise — for every
//! block over 1 KiB, and each time a small class's free list runs dry — it
//! takes the plain path only if the block size is a power of two, and
//! over-allocates by the alignment for all others (a 320-byte block for a
//! 304-byte `Box`, the page marked as holding interior pointers). On the
//! agent's request path that was three over-allocations and about 3,000
//! instructions per request (`bench/agent/instructions.sh`, callgrind;
//! mimalloc_rust pull request 170 measures the same).
//!
//! Every mimalloc size class above 8 bytes is a multiple of 16 (with
//! `MI_MAX_ALIGN_SIZE` 16 on 64-bit targets), and a page's first block is
//! 16-byte aligned, so a block for a size that is a multiple of an
//! alignment of at most 16 is aligned to it: such layouts take `mi_malloc`,
//! `mi_zalloc` and `mi_realloc`. Larger alignments (tokio's
//! cache-line-aligned task cells), and sizes that are not a multiple of
//! their alignment (which no Rust type has), keep the aligned calls.

// An allocator is `unsafe` by contract: each call below passes the
// layout's size and alignment to mimalloc as its API asks, and frees only
// what mimalloc allocated.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block of a size that is a multiple of it
/// has (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

/// mimalloc as the global allocator.
pub struct MiMalloc;

/// Whether a block of `size` bytes from a plain call is aligned to `align`.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    align <= PLAIN_ALIGN && size.is_multiple_of(align)
}

// SAFETY: mimalloc returns blocks of at least the size asked, aligned as
// `plain` states or as the aligned calls are asked, or null; `dealloc` and
// `realloc` get only pointers it returned.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: plain FFI calls; mimalloc takes any size and a
        // power-of-two alignment, which a `Layout` has.
        unsafe {
            if plain(size, align) {
                mi::mi_malloc(size).cast()
            } else {
                mi::mi_malloc_aligned(size, align).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(size, align) {
                mi::mi_zalloc(size).cast()
            } else {
                mi::mi_zalloc_aligned(size, align).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        // SAFETY: `ptr` came from this allocator with `layout`; a moved
        // block is aligned as for a new one of `new_size`.
        unsafe {
            if plain(new_size, align) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, align).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::plain;

    #[test]
    fn plain_blocks_serve_only_alignments_their_size_classes_have() {
        // Rust's own types: the size is a multiple of the alignment.
        assert!(plain(304, 8));
        assert!(plain(8192, 1));
        assert!(plain(48, 16));
        assert!(plain(8, 8));
        // Sizes that are not a multiple of their alignment (no Rust type's
        // layout) are left to the aligned calls; 128-byte alignment
        // (tokio's task cells) is more than any class guarantees.
        assert!(!plain(24, 16));
        assert!(!plain(8, 16));
        assert!(!plain(256, 128));
    }
}
