//! One connection as a state machine (sans-io, in the manner of quinn-proto's
//! `Connection`): bytes from the socket go in through [`Connection::handle_data`], bytes
//! for the socket come out of [`Connection::poll_transmit`], what happened comes out of
//! [`Connection::poll_event`], and time only moves when the caller says so
//! ([`Connection::handle_timeout`], with the deadline from [`Connection::poll_timeout`]).
//! No socket, runtime or clock inside: tests drive two of them in memory.
//!
//! The connection cuts each queued message into frames of the negotiated buffer size and
//! sends the frames of up to [`ConnConfig::window`] messages round-robin (multiplexing);
//! it reassembles incoming messages, matches replies to the requests it sent, sends
//! keep-alives while replies are pending, and closes on silence, on a keep-alive flood
//! or on any violation of the wire format.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use super::compress::Compressor;
use super::frame::{
    self, CloseCode, FRAME_HEADER, FrameError, FrameHeader, Hello, ProtocolSpec, Welcome,
    data_flags, kind,
};
use super::transmit::TransmitBuf;
use shm_layout::{Kind, MESSAGE_HEADER_SIZE, MessageHeader, MessageView, OBJECT_HEADER_SIZE};

/// How a message is delivered when connections fail (the IDL's `@one_shot`,
/// `@idempotent`, `@ordered`, or the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Delivery {
    /// Resent on another connection if it had not started when its connection dropped;
    /// failed if it dropped mid-way (or while its reply was awaited).
    #[default]
    Default,
    /// Fails at once when there is no connection, and is never resent.
    OneShot,
    /// Resent until fully sent or, when a reply is awaited, until the reply arrives.
    Idempotent,
    /// Sent one after another: a message starts only once the previous ordered one was
    /// fully sent (otherwise as the default).
    Ordered,
}

/// Where a message's bytes come from: a buffer, or a stream (a file larger than memory)
/// read one frame at a time.
pub trait MessageSource: Send {
    /// The message's total length (header included); must equal the length in its header.
    fn len(&self) -> u64;
    /// Whether the message is empty (never, for a valid message).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` with the next bytes and returns how many; 0 only at the end.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, String>;
    /// Starts over for a resend; `false` when the source cannot.
    fn rewind(&mut self) -> bool;
    /// The next `max` bytes (fewer only at the end) as a shared slice of bytes the source
    /// holds in memory, advancing as [`read`](Self::read) does: a frame's payload then goes
    /// to the socket without a copy. `None` (the default): the source has no such bytes,
    /// the caller reads them with [`read`](Self::read).
    fn next_bytes(&mut self, max: usize) -> Option<Bytes> {
        let _ = max;
        None
    }
}

/// A message held in memory.
#[derive(Debug, Clone)]
pub struct BytesSource {
    bytes: Bytes,
    at: usize,
}

impl BytesSource {
    /// The message `bytes` (header and objects, as built by
    /// [`MessageWriter`](shm_layout::MessageWriter)); a `Vec<u8>` is taken over as it is,
    /// not copied, and its frames are slices of it.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        BytesSource {
            bytes: bytes.into(),
            at: 0,
        }
    }
}

impl MessageSource for BytesSource {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn next_bytes(&mut self, max: usize) -> Option<Bytes> {
        let end = self.at.saturating_add(max).min(self.bytes.len());
        let piece = self.bytes.slice(self.at..end);
        self.at = end;
        Some(piece)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        let rest = &self.bytes[self.at..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.at += n;
        Ok(n)
    }

    fn rewind(&mut self) -> bool {
        self.at = 0;
        true
    }
}

/// A message queued for sending.
pub struct OutMessage {
    /// The caller's name for it (events and failures refer to it).
    pub token: u64,
    /// The index of its protocol in the client's handshake.
    pub protocol: u16,
    /// Its bytes.
    pub source: Box<dyn MessageSource>,
    /// How it is delivered.
    pub delivery: Delivery,
    /// The request id whose reply it awaits, if it awaits one.
    pub request_id: Option<u64>,
    /// Sent as a *streamed* message (the `STREAM` flag): the receiver may hand it to its
    /// consumer piece by piece, and the peer's reassembly limit (`max_message`) does not
    /// apply. It must hold exactly one object.
    pub streamed: bool,
}

impl std::fmt::Debug for OutMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutMessage")
            .field("token", &self.token)
            .field("len", &self.source.len())
            .field("delivery", &self.delivery)
            .field("request_id", &self.request_id)
            .field("streamed", &self.streamed)
            .finish_non_exhaustive()
    }
}

impl OutMessage {
    /// A message in memory: header fields are read from `bytes` (a request or a `@sync`
    /// one-way awaits its reply under its request id).
    pub fn from_bytes(token: u64, bytes: Vec<u8>, delivery: Delivery) -> Self {
        let request_id = awaited_reply(&bytes);
        OutMessage {
            token,
            protocol: 0,
            source: Box::new(BytesSource::new(bytes)),
            delivery,
            request_id,
            streamed: false,
        }
    }
}

/// Checks the start of a streamed message (`data`, its first frame, of a message of `len`
/// bytes): a valid header with exactly one object whose size makes up `len`.
fn streamed_header(data: &[u8], len: u64) -> Result<MessageHeader, ConnError> {
    let bad = |why: String| ConnError::Frame(FrameError::Malformed(why));
    if data.len() < (MESSAGE_HEADER_SIZE + OBJECT_HEADER_SIZE) as usize {
        return Err(FrameError::Truncated("first frame of a streamed message").into());
    }
    // The header as if the message ended here, so that it decodes without the rest.
    let mut head = [0u8; MESSAGE_HEADER_SIZE as usize];
    head.copy_from_slice(&data[..MESSAGE_HEADER_SIZE as usize]);
    head[24..32].copy_from_slice(&MESSAGE_HEADER_SIZE.to_le_bytes());
    let mut header =
        MessageHeader::decode(&head).map_err(|e| bad(format!("streamed message: {e}")))?;
    header.length = len;
    if header.object_count != 1 {
        return Err(bad(format!(
            "a streamed message has {} objects, not 1",
            header.object_count
        )));
    }
    let mut object_len = [0u8; 8];
    object_len.copy_from_slice(&data[56..64]);
    let object_len = u64::from_le_bytes(object_len);
    if shm_layout::message_len([object_len]) != Some(len) {
        return Err(bad(format!(
            "a streamed object of {object_len} bytes in a message of {len}"
        )));
    }
    Ok(header)
}

/// The request id a message's reply will carry, if the sender waits for one: a `Request`,
/// or a `OneWay` with the RPC `SYNC` flag.
pub fn awaited_reply(bytes: &[u8]) -> Option<u64> {
    let header = shm_layout::MessageHeader::decode(bytes).ok()?;
    let sync = header.flags & crate::rpc::flags::SYNC != 0;
    match header.kind()? {
        Kind::Request if header.request_id != 0 => Some(header.request_id),
        Kind::OneWay if sync && header.request_id != 0 => Some(header.request_id),
        _ => None,
    }
}

/// How far a message got before its connection closed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Progress {
    /// Not a byte went out: safe to send elsewhere.
    NotStarted,
    /// Some frames went out, not all.
    Partial,
    /// Fully sent; its reply had not arrived.
    AwaitingReply,
}

/// A message a closed connection did not finish.
#[derive(Debug)]
pub struct Unfinished {
    /// The message's token.
    pub token: u64,
    /// The request id it awaited a reply under.
    pub request_id: Option<u64>,
    /// Its delivery.
    pub delivery: Delivery,
    /// How far it got.
    pub progress: Progress,
    /// The message itself, rewound, where it may be resent (not started, or idempotent).
    pub message: Option<OutMessage>,
}

/// What [`Connection::cancel`] did.
#[derive(Debug)]
pub enum CancelOutcome {
    /// It had not started: dropped, handed back.
    Canceled(Box<OutMessage>),
    /// It is on the wire or awaits its reply: it cannot be canceled.
    NotCancelable,
    /// This connection does not have it.
    Unknown,
}

/// Which side a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Connects, sends the hello, sends keep-alives.
    Client,
    /// Accepts, answers the hello, guards against floods and silence.
    Server,
}

