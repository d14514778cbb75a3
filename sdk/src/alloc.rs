//! A bump allocator for plugin components (wasm only, feature `bump-alloc`,
//! on by default).
//!
//! Why: Cairn runs every call in a fresh instance and throws it away, so
//! memory never needs to be reused. The canonical ABI allocates every string
//! and list of a call's input through the guest allocator (a contact and 50
//! events are hundreds of allocations); with the default allocator that was
//! most of a scorer call's instructions. Here an allocation is a few
//! instructions. Memory grows in 1 MiB steps through `memory.grow`, so the
//! host's memory cap still applies: a refused grow is an allocation failure.
//!
//! Freeing the most recent allocation gives its space back (cheap LIFO
//! reuse, which covers temporary buffers); anything else is kept until the
//! instance is dropped.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;

const PAGE: usize = 65536;
/// Pages requested per growth: fewer `memory.grow` calls per instance.
const STEP_PAGES: usize = 16;

/// The allocator state: the free region `[next, end)`.
pub struct Bump {
    next: Cell<usize>,
    end: Cell<usize>,
}

// SAFETY: wasm32 plugin instances are single-threaded; there is no other
// thread that could observe the cells.
unsafe impl Sync for Bump {}

impl Bump {
    /// An allocator that has not grown memory yet.
    pub const fn new() -> Self {
        Bump { next: Cell::new(0), end: Cell::new(0) }
    }

    fn grow(&self, at_least: usize) -> bool {
        let pages = at_least.div_ceil(PAGE).max(STEP_PAGES);
        let previous = core::arch::wasm32::memory_grow(0, pages);
        if previous == usize::MAX {
            return false;
        }
        let start = previous * PAGE;
        // New pages follow the old end unless someone else grew memory in
        // between; then continue from the new region.
        if start != self.end.get() {
            self.next.set(start);
        }
        self.end.set(start + pages * PAGE);
        true
    }
}

impl Default for Bump {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every returned block lies in linear memory obtained from
// `memory.grow`, is aligned as requested, and is never handed out twice
// while live (the region only moves forward, except when the most recent
// block is freed).
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let align = layout.align();
        let mut start = (self.next.get() + align - 1) & !(align - 1);
        let mut end = start.saturating_add(layout.size());
        if end > self.end.get() || self.end.get() == 0 {
            if !self.grow(layout.size() + align) {
                return core::ptr::null_mut();
            }
            start = (self.next.get() + align - 1) & !(align - 1);
            end = start + layout.size();
        }
        self.next.set(end);
        start as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ptr as usize + layout.size() == self.next.get() {
            self.next.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Growing the most recent block in place avoids a copy (a Vec being
        // pushed to, a String being built).
        if ptr as usize + layout.size() == self.next.get() && ptr as usize + new_size <= self.end.get() {
            self.next.set(ptr as usize + new_size);
            return ptr;
        }
        // SAFETY: the layout is valid for `new_size` (GlobalAlloc contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: allocating a fresh block.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and distinct.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Bump = Bump::new();
