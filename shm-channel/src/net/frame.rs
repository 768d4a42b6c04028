//! The wire format: the handshake, then frames.
//!
//! Every connection opens with one handshake record each way (client first), then carries
//! **frames**: a 16-byte header and at most `buffer_size - 16` bytes of payload. A message
//! (the very bytes a ring holds: 48-byte header, then objects) travels as a *stream* of
//! `DATA` frames on a stream id the sender picks; streams of different messages interleave
//! frame by frame, so a huge message never holds a small one back. All integers are
//! little-endian, as in the rings.
//!
//! ```text
//! frame header (16 bytes)
//!   0  u8   type        1 DATA, 2 KEEPALIVE, 3 KEEPALIVE_REPLY, 4 ABORT, 5 CLOSE, 6 WINDOW
//!   1  u8   flags       DATA: 1 FIRST, 2 LAST, 4 COMPRESSED, 8 STREAM; ABORT: 1 REFUSED
//!   2  u16  protocol    DATA: index of the protocol in the client's handshake
//!   4  u32  stream      DATA/ABORT/WINDOW: the stream id
//!   8  u32  payload     bytes that follow on the wire
//!  12  u32  raw         DATA: the payload's length once decompressed (= payload if not);
//!                       WINDOW: the bytes granted
//! ```
//!
//! **Flow control** (wire version 2), after HTTP/2's `WINDOW_UPDATE`: a sender may send
//! [`INITIAL_WINDOW`] bytes of a stream (message bytes, before compression) and no more
//! until the receiver grants more with `WINDOW` frames; a grant never takes a stream past
//! its message's end. A receiver that reassembles a message grants the rest of it at its
//! first frame; one that hands a `STREAM` message to its consumer piece by piece grants
//! as the consumer reads, so a slow consumer holds back its own stream only.
//!
//! Everything read from the peer is checked before it is used; any violation is a
//! [`FrameError`], which closes that connection (and only that one).

use thiserror::Error;

/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 16;
/// The smallest buffer (frame) size a peer may ask for.
pub const MIN_BUFFER: u32 = 1024;
/// The largest buffer (frame) size.
pub const MAX_BUFFER: u32 = 64 * 1024;
/// The default buffer (frame) size.
pub const DEFAULT_BUFFER: u32 = 4 * 1024;
/// The magic that opens both handshake records.
pub const MAGIC: [u8; 8] = *b"SHMNET\x00\x01";
/// The version of this wire format.
pub const WIRE_VERSION: u16 = 2;
/// The bytes of a stream a sender may send before the receiver granted any (a frame of
/// the largest buffer size: the first frame, with the message header, always fits).
pub const INITIAL_WINDOW: u32 = MAX_BUFFER;
/// The largest handshake record.
pub const MAX_HANDSHAKE: usize = 8 * 1024;
/// The most protocols a client may list.
pub const MAX_PROTOCOLS: usize = 32;

/// Frame types.
pub mod kind {
    /// Part of a message.
    pub const DATA: u8 = 1;
    /// "I am here, still waiting for replies" (client to server).
    pub const KEEPALIVE: u8 = 2;
    /// The server's answer to a keep-alive.
    pub const KEEPALIVE_REPLY: u8 = 3;
    /// The sender gave up on a stream mid-way (its source failed): drop what arrived.
    pub const ABORT: u8 = 4;
    /// The sender closes the connection; the payload is a [`CloseCode`](super::CloseCode)
    /// (u32) and a UTF-8 reason.
    pub const CLOSE: u8 = 5;
    /// The receiver of a stream grants its sender `raw` more bytes of it (flow control).
    pub const WINDOW: u8 = 6;
}

/// Flags of an `ABORT` frame.
pub mod abort_flags {
    /// Sent by a stream's *receiver*: it dropped the stream (its consumer went away, or it
    /// does not take streamed messages this large): stop sending it. Without the flag the
    /// frame comes from the stream's sender (its source failed).
    pub const REFUSED: u8 = 1;
}

