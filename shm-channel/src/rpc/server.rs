//! Server dispatch: requests handed to a handler in place, replies written in place, panics
//! and dead or broken clients contained; events to one client or all.

use std::cell::Cell;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use thiserror::Error;

use super::client::copy_fill;
use super::transport::{
    IncomingMessage, ObjectSink, Outgoing, Transport, TransportError, TransportSender,
};
use super::{ERROR_OBJECT, OwnedMessage, flags};
use crate::ChannelId;
use crate::event_loop::{Event, EventLoop, EventLoopError};
use shm_layout::Kind;

/// A request (or one-way message) as a handler sees it: borrowed in place.
pub struct RequestView<'a> {
    msg: &'a dyn IncomingMessage,
    channel: Option<ChannelId>,
    version: u32,
}

impl std::fmt::Debug for RequestView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestView")
            .field("message_id", &self.msg.message_id())
            .field("request_id", &self.msg.request_id())
            .field("kind", &self.msg.kind())
            .field("channel", &self.channel)
            .finish()
    }
}

impl<'a> RequestView<'a> {
    /// The method id.
    pub fn message_id(&self) -> u64 {
        self.msg.message_id()
    }

    /// The request id (0 for a plain one-way message).
    pub fn request_id(&self) -> u64 {
        self.msg.request_id()
    }

    /// Whether this is a one-way message (`@sync` or not).
    pub fn is_oneway(&self) -> bool {
        self.msg.kind() == Kind::OneWay
    }

    /// The data of the first object with this id.
    pub fn object(&self, id: u64) -> Option<&'a [u8]> {
        self.msg.object(id)
    }

    /// The message itself.
    pub fn message(&self) -> &'a dyn IncomingMessage {
        self.msg
    }

    /// The channel it came on (when serving a service).
    pub fn channel(&self) -> Option<ChannelId> {
        self.channel
    }

    /// The protocol version this client's handshake settled.
    pub fn version(&self) -> u32 {
        self.version
    }
}

/// Proof that a handler answered (or had nothing to answer); only a [`Responder`] makes one.
#[derive(Debug)]
pub struct Replied(());

/// Why a handler did not reply with a value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// The method's error, encoded by the codec: sent as an error reply
    /// ([`flags::ERROR`]), it reaches the caller as `CallError::Remote`.
    #[error("the method failed ({} bytes of error)", .0.len())]
    Remote(Vec<u8>),
    /// The server has no handler for this method ([`flags::UNKNOWN_METHOD`]).
    #[error("unknown method")]
    UnknownMethod,
    /// The server cannot serve this call: the reason goes to the caller as a fault
    /// ([`flags::FAULT`]).
    #[error("the server failed the call: {0}")]
    Failed(String),
    /// Writing the reply failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// What a handler returns.
pub type HandlerResult = Result<Replied, HandlerError>;

/// Writes the reply to one request, in place, on the channel's sending half.
pub struct Responder<'a> {
    sender: &'a dyn TransportSender,
    message_id: u64,
    request_id: u64,
    wants_reply: bool,
    /// A `@sync` one-way: the reply is an empty completion.
    sync: bool,
    replied: &'a Cell<bool>,
    timeout: Duration,
}

impl std::fmt::Debug for Responder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("request_id", &self.request_id)
            .field("wants_reply", &self.wants_reply)
            .finish_non_exhaustive()
    }
}