/// How a connection behaves. Durations are short in tests, long in production.
#[derive(Clone)]
pub struct ConnConfig {
    /// The buffer (frame) size asked for: [`MIN_BUFFER`](frame::MIN_BUFFER) to
    /// [`MAX_BUFFER`](frame::MAX_BUFFER); the smaller of both sides' wins.
    pub buffer_size: u32,
    /// The largest message accepted from the peer.
    pub max_message: u64,
    /// The most messages the peer may have in progress at once towards us.
    pub max_incoming_streams: usize,
    /// The most messages sent interleaved at once (streams stalled for lack of credit
    /// from the peer do not count: they never hold the others back).
    pub window: usize,
    /// Accept streamed messages (`STREAM` flag) of up to this many bytes (default: any)
    /// and hand them to the consumer piece by piece ([`ConnEvent::StreamStarted`] and
    /// what follows); larger ones are refused. 0: streamed messages are reassembled like
    /// others (up to [`max_message`](Self::max_message)), and refused beyond it. The
    /// drivers set 0 where nothing would consume them (clients, servers without a
    /// stream handler).
    pub max_streamed: u64,
    /// Flow control: the bytes of one incoming streamed message that may be in flight or
    /// delivered but not yet consumed ([`Connection::stream_consumed`]); what a slow
    /// consumer costs in memory, per stream.
    pub stream_window: u32,
    /// Flow control for the whole connection (HTTP/2's connection window): the most bytes
    /// granted beyond the first 64 KiB of each stream ([`frame::INITIAL_WINDOW`]) that
    /// are in flight, being reassembled or delivered but not yet consumed, summed over
    /// every incoming stream. Grants past it wait, oldest stream first, until messages
    /// complete or are consumed. One message alone may exceed it (up to
    /// [`max_message`](Self::max_message)): it is granted when nothing else holds credit.
    pub receive_window: u64,
    /// Client: how long without sending anything before a keep-alive goes out (while
    /// replies are pending, or always with [`keepalive_idle`](Self::keepalive_idle)).
    pub keepalive_interval: Duration,
    /// Client: keep the connection alive when no reply is pending, too.
    pub keepalive_idle: bool,
    /// Server: close a peer silent this long. Client: close when the server stays silent
    /// this long while replies are pending.
    pub inactivity_timeout: Duration,
    /// Server: the most keep-alives accepted in one [`keepalive_window`](Self::keepalive_window).
    pub max_keepalives: u32,
    /// Server: the interval over which keep-alives are counted.
    pub keepalive_window: Duration,
    /// Both: how long the handshake may take.
    pub handshake_timeout: Duration,
    /// Compression algorithms accepted, best first.
    pub compression: Vec<Arc<dyn Compressor>>,
    /// Deliver received messages in the order the peer started them (its stream ids),
    /// not in the order they complete: a small message sent after a large one is held
    /// until the large one is in. What a gateway needs to keep a channel's order (over
    /// QUIC, and past the interleaving of the window).
    pub in_order: bool,
}

impl std::fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnConfig")
            .field("buffer_size", &self.buffer_size)
            .field("max_message", &self.max_message)
            .field("receive_window", &self.receive_window)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("inactivity_timeout", &self.inactivity_timeout)
            .field("max_keepalives", &self.max_keepalives)
            .finish_non_exhaustive()
    }
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            buffer_size: frame::DEFAULT_BUFFER,
            max_message: 256 << 20,
            max_incoming_streams: 1024,
            window: 16,
            max_streamed: u64::MAX,
            stream_window: 1 << 20,
            receive_window: 16 << 20,
            keepalive_interval: Duration::from_secs(10),
            keepalive_idle: false,
            inactivity_timeout: Duration::from_secs(60),
            max_keepalives: 100,
            keepalive_window: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            compression: Vec::new(),
            in_order: false,
        }
    }
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The peer broke the wire format.
    #[error("the peer broke the wire format: {0}")]
    Frame(#[from] FrameError),
    /// The peer sent too many keep-alives in one interval.
    #[error("too many keep-alive packets received")]
    TooManyKeepalives,
    /// The peer stayed silent past the inactivity timeout.
    #[error("inactivity timeout")]
    InactivityTimeout,
    /// The handshake did not finish in time.
    #[error("handshake timeout")]
    HandshakeTimeout,
    /// The handshake found nothing in common.
    #[error("handshake refused: {0}")]
    Refused(String),
    /// The peer closed with a reason.
    #[error("closed by the peer ({code:?}): {reason}")]
    ClosedByPeer {
        /// Its code.
        code: CloseCode,
        /// Its reason.
        reason: String,
    },
    /// The peer closed the stream without a word (it died, or its host did).
    #[error("the peer closed the connection")]
    PeerGone,
    /// The socket failed.
    #[error("I/O error: {0}")]
    Io(String),
    /// Closed on purpose by this side.
    #[error("closed locally")]
    Local,
    /// The peer did not read what this side sent: `queued` bytes could not be sent for
    /// `waited` (a server's reply or event found no room in the connection's bounded
    /// send queue for its whole timeout). No `CLOSE` frame: it would wait behind them.
    #[error(
        "the peer does not read: {queued} bytes queued for it could not be sent for {waited:?}"
    )]
    SlowPeer {
        /// Bytes queued for the peer when it was given up on.
        queued: u64,
        /// How long the send that gave up waited for room.
        waited: Duration,
    },
}

impl ConnError {
    /// The code this side tells the peer when it closes for this reason.
    fn close_code(&self) -> Option<CloseCode> {
        match self {
            ConnError::Frame(_) => Some(CloseCode::Protocol),
            ConnError::TooManyKeepalives => Some(CloseCode::TooManyKeepalives),
            ConnError::InactivityTimeout => Some(CloseCode::InactivityTimeout),
            ConnError::Refused(_) => Some(CloseCode::Refused),
            ConnError::Local => Some(CloseCode::Normal),
            _ => None,
        }
    }
}

/// What the handshake settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's instance id (a restarted peer has a new one).
    pub instance: u128,
    /// The buffer size in use.
    pub buffer_size: u32,
    /// The largest message the peer accepts.
    pub max_message: u64,
    /// The compression in use (0: none).
    pub compression: u8,
    /// The protocols of the client's hello with the version agreed (0: not served).
    pub protocols: Vec<(ProtocolSpec, u32)>,
}