/// Flags of a `DATA` frame.
pub mod data_flags {
    /// The stream's first frame: its payload begins with the message header.
    pub const FIRST: u8 = 1;
    /// The stream's last frame: the message is complete.
    pub const LAST: u8 = 2;
    /// The payload is compressed with the negotiated algorithm.
    pub const COMPRESSED: u8 = 4;
    /// On the first frame: the message is *streamed* (one object, possibly larger than
    /// memory); the receiver may hand it to its consumer piece by piece instead of
    /// reassembling it, and the reassembly limit (`max message`) does not apply.
    pub const STREAM: u8 = 8;
    /// Every defined flag.
    pub const ALL: u8 = FIRST | LAST | COMPRESSED | STREAM;
}

/// Why a connection was closed, as carried by a `CLOSE` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// An orderly close.
    Normal,
    /// The peer sent too many keep-alives in one interval (denial-of-service guard).
    TooManyKeepalives,
    /// The peer stayed silent past the inactivity timeout.
    InactivityTimeout,
    /// The peer broke the wire format.
    Protocol,
    /// The handshake found nothing in common (protocol, version, buffer size).
    Refused,
    /// A code this version does not know.
    Other(u32),
}

impl CloseCode {
    /// The code on the wire.
    pub fn to_u32(self) -> u32 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::TooManyKeepalives => 1,
            CloseCode::InactivityTimeout => 2,
            CloseCode::Protocol => 3,
            CloseCode::Refused => 4,
            CloseCode::Other(c) => c,
        }
    }

    /// The code read from the wire.
    pub fn from_u32(c: u32) -> Self {
        match c {
            0 => CloseCode::Normal,
            1 => CloseCode::TooManyKeepalives,
            2 => CloseCode::InactivityTimeout,
            3 => CloseCode::Protocol,
            4 => CloseCode::Refused,
            c => CloseCode::Other(c),
        }
    }
}

/// A violation of the wire format by the peer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Not our protocol (wrong magic).
    #[error("not a shm-channel network peer (bad magic)")]
    BadMagic,
    /// The peer speaks a wire version we do not.
    #[error("unsupported wire version {0}")]
    Version(u16),
    /// A record or frame is shorter than its own fields say.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A length exceeds what was negotiated or allowed.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// What was too long.
        what: &'static str,
        /// Its length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Anything else malformed.
    #[error("malformed: {0}")]
    Malformed(String),
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The frame type ([`kind`]).
    pub kind: u8,
    /// The flags ([`data_flags`] for `DATA`).
    pub flags: u8,
    /// The protocol index (`DATA`).
    pub protocol: u16,
    /// The stream id (`DATA`, `ABORT`).
    pub stream: u32,
    /// Bytes of payload that follow.
    pub payload: u32,
    /// The payload's decompressed length.
    pub raw: u32,
}

