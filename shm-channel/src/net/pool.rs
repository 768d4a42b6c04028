//! The connections to one destination, as a state machine (sans-io): which address to
//! connect to and when, which connection sends which queued message, what happens to the
//! messages of a connection that drops, and when the pool is done closing.
//!
//! The decisions, after SolidFrame's ipc connection pool:
//! - at most [`PoolConfig::max_pending_connects`] connects at once, whatever the number
//!   of addresses the destination resolved to;
//! - a first connection as soon as a message is queued; another, up to
//!   [`PoolConfig::max_connections`], whenever the queue holds more than
//!   [`PoolConfig::grow_threshold`] messages per connection;
//! - after a failed connect or a dropped connection, the next connect waits a backoff
//!   that doubles per failure (with jitter, so that many clients of a restarted server do
//!   not reconnect in lockstep); the first handshake that succeeds resets it;
//! - a dropped connection's messages: those not started go back to the queue (a one-shot
//!   fails), those cut mid-way fail unless idempotent, those awaiting a reply wait for the
//!   next handshake: a new peer instance means [`Failure::PeerRestarted`], the same one
//!   [`Failure::ConnectionLost`]; idempotent ones are sent again.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::conn::{
    CancelOutcome, ConnConfig, ConnError, ConnEvent, ConnStats, Connection, Delivery, OutMessage,
    PeerInfo, Progress,
};
use super::frame::{CloseCode, ProtocolSpec};

/// A connection of a pool.
pub type ConnId = u64;

/// How a pool grows, shrinks and retries.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The most connections to the destination.
    pub max_connections: usize,
    /// The most connects in progress at once.
    pub max_pending_connects: usize,
    /// Queued messages per connection beyond which another connection opens.
    pub grow_threshold: usize,
    /// Messages handed to one connection at once (the rest wait in the pool's queue,
    /// where they are still cancelable and go to whichever connection frees up first).
    pub per_connection: usize,
    /// The first reconnect delay.
    pub backoff_min: Duration,
    /// The longest reconnect delay.
    pub backoff_max: Duration,
    /// Seeds the jitter (tests fix it; the driver draws it at random).
    pub seed: u64,
    /// The most messages waiting in the pool's queue (not yet handed to a connection):
    /// beyond it [`Pool::send`] refuses with [`Failure::QueueFull`], and the driver waits
    /// for room or fails the send (backpressure instead of an unbounded queue). Messages
    /// coming back from a dropped connection are requeued whatever the bound.
    pub max_queued: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections: 1,
            max_pending_connects: 1,
            grow_threshold: 8,
            per_connection: 16,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            seed: 0x9e37_79b9_7f4a_7c15,
            max_queued: 1024,
        }
    }
}

/// Why a message was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Failure {
    /// A one-shot message found no connection.
    #[error("no connection to the destination")]
    NotConnected,
    /// Its connection dropped after it started (or while its reply was awaited, and the
    /// peer came back as the same instance).
    #[error("the connection was lost: {0}")]
    ConnectionLost(String),
    /// Its reply was awaited from a peer instance that is gone: the peer restarted.
    #[error("the peer restarted")]
    PeerRestarted,
    /// Canceled before it started.
    #[error("canceled")]
    Canceled,
    /// The pool was closed.
    #[error("the pool was closed")]
    PoolClosed,
    /// The message's source failed.
    #[error("the message source failed: {0}")]
    Source(String),
    /// The pool's queue is full ([`PoolConfig::max_queued`]), or, for a send that may not
    /// wait (`no_queue`), no connection can take the message now.
    #[error("no room in the send queue")]
    QueueFull,
    /// The message is larger than the peer accepts.
    #[error("message of {size} bytes exceeds the peer's limit of {max}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The peer's limit.
        max: u64,
    },
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolAction<A> {
    /// Open a connection to `addr`, then report [`Pool::handle_connected`] or
    /// [`Pool::handle_connect_failed`] for `conn`.
    Connect {
        /// The new connection.
        conn: ConnId,
        /// Where to.
        addr: A,
    },
}

