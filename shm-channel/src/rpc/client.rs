//! The blocking client core: request ids, replies matched to their calls, events queued
//! while a call waits, one-way, `@no_queue` and `@sync` sends, `@since` checks, cancel.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::transport::{IncomingMessage, ObjectSink, Outgoing, Transport, TransportError};
use super::{ERROR_OBJECT, OwnedMessage, TransportSender, flags};
use shm_layout::Kind;

/// The deadline of a call when the IDL gives no `@timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Events a client keeps while nobody receives them (see [`Client::with_event_queue`]).
pub const DEFAULT_EVENT_QUEUE: usize = 1024;
/// How often a waiting call looks at its cancel flag, once a [`CancelHandle`] exists.
const CANCEL_POLL: Duration = Duration::from_millis(5);

/// What a generated stub knows about a method (constants of the generated code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Method {
    /// The method's name, for errors.
    pub name: &'static str,
    /// Its message id.
    pub id: u64,
    /// The protocol version that introduced it (`@since`; 1 for the first).
    pub since: u32,
    /// Its delivery over network transports: [`flags::ONE_SHOT`], [`flags::IDEMPOTENT`],
    /// [`flags::ORDERED`] (the IDL's `@one_shot`, `@idempotent`, `@ordered`), or 0 for the
    /// default. Set on every message the method sends; the shm channel ignores it.
    pub delivery: u64,
}

impl Method {
    /// A method present since version 1, delivered the default way.
    pub const fn new(name: &'static str, id: u64) -> Self {
        Method {
            name,
            id,
            since: 1,
            delivery: 0,
        }
    }

    /// With this delivery ([`flags::ONE_SHOT`], [`flags::IDEMPOTENT`] or
    /// [`flags::ORDERED`]); other bits are dropped.
    pub const fn delivery(mut self, delivery: u64) -> Self {
        self.delivery = delivery & (flags::ONE_SHOT | flags::IDEMPOTENT | flags::ORDERED);
        self
    }

    /// A method introduced in version `since`.
    pub const fn since(mut self, since: u32) -> Self {
        self.since = since;
        self
    }
}

/// The encoded error object of an error reply, for the generated code to decode
/// ([`CallError::try_map_remote`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawError(pub Vec<u8>);

/// Why a call failed. `E` is the method's error: [`RawError`] as the RPC layer returns it,
/// the decoded IDL error type once the generated code has mapped it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CallError<E = RawError> {
    /// No reply before the deadline (or no room to send before it: then nothing was sent).
    #[error("the call timed out")]
    Timeout,
    /// The server is gone.
    #[error("the server died")]
    PeerDied,
    /// The server restarted (a reconnecting transport): the call's fate is unknown.
    #[error("the server restarted")]
    PeerRestarted,
    /// The call was canceled; its reply, if any, is discarded.
    #[error("the call was canceled")]
    Canceled,
    /// The request can never fit.
    #[error("request of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The message's size.
        size: u64,
        /// The largest message the transport carries.
        max: u64,
    },
    /// A `@no_queue` message found no room and was dropped.
    #[error("no room: the no_queue message was dropped")]
    Dropped,
    /// The peer's version predates the method; nothing was sent.
    #[error("{method} needs protocol version {since}; the peer speaks {peer_version}")]
    Unsupported {
        /// The method.
        method: &'static str,
        /// The version that introduced it.
        since: u32,
        /// The version the handshake settled.
        peer_version: u32,
    },
    /// The method failed with its error.
    #[error("the call failed: {0:?}")]
    Remote(E),
    /// The server failed the call (its handler panicked, ...): the reason it gave.
    #[error("the server failed the call: {0}")]
    Fault(String),
    /// The server has no handler for this method.
    #[error("the server does not know method {message_id}")]
    UnknownMethod {
        /// The method's message id.
        message_id: u64,
    },
    /// The reply could not be decoded (or broke the RPC conventions).
    #[error("malformed reply: {0}")]
    Protocol(String),
    /// Another failure of the transport.
    #[error(transparent)]
    Transport(TransportError),
}

impl<E> CallError<E> {
    /// Maps the method's error, keeping every other case.
    pub fn map_remote<F>(self, f: impl FnOnce(E) -> F) -> CallError<F> {
        self.try_map_remote(|e| Ok(f(e)))
    }

