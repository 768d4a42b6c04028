//! A full-duplex channel between two processes: two rings (one per direction, each written by
//! one side), four doorbells, and the Unix socket the handshake ran on, which stays open as the
//! liveness signal.
//!
//! The socket carries no data after the handshake. When a peer process ends, however it ends
//! (`exit`, a panic, `SIGKILL`), the kernel closes its end and ours reports a hang-up at once:
//! [`Channel::peer_alive`] turns false and the non-blocking operations return
//! [`TryRecvError::PeerDied`] / [`TrySendError::PeerDied`]. The rings' memory is freed when the
//! last mapping and fd of both sides are gone.
//!
//! Channels come from [`Service::accept_timeout`](crate::service::Service::accept_timeout) (the
//! server's end) and [`connect`](crate::service::connect) (the client's end).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::ring::{self, Corrupt, Kind, Message, Ring, RingReader, RingWriter};
use crate::sys;

/// How often, at most, [`Channel::try_recv`] asks the kernel whether the peer lives while the
/// ring stays empty: often enough to notice a dead peer within a millisecond, rarely enough that
/// a polling loop spends its time on the ring, not in `poll(2)`.
const LIVENESS_INTERVAL: Duration = Duration::from_millis(1);

/// Names one channel of a service: unique among the channels one [`Service`] accepted.
///
/// [`Service`]: crate::service::Service
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u64);

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "channel {}", self.0)
    }
}

/// Who the peer process is, as the kernel saw it (`SO_PEERCRED`): for a server, the client's
/// credentials when it called `connect`; for a client, the server's when it called `listen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct PeerCredentials {
    /// Process id (0 when the peer is in another pid namespace).
    pub pid: u32,
    /// Effective user id.
    pub uid: u32,
    /// Effective group id (the primary group only: supplementary groups are not reported).
    pub gid: u32,
}

impl PeerCredentials {
    /// Credentials with these ids (for policies and tests).
    pub fn new(pid: u32, uid: u32, gid: u32) -> Self {
        PeerCredentials { pid, uid, gid }
    }

    pub(crate) fn of(socket: BorrowedFd<'_>) -> io::Result<Self> {
        let c = sys::peer_credentials(socket)?;
        Ok(PeerCredentials {
            pid: c.pid,
            uid: c.uid,
            gid: c.gid,
        })
    }
}

impl fmt::Display for PeerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {} gid {} pid {}", self.uid, self.gid, self.pid)
    }
}

/// An eventfd one side rings to wake the other (non-blocking, close-on-exec). Parked waiters
/// poll it (with the channel's socket, so that a peer's death wakes them too).
pub struct Doorbell(OwnedFd);

impl Doorbell {
    pub(crate) fn new() -> io::Result<Self> {
        sys::eventfd_new().map(Doorbell)
    }

    pub(crate) fn from_fd(fd: OwnedFd) -> Self {
        Doorbell(fd)
    }

    /// Rings: makes the eventfd readable, waking whoever polls it.
    pub fn ring(&self) -> io::Result<()> {
        sys::eventfd_signal(self.0.as_fd())
    }

    /// Resets the counter, so the next poll waits for the next ring.
    pub fn drain(&self) -> io::Result<()> {
        sys::eventfd_drain(self.0.as_fd())
    }
}

impl AsFd for Doorbell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::os::fd::AsRawFd;
        write!(f, "Doorbell(fd {})", self.0.as_raw_fd())
    }
}

/// Hands `ring` copies of its two doorbells and of the liveness socket, so that its blocking
/// operations park on the eventfds (rung by the peer's process, which attaches the same
/// eventfds) and wake when the peer dies. The [`Doorbells`] keep the originals for callers
/// that poll them (epoll, tokio).
pub(crate) fn attach_doorbells(
    ring: &Ring,
    reader_wake: &Doorbell,
    writer_wake: &Doorbell,
    socket: &UnixStream,
) -> Result<(), ring::RingError> {
    let dup = |fd: BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map_err(|source| crate::RegionError::Io { op: "dup", source })
    };
    ring.attach_doorbells(
        dup(reader_wake.as_fd())?,
        dup(writer_wake.as_fd())?,
        Some(dup(socket.as_fd())?),
    )
}

