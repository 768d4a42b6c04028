//! The async client (feature `tokio`): many calls in flight on one channel, replies matched
//! by request id, a call canceled when its future is dropped.
//!
//! # One reader task
//!
//! The client spawns one task that owns the channel's receiving half and reads every
//! message: a reply goes to the call waiting for its request id (a slot in a map: the
//! reply, copied out of the ring, and the waiting task's waker), an event to the event
//! queue, a reply nobody waits for (a timed-out or dropped call's) is discarded.
//!
//! The alternative, "whoever polls reads and dispatches", would let the caller whose reply
//! is at the head of the ring decode it in place, but the ring has one reader: every call
//! future would contend for it, a reply for another call would still have to be copied out
//! and handed over, and a reader future dropped mid-read (cancellation) must hand the role
//! on without losing a wake-up. One task is simpler, never starves a call whose own future
//! is not being polled, and keeps the ring drained (a sender waiting for room in the peer's
//! ring is never blocked by a caller that stopped polling). The price is one copy of each
//! reply; large payloads that must stay zero-copy go through the blocking
//! [`Client`](super::Client), which decodes in place.
//!
//! # Calls read for themselves
//!
//! Handing every reply through the reader task costs a trip through the runtime per call:
//! the call's future returns `Pending`, the scheduler polls its reactor (a system call)
//! and runs the reader task, which spins, copies the reply, wakes the call, yields, and
//! the scheduler polls the reactor again before it resumes the caller. Across cores that
//! came to twice the bare channel's round trip. So where the transport allows it
//! ([`AsyncTransport::reads_inline`]: shared memory does), a call that finds the transport
//! free reads it itself, from within its own `poll`: it looks at the ring and spins one
//! short burst ([`recv_now`](AsyncTransport::recv_now), the channel's adaptive limit, at
//! most [`SPIN_BURST`](crate::async_channel::SPIN_BURST)), hands every message that is not
//! its reply to its owner as the reader task would, and decodes its own reply in place: no
//! copy, no allocation, no waker, no `Pending`. Only when the burst ends without its reply
//! does it give the transport back, wake the reader task and wait as above.
//!
//! The transport lives in a slot that whoever reads takes (a call, within one `poll`, or
//! the reader task, across its waits). A call that finds it with the reader task waits for
//! the reader, and asks for it back: once every call in flight has its reply, the reader
//! returns it to the slot and sleeps. A call that read inline wakes the reader when it
//! puts the transport back, so events and late replies are still drained while no call
//! runs; on a current-thread runtime the reader then runs only when the calling task
//! yields. Each call consumes a unit of tokio's cooperative budget, so a task making
//! calls that all complete inline still yields to the runtime now and then.
//!
//! Requests are written in place from the calling task. The async channel's room doorbell
//! is not reachable for in-place sends, so a call that finds the ring full retries every
//! millisecond (a full request ring is the rare, overloaded case).

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::client::{
    CallError, DEFAULT_EVENT_QUEUE, EventItem, EventQueue, Method, copy_fill, finish_reply,
    once_fill, send_cancel,
};
use super::transport::AsyncTransport;
use super::transport::{IncomingMessage, ObjectSink, Outgoing, TransportError, TransportSender};
use super::{OwnedMessage, flags};
use crate::async_channel::{self, AsyncChannel};
use crate::service::{ClientConfig, ConnectError};
use shm_layout::Kind;

/// How long a send waits before looking at a full ring again.
const FULL_RETRY: Duration = Duration::from_millis(1);

/// One call waiting for its reply.
#[derive(Default)]
struct Waiting {
    reply: Option<Result<OwnedMessage, CallError>>,
    waker: Option<Waker>,
}

/// What the reader task shares with the calls.
struct State {
    pending: HashMap<u64, Waiting>,
    /// Set when the reader ended: every later call fails with it.
    closed: Option<CallError>,
    events: EventQueue,
    event_waker: Option<Waker>,
    /// The reader task's waker while it waits for the transport (lent to a call).
    reader_waker: Option<Waker>,
    /// A call that reads inline found the transport with the reader task: the reader puts
    /// it back in the slot once every call in flight has its reply.
    wants_inline: bool,
}

