//! The binary's global allocator: mimalloc, called the way its fast paths expect.
//!
//! The `mimalloc` crate passes every allocation to `mi_malloc_aligned`, and mimalloc v3
//! serves an aligned request above 1 KiB whose size is not a power of two by
//! over-allocating and offsetting. That is the case for the boxed request future (~4 KiB)
//! and read buffers: about a thousand extra instructions per proxied request. Every
//! mimalloc block of at least 16 bytes is 16-byte aligned, so like std's `System` allocator
//! this asks for plain `mi_malloc` when the alignment is at most that and at most the size,
//! and for the aligned variant otherwise.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment mimalloc guarantees for blocks at least this large (`MI_MAX_ALIGN_SIZE`).
const MIN_ALIGN: usize = 16;

pub struct Mimalloc;

fn plain(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

// SAFETY: every method forwards to mimalloc, which returns null on failure, blocks of at
// least the requested size, and alignment as argued in the module doc; `dealloc` and
// `realloc` only see pointers this allocator returned, which `mi_free`/`mi_realloc*` accept
// whichever of the two allocation calls produced them.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_and_usable_for_every_size_and_alignment() {
        let a = Mimalloc;
        for size in [
            1,
            7,
            8,
            12,
            16,
            24,
            100,
            1000,
            1500,
            3900,
            5000,
            70_000,
            1 << 21,
        ] {
            for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; the block is written within its size and freed
                // once, through the same allocator.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xAB, size);
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed size {size} align {align}");
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    let grown = a.realloc(p, layout, size * 3);
                    assert_eq!(
                        grown as usize % align,
                        0,
                        "realloc size {size} align {align}"
                    );
                    assert_eq!(*grown, 0xAB, "realloc keeps the contents");
                    assert_eq!(*grown.add(size - 1), 0xAB);
                    a.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
