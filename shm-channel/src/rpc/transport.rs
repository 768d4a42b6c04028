//! The [`Transport`] trait: what generated stubs are written against.
//!
//! A transport moves **messages**: a header (message id, [`Kind`], request id, the RPC layer's
//! flag bits) and a list of objects (id, bytes), in the byte layout of
//! [`shm_layout`](crate::layout). Nothing in it is specific to shared memory:
//!
//! - sending is *reserve, fill in place, publish*: the caller gives the objects' lengths up
//!   front and a callback that writes each object's bytes into an [`ObjectSink`]. Over shm the
//!   sink is the ring slot itself (zero copy); a TCP or QUIC connection implements the same
//!   call by filling a buffer with the very same message bytes
//!   ([`MessageWriter`](crate::layout::MessageWriter)) and writing it to the socket;
//! - receiving hands out a **borrowed** message ([`IncomingMessage`]): over shm it points
//!   into the ring and its space is freed when it is dropped; over a socket it points into
//!   the connection's receive buffer;
//! - the sending half ([`Transport::Sender`]) is separate and clonable, so a reply can be
//!   written while the request is still borrowed, and a cancel or an event can be sent from
//!   another thread while one thread waits for a reply;
//! - liveness and the handshake's version are plain queries; a connection that reconnects
//!   reports [`TransportError::PeerRestarted`].
//!
//! The shm implementation is [`Channel`] (and [`RingWriter`] as its sender).

use std::time::Duration;

use thiserror::Error;

use crate::channel::{Channel, TryRecvError};
use crate::ring::{self, Message, RingWriter, Slot};
use shm_layout::{Kind, flags};

/// Why a transport could not send or receive.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Nothing arrived, or no room was found, before the deadline.
    #[error("timed out")]
    Timeout,
    /// The peer is gone (and, receiving, everything it sent was delivered).
    #[error("the peer died (or closed the connection)")]
    PeerDied,
    /// The connection was re-established with a new peer instance (network connectors
    /// that reconnect; the shm channel never reports it).
    #[error("the peer restarted")]
    PeerRestarted,
    /// A network transport has no connection to the destination (a one-shot message).
    #[error("no connection to the destination")]
    NotConnected,
    /// A network connection dropped while the message was on its way or its reply was
    /// awaited (the peer is the same instance: the reply is lost, not the peer).
    #[error("the connection was lost: {0}")]
    ConnectionLost(String),
    /// A `no_queue` message found no room and was dropped.
    #[error("no room: no_queue message dropped")]
    Dropped,
    /// The message can never fit.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The message's size.
        size: u64,
        /// The largest message the transport carries.
        max: u64,
    },
    /// A writer died before finishing a message, which was skipped; later messages are
    /// still delivered.
    #[error("a message ({message_id}) was lost: its writer died while writing it")]
    MessageLost {
        /// The id the lost message had.
        message_id: u64,
    },
    /// The objects written do not match the lengths announced (a bug of the caller; the
    /// message was not sent).
    #[error("message not sent: {0}")]
    Layout(String),
    /// The fill callback failed (the message was not sent).
    #[error("encoding the message failed: {0}")]
    Encode(String),
    /// The message is newer than the peer's protocol version (an `@since` event for an
    /// older client): nothing was sent.
    #[error("the peer speaks version {peer_version}; this message needs version {since}")]
    Unsupported {
        /// The version that introduced the message.
        since: u32,
        /// The version the peer's handshake settled.
        peer_version: u32,
    },
    /// The peer broke the protocol (corrupt ring or stream): the connection is unusable.
    #[error("the connection is corrupt: {0}")]
    Corrupt(String),
    /// Another failure of the transport (waiting, mapping, I/O).
    #[error("transport failure: {0}")]
    Io(String),
}

impl From<ring::SendError> for TransportError {
    fn from(e: ring::SendError) -> Self {
        match e {
            ring::SendError::Timeout => TransportError::Timeout,
            ring::SendError::Dropped => TransportError::Dropped,
            ring::SendError::TooLarge { size, max } => TransportError::TooLarge { size, max },
            ring::SendError::Layout(e) => TransportError::Layout(e.to_string()),
            ring::SendError::PeerDied => TransportError::PeerDied,
            ring::SendError::Corrupt(c) => TransportError::Corrupt(c.to_string()),
            other => TransportError::Io(other.to_string()),
        }
    }
}

