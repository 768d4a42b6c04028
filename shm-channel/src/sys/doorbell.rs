//! Doorbells: eventfds that one side signals and the other waits on with
//! `poll`, together with any other fd (the channel's liveness socket).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};
use rustix::io::Errno;

/// A new eventfd: close-on-exec, non-blocking, counter 0.
pub(crate) fn eventfd_new() -> io::Result<OwnedFd> {
    eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).map_err(io::Error::from)
}

/// Adds 1 to the eventfd's counter, making it readable. A counter at its
/// maximum (EAGAIN) is already readable: nothing to do.
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    match rustix::io::write(fd, &1u64.to_ne_bytes()) {
        Ok(_) | Err(Errno::AGAIN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Resets the eventfd's counter to 0 (it is non-blocking: an already reset
/// counter is fine).
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut buf = [0u8; 8];
    match rustix::io::read(fd, &mut buf) {
        Ok(_) | Err(Errno::AGAIN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What [`wait_any`] saw on each fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Ready {
    /// Readable (or, for a socket, data or end of file).
    pub(crate) readable: bool,
    /// Hung up or in error: the peer of a socket is gone.
    pub(crate) hangup: bool,
}

/// Waits until one of `fds` is readable or hung up, or `timeout` passes
/// (`None`: forever). Interrupted by a signal counts as a spurious wake.
/// Returns what each fd showed, in order (all default on timeout).
pub(crate) fn wait_any<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Option<Duration>,
) -> io::Result<[Ready; N]> {
    let mut polls = fds.map(|fd| PollFd::from_borrowed_fd(fd, PollFlags::IN | PollFlags::RDHUP));
    let ts = timeout.map(|d| Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: d.subsec_nanos().into(),
    });
    match poll(&mut polls, ts.as_ref()) {
        Ok(_) => {}
        Err(Errno::INTR) => return Ok([Ready::default(); N]),
        Err(e) => return Err(e.into()),
    }
    Ok(polls.map(|p| {
        let r = p.revents();
        Ready {
            readable: r.contains(PollFlags::IN),
            hangup: r.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Instant;

    #[test]
    fn eventfd_signal_wakes_and_drain_resets() {
        let fd = eventfd_new().unwrap();
        let t = Instant::now();
        let [r] = wait_any([fd.as_fd()], Some(Duration::from_millis(20))).unwrap();
        assert!(!r.readable && t.elapsed() >= Duration::from_millis(15));
        eventfd_signal(fd.as_fd()).unwrap();
        eventfd_signal(fd.as_fd()).unwrap();
        let [r] = wait_any([fd.as_fd()], None).unwrap();
        assert!(r.readable);
        eventfd_drain(fd.as_fd()).unwrap();
        eventfd_drain(fd.as_fd()).unwrap();
        let [r] = wait_any([fd.as_fd()], Some(Duration::ZERO)).unwrap();
        assert!(!r.readable);
    }

    #[test]
    fn wakes_across_threads_and_sees_hangup() {
        let fd = std::sync::Arc::new(eventfd_new().unwrap());
        let f2 = fd.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            eventfd_signal(f2.as_fd()).unwrap();
        });
        let [r] = wait_any([fd.as_fd()], Some(Duration::from_secs(10))).unwrap();
        assert!(r.readable);
        t.join().unwrap();

        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let [r] = wait_any([a.as_fd()], Some(Duration::ZERO)).unwrap();
        assert_eq!(r, Ready::default());
        drop(b);
        let [r] = wait_any([a.as_fd()], Some(Duration::from_secs(10))).unwrap();
        assert!(r.hangup);
    }
}
