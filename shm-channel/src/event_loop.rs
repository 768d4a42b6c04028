//! One thread serving a [`Service`] and all its channels: an epoll event loop that yields
//! [`Event::Connected`], [`Event::Message`] and [`Event::Disconnected`].
//!
//! # Readiness
//!
//! A message in a ring is not a kernel event: the writer stores it into shared memory and, to
//! stay off the system-call path, rings the reader only when the reader said it is going to
//! sleep (see [`WaitPolicy`] and the ring's doorbells). What the loop can wait on are file descriptors, so
//! each channel's receive ring has an **eventfd doorbell** that its writer signals, and the
//! loop registers, for every channel:
//!
//! - the receive ring's reader doorbell (readable: a message *may* have arrived);
//! - the liveness socket, for its hang-up only (the peer died or closed its end);
//!
//! and, once, the service's listening socket (readable: a client is connecting).
//!
//! An eventfd rather than a futex because epoll (and tokio) wait on fds, and because a
//! futex cannot be waited on together with the liveness socket.
//!
//! # Arm, look again, sleep, disarm
//!
//! Before it blocks in `epoll_wait`, the loop **arms** the doorbell of every channel it has no
//! message queued for ([`RingReader::arm_doorbell`](crate::RingReader::arm_doorbell)): the arm is a store to the ring header
//! and a fence, then one more look at the ring. A writer that publishes a message then loads
//! the doorbell, so of the two one always sees the other (Dekker): either the look finds the
//! message (arm returns `false`: the loop does not sleep) or the writer finds the doorbell
//! armed and signals the eventfd. No wake-up is lost. After `epoll_wait` returns, the loop
//! **disarms** every doorbell, so while it delivers messages, writers publish without any
//! system call; it drains the eventfds that were rung and looks at those rings.
//!
//! # Fairness
//!
//! Channels that have messages wait in a round-robin queue: the loop delivers **one** message
//! of the channel at the front and moves it to the back, so a busy channel never starves the
//! others. Channels not in the queue are not armed while the loop works (their writers do not
//! ring), so after each round the loop looks at their rings (a few loads each, no system
//! call) and queues those that hold something: a channel waits at most one round. Every
//! [`MIN_ROUND`] messages, and whenever the queue is empty, the loop also looks at every fd
//! (without sleeping while messages wait): new clients and hang-ups.
//!
//! # No busy loop
//!
//! An idle loop sleeps in `epoll_wait` with nothing armed but doorbells: it uses no CPU
//! (tested). It wakes every [`LOOK_AGAIN`] all the same to look at every ring, as a parked
//! receiver does, so a peer that writes without ringing (a broken one, or a wake-up taken by
//! someone else) costs latency, never a hang. Before sleeping it may spin a short, adaptive time looking at the rings
//! ([`EventLoop::set_wait_policy`]; by default at most 100 µs, halved after every spin
//! that found nothing): a busy peer is then caught without a kernel wake-up. The one timer
//! is the handshake: the service reads a client's hello only inside
//! [`Service::try_accept`], on a socket the loop cannot register, so while handshakes are in
//! progress the loop looks again every [`HANDSHAKE_POLL`].
//!
//! # Example
//!
//! ```
//! use shm_channel::event_loop::{Event, EventLoop};
//! use shm_channel::service::{self, ClientConfig, Service, ServiceConfig};
//! use shm_channel::Kind;
//! use std::time::Duration;
//!
//! # let dir = std::env::temp_dir().join(format!("shm-channel-doc-el-{}", std::process::id()));
//! let service = Service::bind("doc-loop", ServiceConfig::new("Echo", 1..=1)
//! #   .runtime_dir(&dir)
//!     .ring_sizes(1 << 16, 1 << 16))?;
//! let mut events = EventLoop::new(service)?;
//!
//! let client = std::thread::spawn({
//! #   let dir = dir.clone();
//!     move || -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
//!         let config = ClientConfig::new("Echo", 1..=1)
//! #           .runtime_dir(&dir)
//!             .ring_sizes(1 << 16, 1 << 16);
//!         let mut channel = service::connect("doc-loop", &config)?;
//!         channel.send_objects(1, Kind::Request, &[(0, b"ping")], Duration::from_secs(10))?;
//!         let reply = channel.recv_timeout(Duration::from_secs(10))?;
//!         Ok(reply.object(0).unwrap_or_default().to_vec())
//!     }
//! });
//!
//! let mut served = false;
//! while !served {
//!     match events.next_event(Duration::from_secs(10))? {
//!         Some(Event::Connected(id)) => println!("{id} connected"),
//!         Some(Event::Message { channel, message, reply }) => {
//!             // The message is read in place; the reply goes straight into the other ring.
//!             let data = message.object(0).unwrap_or_default();
//!             reply.send_objects(message.message_id(), Kind::Reply, &[(0, data)],
//!                 Duration::from_secs(10))?;
//!             println!("{channel}: answered");
//!         }
//!         Some(Event::Disconnected(id, reason)) => {
//!             println!("{id} gone: {reason}");
//!             served = true;
//!         }
//!         Some(_) => {}
//!         None => panic!("no event within 10 s"),
//!     }
//! }
//! assert_eq!(client.join().unwrap().unwrap(), b"ping");
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::channel::{Channel, ChannelId, TryRecvError};
use crate::ring::{Corrupt, Message, RingWriter, WaitPolicy};
use crate::service::{AcceptError, Service};
use crate::sys::{self, Epoll, Interest, Readiness};