impl Responder<'_> {
    /// Whether the caller waits for a reply (a call or a `@sync` one-way).
    pub fn wants_reply(&self) -> bool {
        self.wants_reply
    }

    /// Replies with objects of data lengths `object_lens`, written in place by `fill`. For a
    /// one-way message nothing is sent (the fill is not called); for a `@sync` one-way the
    /// completion carries no objects either.
    pub fn reply_with(
        self,
        object_lens: &[u64],
        fill: impl FnOnce(&mut dyn ObjectSink) -> Result<(), TransportError>,
    ) -> HandlerResult {
        if !self.wants_reply {
            return Ok(Replied(()));
        }
        if self.sync {
            return self.done();
        }
        let out = Outgoing::new(self.message_id, Kind::Reply).request_id(self.request_id);
        self.sender.send_with(
            &out,
            object_lens,
            &mut super::client::once_fill(fill),
            self.timeout,
        )?;
        self.replied.set(true);
        Ok(Replied(()))
    }

    /// Replies with `objects` (id, data), copied.
    pub fn reply(self, objects: &[(u64, &[u8])]) -> HandlerResult {
        let lens: Vec<u64> = objects.iter().map(|(_, d)| d.len() as u64).collect();
        self.reply_with(&lens, copy_fill(objects))
    }

    /// Done, with nothing to return: an empty reply to a call (a method returning
    /// nothing), the completion of a `@sync` one-way, nothing for a one-way.
    pub fn done(self) -> HandlerResult {
        if !self.wants_reply {
            return Ok(Replied(()));
        }
        let out = Outgoing::new(self.message_id, Kind::Reply).request_id(self.request_id);
        super::send_objects(self.sender, &out, &[], self.timeout)?;
        self.replied.set(true);
        Ok(Replied(()))
    }
}

/// How a serve loop runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// How long writing a reply may wait for room in the client's ring; a client that
    /// does not read its replies for that long is dropped (default 5 s).
    pub reply_timeout: Duration,
    /// How often the loop looks at `stop` while idle (default 100 ms).
    pub poll: Duration,
    /// Set it to make the loop return [`ServeEnd::Stopped`].
    pub stop: Option<Arc<AtomicBool>>,
    /// Copy each request out of the ring before the handler sees it (default `false`:
    /// zero copy). Over shared memory the client can still write the request's bytes while
    /// the handler reads them, so a handler that checks a value and then uses it could see
    /// two different values; with the copy, what it checks is what it uses. Turn it on for
    /// clients you do not trust (see `docs/SECURITY.md`).
    pub copy_on_receive: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            reply_timeout: Duration::from_secs(5),
            poll: Duration::from_millis(100),
            stop: None,
            copy_on_receive: false,
        }
    }
}

impl ServeOptions {
    fn stopped(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }
}

/// Why a serve loop returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServeEnd {
    /// The client went away ([`serve_channel`]).
    PeerDied,
    /// [`ServeOptions::stop`] was set.
    Stopped,
}

/// The text of a panic payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string payload".to_owned()
    }
}

