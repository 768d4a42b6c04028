//! The handshake's wire format: the client's hello, the server's welcome (sent together with the
//! channel's file descriptors) or refusal. Pure functions over byte slices, no I/O, so that the
//! decoders of these peer-controlled bytes can be tested and fuzzed on their own.
//!
//! Every frame is a 12-byte header and a body, all integers little-endian:
//!
//! ```text
//! header   magic "SHMC" | format u16 (= 1) | kind u16 | body length u32 (<= MAX_BODY)
//! string   length u16 | UTF-8 bytes
//! hello    (kind 1)  protocol string (1..=64 bytes) | min version u32 | max version u32
//!                    | wanted client->server ring max u64 | wanted server->client ring max u64
//!                    | client pid u32
//! welcome  (kind 2)  version u32 | channel id u64 | client->server ring max u64
//!                    | server->client ring max u64 | fd count u8 | server pid u32
//! refusal  (kind 3)  reason code u16 | reason text string (<= 1024 bytes)
//! query    (kind 4)  what u8 (1 = status, 2 = ping) | nonce u64
//! status   (kind 5)  service string | protocol string | min version u32 | max version u32
//!                    | pid u32 | client->server ring max u64 | server->client ring max u64
//!                    | live channels u32 | listed channels u16 | listed x channel
//! channel            id u64 | version u32 | peer pid u32 | peer uid u32
//!                    | client->server ring | server->client ring
//! ring               capacity u64 | max u64 | pending messages u64 | used bytes u64
//!                    | messages written u64 | messages read u64 | reader parked u8
//!                    | writer waiting u8
//! pong     (kind 6)  nonce u64 | pid u32
//! activate (kind 7)  service name string (1..=64 bytes) | wait milliseconds u64
//! outcome  (kind 8)  outcome u8 (0 = no service file, 1 = ready, 2 = failed) | uid u32
//!                    | pid u32 | failure code u16 | exit status i32 | waited milliseconds u64
//!                    | detail string (<= 1024 bytes)
//! ```
//!
//! A query takes the place of a hello on a service's socket: `shmctl` and the activator ask a
//! service about itself without opening a channel. An activate frame goes to the activator's
//! socket (see [`crate::activation`]).
//!
//! A body must be consumed exactly: trailing bytes are an error, so a frame has one meaning.
//! A later format that needs more fields bumps the format number; a peer refuses a format it
//! does not know with a clear error rather than misreading it.

use thiserror::Error;

/// The first four bytes of every frame.
pub(crate) const MAGIC: [u8; 4] = *b"SHMC";
/// The frame format this code writes and reads.
pub(crate) const FORMAT: u16 = 1;
/// Bytes in a frame header.
pub(crate) const HEADER_LEN: usize = 12;
/// The largest body any frame may have (a hello is further limited by the service's
/// configured maximum).
pub(crate) const MAX_BODY: usize = 64 * 1024;
/// The longest protocol name (the ring header stores 64 bytes).
pub(crate) const MAX_PROTOCOL_NAME: usize = 64;
/// The longest refusal text; longer texts are cut (at a character boundary) when encoded.
pub(crate) const MAX_REASON: usize = 1024;
/// The file descriptors a welcome carries: two ring memfds and four doorbell eventfds.
pub(crate) const WELCOME_FDS: u8 = 6;

const KIND_HELLO: u16 = 1;
const KIND_WELCOME: u16 = 2;
const KIND_REFUSAL: u16 = 3;
const KIND_QUERY: u16 = 4;
const KIND_STATUS: u16 = 5;
const KIND_PONG: u16 = 6;
const KIND_ACTIVATE: u16 = 7;
const KIND_OUTCOME: u16 = 8;

/// The most channels a status frame lists (about 130 bytes each, well inside [`MAX_BODY`]);
/// the count of live channels is exact all the same.
pub(crate) const MAX_LISTED_CHANNELS: usize = 256;
/// The longest service name on the wire (as `service::MAX_NAME_LEN`).
pub(crate) const MAX_SERVICE_NAME: usize = 64;

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) protocol: String,
    pub(crate) min_version: u32,
    pub(crate) max_version: u32,
    /// The largest client-to-server ring the client accepts.
    pub(crate) c2s_max: u64,
    /// The largest server-to-client ring the client accepts.
    pub(crate) s2c_max: u64,
    pub(crate) pid: u32,
}

