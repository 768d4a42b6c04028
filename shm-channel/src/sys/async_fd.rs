//! tokio's `AsyncFd` over fds we own: registering an fd with tokio's reactor is `unsafe`
//! (tokio cannot check that the fd stays open and the same for as long as it is registered),
//! so it is done here, over an [`OwnedFd`] that the `AsyncFd` then owns.

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Registers `fd` with the current tokio runtime's reactor for `interest`.
///
/// Fails (instead of panicking, as tokio does) when called outside a tokio runtime. Still
/// panics, as tokio does, inside a runtime built without its I/O driver (`enable_io`).
pub(crate) fn async_fd(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(io::Error::other(
            "not inside a tokio runtime: async channels must be created within one",
        ));
    }
    // Soundness: tokio requires the fd to be valid, open, the same file description, and the
    // same number returned by every `as_raw_fd`, for as long as the `AsyncFd` holds it:
    // 1. an `OwnedFd` is an open fd by construction;
    // 2. the `AsyncFd` takes ownership of it, so nobody else can close it, and it is closed
    //    only when the `AsyncFd` drops it (after deregistering it) or hands it back;
    // 3. `OwnedFd::as_raw_fd` always returns the fd it was made from.
    // SAFETY: sound for the reasons given just above.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}