/// Hands one message to the handler and sends what the caller must get. An `Err` means the
/// client can no longer be answered (gone, not reading, broken): drop it.
pub(crate) fn dispatch<H>(
    msg: &dyn IncomingMessage,
    sender: &dyn TransportSender,
    channel: Option<ChannelId>,
    version: u32,
    handler: &mut H,
    opts: &ServeOptions,
) -> Result<(), TransportError>
where
    H: FnMut(&RequestView<'_>, Responder<'_>) -> HandlerResult,
{
    let timeout = opts.reply_timeout;
    // The copy is made in one pass, right away; from then on the handler reads only it.
    let copy;
    let msg: &dyn IncomingMessage = if opts.copy_on_receive {
        copy = OwnedMessage::copy_of(msg);
        &copy
    } else {
        msg
    };
    let (wants_reply, sync) = match msg.kind() {
        Kind::Request => (true, false),
        Kind::OneWay => {
            let sync = msg.flags() & flags::SYNC != 0;
            (sync, sync)
        }
        // `Control` (cancel): one ring delivers in order, so by the time this loop reads a
        // cancel it has already run the request; the client discards the reply. Replies and
        // events from a client mean nothing to a server: skipped.
        _ => return Ok(()),
    };
    let replied = Cell::new(false);
    let view = RequestView {
        msg,
        channel,
        version,
    };
    let responder = Responder {
        sender,
        message_id: msg.message_id(),
        request_id: msg.request_id(),
        wants_reply,
        sync,
        replied: &replied,
        timeout,
    };
    // The handler owns whatever it captured; after a panic the loop only uses `replied`,
    // the message and the sender, none of which a panic leaves half-changed.
    let outcome = catch_unwind(AssertUnwindSafe(|| handler(&view, responder)));
    let (flag, payload) = match outcome {
        Ok(Ok(Replied(()))) => return Ok(()),
        Ok(Err(HandlerError::Remote(bytes))) => (flags::ERROR, bytes),
        Ok(Err(HandlerError::UnknownMethod)) => (flags::UNKNOWN_METHOD, Vec::new()),
        Ok(Err(HandlerError::Failed(why))) => (flags::FAULT, why.into_bytes()),
        // The reply could not be written because of what it was (too large, mis-sized):
        // the caller gets a fault instead.
        Ok(Err(HandlerError::Transport(
            e @ (TransportError::TooLarge { .. }
            | TransportError::Layout(_)
            | TransportError::Encode(_)
            | TransportError::Dropped),
        ))) => (
            flags::FAULT,
            format!("the reply was not sent: {e}").into_bytes(),
        ),
        Ok(Err(HandlerError::Transport(e))) => return Err(e),
        Err(panic) => (
            flags::FAULT,
            format!("handler panicked: {}", panic_message(&*panic)).into_bytes(),
        ),
    };
    if !wants_reply || replied.get() {
        return Ok(());
    }
    let out = Outgoing::new(msg.message_id(), Kind::Reply)
        .request_id(msg.request_id())
        .flags(flag);
    let objects: &[(u64, &[u8])] = if flag == flags::UNKNOWN_METHOD {
        &[]
    } else {
        &[(ERROR_OBJECT, &payload)]
    };
    super::send_objects(sender, &out, objects, timeout)
}

/// Serves one client on `transport` until it goes away (or `opts.stop` is set): each request
/// or one-way message is handed, borrowed, to `handler`, which writes the reply through its
/// [`Responder`] or returns an error; a panicking handler fails that call only. Send events
/// with [`send_event`] on a clone of [`Transport::sender`].
pub fn serve_channel<T, H>(
    transport: &mut T,
    mut handler: H,
    opts: &ServeOptions,
) -> Result<ServeEnd, TransportError>
where
    T: Transport,
    H: FnMut(&RequestView<'_>, Responder<'_>) -> HandlerResult,
{
    let sender = transport.sender();
    let version = transport.version();
    loop {
        if opts.stopped() {
            return Ok(ServeEnd::Stopped);
        }
        let timed_out = match transport.recv_timeout(opts.poll) {
            Ok(msg) => match dispatch(&msg, &sender, None, version, &mut handler, opts) {
                Ok(()) => false,
                Err(TransportError::PeerDied) => return Ok(ServeEnd::PeerDied),
                Err(e) => return Err(e),
            },
            Err(TransportError::Timeout) => true,
            Err(TransportError::MessageLost { .. }) => false,
            Err(TransportError::PeerDied) => return Ok(ServeEnd::PeerDied),
            Err(e) => return Err(e),
        };
        // A polling receiver (`WaitPolicy::SPIN`) is not woken by the peer's leaving: it
        // looks between waits.
        if timed_out && !transport.peer_alive() {
            return Ok(ServeEnd::PeerDied);
        }
    }
}

/// What to do with the loop's state once the event (which borrows the loop) is gone.
enum After {
    Nothing,
    Connected(ChannelId),
    Gone(ChannelId),
    Drop(ChannelId),
}

