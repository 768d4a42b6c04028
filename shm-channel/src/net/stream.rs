//! Messages larger than memory: sent from a reader one frame at a time
//! ([`ReaderSource`], [`NetSender::send_stream`](super::NetSender::send_stream)) and
//! consumed by a server's stream handler piece by piece ([`NetStream`],
//! [`Served::with_streams`](super::Served::with_streams)), with per-stream flow control
//! in between (see `docs/NETWORK.md`, *Streamed messages*).
//!
//! A streamed message is an ordinary message of exactly one object: the same 48-byte
//! header, the object's 16-byte header, its bytes and zero padding to 8. Only its
//! delivery differs: the `STREAM` flag on its first frame tells the receiver it may hand
//! the object's bytes over as they arrive instead of reassembling the message.

use std::io::Read;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::conn::MessageSource;
use super::tcp::{ServerConn, lock};
use crate::rpc::{Outgoing, TransportError};
use shm_layout::{MESSAGE_HEADER_SIZE, MessageHeader, OBJECT_HEADER_SIZE};

/// The bytes before a streamed object's data: the message header and the object header.
const HEAD: usize = (MESSAGE_HEADER_SIZE + OBJECT_HEADER_SIZE) as usize;

/// A message of one object whose `len` bytes are read from a reader (a file, a socket, a
/// generator) as frames go out: the message is never whole in memory.
///
/// It cannot be rewound, so a resend (an `@idempotent` message whose connection dropped)
/// fails it instead; implement [`MessageSource`] yourself for a source that can start over.
pub struct ReaderSource {
    head: [u8; HEAD],
    object_len: u64,
    total: u64,
    /// Message bytes produced so far.
    at: u64,
    reader: Box<dyn Read + Send>,
}

impl std::fmt::Debug for ReaderSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReaderSource")
            .field("object_len", &self.object_len)
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl ReaderSource {
    /// The message `out` (its id, kind, request id and RPC flags) with one object,
    /// `object_id`, of exactly `object_len` bytes read from `reader`.
    pub fn new(
        out: &Outgoing,
        object_id: u64,
        object_len: u64,
        reader: impl Read + Send + 'static,
    ) -> Result<Self, TransportError> {
        let total = shm_layout::message_len([object_len]).ok_or(TransportError::TooLarge {
            size: object_len,
            max: u64::MAX - 64,
        })?;
        let mut header = MessageHeader::new(out.message_id, out.kind, 1, out.request_id);
        header.flags |= out.flags & shm_layout::flags::APP_MASK;
        header.length = total;
        let mut head = [0u8; HEAD];
        header
            .encode(&mut head)
            .map_err(|e| TransportError::Layout(e.to_string()))?;
        head[48..56].copy_from_slice(&object_id.to_le_bytes());
        head[56..64].copy_from_slice(&object_len.to_le_bytes());
        Ok(ReaderSource {
            head,
            object_len,
            total,
            at: 0,
            reader: Box::new(reader),
        })
    }
}

impl MessageSource for ReaderSource {
    fn len(&self) -> u64 {
        self.total
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, String> {
        let head = HEAD as u64;
        let data_end = head + self.object_len;
        let n = if self.at < head {
            let from = self.at as usize;
            let n = buf.len().min(HEAD - from);
            buf[..n].copy_from_slice(&self.head[from..from + n]);
            n
        } else if self.at < data_end {
            let want = buf
                .len()
                .min(usize::try_from(data_end - self.at).unwrap_or(usize::MAX));
            loop {
                match self.reader.read(&mut buf[..want]) {
                    Ok(0) => {
                        return Err(format!(
                            "the reader ended {} bytes early",
                            data_end - self.at
                        ));
                    }
                    Ok(n) => break n.min(want),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("reading the object: {e}")),
                }
            }
        } else {
            // Zero padding to 8.
            let n = buf
                .len()
                .min(usize::try_from(self.total - self.at).unwrap_or(0));
            buf[..n].fill(0);
            n
        };
        self.at += n as u64;
        Ok(n)
    }

    fn rewind(&mut self) -> bool {
        false
    }
}

/// What a stream handler's channel carries.
pub(super) enum Piece {
    Data(Vec<u8>),
    End,
    Aborted(String),
}

