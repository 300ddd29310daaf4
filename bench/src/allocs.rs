//! Allocations a message, for figure 2's profiling mode (`delivery-loop`): the global
//! allocator is the service's own ([`webhooks::Allocator`], as every function declares it),
//! counted only while counting is switched on, so that every other figure runs on the
//! allocator as it is (one relaxed load per allocation).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use webhooks::Allocator;

/// The service's allocator, with a count of allocations (and reallocations) while on.
pub struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the allocator unchanged; the counters only read the layout.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract is the allocator's.
        unsafe { Allocator.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is the allocator's.
        unsafe { Allocator.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract is the allocator's.
        unsafe { Allocator.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: the caller's contract is the allocator's.
        unsafe { Allocator.realloc(ptr, layout, new_size) }
    }
}

fn count(size: usize) {
    if ON.load(Ordering::Relaxed) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

/// Switches counting on for the rest of the process.
pub fn start() {
    ON.store(true, Ordering::Relaxed);
}

/// Allocations (with reallocations) and bytes asked for so far, while counting was on.
pub fn so_far() -> (u64, u64) {
    (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}