/// Serves every client of the service behind `event_loop` on this thread until `opts.stop`
/// is set: requests are dispatched as in [`serve_channel`], round-robin over the clients. A
/// client that dies, breaks its ring, or stops reading its replies is dropped; the others
/// keep being served. `hub` learns of every client, for events.
pub fn serve_service<H>(
    event_loop: &mut EventLoop,
    hub: &EventHub,
    mut handler: H,
    opts: &ServeOptions,
) -> Result<ServeEnd, EventLoopError>
where
    H: FnMut(&RequestView<'_>, Responder<'_>) -> HandlerResult,
{
    let mut versions: HashMap<ChannelId, u32> = HashMap::new();
    loop {
        if opts.stopped() {
            return Ok(ServeEnd::Stopped);
        }
        // In a block: the event borrows the loop until it is dropped.
        let after = {
            let event = match event_loop.next_event(opts.poll) {
                Ok(e) => e,
                // A client that failed its handshake: the loop carries on.
                Err(EventLoopError::Accept(_)) => continue,
                Err(e) => return Err(e),
            };
            match event {
                None => After::Nothing,
                Some(Event::Connected(id)) => After::Connected(id),
                Some(Event::Message {
                    channel,
                    message,
                    reply,
                }) => {
                    let version = versions.get(&channel).copied().unwrap_or(0);
                    match dispatch(&message, reply, Some(channel), version, &mut handler, opts) {
                        Ok(()) => After::Nothing,
                        Err(_) => After::Drop(channel),
                    }
                }
                Some(Event::Disconnected(id, _)) => After::Gone(id),
                Some(_) => After::Nothing,
            }
        };
        match after {
            After::Nothing => {}
            After::Connected(id) => {
                if let Some(ch) = event_loop.channel(id) {
                    versions.insert(id, ch.version());
                    hub.insert_versioned(id, ch.tx().clone(), ch.version());
                }
            }
            After::Gone(id) => {
                versions.remove(&id);
                hub.remove(id);
            }
            After::Drop(id) => {
                event_loop.close(id);
                versions.remove(&id);
                hub.remove(id);
            }
        }
    }
}

/// Sends an event (`Kind::Event`, objects copied) on one channel's sender.
pub fn send_event(
    sender: &(impl TransportSender + ?Sized),
    message_id: u64,
    objects: &[(u64, &[u8])],
    timeout: Duration,
) -> Result<(), TransportError> {
    super::send_objects(
        sender,
        &Outgoing::new(message_id, Kind::Event),
        objects,
        timeout,
    )
}

/// The clients of a served service, to send them events from any thread. Cheap to clone.
#[derive(Clone, Default)]
pub struct EventHub {
    clients: Arc<Mutex<HashMap<ChannelId, HubClient>>>,
}

/// A client of an [`EventHub`]: its sender and the version its handshake settled.
#[derive(Clone)]
struct HubClient {
    sender: Arc<dyn TransportSender>,
    version: u32,
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("clients", &self.clients().len())
            .finish()
    }
}

/// What [`EventHub::broadcast`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BroadcastReport {
    /// Clients that got the event.
    pub sent: usize,
    /// Clients that did not, and why (a full ring past the timeout, a dead client).
    pub failed: Vec<(ChannelId, TransportError)>,
}

impl EventHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<ChannelId, HubClient>> {
        // Nothing panics while holding the lock; a poisoned map is still consistent.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a client whose version is not known: every event is sent to it.
    pub fn insert(&self, id: ChannelId, sender: impl TransportSender + 'static) {
        self.insert_versioned(id, sender, u32::MAX);
    }

    /// Adds a client whose handshake settled `version` (done by [`serve_service`]): events
    /// newer than it are not sent to it (see [`send_message_to_since`](Self::send_message_to_since)).
    pub fn insert_versioned(
        &self,
        id: ChannelId,
        sender: impl TransportSender + 'static,
        version: u32,
    ) {
        let sender = Arc::new(sender);
        self.map().insert(id, HubClient { sender, version });
    }

    /// The version of a client's handshake (`u32::MAX` where it was not given).
    pub fn version(&self, id: ChannelId) -> Option<u32> {
        self.map().get(&id).map(|c| c.version)
    }

    /// Forgets a client; returns whether it was known.
    pub fn remove(&self, id: ChannelId) -> bool {
        self.map().remove(&id).is_some()
    }

    /// The clients now connected.
    pub fn clients(&self) -> Vec<ChannelId> {
        self.map().keys().copied().collect()
    }

