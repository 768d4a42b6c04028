//! Asking a live service about itself without opening a channel: what `shmctl` shows.
//!
//! A control query takes the place of the hello on the service's socket (see the handshake
//! wire format in `handshake.rs`): the service answers it from its accept path (inside
//! [`Service::try_accept`](crate::Service::try_accept) and friends, so always while an
//! [`EventLoop`](crate::EventLoop) serves it) and closes the connection. Nothing here maps a
//! ring: the service reads its own ring headers and reports the numbers.
//!
//! - [`status`]: the service (name, protocol, versions, pid, uid) and each channel (peer,
//!   ring capacities and maxima, fill level, messages written and read, whether each side's
//!   reader is parked);
//! - [`ping`]: one round trip of a small frame through the service's accept path;
//! - [`list_names`]: the names with a socket in a runtime directory.
//!
//! The uid and pid reported are the kernel's (`SO_PEERCRED` of the listening socket), not
//! what the service says about itself.

use std::io::{self, Read};
use std::ops::RangeInclusive;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::channel::{ChannelId, PeerCredentials};
use crate::handshake::{self, DecodeError, Query, QueryKind, RefusalCode, Reply};
use crate::service::{socket_path, validate_name};
use crate::sys;

/// A service's description of itself and its channels.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceStatus {
    /// The name it is bound under.
    pub name: String,
    /// Its protocol.
    pub protocol: String,
    /// The versions it speaks.
    pub versions: RangeInclusive<u32>,
    /// Who listens on the socket, as the kernel reports it.
    pub credentials: PeerCredentials,
    /// The largest rings it creates, client-to-server and server-to-client, in bytes.
    pub ring_max: (u64, u64),
    /// How many channels are open (all of them, even past the listed ones).
    pub live_channels: u32,
    /// The channels (at most 256).
    pub channels: Vec<ChannelStatus>,
}

/// One channel of a [`ServiceStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStatus {
    /// The channel's id.
    pub id: ChannelId,
    /// The version agreed on.
    pub version: u32,
    /// The client's pid.
    pub peer_pid: u32,
    /// The client's uid.
    pub peer_uid: u32,
    /// The ring the client writes.
    pub client_to_server: RingStatus,
    /// The ring the service writes.
    pub server_to_client: RingStatus,
}

/// One ring of a [`ChannelStatus`]: numbers read from its header at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingStatus {
    /// Current capacity in bytes (header included).
    pub capacity: u64,
    /// The most it may grow to.
    pub max_size: u64,
    /// Messages written and not yet read.
    pub pending_messages: u64,
    /// Bytes those messages take.
    pub used_bytes: u64,
    /// Messages written since the channel opened.
    pub messages_written: u64,
    /// Messages read since the channel opened.
    pub messages_read: u64,
    /// Its reader is parked (asleep on its doorbell) rather than polling or busy.
    pub reader_parked: bool,
    /// A writer waits for room.
    pub writer_waiting: bool,
}

impl From<handshake::RingStat> for RingStatus {
    fn from(r: handshake::RingStat) -> Self {
        RingStatus {
            capacity: r.capacity,
            max_size: r.max_size,
            pending_messages: r.pending,
            used_bytes: r.used_bytes,
            messages_written: r.written,
            messages_read: r.read,
            reader_parked: r.reader_parked,
            writer_waiting: r.writer_waiting,
        }
    }
}

/// A service's answer to [`ping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PingReply {
    /// Who listens on the socket, as the kernel reports it.
    pub credentials: PeerCredentials,
    /// From connecting to having the answer.
    pub total: Duration,
    /// From sending the query to having the answer (the connect left out).
    pub round_trip: Duration,
}

