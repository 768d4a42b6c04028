//! Channels and services on tokio (feature `tokio`, on by default): `recv().await`,
//! `send_objects(..).await` and `accept().await`. A receive spins briefly in bursts that
//! give the thread back to the runtime (see [Spinning](#spinning)), then parks on a file
//! descriptor, never polling.
//!
//! # Readiness
//!
//! The same doorbell protocol as the [event loop](crate::event_loop#arm-look-again-sleep-disarm),
//! with tokio's reactor in place of our epoll. An [`AsyncChannel`] registers copies of three
//! of its channel's fds with tokio ([`AsyncFd`]):
//!
//! - the receive ring's reader doorbell (the peer signals it after writing a message, if we
//!   said we would sleep);
//! - the send ring's writer doorbell (the peer signals it after freeing room, if we said we
//!   wait for room);
//! - the liveness socket (readable with a hang-up when the peer is gone).
//!
//! `recv` looks at the ring; if it is empty it **arms** the reader doorbell (which looks once
//! more: a message that arrived in between is taken at once), then awaits the doorbell or
//! the socket; woken, it drains the eventfd, clears tokio's readiness, **disarms** and looks
//! again. Sending is the mirror image on the writer doorbell, only when the ring is full.
//! While the peer keeps up, neither makes a system call. tokio's readiness is
//! edge-triggered, but clearing it only clears the readiness that was seen (tokio tags it),
//! so a signal that lands between the drain and the clear is never lost.
//!
//! Both are cancel-safe: a `recv` dropped before it returns consumed nothing, and the
//! doorbell armed for it is disarmed. Time limits come from `tokio::time::timeout`.
//!
//! Like a parked blocking call, a waiting future looks at its ring again every
//! [`LOOK_AGAIN`] even when nobody rang: a wake-up taken by someone else (a clone of the
//! writer parked on the same doorbell in another thread drains the eventfd it shares with
//! us) or a peer that does not ring costs latency, never a hang.
//!
//! # Spinning
//!
//! A parked future is woken by the kernel: the peer signals the eventfd, the runtime's
//! thread returns from `epoll_wait`. Across cores that costs tens of microseconds on the
//! machines measured (docs/BENCHMARKS.md, "stubs"), where the round trip itself takes about
//! one: without a spin an async call costs thirty times a blocking one. So `recv`, finding
//! the ring empty, first spins, as the blocking [`Channel::recv`] does, with the very same
//! adaptive limit ([`WaitPolicy`], learned per ring and shared with the channel's blocking
//! calls: a message that arrives during the spin after `t` raises the limit to `2t`, a spin
//! that runs out halves it, down to a microsecond).
//!
//! What differs is that a tokio task must not hold its thread for long: the spin runs in
//! bursts of at most [`SPIN_BURST`], with a `tokio::task::yield_now()` before each, so the
//! runtime runs its other tasks, timers and I/O between two bursts. The first yield also
//! matters on a current-thread runtime: the task that our last message woke (a caller
//! waiting for its reply, say) runs and sends its next request before we spin for the
//! answer. The spin's whole length is bounded by the policy's `max_spin` (100 µs by
//! default); once it runs out the future parks and does not spin again in this call.
//!
//! The trade-off, and when to turn it off:
//!
//! - a spinning future keeps its runtime thread busy for up to the limit on every wait: CPU
//!   time that an idle-then-parked runtime would not spend (only while the peer answers
//!   within the limit does the limit stay up; an idle peer soon costs a microsecond per
//!   wait);
//! - when the peer shares our core (or runs on this very runtime), spinning only delays it:
//!   the limit then drops to its floor by itself (a reply that came only after a yield of
//!   the thread counts as a miss, as for the blocking spin);
//! - a busy runtime (other tasks ready) gains little: its thread is awake anyway and polls
//!   the reactor between tasks, so a wake-up costs no sleeping thread;
//! - [`WaitPolicy::PARK`] ([`AsyncChannel::set_wait_policy`]) never spins (every wait a
//!   kernel wake-up, never a held thread); [`WaitPolicy::SPIN`] never parks (the future
//!   polls, yielding between bursts, until a message comes or the peer dies).
//!
//! [`AsyncChannel::recv_now`] is the spin without the runtime: one burst from within the
//! caller's own `poll`, never awaiting, `None` if nothing came. The async RPC client's calls
//! use it to read their reply themselves (see [`rpc::AsyncClient`](crate::rpc::AsyncClient)):
//! a reply that comes within the burst then costs no yield, no trip through the scheduler
//! and the reactor, no task hand-off. A `recv_now` whose spin ran out of its adaptive limit
//! makes the next `recv` park at once, so a peer on our core is not spun for twice.
//!
//! Sending does not spin: a send that finds the ring full parks on the room doorbell at
//! once (the full ring is the overloaded, rare case).
//!
//! How waits ended shows in [`Ring::wait_stats`](crate::Ring::wait_stats) of the receive
//! ring ([`Channel::rx_ring`]): `spin_hits` (found while spinning) and `parks` (went to
//! sleep in the runtime).
//!
//! # Example
//!
//! ```
//! use shm_channel::async_channel::{self, AsyncService};
//! use shm_channel::service::{ClientConfig, Service, ServiceConfig};
//! use shm_channel::Kind;
//!
//! # let dir = std::env::temp_dir().join(format!("shm-channel-doc-async-{}", std::process::id()));
//! # let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! # rt.block_on(async {
//! let service = Service::bind("doc-async", ServiceConfig::new("Echo", 1..=1)
//! #   .runtime_dir(&dir)
//!     .ring_sizes(1 << 16, 1 << 16))?;
//! let mut service = AsyncService::new(service)?;
//! let server = tokio::spawn(async move {
//!     let mut channel = service.accept().await?;
//!     let message = channel.recv().await?;
//!     let data = message.object(0).unwrap_or_default().to_vec();
//!     drop(message);
//!     channel.send_objects(1, Kind::Reply, &[(0, &data)]).await?;
//!     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//! });
//!
//! let config = ClientConfig::new("Echo", 1..=1)
//! #   .runtime_dir(&dir)
//!     .ring_sizes(1 << 16, 1 << 16);
//! let mut client = async_channel::connect("doc-async", &config).await?;
//! client.send_objects(1, Kind::Request, &[(0, b"ping")]).await?;
//! assert_eq!(client.recv().await?.object(0), Some(&b"ping"[..]));
//! server.await??;
//! # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
//! # }).unwrap();
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::channel::{Channel, ChannelId, TryRecvError, TrySendError};
use crate::event_loop::{HANDSHAKE_POLL, LOOK_AGAIN};
use crate::ring::{Burst, Kind, Message, RecvError, RingWriter, SendError, Spin, WaitPolicy};
use crate::service::{self, AcceptError, ClientConfig, ConnectError, Service};
use crate::sys;

