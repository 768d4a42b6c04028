//! Activation: services started on demand the first time a client asks for them, and held
//! to the identity their service file names.
//!
//! An **activator** (the `shm-activator` daemon, or the same code in-process in tests) reads
//! service files and listens on `.activator.sock` in the runtime directory (a name no service
//! can take: service names never start with a dot). [`connect`](crate::service::connect),
//! when an activator listens there (and [`ClientConfig::activation`] is on, the default):
//!
//! 1. connects to the activator and checks **its** credentials against
//!    [`ClientConfig::trust`] before sending anything (same uid or root by default);
//! 2. sends the service name and how long it may wait;
//! 3. the activator answers at once for a name it has no file for ("unknown": the connect
//!    goes on as without an activator), and otherwise once the service listens: it starts the
//!    configured command if nothing listens yet (once, however many clients ask at the same
//!    time), and answers "ready, it must run as uid N", or why it failed (the command is
//!    missing, it exited with status N, it did not bind in time);
//! 4. the client connects to the service and accepts **only a listener running as uid N**:
//!    whoever else bound the name first (an impostor) is refused before a byte is sent, with
//!    [`ConnectError::Impostor`](crate::service::ConnectError::Impostor). For an activatable
//!    name the service file's uid replaces [`ClientConfig::trust`] (which still decides whether
//!    the activator itself is believed).
//!
//! A failure is a [`ConnectError::Activation`](crate::service::ConnectError::Activation)
//! holding an [`ActivationError`] that says what happened. Everything is bounded by the
//! client's timeout.
//!
//! The activator's side of the exchange is [`ActivatorListener`]: it accepts requests and
//! answers them with an [`ActivationAnswer`]; what it does in between (spawning, restarting,
//! policies) is the activator's business.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::channel::PeerCredentials;
use crate::control::{Exchange, exchange, read_frame};
use crate::handshake::{self, Activate, DecodeError, Outcome, RefusalCode, Reply};
use crate::service::{
    Access, BindError, BoundSocket, Claim, ClientConfig, CredentialPolicy, bind_listener,
    claim_name, send_refusal, set_socket_mode, validate_name,
};
use crate::sys;

/// The activator's socket file stem in the runtime directory (`.activator.sock`, next to
/// its `.activator.lock`).
pub const ACTIVATOR_NAME: &str = ".activator";

/// Outcome codes on the wire.
const UNKNOWN: u8 = 0;
const READY: u8 = 1;
const FAILED: u8 = 2;
/// Failure codes on the wire.
const COMMAND_MISSING: u16 = 1;
const EXITED: u16 = 2;
const DID_NOT_BIND: u16 = 3;
const CANNOT_START: u16 = 4;

/// Why activating a service failed. Each says what happened, for the person reading it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// Nothing listens under the name and the activator has no service file for it.
    #[error("no service {name:?} is running, and the activator has no service file named {name:?}")]
    NoServiceFile {
        /// The name.
        name: String,
    },
    /// The service file's command does not exist or is not executable.
    #[error("cannot activate {name:?}: the command is missing: {detail}")]
    CommandMissing {
        /// The name.
        name: String,
        /// The command and the system's error.
        detail: String,
    },
    /// The command started and ended before its service listened.
    #[error("cannot activate {name:?}: the service {} before it bound its socket", describe_exit(*.status))]
    Exited {
        /// The name.
        name: String,
        /// Its exit code, or minus the signal that killed it.
        status: i32,
    },
    /// The command started but did not bind its socket in time; the activator stopped it.
    #[error(
        "cannot activate {name:?}: the service was started but did not bind its socket within \
         {waited:?} (the activator stopped it)"
    )]
    DidNotBind {
        /// The name.
        name: String,
        /// How long the activator waited.
        waited: Duration,
    },
    /// The command could not be started (permissions, the uid it must run as...).
    #[error("cannot activate {name:?}: {detail}")]
    CannotStart {
        /// The name.
        name: String,
        /// Why.
        detail: String,
    },
    /// The activator did not answer within the connect's timeout.
    #[error("the activator did not answer about {name:?} within {waited:?}")]
    Timeout {
        /// The name.
        name: String,
        /// The timeout.
        waited: Duration,
    },
    /// The process listening at the activator's socket is not trusted; nothing was sent.
    #[error(
        "untrusted activator at {}: it runs with {actual}, but only {expected} is trusted",
        path.display()
    )]
    UntrustedActivator {
        /// The activator's socket.
        path: PathBuf,
        /// The trust policy, described.
        expected: String,
        /// Who listens.
        actual: PeerCredentials,
    },
    /// The activator refused the request (for instance, this client's uid may not start
    /// services).
    #[error("the activator refused to activate {name:?} ({code}): {reason}")]
    Refused {
        /// The name.
        name: String,
        /// The reason code.
        code: RefusalCode,
        /// Its explanation.
        reason: String,
    },
    /// The activator's answer is not a valid frame.
    #[error("the activator answered about {name:?} with an invalid frame: {source}")]
    Malformed {
        /// The name.
        name: String,
        /// What was wrong.
        source: DecodeError,
    },
    /// A system call failed.
    #[error("activation: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