/// Why a [`NetStream`] could not deliver the rest of its object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The sender gave up on it, or the connection closed.
    #[error("the stream was aborted: {0}")]
    Aborted(String),
    /// Nothing arrived before the deadline.
    #[error("timed out waiting for the stream")]
    Timeout,
}

impl From<StreamError> for std::io::Error {
    fn from(e: StreamError) -> Self {
        let kind = match e {
            StreamError::Aborted(_) => std::io::ErrorKind::ConnectionAborted,
            StreamError::Timeout => std::io::ErrorKind::TimedOut,
        };
        std::io::Error::new(kind, e)
    }
}

/// Bytes consumed before the connection hears of it: fewer reports, while the sender
/// still gets credit long before the window runs dry.
const REPORT_EVERY: u64 = 64 * 1024;

/// The object of an incoming streamed message, read piece by piece, in order, as it
/// arrives: what a [stream handler](super::Served::with_streams) is given. Reading is
/// what grants the sender more (flow control): a handler that reads slowly slows its own
/// stream only. Dropped before the end, it refuses the rest (the sender stops).
pub struct NetStream {
    object_id: u64,
    len: u64,
    read: u64,
    stream: u32,
    pieces: Receiver<Piece>,
    conn: Arc<ServerConn>,
    /// Consumed and not yet reported.
    unreported: u64,
    /// Part of a piece a `read` did not take.
    rest: Vec<u8>,
    rest_at: usize,
    ended: bool,
    timeout: Duration,
}

impl std::fmt::Debug for NetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetStream")
            .field("object_id", &self.object_id)
            .field("len", &self.len)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl NetStream {
    pub(super) fn new(
        object_id: u64,
        len: u64,
        stream: u32,
        pieces: Receiver<Piece>,
        conn: Arc<ServerConn>,
        timeout: Duration,
    ) -> Self {
        NetStream {
            object_id,
            len,
            read: 0,
            stream,
            pieces,
            conn,
            unreported: 0,
            rest: Vec::new(),
            rest_at: 0,
            ended: false,
            timeout,
        }
    }

    /// The object's id.
    pub fn object_id(&self) -> u64 {
        self.object_id
    }

    /// The object's length: the bytes there are to read in all.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the object is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.read
    }

    /// How long a read waits for the next piece before failing with
    /// [`StreamError::Timeout`] (the server's inactivity timeout by default).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The next piece of the object, as it arrived (no copy); `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        if self.rest_at < self.rest.len() {
            let piece = self.rest.split_off(self.rest_at);
            self.rest.clear();
            self.rest_at = 0;
            return Ok(Some(piece));
        }
        if self.ended {
            return Ok(None);
        }
        // About to wait: whatever was consumed is reported first, so the sender never
        // waits on credit we merely sat on.
        let piece = match self.pieces.try_recv() {
            Ok(p) => p,
            Err(_) => {
                self.report();
                match self.pieces.recv_timeout(self.timeout) {
                    Ok(p) => p,
                    Err(RecvTimeoutError::Timeout) => return Err(StreamError::Timeout),
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(StreamError::Aborted("the connection is gone".into()));
                    }
                }
            }
        };
        match piece {
            Piece::Data(bytes) => {
                self.read += bytes.len() as u64;
                self.unreported += bytes.len() as u64;
                if self.unreported >= REPORT_EVERY {
                    self.report();
                }
                Ok(Some(bytes))
            }
            Piece::End => {
                self.ended = true;
                Ok(None)
            }
            Piece::Aborted(why) => {
                self.ended = true;
                Err(StreamError::Aborted(why))
            }
        }
    }

    /// Tells the connection what was consumed (it grants the sender more).
    fn report(&mut self) {
        let n = std::mem::take(&mut self.unreported);
        if n > 0 {
            lock(&self.conn.conn).stream_consumed(self.stream, n);
            self.conn.wake.notify_one();
        }
    }
}

impl Read for NetStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.rest_at >= self.rest.len() {
            match self.next_chunk()? {
                Some(piece) => {
                    self.rest = piece;
                    self.rest_at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.rest.len() - self.rest_at);
        buf[..n].copy_from_slice(&self.rest[self.rest_at..self.rest_at + n]);
        self.rest_at += n;
        Ok(n)
    }
}

impl Drop for NetStream {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // The handler stopped early: the sender is told to stop.
        lock(&self.conn.conn).refuse_stream(self.stream);
        self.conn.wake.notify_one();
    }
}