/// What happened in a pool.
#[derive(Debug)]
pub enum PoolEvent {
    /// A connection finished its handshake.
    Connected {
        /// Which.
        conn: ConnId,
        /// What it settled.
        peer: PeerInfo,
    },
    /// A connect failed.
    ConnectFailed {
        /// Which.
        conn: ConnId,
        /// Why.
        error: String,
    },
    /// A connection closed.
    Closed {
        /// Which.
        conn: ConnId,
        /// Why.
        error: ConnError,
    },
    /// A message arrived.
    Message {
        /// On which connection.
        conn: ConnId,
        /// Its protocol index.
        protocol: u16,
        /// Its bytes (validated).
        bytes: Vec<u8>,
    },
    /// A streamed message began arriving (see [`ConnEvent::StreamStarted`]).
    StreamStarted {
        /// On which connection.
        conn: ConnId,
        /// Its protocol index.
        protocol: u16,
        /// Its stream id on that connection.
        stream: u32,
        /// Its header.
        header: shm_layout::MessageHeader,
        /// Its object's id.
        object_id: u64,
        /// Its object's length.
        len: u64,
    },
    /// The next piece of a streamed message.
    StreamData {
        /// On which connection.
        conn: ConnId,
        /// Its stream id.
        stream: u32,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A streamed message is complete.
    StreamEnded {
        /// On which connection.
        conn: ConnId,
        /// Its stream id.
        stream: u32,
    },
    /// A streamed message will not complete.
    StreamAborted {
        /// On which connection.
        conn: ConnId,
        /// Its stream id.
        stream: u32,
        /// Why.
        reason: String,
    },
    /// A message was fully sent.
    Sent {
        /// Its token.
        token: u64,
    },
    /// A message was not delivered (or its reply will never come).
    Failed {
        /// Its token.
        token: u64,
        /// The request id whose reply it awaited.
        request_id: Option<u64>,
        /// Why.
        failure: Failure,
    },
}

/// What [`Pool::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canceled {
    /// Dropped before it started (a [`Failure::Canceled`] event follows).
    Dropped,
    /// On the wire or awaiting its reply: not cancelable.
    NotCancelable,
    /// No such message.
    Unknown,
}

enum Slot {
    Connecting,
    Up(Box<Connection>),
}

/// A reply awaited on a connection that dropped.
struct Orphan {
    token: u64,
    request_id: Option<u64>,
    instance: Option<u128>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    No,
    /// Finish what is queued and awaited, then close.
    Delayed,
    /// Closed.
    Done,
}

/// The connections to one destination (see the module docs).
pub struct Pool<A> {
    config: PoolConfig,
    conn_config: ConnConfig,
    instance: u128,
    protocols: Vec<ProtocolSpec>,
    addrs: Vec<A>,
    next_addr: usize,
    conns: BTreeMap<ConnId, Slot>,
    next_conn: ConnId,
    queue: VecDeque<OutMessage>,
    orphans: Vec<Orphan>,
    peer_instance: Option<u128>,
    failures: u32,
    retry_at: Option<Instant>,
    events: VecDeque<PoolEvent>,
    rng: u64,
    closing: Closing,
    /// A connection dropped: the next connect waits (computed when time is next known).
    pending_backoff: bool,
    /// Connect even with an empty queue, until a connection is open.
    want_connection: bool,
    /// What removed connections sent.
    gone_stats: ConnStats,
    /// Connects after a failure, so far.
    reconnects: u64,
    /// Idempotent messages requeued to go out again, so far.
    resends: u64,
}

impl<A> std::fmt::Debug for Pool<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("connections", &self.conns.len())
            .field("queued", &self.queue.len())
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

