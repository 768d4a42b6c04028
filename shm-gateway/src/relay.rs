//! Moving messages between a ring and the network, byte for byte.
//!
//! A message is the same bytes in both places: the 48-byte header (magic, message id,
//! flags, length, object count, request id) and the objects. Going out, the ring's bytes
//! are copied once into the buffer the connection sends, with the flags word cut to what
//! means something to the peer (kind, RPC bits, `NO_QUEUE`; not the ring's state bits).
//! Coming in, a slot of the same size is reserved in the ring, the header fields are set
//! from the message's, and the object bytes are copied in as they are: nothing is decoded
//! or re-encoded.

use std::time::Duration;

use shm_channel::layout::flags as ring_flags;
use shm_channel::layout::{MESSAGE_HEADER_SIZE, MessageHeader, MessageView, MessageWriter};
use shm_channel::ring::{Message, SendError};
use shm_channel::rpc::{ERROR_OBJECT, LocalFailure, flags as rpc_flags};
use shm_channel::{Kind, RingWriter};

/// The bits of a flags word that cross a gateway.
const CROSSING: u64 = ring_flags::KIND_MASK | ring_flags::APP_MASK | ring_flags::NO_QUEUE;

/// A ring message's bytes, for the wire: one copy; the flags word keeps what crosses,
/// without [`rpc_flags::LOCAL`] (only a transport's own replies carry it).
pub fn ring_to_wire(m: &Message<'_>) -> Vec<u8> {
    let mut bytes = m.bytes().to_vec();
    let flags = m.flags() & CROSSING & !rpc_flags::LOCAL;
    bytes[16..24].copy_from_slice(&flags.to_le_bytes());
    bytes
}

/// What a message's header says about how to handle it.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// The method or event.
    pub message_id: u64,
    /// What it is.
    pub kind: Kind,
    /// Its request id.
    pub request_id: u64,
    /// Its flags word.
    pub flags: u64,
}

impl Shape {
    /// The shape of validated message bytes.
    pub fn of(bytes: &[u8]) -> Option<Shape> {
        let h = MessageHeader::decode(bytes).ok()?;
        Some(Shape {
            message_id: h.message_id,
            kind: h.kind()?,
            request_id: h.request_id,
            flags: h.flags,
        })
    }

    /// Whether the sender waits for a reply: a call, or a `@sync` one-way.
    pub fn awaits_reply(&self) -> bool {
        self.request_id != 0
            && (self.kind == Kind::Request
                || (self.kind == Kind::OneWay && self.flags & rpc_flags::SYNC != 0))
    }

    /// Whether it may be sent again after a lost connection (`@idempotent`).
    pub fn idempotent(&self) -> bool {
        self.flags & rpc_flags::IDEMPOTENT != 0
    }

    /// Whether it is a cancel of an earlier call.
    pub fn is_cancel(&self) -> bool {
        self.kind == Kind::Control && self.flags & rpc_flags::CANCEL != 0
    }
}

/// Writes `bytes` (a validated message) into the ring behind `w`, with the RPC flag bits
/// `app_flags` (the receiver's view of them: [`rpc_flags::LOCAL`] only on replies this
/// gateway made up), waiting up to `timeout` for room (a `NO_QUEUE` message never waits).
pub fn write_to_ring(
    w: &RingWriter,
    bytes: &[u8],
    app_flags: u64,
    timeout: Duration,
) -> Result<(), SendError> {
    let view = MessageView::parse(bytes).map_err(SendError::Layout)?;
    let h = *view.header();
    let kind = h.kind().unwrap_or(Kind::Raw);
    let payload = &bytes[MESSAGE_HEADER_SIZE as usize..];
    let no_queue = h.flags & ring_flags::NO_QUEUE != 0;
    let mut slot = w.allocate_for_send_timeout(
        payload.len() as u64,
        h.message_id,
        h.object_count,
        no_queue,
        timeout,
    )?;
    slot.set_kind(kind);
    slot.set_request_id(h.request_id);
    slot.set_app_flags(app_flags);
    slot.raw_payload().copy_from_slice(payload);
    slot.send()
}

/// A reply to call `request_id` (method `message_id`) with `flags` and one object
/// [`ERROR_OBJECT`] holding `payload`, as message bytes.
pub fn reply_bytes(message_id: u64, request_id: u64, flags: u64, payload: &[u8]) -> Vec<u8> {
    let len = shm_channel::layout::message_len([payload.len() as u64])
        .and_then(|l| usize::try_from(l).ok())
        .unwrap_or(0);
    let mut buf = vec![0u8; len];
    let mut header = MessageHeader::new(message_id, Kind::Reply, 1, request_id);
    header.flags |= flags & ring_flags::APP_MASK;
    let written = MessageWriter::new(&mut buf, header).and_then(|mut w| {
        w.object_mut(ERROR_OBJECT, payload.len() as u64)?
            .copy_from_slice(payload);
        w.finish()
    });
    // Sized from the payload just above: it cannot fail short of a reason longer than
    // memory, and then an empty buffer is refused by whoever parses it.
    if written.is_err() {
        buf.clear();
    }
    buf
}

/// Tells the local caller of `shape` that the gateway failed its call: a reply with
/// [`rpc_flags::LOCAL`] (the RPC client turns it into `code`'s `CallError`), written
/// into the ring behind `w`.
pub fn fail_locally(
    w: &RingWriter,
    shape_message_id: u64,
    request_id: u64,
    code: LocalFailure,
    reason: &str,
    timeout: Duration,
) -> Result<(), SendError> {
    let mut payload = vec![code as u8];
    payload.extend_from_slice(reason.as_bytes());
    let bytes = reply_bytes(shape_message_id, request_id, rpc_flags::LOCAL, &payload);
    write_to_ring(w, &bytes, rpc_flags::LOCAL, timeout)
}

/// A fault reply (the RPC client's `CallError::Fault(reason)`) to send to a remote caller.
pub fn fault_bytes(message_id: u64, request_id: u64, reason: &str) -> Vec<u8> {
    reply_bytes(message_id, request_id, rpc_flags::FAULT, reason.as_bytes())
}