    /// Maps the method's error with a decoder that may fail: a failure becomes
    /// [`CallError::Protocol`].
    pub fn try_map_remote<F>(self, f: impl FnOnce(E) -> Result<F, String>) -> CallError<F> {
        match self {
            CallError::Remote(e) => match f(e) {
                Ok(e) => CallError::Remote(e),
                Err(why) => CallError::Protocol(why),
            },
            CallError::Timeout => CallError::Timeout,
            CallError::PeerDied => CallError::PeerDied,
            CallError::PeerRestarted => CallError::PeerRestarted,
            CallError::Canceled => CallError::Canceled,
            CallError::TooLarge { size, max } => CallError::TooLarge { size, max },
            CallError::Dropped => CallError::Dropped,
            CallError::Unsupported {
                method,
                since,
                peer_version,
            } => CallError::Unsupported {
                method,
                since,
                peer_version,
            },
            CallError::Fault(s) => CallError::Fault(s),
            CallError::UnknownMethod { message_id } => CallError::UnknownMethod { message_id },
            CallError::Protocol(s) => CallError::Protocol(s),
            CallError::Transport(t) => CallError::Transport(t),
        }
    }
}

impl<E> From<TransportError> for CallError<E> {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Timeout => CallError::Timeout,
            TransportError::PeerDied => CallError::PeerDied,
            TransportError::PeerRestarted => CallError::PeerRestarted,
            TransportError::Dropped => CallError::Dropped,
            TransportError::TooLarge { size, max } => CallError::TooLarge { size, max },
            other => CallError::Transport(other),
        }
    }
}

/// What [`Client::recv_event`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventItem {
    /// An event, copied out of the transport.
    Event(OwnedMessage),
    /// The event queue was full while a call waited: this many events (at this point of the
    /// sequence) were dropped. Raise [`Client::with_event_queue`] or receive more often.
    Lost {
        /// How many.
        count: u64,
    },
}

/// Shared between a client and its cancel handles.
#[derive(Debug, Default)]
pub(crate) struct CancelState {
    /// The request id of the call waiting for its reply (0: none).
    in_flight: AtomicU64,
    /// The request id a handle canceled.
    canceled: AtomicU64,
}

/// Cancels the call a [`Client`] is waiting on, from another thread.
#[derive(Debug, Clone)]
pub struct CancelHandle<S> {
    state: Arc<CancelState>,
    sender: S,
}

impl<S: TransportSender> CancelHandle<S> {
    /// Cancels the call in flight, if any: it returns [`CallError::Canceled`] within a few
    /// milliseconds, and the server is told (a `Control` message with [`flags::CANCEL`]) so it
    /// may skip it. Returns whether a call was in flight.
    pub fn cancel(&self) -> bool {
        let id = self.state.in_flight.load(Ordering::Acquire);
        if id == 0 {
            return false;
        }
        self.state.canceled.store(id, Ordering::Release);
        send_cancel(&self.sender, id);
        true
    }
}

/// Tells the server to skip request `id`; best effort (a full ring only means the server
/// will run it and its reply is discarded).
pub(crate) fn send_cancel(sender: &(impl TransportSender + ?Sized), id: u64) {
    let out = Outgoing::new(0, Kind::Control)
        .request_id(id)
        .flags(flags::CANCEL)
        .no_queue(true);
    let _ = super::send_objects(sender, &out, &[], Duration::ZERO);
}

/// Events received while nobody asked for them: at most `capacity` events, and a
/// [`EventItem::Lost`] marker where some had to be dropped (markers do not count).
#[derive(Debug)]
pub(crate) struct EventQueue {
    items: VecDeque<EventItem>,
    events: usize,
    capacity: usize,
}

impl EventQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        EventQueue {
            items: VecDeque::new(),
            events: 0,
            capacity: capacity.max(1),
        }
    }

    /// Queues `m`, or counts it as lost when the queue is full.
    pub(crate) fn push(&mut self, m: OwnedMessage) {
        if self.events < self.capacity {
            self.items.push_back(EventItem::Event(m));
            self.events += 1;
        } else if let Some(EventItem::Lost { count }) = self.items.back_mut() {
            *count += 1;
        } else {
            self.items.push_back(EventItem::Lost { count: 1 });
        }
    }

    pub(crate) fn pop(&mut self) -> Option<EventItem> {
        let item = self.items.pop_front()?;
        if matches!(item, EventItem::Event(_)) {
            self.events -= 1;
        }
        Some(item)
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
}