impl<A: Clone> Pool<A> {
    /// A pool for a destination that resolved to `addrs`, speaking `protocols`, with this
    /// process's `instance` id.
    pub fn new(
        config: PoolConfig,
        conn_config: ConnConfig,
        instance: u128,
        protocols: Vec<ProtocolSpec>,
        addrs: Vec<A>,
    ) -> Self {
        let rng = config.seed | 1;
        Pool {
            config,
            conn_config,
            instance,
            protocols,
            addrs,
            next_addr: 0,
            conns: BTreeMap::new(),
            next_conn: 1,
            queue: VecDeque::new(),
            orphans: Vec::new(),
            peer_instance: None,
            failures: 0,
            retry_at: None,
            events: VecDeque::new(),
            rng,
            closing: Closing::No,
            pending_backoff: false,
            want_connection: false,
            gone_stats: ConnStats::default(),
            reconnects: 0,
            resends: 0,
        }
    }

    /// Replaces the addresses (a new resolution of the destination's name).
    pub fn set_addrs(&mut self, addrs: Vec<A>) {
        self.addrs = addrs;
    }

    /// Connections that finished their handshake and are not closed.
    pub fn open_connections(&self) -> usize {
        self.conns
            .values()
            .filter(|s| matches!(s, Slot::Up(c) if c.is_open()))
            .count()
    }

    /// Connects in progress (TCP or handshake).
    pub fn pending_connects(&self) -> usize {
        self.conns
            .values()
            .filter(|s| match s {
                Slot::Connecting => true,
                Slot::Up(c) => !c.is_open() && !c.is_closed(),
            })
            .count()
    }

    /// Messages waiting in the pool's queue (not yet handed to a connection).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// The peer instance of the last handshake.
    pub fn peer_instance(&self) -> Option<u128> {
        self.peer_instance
    }

    /// Whether the pool finished closing.
    pub fn is_closed(&self) -> bool {
        self.closing == Closing::Done
    }

    /// The connection `conn`, to feed it bytes and take its frames.
    pub fn connection(&mut self, conn: ConnId) -> Option<&mut Connection> {
        match self.conns.get_mut(&conn) {
            Some(Slot::Up(c)) => Some(c),
            _ => None,
        }
    }

    /// Queues a message. A one-shot message fails at once when no connection is open; a
    /// message larger than the peer accepts fails at once; a closing pool refuses all.
    pub fn send(&mut self, msg: OutMessage) -> Result<(), (Failure, OutMessage)> {
        if self.closing != Closing::No {
            return Err((Failure::PoolClosed, msg));
        }
        if msg.delivery == Delivery::OneShot && self.open_connections() == 0 {
            return Err((Failure::NotConnected, msg));
        }
        let limit = self
            .conns
            .values()
            .filter_map(|s| match s {
                Slot::Up(c) => c.peer().map(|p| p.max_message),
                Slot::Connecting => None,
            })
            .min();
        if let Some(max) = limit
            && !msg.streamed
            && msg.source.len() > max
        {
            let size = msg.source.len();
            return Err((Failure::TooLarge { size, max }, msg));
        }
        if !self.has_room() {
            return Err((Failure::QueueFull, msg));
        }
        self.queue.push_back(msg);
        self.assign();
        Ok(())
    }

    /// Whether [`send`](Self::send) would find room in the queue.
    pub fn has_room(&self) -> bool {
        self.queue.len() < self.config.max_queued.max(1)
    }