struct Shared {
    state: Mutex<State>,
    late_replies: AtomicU64,
    inline_replies: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; the state stays consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the reader task if it waits for the transport.
    fn resume_reader(&self) {
        let waker = self.lock().reader_waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The transport between two readers: `None` while the reader task or a call holds it.
type Slot<T> = Mutex<Option<T>>;

fn lock_slot<T>(slot: &Slot<T>) -> MutexGuard<'_, Option<T>> {
    // Only a `take` or a store happens under this lock.
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many messages for others a call hands on, at most, in one inline read before it
/// leaves the rest to the reader task (a flood of events must not hold a call's `poll`).
const INLINE_MESSAGES: usize = 64;

/// An async RPC client over one shm channel. Calls take `&self`: share it (`Arc`) and call
/// from many tasks at once.
pub struct AsyncClient<T: AsyncTransport = AsyncChannel> {
    shared: Arc<Shared>,
    slot: Arc<Slot<T>>,
    /// Calls read the transport themselves when they can (see the module docs).
    inline: bool,
    sender: T::Sender,
    version: u32,
    next_request: AtomicU64,
    reader: JoinHandle<()>,
}

impl<T: AsyncTransport> std::fmt::Debug for AsyncClient<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncClient")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl<T: AsyncTransport> Drop for AsyncClient<T> {
    fn drop(&mut self) {
        // The reader owns the channel: ending it closes the channel.
        self.reader.abort();
    }
}

impl AsyncClient<AsyncChannel> {
    /// Connects to the service `name` (see [`async_channel::connect`]).
    pub async fn connect(name: &str, config: &ClientConfig) -> Result<AsyncClient, ConnectError> {
        Ok(AsyncClient::new(
            async_channel::connect(name, config).await?,
        ))
    }
}

impl<T: AsyncTransport> AsyncClient<T> {
    /// A client over `channel`; spawns its reader task on the current tokio runtime
    /// (panics outside one, as `tokio::spawn` does).
    pub fn new(channel: T) -> Self {
        Self::with_event_queue(channel, DEFAULT_EVENT_QUEUE)
    }