/// The longest a receive spins without giving its runtime's thread back: between two bursts
/// it yields (`tokio::task::yield_now`), so other tasks, timers and I/O get their turn. A
/// few microseconds: long enough to catch a peer on another core that answers at once
/// (a round trip is about a microsecond here), short against what tokio asks of a task
/// between two awaits.
pub const SPIN_BURST: Duration = Duration::from_micros(5);

/// A [`Channel`] whose waits are tokio futures. See the [module docs](self).
pub struct AsyncChannel {
    // Registered copies of the channel's fds (dropping them deregisters them).
    rx_bell: AsyncFd<OwnedFd>,
    room_bell: AsyncFd<OwnedFd>,
    socket: AsyncFd<OwnedFd>,
    channel: Channel,
    /// A [`recv_now`](Self::recv_now) spun until the adaptive limit ran out: the next
    /// `recv` parks at once rather than spin the same wait again.
    spun_out: bool,
}

impl fmt::Debug for AsyncChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AsyncChannel").field(&self.channel).finish()
    }
}

/// A copy of `fd` registered with tokio for readability.
fn register(fd: BorrowedFd<'_>) -> io::Result<AsyncFd<OwnedFd>> {
    sys::async_fd(fd.try_clone_to_owned()?, Interest::READABLE)
}

