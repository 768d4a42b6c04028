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
//! Requests are written in place from the calling task. The async channel's room doorbell
//! is not reachable for in-place sends, so a call that finds the ring full retries every
//! millisecond (a full request ring is the rare, overloaded case).

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Poll, Waker};
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
}

struct Shared {
    state: Mutex<State>,
    late_replies: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; the state stays consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An async RPC client over one shm channel. Calls take `&self`: share it (`Arc`) and call
/// from many tasks at once.
pub struct AsyncClient<T: AsyncTransport = AsyncChannel> {
    shared: Arc<Shared>,
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
            }),
            late_replies: AtomicU64::new(0),
        });
        let sender = channel.sender();
        let version = channel.version();
        let reader = tokio::spawn(read_loop(channel, Arc::clone(&shared)));
        AsyncClient {
            shared,
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
        let wait = poll_fn(|cx| {
            let mut state = self.shared.lock();
            let Some(w) = state.pending.get_mut(&id) else {
                // Only the reader's end removes entries it did not answer: it set `closed`.
                return Poll::Ready(Err(state.closed.clone().unwrap_or(CallError::PeerDied)));
            };
            match w.reply.take() {
                Some(r) => {
                    state.pending.remove(&id);
                    Poll::Ready(r)
                }
                None => {
                    w.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        });
        let reply = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), wait).await {
                Ok(r) => r,
                Err(_) => return Err(CallError::Timeout), // the guard cancels
            },
            None => wait.await,
        };
        guard.done = true;
        finish_reply(&reply?, decode)
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

/// The reader task: hands each reply to its call, queues events, discards the rest.
async fn read_loop<T: AsyncTransport>(mut channel: T, shared: Arc<Shared>) {
    let end = loop {
        let msg = match channel.recv().await {
            Ok(m) => m,
            Err(TransportError::MessageLost { .. }) => continue,
            Err(e) => break CallError::from(e),
        };
        match msg.kind() {
            Kind::Reply => {
                let mut state = shared.lock();
                match state.pending.get_mut(&msg.request_id()) {
                    Some(w) => {
                        w.reply = Some(Ok(OwnedMessage::copy_of(&msg)));
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
                let event = OwnedMessage::copy_of(&msg);
                let mut state = shared.lock();
                state.events.push(event);
                if let Some(waker) = state.event_waker.take() {
                    waker.wake();
                }
            }
            _ => {}
        }
    };
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
    if let Some(waker) = state.event_waker.take() {
        waker.wake();
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