/// The four doorbells of a channel, named from this end's point of view. Each ring has a
/// "reader wake" (its writer rings it when the parked reader has something to read) and a
/// "writer wake" (its reader rings it when a writer parked on a full ring has room).
#[derive(Debug)]
#[non_exhaustive]
pub struct Doorbells {
    /// The peer rings it when it wrote into our receive ring: we wait on it.
    pub rx_reader_wake: Doorbell,
    /// We ring it after consuming from our receive ring, to wake the peer's parked writer.
    pub rx_writer_wake: Doorbell,
    /// We ring it after writing into our send ring, to wake the peer's parked reader.
    pub tx_reader_wake: Doorbell,
    /// The peer rings it after consuming from our send ring: we wait on it when it is full.
    pub tx_writer_wake: Doorbell,
}

/// Which end of the channel this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The end a service accepted.
    Server,
    /// The end `connect` returned.
    Client,
}

/// Why a message could not be sent without waiting.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TrySendError {
    /// No room now; the peer has not caught up.
    #[error("the channel's send ring is full")]
    Full,
    /// The peer process is gone; nothing will read the message.
    #[error("the peer process died (or closed the channel)")]
    PeerDied,
    /// The message can never fit in the send ring.
    #[error("message of {size} bytes exceeds the channel's limit of {max} bytes")]
    TooLarge {
        /// The message's size in the ring.
        size: u64,
        /// The largest message the ring holds.
        max: u64,
    },
    /// The send ring is corrupt: the channel is unusable.
    #[error(transparent)]
    Corrupt(Corrupt),
    /// Another error of the ring.
    #[error(transparent)]
    Ring(ring::SendError),
}

/// Why no message was received without waiting.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// The peer process is gone and every message it sent has been received.
    #[error("the peer process died (or closed the channel)")]
    PeerDied,
    /// A writer died before finishing a message, which was skipped (see
    /// [`ring::RecvError::WriterDied`]); later messages are still delivered.
    #[error("writer process {pid} died before sending message {message_id}")]
    WriterDied {
        /// The dead writer's pid.
        pid: u32,
        /// The message id it had reserved.
        message_id: u64,
    },
    /// The receive ring is corrupt: the channel is unusable.
    #[error(transparent)]
    Corrupt(Corrupt),
    /// Another error of the ring.
    #[error(transparent)]
    Ring(ring::RecvError),
}

impl TryRecvError {
    /// The channel's view of a ring error met without waiting.
    fn from_ring(e: ring::RecvError) -> Self {
        match e {
            ring::RecvError::WriterDied { pid, message_id } => {
                TryRecvError::WriterDied { pid, message_id }
            }
            ring::RecvError::Corrupt(c) => TryRecvError::Corrupt(c),
            // Anything the ring adds later (it never waits here) is passed on as is.
            other => TryRecvError::Ring(other),
        }
    }
}

/// One end of a full-duplex channel between two processes. See the [module docs](self).
///
/// Dropping it closes every fd it holds and shuts the socket down, so the peer sees the
/// channel end at once.
pub struct Channel {
    id: ChannelId,
    side: Side,
    version: u32,
    protocol: String,
    peer: PeerCredentials,
    // Field order is drop order: the handles go before the rings they borrow memory from
    // (they hold `Arc`s, so any order is sound; this one is just tidy).
    tx: RingWriter,
    rx: RingReader,
    tx_ring: Ring,
    rx_ring: Ring,
    doorbells: Doorbells,
    socket: UnixStream,
    /// Counts this channel against its service's limits until dropped (server side).
    _seat: Option<Arc<()>>,
    /// When `try_recv` last asked the kernel about the peer.
    last_liveness_check: Option<Instant>,
    /// Set once the peer was seen gone (it never comes back).
    peer_gone: AtomicBool,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("side", &self.side)
            .field("protocol", &self.protocol)
            .field("version", &self.version)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// What the handshake hands to [`Channel::new`].
pub(crate) struct ChannelParts {
    pub(crate) id: ChannelId,
    pub(crate) side: Side,
    pub(crate) version: u32,
    pub(crate) protocol: String,
    pub(crate) peer: PeerCredentials,
    pub(crate) tx_ring: Ring,
    pub(crate) rx_ring: Ring,
    /// The reader of `rx_ring` (taken by the caller, so assembling cannot fail).
    pub(crate) rx: RingReader,
    pub(crate) doorbells: Doorbells,
    pub(crate) socket: UnixStream,
    /// The service's count of live channels (server side): held until the channel drops.
    pub(crate) seat: Option<Arc<()>>,
}

impl Channel {
    /// Assembles a channel; `p.socket` must already be non-blocking (the liveness peek must
    /// never block).
    pub(crate) fn new(p: ChannelParts) -> Channel {
        Channel {
            id: p.id,
            side: p.side,
            version: p.version,
            protocol: p.protocol,
            peer: p.peer,
            tx: p.tx_ring.writer(),
            rx: p.rx,
            tx_ring: p.tx_ring,
            rx_ring: p.rx_ring,
            doorbells: p.doorbells,
            socket: p.socket,
            _seat: p.seat,
            last_liveness_check: None,
            peer_gone: AtomicBool::new(false),
        }
    }