/// While handshakes are in progress, how often the loop lets the service read their hellos.
pub const HANDSHAKE_POLL: Duration = Duration::from_millis(1);

/// The longest the loop sleeps without looking at every ring, like a parked receiver (see
/// [`WaitPolicy`]): a peer that writes without ringing is served late, never forgotten.
pub const LOOK_AGAIN: Duration = Duration::from_millis(250);

/// The fewest messages delivered between two looks at every fd (see the
/// [module docs](self#fairness)).
pub const MIN_ROUND: usize = 32;

/// Pure spinning before the spin yields the CPU between looks.
const PURE_SPIN: Duration = Duration::from_micros(2);
/// The floor of the adaptive spin.
const MIN_SPIN: Duration = Duration::from_micros(1);

/// The listener's epoll token; channels use `id << 2 | kind`.
const LISTENER: u64 = 0;
const DOORBELL: u64 = 1;
const SOCKET: u64 = 2;

/// What happened. See [`EventLoop::next_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A client completed its handshake; its channel is now served by the loop (see
    /// [`EventLoop::channel`]).
    Connected(ChannelId),
    /// A message arrived, borrowed in place from the channel's receive ring: dropping it (at
    /// the latest, by asking for the next event) frees its space.
    Message {
        /// The channel it came on.
        channel: ChannelId,
        /// The message.
        message: Message<'a>,
        /// The channel's send ring, to answer while the message is still borrowed. Its blocking
        /// sends fail with [`SendError::PeerDied`](crate::ring::SendError::PeerDied) once
        /// the peer is gone; [`RingWriter::try_allocate_for_send`] just finds the ring full.
        reply: &'a RingWriter,
    },
    /// A writer process died after reserving a message and before sending it: that message
    /// was skipped (later ones are still delivered). See
    /// [`TryRecvError::WriterDied`].
    MessageLost {
        /// The channel.
        channel: ChannelId,
        /// The dead writer's pid.
        pid: u32,
        /// The id of the message it had reserved.
        message_id: u64,
    },
    /// The channel ended and the loop no longer holds it. For a peer that went away, every
    /// message it sent before going was delivered first.
    Disconnected(ChannelId, DisconnectReason),
}

/// Why a channel left the loop.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer process died or closed its end (the liveness socket hung up).
    #[error("the peer died or closed the channel")]
    PeerDied,
    /// The receive ring is corrupt: the peer broke the protocol.
    #[error(transparent)]
    Corrupt(Corrupt),
    /// The peer changed a message under the reader (it was complete, then it was not).
    #[error("the peer broke the ring protocol: {0}")]
    Protocol(&'static str),
    /// Another error of the receive ring.
    #[error("receiving failed: {0}")]
    Failed(TryRecvError),
}