/// What a server answers when it accepts; the fds travel with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Welcome {
    pub(crate) version: u32,
    pub(crate) channel_id: u64,
    pub(crate) c2s_max: u64,
    pub(crate) s2c_max: u64,
    pub(crate) fd_count: u8,
    pub(crate) pid: u32,
}

/// Why a server refused a client, as sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: RefusalCode,
    pub(crate) reason: String,
}

/// A server's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Welcome(Welcome),
    Refusal(Refusal),
}

/// What a client sends first on a service's socket: a hello (for a channel) or a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    Hello(Hello),
    Query(Query),
}

/// A control request: the service answers it and closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Query {
    pub(crate) what: QueryKind,
    /// Echoed in a pong, so an answer is matched to its question.
    pub(crate) nonce: u64,
}

/// What a [`Query`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueryKind {
    Status,
    Ping,
}

/// A service's description of itself and its channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) service: String,
    pub(crate) protocol: String,
    pub(crate) min_version: u32,
    pub(crate) max_version: u32,
    pub(crate) pid: u32,
    pub(crate) c2s_max: u64,
    pub(crate) s2c_max: u64,
    pub(crate) live_channels: u32,
    pub(crate) channels: Vec<ChannelStat>,
}

/// One channel in a [`Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelStat {
    pub(crate) id: u64,
    pub(crate) version: u32,
    pub(crate) peer_pid: u32,
    pub(crate) peer_uid: u32,
    pub(crate) c2s: RingStat,
    pub(crate) s2c: RingStat,
}

/// One ring of a [`ChannelStat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RingStat {
    pub(crate) capacity: u64,
    pub(crate) max_size: u64,
    pub(crate) pending: u64,
    pub(crate) used_bytes: u64,
    pub(crate) written: u64,
    pub(crate) read: u64,
    pub(crate) reader_parked: bool,
    pub(crate) writer_waiting: bool,
}

/// A service's answer to a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pong {
    pub(crate) nonce: u64,
    pub(crate) pid: u32,
}

/// A client's request to the activator: make `name` available, waiting up to `wait_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Activate {
    pub(crate) name: String,
    pub(crate) wait_ms: u64,
}

/// The activator's answer to an [`Activate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// 0: no service file; 1: ready; 2: failed.
    pub(crate) outcome: u8,
    /// The uid the service must run as (ready).
    pub(crate) uid: u32,
    /// The service's pid when the activator started it, else 0.
    pub(crate) pid: u32,
    /// What failed (failed).
    pub(crate) code: u16,
    /// The exit status (or minus the signal) of a service that exited.
    pub(crate) status: i32,
    pub(crate) waited_ms: u64,
    pub(crate) detail: String,
}

/// Why a service refused a client: sent in the refusal, so both sides name the same cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The hello could not be decoded.
    Malformed,
    /// The hello was larger than the service accepts.
    TooLarge,
    /// The client sent no complete hello within the handshake timeout.
    Timeout,
    /// The client's credentials do not pass the service's policy.
    Credentials,
    /// The service speaks another protocol.
    WrongProtocol,
    /// The version ranges do not overlap.
    NoCommonVersion,
    /// The ring sizes asked for cannot be served.
    RingSizes,
    /// Too many handshakes are in progress.
    Busy,
    /// The service failed to set the channel up (out of memory, out of fds...).
    Internal,
    /// The service's limit of channels, or of ring memory, for all clients or for this
    /// client's uid is reached (see `ServiceConfig::max_channels`).
    Limit,
    /// A code this version does not know (sent by a newer peer).
    Other(u16),
}

impl RefusalCode {
    fn to_wire(self) -> u16 {
        match self {
            RefusalCode::Malformed => 1,
            RefusalCode::TooLarge => 2,
            RefusalCode::Timeout => 3,
            RefusalCode::Credentials => 4,
            RefusalCode::WrongProtocol => 5,
            RefusalCode::NoCommonVersion => 6,
            RefusalCode::RingSizes => 7,
            RefusalCode::Busy => 8,
            RefusalCode::Internal => 9,
            RefusalCode::Limit => 10,
            RefusalCode::Other(n) => n,
        }
    }