    /// This channel's id, as the service numbered it (both ends see the same id).
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The protocol version both sides agreed on (the highest both speak).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The protocol name.
    pub fn protocol(&self) -> &str {
        &self.protocol
    }

    /// Who the peer process is.
    pub fn peer(&self) -> &PeerCredentials {
        &self.peer
    }

    /// The writer of the ring towards the peer (cheap to clone for other threads).
    pub fn tx(&self) -> &RingWriter {
        &self.tx
    }

    /// The reader of the ring from the peer.
    pub fn rx(&mut self) -> &mut RingReader {
        &mut self.rx
    }

    /// The ring towards the peer.
    pub fn tx_ring(&self) -> &Ring {
        &self.tx_ring
    }

    /// The ring from the peer.
    pub fn rx_ring(&self) -> &Ring {
        &self.rx_ring
    }

    /// The doorbells, for parking and waking.
    pub fn doorbells(&self) -> &Doorbells {
        &self.doorbells
    }

    /// The liveness socket: it becomes readable with a hang-up (`POLLHUP`/`POLLRDHUP`) when
    /// the peer is gone. Poll it together with the doorbells.
    pub fn socket_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }

    /// Whether the peer still holds its end. Never blocks; costs one `poll(2)` while the peer
    /// lives (and nothing once it was seen gone).
    pub fn peer_alive(&self) -> bool {
        self.check_peer()
    }

