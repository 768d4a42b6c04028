//! The RPC layer generated stubs call: request ids, replies matched to their calls, typed
//! call errors, events, versions, cancellation, and a server dispatch loop that survives
//! panicking handlers and misbehaving clients.
//!
//! Everything here moves **opaque objects** (`&[u8]` per object id, or a callback that
//! fills them in place); encoding values into objects is the codec's business. Stubs are
//! written against the [`Transport`] trait, which the shm [`Channel`](crate::Channel)
//! implements and network connections can implement over the same message bytes.
//!
//! # Wire conventions
//!
//! On top of the message header (`shm-layout`), the RPC layer defines:
//!
//! | message | kind | request id | flags (bits 16..32) | objects |
//! |---|---|---|---|---|
//! | call | `Request` | the call's id (never 0) | — | the arguments |
//! | one-way | `OneWay` | 0 | — | the arguments |
//! | `@sync` one-way | `OneWay` | the call's id | [`flags::SYNC`] | the arguments |
//! | reply | `Reply` | the call's id | — | the result |
//! | completion of `@sync` | `Reply` | the call's id | — | none |
//! | error reply | `Reply` | the call's id | [`flags::ERROR`] | object [`ERROR_OBJECT`]: the encoded error |
//! | failed call (panic, ...) | `Reply` | the call's id | [`flags::FAULT`] | object [`ERROR_OBJECT`]: UTF-8 reason |
//! | unknown method | `Reply` | the call's id | [`flags::UNKNOWN_METHOD`] | none |
//! | cancel | `Control` | the canceled call's id | [`flags::CANCEL`] | none |
//! | event | `Event` | 0 | — | the event's fields |
//!
//! A reply carries the message id of its request (the method id). Request ids are allocated
//! per client, from 1 upwards; a reply whose request id is not the one awaited (the late
//! reply of a call that timed out or was canceled) is discarded.

mod client;
pub(crate) mod server;
mod transport;
pub mod typed;

#[cfg(feature = "tokio")]
pub mod async_client;
#[cfg(feature = "tokio")]
pub use async_client::AsyncClient;

pub use client::{
    CallError, CancelHandle, Client, DEFAULT_EVENT_QUEUE, DEFAULT_TIMEOUT, EventItem, Method,
    RawError,
};
pub use server::{
    BroadcastReport, EventHub, HandlerError, HandlerResult, Replied, RequestView, Responder,
    ServeEnd, ServeOptions, send_event, serve_channel, serve_service,
};
pub use transport::{
    AsyncTransport, IncomingMessage, ObjectSink, Outgoing, Transport, TransportError,
    TransportSender, send_objects,
};
pub use typed::{ServeError, serve};

/// The RPC layer's flag bits (bits 16..32 of a message's flags word; the ring ignores them).
pub mod flags {
    /// On a `Reply`: the call failed with the method's error; object
    /// [`ERROR_OBJECT`](super::ERROR_OBJECT) holds it, encoded by the codec.
    pub const ERROR: u64 = 1 << 16;
    /// On a `Reply`: the server failed the call (its handler panicked or gave up); object
    /// [`ERROR_OBJECT`](super::ERROR_OBJECT) holds the reason, UTF-8.
    pub const FAULT: u64 = 1 << 17;
    /// On a `Reply`: the server has no handler for the method.
    pub const UNKNOWN_METHOD: u64 = 1 << 18;
    /// On a `Control` message: the client no longer waits for the call with this request
    /// id; the server may skip it. Its reply, if any, is discarded.
    pub const CANCEL: u64 = 1 << 19;
    /// On a `OneWay` message: the sender waits for an empty `Reply` (same request id) once
    /// the handler has run (`@sync`).
    pub const SYNC: u64 = 1 << 20;
    /// Delivery hint for network transports (`@one_shot`): fail at once when there is no
    /// connection, never resend. The shm channel ignores it.
    pub const ONE_SHOT: u64 = 1 << 21;
    /// Delivery hint for network transports (`@idempotent`): resend until fully sent, or
    /// until the reply arrives. The shm channel ignores it.
    pub const IDEMPOTENT: u64 = 1 << 22;
    /// Delivery hint for network transports (`@ordered`): sent one after another.
    pub const ORDERED: u64 = 1 << 23;
    /// On a `Reply` a transport made up itself (never one from the peer, whose replies
    /// have it cleared): the call failed in transit. Object
    /// [`ERROR_OBJECT`](super::ERROR_OBJECT) holds a [`LocalFailure`](super::LocalFailure)
    /// code byte, then a UTF-8 reason.
    pub const LOCAL: u64 = 1 << 24;
    /// Every bit defined above.
    pub const ALL: u64 =
        ERROR | FAULT | UNKNOWN_METHOD | CANCEL | SYNC | ONE_SHOT | IDEMPOTENT | ORDERED | LOCAL;
}