    /// As [`new`](Self::new), keeping at most `capacity` unreceived events (further ones
    /// are reported as [`EventItem::Lost`]).
    pub fn with_event_queue(channel: T, capacity: usize) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: HashMap::new(),
                closed: None,
                events: EventQueue::new(capacity),
                event_waker: None,
                reader_waker: None,
                wants_inline: false,
            }),
            late_replies: AtomicU64::new(0),
            inline_replies: AtomicU64::new(0),
        });
        let sender = channel.sender();
        let version = channel.version();
        let inline = channel.reads_inline();
        let slot = Arc::new(Mutex::new(Some(channel)));
        let reader = tokio::spawn(read_loop(Arc::clone(&slot), Arc::clone(&shared)));
        AsyncClient {
            shared,
            slot,
            inline,
            sender,
            version,
            next_request: AtomicU64::new(1),
            reader,
        }
    }

    /// The version the handshake settled.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Replies discarded because no call waited for them any more.
    pub fn late_replies(&self) -> u64 {
        self.shared.late_replies.load(Ordering::Relaxed)
    }

    /// Replies that their call read itself, from within its own `poll`, rather than
    /// through the reader task (see the module docs): how often a reply came within the
    /// call's spin.
    pub fn inline_replies(&self) -> u64 {
        self.shared.inline_replies.load(Ordering::Relaxed)
    }

    /// Calls now waiting for their reply.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().pending.len()
    }

    fn check_since(&self, method: &Method) -> Result<(), CallError> {
        if method.since > self.version {
            return Err(CallError::Unsupported {
                method: method.name,
                since: method.since,
                peer_version: self.version,
            });
        }
        Ok(())
    }

    fn next_id(&self) -> u64 {
        loop {
            let id = self.next_request.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// Sends in place, retrying while the ring is full, up to `deadline` (or at once with
    /// `Dropped` for `no_queue`).
    async fn send(
        &self,
        out: &Outgoing,
        object_lens: &[u64],
        fill: &mut (dyn FnMut(&mut dyn ObjectSink) -> Result<(), TransportError> + Send),
        deadline: Option<Instant>,
    ) -> Result<(), CallError> {
        loop {
            match self
                .sender
                .send_with(out, object_lens, &mut *fill, Duration::ZERO)
            {
                Err(TransportError::Timeout) => {}
                other => return other.map_err(CallError::from),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(CallError::Timeout);
            }
            // A full ring of a dead peer stays full: the reader has seen the end by now.
            if let Some(e) = &self.shared.lock().closed {
                return Err(e.clone());
            }
            tokio::time::sleep(FULL_RETRY).await;
        }
    }

    /// Calls `method` (arguments written in place by `fill`) and waits up to `timeout` for
    /// its reply, handed to `decode`. Dropping the future cancels the call (a `Control`
    /// message tells the server; the late reply is discarded).
    pub async fn call_with<R>(
        &self,
        method: &Method,
        object_lens: &[u64],
        fill: impl FnOnce(&mut dyn ObjectSink) -> Result<(), TransportError> + Send,
        timeout: Duration,
        decode: impl FnOnce(&dyn IncomingMessage) -> Result<R, String>,
    ) -> Result<R, CallError> {
        let out = Outgoing::new(method.id, Kind::Request).flags(method.delivery);
        self.round_trip(method, out, object_lens, fill, timeout, decode)
            .await
    }

    /// [`call_with`](Self::call_with), copying `objects` (id, data).
    pub async fn call<R>(
        &self,
        method: &Method,
        objects: &[(u64, &[u8])],
        timeout: Duration,
        decode: impl FnOnce(&dyn IncomingMessage) -> Result<R, String>,
    ) -> Result<R, CallError> {
        let lens: Vec<u64> = objects.iter().map(|(_, d)| d.len() as u64).collect();
        self.call_with(method, &lens, copy_fill(objects), timeout, decode)
            .await
    }

    /// A `@sync` one-way: waits for the server's completion.
    pub async fn send_sync(
        &self,
        method: &Method,
        objects: &[(u64, &[u8])],
        timeout: Duration,
    ) -> Result<(), CallError> {
        let lens: Vec<u64> = objects.iter().map(|(_, d)| d.len() as u64).collect();
        let out = Outgoing::new(method.id, Kind::OneWay).flags(flags::SYNC | method.delivery);
        self.round_trip(method, out, &lens, copy_fill(objects), timeout, |_| Ok(()))
            .await
    }

    /// A one-way message: returns once it is in the ring (or `Dropped` at once for
    /// `no_queue` when there is no room).
    pub async fn send_oneway(
        &self,
        method: &Method,
        objects: &[(u64, &[u8])],
        timeout: Duration,
        no_queue: bool,
    ) -> Result<(), CallError> {
        self.check_since(method)?;
        let lens: Vec<u64> = objects.iter().map(|(_, d)| d.len() as u64).collect();
        let out = Outgoing::new(method.id, Kind::OneWay)
            .flags(method.delivery)
            .no_queue(no_queue);
        let deadline = Instant::now().checked_add(timeout);
        self.send(&out, &lens, &mut once_fill(copy_fill(objects)), deadline)
            .await
    }

    /// [`send_sync`](Self::send_sync) with the arguments written in place by `fill` (objects
    /// of data lengths `object_lens`).
    pub async fn send_sync_with(
        &self,
        method: &Method,
        object_lens: &[u64],
        fill: impl FnOnce(&mut dyn ObjectSink) -> Result<(), TransportError> + Send,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let out = Outgoing::new(method.id, Kind::OneWay).flags(flags::SYNC | method.delivery);
        self.round_trip(method, out, object_lens, fill, timeout, |_| Ok(()))
            .await
    }

    /// [`send_oneway`](Self::send_oneway) with the arguments written in place by `fill`
    /// (objects of data lengths `object_lens`): returns once the message is in the ring.
    pub async fn send_oneway_with(
        &self,
        method: &Method,
        object_lens: &[u64],
        fill: impl FnOnce(&mut dyn ObjectSink) -> Result<(), TransportError> + Send,
        timeout: Duration,
        no_queue: bool,
    ) -> Result<(), CallError> {
        self.check_since(method)?;
        let out = Outgoing::new(method.id, Kind::OneWay)
            .flags(method.delivery)
            .no_queue(no_queue);
        let deadline = Instant::now().checked_add(timeout);
        self.send(&out, object_lens, &mut once_fill(fill), deadline)
            .await
    }

    async fn round_trip<R>(
        &self,
        method: &Method,
        out: Outgoing,
        object_lens: &[u64],
        fill: impl FnOnce(&mut dyn ObjectSink) -> Result<(), TransportError> + Send,
        timeout: Duration,
        decode: impl FnOnce(&dyn IncomingMessage) -> Result<R, String>,
    ) -> Result<R, CallError> {
        self.check_since(method)?;
        // A call may complete without ever returning `Pending` (see the module docs): the
        // budget makes a task that calls in a loop yield to the runtime now and then.
        tokio::task::consume_budget().await;
        let deadline = Instant::now().checked_add(timeout);
        let id = self.next_id();
        // Registered before sending: the reply may come back before `send` returns.
        {
            let mut state = self.shared.lock();
            if let Some(e) = &state.closed {
                return Err(e.clone());
            }
            state.pending.insert(id, Waiting::default());
        }
        let mut guard = PendingGuard {
            shared: &self.shared,
            sender: &self.sender as &dyn TransportSender,
            id,
            sent: false,
            done: false,
        };
        let out = out.request_id(id);
        self.send(&out, object_lens, &mut once_fill(fill), deadline)
            .await?;
        guard.sent = true;
        let mut decode = Some(decode);
        let wait = poll_fn(|cx| {
            if self.inline
                && !self.delivered(id)
                && let Some(done) = self.read_inline(id, &mut decode)
            {
                return Poll::Ready(done);
            }
            let mut state = self.shared.lock();
            let Some(w) = state.pending.get_mut(&id) else {
                // Only the reader's end removes entries it did not answer: it set `closed`.
                return Poll::Ready(Err(state.closed.clone().unwrap_or(CallError::PeerDied)));
            };
            match w.reply.take() {
                Some(r) => {
                    state.pending.remove(&id);
                    let idle_reader = state.reader_waker.take();
                    drop(state);
                    // The reader handed us this reply and went to sleep, lending the
                    // transport to calls: it drains events again while none runs.
                    if let Some(waker) = idle_reader {
                        waker.wake();
                    }
                    Poll::Ready(r.and_then(|m| finish(&m, &mut decode)))
                }
                None => {
                    if !w
                        .waker
                        .as_ref()
                        .is_some_and(|old| old.will_wake(cx.waker()))
                    {
                        w.waker = Some(cx.waker().clone());
                    }
                    if self.inline {
                        state.wants_inline = true;
                    }
                    Poll::Pending
                }
            }
        });
        let result = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), wait).await {
                Ok(r) => r,
                Err(_) => return Err(CallError::Timeout), // the guard cancels
            },
            None => wait.await,
        };
        guard.done = true;
        result
    }

    /// Whether someone else already read the reply to call `id` (or the end came).
    fn delivered(&self, id: u64) -> bool {
        self.shared
            .lock()
            .pending
            .get(&id)
            .is_none_or(|w| w.reply.is_some())
    }

    /// Reads the transport from within the call's `poll`, if it is free: messages for others
    /// go to them, our own reply is decoded in place. `None`: not found within one spin
    /// burst (or the transport is with someone else); the call waits.
    fn read_inline<R>(
        &self,
        id: u64,
        decode: &mut Option<impl FnOnce(&dyn IncomingMessage) -> Result<R, String>>,
    ) -> Option<Result<R, CallError>> {
        let transport = lock_slot(&self.slot).take()?;
        let mut lent = Lent {
            slot: &self.slot,
            shared: &self.shared,
            transport: Some(transport),
        };
        let transport = lent.transport.as_mut()?;
        for _ in 0..INLINE_MESSAGES {
            match transport.recv_now() {
                Ok(Some(msg)) => {
                    if msg.kind() == Kind::Reply
                        && msg.request_id() == id
                        && self.shared.lock().pending.remove(&id).is_some()
                    {
                        self.shared.inline_replies.fetch_add(1, Ordering::Relaxed);
                        return Some(finish(&msg, decode));
                    }
                    dispatch(&self.shared, &msg);
                }
                Ok(None) => return None,
                Err(TransportError::MessageLost { .. }) => {}
                Err(e) => {
                    // Fails every call in flight, this one included (its entry's reply).
                    close(&self.shared, CallError::from(e));
                    return None;
                }
            }
        }
        None
    }

    /// The next event (waits as long as it takes); `Err` once the channel ended and every
    /// event was received. One task at a time should receive events.
    pub async fn recv_event(&self) -> Result<EventItem, CallError> {
        poll_fn(|cx| {
            let mut state = self.shared.lock();
            if let Some(e) = state.events.pop() {
                return Poll::Ready(Ok(e));
            }
            if let Some(e) = &state.closed {
                return Poll::Ready(Err(e.clone()));
            }
            state.event_waker = Some(cx.waker().clone());
            // Events come through the reader task: if it lent the transport to the calls
            // and sleeps, it reads again.
            if let Some(waker) = state.reader_waker.take() {
                waker.wake();
            }
            Poll::Pending
        })
        .await
    }

    /// The next event if one has arrived; never waits. After the channel ends, its error.
    pub fn try_recv_event(&self) -> Result<Option<EventItem>, CallError> {
        let mut state = self.shared.lock();
        if let Some(e) = state.events.pop() {
            return Ok(Some(e));
        }
        match &state.closed {
            Some(e) => Err(e.clone()),
            None => Ok(None),
        }
    }
}