/// Why a control query failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The name is not a valid service name.
    #[error("invalid service name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nothing listens under that name.
    #[error("no service {name:?} is running (nothing listens at {})", path.display())]
    NotRunning {
        /// The name.
        name: String,
        /// The socket path tried.
        path: PathBuf,
    },
    /// The service did not answer in time (it is not accepting: a service answers queries
    /// only while it accepts).
    #[error(
        "service {name:?} did not answer within {waited:?} (a service answers only while it \
         accepts clients)"
    )]
    Timeout {
        /// The name.
        name: String,
        /// The timeout.
        waited: Duration,
    },
    /// The service refused the query.
    #[error("service {name:?} refused the query ({code}): {reason}")]
    Refused {
        /// The name.
        name: String,
        /// The reason code.
        code: RefusalCode,
        /// Its explanation.
        reason: String,
    },
    /// The service closed the connection without answering (it is older than control
    /// queries, or it ended).
    #[error("service {name:?} closed the connection without answering")]
    Closed {
        /// The name.
        name: String,
    },
    /// The answer is not a valid frame.
    #[error("service {name:?} answered with an invalid frame: {source}")]
    Malformed {
        /// The name.
        name: String,
        /// What was wrong.
        source: DecodeError,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// Asks service `name` in `dir` for its status, giving up after `timeout`.
pub fn status(dir: &Path, name: &str, timeout: Duration) -> Result<ServiceStatus, ControlError> {
    let (credentials, frame, _) = query(dir, name, QueryKind::Status, timeout)?;
    let s = handshake::decode_status(&frame).map_err(|source| ControlError::Malformed {
        name: name.to_owned(),
        source,
    })?;
    Ok(ServiceStatus {
        name: s.service,
        protocol: s.protocol,
        versions: s.min_version..=s.max_version,
        credentials,
        ring_max: (s.c2s_max, s.s2c_max),
        live_channels: s.live_channels,
        channels: s
            .channels
            .into_iter()
            .map(|c| ChannelStatus {
                id: ChannelId(c.id),
                version: c.version,
                peer_pid: c.peer_pid,
                peer_uid: c.peer_uid,
                client_to_server: c.c2s.into(),
                server_to_client: c.s2c.into(),
            })
            .collect(),
    })
}

/// One round trip to service `name` in `dir` (a fresh connection each time), giving up after
/// `timeout`.
pub fn ping(dir: &Path, name: &str, timeout: Duration) -> Result<PingReply, ControlError> {
    let start = Instant::now();
    let (credentials, frame, sent_at) = query(dir, name, QueryKind::Ping, timeout)?;
    let done = Instant::now();
    let malformed = |source| ControlError::Malformed {
        name: name.to_owned(),
        source,
    };
    let pong = handshake::decode_pong(&frame).map_err(malformed)?;
    if pong.nonce != NONCE {
        return Err(malformed(DecodeError::Invalid(
            "the pong does not echo the ping",
        )));
    }
    Ok(PingReply {
        credentials,
        total: done - start,
        round_trip: done - sent_at,
    })
}

/// The names with a socket in `dir`, sorted (live or stale: [`status`] tells). Files of
/// the activator and other dot-files are left out.
pub fn list_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".sock")) else {
            continue;
        };
        if validate_name(name).is_ok() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The nonce of our queries: one query per connection, so any fixed value matches.
const NONCE: u64 = 0x5348_4d43_7069_6e67;

/// Sends a query to `name` and returns the credentials of the listener, the answer (a
/// refusal is turned into [`ControlError::Refused`]) and when the query went out.
fn query(
    dir: &Path,
    name: &str,
    what: QueryKind,
    timeout: Duration,
) -> Result<(PeerCredentials, Vec<u8>, Instant), ControlError> {
    validate_name(name).map_err(|reason| ControlError::InvalidName {
        name: name.to_owned(),
        reason,
    })?;
    let path = socket_path(dir, name);
    let deadline = Instant::now().checked_add(timeout);
    let request = handshake::encode_query(&Query { what, nonce: NONCE });
    let (creds, frame, sent_at) =
        exchange(&path, &request, deadline, |_| true).map_err(|e| match e {
            Exchange::NotListening => ControlError::NotRunning {
                name: name.to_owned(),
                path: path.clone(),
            },
            Exchange::Timeout => ControlError::Timeout {
                name: name.to_owned(),
                waited: timeout,
            },
            Exchange::Closed => ControlError::Closed {
                name: name.to_owned(),
            },
            Exchange::Malformed(source) => ControlError::Malformed {
                name: name.to_owned(),
                source,
            },
            Exchange::Io(op, source) => ControlError::Io { op, source },
            // Not reached: every listener passes `|_| true`.
            Exchange::Untrusted(_) => ControlError::Io {
                op: "check the listener",
                source: io::Error::other("untrusted listener"),
            },
        })?;
    if let Ok(Reply::Refusal(r)) = handshake::decode_reply(&frame) {
        return Err(ControlError::Refused {
            name: name.to_owned(),
            code: r.code,
            reason: r.reason,
        });
    }
    Ok((creds, frame, sent_at))
}