impl From<ring::RecvError> for TransportError {
    fn from(e: ring::RecvError) -> Self {
        match e {
            ring::RecvError::Timeout => TransportError::Timeout,
            ring::RecvError::PeerDied => TransportError::PeerDied,
            ring::RecvError::WriterDied { message_id, .. } => {
                TransportError::MessageLost { message_id }
            }
            ring::RecvError::Corrupt(c) => TransportError::Corrupt(c.to_string()),
            other => TransportError::Io(other.to_string()),
        }
    }
}

impl From<TryRecvError> for TransportError {
    fn from(e: TryRecvError) -> Self {
        match e {
            TryRecvError::PeerDied => TransportError::PeerDied,
            TryRecvError::WriterDied { message_id, .. } => {
                TransportError::MessageLost { message_id }
            }
            TryRecvError::Corrupt(c) => TransportError::Corrupt(c.to_string()),
            TryRecvError::Ring(e) => TransportError::from(e),
        }
    }
}

/// The header of a message to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    /// The message id (the method's or event's id from the IDL).
    pub message_id: u64,
    /// What the message is.
    pub kind: Kind,
    /// The request id that matches a reply to its request (0 where none).
    pub request_id: u64,
    /// The RPC layer's flag bits (bits 16..32, see [`rpc::flags`](super::flags)); other
    /// bits are ignored.
    pub flags: u64,
    /// Fail at once with [`TransportError::Dropped`] instead of waiting for room.
    pub no_queue: bool,
}

impl Outgoing {
    /// A message of `kind` with no request id, no flags, waiting for room.
    pub fn new(message_id: u64, kind: Kind) -> Self {
        Outgoing {
            message_id,
            kind,
            request_id: 0,
            flags: 0,
            no_queue: false,
        }
    }

    /// With this request id.
    pub fn request_id(mut self, request_id: u64) -> Self {
        self.request_id = request_id;
        self
    }

    /// With these RPC flag bits.
    pub fn flags(mut self, flags: u64) -> Self {
        self.flags = flags;
        self
    }

    /// As a `no_queue` message.
    pub fn no_queue(mut self, no_queue: bool) -> Self {
        self.no_queue = no_queue;
        self
    }
}

/// Where a message's objects are written, in place, in the order their lengths were
/// announced.
pub trait ObjectSink {
    /// Appends object `id` of exactly `len` bytes and returns its bytes to fill.
    fn object(&mut self, id: u64, len: u64) -> Result<&mut [u8], TransportError>;
}

/// A received message, borrowed from the transport. Over shm it is the ring's
/// [`Message`]: its space is freed when it is dropped.
pub trait IncomingMessage {
    /// The message id.
    fn message_id(&self) -> u64;
    /// What the message is.
    fn kind(&self) -> Kind;
    /// The request id (0 where none).
    fn request_id(&self) -> u64;
    /// The RPC layer's flag bits (bits 16..32 only).
    fn flags(&self) -> u64;
    /// The data of the first object with this id.
    fn object(&self, id: u64) -> Option<&[u8]>;
    /// The `index`-th object (id, data), in the order written.
    fn object_at(&self, index: usize) -> Option<(u64, &[u8])>;
    /// How many objects the message has.
    fn object_count(&self) -> usize;
    /// Calls `f` with each object (id, data), in order.
    fn for_each_object(&self, f: &mut dyn FnMut(u64, &[u8])) {
        for i in 0..self.object_count() {
            if let Some((id, data)) = self.object_at(i) {
                f(id, data);
            }
        }
    }
}

impl IncomingMessage for Message<'_> {
    fn message_id(&self) -> u64 {
        Message::message_id(self)
    }

    fn kind(&self) -> Kind {
        Message::kind(self)
    }

    fn request_id(&self) -> u64 {
        Message::request_id(self)
    }

    fn flags(&self) -> u64 {
        Message::flags(self) & flags::APP_MASK
    }

    fn object(&self, id: u64) -> Option<&[u8]> {
        Message::object(self, id)
    }

    fn object_at(&self, index: usize) -> Option<(u64, &[u8])> {
        // The ring validated every object on receipt, so the iterator yields no error here.
        match self.objects().nth(index) {
            Some(Ok(o)) => Some((o.id, o.data)),
            _ => None,
        }
    }

    fn object_count(&self) -> usize {
        self.view().header().object_count as usize
    }

    fn for_each_object(&self, f: &mut dyn FnMut(u64, &[u8])) {
        // Validated on receipt: no errors to skip.
        for o in self.objects().flatten() {
            f(o.id, o.data);
        }
    }
}