    /// Sends an event to one client; [`TransportError::PeerDied`] for an unknown one.
    pub fn send_to(
        &self,
        id: ChannelId,
        message_id: u64,
        objects: &[(u64, &[u8])],
        timeout: Duration,
    ) -> Result<(), TransportError> {
        self.send_message_to(
            id,
            &Outgoing::new(message_id, Kind::Event),
            objects,
            timeout,
        )
    }

    /// Sends the message `out` (an event, usually; `no_queue` honoured) made of `objects` to
    /// one client; [`TransportError::PeerDied`] for an unknown one.
    pub fn send_message_to(
        &self,
        id: ChannelId,
        out: &Outgoing,
        objects: &[(u64, &[u8])],
        timeout: Duration,
    ) -> Result<(), TransportError> {
        self.send_message_to_since(id, 1, out, objects, timeout)
    }

    /// [`send_message_to`](Self::send_message_to) of a message introduced in version
    /// `since` (an `@since` event): a client whose version is older gets nothing, and the
    /// call fails with [`TransportError::Unsupported`].
    pub fn send_message_to_since(
        &self,
        id: ChannelId,
        since: u32,
        out: &Outgoing,
        objects: &[(u64, &[u8])],
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let client = self.map().get(&id).cloned();
        match client {
            Some(c) if c.version < since => Err(TransportError::Unsupported {
                since,
                peer_version: c.version,
            }),
            Some(c) => super::send_objects(&*c.sender, out, objects, timeout),
            None => Err(TransportError::PeerDied),
        }
    }

    /// Sends an event to every client, waiting up to `timeout` for room in each ring (a
    /// slow client delays the others by at most that: use a short one).
    pub fn broadcast(
        &self,
        message_id: u64,
        objects: &[(u64, &[u8])],
        timeout: Duration,
    ) -> BroadcastReport {
        self.broadcast_message(&Outgoing::new(message_id, Kind::Event), objects, timeout)
    }

    /// [`broadcast`](Self::broadcast) of the message `out` (`no_queue` honoured: a client
    /// whose ring is full gets [`TransportError::Dropped`] in the report).
    pub fn broadcast_message(
        &self,
        out: &Outgoing,
        objects: &[(u64, &[u8])],
        timeout: Duration,
    ) -> BroadcastReport {
        self.broadcast_message_since(1, out, objects, timeout)
    }

