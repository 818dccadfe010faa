//! The expert's heap starts in a static arena inside the module's initial
//! memory.
//!
//! Rust's default allocator on `wasm32` takes every block from
//! `memory.grow`, so each invocation, in its fresh instance, grew its memory
//! at least once. The host must then make those pages accessible
//! (`mprotect`) and, when the pool slot is reused, inaccessible again, which
//! flushes the TLB of every core running the host: measured with the serve
//! benchmark, about a sixth of the host's CPU under load for a trivial
//! expert. Allocations that fit in the arena grow nothing; the rest go to
//! the default allocator as before.
//!
//! The arena is a bump allocator: each instance serves one call and is then
//! thrown away, so freed blocks are only reused when they were the last one
//! handed out (a growing `Vec` or `String` extends in place). Opt out with
//! `default-features = false` on `tessera-sdk`, for example to install your
//! own `#[global_allocator]`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes in the arena. It lies in zero-initialised memory (`.bss`), so it
/// costs nothing until touched; the host resets only the pages a call
/// dirtied.
pub const ARENA_BYTES: usize = 512 << 10;

#[repr(C, align(16))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: a component instance has a single thread (the component model
// gives guests no threads, and this module is not built with the `atomics`
// target feature), so the arena is never touched concurrently.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));

/// Offset of the first free byte in [`ARENA`].
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Arena first, then the default allocator.
pub struct ArenaFirst;

impl ArenaFirst {
    fn base() -> usize {
        ARENA.0.get() as usize
    }

    /// Where `ptr` lies in the arena, if it does.
    fn offset(ptr: *mut u8) -> Option<usize> {
        let offset = (ptr as usize).wrapping_sub(Self::base());
        (offset < ARENA_BYTES).then_some(offset)
    }

    /// A block of `size` bytes aligned to `align` from the arena, if it fits.
    fn bump(size: usize, align: usize) -> Option<*mut u8> {
        let base = Self::base();
        let start = (base + NEXT.load(Ordering::Relaxed)).checked_next_multiple_of(align)? - base;
        let end = start.checked_add(size)?;
        if end > ARENA_BYTES {
            return None;
        }
        NEXT.store(end, Ordering::Relaxed);
        Some((base + start) as *mut u8)
    }
}

// SAFETY: blocks from the arena are disjoint (the bump offset only moves
// back over the last block when it is freed or resized), aligned as asked
// and inside `ARENA`; every other block comes from and returns to `System`.
unsafe impl GlobalAlloc for ArenaFirst {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::bump(layout.size(), layout.align()) {
            Some(ptr) => ptr,
            // SAFETY: forwarded with the caller's layout.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match Self::offset(ptr) {
            Some(offset) => {
                // Only the last block can be given back.
                let _ = NEXT.compare_exchange(
                    offset + layout.size(),
                    offset,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            // SAFETY: `ptr` came from `System` with this layout.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(offset) = Self::offset(ptr) else {
            // SAFETY: `ptr` came from `System` with this layout.
            return unsafe { System.realloc(ptr, layout, new_size) };
        };
        let old_end = offset + layout.size();
        if old_end == NEXT.load(Ordering::Relaxed) {
            // The last block: grow or shrink it in place when it still fits.
            if let Some(end) = offset.checked_add(new_size).filter(|&e| e <= ARENA_BYTES) {
                NEXT.store(end, Ordering::Relaxed);
                return ptr;
            }
        } else if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: `new_size` is non-zero and, rounded up to the alignment,
        // does not overflow (`realloc`'s contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as above.
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            // SAFETY: both blocks are valid for the smaller size and do not
            // overlap (the new one was handed out after the old one).
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        moved
    }
}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static GLOBAL: ArenaFirst = ArenaFirst;

/// Natively, against the real static arena: one test, so nothing else
/// touches it concurrently.
#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn arena_first_then_the_system_allocator() {
        let a = ArenaFirst;
        // SAFETY: every block is used within its layout and freed with it.
        unsafe {
            let first = a.alloc(layout(3, 1));
            assert_eq!(ArenaFirst::offset(first), Some(0));
            let aligned = a.alloc(layout(8, 64));
            assert_eq!(aligned as usize % 64, 0, "alignment honoured");
            assert!(
                ArenaFirst::offset(aligned).unwrap() >= 3,
                "blocks are disjoint"
            );
            aligned.write_bytes(0xAB, 8);
            first.write_bytes(0x11, 3);
            assert_eq!(*aligned, 0xAB);

            // The last block grows in place and keeps its bytes.
            let grown = a.realloc(aligned, layout(8, 64), 4096);
            assert_eq!(grown, aligned);
            assert_eq!(*grown.add(7), 0xAB);
            // An earlier block moves when it grows, bytes kept.
            let moved = a.realloc(first, layout(3, 1), 100);
            assert_ne!(moved, first);
            assert_eq!(std::slice::from_raw_parts(moved, 3), [0x11; 3]);
            a.dealloc(moved, layout(100, 1));

            // Freeing the last block gives its bytes back.
            let end = NEXT.load(Ordering::Relaxed);
            let last = a.alloc(layout(16, 8));
            a.dealloc(last, layout(16, 8));
            assert_eq!(NEXT.load(Ordering::Relaxed), end);

            // Past the arena, the system allocator, and back.
            let big = a.alloc(layout(ARENA_BYTES + 1, 8));
            assert!(!big.is_null());
            assert_eq!(ArenaFirst::offset(big), None);
            big.add(ARENA_BYTES).write(7);
            a.dealloc(big, layout(ARENA_BYTES + 1, 8));

            // The last arena block grown past the arena moves out of it,
            // bytes kept, and its arena bytes are given back.
            let before = ArenaFirst::offset(grown).unwrap();
            let out = a.realloc(grown, layout(4096, 64), ARENA_BYTES);
            assert_eq!(ArenaFirst::offset(out), None);
            assert_eq!(*out.add(7), 0xAB);
            assert_eq!(NEXT.load(Ordering::Relaxed), before);
            // And a system block resizes through the system allocator.
            let out = a.realloc(out, layout(ARENA_BYTES, 64), ARENA_BYTES * 2);
            assert_eq!(*out.add(7), 0xAB);
            a.dealloc(out, layout(ARENA_BYTES * 2, 64));
        }
    }
}