/// The sending half of a transport: clonable, usable from any thread.
///
/// Dyn-compatible, so replies and events can be written through `&dyn TransportSender`.
pub trait TransportSender: Send + Sync {
    /// Reserves a message whose objects have the data lengths `object_lens` (in order),
    /// waiting up to `timeout` for room (not at all for `no_queue`), calls `fill` to write
    /// the objects in place, and publishes the message. When `fill` fails, or writes
    /// objects that do not match `object_lens`, nothing is delivered.
    fn send_with(
        &self,
        out: &Outgoing,
        object_lens: &[u64],
        fill: &mut dyn FnMut(&mut dyn ObjectSink) -> Result<(), TransportError>,
        timeout: Duration,
    ) -> Result<(), TransportError>;

    /// The largest message (header and objects) this sender can send.
    fn max_message(&self) -> u64;
}

/// Sends a message made of `objects` (id, data), copying them in.
pub fn send_objects(
    sender: &(impl TransportSender + ?Sized),
    out: &Outgoing,
    objects: &[(u64, &[u8])],
    timeout: Duration,
) -> Result<(), TransportError> {
    let lens: Vec<u64> = objects.iter().map(|(_, d)| d.len() as u64).collect();
    sender.send_with(
        out,
        &lens,
        &mut |sink| {
            for (id, data) in objects {
                sink.object(*id, data.len() as u64)?.copy_from_slice(data);
            }
            Ok(())
        },
        timeout,
    )
}

/// A ring slot as an [`ObjectSink`].
struct SlotSink<'s, 'a>(&'s mut Slot<'a>);

impl ObjectSink for SlotSink<'_, '_> {
    fn object(&mut self, id: u64, len: u64) -> Result<&mut [u8], TransportError> {
        self.0
            .object_mut(id, len)
            .map_err(|e| TransportError::Layout(e.to_string()))
    }
}

impl TransportSender for RingWriter {
    fn send_with(
        &self,
        out: &Outgoing,
        object_lens: &[u64],
        fill: &mut dyn FnMut(&mut dyn ObjectSink) -> Result<(), TransportError>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let max = RingWriter::max_message(self);
        let size = object_lens
            .iter()
            .try_fold(0u64, |acc, &len| {
                acc.checked_add(shm_layout::object_size(len)?)
            })
            .ok_or(TransportError::TooLarge {
                size: u64::MAX,
                max,
            })?;
        let mut slot = self.allocate_for_send_timeout(
            size,
            out.message_id,
            object_lens.len() as u64,
            out.no_queue,
            timeout,
        )?;
        slot.set_kind(out.kind);
        slot.set_request_id(out.request_id);
        slot.set_app_flags(out.flags);
        // On error the slot is dropped unsent, which publishes it as skipped.
        fill(&mut SlotSink(&mut slot))?;
        slot.send()?;
        Ok(())
    }

    fn max_message(&self) -> u64 {
        RingWriter::max_message(self)
    }
}

/// One connection as the RPC layer sees it. Implemented by the shm [`Channel`]; a network
/// connection implements it over the same message bytes.
///
/// A transport moves **messages**: a header (message id, [`Kind`], request id, the RPC
/// layer's flag bits) and a list of objects (id, bytes), in the byte layout of
/// [`shm_layout`](crate::layout). Nothing in it is specific to shared memory:
///
/// - sending is *reserve, fill in place, publish* ([`TransportSender::send_with`]): the
///   caller gives the objects' lengths up front and a callback that writes each object's
///   bytes into an [`ObjectSink`]. Over shm the sink is the ring slot itself (zero copy); a
///   TCP or QUIC connection implements the same call by filling a buffer with the very same
///   message bytes ([`MessageWriter`](crate::layout::MessageWriter)) and writing it out;
/// - receiving hands out a **borrowed** message ([`IncomingMessage`]): over shm it points
///   into the ring and its space is freed when it is dropped; over a socket it points into
///   the connection's receive buffer;
/// - the sending half ([`Transport::Sender`]) is separate and clonable, so a reply can be
///   written while the request is still borrowed, and a cancel or an event can be sent from
///   another thread while one thread waits for a reply;
/// - liveness and the handshake's version are plain queries; a connection that reconnects
///   reports [`TransportError::PeerRestarted`].
pub trait Transport: Send {
    /// The sending half (a clone of the channel's ring writer, over shm).
    type Sender: TransportSender + Clone + 'static;
    /// A received message, borrowed from the transport until dropped.
    type Message<'a>: IncomingMessage
    where
        Self: 'a;