    /// [`broadcast_message`](Self::broadcast_message) of a message introduced in version
    /// `since`: clients whose version is older are skipped (neither sent nor failed).
    pub fn broadcast_message_since(
        &self,
        since: u32,
        out: &Outgoing,
        objects: &[(u64, &[u8])],
        timeout: Duration,
    ) -> BroadcastReport {
        let senders: Vec<_> = self
            .map()
            .iter()
            .filter(|(_, c)| c.version >= since)
            .map(|(id, c)| (*id, Arc::clone(&c.sender)))
            .collect();
        let mut report = BroadcastReport::default();
        for (id, s) in senders {
            match super::send_objects(&*s, out, objects, timeout) {
                Ok(()) => report.sent += 1,
                Err(e) => report.failed.push((id, e)),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{Message, Ring, RingConfig, RingReader, RingWriter};
    use crate::rpc::{CallError, Client, Method};
    use std::thread;

    /// A transport over two heap rings: shows the trait is implementable without a
    /// `Channel` (what a network connection does with a socket instead).
    struct HeapTransport {
        tx: RingWriter,
        rx: RingReader,
        _rings: (Ring, Ring),
    }

    fn pair() -> (HeapTransport, HeapTransport) {
        let config = RingConfig::new("RpcUnit", 1 << 16);
        let a = Ring::create_heap(&config).expect("ring");
        let b = Ring::create_heap(&config).expect("ring");
        let one = HeapTransport {
            tx: a.writer(),
            rx: b.reader().expect("reader"),
            _rings: (a.clone(), b.clone()),
        };
        let two = HeapTransport {
            tx: b.writer(),
            rx: a.reader().expect("reader"),
            _rings: (a, b),
        };
        (one, two)
    }

    impl Transport for HeapTransport {
        type Sender = RingWriter;
        type Message<'a> = Message<'a>;

        fn sender(&self) -> RingWriter {
            self.tx.clone()
        }

        fn recv_timeout(&mut self, timeout: Duration) -> Result<Message<'_>, TransportError> {
            Ok(self.rx.receive_timeout(timeout)?)
        }

        fn try_recv(&mut self) -> Result<Option<Message<'_>>, TransportError> {
            Ok(self.rx.try_receive()?)
        }

        fn peer_alive(&self) -> bool {
            true
        }

        fn version(&self) -> u32 {
            2
        }
    }

    #[test]
    fn the_hub_sends_newer_events_only_to_clients_that_know_them() {
        let (client_side, server_side) = pair();
        let hub = EventHub::new();
        hub.insert_versioned(ChannelId(1), server_side.tx.clone(), 1);
        assert_eq!(hub.version(ChannelId(1)), Some(1));
        let out = Outgoing::new(7, Kind::Event);
        let step = Duration::from_secs(5);
        assert_eq!(
            hub.send_message_to_since(ChannelId(1), 2, &out, &[], step),
            Err(TransportError::Unsupported {
                since: 2,
                peer_version: 1
            })
        );
        assert_eq!(hub.broadcast_message_since(2, &out, &[], step).sent, 0);
        assert_eq!(hub.broadcast_message_since(1, &out, &[], step).sent, 1);
        let mut rx = client_side;
        let got = rx.recv_timeout(step).expect("the version 1 event");
        assert_eq!(got.message_id(), 7);
        drop(got);
        assert!(matches!(rx.try_recv(), Ok(None)));
        // A client added without a version gets everything.
        hub.insert(ChannelId(2), server_side.tx.clone());
        assert_eq!(hub.version(ChannelId(2)), Some(u32::MAX));
    }

    #[test]
    fn client_and_server_over_any_transport() {
        let (client_side, mut server_side) = pair();
        let stop = Arc::new(AtomicBool::new(false));
        let opts = ServeOptions {
            stop: Some(Arc::clone(&stop)),
            poll: Duration::from_millis(5),
            ..ServeOptions::default()
        };
        let server = thread::spawn(move || {
            serve_channel(
                &mut server_side,
                |req: &RequestView<'_>, resp: Responder<'_>| match req.message_id() {
                    1 => resp.reply(&[(0, req.object(0).unwrap_or_default())]),
                    2 => panic!("unit boom"),
                    _ => Err(HandlerError::Remote(vec![42])),
                },
                &opts,
            )
        });
        let mut c = Client::new(client_side);
        let echo = Method::new("echo", 1);
        for i in 0..100u32 {
            let got = c.call(
                &echo,
                &[(0, &i.to_le_bytes())],
                Duration::from_secs(10),
                |m| Ok(m.object(0).map(<[u8]>::to_vec)),
            );
            assert_eq!(got, Ok(Some(i.to_le_bytes().to_vec())));
        }
        let boom = c.call(
            &Method::new("boom", 2),
            &[],
            Duration::from_secs(10),
            |_| Ok(()),
        );
        assert!(matches!(boom, Err(CallError::Fault(ref why)) if why.contains("unit boom")));
        let fail = c.call(
            &Method::new("fail", 3),
            &[],
            Duration::from_secs(10),
            |_| Ok(()),
        );
        assert_eq!(fail, Err(CallError::Remote(crate::rpc::RawError(vec![42]))));
        let newer = Method::new("newer", 1).since(3);
        assert!(matches!(
            c.call(&newer, &[], Duration::from_secs(10), |_| Ok(())),
            Err(CallError::Unsupported {
                since: 3,
                peer_version: 2,
                ..
            })
        ));
        stop.store(true, Ordering::Relaxed);
        assert_eq!(server.join().expect("server"), Ok(ServeEnd::Stopped));
    }
}
