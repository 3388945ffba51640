//! The C allocator's settings for a long-running daemon with a large, slowly changing
//! heap.
//!
//! glibc gives each thread that allocates under contention an arena of its own (up to
//! 8 per core) and keeps freed memory in it. The watchers decode objects on one tokio
//! worker while a sync builds the ruleset on another, so the memory a cold start frees
//! (decoded pages, a full load's operations and batch) sat in arenas the later
//! allocations did not use: the resident set stayed far above what the daemon holds.
//! Two arenas and returning free pages after each full sync keep it near what is live.
#![allow(unsafe_code)] // mallopt(3), malloc_trim(3): glibc calls without pointers

/// Limits glibc to two arenas. Call first thing in `main`, before any thread exists.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no pointer is passed, and no
    // other thread allocates yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Returns the free pages of every arena to the kernel (after a full sync, which frees
/// the most).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer and is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}