fn describe_exit(status: i32) -> String {
    if status < 0 {
        format!("was killed by signal {}", status.unsigned_abs())
    } else {
        format!("exited with status {status}")
    }
}

/// What the activator said about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// No activator listens in the runtime directory.
    NoActivator,
    /// The activator has no service file for the name.
    Unknown,
    /// The service listens; it must run as `uid`.
    Ready {
        /// The uid of the service file.
        uid: u32,
    },
}

/// Asks the activator in `dir` (if any) to make `name` available, up to `deadline`.
pub(crate) fn resolve(
    dir: &Path,
    name: &str,
    config: &ClientConfig,
    deadline: Option<Instant>,
) -> Result<Resolved, ActivationError> {
    let path = dir.join(format!("{ACTIVATOR_NAME}.sock"));
    let left = deadline.map_or(Duration::MAX, |d| {
        d.saturating_duration_since(Instant::now())
    });
    let request = handshake::encode_activate(&Activate {
        name: name.to_owned(),
        wait_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
    })
    .map_err(|source| ActivationError::Malformed {
        name: name.to_owned(),
        source,
    })?;
    let trust = config.trust_policy();
    let frame = match exchange(&path, &request, deadline, |c| trust.allows(c)) {
        Ok((_, frame, _)) => frame,
        Err(Exchange::NotListening) => return Ok(Resolved::NoActivator),
        Err(Exchange::Untrusted(actual)) => {
            return Err(ActivationError::UntrustedActivator {
                path,
                expected: trust.to_string(),
                actual,
            });
        }
        Err(Exchange::Timeout) => {
            return Err(ActivationError::Timeout {
                name: name.to_owned(),
                waited: left,
            });
        }
        Err(Exchange::Closed) => {
            return Err(ActivationError::Io {
                op: "read the activator's answer",
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the activator closed the connection without answering",
                ),
            });
        }
        Err(Exchange::Malformed(source)) => {
            return Err(ActivationError::Malformed {
                name: name.to_owned(),
                source,
            });
        }
        // An activator socket we may not use belongs to someone else's activator.
        Err(Exchange::Io(_, e)) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Ok(Resolved::NoActivator);
        }
        Err(Exchange::Io(op, source)) => return Err(ActivationError::Io { op, source }),
    };
    if let Ok(Reply::Refusal(r)) = handshake::decode_reply(&frame) {
        return Err(ActivationError::Refused {
            name: name.to_owned(),
            code: r.code,
            reason: r.reason,
        });
    }
    let o = handshake::decode_outcome(&frame).map_err(|source| ActivationError::Malformed {
        name: name.to_owned(),
        source,
    })?;
    let name = name.to_owned();
    match (o.outcome, o.code) {
        (UNKNOWN, _) => Ok(Resolved::Unknown),
        (READY, _) => Ok(Resolved::Ready { uid: o.uid }),
        (_, COMMAND_MISSING) => Err(ActivationError::CommandMissing {
            name,
            detail: o.detail,
        }),
        (_, EXITED) => Err(ActivationError::Exited {
            name,
            status: o.status,
        }),
        (_, DID_NOT_BIND) => Err(ActivationError::DidNotBind {
            name,
            waited: Duration::from_millis(o.waited_ms),
        }),
        _ => Err(ActivationError::CannotStart {
            name,
            detail: o.detail,
        }),
    }
}

/// How the activator answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActivationAnswer {
    /// No service file names the service: the client connects as if there were no activator.
    Unknown,
    /// The service listens (or something does: the client checks it is `uid`).
    Ready {
        /// The uid its service file says it runs as.
        uid: u32,
        /// Its pid, when the activator started it.
        pid: Option<u32>,
    },
    /// Starting it failed.
    Failed(StartFailure),
}

