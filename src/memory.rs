//! The daemon's address-space budget: what it reserves beyond what it
//! touches, and the bounds that let it run under `prlimit --as=32M`.
//!
//! Resident memory stays a few MiB even at 100k connections, but an
//! address-space limit (`RLIMIT_AS`, how some operators cap a sidecar)
//! counts reservations too, and two kinds dwarfed the resident size:
//!
//! - glibc gives each thread that calls `malloc` an arena of its own, up to
//!   8 per core, each a 64 MiB reservation (128 MiB while it is being
//!   aligned). The sampler's three threads and a scrape's render thread
//!   made a daemon of 277,876 kB (VmPeak 343,400 kB). Under a 32 MiB cap
//!   no arena fits, so glibc tries again at every allocation of those
//!   threads and falls back to one `mmap` each: a page per live object, a
//!   few thousand of which exhaust the cap, and the next allocation aborts
//!   the daemon ("memory allocation of 1 bytes failed").
//! - every thread's stack is mapped whole when the thread starts: 2 MiB
//!   each by default, for threads that never use more than a few dozen KiB.
//!
//! The daemon's threads mostly sleep and take their turns (one pass of a
//! tier, one render of a scrape), so one arena costs no contention worth
//! measuring, and each thread gets a stack sized from measurement.

/// Stack of every thread the daemon starts but the renderers (see
/// [`RENDER_STACK_BYTES`]): the sampler's (discovery and the two tiers),
/// the short-lived one that enters a namespace, and `top`'s reader.
///
/// Measured as the resident part of each thread's stack mapping (pages
/// are touched only as deep as the thread ever went) after 20 s of passes
/// (listeners every 200 ms, connections every 1 s) over 27k connections
/// on 30 listeners held by three processes, with concurrent scrapes: at
/// most 16 KiB in a release build and 80 KiB in a debug one (the full
/// tier, which overflowed a 64 KiB stack; a debug build also builds the
/// 32 KiB directory-listing buffer on the stack before boxing it). The
/// thread that enters a namespace ran in 16 KiB, debug build included. No
/// thread recurses over its input, so this does not grow with connections
/// or namespaces; 256 KiB keeps three times the debug peak and sixteen
/// times the release one, and the nine such threads there can be at once
/// (three sampler threads, one entering per tier, four rendering) reserve
/// 2.25 MiB where the 2 MiB defaults reserved 18 MiB.
pub const THREAD_STACK_BYTES: usize = 256 * 1024;

/// Stack of the async runtime's blocking threads, which render scrapes
/// and gzip them for scrapers that ask. The deflate compressor builds its
/// hash tables on the stack before boxing them: measured, one gzip of a
/// page needs between 64 and 128 KiB in a release build and between 256
/// and 384 KiB in a debug one (overflowing [`THREAD_STACK_BYTES`] there).
/// 512 KiB covers the debug peak; the four such threads reserve 2 MiB.
pub const RENDER_STACK_BYTES: usize = 512 * 1024;

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
