//! The daemon's address-space budget: what it reserves beyond what it
//! touches, and the bounds that let it run under `prlimit --as=32M`.
//!
//! Resident memory stays a few MiB even at 100k connections, but an
//! address-space limit (`RLIMIT_AS`, how some operators cap a sidecar)
//! counts reservations too, and one kind dwarfed the resident size:
//!
//! - glibc gives each thread that calls `malloc` an arena of its own, up to
//!   8 per core, each a 64 MiB reservation (128 MiB while it is being
//!   aligned). The sampler's three threads and a scrape's render thread
//!   made a daemon of 277,876 kB (VmPeak 343,400 kB). Under a 32 MiB cap
//!   no arena fits, so glibc tries again at every allocation of those
//!   threads and falls back to one `mmap` each: a page per live object, a
//!   few thousand of which exhaust the cap, and the next allocation aborts
//!   the daemon ("memory allocation of 1 bytes failed").
//!
//! The daemon's threads mostly sleep and take their turns (one pass of a
//! tier, one render of a scrape), so one arena costs no contention worth
//! measuring.

/// glibc arenas: one, the main one, shared by every thread.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 1;

/// Makes every thread allocate from glibc's main arena instead of
/// reserving 64 MiB arenas of their own. Must run before the first thread
/// is started: a thread keeps the arena it was given. Returns false if
/// glibc refused the setting; elsewhere (musl has no per-thread arenas)
/// there is nothing to do.
pub fn limit_malloc_arenas() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes two integers and only changes malloc's own
        // tunables; no thread but this one exists yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        true
    }
}