/// Why the activator could not start a service.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StartFailure {
    /// The command does not exist or cannot be executed.
    #[error("its command is missing: {0}")]
    CommandMissing(String),
    /// It ended before binding: its exit code, or minus the signal that killed it.
    #[error("it ended before binding its socket (status {0})")]
    Exited(i32),
    /// It did not bind within this time and was stopped.
    #[error("it did not bind its socket within {0:?} and was stopped")]
    DidNotBind(Duration),
    /// Anything else that kept it from starting.
    #[error("it could not start: {0}")]
    CannotStart(String),
}

impl ActivationAnswer {
    fn encode(&self) -> Vec<u8> {
        let mut o = Outcome {
            outcome: FAILED,
            uid: 0,
            pid: 0,
            code: 0,
            status: 0,
            waited_ms: 0,
            detail: String::new(),
        };
        match self {
            ActivationAnswer::Unknown => o.outcome = UNKNOWN,
            ActivationAnswer::Ready { uid, pid } => {
                o.outcome = READY;
                o.uid = *uid;
                o.pid = pid.unwrap_or(0);
            }
            ActivationAnswer::Failed(f) => match f {
                StartFailure::CommandMissing(d) => {
                    o.code = COMMAND_MISSING;
                    o.detail = d.clone();
                }
                StartFailure::Exited(status) => {
                    o.code = EXITED;
                    o.status = *status;
                }
                StartFailure::DidNotBind(waited) => {
                    o.code = DID_NOT_BIND;
                    o.waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
                }
                StartFailure::CannotStart(d) => {
                    o.code = CANNOT_START;
                    o.detail = d.clone();
                }
            },
        }
        handshake::encode_outcome(&o)
    }
}

/// The activator's listening socket, `.activator.sock` in a runtime directory, exclusive
/// like a service's name (a lock file beside it).
#[derive(Debug)]
pub struct ActivatorListener {
    socket: BoundSocket,
    policy: CredentialPolicy,
}

impl ActivatorListener {
    /// Listens in `dir` (created and checked as for a service), reachable as `access` says;
    /// `policy` decides who may ask for services.
    pub fn bind(
        dir: &Path,
        access: Access,
        policy: CredentialPolicy,
    ) -> Result<ActivatorListener, BindError> {
        let socket = bind_listener(dir, ACTIVATOR_NAME, access)?;
        Ok(ActivatorListener { socket, policy })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.socket.path
    }

    /// The next connection whose credentials pass the policy, waiting up to `timeout`
    /// (`Ok(None)`: none came). Connections that do not pass are refused (with a reason) and
    /// skipped. Read the request with [`IncomingRequest::read`], on another thread if you like.
    pub fn accept_timeout(&self, timeout: Duration) -> io::Result<Option<IncomingRequest>> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            match self.socket.listener.accept() {
                Ok((stream, _)) => {
                    let peer = PeerCredentials::of(stream.as_fd())?;
                    if !self.policy.allows(&peer) {
                        let reason = format!(
                            "the client ({peer}) may not ask this activator for services \
                             (allowed: {})",
                            self.policy
                        );
                        send_refusal(&stream, RefusalCode::Credentials, reason);
                        continue;
                    }
                    stream.set_nonblocking(true)?;
                    return Ok(Some(IncomingRequest { stream, peer }));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(e),
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Ok(None);
            }
            sys::poll_many(&[self.socket.listener.as_fd()], left)?;
        }
    }
}

impl AsFd for ActivatorListener {
    /// The listening socket: readable when a client is waiting.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.listener.as_fd()
    }
}

/// A client of the activator, accepted, whose request is not read yet.
#[derive(Debug)]
pub struct IncomingRequest {
    stream: UnixStream,
    peer: PeerCredentials,
}

/// Why an activation request could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The client sent no whole request in time.
    #[error("the client sent no complete request in time")]
    Timeout,
    /// The client closed the connection first.
    #[error("the client closed the connection before its request was complete")]
    Closed,
    /// The bytes are not an activation request (the client was told why).
    #[error("invalid activation request: {0}")]
    Malformed(DecodeError),
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

impl IncomingRequest {
    /// Who is asking.
    pub fn peer(&self) -> &PeerCredentials {
        &self.peer
    }