    fn from_wire(n: u16) -> Self {
        match n {
            1 => RefusalCode::Malformed,
            2 => RefusalCode::TooLarge,
            3 => RefusalCode::Timeout,
            4 => RefusalCode::Credentials,
            5 => RefusalCode::WrongProtocol,
            6 => RefusalCode::NoCommonVersion,
            7 => RefusalCode::RingSizes,
            8 => RefusalCode::Busy,
            9 => RefusalCode::Internal,
            10 => RefusalCode::Limit,
            n => RefusalCode::Other(n),
        }
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            RefusalCode::Malformed => "malformed hello",
            RefusalCode::TooLarge => "hello too large",
            RefusalCode::Timeout => "handshake timeout",
            RefusalCode::Credentials => "credentials refused",
            RefusalCode::WrongProtocol => "wrong protocol",
            RefusalCode::NoCommonVersion => "no common version",
            RefusalCode::RingSizes => "ring sizes refused",
            RefusalCode::Busy => "busy",
            RefusalCode::Internal => "internal error",
            RefusalCode::Limit => "limit reached",
            RefusalCode::Other(n) => return write!(f, "refusal code {n}"),
        };
        f.write_str(s)
    }
}

/// Bytes that are not a valid handshake frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the frame needs.
    #[error("truncated handshake frame: {needed} bytes needed, {have} present")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// The frame does not start with the magic: not a shm-channel peer.
    #[error("not a shm-channel handshake (bad magic {found:02x?})")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// The peer speaks a handshake format this version does not know.
    #[error("handshake format {found} not supported (this side speaks format {FORMAT})")]
    UnsupportedFormat {
        /// The peer's format number.
        found: u16,
    },
    /// The frame kind is unknown, or not the one expected here.
    #[error("unexpected handshake frame kind {found} (expected {expected})")]
    UnexpectedKind {
        /// What the reader expected.
        expected: &'static str,
        /// The kind number found.
        found: u16,
    },
    /// The body is longer than allowed.
    #[error("handshake frame body of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced body length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body has bytes after its last field.
    #[error("handshake frame has {0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// A field holds a value that is not allowed.
    #[error("invalid handshake field: {0}")]
    Invalid(&'static str),
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) kind: u16,
    pub(crate) body_len: usize,
}

impl FrameHeader {
    /// Header plus body.
    pub(crate) fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len
    }
}

/// Decodes a frame header from the first [`HEADER_LEN`] bytes of `bytes`, refusing a body
/// longer than `max_body` (itself capped at [`MAX_BODY`]).
pub(crate) fn decode_header(bytes: &[u8], max_body: usize) -> Result<FrameHeader, DecodeError> {
    let mut r = Reader::new(bytes);
    let magic = r.array::<4>()?;
    if magic != MAGIC {
        return Err(DecodeError::BadMagic { found: magic });
    }
    let format = r.u16()?;
    if format != FORMAT {
        return Err(DecodeError::UnsupportedFormat { found: format });
    }
    let kind = r.u16()?;
    let body_len = r.u32()? as usize;
    let max = max_body.min(MAX_BODY);
    if body_len > max {
        return Err(DecodeError::TooLarge { len: body_len, max });
    }
    Ok(FrameHeader { kind, body_len })
}

/// How many bytes the frame at the start of `bytes` takes: `Ok(None)` while even the header is
/// incomplete, so that a reader knows how much more to read.
pub(crate) fn frame_len(bytes: &[u8], max_body: usize) -> Result<Option<usize>, DecodeError> {
    if bytes.len() < HEADER_LEN {
        // Check what is there already, so garbage is refused without waiting for 12 bytes.
        let n = bytes.len().min(4);
        if bytes[..n] != MAGIC[..n] {
            let mut found = [0u8; 4];
            found[..n].copy_from_slice(&bytes[..n]);
            return Err(DecodeError::BadMagic { found });
        }
        return Ok(None);
    }
    decode_header(bytes, max_body).map(|h| Some(h.frame_len()))
}

/// Encodes a hello. Fails on a protocol name that is empty or too long, or on an empty
/// version range.
pub(crate) fn encode_hello(h: &Hello) -> Result<Vec<u8>, DecodeError> {
    check_protocol(&h.protocol)?;
    if h.min_version > h.max_version {
        return Err(DecodeError::Invalid("min version above max version"));
    }
    let mut w = Writer::new(KIND_HELLO);
    w.str(&h.protocol);
    w.u32(h.min_version);
    w.u32(h.max_version);
    w.u64(h.c2s_max);
    w.u64(h.s2c_max);
    w.u32(h.pid);
    Ok(w.finish())
}