    /// Asks the kernel unless a death was already seen, and remembers a death.
    fn check_peer(&self) -> bool {
        if self.peer_gone.load(Ordering::Relaxed) {
            return false;
        }
        if sys::peer_hung_up(self.socket.as_fd()) {
            self.peer_gone.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Sends one message made of `objects` (id, data) if there is room now. When the ring is
    /// full, the peer's liveness is checked, so a dead peer is reported as
    /// [`TrySendError::PeerDied`] rather than as a ring that stays full forever. (A message
    /// that fits is written without any system call, even if the peer just died: the next
    /// receive or full ring reports it.)
    pub fn try_send_objects(
        &self,
        message_id: u64,
        kind: Kind,
        objects: &[(u64, &[u8])],
    ) -> Result<(), TrySendError> {
        if self.peer_gone.load(Ordering::Relaxed) {
            return Err(TrySendError::PeerDied);
        }
        let size = objects.iter().try_fold(0u64, |acc, (_, d)| {
            acc.checked_add(shm_layout::object_size(d.len() as u64)?)
        });
        let max = self.tx.max_message();
        let size = size.ok_or(TrySendError::TooLarge {
            size: u64::MAX,
            max,
        })?;
        let mut slot =
            match self
                .tx
                .try_allocate_for_send(size, message_id, objects.len() as u64, false)
            {
                Ok(slot) => slot,
                Err(ring::TrySendError::Full) => {
                    return Err(if self.check_peer() {
                        TrySendError::Full
                    } else {
                        TrySendError::PeerDied
                    });
                }
                Err(ring::TrySendError::TooLarge { size, max }) => {
                    return Err(TrySendError::TooLarge { size, max });
                }
                Err(ring::TrySendError::Corrupt(c)) => return Err(TrySendError::Corrupt(c)),
                Err(ring::TrySendError::Io(e)) => {
                    return Err(TrySendError::Ring(ring::SendError::Io(e)));
                }
            };
        slot.set_kind(kind);
        for (id, data) in objects {
            // The reservation was sized from these very objects, so they fit; a failure would
            // be a bug in the size computation, reported rather than panicking (dropping the
            // slot publishes it as skipped).
            if let Err(e) = slot.push_object(*id, data) {
                return Err(TrySendError::Corrupt(Corrupt::from(e)));
            }
        }
        match slot.send() {
            Ok(()) => Ok(()),
            Err(ring::SendError::Corrupt(c)) => Err(TrySendError::Corrupt(c)),
            Err(ring::SendError::Layout(e)) => Err(TrySendError::Corrupt(Corrupt::from(e))),
            Err(ring::SendError::TooLarge { size, max }) => {
                Err(TrySendError::TooLarge { size, max })
            }
            // Not expected from `send` of a filled slot (it never waits); passed on as is.
            Err(other) => Err(TrySendError::Ring(other)),
        }
    }

    /// The next message, if one is complete; never waits. Messages the peer sent before it
    /// died are still delivered; after the last one, [`TryRecvError::PeerDied`].
    pub fn try_recv(&mut self) -> Result<Option<Message<'_>>, TryRecvError> {
        let gone = self.liveness_tick();
        match self.rx.try_receive() {
            Ok(Some(m)) => Ok(Some(m)),
            Ok(None) if gone => Err(TryRecvError::PeerDied),
            Ok(None) => Ok(None),
            Err(e) => Err(TryRecvError::from_ring(e)),
        }
    }

    /// Whether a complete message waits, without consuming it (what an event loop asks
    /// before it hands the message out); the same errors as [`try_recv`](Self::try_recv).
    pub fn try_peek(&mut self) -> Result<bool, TryRecvError> {
        let gone = self.liveness_tick();
        match self.rx.peek() {
            Ok(true) => Ok(true),
            Ok(false) if gone => Err(TryRecvError::PeerDied),
            Ok(false) => Ok(false),
            Err(e) => Err(TryRecvError::from_ring(e)),
        }
    }

    /// Asks the kernel about the peer before looking at the ring (a message written before
    /// the peer died is then always delivered before `PeerDied`), at most every
    /// `LIVENESS_INTERVAL`: `Instant::now` costs no system call, `poll` does. Returns whether
    /// the peer is gone.
    fn liveness_tick(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .last_liveness_check
            .is_none_or(|t| now.duration_since(t) >= LIVENESS_INTERVAL);
        if due {
            self.last_liveness_check = Some(now);
            self.check_peer();
        }
        self.peer_gone.load(Ordering::Relaxed)
    }

    /// Sends one message made of `objects` (id, data), waiting up to `timeout` for room: spins
    /// briefly, then parks until the peer frees some (see [`ring::WaitPolicy`]). Fails with
    /// [`ring::SendError::PeerDied`] once the peer is gone.
    pub fn send_objects(
        &self,
        message_id: u64,
        kind: Kind,
        objects: &[(u64, &[u8])],
        timeout: Duration,
    ) -> Result<(), ring::SendError> {
        if self.peer_gone.load(Ordering::Relaxed) {
            return Err(ring::SendError::PeerDied);
        }
        self.tx.send_objects(message_id, kind, objects, timeout)
    }

    /// Reserves room for a message to write in place (see
    /// [`RingWriter::allocate_for_send_timeout`]), waiting up to `timeout`.
    pub fn allocate_for_send_timeout(
        &self,
        size: u64,
        message_id: u64,
        obj_count: u64,
        no_queue: bool,
        timeout: Duration,
    ) -> Result<ring::Slot<'_>, ring::SendError> {
        if self.peer_gone.load(Ordering::Relaxed) {
            return Err(ring::SendError::PeerDied);
        }
        self.tx
            .allocate_for_send_timeout(size, message_id, obj_count, no_queue, timeout)
    }

    /// The next message, waiting up to `timeout`: spins briefly, then parks on the doorbell
    /// and the liveness socket together. Messages the peer sent before it died are delivered
    /// first; then [`ring::RecvError::PeerDied`].
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Message<'_>, ring::RecvError> {
        self.rx.receive_timeout(timeout)
    }

    /// The next message, waiting as long as it takes (or until the peer dies).
    pub fn recv(&mut self) -> Result<Message<'_>, ring::RecvError> {
        self.rx.receive_timeout(Duration::MAX)
    }

    /// How this end waits, sending and receiving (default: adaptive spin up to 100 µs, then
    /// park).
    pub fn set_wait_policy(&mut self, policy: ring::WaitPolicy) {
        self.tx.set_wait_policy(policy);
        self.rx.set_wait_policy(policy);
    }

    /// Ends the channel now: shuts the socket down so the peer sees the end at once (even if
    /// a copy of the fd lives on in a forked child), then closes everything.
    pub fn close(self) -> io::Result<()> {
        sys::shutdown(self.socket.as_fd())
        // Drop closes the fds.
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // Not just closing: the rings hold duplicates of the socket (for their parked
        // waiters), and a `RingWriter` clone may outlive this channel; shutting the socket
        // down makes the peer see the end now regardless.
        let _ = sys::shutdown(self.socket.as_fd());
    }
}