/// Removes a call's entry when its future ends without a reply (timeout, drop), and tells
/// the server it may skip the call.
struct PendingGuard<'a> {
    shared: &'a Shared,
    sender: &'a dyn TransportSender,
    id: u64,
    sent: bool,
    done: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let was_pending = self.shared.lock().pending.remove(&self.id).is_some();
        if was_pending && self.sent {
            send_cancel(self.sender, self.id);
        }
    }
}

/// [`finish_reply`] with a decoder kept in an `Option` (a call's `poll` may be called
/// again; the decoder runs once).
fn finish<R>(
    msg: &dyn IncomingMessage,
    decode: &mut Option<impl FnOnce(&dyn IncomingMessage) -> Result<R, String>>,
) -> Result<R, CallError> {
    match decode.take() {
        Some(decode) => finish_reply(msg, decode),
        None => Err(CallError::Protocol("a call's reply decoded twice".into())),
    }
}

/// The transport lent to a call: back in its slot when dropped (a panicking decoder
/// included), and the reader task woken to drain it while no call reads.
struct Lent<'a, T> {
    slot: &'a Slot<T>,
    shared: &'a Shared,
    transport: Option<T>,
}

impl<T> Drop for Lent<'_, T> {
    fn drop(&mut self) {
        if let Some(transport) = self.transport.take() {
            *lock_slot(self.slot) = Some(transport);
        }
        self.shared.resume_reader();
    }
}