    /// Reads the request, waiting up to `timeout`. A malformed one is refused with a reason.
    pub fn read(self, timeout: Duration) -> Result<ActivationRequest, RequestError> {
        let deadline = Instant::now().checked_add(timeout);
        let frame = read_frame(&self.stream, deadline).map_err(|e| match e {
            Exchange::Timeout => RequestError::Timeout,
            Exchange::Malformed(d) => RequestError::Malformed(d),
            Exchange::Io(op, source) => RequestError::Io { op, source },
            _ => RequestError::Closed,
        });
        let decoded =
            frame.and_then(|f| handshake::decode_activate(&f).map_err(RequestError::Malformed));
        match decoded {
            Ok(a) => Ok(ActivationRequest {
                stream: self.stream,
                peer: self.peer,
                name: a.name,
                wait: Duration::from_millis(a.wait_ms),
            }),
            Err(RequestError::Malformed(d)) => {
                send_refusal(
                    &self.stream,
                    RefusalCode::Malformed,
                    format!("bad request: {d}"),
                );
                Err(RequestError::Malformed(d))
            }
            Err(e) => Err(e),
        }
    }
}

/// A request to make a service available.
#[derive(Debug)]
pub struct ActivationRequest {
    stream: UnixStream,
    peer: PeerCredentials,
    name: String,
    wait: Duration,
}

impl ActivationRequest {
    /// The service asked for (1..=64 bytes; check it names a service file before using it in
    /// a path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long the client waits for the answer.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// Who is asking.
    pub fn peer(&self) -> &PeerCredentials {
        &self.peer
    }

    /// Whether the client hung up (gave up waiting): no point answering, nor starting a
    /// service for it alone.
    pub fn client_gone(&self) -> bool {
        sys::peer_hung_up(self.stream.as_fd())
    }

    /// Sends the answer and closes the connection. Fails when the client is gone.
    pub fn answer(self, answer: &ActivationAnswer) -> io::Result<()> {
        let bytes = answer.encode();
        let mut sent = 0;
        while sent < bytes.len() {
            match sys::send_bytes(self.stream.as_fd(), &bytes[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        sys::shutdown(self.stream.as_fd())
    }
}

/// A service's socket, bound by the activator (holding the name's lock) but not listening, to
/// hand to a service it starts as another uid: that uid may not be able to create its socket
/// in the activator's runtime directory, and the listener's credentials must be the
/// service's own. Pass [`take_stdin`](Self::take_stdin) as the service's stdin and set
/// [`LISTEN_STDIN_ENV`](crate::service::LISTEN_STDIN_ENV) to the name: its
/// [`Service::bind`](crate::Service::bind) then listens on it. Keep this for as long as the
/// service runs (it holds the name); dropping it removes the socket file and releases the
/// name. To start the service again, [`rebind`](Self::rebind) it rather than bind anew.
#[derive(Debug)]
pub struct PreparedSocket {
    fd: Option<std::os::fd::OwnedFd>,
    claim: Claim,
    access: Access,
}

impl PreparedSocket {
    /// Claims `name` in `dir` and binds its socket (mode as `access` says).
    pub fn bind(dir: &Path, name: &str, access: Access) -> Result<PreparedSocket, BindError> {
        validate_name(name).map_err(|reason| BindError::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        let claim = claim_name(dir, name, access)?;
        let fd = bind_prepared(&claim.path, access)?;
        Ok(PreparedSocket {
            fd: Some(fd),
            claim,
            access,
        })
    }

    /// A fresh socket at the same path, for the next start of the service (the one that
    /// had the last socket ended), the name still held. Releasing the name and claiming it
    /// again instead could find it taken by ourselves: the name's lock is on an open file
    /// that a process this one forks at that moment (from another thread) holds until it
    /// execs, and an activator restarting a service saw "already in use" that way.
    pub fn rebind(&mut self) -> Result<(), BindError> {
        self.fd = None;
        let path = &self.claim.path;
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BindError::Io {
                    op: "remove the old socket",
                    path: path.clone(),
                    source,
                });
            }
        }
        self.fd = Some(bind_prepared(path, self.access)?);
        Ok(())
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.claim.path
    }

    /// The socket, for the service's stdin (once: `None` after). The activator keeps no
    /// copy, so when the service dies the socket dies with it and clients are refused at
    /// once rather than queued on a socket nobody accepts on.
    pub fn take_stdin(&mut self) -> Option<std::process::Stdio> {
        self.fd.take().map(std::process::Stdio::from)
    }
}

/// A socket bound (not listening) at `path`, with the mode `access` asks for.
fn bind_prepared(path: &Path, access: Access) -> Result<std::os::fd::OwnedFd, BindError> {
    let fd = sys::bind_unlistened(path).map_err(|source| BindError::Io {
        op: "bind",
        path: path.to_owned(),
        source,
    })?;
    set_socket_mode(path, access)?;
    Ok(fd)
}

impl Drop for PreparedSocket {
    fn drop(&mut self) {
        // We hold the lock (in `claim`), so the socket at the path is ours.
        let _ = std::fs::remove_file(&self.claim.path);
    }
}
