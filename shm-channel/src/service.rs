//! Rendezvous by name: a [`Service`] listens on a Unix socket in a per-user runtime directory;
//! [`connect`] reaches it by name, both sides check each other's credentials, and the
//! handshake hands the client the channel's memory and doorbells (`SCM_RIGHTS`).
//!
//! # Where services live
//!
//! `$XDG_RUNTIME_DIR/shm-channel/<name>.sock`, or `/tmp/shm-channel-<uid>/<name>.sock` when
//! `XDG_RUNTIME_DIR` is not set (`$SHM_CHANNEL_RUNTIME_DIR` overrides both, see
//! [`RUNTIME_DIR_ENV`]); [`ServiceConfig::runtime_dir`] and
//! [`ClientConfig::runtime_dir`] override the directory. [`Service::bind`] creates the
//! directory with mode 0700 and refuses one that is not owned by this user or that others can
//! enter (by default) or write to: someone who could plant a socket there could pose as the
//! service. Next to the socket, `<name>.lock` holds an exclusive `flock` for the service's
//! lifetime: the kernel drops it when the process dies however it dies, so a live name is
//! never taken over and a dead service's socket (stale) is replaced without any guessing.
//! (The lock file itself stays when the service ends: deleting it would let two binders lock
//! two different files of the same name.)
//!
//! A client does not trust the directory: whatever listens at the path is checked by its
//! kernel-reported credentials (below), so a socket planted anywhere is caught.
//!
//! # Handshake
//!
//! 0. When an activator listens in the runtime directory, the client asks it first: it
//!    starts the service if needed and names the uid it must run as, which then replaces
//!    [`ClientConfig::trust`] in step 1 (see [`crate::activation`]).
//! 1. The client connects and checks the server's credentials (`SO_PEERCRED`, recorded by
//!    the kernel when the server called `listen`) against [`ClientConfig::trust`] *before it
//!    sends anything*: an impostor is refused with [`ConnectError::Impostor`].
//! 2. The server checks the client's credentials against [`ServiceConfig::credentials`] as
//!    soon as it accepts the connection, before reading a byte from it.
//! 3. The client sends a hello: protocol name, version range, the largest ring sizes it
//!    accepts, its pid. The server reads it without blocking (several handshakes progress at
//!    once, so a silent client never holds up others) and drops a client whose hello is not
//!    complete after [`ServiceConfig::handshake_timeout`].
//! 4. The server picks the highest version both speak, sizes each ring at the smaller of its
//!    maximum and the client's (rounded down to whole pages: both sides were built from the
//!    same IDL, so they normally agree), creates the two sealed memfds and four eventfds, and
//!    sends a welcome with them. Any failure is sent back as a refusal with a
//!    [`RefusalCode`] and a text, so the client's error says what the server objected to.
//!
//! Instead of a hello, a client may send a control query ([`crate::control`]): the service
//! answers it with its status (its channels and their rings' counters) or a pong, from the
//! same non-blocking accept path, and closes the connection.
//!
//! The wire format is described in the (private) `handshake` module; its decoders never panic
//! on any input.
//!
//! # Example
//!
//! ```
//! use shm_channel::service::{self, ClientConfig, Service, ServiceConfig};
//! use shm_channel::Kind;
//! use std::time::Duration;
//!
//! # let dir = std::env::temp_dir().join(format!("shm-channel-doc-{}", std::process::id()));
//! let config = ServiceConfig::new("Echo", 1..=2)
//! #   .runtime_dir(&dir)
//!     .ring_sizes(1 << 20, 1 << 20);
//! let mut service = Service::bind("doc-echo", config)?;
//!
//! let client = std::thread::spawn({
//! #   let dir = dir.clone();
//!     move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//!         let config = ClientConfig::new("Echo", 1..=3)
//! #           .runtime_dir(&dir)
//!             .ring_sizes(1 << 20, 1 << 20);
//!         let mut channel = service::connect("doc-echo", &config)?;
//!         assert_eq!(channel.version(), 2); // the highest both speak
//!         channel.try_send_objects(1, Kind::OneWay, &[(0, b"ping")])?;
//!         Ok(())
//!     }
//! });
//!
//! let mut channel = service.accept_timeout(Duration::from_secs(10))?;
//! let msg = channel.rx().receive_timeout(Duration::from_secs(10))?;
//! assert_eq!(msg.object(0), Some(&b"ping"[..]));
//! drop(msg);
//! client.join().unwrap().unwrap();
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::ops::RangeInclusive;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shm_layout::PAGE_SIZE;
use thiserror::Error;

use crate::activation::{self, ActivationError, Resolved};
use crate::channel::{
    Channel, ChannelId, ChannelParts, Doorbell, Doorbells, PeerCredentials, Side, attach_doorbells,
};
use crate::handshake::{self, Hello, Query, QueryKind, Refusal, Reply, Request, Welcome};
pub use crate::handshake::{DecodeError, RefusalCode};
use crate::ring::{Ring, RingConfig, RingError, WeakRing};
use crate::sys;

/// The longest service name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// The longest path a Unix socket address holds (`sun_path` minus its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Refusals kept for [`Service::take_refused`].
const MAX_REFUSED_KEPT: usize = 256;
/// The default of [`ServiceConfig::max_channels`]: with 7 fds per channel it stays within
/// the usual soft limit of 1024 fds.
pub const DEFAULT_MAX_CHANNELS: usize = 128;
/// The default of [`ServiceConfig::max_memory_per_uid`]: 1 GiB.
pub const DEFAULT_MAX_MEMORY_PER_UID: u64 = 1 << 30;

/// A custom credential check.
type PeerCheck = dyn Fn(&PeerCredentials) -> bool + Send + Sync;

/// Who may talk to us: a peer passes when **any** rule admits it.
///
/// The gid rules see the peer's effective (primary) group only: `SO_PEERCRED` does not report
/// supplementary groups.
#[derive(Clone)]
pub struct CredentialPolicy {
    same_uid: bool,
    uids: Vec<u32>,
    gids: Vec<u32>,
    check: Option<Arc<PeerCheck>>,
}

impl CredentialPolicy {
    /// Admits peers running as this process's effective uid (the services' default).
    pub fn same_uid() -> Self {
        CredentialPolicy {
            same_uid: true,
            ..Self::nobody()
        }
    }

    /// Admits nobody; add rules with the `allow_*` methods.
    pub fn nobody() -> Self {
        CredentialPolicy {
            same_uid: false,
            uids: Vec::new(),
            gids: Vec::new(),
            check: None,
        }
    }

    /// Also admits peers running as `uid`.
    pub fn allow_uid(mut self, uid: u32) -> Self {
        self.uids.push(uid);
        self
    }

    /// Also admits peers whose effective group is `gid`.
    pub fn allow_gid(mut self, gid: u32) -> Self {
        self.gids.push(gid);
        self
    }

    /// Also admits peers for which `check` returns true.
    pub fn allow_if(
        mut self,
        check: impl Fn(&PeerCredentials) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.check = Some(Arc::new(check));
        self
    }

    /// Whether `peer` passes.
    pub fn allows(&self, peer: &PeerCredentials) -> bool {
        (self.same_uid && peer.uid == sys::euid())
            || self.uids.contains(&peer.uid)
            || self.gids.contains(&peer.gid)
            || self.check.as_ref().is_some_and(|f| f(peer))
    }
}

