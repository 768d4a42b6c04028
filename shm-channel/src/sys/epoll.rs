//! epoll: one thread waits on many fds (a service's listener, every channel's doorbell and
//! liveness socket). Level-triggered: an fd stays reported until its cause is consumed (an
//! eventfd drained, a connection accepted), so a caller that stops halfway misses nothing.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::io::Errno;

/// What to wait for on an fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// Readable (a doorbell rung, a connection waiting), plus hang-ups.
    Readable,
    /// Only the hang-up of a socket's peer (`EPOLLRDHUP`, `EPOLLHUP`, `EPOLLERR`): bytes a
    /// peer writes are not reported, so a peer that writes where it should not cannot keep
    /// the waiter awake.
    HangUp,
}

/// What [`Epoll::wait`] saw on one registered fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// The token the fd was registered with.
    pub(crate) token: u64,
    /// Readable.
    pub(crate) readable: bool,
    /// Hung up or in error.
    pub(crate) hangup: bool,
}

/// An epoll instance (close-on-exec).
pub(crate) struct Epoll {
    fd: OwnedFd,
}

/// The most events one wait returns; more stay queued in the kernel for the next wait.
const EVENTS_PER_WAIT: usize = 256;

impl Epoll {
    pub(crate) fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            fd: epoll::create(CreateFlags::CLOEXEC)?,
        })
    }

    /// Registers `fd` (level-triggered) with `token`.
    ///
    /// The registration belongs to the open file description, not to the fd number: it lasts
    /// until [`delete`](Self::delete), or until every fd of the description is closed, *in
    /// every process*. Doorbells are shared with the peer process, so callers must `delete`
    /// before closing, or stale tokens keep arriving.
    pub(crate) fn add(&self, fd: BorrowedFd<'_>, token: u64, interest: Interest) -> io::Result<()> {
        let flags = match interest {
            Interest::Readable => EventFlags::IN | EventFlags::RDHUP,
            Interest::HangUp => EventFlags::RDHUP,
        };
        epoll::add(&self.fd, fd, EventData::new_u64(token), flags).map_err(io::Error::from)
    }

    /// Unregisters `fd`. An fd that is not registered is fine (`ENOENT`).
    pub(crate) fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        match epoll::delete(&self.fd, fd) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until a registered fd is ready or `timeout` passes (`None`: forever; capped at
    /// about 24 days, the most `epoll_wait` takes). Appends what was ready to `out`; a signal
    /// (`EINTR`) returns with nothing.
    pub(crate) fn wait(
        &self,
        out: &mut Vec<Readiness>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        let max = Duration::from_millis(i32::MAX as u64);
        let ts = timeout.map(|d| {
            let d = d.min(max);
            rustix::time::Timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos().into(),
            }
        });
        let mut buf = [MaybeUninit::<epoll::Event>::uninit(); EVENTS_PER_WAIT];
        let events = match epoll::wait(&self.fd, &mut buf, ts.as_ref()) {
            Ok((events, _)) => events,
            Err(Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        out.extend(events.iter().map(|e| {
            let flags = e.flags;
            Readiness {
                token: e.data.u64(),
                readable: flags.contains(EventFlags::IN),
                hangup: flags.intersects(EventFlags::HUP | EventFlags::RDHUP | EventFlags::ERR),
            }
        }));
        Ok(())
    }
}

impl std::fmt::Debug for Epoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Epoll").field(&self.fd).finish()
    }
}

impl AsFd for Epoll {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{eventfd_drain, eventfd_new, eventfd_signal};
    use std::time::Instant;

    #[test]
    fn reports_tokens_level_triggered_and_hangups() {
        let ep = Epoll::new().unwrap();
        let bell = eventfd_new().unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        ep.add(bell.as_fd(), 7, Interest::Readable).unwrap();
        ep.add(a.as_fd(), 9, Interest::HangUp).unwrap();
        let mut out = Vec::new();
        let t = Instant::now();
        ep.wait(&mut out, Some(Duration::from_millis(20))).unwrap();
        assert!(out.is_empty() && t.elapsed() >= Duration::from_millis(15));

        eventfd_signal(bell.as_fd()).unwrap();
        // Bytes on a hang-up-only socket are not reported.
        std::io::Write::write_all(&mut &b, b"x").unwrap();
        for _ in 0..2 {
            // Level-triggered: reported again until drained.
            out.clear();
            ep.wait(&mut out, Some(Duration::from_secs(10))).unwrap();
            assert_eq!(
                out,
                [Readiness {
                    token: 7,
                    readable: true,
                    hangup: false
                }]
            );
        }
        eventfd_drain(bell.as_fd()).unwrap();
        drop(b);
        out.clear();
        ep.wait(&mut out, Some(Duration::from_secs(10))).unwrap();
        assert_eq!(out.len(), 1);
        assert!(out[0].token == 9 && out[0].hangup);
        ep.delete(a.as_fd()).unwrap();
        ep.delete(a.as_fd()).unwrap(); // already gone: fine
        out.clear();
        ep.wait(&mut out, Some(Duration::ZERO)).unwrap();
        assert!(out.is_empty());
    }
}
