//! Unix stream sockets: connect without blocking, bytes with file descriptors (`SCM_RIGHTS`),
//! the peer's credentials (`SO_PEERCRED`), liveness by `poll`, and the lock file that makes a
//! service name exclusive. All safe calls through `rustix`; no `unsafe` needed here.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::FlockOperation;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

/// The most file descriptors one [`recv_with_fds`] accepts.
pub(crate) const MAX_FDS: usize = 16;

/// The credentials of the process at the other end of a Unix socket, as the kernel recorded
/// them when that end called `connect` (client) or `listen` (server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ucred {
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// `getsockopt(SO_PEERCRED)`: who is at the other end of `socket`. The kernel fills this in;
/// the peer cannot lie about it (short of being root and forging its own credentials).
///
/// Caveat: the kernel reports pid 0 for a peer whose pid is not visible in our pid namespace,
/// and `rustix` 1.1 stores the pid in a non-zero type; peers in other pid namespaces are not
/// supported (as for [`super::pid_alive`]).
pub(crate) fn peer_credentials(socket: BorrowedFd<'_>) -> io::Result<Ucred> {
    let c = rustix::net::sockopt::socket_peercred(socket)?;
    Ok(Ucred {
        // A pid is positive; 0 means "unknown" (a peer from another pid namespace).
        pid: c.pid.as_raw_nonzero().get().unsigned_abs(),
        uid: c.uid.as_raw(),
        gid: c.gid.as_raw(),
    })
}

/// This process's effective user id.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// This process's effective group id.
pub(crate) fn egid() -> u32 {
    rustix::process::getegid().as_raw()
}

/// What a non-blocking connect found.
#[derive(Debug)]
pub(crate) enum Connect {
    /// Connected (the stream is in non-blocking mode).
    Connected(UnixStream),
    /// The listener's backlog is full: try again later.
    Busy,
}

/// Connects to the Unix stream socket at `path` without ever blocking: a full backlog reports
/// [`Connect::Busy`] instead of waiting. The stream is close-on-exec and non-blocking.
/// `ECONNREFUSED` (a socket file nobody listens on) and `ENOENT` are returned as errors.
pub(crate) fn connect_unix(path: &Path) -> io::Result<Connect> {
    let addr = SocketAddrUnix::new(path)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    match rustix::net::connect(&fd, &addr) {
        Ok(()) => Ok(Connect::Connected(UnixStream::from(fd))),
        // A Unix socket never connects "in progress": EAGAIN means the backlog is full.
        Err(Errno::AGAIN) => Ok(Connect::Busy),
        Err(e) => Err(e.into()),
    }
}

/// Sends `bytes` with `fds` attached (`sendmsg` + `SCM_RIGHTS`), never raising `SIGPIPE`
/// (`MSG_NOSIGNAL`). Returns how many bytes went out: the fds travel with the first of them,
/// so a caller that gets a short count sends the rest with [`send_bytes`]. The fds stay open
/// here (the kernel duplicates them into the message).
pub(crate) fn send_with_fds(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS || bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "send_with_fds: 1.. bytes and at most MAX_FDS fds",
        ));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("control buffer too small for the fds"));
    }
    let n = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(n)
}

/// Sends `bytes` without fds, never raising `SIGPIPE`. Returns the count sent.
pub(crate) fn send_bytes(socket: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(socket, bytes, SendFlags::NOSIGNAL)?)
}

/// Receives bytes into `buf` and up to `max_fds` (at most [`MAX_FDS`]) file descriptors
/// (`recvmsg` with `MSG_CMSG_CLOEXEC`, so no received fd leaks into an `exec`).
///
/// Returns the byte count (0: the peer closed) and the fds, owned (closed when dropped). When
/// the kernel had to truncate the control data (`MSG_CTRUNC`: more fds were sent than fit, so
/// some were dropped) or the bytes (`MSG_TRUNC`), every fd that did arrive is closed and the
/// call fails with `InvalidData`: a message with missing descriptors is useless and the peer is
/// broken or hostile.
pub(crate) fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    if max_fds > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "recv_with_fds: at most MAX_FDS fds",
        ));
    }
    // Sized for `max_fds` only, so that one more fd sets MSG_CTRUNC instead of being accepted.
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let len = rustix::cmsg_space!(ScmRights(max_fds)).min(space.len());
    let space = if max_fds == 0 {
        &mut space[..0]
    } else {
        &mut space[..len]
    };
    let mut control = RecvAncillaryBuffer::new(space);
    let msg = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) || msg.flags.contains(ReturnFlags::TRUNC) {
        drop(fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer sent more file descriptors than expected (control data truncated); \
             closed those that arrived",
        ));
    }
    if fds.len() > max_fds {
        drop(fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the peer sent more file descriptors than expected; closed them",
        ));
    }
    Ok((msg.bytes, fds))
}