impl Default for CredentialPolicy {
    fn default() -> Self {
        Self::same_uid()
    }
}

/// Describes the rules, for error messages: `same uid (1000) or uids [0]`.
impl fmt::Display for CredentialPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.same_uid {
            parts.push(format!("same uid ({})", sys::euid()));
        }
        if !self.uids.is_empty() {
            parts.push(format!("uids {:?}", self.uids));
        }
        if !self.gids.is_empty() {
            parts.push(format!("gids {:?}", self.gids));
        }
        if self.check.is_some() {
            parts.push("a custom check".to_owned());
        }
        if parts.is_empty() {
            f.write_str("nobody")
        } else {
            f.write_str(&parts.join(" or "))
        }
    }
}

impl fmt::Debug for CredentialPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CredentialPolicy({self})")
    }
}

/// Who the file system lets reach the service's socket (before the credential policy even
/// runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Access {
    /// Only this user: the directory must be mode 0700 and the socket is 0600. The default.
    #[default]
    Owner,
    /// Other users too: the directory may be searchable by others (e.g. 0711; it must still
    /// be ours and writable only by us) and the socket is 0666, so the
    /// [`CredentialPolicy`] alone decides. Needed for policies that admit other uids or gids.
    OtherUsers,
}

/// How a [`Service`] is set up.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    protocol: String,
    versions: RangeInclusive<u32>,
    c2s_max: u64,
    s2c_max: u64,
    credentials: CredentialPolicy,
    handshake_timeout: Duration,
    max_hello: usize,
    max_pending: usize,
    max_channels: usize,
    max_channels_per_uid: usize,
    max_memory_per_uid: u64,
    runtime_dir: Option<PathBuf>,
    access: Access,
}

impl ServiceConfig {
    /// A service of `protocol` speaking `versions`; rings of 1 MiB each way, same-uid
    /// clients only, a 2 s handshake timeout.
    pub fn new(protocol: impl Into<String>, versions: RangeInclusive<u32>) -> Self {
        ServiceConfig {
            protocol: protocol.into(),
            versions,
            c2s_max: 1 << 20,
            s2c_max: 1 << 20,
            credentials: CredentialPolicy::same_uid(),
            handshake_timeout: Duration::from_secs(2),
            max_hello: 4096,
            max_pending: 64,
            max_channels: DEFAULT_MAX_CHANNELS,
            max_channels_per_uid: DEFAULT_MAX_CHANNELS,
            max_memory_per_uid: DEFAULT_MAX_MEMORY_PER_UID,
            runtime_dir: None,
            access: Access::Owner,
        }
    }

    /// The largest rings, in bytes (header included), client-to-server and
    /// server-to-client: what the IDL computes.
    pub fn ring_sizes(mut self, client_to_server: u64, server_to_client: u64) -> Self {
        self.c2s_max = client_to_server;
        self.s2c_max = server_to_client;
        self
    }

    /// Who may connect (default: [`CredentialPolicy::same_uid`]).
    pub fn credentials(mut self, policy: CredentialPolicy) -> Self {
        self.credentials = policy;
        self
    }

    /// How long a client has to send its hello (default 2 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// The largest hello body accepted, in bytes (default 4096, at most 64 KiB).
    pub fn max_hello_size(mut self, bytes: usize) -> Self {
        self.max_hello = bytes.min(handshake::MAX_BODY);
        self
    }

    /// How many handshakes may be in progress at once (default 64; at least 1). A connection
    /// beyond it first lets every pending handshake whose hello has arrived complete; if that
    /// leaves too many, the oldest handshake of the uid that holds the most is refused as
    /// [`RefusalCode::Busy`]. So connections that never complete their handshake cannot keep
    /// another uid's clients out, nor a newer client of their own uid whose hello arrives.
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending = n.max(1);
        self
    }

    /// How many channels this service's clients may hold at once, all clients together
    /// (default 128; at least 1). A channel counts from its welcome until the server drops
    /// it (the event loop drops a channel whose client died). Beyond it a client is refused
    /// with [`RefusalCode::Limit`]. Each channel holds 7 fds and up to both ring maxima of
    /// memory in this process.
    pub fn max_channels(mut self, n: usize) -> Self {
        self.max_channels = n.max(1);
        self
    }

    /// How many channels the clients of one uid may hold at once (default: as many as
    /// [`max_channels`](Self::max_channels); at least 1): with a policy that admits other
    /// users, one of them cannot take every channel.
    pub fn max_channels_per_uid(mut self, n: usize) -> Self {
        self.max_channels_per_uid = n.max(1);
        self
    }

    /// The most ring memory (both rings' maxima, summed over its live channels) the clients
    /// of one uid may make this service create (default 1 GiB). A client is refused with
    /// [`RefusalCode::Limit`] when its new channel would pass it.
    pub fn max_memory_per_uid(mut self, bytes: u64) -> Self {
        self.max_memory_per_uid = bytes;
        self
    }

    /// The directory for the socket instead of the per-user default (see the
    /// [module docs](self)).
    pub fn runtime_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runtime_dir = Some(dir.into());
        self
    }

    /// Who the file system lets reach the socket (default [`Access::Owner`]).
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }
}

/// How [`connect`] reaches a service.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    protocol: String,
    versions: RangeInclusive<u32>,
    c2s_max: u64,
    s2c_max: u64,
    trust: CredentialPolicy,
    timeout: Duration,
    runtime_dir: Option<PathBuf>,
    activation: bool,
}

impl ClientConfig {
    /// A client of `protocol` speaking `versions`; accepts rings up to 1 MiB each way,
    /// trusts servers of its own uid or root, gives up after 5 s.
    pub fn new(protocol: impl Into<String>, versions: RangeInclusive<u32>) -> Self {
        ClientConfig {
            protocol: protocol.into(),
            versions,
            c2s_max: 1 << 20,
            s2c_max: 1 << 20,
            trust: CredentialPolicy::same_uid().allow_uid(0),
            timeout: Duration::from_secs(5),
            runtime_dir: None,
            activation: true,
        }
    }

    /// The largest rings accepted, in bytes, client-to-server and server-to-client.
    pub fn ring_sizes(mut self, client_to_server: u64, server_to_client: u64) -> Self {
        self.c2s_max = client_to_server;
        self.s2c_max = server_to_client;
        self
    }

    /// Which servers are trusted (default: same uid or root). A server that does not pass is
    /// an impostor: nothing is sent to it.
    pub fn trust(mut self, policy: CredentialPolicy) -> Self {
        self.trust = policy;
        self
    }

    /// How long connecting and the handshake may take in all (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The directory to find the socket in instead of the per-user default.
    pub fn runtime_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.runtime_dir = Some(dir.into());
        self
    }

    /// Whether [`connect`] asks an activator listening in the runtime directory, which
    /// starts the service if needed and names the uid it must run as (default: on; see
    /// [`crate::activation`]).
    pub fn activation(mut self, on: bool) -> Self {
        self.activation = on;
        self
    }

    /// The trust policy (also applied to the activator).
    pub(crate) fn trust_policy(&self) -> &CredentialPolicy {
        &self.trust
    }
}