/// The object id of an error reply's payload (and of a fault's reason).
pub const ERROR_OBJECT: u64 = 0;

/// Why a transport failed a call itself (the code of a [`flags::LOCAL`] reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LocalFailure {
    /// The reply was awaited from a peer instance that is gone: the peer restarted.
    PeerRestarted = 1,
    /// The connection dropped mid-call.
    ConnectionLost = 2,
    /// The call was canceled before it was sent.
    Canceled = 3,
    /// No connection to the destination (a one-shot call).
    NotConnected = 4,
    /// Any other failure (the reason says what).
    Other = 5,
}

impl LocalFailure {
    /// The code byte read back.
    pub fn from_u8(code: u8) -> Self {
        match code {
            1 => LocalFailure::PeerRestarted,
            2 => LocalFailure::ConnectionLost,
            3 => LocalFailure::Canceled,
            4 => LocalFailure::NotConnected,
            _ => LocalFailure::Other,
        }
    }

    /// The error a call sees.
    pub fn to_call_error(self, reason: String) -> CallError {
        match self {
            LocalFailure::PeerRestarted => CallError::PeerRestarted,
            LocalFailure::ConnectionLost => {
                CallError::Transport(TransportError::ConnectionLost(reason))
            }
            LocalFailure::Canceled => CallError::Canceled,
            LocalFailure::NotConnected => CallError::Transport(TransportError::NotConnected),
            LocalFailure::Other => CallError::Transport(TransportError::Io(reason)),
        }
    }
}

/// A received message copied out of the transport (a queued event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMessage {
    /// The message id.
    pub message_id: u64,
    /// What the message is.
    pub kind: shm_layout::Kind,
    /// The request id (0 where none).
    pub request_id: u64,
    /// The RPC flag bits.
    pub flags: u64,
    /// The objects (id, data), in order.
    pub objects: Vec<(u64, Vec<u8>)>,
}

impl OwnedMessage {
    /// Copies a borrowed message.
    pub fn copy_of(m: &(impl IncomingMessage + ?Sized)) -> Self {
        let mut objects = Vec::with_capacity(m.object_count());
        m.for_each_object(&mut |id, d| objects.push((id, d.to_vec())));
        OwnedMessage {
            message_id: m.message_id(),
            kind: m.kind(),
            request_id: m.request_id(),
            flags: m.flags(),
            objects,
        }
    }
}

impl IncomingMessage for OwnedMessage {
    fn message_id(&self) -> u64 {
        self.message_id
    }

    fn kind(&self) -> shm_layout::Kind {
        self.kind
    }

    fn request_id(&self) -> u64 {
        self.request_id
    }

    fn flags(&self) -> u64 {
        self.flags
    }

    fn object(&self, id: u64) -> Option<&[u8]> {
        self.objects
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, d)| &d[..])
    }

    fn object_at(&self, index: usize) -> Option<(u64, &[u8])> {
        self.objects.get(index).map(|(i, d)| (*i, &d[..]))
    }

    fn object_count(&self) -> usize {
        self.objects.len()
    }
}