/// Decodes a whole hello frame (header and body, nothing after), whose body may be at most
/// `max_body` bytes.
pub(crate) fn decode_hello(bytes: &[u8], max_body: usize) -> Result<Hello, DecodeError> {
    let mut r = body(bytes, max_body, KIND_HELLO, "hello")?;
    let protocol = r.str(MAX_PROTOCOL_NAME)?;
    check_protocol(&protocol)?;
    let hello = Hello {
        protocol,
        min_version: r.u32()?,
        max_version: r.u32()?,
        c2s_max: r.u64()?,
        s2c_max: r.u64()?,
        pid: r.u32()?,
    };
    r.end()?;
    if hello.min_version > hello.max_version {
        return Err(DecodeError::Invalid("min version above max version"));
    }
    Ok(hello)
}

/// Encodes a welcome.
pub(crate) fn encode_welcome(w: &Welcome) -> Vec<u8> {
    let mut out = Writer::new(KIND_WELCOME);
    out.u32(w.version);
    out.u64(w.channel_id);
    out.u64(w.c2s_max);
    out.u64(w.s2c_max);
    out.u8(w.fd_count);
    out.u32(w.pid);
    out.finish()
}

/// Encodes a refusal; a reason longer than [`MAX_REASON`] bytes is cut at a character
/// boundary.
pub(crate) fn encode_refusal(r: &Refusal) -> Vec<u8> {
    let mut w = Writer::new(KIND_REFUSAL);
    w.u16(r.code.to_wire());
    w.str(cut(&r.reason, MAX_REASON));
    w.finish()
}

/// Decodes a whole reply frame: a welcome or a refusal.
pub(crate) fn decode_reply(bytes: &[u8]) -> Result<Reply, DecodeError> {
    let header = decode_header(bytes, MAX_BODY)?;
    match header.kind {
        KIND_WELCOME => {
            let mut r = body(bytes, MAX_BODY, KIND_WELCOME, "welcome")?;
            let w = Welcome {
                version: r.u32()?,
                channel_id: r.u64()?,
                c2s_max: r.u64()?,
                s2c_max: r.u64()?,
                fd_count: r.u8()?,
                pid: r.u32()?,
            };
            r.end()?;
            Ok(Reply::Welcome(w))
        }
        KIND_REFUSAL => {
            let mut r = body(bytes, MAX_BODY, KIND_REFUSAL, "refusal")?;
            let code = RefusalCode::from_wire(r.u16()?);
            let reason = r.str(MAX_REASON)?;
            r.end()?;
            Ok(Reply::Refusal(Refusal { code, reason }))
        }
        found => Err(DecodeError::UnexpectedKind {
            expected: "welcome or refusal",
            found,
        }),
    }
}

/// Decodes what a client sends first on a service socket: a hello or a query (whole frame,
/// body at most `max_body` bytes).
pub(crate) fn decode_request(bytes: &[u8], max_body: usize) -> Result<Request, DecodeError> {
    let header = decode_header(bytes, max_body)?;
    match header.kind {
        KIND_HELLO => decode_hello(bytes, max_body).map(Request::Hello),
        KIND_QUERY => {
            let mut r = body(bytes, max_body, KIND_QUERY, "query")?;
            let what = match r.u8()? {
                1 => QueryKind::Status,
                2 => QueryKind::Ping,
                _ => return Err(DecodeError::Invalid("unknown query")),
            };
            let nonce = r.u64()?;
            r.end()?;
            Ok(Request::Query(Query { what, nonce }))
        }
        found => Err(DecodeError::UnexpectedKind {
            expected: "hello or query",
            found,
        }),
    }
}

/// Encodes a query.
pub(crate) fn encode_query(q: &Query) -> Vec<u8> {
    let mut w = Writer::new(KIND_QUERY);
    w.u8(match q.what {
        QueryKind::Status => 1,
        QueryKind::Ping => 2,
    });
    w.u64(q.nonce);
    w.finish()
}