/// Why [`EventLoop::next_event`] failed. The loop stays usable: the next call carries on.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EventLoopError {
    /// A system call of the loop itself failed.
    #[error("event loop: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Accepting on the service's socket failed.
    #[error(transparent)]
    Accept(#[from] AcceptError),
    /// A newly accepted channel could not be watched; it was closed (its client sees the
    /// channel end).
    #[error("cannot watch {id}: {source}")]
    Register {
        /// The channel.
        id: ChannelId,
        /// The error.
        source: io::Error,
    },
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> EventLoopError {
    move |source| EventLoopError::Io { op, source }
}

/// One channel in the loop.
struct Entry {
    channel: Channel,
    /// A clone of the channel's writer, lent with each message (a field apart from
    /// `channel`, so it can be borrowed while the message borrows the channel).
    reply: RingWriter,
    /// In the ready queue.
    queued: bool,
    /// Its doorbell is armed (only inside `poll_fds`).
    armed: bool,
    /// The liveness socket hung up (and was unregistered).
    hung_up: bool,
    /// A delivery found it broken: remove it before anything else.
    doomed: bool,
}

/// What the search for the next event found, owning everything.
enum Next {
    Message(ChannelId),
    Event(Owned),
    TimedOut,
}

/// An event that borrows nothing.
enum Owned {
    Connected(ChannelId),
    Lost {
        channel: ChannelId,
        pid: u32,
        message_id: u64,
    },
    Disconnected(ChannelId, DisconnectReason),
}

impl Owned {
    fn into_event<'a>(self) -> Event<'a> {
        match self {
            Owned::Connected(id) => Event::Connected(id),
            Owned::Lost {
                channel,
                pid,
                message_id,
            } => Event::MessageLost {
                channel,
                pid,
                message_id,
            },
            Owned::Disconnected(id, reason) => Event::Disconnected(id, reason),
        }
    }
}

/// What one look at a channel's ring found.
enum Peek {
    Message,
    Empty,
    Lost { pid: u32, message_id: u64 },
    Gone(DisconnectReason),
    Missing,
}

/// An epoll event loop over one [`Service`] and every channel it accepts. See the
/// [module docs](self).
pub struct EventLoop {
    service: Service,
    epoll: Epoll,
    channels: HashMap<ChannelId, Entry>,
    /// Channels that may have a message, in delivery order.
    ready: VecDeque<ChannelId>,
    /// Connected events not delivered yet.
    pending: VecDeque<Owned>,
    /// Messages left in the current round of the ready queue.
    turns_left: usize,
    /// Messages delivered since the loop last looked at every fd.
    since_poll: usize,
    /// The listener was readable: run `try_accept`.
    accept_due: bool,
    /// The channel of the last message delivered (checked for `doomed` on the next call).
    last: Option<ChannelId>,
    readiness: Vec<Readiness>,
    policy: WaitPolicy,
    spin: Duration,
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("service", &self.service)
            .field("channels", &self.channels.len())
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    /// Serves `service`: its clients and their channels.
    pub fn new(service: Service) -> Result<EventLoop, EventLoopError> {
        let epoll = Epoll::new().map_err(io_err("epoll_create"))?;
        epoll
            .add(service.as_fd(), LISTENER, Interest::Readable)
            .map_err(io_err("watch the listener"))?;
        let policy = WaitPolicy::default();
        Ok(EventLoop {
            service,
            epoll,
            channels: HashMap::new(),
            ready: VecDeque::new(),
            pending: VecDeque::new(),
            turns_left: 0,
            since_poll: 0,
            // A client may have connected before the loop existed.
            accept_due: true,
            last: None,
            readiness: Vec::new(),
            spin: start_spin(&policy),
            policy,
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

    /// A channel the loop serves (to send on it, or look at its peer).
    pub fn channel(&self, id: ChannelId) -> Option<&Channel> {
        self.channels.get(&id).map(|e| &e.channel)
    }

    /// The ids of the channels the loop serves.
    pub fn channel_ids(&self) -> impl Iterator<Item = ChannelId> + '_ {
        self.channels.keys().copied()
    }

    /// How many channels the loop serves.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether the loop serves no channel.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Takes a channel out of the loop (no [`Event::Disconnected`] follows); `None` if it
    /// is not served.
    pub fn remove(&mut self, id: ChannelId) -> Option<Channel> {
        let entry = self.channels.remove(&id)?;
        self.unwatch(&entry);
        // Its place in the ready queue is skipped when reached.
        Some(entry.channel)
    }

    /// Ends a channel now: its peer sees the end at once. `false` if it is not served.
    pub fn close(&mut self, id: ChannelId) -> bool {
        match self.remove(id) {
            // Dropping shuts the socket down; `close` only adds an error nobody can act on.
            Some(channel) => {
                drop(channel);
                true
            }
            None => false,
        }
    }

    /// How the loop waits before sleeping (default: an adaptive spin of at most 100 µs; see
    /// the [module docs](self#no-busy-loop)). [`WaitPolicy::PARK`] never spins.
    pub fn set_wait_policy(&mut self, policy: WaitPolicy) {
        self.policy = policy;
        self.spin = start_spin(&policy);
    }

    /// The next event, waiting up to `timeout` (`Duration::MAX`: as long as it takes);
    /// `Ok(None)` when nothing happened in time.
    ///
    /// Messages come one at a time, round-robin over the channels that have some. A
    /// [`Event::Message`] borrows the loop: drop it before asking for the next event or
    /// reaching a channel through [`channel`](Self::channel) (or answer through its `reply`).
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event<'_>>, EventLoopError> {
        let deadline = Instant::now().checked_add(timeout);
        let id = match self.next_ready(deadline)? {
            Next::Message(id) => id,
            Next::Event(e) => return Ok(Some(e.into_event())),
            Next::TimedOut => return Ok(None),
        };
        // `next_ready` just saw a complete message at the head of this ring, and nothing read
        // it since: receive it for real. (Receiving is done here, once, rather than in
        // `next_ready`'s loop: a borrow returned from inside a loop would keep the loop's
        // state borrowed as well.)
        self.last = Some(id);
        let Some(entry) = self.channels.get_mut(&id) else {
            return Ok(None); // not reachable: `next_ready` saw it
        };
        let Entry {
            channel,
            reply,
            doomed,
            ..
        } = entry;
        match channel.try_recv() {
            Ok(Some(message)) => Ok(Some(Event::Message {
                channel: id,
                message,
                reply,
            })),
            // Only a peer that rewrites a published message gets here.
            other => {
                *doomed = true;
                let reason = match other {
                    Err(e) => reason_of(e),
                    Ok(_) => DisconnectReason::Protocol("a complete message became incomplete"),
                };
                Ok(Some(Event::Disconnected(id, reason)))
            }
        }
    }

    /// Finds what `next_event` delivers: a channel with a complete message at its head, or an
    /// owned event.
    fn next_ready(&mut self, deadline: Option<Instant>) -> Result<Next, EventLoopError> {
        if let Some(id) = self.last.take()
            && self.channels.get(&id).is_some_and(|e| e.doomed)
        {
            self.remove(id);
        }
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Next::Event(e));
            }
            while self.turns_left > 0
                && let Some(id) = self.ready.pop_front()
            {
                match self.peek(id) {
                    Peek::Message => {
                        self.ready.push_back(id);
                        self.turns_left -= 1;
                        self.since_poll += 1;
                        return Ok(Next::Message(id));
                    }
                    Peek::Empty => {
                        if let Some(e) = self.channels.get_mut(&id) {
                            e.queued = false;
                        }
                    }
                    Peek::Missing => {}
                    Peek::Lost { pid, message_id } => {
                        self.ready.push_back(id);
                        return Ok(Next::Event(Owned::Lost {
                            channel: id,
                            pid,
                            message_id,
                        }));
                    }
                    Peek::Gone(reason) => {
                        self.remove(id);
                        return Ok(Next::Event(Owned::Disconnected(id, reason)));
                    }
                }
            }
            // A round of the queue is over. Channels outside the queue are not armed while
            // the loop works, so their writers do not ring: look at their rings (a few loads
            // each, no system call) and let them join the next round.
            if !self.ready.is_empty() && self.since_poll < MIN_ROUND {
                self.scan_rings();
                self.turns_left = self.ready.len();
                continue;
            }
            // The queue is empty, or enough messages went by: look at every fd (new clients,
            // hang-ups). Sleep only when nothing is queued.
            let now = Instant::now();
            let wait = if self.ready.is_empty() {
                deadline.map(|d| d.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            self.poll_fds(wait, deadline)?;
            self.since_poll = 0;
            self.turns_left = self.ready.len();
            let expired = deadline.is_some_and(|d| Instant::now() >= d);
            if expired && self.ready.is_empty() && self.pending.is_empty() {
                return Ok(Next::TimedOut);
            }
        }
    }

    /// One look at a channel's ring, consuming nothing.
    fn peek(&mut self, id: ChannelId) -> Peek {
        let Some(e) = self.channels.get_mut(&id) else {
            return Peek::Missing;
        };
        if e.hung_up {
            // Make the channel ask the kernel now (it does so at most every millisecond on
            // its own): once it knows, an empty ring reads as `PeerDied`, never as "nothing
            // yet", and everything sent before the end is still delivered first.
            e.channel.peer_alive();
        }
        match e.channel.try_peek() {
            Ok(true) => Peek::Message,
            Ok(false) => Peek::Empty,
            Err(TryRecvError::WriterDied { pid, message_id }) => Peek::Lost { pid, message_id },
            Err(e) => Peek::Gone(reason_of(e)),
        }
    }

    /// Waits up to `wait` (None: forever) for any fd, after a short spin; queues the channels
    /// that may have messages and the clients that completed their handshake.
    fn poll_fds(
        &mut self,
        mut wait: Option<Duration>,
        deadline: Option<Instant>,
    ) -> Result<(), EventLoopError> {
        if wait != Some(Duration::ZERO) && self.spin_for_messages(deadline) {
            wait = Some(Duration::ZERO);
        }
        // Arm every doorbell whose ring we are not about to read anyway.
        let mut armed_any = false;
        for (id, e) in &mut self.channels {
            if e.queued {
                continue;
            }
            match e.channel.rx().arm_doorbell() {
                Ok(true) => {
                    e.armed = true;
                    armed_any = true;
                }
                // A message (or an error to report) is already there: no sleeping.
                Ok(false) | Err(_) => {
                    e.queued = true;
                    self.ready.push_back(*id);
                    wait = Some(Duration::ZERO);
                }
            }
        }
        if !self.channels.is_empty() {
            wait = Some(wait.map_or(LOOK_AGAIN, |w| w.min(LOOK_AGAIN)));
        }
        if self.service.pending_handshakes() > 0 {
            self.accept_due = true;
            wait = Some(wait.map_or(HANDSHAKE_POLL, |w| w.min(HANDSHAKE_POLL)));
        }
        if self.accept_due {
            wait = Some(Duration::ZERO);
        }
        self.readiness.clear();
        let waited = self.epoll.wait(&mut self.readiness, wait);
        // For `shmctl show`: the channels the loop slept on, until its next wake-up.
        let channels = &self.channels;
        self.service
            .note_loop_parked(|id| channels.get(&id).is_some_and(|e| e.armed));
        if armed_any {
            for e in self.channels.values_mut() {
                if e.armed {
                    e.channel.rx().disarm_doorbell();
                    e.armed = false;
                }
            }
        }
        waited.map_err(io_err("epoll_wait"))?;
        for r in std::mem::take(&mut self.readiness) {
            if r.token == LISTENER {
                self.accept_due = true;
                continue;
            }
            let id = ChannelId(r.token >> 2);
            let Some(e) = self.channels.get_mut(&id) else {
                continue; // removed since: a stale report
            };
            match r.token & 3 {
                DOORBELL => {
                    // Level-triggered: reset it, or it is reported forever.
                    sys::eventfd_drain(e.channel.doorbells().rx_reader_wake.as_fd())
                        .map_err(io_err("drain a doorbell"))?;
                }
                _ => {
                    if !e.hung_up {
                        e.hung_up = true;
                        self.epoll
                            .delete(e.channel.socket_fd())
                            .map_err(io_err("unwatch a socket"))?;
                    }
                }
            }
            if !e.queued {
                e.queued = true;
                self.ready.push_back(id);
            }
        }
        if self.accept_due {
            self.accept_all()?;
        }
        Ok(())
    }

    /// Spins up to the adaptive limit, looking at every ring not queued; true when one has
    /// something.
    fn spin_for_messages(&mut self, deadline: Option<Instant>) -> bool {
        let limit = self.spin;
        if limit.is_zero() || self.channels.is_empty() {
            return false;
        }
        let start = Instant::now();
        let mut end = start.checked_add(limit);
        if let Some(d) = deadline {
            end = Some(end.map_or(d, |e| e.min(d)));
        }
        loop {
            let found = self.scan_rings();
            let now = Instant::now();
            if found {
                if self.policy.adaptive {
                    let grown = (now - start).saturating_mul(2);
                    self.spin = self.spin.max(grown).min(self.policy.max_spin);
                }
                return true;
            }
            if end.is_some_and(|e| now >= e) {
                if self.policy.adaptive {
                    self.spin = (self.spin / 2).max(MIN_SPIN);
                }
                return false;
            }
            if now - start > PURE_SPIN {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Queues the channels outside the queue whose ring holds something; true if any.
    fn scan_rings(&mut self) -> bool {
        let mut found = false;
        for (id, e) in &mut self.channels {
            // A hint only (it counts messages still being written too): the look of
            // `peek`, or the arm before sleeping, decides.
            if !e.queued && !e.channel.rx_ring().is_empty() {
                e.queued = true;
                self.ready.push_back(*id);
                found = true;
            }
        }
        found
    }

    /// Takes every client whose handshake completed.
    fn accept_all(&mut self) -> Result<(), EventLoopError> {
        self.accept_due = false;
        while let Some(channel) = self.service.try_accept()? {
            self.watch(channel)?;
        }
        Ok(())
    }

    /// Registers a new channel and announces it.
    fn watch(&mut self, channel: Channel) -> Result<(), EventLoopError> {
        let id = channel.id();
        let register = |source| EventLoopError::Register { id, source };
        let base =
            id.0.checked_mul(4)
                .ok_or_else(|| register(io::Error::other("channel id too large for a token")))?;
        let bell = channel.doorbells().rx_reader_wake.as_fd();
        self.epoll
            .add(bell, base | DOORBELL, Interest::Readable)
            .map_err(register)?;
        if let Err(e) = self
            .epoll
            .add(channel.socket_fd(), base | SOCKET, Interest::HangUp)
        {
            let _ = self.epoll.delete(bell);
            return Err(register(e));
        }
        let reply = channel.tx().clone();
        self.channels.insert(
            id,
            Entry {
                channel,
                reply,
                // Messages may have been sent before the loop saw the channel.
                queued: true,
                armed: false,
                hung_up: false,
                doomed: false,
            },
        );
        self.ready.push_back(id);
        self.pending.push_back(Owned::Connected(id));
        Ok(())
    }

    /// Unregisters a channel's fds. The registrations belong to the fds' open files, which
    /// the peer process shares: closing ours would not end them.
    fn unwatch(&self, entry: &Entry) {
        let fds: [BorrowedFd<'_>; 2] = [
            entry.channel.doorbells().rx_reader_wake.as_fd(),
            entry.channel.socket_fd(),
        ];
        for fd in fds {
            // Fails only for an fd that is not registered (fine) or a broken epoll (then the
            // stale reports are skipped: their channel id is gone).
            let _ = self.epoll.delete(fd);
        }
    }
}

fn start_spin(policy: &WaitPolicy) -> Duration {
    if policy.adaptive {
        (policy.max_spin / 4).max(MIN_SPIN.min(policy.max_spin))
    } else {
        policy.max_spin
    }
}

fn reason_of(e: TryRecvError) -> DisconnectReason {
    match e {
        TryRecvError::PeerDied => DisconnectReason::PeerDied,
        TryRecvError::Corrupt(c) => DisconnectReason::Corrupt(c),
        other => DisconnectReason::Failed(other),
    }
}