impl FrameHeader {
    /// A header of `kind` with no payload.
    pub fn control(kind: u8) -> Self {
        FrameHeader {
            kind,
            flags: 0,
            protocol: 0,
            stream: 0,
            payload: 0,
            raw: 0,
        }
    }

    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.protocol.to_le_bytes());
        out.extend_from_slice(&self.stream.to_le_bytes());
        out.extend_from_slice(&self.payload.to_le_bytes());
        out.extend_from_slice(&self.raw.to_le_bytes());
    }

    /// Decodes and checks a header against the negotiated buffer size: a known type, known
    /// flags, a payload that fits a buffer. `None` when fewer than 16 bytes are at hand.
    pub fn decode(bytes: &[u8], buffer_size: u32) -> Result<Option<FrameHeader>, FrameError> {
        let Some(h) = bytes.get(..FRAME_HEADER) else {
            return Ok(None);
        };
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let header = FrameHeader {
            kind: h[0],
            flags: h[1],
            protocol: u16::from_le_bytes([h[2], h[3]]),
            stream: u32_at(4),
            payload: u32_at(8),
            raw: u32_at(12),
        };
        let max = buffer_size - FRAME_HEADER as u32;
        match header.kind {
            kind::DATA => {
                if header.flags & !data_flags::ALL != 0 {
                    return Err(FrameError::Malformed(format!(
                        "unknown data flags {:#x}",
                        header.flags
                    )));
                }
                if header.payload > max || header.raw > max {
                    return Err(FrameError::Oversized {
                        what: "frame",
                        len: u64::from(header.payload.max(header.raw)),
                        max: u64::from(max),
                    });
                }
                if header.flags & data_flags::COMPRESSED == 0 && header.raw != header.payload {
                    return Err(FrameError::Malformed(
                        "uncompressed frame with a different raw length".into(),
                    ));
                }
            }
            kind::KEEPALIVE | kind::KEEPALIVE_REPLY | kind::ABORT | kind::WINDOW => {
                if header.payload != 0 {
                    return Err(FrameError::Malformed("control frame with a payload".into()));
                }
                let known = if header.kind == kind::ABORT {
                    abort_flags::REFUSED
                } else {
                    0
                };
                if header.flags & !known != 0 {
                    return Err(FrameError::Malformed(format!(
                        "unknown flags {:#x} on a control frame",
                        header.flags
                    )));
                }
                if header.kind == kind::WINDOW && header.raw == 0 {
                    return Err(FrameError::Malformed(
                        "a window frame granting 0 bytes".into(),
                    ));
                }
            }
            kind::CLOSE => {
                if header.payload > max {
                    return Err(FrameError::Oversized {
                        what: "close frame",
                        len: u64::from(header.payload),
                        max: u64::from(max),
                    });
                }
            }
            other => return Err(FrameError::Malformed(format!("unknown frame type {other}"))),
        }
        Ok(Some(header))
    }
}

/// A protocol a client speaks (or a server serves): a name and a range of versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolSpec {
    /// The protocol's name (the IDL protocol name), at most 255 bytes.
    pub name: String,
    /// The oldest version spoken.
    pub min_version: u32,
    /// The newest version spoken.
    pub max_version: u32,
}

impl ProtocolSpec {
    /// A protocol spoken in versions `1..=version`.
    pub fn new(name: impl Into<String>, version: u32) -> Self {
        ProtocolSpec {
            name: name.into(),
            min_version: 1,
            max_version: version,
        }
    }

    /// The version both sides speak: the newest in both ranges.
    pub fn agree(&self, other: &ProtocolSpec) -> Option<u32> {
        let v = self.max_version.min(other.max_version);
        (self.name == other.name && v >= self.min_version.max(other.min_version)).then_some(v)
    }
}

/// The client's handshake record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The client's instance id (random per process).
    pub instance: u128,
    /// The buffer size the client wants.
    pub buffer_size: u32,
    /// The largest message the client accepts.
    pub max_message: u64,
    /// Compression algorithms the client accepts, best first.
    pub compression: Vec<u8>,
    /// The protocols the client speaks, in the order frames refer to them.
    pub protocols: Vec<ProtocolSpec>,
}

/// The server's handshake record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The server's instance id.
    pub instance: u128,
    /// The buffer size both use (at most the client's).
    pub buffer_size: u32,
    /// The largest message the server accepts.
    pub max_message: u64,
    /// The compression both use (0: none).
    pub compression: u8,
    /// For each protocol of the [`Hello`], in order: the version agreed, 0 if not served.
    pub versions: Vec<u32>,
}

/// A cursor over untrusted bytes: every read checks its bounds.
struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.bytes.len() < n {
            return Err(FrameError::Truncated(self.what));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn u128(&mut self) -> Result<u128, FrameError> {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.take(16)?);
        Ok(u128::from_le_bytes(a))
    }

    fn end(&self) -> Result<(), FrameError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Malformed(format!(
                "{} trailing bytes after the {}",
                self.bytes.len(),
                self.what
            )))
        }
    }
}