/// What happened on a connection.
#[derive(Debug)]
pub enum ConnEvent {
    /// The handshake finished.
    Connected(PeerInfo),
    /// A complete, validated message arrived.
    Message {
        /// The index of its protocol in the client's hello.
        protocol: u16,
        /// The message bytes (parse with [`MessageView`]).
        bytes: Vec<u8>,
    },
    /// A message went out completely (its last frame was handed to the socket).
    Sent {
        /// Its token.
        token: u64,
    },
    /// A message could not be sent: its source failed (the peer was told to drop it), it
    /// was too large for the peer, or the peer refused its stream.
    Failed {
        /// Its token.
        token: u64,
        /// The request id whose reply it would have awaited.
        request_id: Option<u64>,
        /// Why.
        reason: String,
    },
    /// A streamed message began: its header and its one object's id and length. Its data
    /// follows in [`StreamData`](Self::StreamData) events, in order, then
    /// [`StreamEnded`](Self::StreamEnded) or [`StreamAborted`](Self::StreamAborted).
    StreamStarted {
        /// The index of its protocol in the client's hello.
        protocol: u16,
        /// The stream id (what [`Connection::stream_consumed`] and
        /// [`Connection::refuse_stream`] take).
        stream: u32,
        /// The message header (its `length` is the whole message's).
        header: MessageHeader,
        /// The object's id.
        object_id: u64,
        /// The object's length: the bytes the data events will carry in all.
        len: u64,
    },
    /// The next piece of a streamed message's object. Report it consumed
    /// ([`Connection::stream_consumed`]) once the consumer took it: the peer sends no more
    /// than [`ConnConfig::stream_window`] bytes ahead of that.
    StreamData {
        /// The stream id.
        stream: u32,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A streamed message is complete (every data byte was delivered and checked).
    StreamEnded {
        /// The stream id.
        stream: u32,
    },
    /// A streamed message will not complete: its sender gave up, or the connection closed.
    StreamAborted {
        /// The stream id.
        stream: u32,
        /// Why.
        reason: String,
    },
    /// The connection is closed; flush [`Connection::poll_transmit`] once more, then drop
    /// the socket.
    Closed(ConnError),
}

enum State {
    /// Client: hello queued, waiting for the welcome. Server: waiting for the hello.
    Handshaking,
    Open(PeerInfo),
    Closed,
}

/// A message being sent.
struct OutStream {
    msg: OutMessage,
    stream: u32,
    sent: u64,
    /// The bytes the receiver allows in all (flow control): `sent <= allowed <= len`.
    allowed: u64,
}

impl OutStream {
    /// Out of credit: waits for the receiver's `WINDOW`.
    fn blocked(&self) -> bool {
        self.sent >= self.allowed && self.sent < self.msg.source.len()
    }
}

/// The first bytes of a message of `len` bytes, which its sender sends without a grant.
fn initial_window(len: u64) -> u64 {
    len.min(u64::from(frame::INITIAL_WINDOW))
}

/// A message being received.
struct InStream {
    protocol: u16,
    len: u64,
    /// Message bytes received.
    received: u64,
    /// Message bytes the sender may send in all (initial window plus grants).
    granted: u64,
    body: Body,
}

impl InStream {
    /// What this stream counts against [`ConnConfig::receive_window`]: the bytes it holds
    /// or may still be sent (a reassembled message keeps all it receives; a streamed one
    /// what is in flight or unconsumed), beyond the initial window no grant gave.
    fn charge(&self) -> u64 {
        let occupancy = match self.body {
            Body::Whole(_) => self.granted,
            Body::Streamed { pending, .. } => (self.granted - self.received) + pending,
            Body::Refused => 0,
        };
        occupancy.saturating_sub(initial_window(self.len))
    }
}

/// What a receiver does with a stream's bytes.
enum Body {
    /// Reassembles the message.
    Whole(Vec<u8>),
    /// Hands the object's data to the consumer as it arrives.
    Streamed {
        /// Data delivered and not yet reported consumed.
        pending: u64,
        /// Where the object's data ends in the message (padding follows).
        data_end: u64,
    },
    /// Dropped: frames in flight are discarded until its `LAST` or the sender's `ABORT`.
    Refused,
}

/// One connection (see the module docs).
pub struct Connection {
    side: Side,
    config: ConnConfig,
    instance: u128,
    /// Server: the protocols served.
    served: Vec<ProtocolSpec>,
    /// Client: the hello sent.
    hello: Option<Hello>,
    state: State,
    /// Received bytes not yet parsed (at most one frame or one handshake record).
    rx: Vec<u8>,
    incoming: HashMap<u32, InStream>,
    /// Incoming streams whose grant waits for room in the connection window, oldest first.
    withheld: VecDeque<u32>,
    /// Message bytes queued or in progress that are not yet in a frame.
    queued_bytes: u64,
    /// Frames that go out before any data (handshake, keep-alives, close).
    control: VecDeque<Vec<u8>>,
    queue: VecDeque<OutMessage>,
    active: VecDeque<OutStream>,
    next_stream: u32,
    /// Stream ids wrapped around: any id may have been used.
    streams_wrapped: bool,
    /// Requests fully sent, waiting for their reply: request id -> (token, the message if
    /// it may be resent).
    awaiting: HashMap<u64, (u64, Delivery, Option<OutMessage>)>,
    events: VecDeque<ConnEvent>,
    started_at: Instant,
    last_rx: Instant,
    last_tx: Instant,
    keepalives: u32,
    keepalive_window_start: Instant,
    compressor: Option<Arc<dyn Compressor>>,
    /// A frame's payload read from a source without [`MessageSource::next_bytes`].
    scratch: Vec<u8>,
    /// A frame's compressed payload.
    zipped: Vec<u8>,
    /// A frame header being encoded.
    header: Vec<u8>,
    /// See [`Connection::set_send_budget`].
    send_budget: Option<usize>,
    /// Bytes given by `poll_transmit` not yet reported written.
    unwritten: usize,
    /// Bytes of messages that fit one frame sent in a row ahead of larger ones.
    small_run: usize,
    /// Stream ids of ordered messages in progress (at most one).
    ordered_busy: HashSet<u32>,
    /// The stream id of the ordered message started last (0: none yet).
    last_ordered: u32,
    stats: ConnStats,
    /// With [`ConnConfig::in_order`]: the next stream id to deliver, and the messages
    /// (or aborts: `None`) that completed before it.
    next_delivery: u32,
    held: BTreeMap<u32, Option<(u16, Vec<u8>)>>,
    /// What `held` counts against [`ConnConfig::receive_window`] (its messages' bytes
    /// beyond their initial windows): without it a peer that leaves a stream id out (or
    /// whose first message is slow) could complete message after message, each granted
    /// once the one before was done, and all of them wait here.
    held_charge: u64,
}

/// What a message held for order counts against the receive window.
fn held_charge(m: &Option<(u16, Vec<u8>)>) -> u64 {
    m.as_ref().map_or(0, |(_, bytes)| {
        let len = bytes.len() as u64;
        len - initial_window(len)
    })
}

/// Counters of one connection (or, summed, of a pool).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Data frames sent.
    pub frames_sent: u64,
    /// Of those, sent compressed (the others did not shrink, or no compression was agreed).
    pub frames_compressed: u64,
    /// Message bytes sent (before compression).
    pub raw_bytes_sent: u64,
    /// Bytes sent: data frames (headers and payloads, after compression), the handshake
    /// record and control frames.
    pub wire_bytes_sent: u64,
    /// Messages sent whole (their last frame went out).
    pub messages_sent: u64,
    /// Messages received whole (a streamed one counts when it starts).
    pub messages_received: u64,
    /// Message bytes received (after decompression; a streamed message's data as it
    /// is handed on).
    pub raw_bytes_received: u64,
    /// Bytes received (handshake record and frames, as read from the socket).
    pub wire_bytes_received: u64,
}