impl AsyncChannel {
    /// Wraps `channel`, registering its doorbells and socket with the current tokio runtime.
    ///
    /// Fails outside a tokio runtime. Panics inside one built without I/O (`enable_io`).
    pub fn new(channel: Channel) -> io::Result<AsyncChannel> {
        let bells = channel.doorbells();
        Ok(AsyncChannel {
            rx_bell: register(bells.rx_reader_wake.as_fd())?,
            room_bell: register(bells.tx_writer_wake.as_fd())?,
            socket: register(channel.socket_fd())?,
            channel,
            spun_out: false,
        })
    }

    /// The channel's id.
    pub fn id(&self) -> ChannelId {
        self.channel.id()
    }

    /// The channel (its peer, its rings, its non-blocking calls).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The writer of the ring towards the peer: clone it to send from other tasks or threads
    /// (its own waits block the thread; [`send_objects`](Self::send_objects) does not).
    pub fn tx(&self) -> &RingWriter {
        self.channel.tx()
    }

    /// Sets how [`recv`](Self::recv) spins before it parks, and how the channel's blocking
    /// calls wait (see [`Channel::set_wait_policy`]; the default spins adaptively up to
    /// 100 µs). [`WaitPolicy::PARK`] never spins: every wait is a wake-up by the kernel,
    /// and no runtime thread is ever held. See the [module docs](self#spinning).
    pub fn set_wait_policy(&mut self, policy: WaitPolicy) {
        self.channel.set_wait_policy(policy);
    }

    /// [`set_wait_policy`](Self::set_wait_policy), by value (for
    /// `AsyncClient::new(channel.with_wait_policy(..))`).
    #[must_use]
    pub fn with_wait_policy(mut self, policy: WaitPolicy) -> Self {
        self.set_wait_policy(policy);
        self
    }

    /// Unwraps the blocking channel (deregistering it from tokio).
    pub fn into_inner(self) -> Channel {
        self.channel
    }