/// Encodes a status; channels past [`MAX_LISTED_CHANNELS`] are left out (the live count
/// still says how many there are).
pub(crate) fn encode_status(s: &Status) -> Vec<u8> {
    let mut w = Writer::new(KIND_STATUS);
    w.str(&s.service);
    w.str(&s.protocol);
    w.u32(s.min_version);
    w.u32(s.max_version);
    w.u32(s.pid);
    w.u64(s.c2s_max);
    w.u64(s.s2c_max);
    w.u32(s.live_channels);
    let listed = &s.channels[..s.channels.len().min(MAX_LISTED_CHANNELS)];
    w.u16(listed.len() as u16);
    for c in listed {
        w.u64(c.id);
        w.u32(c.version);
        w.u32(c.peer_pid);
        w.u32(c.peer_uid);
        for r in [&c.c2s, &c.s2c] {
            for v in [
                r.capacity,
                r.max_size,
                r.pending,
                r.used_bytes,
                r.written,
                r.read,
            ] {
                w.u64(v);
            }
            w.u8(u8::from(r.reader_parked));
            w.u8(u8::from(r.writer_waiting));
        }
    }
    w.finish()
}

/// Decodes a status frame.
pub(crate) fn decode_status(bytes: &[u8]) -> Result<Status, DecodeError> {
    let mut r = body(bytes, MAX_BODY, KIND_STATUS, "status")?;
    let service = r.str(MAX_SERVICE_NAME)?;
    let protocol = r.str(MAX_PROTOCOL_NAME)?;
    let (min_version, max_version, pid) = (r.u32()?, r.u32()?, r.u32()?);
    let (c2s_max, s2c_max, live_channels) = (r.u64()?, r.u64()?, r.u32()?);
    let listed = usize::from(r.u16()?);
    if listed > MAX_LISTED_CHANNELS {
        return Err(DecodeError::Invalid("status lists too many channels"));
    }
    let mut channels = Vec::with_capacity(listed);
    for _ in 0..listed {
        let (id, version, peer_pid, peer_uid) = (r.u64()?, r.u32()?, r.u32()?, r.u32()?);
        let mut ring = || -> Result<RingStat, DecodeError> {
            Ok(RingStat {
                capacity: r.u64()?,
                max_size: r.u64()?,
                pending: r.u64()?,
                used_bytes: r.u64()?,
                written: r.u64()?,
                read: r.u64()?,
                reader_parked: r.flag()?,
                writer_waiting: r.flag()?,
            })
        };
        let (c2s, s2c) = (ring()?, ring()?);
        channels.push(ChannelStat {
            id,
            version,
            peer_pid,
            peer_uid,
            c2s,
            s2c,
        });
    }
    r.end()?;
    Ok(Status {
        service,
        protocol,
        min_version,
        max_version,
        pid,
        c2s_max,
        s2c_max,
        live_channels,
        channels,
    })
}

/// Encodes a pong.
pub(crate) fn encode_pong(p: &Pong) -> Vec<u8> {
    let mut w = Writer::new(KIND_PONG);
    w.u64(p.nonce);
    w.u32(p.pid);
    w.finish()
}

/// Decodes a pong frame.
pub(crate) fn decode_pong(bytes: &[u8]) -> Result<Pong, DecodeError> {
    let mut r = body(bytes, MAX_BODY, KIND_PONG, "pong")?;
    let pong = Pong {
        nonce: r.u64()?,
        pid: r.u32()?,
    };
    r.end()?;
    Ok(pong)
}

/// Encodes an activate request; fails on a name that is empty or too long.
pub(crate) fn encode_activate(a: &Activate) -> Result<Vec<u8>, DecodeError> {
    check_service_name(&a.name)?;
    let mut w = Writer::new(KIND_ACTIVATE);
    w.str(&a.name);
    w.u64(a.wait_ms);
    Ok(w.finish())
}

/// Decodes an activate frame (the activator's side).
pub(crate) fn decode_activate(bytes: &[u8]) -> Result<Activate, DecodeError> {
    let mut r = body(bytes, MAX_BODY, KIND_ACTIVATE, "activate")?;
    let name = r.str(MAX_SERVICE_NAME)?;
    check_service_name(&name)?;
    let wait_ms = r.u64()?;
    r.end()?;
    Ok(Activate { name, wait_ms })
}

