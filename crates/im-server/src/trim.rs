//! Gives the heap's free memory back to the system after a burst (glibc only).
//!
//! glibc's malloc keeps the memory of freed blocks in its arenas: after 15,000 event streams
//! opened and closed, the process stayed at about 240 MiB although its live heap was back at
//! 11 MiB, and `malloc_trim(0)` brought it to 22 MiB (measured with `cargo xtask bench idle`,
//! trimming by hand from gdb). mimalloc measured worse (it kept 430 MiB after the close), so
//! the binary keeps the system allocator and trims: a thread looks every [`EVERY`] at the free
//! memory held in the arenas and trims once it is over [`FREE_BYTES`].

use std::time::Duration;

/// How often the free memory is read: `mallinfo2` walks the free lists under each arena's
/// lock, which takes well under a millisecond except right after a burst.
const EVERY: Duration = Duration::from_secs(2);

/// Free memory in the arenas worth giving back; below it a trim would gain little.
const FREE_BYTES: usize = 16 * 1024 * 1024;

/// Whether `free` bytes held by malloc are worth a trim.
fn worth_trimming(free: usize) -> bool {
    free > FREE_BYTES
}

/// Starts the `im-trim` thread; it runs for the life of the process.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn spawn() {
    let started = std::thread::Builder::new()
        .name("im-trim".into())
        .spawn(|| {
            loop {
                std::thread::sleep(EVERY);
                // SAFETY: both are plain glibc calls without preconditions; they lock each
                // arena in turn, as malloc itself does.
                let free = unsafe { libc::mallinfo2() }.fordblks;
                if worth_trimming(free) {
                    unsafe { libc::malloc_trim(0) };
                }
            }
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the heap trimmer; freed memory stays with malloc");
    }
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn spawn() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_when_much_is_free() {
        assert!(!worth_trimming(0));
        assert!(!worth_trimming(FREE_BYTES));
        assert!(worth_trimming(FREE_BYTES + 1));
        assert!(worth_trimming(240 * 1024 * 1024));
    }
}