impl std::ops::AddAssign for ConnStats {
    fn add_assign(&mut self, o: ConnStats) {
        self.frames_sent += o.frames_sent;
        self.frames_compressed += o.frames_compressed;
        self.raw_bytes_sent += o.raw_bytes_sent;
        self.wire_bytes_sent += o.wire_bytes_sent;
        self.messages_sent += o.messages_sent;
        self.messages_received += o.messages_received;
        self.raw_bytes_received += o.raw_bytes_received;
        self.wire_bytes_received += o.wire_bytes_received;
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("side", &self.side)
            .field("queued", &self.queue.len())
            .field("active", &self.active.len())
            .field("awaiting", &self.awaiting.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A client connection that will speak `protocols` (frames name them by index).
    pub fn client(
        now: Instant,
        config: ConnConfig,
        instance: u128,
        protocols: Vec<ProtocolSpec>,
    ) -> Self {
        let hello = Hello {
            instance,
            buffer_size: config
                .buffer_size
                .clamp(frame::MIN_BUFFER, frame::MAX_BUFFER),
            max_message: config.max_message,
            compression: config.compression.iter().map(|c| c.id()).collect(),
            protocols,
        };
        let mut record = Vec::new();
        hello.encode(&mut record);
        let mut c = Self::new(now, Side::Client, config, instance);
        c.control.push_back(record);
        c.hello = Some(hello);
        c
    }

    /// A server connection that serves `protocols`.
    pub fn server(
        now: Instant,
        config: ConnConfig,
        instance: u128,
        protocols: Vec<ProtocolSpec>,
    ) -> Self {
        let mut c = Self::new(now, Side::Server, config, instance);
        c.served = protocols;
        c
    }

    fn new(now: Instant, side: Side, config: ConnConfig, instance: u128) -> Self {
        Connection {
            side,
            config,
            instance,
            served: Vec::new(),
            hello: None,
            state: State::Handshaking,
            rx: Vec::new(),
            incoming: HashMap::new(),
            withheld: VecDeque::new(),
            queued_bytes: 0,
            control: VecDeque::new(),
            queue: VecDeque::new(),
            active: VecDeque::new(),
            next_stream: 1,
            streams_wrapped: false,
            awaiting: HashMap::new(),
            events: VecDeque::new(),
            started_at: now,
            last_rx: now,
            last_tx: now,
            keepalives: 0,
            keepalive_window_start: now,
            compressor: None,
            scratch: Vec::new(),
            zipped: Vec::new(),
            header: Vec::with_capacity(FRAME_HEADER),
            send_budget: None,
            unwritten: 0,
            small_run: 0,
            ordered_busy: HashSet::new(),
            last_ordered: 0,
            next_delivery: 1,
            held: BTreeMap::new(),
            held_charge: 0,
            stats: ConnStats::default(),
        }
    }

    /// What this connection sent so far.
    pub fn stats(&self) -> ConnStats {
        self.stats
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// What the handshake settled, once it has.
    pub fn peer(&self) -> Option<&PeerInfo> {
        match &self.state {
            State::Open(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the handshake finished and the connection is not closed.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) may yield a frame now, or the
    /// connection is closed (its driver must flush and drop the socket): what decides
    /// whether its driver needs a wake-up.
    pub fn wants_transmit(&self) -> bool {
        match self.state {
            State::Closed => true,
            State::Handshaking => !self.control.is_empty(),
            State::Open(_) => !self.control.is_empty() || self.can_send(),
        }
    }

    /// The stream id of the ordered message started last, in progress or done (0 before
    /// the first). Ordered messages start one at a time, so every frame of one is made
    /// while it is the last started: a driver that spreads streams over several lanes
    /// (QUIC) reads this after each [`poll_transmit`](Self::poll_transmit) to keep
    /// ordered messages on one lane, in order.
    pub fn last_ordered_stream(&self) -> u32 {
        self.last_ordered
    }

    /// Messages queued or in progress (not yet fully sent).
    pub fn unsent(&self) -> usize {
        self.queue.len() + self.active.len()
    }

    /// Message bytes queued or in progress that have not gone into a frame yet: what the
    /// peer's reading (and its credit) still has to take. Frames already handed to
    /// [`poll_transmit`](Self::poll_transmit)'s buffer are not counted.
    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes
    }

    /// Bytes of incoming streams counted against [`ConnConfig::receive_window`] now (see
    /// there): granted beyond each stream's initial window and not yet delivered (with
    /// [`ConnConfig::in_order`], complete messages held for an earlier one included), or
    /// delivered piece by piece and not yet consumed.
    pub fn receive_window_used(&self) -> u64 {
        self.incoming.values().map(InStream::charge).sum::<u64>() + self.held_charge
    }

    /// Whether `stream` is the one the messages held for order wait for: it is granted
    /// past them (and past the order of the streams waiting for the window), or they
    /// would wait for it and it for their credit, for ever.
    fn is_head(&self, stream: u32) -> bool {
        self.config.in_order && stream == self.next_delivery
    }

    /// Requests fully sent whose reply has not arrived.
    pub fn awaiting(&self) -> usize {
        self.awaiting.len()
    }

    /// Queues a message. On a closed connection it comes back at once in an
    /// [`Unfinished`] of [`take_unfinished`](Self::take_unfinished).
    pub fn send(&mut self, msg: OutMessage) {
        self.queued_bytes += msg.source.len();
        self.queue.push_back(msg);
    }

    /// Drops a message that has not started; says so otherwise.
    pub fn cancel(&mut self, token: u64) -> CancelOutcome {
        if let Some(i) = self.queue.iter().position(|m| m.token == token) {
            // `position` found it.
            return match self.queue.remove(i) {
                Some(m) => {
                    self.queued_bytes -= m.source.len();
                    CancelOutcome::Canceled(Box::new(m))
                }
                None => CancelOutcome::Unknown,
            };
        }
        let on_wire = self.active.iter().any(|s| s.msg.token == token)
            || self.awaiting.values().any(|(t, _, _)| *t == token);
        if on_wire {
            CancelOutcome::NotCancelable
        } else {
            CancelOutcome::Unknown
        }
    }

    /// Forgets a request's awaited reply (its caller gave up).
    pub fn forget_reply(&mut self, request_id: u64) -> bool {
        self.awaiting.remove(&request_id).is_some()
    }

    /// Closes the connection for `reason`: the peer is told why (a `CLOSE` frame, which
    /// [`poll_transmit`](Self::poll_transmit) still yields) where the reason has a code.
    pub fn close(&mut self, reason: ConnError) {
        if self.is_closed() {
            return;
        }
        if let Some(code) = reason.close_code() {
            let text = reason.to_string();
            let mut f = Vec::with_capacity(FRAME_HEADER + 4 + text.len());
            let mut h = FrameHeader::control(kind::CLOSE);
            // The reason is cut to fit the smallest buffer.
            let text = &text.as_bytes()[..text.len().min(frame::MIN_BUFFER as usize - 64)];
            h.payload = 4 + text.len() as u32;
            h.encode(&mut f);
            f.extend_from_slice(&code.to_u32().to_le_bytes());
            f.extend_from_slice(text);
            // After what is already queued: a refusing server's welcome goes first.
            self.control.push_back(f);
        }
        self.state = State::Closed;
        self.held.clear();
        self.held_charge = 0;
        self.withheld.clear();
        self.abort_incoming(&format!("the connection closed: {reason}"));
        self.events.push_back(ConnEvent::Closed(reason));
    }

    /// Drops every incoming stream; the consumers of streamed ones are told.
    fn abort_incoming(&mut self, reason: &str) {
        let mut ids: Vec<u32> = self
            .incoming
            .iter()
            .filter(|(_, s)| matches!(s.body, Body::Streamed { .. }))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        self.incoming.clear();
        for stream in ids {
            self.events.push_back(ConnEvent::StreamAborted {
                stream,
                reason: reason.to_owned(),
            });
        }
    }

    /// The consumer of the incoming streamed message `stream` took `n` more bytes of it:
    /// the sender is granted more (a `WINDOW` frame) once enough room opened. Unknown or
    /// finished streams are ignored.
    pub fn stream_consumed(&mut self, stream: u32, n: u64) {
        if let Some(InStream {
            body: Body::Streamed { pending, .. },
            ..
        }) = self.incoming.get_mut(&stream)
        {
            *pending = pending.saturating_sub(n);
            self.grant(stream);
            self.grant_withheld();
        }
    }

    /// Drops the incoming streamed message `stream` (its consumer went away): the sender
    /// is told to stop (`ABORT` with `REFUSED`), and what it still sends is discarded.
    pub fn refuse_stream(&mut self, stream: u32) {
        if self.is_closed() {
            return;
        }
        if let Some(s) = self.incoming.get_mut(&stream)
            && !matches!(s.body, Body::Refused)
        {
            s.body = Body::Refused;
            self.push_abort(stream, frame::abort_flags::REFUSED);
            self.grant_withheld();
        }
    }

    fn push_abort(&mut self, stream: u32, flags: u8) {
        let mut h = FrameHeader::control(kind::ABORT);
        h.stream = stream;
        h.flags = flags;
        let mut f = Vec::with_capacity(FRAME_HEADER);
        h.encode(&mut f);
        self.control.push_back(f);
    }

    /// Grants the sender of `stream` more credit if enough room opened: for a streamed
    /// message, the window minus what is in flight or unconsumed (sent once half a window
    /// is free, so grants stay few); for a reassembled one, all of it. Either only within
    /// the connection window: otherwise the stream waits its turn behind the others
    /// waiting ([`grant_withheld`](Self::grant_withheld)).
    fn grant(&mut self, stream: u32) {
        let waiting = self.withheld.contains(&stream);
        let first = self.withheld.front() == Some(&stream) || self.is_head(stream);
        // Strictly oldest first: a large message waiting for the window is never starved
        // by smaller ones granted past it.
        if (!self.withheld.is_empty() && !first) || !self.try_grant(stream) {
            if !waiting {
                self.withheld.push_back(stream);
            }
        } else if waiting {
            self.withheld.retain(|s| *s != stream);
        }
    }

    /// Grants the streams waiting for the connection window, oldest first, while it has
    /// room.
    fn grant_withheld(&mut self) {
        while let Some(&stream) = self.withheld.front() {
            if self.incoming.contains_key(&stream) && !self.try_grant(stream) {
                // The head of the order goes past the queue (see `is_head`).
                let head = self.next_delivery;
                if self.config.in_order
                    && head != stream
                    && self.withheld.contains(&head)
                    && self.incoming.contains_key(&head)
                    && self.try_grant(head)
                {
                    self.withheld.retain(|s| *s != head);
                }
                return;
            }
            self.withheld.pop_front();
        }
    }

    /// Grants `stream` what it may have now; `false` when the connection window holds it
    /// back (nothing granted).
    fn try_grant(&mut self, stream: u32) -> bool {
        let window = u64::from(self.config.stream_window.max(frame::MIN_BUFFER));
        let mut used = self.receive_window_used();
        if self.is_head(stream) {
            // What waits for this stream does not hold it back.
            used -= self.held_charge;
        }
        let room = self.config.receive_window.saturating_sub(used);
        let Some(s) = self.incoming.get_mut(&stream) else {
            return true;
        };
        let left = s.len - s.granted;
        let want = match s.body {
            Body::Refused => 0,
            Body::Whole(_) => left,
            Body::Streamed { pending, .. } => {
                let outstanding = (s.granted - s.received) + pending;
                let room = window.saturating_sub(outstanding);
                if room >= window / 2 || room >= left {
                    room.min(left)
                } else {
                    0
                }
            }
        };
        if want == 0 {
            return true;
        }
        let give = if want <= room || used == 0 {
            // Within the window, or alone: a message larger than the window still gets
            // in when nothing else holds credit.
            want
        } else if matches!(s.body, Body::Streamed { .. }) && room >= (window / 2).min(want) {
            room
        } else {
            return false;
        };
        s.granted += give;
        let mut rest = give;
        while rest > 0 {
            let n = rest.min(u64::from(u32::MAX)) as u32;
            rest -= u64::from(n);
            let mut h = FrameHeader::control(kind::WINDOW);
            h.stream = stream;
            h.raw = n;
            let mut f = Vec::with_capacity(FRAME_HEADER);
            h.encode(&mut f);
            self.control.push_back(f);
        }
        true
    }

    /// Whether some frame of a message could go out now (a queued message, or an active
    /// one with credit).
    fn can_send(&self) -> bool {
        !self.queue.is_empty() || self.active.iter().any(|s| !s.blocked())
    }

    /// Whether a message waits for the peer's credit.
    fn stalled(&self) -> bool {
        self.active.iter().any(OutStream::blocked)
    }

    /// The socket reached its end (the peer closed or died).
    pub fn handle_eof(&mut self) {
        self.close(ConnError::PeerGone);
    }

    /// The socket failed.
    pub fn handle_io_error(&mut self, e: String) {
        self.close(ConnError::Io(e));
    }

    /// Every message this (closed) connection did not finish: not started, partly sent,
    /// or sent and awaiting its reply; the resendable ones rewound.
    pub fn take_unfinished(&mut self) -> Vec<Unfinished> {
        let mut out = Vec::new();
        for s in self.active.drain(..) {
            let mut msg = s.msg;
            let resend = msg.delivery == Delivery::Idempotent && msg.source.rewind();
            out.push(Unfinished {
                token: msg.token,
                request_id: msg.request_id,
                delivery: msg.delivery,
                progress: Progress::Partial,
                message: resend.then_some(msg),
            });
        }
        for msg in self.queue.drain(..) {
            out.push(Unfinished {
                token: msg.token,
                request_id: msg.request_id,
                delivery: msg.delivery,
                progress: Progress::NotStarted,
                message: Some(msg),
            });
        }
        for (request_id, (token, delivery, msg)) in self.awaiting.drain() {
            let msg = msg.and_then(|mut m| m.source.rewind().then_some(m));
            out.push(Unfinished {
                token,
                request_id: Some(request_id),
                delivery,
                progress: Progress::AwaitingReply,
                message: msg,
            });
        }
        self.ordered_busy.clear();
        self.queued_bytes = 0;
        out
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<ConnEvent> {
        self.events.pop_front()
    }

    /// Limits the bytes handed out by [`poll_transmit`](Self::poll_transmit) and not yet
    /// reported written ([`handle_written`](Self::handle_written)) to about `budget`
    /// (`None`: no limit, the default). A driver that sets it writes what it took before
    /// it takes more, so that bytes wait here, where a small message can pass a large
    /// one, and not in the driver's buffer, where it cannot: a message queued now waits
    /// for at most the budget plus one frame. Control frames (handshake, keep-alives,
    /// grants, close) are never held back, but count.
    pub fn set_send_budget(&mut self, budget: Option<usize>) {
        self.send_budget = budget;
    }

    /// `n` bytes given by [`poll_transmit`](Self::poll_transmit) went to the socket.
    pub fn handle_written(&mut self, n: usize) {
        self.unwritten = self.unwritten.saturating_sub(n);
    }

    /// Appends the next control frame or handshake record to send to `out` (grants,
    /// keep-alives, `CLOSE`: what [`poll_transmit`](Self::poll_transmit) yields first);
    /// `false` when there is none. For a driver whose data path is full but whose control
    /// frames travel apart (QUIC's control stream): the peer's replies may be waiting for
    /// this side's grants, and its data for those replies.
    pub fn poll_control<O: TransmitBuf + ?Sized>(&mut self, now: Instant, out: &mut O) -> bool {
        let Some(f) = self.control.pop_front() else {
            return false;
        };
        out.put_slice(&f);
        self.unwritten += f.len();
        self.last_tx = now;
        self.stats.wire_bytes_sent += f.len() as u64;
        true
    }

    /// Appends the next frame (or handshake record) to send to `out`; `false` when there is
    /// nothing to send now (or the [send budget](Self::set_send_budget) is spent).
    ///
    /// Scheduling: a message whose rest fits one frame goes before the frames of larger
    /// ones (a small call waits for at most the frame in progress, however many large
    /// messages are interleaved), but for no more than one frame's worth of such bytes
    /// in a row, so that a flood of small messages never starves a large one; the large
    /// ones take turns, a frame each.
    pub fn poll_transmit<O: TransmitBuf + ?Sized>(&mut self, now: Instant, out: &mut O) -> bool {
        if self.poll_control(now, out) {
            return true;
        }
        if self.send_budget.is_some_and(|b| self.unwritten >= b) {
            return false;
        }
        let State::Open(peer) = &self.state else {
            return false;
        };
        let buffer = peer.buffer_size as usize;
        let max_message = peer.max_message;
        self.start_streams(max_message);
        let room = buffer - FRAME_HEADER;
        let Some(mut s) = self.pick(room) else {
            return false;
        };
        let first = s.sent == 0;
        let left = s.msg.source.len() - s.sent;
        let credit = s.allowed - s.sent;
        let want = room.min(usize::try_from(left.min(credit)).unwrap_or(usize::MAX));
        let payload = match Self::take_payload(&mut s.msg, want, &mut self.scratch) {
            Ok(p) => p,
            Err(reason) => {
                self.queued_bytes -= left;
                self.ordered_busy.remove(&s.stream);
                // Even a stream that sent nothing yet: its id is used, and a receiver that
                // delivers in order must not wait for it.
                let mut h = FrameHeader::control(kind::ABORT);
                h.stream = s.stream;
                self.header.clear();
                h.encode(&mut self.header);
                out.put_slice(&self.header);
                self.unwritten += FRAME_HEADER;
                self.last_tx = now;
                self.events.push_back(ConnEvent::Failed {
                    token: s.msg.token,
                    request_id: s.msg.request_id,
                    reason,
                });
                return true;
            }
        };
        s.sent += want as u64;
        self.queued_bytes -= want as u64;
        let last = s.sent == s.msg.source.len();
        let mut flags = 0;
        if first {
            flags |= data_flags::FIRST;
            if s.msg.streamed {
                flags |= data_flags::STREAM;
            }
        }
        if last {
            flags |= data_flags::LAST;
        }
        let mut header = FrameHeader {
            kind: kind::DATA,
            flags,
            protocol: s.msg.protocol,
            stream: s.stream,
            payload: want as u32,
            raw: want as u32,
        };
        let raw: &[u8] = match &payload {
            Some(b) => b,
            None => &self.scratch,
        };
        self.zipped.clear();
        let compressed = match &self.compressor {
            Some(c) => c.compress(raw, &mut self.zipped) && self.zipped.len() < want,
            None => false,
        };
        self.header.clear();
        if compressed {
            header.flags |= data_flags::COMPRESSED;
            header.payload = self.zipped.len() as u32;
            header.encode(&mut self.header);
            out.put_slice(&self.header);
            out.put_slice(&self.zipped);
        } else {
            // Did not shrink (or no compression): the payload goes out as it is, a slice
            // of the message where the source holds it in memory.
            header.encode(&mut self.header);
            out.put_slice(&self.header);
            match payload {
                Some(b) => out.put_bytes(b),
                None => out.put_slice(&self.scratch),
            }
        }
        let wire = FRAME_HEADER + header.payload as usize;
        self.unwritten += wire;
        self.last_tx = now;
        self.stats.frames_sent += 1;
        self.stats.frames_compressed += u64::from(compressed);
        self.stats.raw_bytes_sent += want as u64;
        self.stats.wire_bytes_sent += wire as u64;
        if last {
            self.ordered_busy.remove(&s.stream);
            let token = s.msg.token;
            if let Some(id) = s.msg.request_id {
                // The delivery is kept for every kind: the pool decides by it what a
                // dropped connection means for the call (a one-shot fails at once).
                let delivery = s.msg.delivery;
                let keep = (delivery == Delivery::Idempotent).then_some(s.msg);
                self.awaiting.insert(id, (token, delivery, keep));
            }
            self.stats.messages_sent += 1;
            self.events.push_back(ConnEvent::Sent { token });
        } else {
            self.active.push_back(s);
        }
        true
    }

    /// Takes the stream to send a frame of next (see
    /// [`poll_transmit`](Self::poll_transmit)): one that finishes within `room` bytes
    /// while fewer than `room` such bytes went out in a row, else the next in turn; one
    /// stalled by its receiver is passed over, never waited for.
    fn pick(&mut self, room: usize) -> Option<OutStream> {
        if self.small_run < room {
            let small = self.active.iter().position(|s| {
                let left = s.msg.source.len() - s.sent;
                !s.blocked() && left <= room as u64 && left <= s.allowed - s.sent
            });
            if let Some(i) = small {
                let s = self.active.remove(i)?;
                self.small_run += (s.msg.source.len() - s.sent) as usize;
                return Some(s);
            }
        }
        self.small_run = 0;
        for _ in 0..self.active.len() {
            let s = self.active.pop_front()?;
            if s.blocked() {
                self.active.push_back(s);
            } else {
                return Some(s);
            }
        }
        None
    }

    /// The next `want` bytes of `msg`: a shared slice where its source holds them in
    /// memory (`Some`), else read into `scratch` (`None`); the reason when the source
    /// fails or ends early.
    fn take_payload(
        msg: &mut OutMessage,
        want: usize,
        scratch: &mut Vec<u8>,
    ) -> Result<Option<Bytes>, String> {
        let early = |got: usize| format!("the source ended {} bytes early", want - got);
        if let Some(b) = msg.source.next_bytes(want) {
            return if b.len() == want {
                Ok(Some(b))
            } else {
                Err(early(b.len()))
            };
        }
        scratch.clear();
        scratch.resize(want, 0);
        let mut got = 0;
        while got < want {
            match msg.source.read(&mut scratch[got..]) {
                Ok(0) => return Err(early(got)),
                Ok(n) => got += n.min(want - got),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Moves queued messages into the interleaved set, keeping ordered ones one at a time.
    /// Streams stalled for credit do not count against the window. A message the peer
    /// would not reassemble (over its `max_message`, not streamed) fails here.
    fn start_streams(&mut self, max_message: u64) {
        let mut i = 0;
        let window = self.config.window.max(1);
        let mut moving = self.active.iter().filter(|s| !s.blocked()).count();
        while moving < window && i < self.queue.len() {
            let len = self.queue[i].source.len();
            if !self.queue[i].streamed && len > max_message {
                if let Some(m) = self.queue.remove(i) {
                    self.queued_bytes -= len;
                    self.events.push_back(ConnEvent::Failed {
                        token: m.token,
                        request_id: m.request_id,
                        reason: format!(
                            "message of {len} bytes exceeds the peer's limit of {max_message}"
                        ),
                    });
                }
                continue;
            }
            let ordered = self.queue[i].delivery == Delivery::Ordered;
            if ordered && !self.ordered_busy.is_empty() {
                i += 1;
                continue;
            }
            // While an ordered message is in progress every later ordered one is skipped,
            // and the scan restarts from the front each time: they start in queue order.
            let Some(msg) = self.queue.remove(i) else {
                break;
            };
            let stream = self.next_stream;
            self.next_stream = self.next_stream.wrapping_add(1).max(1);
            self.streams_wrapped |= self.next_stream == 1;
            if ordered {
                self.ordered_busy.insert(stream);
                self.last_ordered = stream;
            }
            let allowed = msg.source.len().min(u64::from(frame::INITIAL_WINDOW));
            self.active.push_back(OutStream {
                msg,
                stream,
                sent: 0,
                allowed,
            });
            moving += 1;
        }
    }

    /// Takes bytes read from the socket. Frames are parsed where they lie in `data`;
    /// only the start of a frame cut by the end of `data` is kept (copied) until the rest
    /// arrives.
    pub fn handle_data(&mut self, now: Instant, data: &[u8]) {
        if self.is_closed() {
            return;
        }
        self.stats.wire_bytes_received += data.len() as u64;
        let mut data = data;
        // First complete the unit (frame or record) begun by earlier bytes, taking from
        // `data` only what it lacks.
        let mut result = Ok(());
        while !self.rx.is_empty() && !data.is_empty() {
            let lack = self.lacking();
            let n = lack.min(data.len());
            self.rx.extend_from_slice(&data[..n]);
            data = &data[n..];
            let rx = std::mem::take(&mut self.rx);
            let parsed = self.parse_all(now, &rx);
            self.rx = rx;
            match parsed {
                Ok(used) => {
                    self.rx.drain(..used.min(self.rx.len()));
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            if self.is_closed() {
                return;
            }
        }
        if result.is_ok() && !data.is_empty() && !self.is_closed() {
            match self.parse_all(now, data) {
                Ok(used) => {
                    if !self.is_closed() {
                        self.rx.extend_from_slice(&data[used..]);
                    }
                }
                Err(e) => result = Err(e),
            }
        }
        match result {
            Err(e) => self.close(e),
            // Messages that completed gave their credit back.
            Ok(()) if !self.is_closed() => self.grant_withheld(),
            Ok(()) => {}
        }
    }

    /// How many more bytes the unit begun in `self.rx` needs before it can be parsed (or
    /// its length read); any number while the handshake is on (records are small).
    fn lacking(&self) -> usize {
        match &self.state {
            State::Open(_) if self.rx.len() < FRAME_HEADER => FRAME_HEADER - self.rx.len(),
            State::Open(_) => {
                let payload =
                    u32::from_le_bytes([self.rx[8], self.rx[9], self.rx[10], self.rx[11]]);
                (FRAME_HEADER + payload as usize)
                    .saturating_sub(self.rx.len())
                    .max(1)
            }
            _ => usize::MAX,
        }
    }

    /// Parses every whole unit at the start of `bytes`; returns the bytes they took.
    fn parse_all(&mut self, now: Instant, bytes: &[u8]) -> Result<usize, ConnError> {
        let mut used = 0;
        while let Some(n) = self.parse_one(now, &bytes[used..])? {
            used += n;
            if self.is_closed() {
                break;
            }
        }
        Ok(used)
    }

    /// Parses one record or frame at the start of `bytes`; returns the bytes it took.
    fn parse_one(&mut self, now: Instant, bytes: &[u8]) -> Result<Option<usize>, ConnError> {
        match &self.state {
            State::Closed => Ok(None),
            State::Handshaking => {
                let Some((record, used)) = frame::split_record(bytes)? else {
                    return Ok(None);
                };
                self.last_rx = now;
                match self.side {
                    Side::Server => self.handle_hello(record)?,
                    Side::Client => self.handle_welcome(record)?,
                }
                Ok(Some(used))
            }
            State::Open(peer) => {
                let Some(h) = FrameHeader::decode(bytes, peer.buffer_size)? else {
                    return Ok(None);
                };
                let end = FRAME_HEADER + h.payload as usize;
                if bytes.len() < end {
                    return Ok(None);
                }
                self.last_rx = now;
                self.handle_frame(now, h, &bytes[FRAME_HEADER..end])?;
                Ok(Some(end))
            }
        }
    }

    fn handle_hello(&mut self, record: &[u8]) -> Result<(), ConnError> {
        let hello = Hello::decode(record)?;
        if hello.buffer_size < frame::MIN_BUFFER {
            return Err(ConnError::Refused(format!(
                "buffer size {} below {}",
                hello.buffer_size,
                frame::MIN_BUFFER
            )));
        }
        let buffer_size = hello
            .buffer_size
            .min(self.config.buffer_size)
            .clamp(frame::MIN_BUFFER, frame::MAX_BUFFER);
        let compressor = hello
            .compression
            .iter()
            .find_map(|id| self.config.compression.iter().find(|c| c.id() == *id))
            .cloned();
        let protocols: Vec<(ProtocolSpec, u32)> = hello
            .protocols
            .iter()
            .map(|p| {
                let v = self.served.iter().find_map(|s| s.agree(p)).unwrap_or(0);
                (p.clone(), v)
            })
            .collect();
        let welcome = Welcome {
            instance: self.instance,
            buffer_size,
            max_message: self.config.max_message,
            compression: compressor.as_ref().map_or(0, |c| c.id()),
            versions: protocols.iter().map(|(_, v)| *v).collect(),
        };
        let mut record = Vec::new();
        welcome.encode(&mut record);
        self.control.push_back(record);
        if protocols.iter().all(|(_, v)| *v == 0) {
            let names: Vec<&str> = hello.protocols.iter().map(|p| p.name.as_str()).collect();
            return Err(ConnError::Refused(format!(
                "no protocol in common (asked for {names:?})"
            )));
        }
        self.compressor = compressor;
        let peer = PeerInfo {
            instance: hello.instance,
            buffer_size,
            max_message: hello.max_message,
            compression: welcome.compression,
            protocols,
        };
        self.state = State::Open(peer.clone());
        self.events.push_back(ConnEvent::Connected(peer));
        Ok(())
    }

    fn handle_welcome(&mut self, record: &[u8]) -> Result<(), ConnError> {
        let welcome = Welcome::decode(record)?;
        let Some(hello) = &self.hello else {
            return Err(ConnError::Refused("no hello was sent".into()));
        };
        if welcome.buffer_size < frame::MIN_BUFFER || welcome.buffer_size > hello.buffer_size {
            return Err(FrameError::Malformed(format!(
                "buffer size {} outside {}..={}",
                welcome.buffer_size,
                frame::MIN_BUFFER,
                hello.buffer_size
            ))
            .into());
        }
        if welcome.versions.len() != hello.protocols.len() {
            return Err(FrameError::Malformed("versions do not match the hello".into()).into());
        }
        let compressor = match welcome.compression {
            0 => None,
            id => Some(
                self.config
                    .compression
                    .iter()
                    .find(|c| c.id() == id)
                    .cloned()
                    .ok_or_else(|| {
                        FrameError::Malformed(format!("compression {id} was not offered"))
                    })?,
            ),
        };
        if welcome.versions.iter().all(|v| *v == 0) {
            return Err(ConnError::Refused(
                "the server serves none of our protocols".into(),
            ));
        }
        self.compressor = compressor;
        let peer = PeerInfo {
            instance: welcome.instance,
            buffer_size: welcome.buffer_size,
            max_message: welcome.max_message,
            compression: welcome.compression,
            protocols: hello
                .protocols
                .iter()
                .cloned()
                .zip(welcome.versions.iter().copied())
                .collect(),
        };
        self.state = State::Open(peer.clone());
        self.events.push_back(ConnEvent::Connected(peer));
        Ok(())
    }

    fn handle_frame(
        &mut self,
        now: Instant,
        h: FrameHeader,
        payload: &[u8],
    ) -> Result<(), ConnError> {
        match h.kind {
            kind::DATA => self.handle_data_frame(h, payload),
            kind::KEEPALIVE => {
                if self.side != Side::Server {
                    return Err(FrameError::Malformed("keep-alive sent to a client".into()).into());
                }
                if now.saturating_duration_since(self.keepalive_window_start)
                    >= self.config.keepalive_window
                {
                    self.keepalive_window_start = now;
                    self.keepalives = 0;
                }
                self.keepalives += 1;
                if self.keepalives > self.config.max_keepalives {
                    return Err(ConnError::TooManyKeepalives);
                }
                let mut f = Vec::with_capacity(FRAME_HEADER);
                FrameHeader::control(kind::KEEPALIVE_REPLY).encode(&mut f);
                self.control.push_back(f);
                Ok(())
            }
            kind::KEEPALIVE_REPLY => {
                if self.side != Side::Client {
                    return Err(
                        FrameError::Malformed("keep-alive reply sent to a server".into()).into(),
                    );
                }
                Ok(())
            }
            kind::ABORT if h.flags & frame::abort_flags::REFUSED != 0 => {
                // The receiver dropped one of our streams: stop it, and confirm with our
                // own ABORT so that it forgets the stream.
                if let Some(i) = self.active.iter().position(|s| s.stream == h.stream) {
                    if let Some(s) = self.active.remove(i) {
                        self.queued_bytes -= s.msg.source.len() - s.sent;
                        self.ordered_busy.remove(&s.stream);
                        self.push_abort(s.stream, 0);
                        self.events.push_back(ConnEvent::Failed {
                            token: s.msg.token,
                            request_id: s.msg.request_id,
                            reason: "the peer refused the stream".into(),
                        });
                    }
                    Ok(())
                } else {
                    self.check_opened(h.stream, "abort")
                }
            }
            kind::ABORT => {
                if let Some(s) = self.incoming.remove(&h.stream)
                    && matches!(s.body, Body::Streamed { .. })
                {
                    self.events.push_back(ConnEvent::StreamAborted {
                        stream: h.stream,
                        reason: "the sender gave up on the message".into(),
                    });
                }
                self.deliver(h.stream, None)
            }
            kind::WINDOW => {
                let Some(s) = self.active.iter_mut().find(|s| s.stream == h.stream) else {
                    // Finished (or refused) since: nothing left to grant.
                    return self.check_opened(h.stream, "window");
                };
                let allowed = s.allowed + u64::from(h.raw);
                if allowed > s.msg.source.len() {
                    return Err(FrameError::Malformed(format!(
                        "stream {}: a grant to {allowed} bytes past the message's {}",
                        h.stream,
                        s.msg.source.len()
                    ))
                    .into());
                }
                s.allowed = allowed;
                Ok(())
            }
            kind::CLOSE => {
                let code = payload
                    .get(..4)
                    .map(|c| CloseCode::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .ok_or(FrameError::Truncated("close frame"))?;
                let reason = String::from_utf8_lossy(&payload[4..]).into_owned();
                self.state = State::Closed;
                self.control.clear();
                self.abort_incoming(&format!("the peer closed the connection: {reason}"));
                self.events
                    .push_back(ConnEvent::Closed(ConnError::ClosedByPeer { code, reason }));
                Ok(())
            }
            // FrameHeader::decode let no other type through.
            other => Err(FrameError::Malformed(format!("unknown frame type {other}")).into()),
        }
    }

    /// A frame about one of our streams that is not active: fine if the stream existed
    /// (it finished since), a violation if we never opened it.
    fn check_opened(&self, stream: u32, what: &str) -> Result<(), ConnError> {
        if stream == 0 || (!self.streams_wrapped && stream >= self.next_stream) {
            return Err(
                FrameError::Malformed(format!("{what} for stream {stream}, never opened")).into(),
            );
        }
        Ok(())
    }

    fn handle_data_frame(&mut self, h: FrameHeader, payload: &[u8]) -> Result<(), ConnError> {
        let State::Open(peer) = &self.state else {
            return Ok(());
        };
        let served = peer
            .protocols
            .get(h.protocol as usize)
            .is_some_and(|(_, v)| *v != 0);
        if !served {
            return Err(
                FrameError::Malformed(format!("unknown protocol index {}", h.protocol)).into(),
            );
        }
        let mut raw = Vec::new();
        let data: &[u8] = if h.flags & data_flags::COMPRESSED != 0 {
            let c = self.compressor.as_ref().ok_or_else(|| {
                FrameError::Malformed("compressed frame without compression".into())
            })?;
            raw.reserve_exact(h.raw as usize);
            c.decompress(payload, h.raw as usize, &mut raw)
                .map_err(|e| FrameError::Malformed(format!("decompression failed: {e}")))?;
            if raw.len() != h.raw as usize {
                return Err(FrameError::Malformed("decompressed length differs".into()).into());
            }
            &raw
        } else {
            payload
        };
        let first = h.flags & data_flags::FIRST != 0;
        let last = h.flags & data_flags::LAST != 0;
        if h.flags & data_flags::STREAM != 0 && !first {
            return Err(FrameError::Malformed("STREAM flag past a first frame".into()).into());
        }
        if first {
            self.start_incoming(&h, data)?;
        }
        let Some(s) = self.incoming.get_mut(&h.stream) else {
            return Err(
                FrameError::Malformed(format!("frame for unknown stream {}", h.stream)).into(),
            );
        };
        if s.protocol != h.protocol {
            return Err(FrameError::Malformed("a stream changed protocol".into()).into());
        }
        let at = s.received;
        let have = at + data.len() as u64;
        if have > s.len || (have == s.len) != last {
            return Err(FrameError::Malformed(format!(
                "stream {}: {have} of {} bytes with last = {last}",
                h.stream, s.len
            ))
            .into());
        }
        if have > s.granted {
            return Err(FrameError::Malformed(format!(
                "stream {}: {have} bytes sent, {} granted",
                h.stream, s.granted
            ))
            .into());
        }
        s.received = have;
        match &mut s.body {
            Body::Refused => {
                if last {
                    self.incoming.remove(&h.stream);
                    return self.deliver(h.stream, None);
                }
                Ok(())
            }
            Body::Whole(bytes) => {
                // Doubling, as a Vec grows, but never past the message's length (a
                // message just over a power of two would take twice its size).
                if bytes.capacity() - bytes.len() < data.len() {
                    let want = (bytes.capacity() * 2)
                        .max(have as usize)
                        .min(s.len as usize);
                    bytes.reserve_exact(want - bytes.len());
                }
                bytes.extend_from_slice(data);
                if !last {
                    return Ok(());
                }
                let bytes = std::mem::take(bytes);
                let protocol = s.protocol;
                self.incoming.remove(&h.stream);
                let view = MessageView::parse(&bytes)
                    .map_err(|e| FrameError::Malformed(format!("message: {e}")))?;
                if self.side == Side::Client && view.header().kind() == Some(Kind::Reply) {
                    self.awaiting.remove(&view.header().request_id);
                }
                self.deliver(h.stream, Some((protocol, bytes)))
            }
            Body::Streamed { pending, data_end } => {
                // The object's data is [64, data_end) of the message; zero padding follows.
                let data_start = MESSAGE_HEADER_SIZE + OBJECT_HEADER_SIZE;
                let from = at.max(data_start).min(*data_end);
                let to = have.min(*data_end).max(from);
                let pad_from = at.max(*data_end);
                if data[(pad_from.min(have) - at) as usize..]
                    .iter()
                    .any(|&b| b != 0)
                {
                    return Err(FrameError::Malformed(format!(
                        "stream {}: non-zero padding",
                        h.stream
                    ))
                    .into());
                }
                if to > from {
                    *pending += to - from;
                    let piece = data[(from - at) as usize..(to - at) as usize].to_vec();
                    self.stats.raw_bytes_received += piece.len() as u64;
                    self.events.push_back(ConnEvent::StreamData {
                        stream: h.stream,
                        bytes: piece,
                    });
                }
                if last {
                    self.incoming.remove(&h.stream);
                    self.events
                        .push_back(ConnEvent::StreamEnded { stream: h.stream });
                    // Its pieces went out as they came: nothing is held for order.
                    return self.deliver(h.stream, None);
                }
                Ok(())
            }
        }
    }

    /// The first frame of stream `h.stream`, whose (decompressed) payload is `data`:
    /// checks the message header and opens the stream, reassembled or streamed.
    fn start_incoming(&mut self, h: &FrameHeader, data: &[u8]) -> Result<(), ConnError> {
        if self.incoming.contains_key(&h.stream) {
            return Err(FrameError::Malformed(format!("stream {} started twice", h.stream)).into());
        }
        if self.incoming.len() >= self.config.max_incoming_streams {
            return Err(FrameError::Oversized {
                what: "concurrent streams",
                len: self.incoming.len() as u64 + 1,
                max: self.config.max_incoming_streams as u64,
            }
            .into());
        }
        if data.len() < MESSAGE_HEADER_SIZE as usize {
            return Err(FrameError::Truncated("first frame of a message").into());
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&data[24..32]);
        let len = u64::from_le_bytes(len);
        if len < MESSAGE_HEADER_SIZE {
            return Err(FrameError::Malformed(format!("message length {len}")).into());
        }
        let streamed = h.flags & data_flags::STREAM != 0;
        let take_streamed = streamed && self.config.max_streamed > 0;
        let (limit, what) = if take_streamed {
            (self.config.max_streamed, "streamed message")
        } else {
            (self.config.max_message, "message")
        };
        let initial = initial_window(len);
        let mut stream = InStream {
            protocol: h.protocol,
            len,
            received: 0,
            granted: initial,
            body: Body::Refused,
        };
        if len > limit {
            if !streamed {
                return Err(FrameError::Oversized {
                    what,
                    len,
                    max: limit,
                }
                .into());
            }
            // A streamed message too large for us: refused, the connection stays.
            self.incoming.insert(h.stream, stream);
            self.push_abort(h.stream, frame::abort_flags::REFUSED);
            return Ok(());
        }
        if take_streamed {
            let header = streamed_header(data, len)?;
            let mut id = [0u8; 8];
            id.copy_from_slice(&data[48..56]);
            let mut object_len = [0u8; 8];
            object_len.copy_from_slice(&data[56..64]);
            let object_len = u64::from_le_bytes(object_len);
            stream.body = Body::Streamed {
                pending: 0,
                data_end: MESSAGE_HEADER_SIZE + OBJECT_HEADER_SIZE + object_len,
            };
            if self.side == Side::Client && header.kind() == Some(Kind::Reply) {
                self.awaiting.remove(&header.request_id);
            }
            self.stats.messages_received += 1;
            self.events.push_back(ConnEvent::StreamStarted {
                protocol: h.protocol,
                stream: h.stream,
                header,
                object_id: u64::from_le_bytes(id),
                len: object_len,
            });
        } else {
            // Grown as frames arrive: a lying length costs nothing until bytes back it.
            let cap = usize::try_from(len).unwrap_or(usize::MAX).min(64 << 10);
            stream.body = Body::Whole(Vec::with_capacity(cap));
        }
        self.incoming.insert(h.stream, stream);
        self.grant(h.stream);
        Ok(())
    }

    /// Hands a complete message (or the abort of stream `stream`: `None`) on, at once or,
    /// with [`ConnConfig::in_order`], once every earlier stream is in.
    fn deliver(&mut self, stream: u32, message: Option<(u16, Vec<u8>)>) -> Result<(), ConnError> {
        if !self.config.in_order {
            if let Some((protocol, bytes)) = message {
                self.push_message(protocol, bytes);
            }
            return Ok(());
        }
        // Stream ids count up from 1 (wrapping past 0); one far behind is a stale abort.
        if stream.wrapping_sub(self.next_delivery) > u32::MAX / 2 {
            return Ok(());
        }
        // A peer that skips a stream id holds everything after it: bounded like the
        // streams in progress.
        if self.held.len() + self.incoming.len() > self.config.max_incoming_streams {
            return Err(FrameError::Oversized {
                what: "messages held for order",
                len: self.held.len() as u64 + 1,
                max: self.config.max_incoming_streams as u64,
            }
            .into());
        }
        self.held_charge += held_charge(&message);
        if let Some(old) = self.held.insert(stream, message) {
            self.held_charge -= held_charge(&old);
        }
        while let Some(m) = self.held.remove(&self.next_delivery) {
            self.held_charge -= held_charge(&m);
            self.next_delivery = self.next_delivery.wrapping_add(1).max(1);
            if let Some((protocol, bytes)) = m {
                self.push_message(protocol, bytes);
            }
        }
        Ok(())
    }

    /// Hands a complete message on, counted.
    fn push_message(&mut self, protocol: u16, bytes: Vec<u8>) {
        self.stats.messages_received += 1;
        self.stats.raw_bytes_received += bytes.len() as u64;
        self.events
            .push_back(ConnEvent::Message { protocol, bytes });
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Closed => None,
            State::Handshaking => Some(self.started_at + self.config.handshake_timeout),
            State::Open(_) => match self.side {
                Side::Server => Some(self.last_rx + self.config.inactivity_timeout),
                Side::Client => {
                    // A stream stalled for credit waits on the server as a call does.
                    let waiting = !self.awaiting.is_empty() || self.stalled();
                    let mut t = None;
                    if waiting || self.config.keepalive_idle {
                        t = Some(self.last_tx + self.config.keepalive_interval);
                    }
                    if waiting {
                        let silent = self.last_rx + self.config.inactivity_timeout;
                        t = Some(t.map_or(silent, |k: Instant| k.min(silent)));
                    }
                    t
                }
            },
        }
    }

    /// Lets time pass: timeouts close, keep-alives go out.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.state {
            State::Closed => {}
            State::Handshaking => {
                if now >= self.started_at + self.config.handshake_timeout {
                    self.close(ConnError::HandshakeTimeout);
                }
            }
            State::Open(_) => {
                let silent = now.saturating_duration_since(self.last_rx);
                match self.side {
                    Side::Server => {
                        if silent >= self.config.inactivity_timeout {
                            self.close(ConnError::InactivityTimeout);
                        }
                    }
                    Side::Client => {
                        let waiting = !self.awaiting.is_empty() || self.stalled();
                        if waiting && silent >= self.config.inactivity_timeout {
                            self.close(ConnError::InactivityTimeout);
                            return;
                        }
                        let idle = now.saturating_duration_since(self.last_tx)
                            >= self.config.keepalive_interval;
                        if (waiting || self.config.keepalive_idle)
                            && idle
                            && !self.can_send()
                            && self.control.is_empty()
                        {
                            let mut f = Vec::with_capacity(FRAME_HEADER);
                            FrameHeader::control(kind::KEEPALIVE).encode(&mut f);
                            self.control.push_back(f);
                        }
                    }
                }
            }
        }
    }
}