/// Encodes the activator's answer; a detail longer than [`MAX_REASON`] bytes is cut.
pub(crate) fn encode_outcome(o: &Outcome) -> Vec<u8> {
    let mut w = Writer::new(KIND_OUTCOME);
    w.u8(o.outcome);
    w.u32(o.uid);
    w.u32(o.pid);
    w.u16(o.code);
    w.u32(o.status as u32);
    w.u64(o.waited_ms);
    w.str(cut(&o.detail, MAX_REASON));
    w.finish()
}

/// Decodes the activator's answer.
pub(crate) fn decode_outcome(bytes: &[u8]) -> Result<Outcome, DecodeError> {
    let mut r = body(bytes, MAX_BODY, KIND_OUTCOME, "activation outcome")?;
    let outcome = r.u8()?;
    if outcome > 2 {
        return Err(DecodeError::Invalid("unknown activation outcome"));
    }
    let o = Outcome {
        outcome,
        uid: r.u32()?,
        pid: r.u32()?,
        code: r.u16()?,
        status: r.u32()? as i32,
        waited_ms: r.u64()?,
        detail: r.str(MAX_REASON)?,
    };
    r.end()?;
    Ok(o)
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn check_service_name(name: &str) -> Result<(), DecodeError> {
    if name.is_empty() || name.len() > MAX_SERVICE_NAME {
        return Err(DecodeError::Invalid("service name must be 1..=64 bytes"));
    }
    Ok(())
}

fn check_protocol(name: &str) -> Result<(), DecodeError> {
    if name.is_empty() {
        return Err(DecodeError::Invalid("empty protocol name"));
    }
    if name.len() > MAX_PROTOCOL_NAME {
        return Err(DecodeError::Invalid("protocol name longer than 64 bytes"));
    }
    Ok(())
}

/// Checks the header and returns a reader over exactly the body.
fn body<'a>(
    bytes: &'a [u8],
    max_body: usize,
    kind: u16,
    expected: &'static str,
) -> Result<Reader<'a>, DecodeError> {
    let header = decode_header(bytes, max_body)?;
    if header.kind != kind {
        return Err(DecodeError::UnexpectedKind {
            expected,
            found: header.kind,
        });
    }
    let end = header.frame_len();
    if bytes.len() < end {
        return Err(DecodeError::Truncated {
            needed: end,
            have: bytes.len(),
        });
    }
    if bytes.len() > end {
        return Err(DecodeError::TrailingBytes(bytes.len() - end));
    }
    Ok(Reader::new(&bytes[HEADER_LEN..end]))
}