/// Why [`Service::bind`] failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BindError {
    /// The name is not a valid service name.
    #[error("invalid service name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The configuration cannot work.
    #[error("invalid service configuration: {0}")]
    InvalidConfig(String),
    /// The runtime directory is unsafe or unusable.
    #[error("unsafe runtime directory {}: {reason}", path.display())]
    RuntimeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The socket path does not fit in a Unix socket address.
    #[error("socket path {} is longer than {MAX_SOCKET_PATH} bytes", path.display())]
    PathTooLong {
        /// The path.
        path: PathBuf,
    },
    /// A live service already holds the name.
    #[error("service name {name:?} is already in use by a running service ({})", path.display())]
    InUse {
        /// The name.
        name: String,
        /// Its socket.
        path: PathBuf,
    },
    /// Something that is not a socket sits at the socket's path; it is left alone.
    #[error("{} exists and is not a socket; not replacing it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Why no channel was accepted.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// No client completed a handshake in time.
    #[error("no client connected before the timeout")]
    Timeout,
    /// The listening socket failed.
    #[error("accepting on the service socket failed: {0}")]
    Io(#[from] io::Error),
}

/// Why [`connect`] failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The name is not a valid service name.
    #[error("invalid service name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No service of that name is running (no socket, or a stale one nobody listens on).
    #[error("no service {name:?} is running (nothing listens at {})", path.display())]
    NotRunning {
        /// The name.
        name: String,
        /// The socket path tried.
        path: PathBuf,
    },
    /// The process listening at the service's path does not pass [`ClientConfig::trust`]:
    /// nothing was sent to it.
    #[error(
        "impostor at {}: the listening process has {actual}, but only {expected} is trusted; \
         nothing was sent to it",
        path.display()
    )]
    Impostor {
        /// The socket path.
        path: PathBuf,
        /// The trust policy, described.
        expected: String,
        /// Who is listening.
        actual: PeerCredentials,
    },
    /// The service refused us, and said why.
    #[error("service {name:?} refused the connection ({code}): {reason}")]
    Refused {
        /// The name.
        name: String,
        /// The reason code.
        code: RefusalCode,
        /// The server's explanation.
        reason: String,
    },
    /// Connecting or the handshake took longer than the timeout.
    #[error("connecting to service {name:?} timed out after {waited:?}")]
    Timeout {
        /// The name.
        name: String,
        /// The timeout.
        waited: Duration,
    },
    /// The service closed the connection in the middle of the handshake.
    #[error("service {name:?} closed the connection during the handshake")]
    Closed {
        /// The name.
        name: String,
    },
    /// The service's answer is not a valid handshake frame.
    #[error("service {name:?} sent an invalid handshake: {source}")]
    Malformed {
        /// The name.
        name: String,
        /// What was wrong.
        source: DecodeError,
    },
    /// The welcome is well-formed but not acceptable (sizes, version, fds).
    #[error("service {name:?} sent an unacceptable welcome: {reason}")]
    BadWelcome {
        /// The name.
        name: String,
        /// What was wrong.
        reason: String,
    },
    /// The configuration cannot work.
    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),
    /// The activator could not make the service available (see [`crate::activation`]).
    #[error(transparent)]
    Activation(#[from] ActivationError),
    /// Mapping a ring the service passed failed (bad seals, bad header...).
    #[error("cannot open the channel's rings: {0}")]
    Ring(#[from] RingError),
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// A client the service refused, kept for [`Service::take_refused`] (logging, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefusedClient {
    /// Who it was, when known.
    pub peer: Option<PeerCredentials>,
    /// Why.
    pub code: RefusalCode,
    /// The text sent to the client.
    pub reason: String,
}

/// A handshake in progress.
struct Pending {
    stream: UnixStream,
    peer: PeerCredentials,
    buf: Vec<u8>,
    deadline: Instant,
}

/// A named service accepting channels. See the [module docs](self).
///
/// Dropping it removes its socket (see `BoundSocket`); channels already accepted live on.
pub struct Service {
    name: String,
    socket: BoundSocket,
    config: ServiceConfig,
    pending: Vec<Pending>,
    next_id: u64,
    refused: VecDeque<RefusedClient>,
    /// The channels accepted, remembered weakly for the status query (`shmctl show`).
    accepted: Vec<Accepted>,
    /// The channels handed out, for the limits: live while the channel holds its `Arc`.
    seats: Vec<Seat>,
}

/// A channel this service accepted, as the status query describes it. Holds no part of the
/// channel alive: once the channel is dropped, its rings no longer upgrade and the entry goes.
struct Accepted {
    id: ChannelId,
    version: u32,
    peer: PeerCredentials,
    c2s: WeakRing,
    s2c: WeakRing,
    /// An [`EventLoop`](crate::EventLoop) serving this channel was asleep waiting for it
    /// when it last woke (its doorbell is disarmed while the loop works, so the ring alone
    /// would always say "awake" to a query the loop answers).
    loop_parked: bool,
}

/// One channel handed out, as the limits count it.
struct Seat {
    uid: u32,
    /// Both rings' maxima.
    bytes: u64,
    live: std::sync::Weak<()>,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("path", &self.socket.path)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// Overrides the default runtime directory for a whole process tree: the activator sets it
/// for the services it starts, so they bind where their clients look.
pub const RUNTIME_DIR_ENV: &str = "SHM_CHANNEL_RUNTIME_DIR";

/// Set by the activator to the service's name when it starts the service as another uid:
/// the service's socket is then bound by the activator (in a directory the service may not
/// even enter) and passed as stdin, and [`Service::bind`] of that name listens on it, so that
/// clients see the service's own credentials. Stdin becomes `/dev/null`.
pub const LISTEN_STDIN_ENV: &str = "SHM_CHANNEL_LISTEN_STDIN";

/// The default runtime directory: `$SHM_CHANNEL_RUNTIME_DIR` (see [`RUNTIME_DIR_ENV`]), else
/// `$XDG_RUNTIME_DIR/shm-channel`, else `/tmp/shm-channel-<euid>`.
pub fn default_runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(RUNTIME_DIR_ENV)
        && Path::new(&d).is_absolute()
    {
        return PathBuf::from(d);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_absolute() => Path::new(&d).join("shm-channel"),
        _ => PathBuf::from(format!("/tmp/shm-channel-{}", sys::euid())),
    }
}

/// Checks a service name: 1..=64 bytes of ASCII letters, digits and `- _ . @ +`, not
/// starting with a dot (so it is safe as a file name, and never the activator's). The error
/// says what is wrong.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("longer than 64 bytes");
    }
    if name.starts_with('.') {
        return Err("starts with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'+'))
    {
        return Err("only ASCII letters, digits and - _ . @ + are allowed");
    }
    Ok(())
}

pub(crate) fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// Creates `dir` (mode 0700) if missing, then checks it is a real directory, ours, and not
/// open to others as `access` requires.
fn ensure_runtime_dir(dir: &Path, access: Access) -> Result<(), BindError> {
    let bad = |reason: String| BindError::RuntimeDir {
        path: dir.to_owned(),
        reason,
    };
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(bad(format!("cannot create it: {e}"))),
    }
    // lstat: a symlink planted in its place is refused, never followed.
    let meta = std::fs::symlink_metadata(dir).map_err(|e| bad(format!("cannot stat it: {e}")))?;
    if !meta.file_type().is_dir() {
        return Err(bad("it is not a directory (a symlink?)".into()));
    }
    let me = sys::euid();
    if meta.uid() != me {
        return Err(bad(format!(
            "it is owned by uid {}, not by us (uid {me}); someone else may have created it to \
             intercept connections: remove it",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    let forbidden = match access {
        Access::Owner => 0o077,
        Access::OtherUsers => 0o022,
    };
    if mode & forbidden != 0 {
        return Err(bad(format!(
            "its mode is {mode:04o}; it must be {} (chmod it or remove it)",
            match access {
                Access::Owner => "0700",
                Access::OtherUsers => "writable by its owner only",
            }
        )));
    }
    Ok(())
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> BindError + 'a {
    move |source| BindError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A listening socket: the socket file is removed when it is dropped, if we hold the name's
/// lock (a socket the activator bound for us stays the activator's to clean up).
#[derive(Debug)]
pub(crate) struct BoundSocket {
    pub(crate) listener: UnixListener,
    /// Holds the name's `flock` for as long as the socket lives.
    lock: Option<File>,
    pub(crate) path: PathBuf,
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if self.lock.is_some() {
            // We still hold the lock, so the socket at the path is ours.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A name held in a runtime directory: its lock taken, its socket path free (a dead holder's
/// socket removed), nothing bound yet.
#[derive(Debug)]
pub(crate) struct Claim {
    pub(crate) lock: File,
    pub(crate) path: PathBuf,
}

/// Takes the name's lock in `dir` and replaces a dead holder's socket: what binding a service,
/// the activator's socket, or a socket for a service to adopt all start with.
pub(crate) fn claim_name(dir: &Path, name: &str, access: Access) -> Result<Claim, BindError> {
    ensure_runtime_dir(dir, access)?;
    let path = socket_path(dir, name);
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(BindError::PathTooLong { path });
    }

    let lock_path = dir.join(format!("{name}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io_err("open lock file", &lock_path))?;
    let in_use = || BindError::InUse {
        name: name.to_owned(),
        path: path.clone(),
    };
    if !sys::try_lock_exclusive(&lock).map_err(io_err("lock", &lock_path))? {
        return Err(in_use());
    }
    // We own the name now. A socket left at the path belongs to a dead holder, unless a
    // process that does not use the lock listens there: ask it.
    match std::fs::symlink_metadata(&path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(BindError::NotASocket { path });
            }
            match sys::connect_unix(&path) {
                Ok(_) => return Err(in_use()),
                // Refused (nobody listens) or vanished: stale.
                Err(_) => std::fs::remove_file(&path)
                    .or_else(|e| match e.kind() {
                        io::ErrorKind::NotFound => Ok(()),
                        _ => Err(e),
                    })
                    .map_err(io_err("remove stale socket", &path))?,
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("stat", &path)(e)),
    }
    Ok(Claim { lock, path })
}

/// Gives the socket file at `path` the mode `access` asks for.
pub(crate) fn set_socket_mode(path: &Path, access: Access) -> Result<(), BindError> {
    let mode = match access {
        Access::Owner => 0o600,
        Access::OtherUsers => 0o666,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))
}

/// Claims the name in `dir` and listens (non-blocking) at `<dir>/<name>.sock`: what
/// [`Service::bind`] and the activator share.
pub(crate) fn bind_listener(
    dir: &Path,
    name: &str,
    access: Access,
) -> Result<BoundSocket, BindError> {
    let Claim { lock, path } = claim_name(dir, name, access)?;
    let listener = UnixListener::bind(&path).map_err(io_err("bind", &path))?;
    set_socket_mode(&path, access)?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("set_nonblocking", &path))?;
    Ok(BoundSocket {
        listener,
        lock: Some(lock),
        path,
    })
}

/// Listens on the socket an activator bound for this service at `<dir>/<name>.sock` and
/// passed as stdin (see [`LISTEN_STDIN_ENV`]). The activator holds the name's lock.
fn adopt_listener(dir: &Path, name: &str) -> Result<BoundSocket, BindError> {
    let path = socket_path(dir, name);
    let listener = sys::adopt_stdin_listener(&path).map_err(io_err(
        "listen on the socket the activator passed as stdin",
        &path,
    ))?;
    Ok(BoundSocket {
        listener,
        lock: None,
        path,
    })
}

impl Service {
    /// Listens as `name`. Fails when a live service holds the name; replaces the socket of a
    /// dead one.
    pub fn bind(name: &str, config: ServiceConfig) -> Result<Service, BindError> {
        validate_name(name).map_err(|reason| BindError::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        check_common_config(&config.protocol, &config.versions)
            .map_err(BindError::InvalidConfig)?;
        if config.c2s_max < PAGE_SIZE || config.s2c_max < PAGE_SIZE {
            return Err(BindError::InvalidConfig(format!(
                "ring sizes must be at least one page ({PAGE_SIZE} bytes)"
            )));
        }
        let dir = config
            .runtime_dir
            .clone()
            .unwrap_or_else(default_runtime_dir);
        // Started by an activator as another uid: it bound our socket, we listen on it.
        let socket = if std::env::var_os(LISTEN_STDIN_ENV).is_some_and(|v| v == name) {
            adopt_listener(&dir, name)?
        } else {
            bind_listener(&dir, name, config.access)?
        };
        Ok(Service {
            name: name.to_owned(),
            socket,
            config,
            pending: Vec::new(),
            next_id: 1,
            refused: VecDeque::new(),
            accepted: Vec::new(),
            seats: Vec::new(),
        })
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.socket.path
    }

    /// Channels handed out and not dropped yet (what [`ServiceConfig::max_channels`]
    /// counts).
    pub fn live_channels(&self) -> usize {
        self.seats
            .iter()
            .filter(|s| s.live.strong_count() > 0)
            .count()
    }

    /// Handshakes in progress.
    pub fn pending_handshakes(&self) -> usize {
        self.pending.len()
    }

    /// The next channel whose handshake completes, waiting up to `timeout`. Clients that fail
    /// their handshake (bad credentials, garbage, silence...) are refused, recorded (see
    /// [`take_refused`](Self::take_refused)) and skipped: they never make this fail. Never
    /// panics and never blocks past `timeout` (each step is non-blocking).
    pub fn accept_timeout(&mut self, timeout: Duration) -> Result<Channel, AcceptError> {
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if let Some(channel) = self.progress()? {
                return Ok(channel);
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(AcceptError::Timeout);
            }
            // Sleep until something is readable, the first pending handshake expires, or
            // our own deadline.
            let mut wake = deadline;
            for p in &self.pending {
                wake = Some(wake.map_or(p.deadline, |w| w.min(p.deadline)));
            }
            let wait = wake.map(|w| w.saturating_duration_since(now));
            let mut fds: Vec<BorrowedFd<'_>> = vec![self.socket.listener.as_fd()];
            fds.extend(self.pending.iter().map(|p| p.stream.as_fd()));
            sys::poll_many(&fds, wait)?;
        }
    }

    /// Waits as long as it takes for the next channel (see
    /// [`accept_timeout`](Self::accept_timeout)).
    pub fn accept(&mut self) -> Result<Channel, AcceptError> {
        self.accept_timeout(Duration::MAX)
    }

    /// A channel whose handshake completes now, if any; never waits. Call it when
    /// [`as_fd`](AsFd::as_fd) or a pending handshake is readable, or periodically: pending
    /// handshakes only progress (and time out) inside `accept*` calls.
    pub fn try_accept(&mut self) -> Result<Option<Channel>, AcceptError> {
        self.progress()
    }

    /// The clients refused since the last call (at most the last 256).
    pub fn take_refused(&mut self) -> Vec<RefusedClient> {
        self.refused.drain(..).collect()
    }

    /// One non-blocking round: accepts new connections, reads pending hellos, expires slow
    /// ones. Returns the first channel that completed.
    fn progress(&mut self) -> Result<Option<Channel>, AcceptError> {
        loop {
            match self.socket.listener.accept() {
                Ok((stream, _)) => {
                    self.admit(stream);
                    if self.pending.len() > self.config.max_pending {
                        // Over the limit. First let every handshake that can complete do so
                        // (a client sends its hello right after connecting, so the
                        // newcomer's is usually there already); then drop one that still
                        // waits (see `evict_one`), so stalled connections can never keep
                        // everybody else out.
                        let done = self.advance_pending();
                        while self.pending.len() > self.config.max_pending {
                            self.evict_one();
                        }
                        if done.is_some() {
                            return Ok(done);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The connection died before we took it: not our problem.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                // Out of fds or memory (ENFILE, EMFILE, ENOMEM, ENOBUFS): leave the connection
                // in the backlog for later, and pause briefly so a waiting `accept_timeout`
                // (whose poll sees the listener readable at once) does not spin.
                Err(e) if matches!(e.raw_os_error(), Some(23 | 24 | 12 | 105)) => {
                    std::thread::sleep(Duration::from_millis(1));
                    break;
                }
                Err(e) => return Err(AcceptError::Io(e)),
            }
        }
        Ok(self.advance_pending())
    }

    /// Reads every pending handshake's hello as far as it has arrived, answers those that are
    /// complete, expires slow ones. Returns the first channel that completed (the others wait
    /// for the next call).
    fn advance_pending(&mut self) -> Option<Channel> {
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            match self.read_hello(i) {
                Step::Wait if now >= self.pending[i].deadline => {
                    let p = self.pending.swap_remove(i);
                    let got = p.buf.len();
                    self.refuse(
                        &p.stream,
                        Some(p.peer),
                        RefusalCode::Timeout,
                        format!(
                            "no complete hello within the handshake timeout of {:?} ({got} bytes \
                             received)",
                            self.config.handshake_timeout
                        ),
                    );
                }
                Step::Wait => i += 1,
                Step::Gone => {
                    let p = self.pending.swap_remove(i);
                    self.record(
                        Some(p.peer),
                        RefusalCode::Malformed,
                        format!(
                            "the client closed the connection after {} bytes of hello",
                            p.buf.len()
                        ),
                    );
                }
                Step::Refuse(code, reason) => {
                    let p = self.pending.swap_remove(i);
                    self.refuse(&p.stream, Some(p.peer), code, reason);
                }
                Step::Query(query) => {
                    let p = self.pending.swap_remove(i);
                    self.answer(&p.stream, query);
                }
                Step::Hello(hello) => {
                    let p = self.pending.swap_remove(i);
                    match self.welcome(p.stream, p.peer, &hello) {
                        Ok(channel) => return Some(channel),
                        Err((stream, code, reason)) => {
                            self.refuse(&stream, Some(p.peer), code, reason);
                        }
                    }
                }
            }
        }
        None
    }

    /// Makes room among the pending handshakes: refuses (as [`RefusalCode::Busy`]) the oldest
    /// handshake of the process that holds the most of them within the uid that holds the
    /// most. So a client that opens many connections and never completes them only ever
    /// pushes out its own: another uid's newcomer always finds room, and so does a
    /// newcomer of its own uid from another process, however slow its hello; within a
    /// process, a newcomer is never the one dropped while its older connections still
    /// wait. (Processes in another pid namespace report pid 0 and count as one.)
    fn evict_one(&mut self) {
        let mut per_uid: HashMap<u32, usize> = HashMap::new();
        let mut per_process: HashMap<(u32, u32), usize> = HashMap::new();
        for p in &self.pending {
            *per_uid.entry(p.peer.uid).or_default() += 1;
            *per_process.entry((p.peer.uid, p.peer.pid)).or_default() += 1;
        }
        let uid_count = |p: &PeerCredentials| per_uid.get(&p.uid).copied().unwrap_or(0);
        let process_count =
            |p: &PeerCredentials| per_process.get(&(p.uid, p.pid)).copied().unwrap_or(0);
        // Ties go to the older handshake.
        let victim = self
            .pending
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| {
                uid_count(&a.peer)
                    .cmp(&uid_count(&b.peer))
                    .then(process_count(&a.peer).cmp(&process_count(&b.peer)))
                    .then(b.deadline.cmp(&a.deadline))
            })
            .map(|(i, _)| i);
        let Some(i) = victim else { return };
        let held = self.pending.get(i).map_or(0, |p| process_count(&p.peer));
        let total = self.pending.len();
        let p = self.pending.swap_remove(i);
        let reason = format!(
            "{total} handshakes in progress, over the limit of {} (max_pending_handshakes); \
             this one, the oldest of process {} (uid {}) which holds {held}, was dropped to \
             make room; try again",
            self.config.max_pending, p.peer.pid, p.peer.uid
        );
        self.refuse(&p.stream, Some(p.peer), RefusalCode::Busy, reason);
    }

    /// A new connection: credentials first, before reading any of its bytes.
    fn admit(&mut self, stream: UnixStream) {
        let peer = match PeerCredentials::of(stream.as_fd()) {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("cannot read the client's credentials: {e}");
                self.refuse(&stream, None, RefusalCode::Internal, reason);
                return;
            }
        };
        if !self.config.credentials.allows(&peer) {
            let reason = format!(
                "credentials refused: the client ({peer}) does not pass the service's \
                 policy ({})",
                self.config.credentials
            );
            self.refuse(&stream, Some(peer), RefusalCode::Credentials, reason);
            return;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            self.refuse(
                &stream,
                Some(peer),
                RefusalCode::Internal,
                format!("socket setup failed: {e}"),
            );
            return;
        }
        self.pending.push(Pending {
            stream,
            peer,
            buf: Vec::new(),
            deadline: Instant::now() + self.config.handshake_timeout,
        });
    }

    /// Reads what has arrived of pending handshake `i`'s hello, never more than the frame.
    fn read_hello(&mut self, i: usize) -> Step {
        let max = self.config.max_hello;
        let p = &mut self.pending[i];
        loop {
            let want = match handshake::frame_len(&p.buf, max) {
                Ok(None) => handshake::HEADER_LEN,
                Ok(Some(n)) => n,
                Err(e) => return refuse_decode(e),
            };
            if p.buf.len() >= want {
                return match handshake::decode_request(&p.buf, max) {
                    Ok(Request::Hello(h)) => Step::Hello(h),
                    Ok(Request::Query(q)) => Step::Query(q),
                    Err(e) => refuse_decode(e),
                };
            }
            let mut chunk = [0u8; 512];
            let n = (want - p.buf.len()).min(chunk.len());
            match (&p.stream).read(&mut chunk[..n]) {
                Ok(0) => return Step::Gone,
                Ok(k) => p.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Gone,
            }
        }
    }

    /// Negotiates, builds the channel and sends the welcome; on failure hands the stream
    /// back with the refusal to send.
    fn welcome(
        &mut self,
        stream: UnixStream,
        peer: PeerCredentials,
        hello: &Hello,
    ) -> Result<Channel, (UnixStream, RefusalCode, String)> {
        let cfg = &self.config;
        if hello.protocol != cfg.protocol {
            let reason = format!(
                "this service speaks protocol {:?}, the client asked for {:?}",
                cfg.protocol, hello.protocol
            );
            return Err((stream, RefusalCode::WrongProtocol, reason));
        }
        let (lo, hi) = (*cfg.versions.start(), *cfg.versions.end());
        let version = hi.min(hello.max_version);
        if version < lo.max(hello.min_version) {
            let reason = format!(
                "no common version: this service speaks {lo}..={hi}, the client {}..={}",
                hello.min_version, hello.max_version
            );
            return Err((stream, RefusalCode::NoCommonVersion, reason));
        }
        // Each ring: the smaller maximum, in whole pages; at least one page.
        let size = |ours: u64, theirs: u64| (ours.min(theirs) / PAGE_SIZE) * PAGE_SIZE;
        let (c2s, s2c) = (
            size(cfg.c2s_max, hello.c2s_max),
            size(cfg.s2c_max, hello.s2c_max),
        );
        if c2s < PAGE_SIZE || s2c < PAGE_SIZE {
            let reason = format!(
                "the client accepts rings of at most {} (client to server) and {} (server to \
                 client) bytes; at least one page ({PAGE_SIZE} bytes) is needed",
                hello.c2s_max, hello.s2c_max
            );
            return Err((stream, RefusalCode::RingSizes, reason));
        }
        if let Err(reason) = self.check_limits(peer.uid, c2s + s2c) {
            return Err((stream, RefusalCode::Limit, reason));
        }
        let id = ChannelId(self.next_id);
        self.next_id += 1;
        let parts = match self.make_parts(id, version, c2s, s2c) {
            Ok(parts) => parts,
            Err(e) => {
                let reason = format!("cannot create the channel: {e}");
                return Err((stream, RefusalCode::Internal, reason));
            }
        };
        let (c2s_ring, s2c_ring, bells) = parts;
        // Done before the welcome goes out, so nothing can fail after it.
        let setup = c2s_ring.reader().and_then(|rx| {
            attach_doorbells(&c2s_ring, &bells[0], &bells[1], &stream)?;
            attach_doorbells(&s2c_ring, &bells[2], &bells[3], &stream)?;
            Ok(rx)
        });
        let rx = match setup {
            Ok(rx) => rx,
            Err(e) => {
                let reason = format!("cannot create the channel: {e}");
                return Err((stream, RefusalCode::Internal, reason));
            }
        };
        let welcome = Welcome {
            version,
            channel_id: id.0,
            c2s_max: c2s_ring.max_size(),
            s2c_max: s2c_ring.max_size(),
            fd_count: handshake::WELCOME_FDS,
            pid: sys::pid(),
        };
        let bytes = handshake::encode_welcome(&welcome);
        let sent = match (c2s_ring.fd(), s2c_ring.fd()) {
            (Some(a), Some(b)) => {
                let fds = [
                    a,
                    b,
                    bells[0].as_fd(),
                    bells[1].as_fd(),
                    bells[2].as_fd(),
                    bells[3].as_fd(),
                ];
                send_all(&stream, &bytes, &fds)
            }
            _ => Err(io::Error::other("ring without a memfd")),
        };
        if let Err(e) = sent {
            let reason = format!("sending the welcome failed: {e}");
            return Err((stream, RefusalCode::Internal, reason));
        }
        // Forget channels dropped since (the list stays as long as the live channels).
        self.accepted
            .retain(|a| a.c2s.is_alive() && a.s2c.is_alive());
        self.accepted.push(Accepted {
            id,
            version,
            peer,
            c2s: c2s_ring.downgrade(),
            s2c: s2c_ring.downgrade(),
            loop_parked: false,
        });
        let [c2s_reader, c2s_writer, s2c_reader, s2c_writer] = bells;
        let seat = Arc::new(());
        self.seats.retain(|s| s.live.strong_count() > 0);
        self.seats.push(Seat {
            uid: peer.uid,
            bytes: c2s + s2c,
            live: Arc::downgrade(&seat),
        });
        Ok(Channel::new(ChannelParts {
            id,
            side: Side::Server,
            version,
            protocol: cfg.protocol.clone(),
            peer,
            tx_ring: s2c_ring,
            rx_ring: c2s_ring,
            rx,
            doorbells: Doorbells {
                rx_reader_wake: c2s_reader,
                rx_writer_wake: c2s_writer,
                tx_reader_wake: s2c_reader,
                tx_writer_wake: s2c_writer,
            },
            socket: stream,
            seat: Some(seat),
        }))
    }

    /// Whether a new channel of `bytes` of rings for a client of `uid` stays within the
    /// limits; else the reason to send.
    fn check_limits(&self, uid: u32, bytes: u64) -> Result<(), String> {
        let cfg = &self.config;
        let live = || self.seats.iter().filter(|s| s.live.strong_count() > 0);
        let total = live().count();
        if total >= cfg.max_channels {
            return Err(format!(
                "the service holds {total} channels, its limit (max_channels {})",
                cfg.max_channels
            ));
        }
        let (mine, memory) = live()
            .filter(|s| s.uid == uid)
            .fold((0usize, 0u64), |(n, m), s| {
                (n + 1, m.saturating_add(s.bytes))
            });
        if mine >= cfg.max_channels_per_uid {
            return Err(format!(
                "uid {uid} holds {mine} channels, the limit per uid (max_channels_per_uid {})",
                cfg.max_channels_per_uid
            ));
        }
        if memory.saturating_add(bytes) > cfg.max_memory_per_uid {
            return Err(format!(
                "uid {uid} holds channels with {memory} bytes of rings; {bytes} more would pass \
                 the limit per uid (max_memory_per_uid {})",
                cfg.max_memory_per_uid
            ));
        }
        Ok(())
    }

    /// The two rings and four doorbells (c2s reader, c2s writer, s2c reader, s2c writer).
    fn make_parts(
        &self,
        id: ChannelId,
        version: u32,
        c2s: u64,
        s2c: u64,
    ) -> Result<(Ring, Ring, [Doorbell; 4]), Box<dyn std::error::Error>> {
        let ring = |dir: &str, max: u64| {
            let config = RingConfig {
                protocol_name: self.config.protocol.clone(),
                protocol_version: u64::from(version),
                max_size: max,
            };
            Ring::create_memfd(
                &format!("shm-channel:{}:{}:{dir}", self.name, id.0),
                &config,
            )
        };
        let c2s_ring = ring("c2s", c2s)?;
        let s2c_ring = ring("s2c", s2c)?;
        let bells = [
            Doorbell::new()?,
            Doorbell::new()?,
            Doorbell::new()?,
            Doorbell::new()?,
        ];
        Ok((c2s_ring, s2c_ring, bells))
    }

    /// Answers a control query (`shmctl`, the activator's probe) and closes the connection.
    /// Best effort and never recorded as a refusal: the asker may already be gone.
    fn answer(&mut self, stream: &UnixStream, query: Query) {
        let bytes = match query.what {
            QueryKind::Ping => handshake::encode_pong(&handshake::Pong {
                nonce: query.nonce,
                pid: sys::pid(),
            }),
            QueryKind::Status => handshake::encode_status(&self.status()),
        };
        // A fresh socket's send buffer holds a status frame (at most ~33 KiB) whole.
        let _ = send_all(stream, &bytes, &[]);
        let _ = sys::shutdown(stream.as_fd());
    }

    /// Called by the event loop when it wakes: which channels it was asleep waiting for
    /// (reported as parked by the status query it may be about to answer).
    pub(crate) fn note_loop_parked(&mut self, parked: impl Fn(ChannelId) -> bool) {
        for a in &mut self.accepted {
            a.loop_parked = parked(a.id);
        }
    }

    /// The service and its live channels, for the status query; forgets dropped channels.
    fn status(&mut self) -> handshake::Status {
        let mut channels = Vec::new();
        self.accepted.retain(|a| {
            let (Some(c2s), Some(s2c)) = (a.c2s.upgrade(), a.s2c.upgrade()) else {
                return false;
            };
            let mut c2s = c2s.stat();
            c2s.reader_parked |= a.loop_parked;
            channels.push(handshake::ChannelStat {
                id: a.id.0,
                version: a.version,
                peer_pid: a.peer.pid,
                peer_uid: a.peer.uid,
                c2s,
                s2c: s2c.stat(),
            });
            true
        });
        handshake::Status {
            service: self.name.clone(),
            protocol: self.config.protocol.clone(),
            min_version: *self.config.versions.start(),
            max_version: *self.config.versions.end(),
            pid: sys::pid(),
            c2s_max: self.config.c2s_max,
            s2c_max: self.config.s2c_max,
            live_channels: u32::try_from(channels.len()).unwrap_or(u32::MAX),
            channels,
        }
    }

    /// Records a refusal and tells the client (best effort: it may be gone or not reading).
    fn refuse(
        &mut self,
        stream: &UnixStream,
        peer: Option<PeerCredentials>,
        code: RefusalCode,
        reason: String,
    ) {
        send_refusal(stream, code, reason.clone());
        self.record(peer, code, reason);
    }

    fn record(&mut self, peer: Option<PeerCredentials>, code: RefusalCode, reason: String) {
        if self.refused.len() >= MAX_REFUSED_KEPT {
            self.refused.pop_front();
        }
        self.refused.push_back(RefusedClient { peer, code, reason });
    }
}

impl AsFd for Service {
    /// The listening socket: readable when a client is waiting to be accepted.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.listener.as_fd()
    }
}

/// Tells a client why it is refused and closes the connection (best effort: it may be gone
/// or not reading).
pub(crate) fn send_refusal(stream: &UnixStream, code: RefusalCode, reason: String) {
    let bytes = handshake::encode_refusal(&Refusal { code, reason });
    // The socket is fresh, so its send buffer has room for this small frame; if not, the
    // client was not going to read it anyway.
    let _ = sys::send_bytes(stream.as_fd(), &bytes);
    let _ = sys::shutdown(stream.as_fd());
}

/// What reading a pending hello found.
enum Step {
    Wait,
    Gone,
    Refuse(RefusalCode, String),
    Hello(Hello),
    Query(Query),
}

fn refuse_decode(e: DecodeError) -> Step {
    let code = match e {
        DecodeError::TooLarge { .. } => RefusalCode::TooLarge,
        _ => RefusalCode::Malformed,
    };
    Step::Refuse(code, format!("bad hello: {e}"))
}

/// Sends the whole frame, the fds with its first byte. The socket is non-blocking and fresh
/// (its send buffer holds far more than a welcome), so a full buffer is reported, not waited
/// on.
fn send_all(stream: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut sent = sys::send_with_fds(stream.as_fd(), bytes, fds)?;
    while sent < bytes.len() {
        sent += sys::send_bytes(stream.as_fd(), &bytes[sent..])?;
    }
    Ok(())
}

fn check_common_config(protocol: &str, versions: &RangeInclusive<u32>) -> Result<(), String> {
    if protocol.is_empty() || protocol.len() > handshake::MAX_PROTOCOL_NAME {
        return Err(format!(
            "the protocol name must be 1..=64 bytes, {:?} is {}",
            protocol,
            protocol.len()
        ));
    }
    if versions.start() > versions.end() {
        return Err(format!("empty version range {versions:?}"));
    }
    Ok(())
}

/// Connects to the service `name`, giving up after the config's timeout. See the
/// [module docs](self) for the handshake.
pub fn connect(name: &str, config: &ClientConfig) -> Result<Channel, ConnectError> {
    connect_timeout(name, config, config.timeout)
}

/// [`connect`] with an explicit timeout for the whole connect and handshake.
pub fn connect_timeout(
    name: &str,
    config: &ClientConfig,
    timeout: Duration,
) -> Result<Channel, ConnectError> {
    validate_name(name).map_err(|reason| ConnectError::InvalidName {
        name: name.to_owned(),
        reason,
    })?;
    check_common_config(&config.protocol, &config.versions).map_err(ConnectError::InvalidConfig)?;
    let start = Instant::now();
    let deadline = start.checked_add(timeout);
    let timed_out = || ConnectError::Timeout {
        name: name.to_owned(),
        waited: timeout,
    };
    let dir = config
        .runtime_dir
        .clone()
        .unwrap_or_else(default_runtime_dir);
    let path = socket_path(&dir, name);
    // An activator, if one listens, starts the service if needed and says who it must be.
    let resolved = if config.activation {
        activation::resolve(&dir, name, config, deadline)?
    } else {
        Resolved::NoActivator
    };
    let not_running = || match resolved {
        Resolved::Unknown => ConnectError::Activation(ActivationError::NoServiceFile {
            name: name.to_owned(),
        }),
        _ => ConnectError::NotRunning {
            name: name.to_owned(),
            path: path.clone(),
        },
    };

    // 1. Connect (a full backlog is retried until the deadline).
    let stream = loop {
        match sys::connect_unix(&path) {
            Ok(sys::Connect::Connected(s)) => break s,
            Ok(sys::Connect::Busy) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(timed_out());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(not_running());
            }
            Err(source) => {
                return Err(ConnectError::Io {
                    op: "connect",
                    source,
                });
            }
        }
    };

    // 2. Who is listening? Checked before a single byte goes out.
    let server = PeerCredentials::of(stream.as_fd()).map_err(|source| ConnectError::Io {
        op: "read the server's credentials",
        source,
    })?;
    // For an activated service, its file's uid decides (the activator passed the trust
    // policy); for any other, the trust policy.
    let (trusted, expected) = match resolved {
        Resolved::Ready { uid } => (
            server.uid == uid,
            format!("uid {uid} (from the service file of {name:?})"),
        ),
        _ => (config.trust.allows(&server), config.trust.to_string()),
    };
    if !trusted {
        return Err(ConnectError::Impostor {
            path,
            expected,
            actual: server,
        });
    }

    // 3. Hello. If the server already refused and closed (credentials), the send fails but
    //    its refusal is waiting to be read: go on to read it.
    let hello = handshake::encode_hello(&Hello {
        protocol: config.protocol.clone(),
        min_version: *config.versions.start(),
        max_version: *config.versions.end(),
        c2s_max: config.c2s_max,
        s2c_max: config.s2c_max,
        pid: sys::pid(),
    })
    .map_err(|e| ConnectError::InvalidConfig(e.to_string()))?;
    let mut sent = 0;
    while sent < hello.len() {
        match sys::send_bytes(stream.as_fd(), &hello[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(timed_out());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }

    // 4. Welcome (with the fds) or refusal.
    let mut buf = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let malformed = |source| ConnectError::Malformed {
        name: name.to_owned(),
        source,
    };
    loop {
        let want = match handshake::frame_len(&buf, handshake::MAX_BODY) {
            Ok(None) => handshake::HEADER_LEN,
            Ok(Some(n)) => n,
            Err(e) => return Err(malformed(e)),
        };
        if buf.len() >= want {
            break;
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return Err(timed_out());
        }
        sys::poll_many(&[stream.as_fd()], left)
            .map_err(|source| ConnectError::Io { op: "poll", source })?;
        let mut chunk = [0u8; 512];
        let n = (want - buf.len()).min(chunk.len());
        let room = usize::from(handshake::WELCOME_FDS).saturating_sub(fds.len());
        match sys::recv_with_fds(stream.as_fd(), &mut chunk[..n], room) {
            Ok((0, _)) => {
                return Err(ConnectError::Closed {
                    name: name.to_owned(),
                });
            }
            Ok((k, got)) => {
                buf.extend_from_slice(&chunk[..k]);
                fds.extend(got);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(ConnectError::BadWelcome {
                    name: name.to_owned(),
                    reason: e.to_string(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(ConnectError::Closed {
                    name: name.to_owned(),
                });
            }
            Err(source) => {
                return Err(ConnectError::Io {
                    op: "recvmsg",
                    source,
                });
            }
        }
    }
    let welcome = match handshake::decode_reply(&buf).map_err(malformed)? {
        Reply::Refusal(r) => {
            return Err(ConnectError::Refused {
                name: name.to_owned(),
                code: r.code,
                reason: r.reason,
            });
        }
        Reply::Welcome(w) => w,
    };

    // 5. Check everything in it before using any of it.
    let bad = |reason: String| ConnectError::BadWelcome {
        name: name.to_owned(),
        reason,
    };
    if welcome.fd_count != handshake::WELCOME_FDS || fds.len() != usize::from(welcome.fd_count) {
        return Err(bad(format!(
            "expected {} file descriptors, the welcome announced {} and {} arrived",
            handshake::WELCOME_FDS,
            welcome.fd_count,
            fds.len()
        )));
    }
    if !config.versions.contains(&welcome.version) {
        return Err(bad(format!(
            "version {} is outside the versions this client speaks ({:?})",
            welcome.version, config.versions
        )));
    }
    let fits =
        |got: u64, ours: u64| got >= PAGE_SIZE && got <= ours && got.is_multiple_of(PAGE_SIZE);
    if !fits(welcome.c2s_max, config.c2s_max) || !fits(welcome.s2c_max, config.s2c_max) {
        return Err(bad(format!(
            "ring sizes {} / {} bytes are not whole pages within this client's limits {} / {}",
            welcome.c2s_max, welcome.s2c_max, config.c2s_max, config.s2c_max
        )));
    }
    for fd in &fds[2..] {
        if sys::is_eventfd(fd.as_fd()) == Some(false) {
            return Err(bad("a doorbell is not an eventfd".into()));
        }
    }
    let mut fds = fds.into_iter();
    let mut next = || {
        fds.next()
            .ok_or_else(|| bad("missing file descriptor".into()))
    };
    let (c2s_fd, s2c_fd) = (next()?, next()?);
    let bells = [next()?, next()?, next()?, next()?].map(Doorbell::from_fd);
    let left = deadline.map_or(Duration::MAX, |d| {
        d.saturating_duration_since(Instant::now())
    });
    // open_memfd checks the seals and the header, and maps at most the size we accepted.
    let c2s_ring = Ring::open_memfd(c2s_fd, welcome.c2s_max, left)?;
    let s2c_ring = Ring::open_memfd(s2c_fd, welcome.s2c_max, left)?;
    let rx = s2c_ring.reader()?;
    attach_doorbells(&c2s_ring, &bells[0], &bells[1], &stream)?;
    attach_doorbells(&s2c_ring, &bells[2], &bells[3], &stream)?;
    let [c2s_reader, c2s_writer, s2c_reader, s2c_writer] = bells;
    Ok(Channel::new(ChannelParts {
        id: ChannelId(welcome.channel_id),
        side: Side::Client,
        version: welcome.version,
        protocol: config.protocol.clone(),
        peer: server,
        tx_ring: c2s_ring,
        rx_ring: s2c_ring,
        rx,
        doorbells: Doorbells {
            rx_reader_wake: s2c_reader,
            rx_writer_wake: s2c_writer,
            tx_reader_wake: c2s_reader,
            tx_writer_wake: c2s_writer,
        },
        socket: stream,
        seat: None,
    }))
}

/// Entry points for the fuzz targets over the handshake decoders (the bytes a peer controls);
/// not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::handshake;

    /// Runs every decoder a server applies to a client's bytes; true when `bytes` is a valid
    /// hello.
    pub fn server_decodes(bytes: &[u8], max_hello: usize) -> bool {
        let _ = handshake::frame_len(bytes, max_hello);
        // The activator reads an activate frame where a service reads a hello or a query.
        let _ = handshake::decode_activate(bytes);
        let _ = handshake::decode_request(bytes, max_hello);
        handshake::decode_hello(bytes, max_hello).is_ok()
    }

    /// Runs the decoders a client applies to a server's bytes (a welcome or refusal, a
    /// status, a pong, an activation outcome); true when `bytes` is a valid welcome or
    /// refusal.
    pub fn client_decodes(bytes: &[u8]) -> bool {
        let _ = handshake::frame_len(bytes, handshake::MAX_BODY);
        let _ = handshake::decode_status(bytes);
        let _ = handshake::decode_pong(bytes);
        let _ = handshake::decode_outcome(bytes);
        handshake::decode_reply(bytes).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"x".repeat(65), "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "display",
            "org.example.Display-2",
            "a_b@c+d",
            &"x".repeat(64),
        ] {
            assert!(validate_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn policy_rules_and_description() {
        let me = sys::euid();
        let peer = |uid, gid| PeerCredentials::new(1, uid, gid);
        let p = CredentialPolicy::same_uid();
        assert!(p.allows(&peer(me, 5)));
        assert!(!p.allows(&peer(me + 1, 5)));
        let p = CredentialPolicy::nobody().allow_uid(7).allow_gid(9);
        assert!(p.allows(&peer(7, 0)) && p.allows(&peer(8, 9)) && !p.allows(&peer(8, 8)));
        assert_eq!(p.to_string(), "uids [7] or gids [9]");
        let p = CredentialPolicy::nobody().allow_if(|c| c.pid == 1);
        assert!(p.allows(&peer(100, 100)));
        assert_eq!(CredentialPolicy::nobody().to_string(), "nobody");
    }
}