/// Hands a message to whoever waits for it: a reply to its call, an event to the queue; a
/// reply nobody waits for any more is counted and discarded.
fn dispatch(shared: &Shared, msg: &dyn IncomingMessage) {
    match msg.kind() {
        Kind::Reply => {
            let mut state = shared.lock();
            match state.pending.get_mut(&msg.request_id()) {
                Some(w) => {
                    w.reply = Some(Ok(OwnedMessage::copy_of(msg)));
                    if let Some(waker) = w.waker.take() {
                        waker.wake();
                    }
                }
                None => {
                    shared.late_replies.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Kind::Event => {
            let event = OwnedMessage::copy_of(msg);
            let mut state = shared.lock();
            state.events.push(event);
            if let Some(waker) = state.event_waker.take() {
                waker.wake();
            }
        }
        _ => {}
    }
}

/// The transport ended with `end`: every call in flight and every later one fails with it.
fn close(shared: &Shared, end: CallError) {
    let mut state = shared.lock();
    state.closed = Some(end.clone());
    for (_, w) in state.pending.iter_mut() {
        if w.reply.is_none() {
            w.reply = Some(Err(end.clone()));
        }
        if let Some(waker) = w.waker.take() {
            waker.wake();
        }
    }
    for waker in [state.event_waker.take(), state.reader_waker.take()]
        .into_iter()
        .flatten()
    {
        waker.wake();
    }
}

/// Takes the transport from its slot, or waits until whoever has it puts it back; `None`
/// once the client is closed.
fn take_transport<T>(slot: &Slot<T>, shared: &Shared, cx: &mut Context<'_>) -> Poll<Option<T>> {
    // Lock order: state, then slot (a call puts the transport back, then wakes us).
    let mut state = shared.lock();
    if state.closed.is_some() {
        return Poll::Ready(None);
    }
    if let Some(transport) = lock_slot(slot).take() {
        state.reader_waker = None;
        return Poll::Ready(Some(transport));
    }
    state.reader_waker = Some(cx.waker().clone());
    Poll::Pending
}

/// After a message, with the transport in `held`: lends it to the calls (puts it in the
/// slot) if one asked, every call in flight has its reply (so none waits for a reader) and
/// nobody awaits an event; then sleeps until a call or `recv_event` needs a reader again.
/// The check, the lending and the waker are one critical section: a call that starts to
/// wait for the reader meanwhile is seen, and a call that gives the transport back after
/// it finds the reader asleep.
async fn maybe_lend<T>(slot: &Slot<T>, shared: &Shared, held: &mut Option<T>) {
    let mut lent = false;
    poll_fn(|cx| {
        if lent {
            return Poll::Ready(());
        }
        let mut state = shared.lock();
        if !state.wants_inline
            || state.event_waker.is_some()
            || state.pending.values().any(|w| w.reply.is_none())
        {
            return Poll::Ready(());
        }
        state.wants_inline = false;
        if let Some(transport) = held.take() {
            *lock_slot(slot) = Some(transport);
        }
        state.reader_waker = Some(cx.waker().clone());
        lent = true;
        Poll::Pending
    })
    .await;
}

/// The reader task: hands each reply to its call, queues events, discards the rest, while
/// it holds the transport (see the module docs).
async fn read_loop<T: AsyncTransport>(slot: Arc<Slot<T>>, shared: Arc<Shared>) {
    let mut held: Option<T> = None;
    loop {
        let transport = match held.as_mut() {
            Some(transport) => transport,
            None => match poll_fn(|cx| take_transport(&slot, &shared, cx)).await {
                Some(transport) => held.insert(transport),
                None => return,
            },
        };
        match transport.recv().await {
            Ok(msg) => dispatch(&shared, &msg),
            Err(TransportError::MessageLost { .. }) => {}
            Err(e) => {
                // Dropping the transport closes it.
                close(&shared, CallError::from(e));
                return;
            }
        }
        maybe_lend(&slot, &shared, &mut held).await;
    }
}

// `AsyncClient` futures are spawned on multi-threaded runtimes: keep them `Send`.
#[allow(dead_code, reason = "compile-time check only")]
fn assert_send() {
    fn is_send<T: Send>(_: &T) {}
    fn check(c: &AsyncClient<AsyncChannel>) {
        is_send(&c.call(&Method::new("m", 1), &[], Duration::ZERO, |_| Ok(())));
        is_send(&c.recv_event());
    }
    let _ = check;
}
