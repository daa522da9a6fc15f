//! Gives the heap's free memory back to the system after a burst (glibc only).
//!
//! glibc's malloc keeps the memory of freed blocks in its arenas: after 15,000 event streams
//! opened and closed, the process stayed at about 240 MiB although its live heap was back at
//! 11 MiB, and `malloc_trim(0)` brought it to 22 MiB (measured with `cargo xtask bench idle`,
//! trimming by hand from gdb). mimalloc measured worse (it kept 430 MiB after the close), so
//! the binary keeps the system allocator and trims: a thread looks every [`EVERY`] at the free
//! memory malloc holds and trims once it has grown by [`FREE_BYTES`] over its lowest level
//! since the last trim, and again at the next [`FOLLOW_UPS`] looks. (Trimmed memory still counts as free, so "over a fixed level" would
//! trim again every time after a burst.)
//!
//! The two libc calls are the workspace's only `unsafe` code: neither takes a pointer, and
//! both are safe to call from any thread at any time.
#![allow(unsafe_code)]

use std::time::Duration;

/// How often the free memory is read: `mallinfo2` walks the free lists under each arena's
/// lock, which takes well under a millisecond except right after a burst.
const EVERY: Duration = Duration::from_secs(2);

/// Newly freed memory worth giving back; below it a trim would gain little.
const FREE_BYTES: usize = 16 * 1024 * 1024;

/// Looks after a trim that trim again: a burst's memory is freed over some seconds, on every
/// thread's arena, while `mallinfo2` sees the main arena only.
const FOLLOW_UPS: u8 = 2;

/// When to trim, from the free memory malloc reports at each look.
#[derive(Debug, Default)]
struct Trigger {
    /// The lowest free memory seen since the last trim (after a trim: what it left).
    floor: usize,
    /// Follow-up trims still to do.
    follow_ups: u8,
}

impl Trigger {
    /// Whether to trim now, `free` bytes being free: once they have grown by [`FREE_BYTES`]
    /// over the floor, and at the [`FOLLOW_UPS`] looks after that. A trim resets the floor
    /// to `free`.
    fn look(&mut self, free: usize) -> bool {
        self.floor = self.floor.min(free);
        let trim = if free > self.floor.saturating_add(FREE_BYTES) {
            self.follow_ups = FOLLOW_UPS;
            true
        } else if self.follow_ups > 0 {
            self.follow_ups -= 1;
            true
        } else {
            false
        };
        if trim {
            self.floor = free;
        }
        trim
    }
}

/// Starts the `im-trim` thread; it runs for the life of the process.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn spawn() {
    let started = std::thread::Builder::new()
        .name("im-trim".into())
        .spawn(|| {
            let mut trigger = Trigger::default();
            loop {
                std::thread::sleep(EVERY);
                // SAFETY: both are plain glibc calls without preconditions; they lock the
                // arenas in turn, as malloc itself does. `mallinfo2` reports the main arena
                // only, a sample of the whole; `malloc_trim` trims every arena.
                let free = unsafe { libc::mallinfo2() }.fordblks;
                if trigger.look(free) {
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

    const MIB: usize = 1024 * 1024;

    #[test]
    fn trims_once_per_burst_of_freed_memory() {
        let mut t = Trigger::default();
        assert!(!t.look(0));
        assert!(!t.look(FREE_BYTES), "a little freed memory is left alone");
        assert!(t.look(240 * MIB), "a burst closed");
        assert!(t.look(240 * MIB) && t.look(241 * MIB), "the follow-ups");
        assert!(!t.look(240 * MIB), "trimmed memory still counts as free");
        assert!(!t.look(245 * MIB));
        // The next burst reuses the free memory, and frees it again when it closes.
        assert!(!t.look(2 * MIB));
        assert!(t.look(230 * MIB));
        assert!(t.look(230 * MIB) && t.look(230 * MIB) && !t.look(230 * MIB));
    }
}