/// Peeks at the socket without consuming anything and without blocking: `Ok(true)` when the
/// peer has closed its end (end of stream, or an error such as `ECONNRESET`), `Ok(false)` when
/// it is still connected (whether or not bytes are waiting).
pub(crate) fn peer_hung_up(socket: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&socket, PollFlags::IN | PollFlags::RDHUP)];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&zero)) {
        Ok(0) => false,
        Ok(_) => {
            let ev = fds[0].revents();
            if ev.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR) {
                return true;
            }
            if !ev.contains(PollFlags::IN) {
                return false;
            }
            // Readable without a hang-up flag: bytes are waiting. A 0-byte peek would mean
            // end of stream, which poll already reports as RDHUP; check anyway.
            let mut b = [MaybeUninit::<u8>::uninit(); 1];
            match rustix::net::recv(socket, &mut b, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
                Ok((_, 0)) => true,
                Ok(_) | Err(Errno::AGAIN) | Err(Errno::INTR) => false,
                Err(_) => true,
            }
        }
        // EINTR or ENOMEM: we do not know; say alive, the next check decides.
        Err(_) => false,
    }
}

/// Waits until one of `fds` is readable (or hung up), up to `timeout` (None: forever): the
/// variable-length sibling of `wait_any`, for a service's pending handshakes.
/// Returns, per fd, whether it is ready. `EINTR` counts as "nothing ready".
pub(crate) fn poll_many(
    fds: &[BorrowedFd<'_>],
    timeout: Option<std::time::Duration>,
) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN | PollFlags::RDHUP))
        .collect();
    let ts = timeout.map(|d| rustix::time::Timespec {
        tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    match rustix::event::poll(&mut pfds, ts.as_ref()) {
        Ok(_) => Ok(pfds.iter().map(|p| !p.revents().is_empty()).collect()),
        Err(Errno::INTR) => Ok(vec![false; fds.len()]),
        Err(e) => Err(e.into()),
    }
}

/// Takes an exclusive `flock` on `file` without waiting: `Ok(false)` when another open file
/// description holds it (a live process owns the name). The lock goes away with the last fd
/// of this open file, including when the process is killed.
pub(crate) fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    match rustix::fs::flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `shutdown(SHUT_RDWR)`: the peer sees end of stream at once, even while other fds of this
/// socket (in children, say) stay open.
pub(crate) fn shutdown(socket: BorrowedFd<'_>) -> io::Result<()> {
    match rustix::net::shutdown(socket, rustix::net::Shutdown::Both) {
        Ok(()) | Err(Errno::NOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `fd` is an eventfd, from its `/proc/self/fd` link (`anon_inode:[eventfd]`); `None`
/// when `/proc` cannot tell (not mounted). Used to check the doorbells a peer passed us.
pub(crate) fn is_eventfd(fd: BorrowedFd<'_>) -> Option<bool> {
    use std::os::fd::AsRawFd;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    Some(link.as_os_str() == "anon_inode:[eventfd]")
}

/// Creates a Unix stream socket bound at `path` but **not listening** (close-on-exec): the
/// activator hands it to a service it starts as another uid, which calls [`adopt_listener`],
/// so that the kernel records the service (not the activator) as the listener clients see.
pub(crate) fn bind_unlistened(path: &Path) -> io::Result<OwnedFd> {
    let addr = SocketAddrUnix::new(path)?;
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&fd, &addr)?;
    Ok(fd)
}

/// Takes the socket the activator passed as stdin (see [`bind_unlistened`]) and makes it
/// listen at `path`; stdin becomes `/dev/null`, so the socket does not leak into children.
pub(crate) fn adopt_stdin_listener(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let listener = adopt_listener(fd, path)?;
    let null = File::open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    Ok(listener)
}

/// Makes `fd`, a Unix stream socket bound at `path` by someone else, listen (non-blocking).
/// Refuses anything else: another kind of fd, or a socket bound at another path.
fn adopt_listener(fd: OwnedFd, path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let wrong = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    if rustix::net::sockopt::socket_domain(&fd)? != AddressFamily::UNIX
        || rustix::net::sockopt::socket_type(&fd)? != SocketType::STREAM
    {
        return Err(wrong("the inherited fd is not a Unix stream socket".into()));
    }
    let bound = SocketAddrUnix::try_from(rustix::net::getsockname(&fd)?)
        .map_err(|_| wrong("the inherited socket has no Unix address".into()))?;
    let expected = SocketAddrUnix::new(path)?;
    if bound != expected {
        return Err(wrong(format!(
            "the inherited socket is bound at {bound:?}, not at {}",
            path.display()
        )));
    }
    rustix::net::listen(&fd, 128)?;
    rustix::io::ioctl_fionbio(&fd, true)?;
    Ok(std::os::unix::net::UnixListener::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn fds_travel_and_arrive_cloexec() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        let n = send_with_fds(a.as_fd(), b"hi", &[x.as_fd(), x.as_fd()]).unwrap();
        assert_eq!(n, 2);
        let mut buf = [0u8; 8];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"hi"[..], 2));
        for fd in &fds {
            let flags = rustix::io::fcntl_getfd(fd).unwrap();
            assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
            assert_ne!(fd.as_raw_fd(), x.as_raw_fd());
        }
    }

    #[test]
    fn too_many_fds_is_an_error_and_closes_them() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, _y) = UnixStream::pair().unwrap();
        let many: Vec<_> = (0..6).map(|_| x.as_fd()).collect();
        send_with_fds(a.as_fd(), b"x", &many).unwrap();
        let mut buf = [0u8; 8];
        let err = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn credentials_and_hang_up() {
        let (a, b) = UnixStream::pair().unwrap();
        let c = peer_credentials(a.as_fd()).unwrap();
        assert_eq!((c.pid, c.uid, c.gid), (std::process::id(), euid(), egid()));
        assert!(!peer_hung_up(a.as_fd()));
        send_bytes(b.as_fd(), b"pending").unwrap();
        assert!(!peer_hung_up(a.as_fd()), "unread bytes are not a hang-up");
        shutdown(b.as_fd()).unwrap();
        assert!(peer_hung_up(a.as_fd()));
        drop(b);
        assert!(peer_hung_up(a.as_fd()));
        // Sending to a closed peer is an error, not SIGPIPE.
        assert!(send_bytes(a.as_fd(), b"x").is_err());
    }

    #[test]
    fn eventfd_kind() {
        let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
        assert_eq!(is_eventfd(fd.as_fd()), Some(true));
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(is_eventfd(a.as_fd()), Some(false));
    }

    #[test]
    fn a_socket_bound_elsewhere_is_adopted_only_at_its_path() {
        let dir = std::env::temp_dir().join(format!("shm-sys-adopt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.sock");
        let _ = std::fs::remove_file(&path);
        let fd = bind_unlistened(&path).unwrap();
        // Bound, not listening: nobody can connect yet.
        assert!(connect_unix(&path).is_err());
        let wrong = adopt_listener(fd.try_clone().unwrap(), &dir.join("b.sock")).unwrap_err();
        assert_eq!(wrong.kind(), io::ErrorKind::InvalidInput, "{wrong}");
        let (x, _y) = UnixStream::pair().unwrap();
        assert!(
            adopt_listener(OwnedFd::from(x), &path).is_err(),
            "a connected pair"
        );
        let listener = adopt_listener(fd, &path).unwrap();
        assert!(matches!(connect_unix(&path), Ok(Connect::Connected(_))));
        assert!(listener.accept().is_ok());
        // Non-blocking: no second client, no wait.
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