/// Interprets a reply: error flags first, then `decode`.
pub(crate) fn finish_reply<R>(
    msg: &dyn IncomingMessage,
    decode: impl FnOnce(&dyn IncomingMessage) -> Result<R, String>,
) -> Result<R, CallError> {
    let f = msg.flags();
    let payload = || msg.object(ERROR_OBJECT).unwrap_or_default();
    if f & flags::LOCAL != 0 {
        let p = payload();
        let code = p.first().copied().unwrap_or(0);
        let reason = String::from_utf8_lossy(p.get(1..).unwrap_or_default()).into_owned();
        Err(super::LocalFailure::from_u8(code).to_call_error(reason))
    } else if f & flags::ERROR != 0 {
        Err(CallError::Remote(RawError(payload().to_vec())))
    } else if f & flags::FAULT != 0 {
        Err(CallError::Fault(
            String::from_utf8_lossy(payload()).into_owned(),
        ))
    } else if f & flags::UNKNOWN_METHOD != 0 {
        Err(CallError::UnknownMethod {
            message_id: msg.message_id(),
        })
    } else {
        decode(msg).map_err(CallError::Protocol)
    }
}

/// Adapts a `FnOnce` fill to the transport's `FnMut`.
pub(crate) fn once_fill<F>(fill: F) -> impl FnMut(&mut dyn ObjectSink) -> Result<(), TransportError>
where
    F: FnOnce(&mut dyn ObjectSink) -> Result<(), TransportError>,
{
    let mut fill = Some(fill);
    move |sink| match fill.take() {
        Some(f) => f(sink),
        None => Err(TransportError::Encode("fill called twice".into())),
    }
}

/// The blocking client core over one [`Transport`]: one call at a time (calls take
/// `&mut self`); for many calls in flight on one channel use the async client.
#[derive(Debug)]
pub struct Client<T: Transport> {
    transport: T,
    sender: T::Sender,
    next_request: u64,
    events: EventQueue,
    default_timeout: Duration,
    cancel: Arc<CancelState>,
    late_replies: u64,
    copy_on_receive: bool,
}

impl Client<crate::Channel> {
    /// Connects to the service `name` (see [`connect`](crate::connect)) and wraps the channel.
    pub fn connect(
        name: &str,
        config: &crate::ClientConfig,
    ) -> Result<Self, crate::service::ConnectError> {
        Ok(Client::new(crate::connect(name, config)?))
    }
}

impl<T: Transport> Client<T> {
    /// A client over `transport` (a connected [`Channel`](crate::Channel), for shm).
    pub fn new(transport: T) -> Self {
        Client {
            sender: transport.sender(),
            transport,
            next_request: 0,
            events: EventQueue::new(DEFAULT_EVENT_QUEUE),
            default_timeout: DEFAULT_TIMEOUT,
            cancel: Arc::default(),
            late_replies: 0,
            copy_on_receive: false,
        }
    }

    /// Keeps at most `capacity` events that arrive while a call waits (further ones are
    /// reported as [`EventItem::Lost`]).
    pub fn with_event_queue(mut self, capacity: usize) -> Self {
        self.events = EventQueue::new(capacity);
        self
    }

    /// Copy each reply out of the transport before `decode` sees it (default `false`: zero
    /// copy). Over shared memory the server can still write a reply's bytes while `decode`
    /// reads them, so a decoder that checks a value and then uses it could see two
    /// different values; with the copy, what it checks is what it uses. Turn it on for
    /// servers you do not trust (see `docs/SECURITY.md`). Events are always copied.
    pub fn set_copy_on_receive(&mut self, copy: bool) {
        self.copy_on_receive = copy;
    }

    /// The deadline used by the `*_default` helpers of generated code.
    pub fn default_timeout(&self) -> Duration {
        self.default_timeout
    }

