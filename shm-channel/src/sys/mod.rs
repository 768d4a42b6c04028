//! The only home of raw system calls in this crate, and of the `unsafe` they need.
//!
//! Everything above this module (regions, rings, channels) calls the small safe functions
//! here and never talks to the kernel directly. Linux only; the calls go through `rustix`.
//!
//! # Contract
//!
//! * **Memory files** ([`memfd_create`], [`add_seals`], [`seals`], [`check_received_seals`],
//!   [`file_len`], [`grow_file`], [`allocated_bytes`]): a ring's backing is a memfd created
//!   close-on-exec and sealable. Its creator sizes it (once, to the ring's maximum), then seals
//!   it with [`REQUIRED_SEALS`] (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`): from then on
//!   nobody, including a hostile peer, can change its length, so a range checked once to lie
//!   inside the file stays inside it forever and touching it never raises `SIGBUS`, and the
//!   file never holds more than was agreed. A file descriptor received from a peer must pass
//!   [`check_received_seals`] before anything is mapped from it. [`grow_file`] never shrinks.
//! * **Address space** ([`reserve`], [`Reservation`], [`map_shared_fixed`], [`page_size`]):
//!   a [`Reservation`] is a `PROT_NONE` range of `len` bytes followed by one more page, the guard
//!   page. [`map_shared_fixed`] maps a file into the reservation in place, so the base address
//!   never moves. It only ever maps over pages that were never mapped before (it never replaces
//!   memory somebody may be using) and never maps the guard page, so an access one byte past the
//!   usable length faults with `SIGSEGV` instead of reading a neighbour. Dropping the
//!   reservation unmaps all of it: the owner must stop using pointers into it first.
//! * **Processes** ([`pid`], [`pid_alive`]): liveness of a peer by pid, with the caveats written
//!   on [`pid_alive`] (pid reuse; both processes in the same pid namespace).
//! * **Sockets** ([`connect_unix`], [`send_with_fds`], [`recv_with_fds`],
//!   [`peer_credentials`], [`peer_hung_up`], [`poll_many`], [`bind_unlistened`],
//!   [`adopt_stdin_listener`]): fds received from a peer arrive
//!   close-on-exec and owned; a truncated control message is an error and closes what came.
//!   Nothing here raises `SIGPIPE` or blocks unless asked to.
//! * **Futexes** ([`futex_wait`], [`futex_wake`]): shared (not `FUTEX_PRIVATE`) futexes, so a
//!   word inside a `MAP_SHARED` mapping can park and wake threads of different processes.
//! * **Doorbells** ([`eventfd_new`], [`eventfd_signal`], [`eventfd_drain`], [`wait_any`]):
//!   eventfds a peer signals, waited on with `poll` together with other fds (a channel's
//!   liveness socket), so a parked receiver also wakes when its peer dies, and epoll or tokio
//!   can wait on them.
//!
//! No function here panics on bad input: sizes, offsets and flags are checked and refused with
//! an `io::Error` of kind `InvalidInput`.

#![allow(
    dead_code,
    unused_imports,
    reason = "the ring, doorbells and crash recovery of later issues call the rest of this API"
)]

#[cfg(feature = "tokio")]
mod async_fd;
mod doorbell;
mod epoll;
mod futex;
mod memfd;
mod mmap;
mod process;
mod socket;

#[cfg(feature = "tokio")]
pub(crate) use async_fd::async_fd;
pub(crate) use doorbell::{Ready, eventfd_drain, eventfd_new, eventfd_signal, wait_any};
pub(crate) use epoll::{Epoll, Interest, Readiness};
pub(crate) use futex::{WaitOutcome, futex_wait, futex_wake};
pub(crate) use memfd::{
    REQUIRED_SEALS, SealError, add_seals, allocated_bytes, check_received_seals, file_len,
    grow_file, memfd_create, seals,
};
pub(crate) use mmap::{Reservation, map_shared_fixed, page_size, reserve};
pub(crate) use process::{pid, pid_alive};
pub(crate) use socket::{
    Connect, MAX_FDS, Ucred, adopt_stdin_listener, bind_unlistened, connect_unix, egid, euid,
    is_eventfd, peer_credentials, peer_hung_up, poll_many, recv_with_fds, send_bytes,
    send_with_fds, shutdown, try_lock_exclusive,
};

/// The seal flags type of [`seals`] and [`add_seals`].
pub(crate) use rustix::fs::SealFlags;

/// Test helpers that also talk to the kernel, kept here so that tests outside `sys` stay free
/// of raw calls.
#[cfg(test)]
pub(crate) mod test_support {
    use std::io;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A memfd name unique among parallel tests and test processes: `shm-channel-test-<what>-
    /// <pid>-<n>`. (The kernel does not need unique memfd names; people reading
    /// `/proc/<pid>/fd` do.)
    pub(crate) fn unique_name(what: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        format!("shm-channel-test-{what}-{}-{n}", std::process::id())
    }

    /// Turns off core dumps for this process: a test child that is meant to die of `SIGSEGV`
    /// should not leave a core file behind.
    pub(crate) fn disable_core_dumps() -> io::Result<()> {
        use rustix::process::{Resource, Rlimit, setrlimit};
        let zero = Rlimit {
            current: Some(0),
            maximum: None,
        };
        // Keep the hard limit as it is (raising it would need privileges); only the soft
        // limit matters for dumping.
        let hard = rustix::process::getrlimit(Resource::Core).maximum;
        setrlimit(
            Resource::Core,
            Rlimit {
                maximum: hard,
                ..zero
            },
        )
        .map_err(io::Error::from)
    }

    /// Shrinks `fd` to `len` bytes with a raw `ftruncate`, bypassing [`super::grow_file`]'s
    /// refusal, to show that the kernel's seal refuses it too.
    pub(crate) fn raw_ftruncate(fd: std::os::fd::BorrowedFd<'_>, len: u64) -> io::Result<()> {
        rustix::fs::ftruncate(fd, len).map_err(io::Error::from)
    }

    /// A memfd created WITHOUT `MFD_ALLOW_SEALING` (it can never be sealed), to check that
    /// receivers refuse it.
    pub(crate) fn unsealable_memfd(name: &str) -> io::Result<std::os::fd::OwnedFd> {
        use rustix::fs::MemfdFlags;
        rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC).map_err(io::Error::from)
    }
}