/// Bytes before a handshake record's body: magic, wire version, body length (u32).
pub const RECORD_HEADER: usize = 14;

/// Appends a record: magic, wire version, the body's u32 length, then the body `f` writes.
/// The magic comes first so that a stranger is turned away by its first bytes.
fn record(out: &mut Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&WIRE_VERSION.to_le_bytes());
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    f(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Splits a handshake record off the front of `bytes`: `None` until all of it has
/// arrived, else its body and the bytes it took. Wrong magic, another wire version or an
/// oversized length fail as soon as the bytes that show it are in.
pub fn split_record(bytes: &[u8]) -> Result<Option<(&[u8], usize)>, FrameError> {
    let n = bytes.len().min(MAGIC.len());
    if bytes[..n] != MAGIC[..n] {
        return Err(FrameError::BadMagic);
    }
    let Some(head) = bytes.get(..RECORD_HEADER) else {
        return Ok(None);
    };
    let version = u16::from_le_bytes([head[8], head[9]]);
    if version != WIRE_VERSION {
        return Err(FrameError::Version(version));
    }
    let len = u32::from_le_bytes([head[10], head[11], head[12], head[13]]) as usize;
    if len > MAX_HANDSHAKE {
        return Err(FrameError::Oversized {
            what: "handshake",
            len: len as u64,
            max: MAX_HANDSHAKE as u64,
        });
    }
    match bytes.get(RECORD_HEADER..RECORD_HEADER + len) {
        Some(body) => Ok(Some((body, RECORD_HEADER + len))),
        None => Ok(None),
    }
}

impl Hello {
    /// Appends the record (length-prefixed) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        record(out, |out| {
            out.extend_from_slice(&self.instance.to_le_bytes());
            out.extend_from_slice(&self.buffer_size.to_le_bytes());
            out.extend_from_slice(&self.max_message.to_le_bytes());
            out.push(self.compression.len() as u8);
            out.extend_from_slice(&self.compression);
            out.push(self.protocols.len() as u8);
            for p in &self.protocols {
                let name = &p.name.as_bytes()[..p.name.len().min(255)];
                out.push(name.len() as u8);
                out.extend_from_slice(name);
                out.extend_from_slice(&p.min_version.to_le_bytes());
                out.extend_from_slice(&p.max_version.to_le_bytes());
            }
        });
    }

    /// Decodes a record (without its length prefix).
    pub fn decode(bytes: &[u8]) -> Result<Hello, FrameError> {
        let mut r = Reader {
            bytes,
            what: "hello",
        };
        let instance = r.u128()?;
        let buffer_size = r.u32()?;
        let max_message = r.u64()?;
        let n = r.u8()? as usize;
        let compression = r.take(n)?.to_vec();
        let n = r.u8()? as usize;
        if n == 0 || n > MAX_PROTOCOLS {
            return Err(FrameError::Malformed(format!("{n} protocols in the hello")));
        }
        let mut protocols = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.u8()? as usize;
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| FrameError::Malformed("protocol name is not UTF-8".into()))?
                .to_owned();
            protocols.push(ProtocolSpec {
                name,
                min_version: r.u32()?,
                max_version: r.u32()?,
            });
        }
        r.end()?;
        Ok(Hello {
            instance,
            buffer_size,
            max_message,
            compression,
            protocols,
        })
    }
}