/// Reads fields off the front of a byte slice; never panics.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated {
            needed: self.at.saturating_add(n),
            have: self.bytes.len(),
        })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A boolean byte: 0 or 1, nothing else.
    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Invalid("flag byte is neither 0 nor 1")),
        }
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn str(&mut self, max: usize) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::Invalid("string longer than allowed"));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Invalid("string is not UTF-8"))
    }

    fn end(&self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Builds a frame; the header's length is filled in by `finish`.
struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn new(kind: u16) -> Self {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        Writer { out }
    }

    fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    fn u16(&mut self, v: u16) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// Callers keep strings within `u16::MAX` bytes (protocol names and reasons are checked
    /// or cut first); a longer one is cut rather than mis-encoded.
    fn str(&mut self, s: &str) {
        let len = s.len().min(usize::from(u16::MAX));
        self.u16(len as u16);
        self.out.extend_from_slice(&s.as_bytes()[..len]);
    }

    fn finish(mut self) -> Vec<u8> {
        // Bodies built here are far below 4 GiB (a few strings of at most 1 KiB).
        let len = (self.out.len() - HEADER_LEN) as u32;
        self.out[8..12].copy_from_slice(&len.to_le_bytes());
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello() -> Hello {
        Hello {
            protocol: "Display".into(),
            min_version: 1,
            max_version: 3,
            c2s_max: 1 << 20,
            s2c_max: 1 << 16,
            pid: 42,
        }
    }

    #[test]
    fn hello_layout_is_as_documented() {
        let b = encode_hello(&hello()).unwrap();
        assert_eq!(&b[..4], b"SHMC");
        assert_eq!(u16::from_le_bytes([b[4], b[5]]), 1);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 1);
        let body_len = 2 + 7 + 4 + 4 + 8 + 8 + 4;
        assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), body_len);
        assert_eq!(b.len(), HEADER_LEN + body_len as usize);
        assert_eq!(&b[12..14], &7u16.to_le_bytes());
        assert_eq!(&b[14..21], b"Display");
    }

    #[test]
    fn errors_are_specific() {
        let good = encode_hello(&hello()).unwrap();
        assert_eq!(
            decode_hello(&good[..good.len() - 1], 4096),
            Err(DecodeError::Truncated {
                needed: good.len() - 1 + 1,
                have: good.len() - 1
            })
        );
        let mut long = good.clone();
        long.push(0);
        assert_eq!(
            decode_hello(&long, 4096),
            Err(DecodeError::TrailingBytes(1))
        );
        assert!(matches!(
            decode_hello(b"GET / HTTP/1.1\r\n", 4096),
            Err(DecodeError::BadMagic { .. })
        ));
        assert!(matches!(
            decode_hello(&good, 8),
            Err(DecodeError::TooLarge { max: 8, .. })
        ));
        let mut fmt2 = good.clone();
        fmt2[4] = 2;
        assert_eq!(
            decode_hello(&fmt2, 4096),
            Err(DecodeError::UnsupportedFormat { found: 2 })
        );
        assert!(matches!(
            decode_reply(&good),
            Err(DecodeError::UnexpectedKind { found: 1, .. })
        ));
        let mut inverted = hello();
        inverted.min_version = 4;
        assert!(encode_hello(&inverted).is_err());
        assert_eq!(frame_len(b"SH", 100), Ok(None));
        assert!(frame_len(b"XX", 100).is_err());
        assert_eq!(frame_len(&good, 4096), Ok(Some(good.len())));
    }

    #[test]
    fn requests_are_a_hello_or_a_query() {
        let good = encode_hello(&hello()).unwrap();
        assert_eq!(decode_request(&good, 4096), Ok(Request::Hello(hello())));
        let q = encode_query(&Query {
            what: QueryKind::Ping,
            nonce: 5,
        });
        assert_eq!(q.len(), HEADER_LEN + 9);
        let mut bad = q.clone();
        bad[HEADER_LEN] = 9;
        assert_eq!(
            decode_request(&bad, 4096),
            Err(DecodeError::Invalid("unknown query"))
        );
        // A pong is no request, an activate frame is nothing a service reads.
        let pong = encode_pong(&Pong { nonce: 1, pid: 2 });
        assert!(matches!(
            decode_request(&pong, 4096),
            Err(DecodeError::UnexpectedKind { found: 6, .. })
        ));
        assert!(
            encode_activate(&Activate {
                name: String::new(),
                wait_ms: 1
            })
            .is_err()
        );
        // Hundreds of channels are cut to the listed maximum, the live count stays.
        let ch = ChannelStat {
            id: 1,
            version: 1,
            peer_pid: 1,
            peer_uid: 1,
            c2s: RingStat::default(),
            s2c: RingStat::default(),
        };
        let s = Status {
            service: "s".into(),
            protocol: "p".into(),
            min_version: 1,
            max_version: 1,
            pid: 1,
            c2s_max: 4096,
            s2c_max: 4096,
            live_channels: 1000,
            channels: vec![ch; 1000],
        };
        let back = decode_status(&encode_status(&s)).unwrap();
        assert_eq!(back.channels.len(), MAX_LISTED_CHANNELS);
        assert_eq!(back.live_channels, 1000);
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let r = Refusal {
            code: RefusalCode::Credentials,
            reason: "é".repeat(MAX_REASON),
        };
        let Ok(Reply::Refusal(back)) = decode_reply(&encode_refusal(&r)) else {
            panic!("refusal did not round-trip");
        };
        assert_eq!(back.code, RefusalCode::Credentials);
        assert_eq!(back.reason.len(), MAX_REASON);
    }

    proptest! {
        #[test]
        fn hello_round_trips(
            protocol in "[A-Za-z0-9_.é-]{1,21}",
            a in any::<u32>(), b in any::<u32>(),
            c2s in any::<u64>(), s2c in any::<u64>(), pid in any::<u32>(),
        ) {
            let h = Hello {
                protocol,
                min_version: a.min(b),
                max_version: a.max(b),
                c2s_max: c2s,
                s2c_max: s2c,
                pid,
            };
            let bytes = encode_hello(&h).unwrap();
            prop_assert_eq!(frame_len(&bytes, MAX_BODY), Ok(Some(bytes.len())));
            prop_assert_eq!(decode_hello(&bytes, MAX_BODY), Ok(h));
        }

        #[test]
        fn replies_round_trip(
            version in any::<u32>(), id in any::<u64>(), c2s in any::<u64>(),
            s2c in any::<u64>(), fds in any::<u8>(), pid in any::<u32>(),
            code in any::<u16>(), reason in ".{0,40}",
        ) {
            let w = Welcome { version, channel_id: id, c2s_max: c2s, s2c_max: s2c, fd_count: fds, pid };
            prop_assert_eq!(decode_reply(&encode_welcome(&w)), Ok(Reply::Welcome(w)));
            let r = Refusal { code: RefusalCode::from_wire(code), reason };
            prop_assert_eq!(decode_reply(&encode_refusal(&r)), Ok(Reply::Refusal(r)));
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode_hello(&bytes, 4096);
            let _ = decode_reply(&bytes);
            let _ = frame_len(&bytes, 4096);
            let _ = decode_request(&bytes, 4096);
            let _ = decode_status(&bytes);
            let _ = decode_pong(&bytes);
            let _ = decode_activate(&bytes);
            let _ = decode_outcome(&bytes);
        }

        #[test]
        fn control_frames_round_trip(
            nonce in any::<u64>(), ping in any::<bool>(), pid in any::<u32>(),
            name in "[a-z.@+_-]{1,64}", wait in any::<u64>(), outcome in 0..3u8,
            code in any::<u16>(), status in any::<i32>(), detail in ".{0,40}",
            words in proptest::collection::vec(any::<u64>(), 14),
            channels in 0..4usize, flags in any::<u8>(),
        ) {
            let what = if ping { QueryKind::Ping } else { QueryKind::Status };
            let q = Query { what, nonce };
            prop_assert_eq!(decode_request(&encode_query(&q), 64), Ok(Request::Query(q)));
            let p = Pong { nonce, pid };
            prop_assert_eq!(decode_pong(&encode_pong(&p)), Ok(p));
            let a = Activate { name: name.clone(), wait_ms: wait };
            prop_assert_eq!(decode_activate(&encode_activate(&a).unwrap()), Ok(a));
            let o = Outcome { outcome, uid: pid, pid, code, status, waited_ms: wait, detail };
            prop_assert_eq!(decode_outcome(&encode_outcome(&o)), Ok(o));
            let ring = |at: usize| RingStat {
                capacity: words[at], max_size: words[at + 1], pending: words[at + 2],
                used_bytes: words[at + 3], written: words[at + 4], read: words[at + 5],
                reader_parked: flags & 1 != 0, writer_waiting: flags & 2 != 0,
            };
            let s = Status {
                service: name, protocol: "Echo".into(), min_version: 1, max_version: 3, pid,
                c2s_max: words[12], s2c_max: words[13], live_channels: channels as u32,
                channels: (0..channels).map(|i| ChannelStat {
                    id: i as u64, version: 2, peer_pid: pid, peer_uid: 7,
                    c2s: ring(0), s2c: ring(6),
                }).collect(),
            };
            prop_assert_eq!(decode_status(&encode_status(&s)), Ok(s));
        }

        #[test]
        fn decoders_never_panic_on_mutated_frames(
            which in 0..3u8,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let mut bytes = match which {
                0 => encode_hello(&hello()).unwrap(),
                1 => encode_welcome(&Welcome { version: 1, channel_id: 9, c2s_max: 4096, s2c_max: 4096, fd_count: 6, pid: 1 }),
                _ => encode_refusal(&Refusal { code: RefusalCode::Busy, reason: "busy".into() }),
            };
            for (at, v) in flips {
                let n = bytes.len();
                bytes[at % n] = v;
            }
            let cut = cut % (bytes.len() + 1);
            let _ = decode_hello(&bytes[..cut], 4096);
            let _ = decode_reply(&bytes[..cut]);
            let _ = decode_hello(&bytes, 4096);
            let _ = decode_reply(&bytes);
        }
    }
}