    /// The next message, borrowed in place from the receive ring (dropping it frees its
    /// space). Messages the peer sent before it died are delivered first; then
    /// [`RecvError::PeerDied`]. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Message<'_>, RecvError> {
        // The spin phase (see the module docs): started when the ring is first found empty,
        // dropped once it runs out (then this call parks, and does not spin again).
        let mut spin: Option<Spin> = None;
        let mut spinning = !std::mem::take(&mut self.spun_out);
        loop {
            if peek(&mut self.channel)? {
                break;
            }
            if spinning {
                if spin.is_none() {
                    spin = self.channel.rx().start_spin();
                }
                if let Some(s) = spin.as_mut() {
                    // Other tasks first: the one our last message woke may be the one whose
                    // request the peer answers next (a client's caller, on a current-thread
                    // runtime), and a task must not hold the thread for long anyway.
                    tokio::task::yield_now().await;
                    match self.channel.rx().spin_burst(s, SPIN_BURST)? {
                        // Found (taken below), or not yet: look again through the channel,
                        // which also notices a dead peer (a `SPIN` policy never runs out).
                        Burst::Ready(()) | Burst::Again => continue,
                        Burst::Expired => {}
                    }
                }
                spinning = false;
            }
            // Arming looks at the ring once more: a message that came meanwhile is taken now.
            if !self.channel.rx().arm_doorbell()? {
                continue;
            }
            self.channel.rx().note_park();
            let armed = ArmedReader(&mut self.channel);
            let woke = wait_either(&self.rx_bell, &self.socket).await;
            drop(armed);
            match woke {
                Ok(Woke::Bell) => {}
                // Gone or not, make the channel ask the kernel now (it does so at most every
                // millisecond on its own), so an empty ring reads as `PeerDied` at once.
                Ok(Woke::Socket) => {
                    self.channel.peer_alive();
                }
                Err(e) => return Err(RecvError::Wait(e.to_string())),
            }
        }
        // The look above found a complete message and nothing read it since: take it.
        // (Taken here rather than inside the loop: a borrow returned from inside a loop keeps
        // the channel borrowed for the rest of the loop too.)
        take_peeked(&mut self.channel)
    }

    /// The next message if one is there or arrives within one spin burst, never awaiting:
    /// for a caller that looks for its answer from within its own `poll` (the async
    /// client's calls do, so that a reply that comes within a microsecond or so costs no
    /// trip through the runtime's scheduler and reactor).
    ///
    /// Looks at the ring; if it is empty, spins as [`recv`](Self::recv) does, with the
    /// same adaptive limit, for at most [`SPIN_BURST`]. `Ok(None)`: nothing came; the
    /// caller should await [`recv`](Self::recv) (or poll again later). When the spin ran
    /// out of its adaptive limit (the peer is slow, or shares our core), that next `recv`
    /// parks at once instead of spinning again.
    pub fn recv_now(&mut self) -> Result<Option<Message<'_>>, RecvError> {
        if !peek(&mut self.channel)? {
            let Some(mut spin) = self.channel.rx().start_spin() else {
                return Ok(None);
            };
            match self.channel.rx().spin_burst(&mut spin, SPIN_BURST)? {
                // Found: taken below (after a look through the channel, which also
                // notices a dead peer).
                Burst::Ready(()) => {
                    if !peek(&mut self.channel)? {
                        return Ok(None);
                    }
                }
                Burst::Again => return Ok(None),
                Burst::Expired => {
                    self.spun_out = true;
                    return Ok(None);
                }
            }
        }
        take_peeked(&mut self.channel).map(Some)
    }

    /// Sends one message made of `objects` (id, data), waiting for room as long as it takes.
    /// Fails with [`SendError::PeerDied`] once the peer is gone. Cancel-safe: a send dropped
    /// before it returns sent nothing.
    pub async fn send_objects(
        &self,
        message_id: u64,
        kind: Kind,
        objects: &[(u64, &[u8])],
    ) -> Result<(), SendError> {
        let tx = self.channel.tx();
        loop {
            if try_send(&self.channel, message_id, kind, objects)? {
                return Ok(());
            }
            tx.arm_room_doorbell();
            let armed = ArmedWriter(tx);
            // The reader may have freed room before it could see us armed: try again.
            if try_send(&self.channel, message_id, kind, objects)? {
                return Ok(());
            }
            let woke = wait_either(&self.room_bell, &self.socket).await;
            drop(armed);
            match woke {
                Ok(Woke::Bell) => {}
                Ok(Woke::Socket) => {
                    self.channel.peer_alive();
                }
                Err(e) => return Err(SendError::Wait(e.to_string())),
            }
        }
    }
}

/// Whether a complete message waits at the head of the ring, consuming nothing.
fn peek(channel: &mut Channel) -> Result<bool, RecvError> {
    match channel.try_peek() {
        Ok(true) => Ok(true),
        Ok(false) => Ok(false),
        Err(e) => Err(recv_error(e)),
    }
}

/// Takes the message a look found complete at the head of the ring.
fn take_peeked(channel: &mut Channel) -> Result<Message<'_>, RecvError> {
    match channel.try_recv() {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(RecvError::Wait(
            "the peer broke the ring protocol: a complete message became incomplete".into(),
        )),
        Err(e) => Err(recv_error(e)),
    }
}

/// One attempt to send: `Ok(false)` when the ring is full.
fn try_send(
    channel: &Channel,
    message_id: u64,
    kind: Kind,
    objects: &[(u64, &[u8])],
) -> Result<bool, SendError> {
    match channel.try_send_objects(message_id, kind, objects) {
        Ok(()) => Ok(true),
        Err(TrySendError::Full) => Ok(false),
        Err(TrySendError::PeerDied) => Err(SendError::PeerDied),
        Err(TrySendError::TooLarge { size, max }) => Err(SendError::TooLarge { size, max }),
        Err(TrySendError::Corrupt(c)) => Err(SendError::Corrupt(c)),
        Err(TrySendError::Ring(e)) => Err(e),
    }
}

