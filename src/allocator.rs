//! The C allocator of a long-running controller: its settings, and handing
//! back to the system what it keeps after work. For glibc (the image's and
//! the usual Linux build's); elsewhere both do nothing.
//!
//! glibc's defaults suit short programs. A thread gets an arena of its own,
//! so what one worker frees another cannot reuse; the threshold above which
//! a block is mapped on its own rises to the largest block freed so far, so
//! that after one large response (a page of a list, the metrics) every later
//! one is carved from the heap and leaves holes there; and freed memory goes
//! back to the system only from the top of the heap. Measured at 10,000
//! AssumedRoles among 20,000 other Secrets on two cores, the settings and
//! the release below took the resident memory with all Ready from 72.8 to
//! 65.0 MiB and after a refresh wave from 75.8 to 64.0 MiB; in `make bench`,
//! where a restart comes before the wave, from 84.0 to 62.0 MiB after it
//! (the figures in the README).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Blocks of this size or more are mapped on their own and unmapped when
/// freed, however large the blocks freed before.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// One arena for every thread: a controller allocates little at a time, and
/// under a lock taken only when a thread's own cache of small blocks is
/// empty.
const ARENAS: i32 = 1;

/// Sets the allocator for this process. Call before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn tune() {
    // SAFETY: mallopt takes two integers and no pointers; called before any
    // other thread exists, it races with no allocation.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Sets the allocator for this process (nothing to set here).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}

/// Returns the heap's free pages to the system, wherever they are in it;
/// whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release() -> bool {
    // SAFETY: malloc_trim takes an integer and no pointers; glibc holds the
    // arena's lock while it walks the free blocks.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Returns the heap's free pages to the system (nothing to do here).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release() -> bool {
    false
}

/// Every `period`, calls `release` if `work` (a count of work done, such as
/// reconciles) moved since it last did: after a burst, the memory its
/// objects left behind goes back, and nothing is done while idle.
pub async fn release_after_work(
    work: impl Fn() -> u64,
    mut release: impl FnMut() -> bool,
    period: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut released_at = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let done = work();
        if released_at == Some(done) {
            continue;
        }
        let started = std::time::Instant::now();
        let released = release();
        released_at = Some(done);
        tracing::debug!(
            released,
            took_us = started.elapsed().as_micros(),
            "returned free memory to the system"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memory_is_released_once_after_work_and_not_while_idle() {
        let work = Arc::new(AtomicU64::new(0));
        let releases = Arc::new(AtomicU64::new(0));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(release_after_work(
            {
                let work = work.clone();
                move || work.load(Ordering::Relaxed)
            },
            {
                let releases = releases.clone();
                move || {
                    releases.fetch_add(1, Ordering::Relaxed);
                    true
                }
            },
            Duration::from_secs(30),
            shutdown.clone(),
        ));
        let period = Duration::from_secs(30);
        // What starting up allocated, at the first tick.
        tokio::time::sleep(period / 2).await;
        assert_eq!(releases.load(Ordering::Relaxed), 1);
        // Idle: nothing more.
        tokio::time::sleep(period * 3).await;
        assert_eq!(releases.load(Ordering::Relaxed), 1);
        // Work: one release at the next tick, then nothing while idle again.
        work.fetch_add(5, Ordering::Relaxed);
        tokio::time::sleep(period).await;
        assert_eq!(releases.load(Ordering::Relaxed), 2);
        tokio::time::sleep(period * 3).await;
        assert_eq!(releases.load(Ordering::Relaxed), 2);
        shutdown.cancel();
        task.await.expect("the task ends at shutdown");
    }
}
