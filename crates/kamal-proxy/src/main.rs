//! The `kamal-proxy` binary: everything lives in the library so tests can run it in-process.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned};
use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};

/// mimalloc instead of glibc's allocator: a request makes many small, short-lived allocations
/// (headers, log lines), which glibc's malloc showed up for in profiles. Only the binary picks
/// the allocator, so embedding the library crates keeps the host's choice.
///
/// Calls mimalloc's plain entry points whenever they give the alignment asked for: the
/// `mimalloc` crate always calls the aligned ones, whose fast path only covers blocks up to
/// 1 KiB, so every larger allocation (read buffers, header maps, request futures) took the
/// generic path, about a tenth of the proxy's allocation cost.
struct MiMalloc;

/// Every mimalloc block of at least this size is aligned to it; smaller blocks are aligned to
/// their size class. So a layout whose alignment is at most this and at most its size (sizes
/// are multiples of alignments) is served aligned by `mi_malloc` (the rule std's own `System`
/// allocator applies to `malloc`).
const MIN_ALIGN: usize = 16;

fn plain(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

#[allow(unsafe_code)] // The one place: an allocator cannot be written without it.
                      // SAFETY: every method forwards to the mimalloc function for the same operation, with an
                      // alignment it guarantees (see `MIN_ALIGN`); `mi_free` frees blocks of either kind.
unsafe impl GlobalAlloc for MiMalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for the impl.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for the impl.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator.
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe {
            if plain(layout.align(), new_size) {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    kamal_proxy::cli::main()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn blocks_have_the_alignment_asked_for_and_keep_their_bytes() {
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 3, 8, 12, 16, 24, 100, 1024, 1500, 4096, 70_000, 1 << 20] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                let layout = layout.pad_to_align();
                // SAFETY: non-zero sizes; every block is freed once, with its layout.
                unsafe {
                    let p = GLOBAL.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc {size} aligned {align}");
                    p.write_bytes(0xAB, layout.size());
                    let q = GLOBAL.realloc(p, layout, layout.size() * 3);
                    assert_eq!(q as usize % align, 0, "realloc {size} aligned {align}");
                    assert!((0..layout.size()).all(|i| *q.add(i) == 0xAB));
                    GLOBAL.dealloc(
                        q,
                        Layout::from_size_align(layout.size() * 3, align).unwrap(),
                    );
                    let z = GLOBAL.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "zeroed {size} aligned {align}");
                    assert!((0..layout.size()).all(|i| *z.add(i) == 0));
                    GLOBAL.dealloc(z, layout);
                }
            }
        }
    }
}