    /// Sends a message only if an open connection takes it now (the RPC's `no_queue`):
    /// otherwise it comes back with [`Failure::QueueFull`] and nothing was queued.
    pub fn send_now(&mut self, msg: OutMessage) -> Result<(), (Failure, OutMessage)> {
        let token = msg.token;
        self.send(msg)?;
        // `send` assigned what it could; a message still queued had no connection.
        match self.queue.iter().rposition(|m| m.token == token) {
            Some(i) => match self.queue.remove(i) {
                Some(m) => Err((Failure::QueueFull, m)),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Asks for a connection even with nothing queued (a client that wants to be connected
    /// before its first call).
    pub fn wake_up(&mut self) {
        self.want_connection = true;
    }

    /// Cancels the message `token`: dropped if it has not started.
    pub fn cancel(&mut self, token: u64) -> Canceled {
        if let Some(i) = self.queue.iter().position(|m| m.token == token)
            && let Some(m) = self.queue.remove(i)
        {
            self.fail(m.token, m.request_id, Failure::Canceled);
            return Canceled::Dropped;
        }
        for slot in self.conns.values_mut() {
            if let Slot::Up(c) = slot {
                match c.cancel(token) {
                    CancelOutcome::Canceled(m) => {
                        self.events.push_back(PoolEvent::Failed {
                            token: m.token,
                            request_id: m.request_id,
                            failure: Failure::Canceled,
                        });
                        return Canceled::Dropped;
                    }
                    CancelOutcome::NotCancelable => return Canceled::NotCancelable,
                    CancelOutcome::Unknown => {}
                }
            }
        }
        if self.orphans.iter().any(|o| o.token == token) {
            return Canceled::NotCancelable;
        }
        Canceled::Unknown
    }

    /// The caller no longer waits for the reply to `request_id` (it timed out).
    pub fn forget_reply(&mut self, request_id: u64) {
        self.orphans.retain(|o| o.request_id != Some(request_id));
        for slot in self.conns.values_mut() {
            if let Slot::Up(c) = slot {
                c.forget_reply(request_id);
            }
        }
    }

    /// Starts closing. `force`: close every connection now; everything unfinished fails
    /// with [`Failure::PoolClosed`]. Otherwise: refuse new messages, finish sending the
    /// queue and receiving the awaited replies, then close.
    pub fn close(&mut self, force: bool) {
        if self.closing == Closing::Done {
            return;
        }
        if !force {
            self.closing = Closing::Delayed;
            self.check_delayed_close();
            return;
        }
        self.closing = Closing::Done;
        while let Some(m) = self.queue.pop_front() {
            self.fail(m.token, m.request_id, Failure::PoolClosed);
        }
        for slot in self.conns.values_mut() {
            if let Slot::Up(c) = slot {
                c.close(ConnError::Local);
            }
        }
        self.process();
        for o in std::mem::take(&mut self.orphans) {
            self.fail(o.token, o.request_id, Failure::PoolClosed);
        }
    }

    fn check_delayed_close(&mut self) {
        if self.closing != Closing::Delayed {
            return;
        }
        let busy = !self.queue.is_empty()
            || self.conns.values().any(|s| match s {
                Slot::Connecting => false,
                Slot::Up(c) => !c.is_closed() && (c.unsent() > 0 || c.awaiting() > 0),
            });
        if busy {
            return;
        }
        self.closing = Closing::Done;
        for slot in self.conns.values_mut() {
            if let Slot::Up(c) = slot {
                c.close(ConnError::Local);
            }
        }
        self.process();
        for o in std::mem::take(&mut self.orphans) {
            self.fail(o.token, o.request_id, Failure::PoolClosed);
        }
    }

    fn fail(&mut self, token: u64, request_id: Option<u64>, failure: Failure) {
        self.events.push_back(PoolEvent::Failed {
            token,
            request_id,
            failure,
        });
    }

    /// Hands queued messages to open connections with room: ordered messages all to the
    /// first open connection (so they stay in order), others to the least busy.
    fn assign(&mut self) {
        let per = self.config.per_connection.max(1);
        let mut i = 0;
        let mut ordered_blocked = false;
        while i < self.queue.len() {
            let ordered = self.queue[i].delivery == Delivery::Ordered;
            let target = if ordered {
                if ordered_blocked {
                    None
                } else {
                    self.conns
                        .iter()
                        .find_map(|(id, s)| match s {
                            Slot::Up(c) if c.is_open() => Some((*id, c.unsent())),
                            _ => None,
                        })
                        .filter(|(_, n)| *n < per)
                        .map(|(id, _)| id)
                }
            } else {
                self.conns
                    .iter()
                    .filter_map(|(id, s)| match s {
                        Slot::Up(c) if c.is_open() && c.unsent() < per => Some((*id, c.unsent())),
                        _ => None,
                    })
                    .min_by_key(|(_, n)| *n)
                    .map(|(id, _)| id)
            };
            match target {
                Some(id) => {
                    if let (Some(m), Some(Slot::Up(c))) =
                        (self.queue.remove(i), self.conns.get_mut(&id))
                    {
                        c.send(m);
                    }
                }
                None => {
                    ordered_blocked |= ordered;
                    i += 1;
                }
            }
        }
    }

    /// What the driver must do next (connects to open).
    pub fn poll_action(&mut self, now: Instant) -> Option<PoolAction<A>> {
        if self.closing == Closing::Done || self.addrs.is_empty() {
            return None;
        }
        if std::mem::take(&mut self.pending_backoff) {
            self.schedule_retry(now);
        }
        if self.retry_at.is_some_and(|t| now < t) || !self.connect_wanted() {
            return None;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        if self.failures > 0 {
            self.reconnects += 1;
            tracing::info!(conn, attempt = self.failures, "reconnecting");
        }
        let addr = self.addrs[self.next_addr % self.addrs.len()].clone();
        self.next_addr = self.next_addr.wrapping_add(1);
        self.conns.insert(conn, Slot::Connecting);
        Some(PoolAction::Connect { conn, addr })
    }

    /// Whether the driver must run [`poll_action`](Self::poll_action) and recompute its
    /// timer: a connect may be due (now, or after the backoff), or the pool closed (the
    /// driver winds down). Conservative (it ignores the backoff's deadline), and false
    /// whenever nothing changed for the driver: a wake-up that finds nothing to do must
    /// not be paid for on every message.
    pub fn needs_driver(&self) -> bool {
        self.closing == Closing::Done
            || self.pending_backoff
            || (!self.addrs.is_empty() && self.connect_wanted())
    }

    /// Whether one more connection is wanted (the queue outgrew the live ones, or there
    /// are none and something waits for one) and the limits allow it; the backoff aside.
    fn connect_wanted(&self) -> bool {
        let open = self.open_connections();
        let pending = self.pending_connects();
        if pending >= self.config.max_pending_connects.max(1)
            || self.conns.len() >= self.config.max_connections.max(1)
        {
            return false;
        }
        let live = open + pending;
        if live == 0 {
            !self.queue.is_empty() || !self.orphans.is_empty() || self.want_connection
        } else {
            self.queue.len() > live * self.config.grow_threshold.max(1)
        }
    }

    /// Whether the driver of `conn` has something to do ([`Connection::wants_transmit`]);
    /// true for a connection still connecting (its driver starts by looking).
    pub fn wants_transmit(&self, conn: ConnId) -> bool {
        match self.conns.get(&conn) {
            Some(Slot::Up(c)) => c.wants_transmit(),
            Some(Slot::Connecting) | None => true,
        }
    }

    /// The socket of `conn` is connected: its handshake starts.
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId) {
        if let Some(slot) = self.conns.get_mut(&conn) {
            let mut c = Connection::client(
                now,
                self.conn_config.clone(),
                self.instance,
                self.protocols.clone(),
            );
            if self.closing == Closing::Done {
                c.close(ConnError::Local);
            }
            *slot = Slot::Up(Box::new(c));
        }
    }

    /// Connecting `conn` failed.
    pub fn handle_connect_failed(&mut self, now: Instant, conn: ConnId, error: String) {
        if self.conns.remove(&conn).is_none() {
            return;
        }
        self.events
            .push_back(PoolEvent::ConnectFailed { conn, error });
        self.failures = self.failures.saturating_add(1);
        self.schedule_retry(now);
        self.fail_one_shots_without_connection();
    }

    /// The driver dropped the socket of a closed connection: forget it.
    pub fn remove(&mut self, conn: ConnId) {
        if let Some(Slot::Up(c)) = self.conns.get(&conn)
            && !c.is_closed()
        {
            return;
        }
        if let Some(Slot::Up(c)) = self.conns.remove(&conn) {
            self.gone_stats += c.stats();
        }
    }

    /// What every connection of the pool sent so far.
    pub fn stats(&self) -> ConnStats {
        let mut s = self.gone_stats;
        for slot in self.conns.values() {
            if let Slot::Up(c) = slot {
                s += c.stats();
            }
        }
        s
    }

    /// Connects made after a failed connect or a dropped connection, so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Idempotent messages sent again because their connection dropped, so far.
    pub fn resends(&self) -> u64 {
        self.resends
    }

    fn schedule_retry(&mut self, now: Instant) {
        let exp = self.failures.saturating_sub(1).min(20);
        let base = self
            .config
            .backoff_min
            .saturating_mul(1u32 << exp)
            .min(self.config.backoff_max);
        // xorshift64: jitter in [base/2, base].
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        let delay = base.mul_f64(0.5 + 0.5 * frac);
        tracing::info!(
            failures = self.failures,
            backoff_ms = delay.as_millis() as u64,
            "reconnect backoff"
        );
        self.retry_at = Some(now + delay);
    }

    fn fail_one_shots_without_connection(&mut self) {
        if self.open_connections() > 0 {
            return;
        }
        let (fail, keep): (Vec<_>, Vec<_>) = self
            .queue
            .drain(..)
            .partition(|m| m.delivery == Delivery::OneShot);
        self.queue = keep.into();
        for m in fail {
            self.fail(m.token, m.request_id, Failure::NotConnected);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(|s| match s {
            Slot::Up(c) => c.poll_timeout(),
            Slot::Connecting => None,
        });
        let retry = self.retry_at.filter(|_| {
            self.closing != Closing::Done && (!self.queue.is_empty() || !self.orphans.is_empty())
        });
        conns.chain(retry).min()
    }

    /// Lets time pass on every connection.
    pub fn handle_timeout(&mut self, now: Instant) {
        for slot in self.conns.values_mut() {
            if let Slot::Up(c) = slot {
                c.handle_timeout(now);
            }
        }
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
        }
        self.process();
    }

    /// Collects what the connections did (call after feeding one data, or polling its
    /// frames): handshakes, messages, sends, closes; reassigns the queue.
    pub fn process(&mut self) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            while let Some(ev) = match self.conns.get_mut(&id) {
                Some(Slot::Up(c)) => c.poll_event(),
                _ => None,
            } {
                match ev {
                    ConnEvent::Connected(peer) => self.on_connected(id, peer),
                    ConnEvent::Message { protocol, bytes } => {
                        self.events.push_back(PoolEvent::Message {
                            conn: id,
                            protocol,
                            bytes,
                        })
                    }
                    ConnEvent::Sent { token } => self.events.push_back(PoolEvent::Sent { token }),
                    ConnEvent::Failed {
                        token,
                        request_id,
                        reason,
                    } => self.fail(token, request_id, Failure::Source(reason)),
                    ConnEvent::StreamStarted {
                        protocol,
                        stream,
                        header,
                        object_id,
                        len,
                    } => self.events.push_back(PoolEvent::StreamStarted {
                        conn: id,
                        protocol,
                        stream,
                        header,
                        object_id,
                        len,
                    }),
                    ConnEvent::StreamData { stream, bytes } => {
                        self.events.push_back(PoolEvent::StreamData {
                            conn: id,
                            stream,
                            bytes,
                        })
                    }
                    ConnEvent::StreamEnded { stream } => self
                        .events
                        .push_back(PoolEvent::StreamEnded { conn: id, stream }),
                    ConnEvent::StreamAborted { stream, reason } => {
                        self.events.push_back(PoolEvent::StreamAborted {
                            conn: id,
                            stream,
                            reason,
                        })
                    }
                    ConnEvent::Closed(error) => self.on_closed(id, error),
                }
            }
        }
        self.assign();
        self.check_delayed_close();
    }

    fn on_connected(&mut self, conn: ConnId, peer: PeerInfo) {
        let restarted = self.peer_instance.is_some_and(|old| old != peer.instance);
        self.peer_instance = Some(peer.instance);
        self.want_connection = false;
        self.failures = 0;
        self.retry_at = None;
        for o in std::mem::take(&mut self.orphans) {
            let failure = if restarted || o.instance.is_some_and(|i| i != peer.instance) {
                Failure::PeerRestarted
            } else {
                Failure::ConnectionLost("the connection dropped while the reply was awaited".into())
            };
            self.fail(o.token, o.request_id, failure);
        }
        self.events.push_back(PoolEvent::Connected { conn, peer });
    }

    fn on_closed(&mut self, conn: ConnId, error: ConnError) {
        let Some(Slot::Up(c)) = self.conns.get_mut(&conn) else {
            return;
        };
        let instance = c.peer().map(|p| p.instance).or(self.peer_instance);
        let unfinished = c.take_unfinished();
        let pool_closed = self.closing == Closing::Done;
        // Refused by the server (its connection limit, a gateway's policy) or by us (no
        // protocol in common): nothing of ours was handled, and waiting for another
        // connection would most likely end the same way, at the caller's timeout. Its
        // messages fail now, with the reason.
        let refused = match &error {
            ConnError::ClosedByPeer {
                code: CloseCode::Refused,
                reason,
            }
            | ConnError::Refused(reason) => Some(format!("the connection was refused: {reason}")),
            _ => None,
        };
        let mut requeue = Vec::new();
        for u in unfinished {
            let failure = if pool_closed {
                Some(Failure::PoolClosed)
            } else {
                refused.clone().map(Failure::ConnectionLost)
            };
            if let Some(failure) = failure {
                self.fail(u.token, u.request_id, failure);
                continue;
            }
            match (u.progress, u.message) {
                (Progress::NotStarted, Some(m)) if u.delivery != Delivery::OneShot => {
                    requeue.push(m)
                }
                (Progress::NotStarted, _) => {
                    self.fail(u.token, u.request_id, Failure::NotConnected)
                }
                (_, Some(m)) if u.delivery == Delivery::Idempotent => {
                    self.resends += 1;
                    tracing::debug!(
                        token = u.token,
                        request_id = u.request_id,
                        "resending an idempotent message"
                    );
                    requeue.push(m)
                }
                (Progress::Partial, _) => self.fail(
                    u.token,
                    u.request_id,
                    Failure::ConnectionLost(error.to_string()),
                ),
                // One-shot: completes as soon as it can, rather than wait for a reconnect
                // to learn whether the peer restarted.
                (Progress::AwaitingReply, _) if u.delivery == Delivery::OneShot => self.fail(
                    u.token,
                    u.request_id,
                    Failure::ConnectionLost(error.to_string()),
                ),
                (Progress::AwaitingReply, _) => self.orphans.push(Orphan {
                    token: u.token,
                    request_id: u.request_id,
                    instance,
                }),
            }
        }
        for m in requeue.into_iter().rev() {
            self.queue.push_front(m);
        }
        if error != ConnError::Local {
            self.failures = self.failures.saturating_add(1);
            self.pending_backoff = true;
        }
        self.events.push_back(PoolEvent::Closed { conn, error });
        self.fail_one_shots_without_connection();
        if let Some(why) = refused
            && self.open_connections() == 0
        {
            for m in std::mem::take(&mut self.queue) {
                self.fail(m.token, m.request_id, Failure::ConnectionLost(why.clone()));
            }
        }
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<PoolEvent> {
        self.events.pop_front()
    }
}