impl Welcome {
    /// Appends the record (length-prefixed) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        record(out, |out| {
            out.extend_from_slice(&self.instance.to_le_bytes());
            out.extend_from_slice(&self.buffer_size.to_le_bytes());
            out.extend_from_slice(&self.max_message.to_le_bytes());
            out.push(self.compression);
            out.push(self.versions.len() as u8);
            for v in &self.versions {
                out.extend_from_slice(&v.to_le_bytes());
            }
        });
    }

    /// Decodes a record (without its length prefix).
    pub fn decode(bytes: &[u8]) -> Result<Welcome, FrameError> {
        let mut r = Reader {
            bytes,
            what: "welcome",
        };
        let instance = r.u128()?;
        let buffer_size = r.u32()?;
        let max_message = r.u64()?;
        let compression = r.u8()?;
        let n = r.u8()? as usize;
        let versions = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
        r.end()?;
        Ok(Welcome {
            instance,
            buffer_size,
            max_message,
            compression,
            versions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            instance: 0x1234_5678_9abc_def0_1122_3344_5566_7788,
            buffer_size: 4096,
            max_message: 1 << 20,
            compression: vec![1, 2],
            protocols: vec![
                ProtocolSpec::new("Display", 3),
                ProtocolSpec::new("Echo", 1),
            ],
        }
    }

    #[test]
    fn handshake_records_round_trip() {
        let mut out = Vec::new();
        hello().encode(&mut out);
        let (rec, used) = split_record(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(Hello::decode(rec).unwrap(), hello());
        let w = Welcome {
            instance: 7,
            buffer_size: 8192,
            max_message: 1 << 30,
            compression: 2,
            versions: vec![3, 0],
        };
        let mut out = Vec::new();
        w.encode(&mut out);
        let (rec, _) = split_record(&out).unwrap().unwrap();
        assert_eq!(Welcome::decode(rec).unwrap(), w);
    }

    #[test]
    fn every_truncation_of_a_hello_is_an_error_or_incomplete() {
        let mut out = Vec::new();
        hello().encode(&mut out);
        for n in 0..out.len() {
            assert_eq!(split_record(&out[..n]), Ok(None), "prefix {n}");
            // A body shorter than its fields need is truncated, never misread.
            if n >= RECORD_HEADER {
                assert!(Hello::decode(&out[RECORD_HEADER..n]).is_err(), "prefix {n}");
            }
        }
    }

    #[test]
    fn strangers_and_giants_are_rejected_early() {
        assert_eq!(
            split_record(b"GET / HTTP/1.1\r\n"),
            Err(FrameError::BadMagic)
        );
        let mut big = MAGIC.to_vec();
        big.extend_from_slice(&WIRE_VERSION.to_le_bytes());
        big.extend_from_slice(&(MAX_HANDSHAKE as u32 + 1).to_le_bytes());
        assert!(matches!(
            split_record(&big),
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn frame_headers_are_checked() {
        let mut out = Vec::new();
        let h = FrameHeader {
            kind: kind::DATA,
            flags: data_flags::FIRST,
            protocol: 1,
            stream: 9,
            payload: 100,
            raw: 100,
        };
        h.encode(&mut out);
        assert_eq!(FrameHeader::decode(&out, 4096), Ok(Some(h)));
        assert_eq!(FrameHeader::decode(&out[..15], 4096), Ok(None));
        let mut bad = out.clone();
        bad[0] = 99;
        assert!(FrameHeader::decode(&bad, 4096).is_err());
        let mut bad = out.clone();
        bad[1] = 0x80;
        assert!(FrameHeader::decode(&bad, 4096).is_err());
        let mut bad = out.clone();
        bad[8..12].copy_from_slice(&5000u32.to_le_bytes());
        assert!(matches!(
            FrameHeader::decode(&bad, 4096),
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn versions_agree_on_the_newest_common() {
        let a = ProtocolSpec::new("P", 3);
        let b = ProtocolSpec {
            name: "P".into(),
            min_version: 2,
            max_version: 5,
        };
        assert_eq!(a.agree(&b), Some(3));
        assert_eq!(a.agree(&ProtocolSpec::new("Q", 3)), None);
        let c = ProtocolSpec {
            name: "P".into(),
            min_version: 4,
            max_version: 5,
        };
        assert_eq!(a.agree(&c), None);
    }
}