    /// Sets the default deadline.
    pub fn set_default_timeout(&mut self, timeout: Duration) {
        self.default_timeout = timeout;
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The sending half: clone it to send one-way messages from other threads (a reply
    /// still comes back only through a call on this client).
    pub fn sender(&self) -> &T::Sender {
        &self.sender
    }

    /// Gives the transport back.
    pub fn into_transport(self) -> T {
        self.transport
    }

    /// The version the handshake settled.
    pub fn version(&self) -> u32 {
        self.transport.version()
    }

    /// Whether the server still holds its end.
    pub fn peer_alive(&self) -> bool {
        self.transport.peer_alive()
    }

    /// A handle that cancels this client's call in flight from another thread. While any
    /// handle exists, a waiting call wakes every few milliseconds to look for a cancel.
    pub fn cancel_handle(&self) -> CancelHandle<T::Sender> {
        CancelHandle {
            state: Arc::clone(&self.cancel),
            sender: self.sender.clone(),
        }
    }

    /// Replies discarded so far because no call waited for them (late replies of calls
    /// that timed out or were canceled).
    pub fn late_replies(&self) -> u64 {
        self.late_replies
    }

    /// Events waiting in the queue (received while calls waited).
    pub fn queued_events(&self) -> usize {
        self.events.len()
    }

    /// `Unsupported` if the handshake's version predates `method`.
    pub fn check_since<E>(&self, method: &Method) -> Result<(), CallError<E>> {
        let peer_version = self.transport.version();
        if method.since > peer_version {
            return Err(CallError::Unsupported {
                method: method.name,
                since: method.since,
                peer_version,
            });
        }
        Ok(())
    }

    fn next_id(&mut self) -> u64 {
        self.next_request = self.next_request.wrapping_add(1);
        if self.next_request == 0 {
            self.next_request = 1;
        }
        self.next_request
    }

    /// Calls `method`: its arguments are objects with data lengths `object_lens`, written in
    /// place by `fill`; waits up to `timeout` for the reply and hands it, borrowed, to
    /// `decode` (whose error becomes [`CallError::Protocol`]). Error replies become
    /// [`CallError::Remote`] with the encoded error.
    pub fn call_with<R>(
        &mut self,
        method: &Method,
        object_lens: &[u64],
        fill: impl FnOnce(&mut dyn ObjectSink) -> Result<(), TransportError>,
        timeout: Duration,
        decode: impl FnOnce(&dyn IncomingMessage) -> Result<R, String>,
    ) -> Result<R, CallError> {
        self.check_since(method)?;
        let deadline = Instant::now().checked_add(timeout);
        let id = self.next_id();
        let out = Outgoing::new(method.id, Kind::Request)
            .request_id(id)
            .flags(method.delivery);
        self.sender
            .send_with(&out, object_lens, &mut once_fill(fill), timeout)?;
        self.wait_reply(id, deadline, decode)
    }

    /// [`call_with`](Self::call_with) with the arguments copied from `objects` (id, data).
    pub fn call<R>(
        &mut self,
        method: &Method,
        objects: &[(u64, &[u8])],
        timeout: Duration,
        decode: impl FnOnce(&dyn IncomingMessage) -> Result<R, String>,
    ) -> Result<R, CallError> {
        let lens: Vec<u64> = objects.iter().map(|(_, d)| d.len() as u64).collect();
        self.call_with(method, &lens, copy_fill(objects), timeout, decode)
    }

    /// Sends a one-way message: returns once it is in the ring (waiting up to `timeout` for
    /// room), or at once with [`CallError::Dropped`] when `no_queue` and there is no room.
    pub fn send_oneway_with(
        &self,
        method: &Method,
        object_lens: &[u64],
        fill: impl FnOnce(&mut dyn ObjectSink) -> Result<(), TransportError>,
        timeout: Duration,
        no_queue: bool,
    ) -> Result<(), CallError> {
        self.check_since(method)?;
        let out = Outgoing::new(method.id, Kind::OneWay)
            .flags(method.delivery)
            .no_queue(no_queue);
        self.sender
            .send_with(&out, object_lens, &mut once_fill(fill), timeout)?;
        Ok(())
    }

    /// [`send_oneway_with`](Self::send_oneway_with), copying `objects`.
    pub fn send_oneway(
        &self,
        method: &Method,
        objects: &[(u64, &[u8])],
        timeout: Duration,
        no_queue: bool,
    ) -> Result<(), CallError> {
        let lens: Vec<u64> = objects.iter().map(|(_, d)| d.len() as u64).collect();
        self.send_oneway_with(method, &lens, copy_fill(objects), timeout, no_queue)
    }

    /// A `@sync` one-way message: sent like a one-way, then waits (up to `timeout` in all)
    /// for the server's empty completion reply, sent once the handler has run.
    pub fn send_sync_with(
        &mut self,
        method: &Method,
        object_lens: &[u64],
        fill: impl FnOnce(&mut dyn ObjectSink) -> Result<(), TransportError>,
        timeout: Duration,
    ) -> Result<(), CallError> {
        self.check_since(method)?;
        let deadline = Instant::now().checked_add(timeout);
        let id = self.next_id();
        let out = Outgoing::new(method.id, Kind::OneWay)
            .request_id(id)
            .flags(flags::SYNC | method.delivery);
        self.sender
            .send_with(&out, object_lens, &mut once_fill(fill), timeout)?;
        self.wait_reply(id, deadline, |_| Ok(()))
    }

    /// [`send_sync_with`](Self::send_sync_with), copying `objects`.
    pub fn send_sync(
        &mut self,
        method: &Method,
        objects: &[(u64, &[u8])],
        timeout: Duration,
    ) -> Result<(), CallError> {
        let lens: Vec<u64> = objects.iter().map(|(_, d)| d.len() as u64).collect();
        self.send_sync_with(method, &lens, copy_fill(objects), timeout)
    }

    /// Waits for the reply to `id`, queueing events and discarding other replies.
    fn wait_reply<R>(
        &mut self,
        id: u64,
        deadline: Option<Instant>,
        decode: impl FnOnce(&dyn IncomingMessage) -> Result<R, String>,
    ) -> Result<R, CallError> {
        let _in_flight = InFlight::new(&self.cancel, id);
        let watch_cancel = Arc::strong_count(&self.cancel) > 1;
        loop {
            if watch_cancel && self.cancel.canceled.load(Ordering::Acquire) == id {
                return Err(CallError::Canceled);
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if left.is_zero() {
                send_cancel(&self.sender, id);
                return Err(CallError::Timeout);
            }
            let slice = if watch_cancel {
                left.min(CANCEL_POLL)
            } else {
                left
            };
            match self.transport.recv_timeout(slice) {
                Ok(msg) => match msg.kind() {
                    Kind::Reply if msg.request_id() == id => {
                        if self.copy_on_receive {
                            return finish_reply(&OwnedMessage::copy_of(&msg), decode);
                        }
                        return finish_reply(&msg, decode);
                    }
                    Kind::Reply => self.late_replies += 1,
                    Kind::Event => self.events.push(OwnedMessage::copy_of(&msg)),
                    // Requests, one-ways or control messages from a server: not ours to
                    // handle; skipped.
                    _ => {}
                },
                // The deadline is looked at again above; a lost message (its writer died
                // while writing) is followed by the peer's death or by more messages.
                Err(TransportError::Timeout | TransportError::MessageLost { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next event: the oldest queued one, else the next to arrive within `timeout`
    /// (replies nobody waits for are discarded meanwhile).
    pub fn recv_event(&mut self, timeout: Duration) -> Result<EventItem, CallError> {
        if let Some(e) = self.events.pop() {
            return Ok(e);
        }
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if left.is_zero() {
                return Err(CallError::Timeout);
            }
            match self.transport.recv_timeout(left) {
                Ok(msg) => match msg.kind() {
                    Kind::Event => return Ok(EventItem::Event(OwnedMessage::copy_of(&msg))),
                    Kind::Reply => self.late_replies += 1,
                    _ => {}
                },
                Err(TransportError::Timeout | TransportError::MessageLost { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The next event if one is queued or has arrived; never waits.
    pub fn try_recv_event(&mut self) -> Result<Option<EventItem>, CallError> {
        if let Some(e) = self.events.pop() {
            return Ok(Some(e));
        }
        loop {
            match self.transport.try_recv() {
                Ok(Some(msg)) => match msg.kind() {
                    Kind::Event => return Ok(Some(EventItem::Event(OwnedMessage::copy_of(&msg)))),
                    Kind::Reply => self.late_replies += 1,
                    _ => {}
                },
                Ok(None) => return Ok(None),
                Err(TransportError::MessageLost { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Marks a call in flight for the cancel handles, and clears it when the wait ends.
struct InFlight<'a>(&'a CancelState);

impl<'a> InFlight<'a> {
    fn new(state: &'a CancelState, id: u64) -> Self {
        state.in_flight.store(id, Ordering::Release);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.store(0, Ordering::Release);
    }
}

/// A fill that copies `objects` in.
pub(crate) fn copy_fill<'o>(
    objects: &'o [(u64, &'o [u8])],
) -> impl FnOnce(&mut dyn ObjectSink) -> Result<(), TransportError> + 'o {
    move |sink| {
        for (id, data) in objects {
            sink.object(*id, data.len() as u64)?.copy_from_slice(data);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u64) -> OwnedMessage {
        OwnedMessage {
            message_id: 9,
            kind: Kind::Event,
            request_id: 0,
            flags: 0,
            objects: vec![(0, n.to_le_bytes().to_vec())],
        }
    }

    #[test]
    fn event_queue_overflow_is_counted_in_place() {
        let mut q = EventQueue::new(2);
        for n in 0..5 {
            q.push(event(n));
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop(), Some(EventItem::Event(event(0))));
        // Room for one event again: it goes after the marker.
        q.push(event(5));
        q.push(event(6));
        let rest: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(
            rest,
            [
                EventItem::Event(event(1)),
                EventItem::Lost { count: 3 },
                EventItem::Event(event(5)),
                EventItem::Lost { count: 1 },
            ]
        );
        q.push(event(7));
        assert_eq!(q.pop(), Some(EventItem::Event(event(7))));
    }

    fn reply(flags: u64, objects: Vec<(u64, Vec<u8>)>) -> OwnedMessage {
        OwnedMessage {
            message_id: 4,
            kind: Kind::Reply,
            request_id: 1,
            flags,
            objects,
        }
    }

    #[test]
    fn replies_are_read_by_their_flags() {
        let ok = reply(0, vec![(0, b"v".to_vec())]);
        assert_eq!(
            finish_reply(&ok, |m| Ok(m.object(0).map(<[u8]>::to_vec))),
            Ok(Some(b"v".to_vec()))
        );
        assert_eq!(
            finish_reply(&ok, |_| Err::<(), _>("bad".into())),
            Err(CallError::Protocol("bad".into()))
        );
        let err = reply(flags::ERROR, vec![(ERROR_OBJECT, b"e".to_vec())]);
        assert_eq!(
            finish_reply(&err, |_| Ok(())),
            Err(CallError::Remote(RawError(b"e".to_vec())))
        );
        let fault = reply(flags::FAULT, vec![(ERROR_OBJECT, b"panic".to_vec())]);
        assert_eq!(
            finish_reply(&fault, |_| Ok(())),
            Err(CallError::Fault("panic".into()))
        );
        let unknown = reply(flags::UNKNOWN_METHOD, vec![]);
        assert_eq!(
            finish_reply(&unknown, |_| Ok(())),
            Err(CallError::UnknownMethod { message_id: 4 })
        );
    }

    #[test]
    fn remote_errors_map_and_the_rest_is_kept() {
        let e: CallError<u8> = CallError::Remote(RawError(vec![7])).map_remote(|r| r.0[0]);
        assert_eq!(e, CallError::Remote(7));
        let e: CallError<u8> =
            CallError::Remote(RawError(vec![])).try_map_remote(|_| Err("empty".into()));
        assert_eq!(e, CallError::Protocol("empty".into()));
        let e: CallError<u8> = CallError::<RawError>::Timeout.map_remote(|_| 0);
        assert_eq!(e, CallError::Timeout);
        assert_eq!(
            CallError::<RawError>::from(TransportError::Dropped),
            CallError::Dropped
        );
    }

    #[test]
    fn flags_stay_in_the_rpc_range() {
        assert_eq!(flags::ALL & !shm_layout::flags::APP_MASK, 0);
    }
}