    /// A handle to send on this transport (from this or another thread).
    fn sender(&self) -> Self::Sender;
    /// The next message, waiting up to `timeout`.
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Self::Message<'_>, TransportError>;
    /// The next message if one is complete; never waits.
    fn try_recv(&mut self) -> Result<Option<Self::Message<'_>>, TransportError>;
    /// Whether the peer still holds its end (never blocks).
    fn peer_alive(&self) -> bool;
    /// The protocol version settled by the handshake.
    fn version(&self) -> u32;
}

impl Transport for Channel {
    type Sender = RingWriter;
    type Message<'a> = Message<'a>;

    fn sender(&self) -> RingWriter {
        self.tx().clone()
    }

    fn recv_timeout(&mut self, timeout: Duration) -> Result<Message<'_>, TransportError> {
        Ok(Channel::recv_timeout(self, timeout)?)
    }

    fn try_recv(&mut self) -> Result<Option<Message<'_>>, TransportError> {
        Ok(Channel::try_recv(self)?)
    }

    fn peer_alive(&self) -> bool {
        Channel::peer_alive(self)
    }

    fn version(&self) -> u32 {
        Channel::version(self)
    }
}

/// A [`Transport`] whose receive is a future: what the async client's reader task reads
/// from. Implemented by [`AsyncChannel`](crate::async_channel::AsyncChannel) (feature
/// `tokio`); a network connection implements it over its socket, with the same message
/// bytes and the same [`TransportSender`] for sending.
pub trait AsyncTransport: Send + 'static {
    /// The sending half.
    type Sender: TransportSender + Clone + 'static;
    /// A received message, borrowed from the transport until dropped.
    type Message<'a>: IncomingMessage
    where
        Self: 'a;

    /// A handle to send on this transport.
    fn sender(&self) -> Self::Sender;
    /// The protocol version settled by the handshake.
    fn version(&self) -> u32;
    /// The next message. Must be cancel-safe (a dropped future consumed nothing).
    fn recv(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Self::Message<'_>, TransportError>> + Send;

    /// Whether a call of the async client may read this transport itself, from within its
    /// own `poll` ([`recv_now`](Self::recv_now)), rather than always wait for the client's
    /// reader task: worth it where a reply can come within a microsecond (shared memory),
    /// since each hand-over through the reader task is a trip through the runtime's
    /// scheduler and reactor. `false` unless implemented.
    fn reads_inline(&self) -> bool {
        false
    }

    /// The next message if one is there or comes within a short spin, never awaiting;
    /// `Ok(None)` otherwise (then [`recv`](Self::recv) waits for it). Called only when
    /// [`reads_inline`](Self::reads_inline) says so.
    fn recv_now(&mut self) -> Result<Option<Self::Message<'_>>, TransportError> {
        Ok(None)
    }
}

#[cfg(feature = "tokio")]
impl AsyncTransport for crate::async_channel::AsyncChannel {
    type Sender = RingWriter;
    type Message<'a> = Message<'a>;

    fn sender(&self) -> RingWriter {
        self.tx().clone()
    }

    fn version(&self) -> u32 {
        self.channel().version()
    }

    async fn recv(&mut self) -> Result<Message<'_>, TransportError> {
        Ok(crate::async_channel::AsyncChannel::recv(self).await?)
    }

    fn reads_inline(&self) -> bool {
        true
    }

    fn recv_now(&mut self) -> Result<Option<Message<'_>>, TransportError> {
        Ok(crate::async_channel::AsyncChannel::recv_now(self)?)
    }
}