fn recv_error(e: TryRecvError) -> RecvError {
    match e {
        TryRecvError::PeerDied => RecvError::PeerDied,
        TryRecvError::WriterDied { pid, message_id } => RecvError::WriterDied { pid, message_id },
        TryRecvError::Corrupt(c) => RecvError::Corrupt(c),
        TryRecvError::Ring(e) => e,
    }
}

/// Which fd woke a wait.
enum Woke {
    Bell,
    Socket,
}

/// Awaits `bell` (an eventfd: drained) or `socket` (hung up, or bytes nobody reads), or
/// [`LOOK_AGAIN`] (as `Woke::Bell`: the caller looks at the ring again).
async fn wait_either(bell: &AsyncFd<OwnedFd>, socket: &AsyncFd<OwnedFd>) -> io::Result<Woke> {
    tokio::select! {
        () = tokio::time::sleep(LOOK_AGAIN) => Ok(Woke::Bell),
        guard = bell.readable() => {
            let mut guard = guard?;
            sys::eventfd_drain(guard.get_inner().as_fd())?;
            // Clears only the readiness this guard saw: a signal after the drain stays.
            guard.clear_ready();
            Ok(Woke::Bell)
        }
        guard = socket.readable() => {
            guard?.clear_ready();
            Ok(Woke::Socket)
        }
    }
}

/// Disarms the reader doorbell when dropped (a `recv` future dropped mid-wait included).
struct ArmedReader<'a>(&'a mut Channel);

impl Drop for ArmedReader<'_> {
    fn drop(&mut self) {
        self.0.rx().disarm_doorbell();
    }
}

/// Disarms the room doorbell when dropped.
struct ArmedWriter<'a>(&'a RingWriter);

impl Drop for ArmedWriter<'_> {
    fn drop(&mut self) {
        self.0.disarm_room_doorbell();
    }
}

/// A service whose `accept` is a tokio future. See the [module docs](self).
pub struct AsyncService {
    listener: AsyncFd<OwnedFd>,
    service: Service,
}

impl fmt::Debug for AsyncService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AsyncService").field(&self.service).finish()
    }
}

impl AsyncService {
    /// Wraps `service`, registering its listening socket with the current tokio runtime.
    ///
    /// Fails outside a tokio runtime. Panics inside one built without I/O (`enable_io`).
    pub fn new(service: Service) -> io::Result<AsyncService> {
        Ok(AsyncService {
            listener: register(service.as_fd())?,
            service,
        })
    }

    /// The service.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The service, to change it (for instance [`Service::take_refused`]).
    pub fn service_mut(&mut self) -> &mut Service {
        &mut self.service
    }

    /// The next channel whose handshake completes. Clients that fail their handshake are
    /// refused and skipped, as with [`Service::accept_timeout`]. Cancel-safe.
    ///
    /// While handshakes are in progress it looks at them every [`HANDSHAKE_POLL`] (their
    /// sockets are the service's own); otherwise it sleeps on the listening socket.
    pub async fn accept(&mut self) -> Result<AsyncChannel, AcceptError> {
        loop {
            if let Some(channel) = self.service.try_accept()? {
                return Ok(AsyncChannel::new(channel)?);
            }
            if self.service.pending_handshakes() > 0 {
                tokio::select! {
                    guard = self.listener.readable() => guard?.clear_ready(),
                    () = tokio::time::sleep(HANDSHAKE_POLL) => {}
                }
            } else {
                // Cleared before `try_accept` takes every waiting connection: one that comes
                // later makes the listener ready again.
                self.listener.readable().await?.clear_ready();
            }
        }
    }
}

/// Connects to the service `name` (see [`service::connect`]) without blocking the runtime's
/// threads (the handshake runs on tokio's blocking pool).
pub async fn connect(name: &str, config: &ClientConfig) -> Result<AsyncChannel, ConnectError> {
    let (name, config) = (name.to_owned(), config.clone());
    let channel = tokio::task::spawn_blocking(move || service::connect(&name, &config))
        .await
        .map_err(|e| ConnectError::Io {
            op: "connect on the blocking pool",
            source: io::Error::other(e),
        })??;
    AsyncChannel::new(channel).map_err(|source| ConnectError::Io {
        op: "register the channel with tokio",
        source,
    })
}
