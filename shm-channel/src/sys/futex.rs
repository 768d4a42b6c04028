//! Shared futexes: park a thread on a 32-bit word, wake it from any process mapping that word.

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::io::Errno;
use rustix::thread::futex::{self, Flags, Timespec};

/// How a [`futex_wait`] ended. None of them proves that the awaited condition holds: callers
/// re-check the word (and whatever it guards) in a loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitOutcome {
    /// Woken by [`futex_wake`], by a signal, or spuriously.
    Woken,
    /// The word did not hold `expected` when the kernel checked it: nothing to wait for.
    ValueChanged,
    /// The timeout elapsed.
    TimedOut,
}

/// Blocks while `*word == expected`, until woken by [`futex_wake`] on the same word (from any
/// thread of any process that maps it shared), or `timeout` (relative, monotonic clock)
/// elapses. The comparison and the sleep are atomic with respect to `futex_wake`.
///
/// Uses the shared futex variant (no `FUTEX_PRIVATE_FLAG`), whose key is the backing file and
/// offset, so waiter and waker may live in different processes. Works on private memory too.
pub(crate) fn futex_wait(
    word: &AtomicU32,
    expected: u32,
    timeout: Option<Duration>,
) -> io::Result<WaitOutcome> {
    let ts = timeout.map(|d| Timespec {
        // Longer than i64::MAX seconds is forever for practical purposes.
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    });
    match futex::wait(word, Flags::empty(), expected, ts.as_ref()) {
        Ok(()) | Err(Errno::INTR) => Ok(WaitOutcome::Woken),
        Err(Errno::AGAIN) => Ok(WaitOutcome::ValueChanged),
        Err(Errno::TIMEDOUT) => Ok(WaitOutcome::TimedOut),
        Err(e) => Err(e.into()),
    }
}

/// Wakes up to `n` threads blocked in [`futex_wait`] on `word` (in any process); returns how
/// many were woken. `u32::MAX` wakes all of them (the kernel takes the count as an `int`;
/// larger counts are clamped to `i32::MAX`).
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) -> io::Result<usize> {
    let n = n.min(i32::MAX.unsigned_abs());
    futex::wake(word, Flags::empty(), n).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    #[test]
    fn wait_returns_at_once_on_mismatch() {
        let w = AtomicU32::new(1);
        assert_eq!(
            futex_wait(&w, 0, Some(Duration::from_secs(10))).unwrap(),
            WaitOutcome::ValueChanged
        );
    }

    #[test]
    fn longest_timeout_is_accepted() {
        // The kernel validates the timeout before comparing the word: a timeout it rejected
        // would show up here as EINVAL instead of `ValueChanged`.
        let w = AtomicU32::new(1);
        assert_eq!(
            futex_wait(&w, 0, Some(Duration::MAX)).unwrap(),
            WaitOutcome::ValueChanged
        );
        assert_eq!(futex_wait(&w, 0, None).unwrap(), WaitOutcome::ValueChanged);
    }

    #[test]
    fn wait_times_out() {
        let w = AtomicU32::new(0);
        let start = Instant::now();
        let out = futex_wait(&w, 0, Some(Duration::from_millis(20))).unwrap();
        // A signal could end it early as `Woken`; no test here sends one.
        assert_eq!(out, WaitOutcome::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn wake_with_no_waiters_wakes_nobody() {
        let w = AtomicU32::new(0);
        assert_eq!(futex_wake(&w, u32::MAX).unwrap(), 0);
    }

    #[test]
    fn wakes_a_thread_blocked_on_the_word() {
        let w = Arc::new(AtomicU32::new(0));
        let waiter = {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                // The classic loop: re-check the word after every wake-up.
                while w.load(Ordering::Acquire) == 0 {
                    let left = deadline.saturating_duration_since(Instant::now());
                    assert!(!left.is_zero(), "not woken within 10 s");
                    futex_wait(&w, 0, Some(left)).unwrap();
                }
                w.load(Ordering::Acquire)
            })
        };
        // Give the waiter a chance to park (not needed for correctness).
        std::thread::sleep(Duration::from_millis(20));
        w.store(42, Ordering::Release);
        futex_wake(&w, 1).unwrap();
        assert_eq!(waiter.join().unwrap(), 42);
    }
}