/// How a one-frame exchange with a listener failed.
#[derive(Debug)]
pub(crate) enum Exchange {
    /// No socket, or nobody listens on it.
    NotListening,
    /// The deadline passed.
    Timeout,
    /// The listener closed the connection before a whole frame arrived.
    Closed,
    /// The answer's header or length is invalid.
    Malformed(DecodeError),
    /// The listener's credentials did not pass the check; nothing was sent.
    Untrusted(PeerCredentials),
    /// A system call failed.
    Io(&'static str, io::Error),
}

/// Connects to `path`, checks the listener with `trust` before sending anything, sends
/// `request` and reads one whole frame back. Returns the listener's credentials, the frame
/// and when the request was sent. Never blocks past `deadline`.
pub(crate) fn exchange(
    path: &Path,
    request: &[u8],
    deadline: Option<Instant>,
    trust: impl FnOnce(&PeerCredentials) -> bool,
) -> Result<(PeerCredentials, Vec<u8>, Instant), Exchange> {
    let expired = || deadline.is_some_and(|d| Instant::now() >= d);
    let stream = loop {
        match sys::connect_unix(path) {
            Ok(sys::Connect::Connected(s)) => break s,
            Ok(sys::Connect::Busy) if expired() => return Err(Exchange::Timeout),
            Ok(sys::Connect::Busy) => std::thread::sleep(Duration::from_millis(1)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(Exchange::NotListening);
            }
            Err(e) => return Err(Exchange::Io("connect", e)),
        }
    };
    let creds = PeerCredentials::of(stream.as_fd())
        .map_err(|e| Exchange::Io("read the listener's credentials", e))?;
    if !trust(&creds) {
        return Err(Exchange::Untrusted(creds));
    }
    let sent_at = Instant::now();
    let mut sent = 0;
    while sent < request.len() {
        match sys::send_bytes(stream.as_fd(), &request[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !expired() => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(Exchange::Timeout),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The listener may have refused and closed already: its answer is still there.
            Err(_) => break,
        }
    }
    let frame = read_frame(&stream, deadline)?;
    Ok((creds, frame, sent_at))
}

/// Reads one whole frame (header and body) from a non-blocking stream.
pub(crate) fn read_frame(
    stream: &UnixStream,
    deadline: Option<Instant>,
) -> Result<Vec<u8>, Exchange> {
    let mut buf = Vec::new();
    loop {
        let want = match handshake::frame_len(&buf, handshake::MAX_BODY) {
            Ok(None) => handshake::HEADER_LEN,
            Ok(Some(n)) => n,
            Err(e) => return Err(Exchange::Malformed(e)),
        };
        if buf.len() >= want {
            return Ok(buf);
        }
        let mut chunk = [0u8; 4096];
        let n = (want - buf.len()).min(chunk.len());
        match (&*stream).read(&mut chunk[..n]) {
            Ok(0) => return Err(Exchange::Closed),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                if left == Some(Duration::ZERO) {
                    return Err(Exchange::Timeout);
                }
                sys::poll_many(&[stream.as_fd()], left).map_err(|e| Exchange::Io("poll", e))?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(Exchange::Closed),
            Err(e) => return Err(Exchange::Io("read", e)),
        }
    }
}
