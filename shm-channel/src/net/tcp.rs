//! The tokio driver: runs the sans-io core over TCP sockets.
//!
//! Each connection is two tasks, after quinn's `ConnectionDriver`: a reader that feeds the
//! socket's bytes to the state machine, and a writer that loops over its frames and
//! timers until neither has work, then sleeps until a new message, a byte read or a
//! deadline wakes it. The reader never waits for the writer (nor the reverse), so two
//! peers that both send large messages cannot deadlock on full socket buffers.
//!
//! The socket is a plain [`TcpStream`] or, with TLS configured, a rustls stream over it
//! (the driver is generic over the stream); a client may reach its destination through a
//! SOCKS5 proxy first ([`ClientConfig::socks5`]).
//!
//! - [`NetClient`]: the pool of connections to one destination, as an RPC
//!   [`Transport`] / [`AsyncTransport`](crate::rpc::AsyncTransport): generated clients reach a service over TCP by
//!   changing only how they connect.
//! - [`NetServer`]: a listener that serves one or more protocols, handing each request
//!   to its protocol's handler (the RPC server's dispatch: panics contained, error
//!   replies, unknown methods).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{Instrument, Span};

use super::conn::{ConnConfig, ConnError, ConnEvent, ConnStats, Connection, Delivery, OutMessage};
use super::frame::ProtocolSpec;
use super::pool::{Canceled, ConnId, Failure, Pool, PoolAction, PoolConfig, PoolEvent};
use super::socks::Socks5Proxy;
use super::stats::{Counters, NetStats, bump};
use super::stream::{NetStream, Piece, ReaderSource};
use super::tls::{ClientTls, PeerIdentity, ServerTls};
use super::transmit::{Transmit, TransmitBuf};
use crate::ChannelId;
use crate::rpc::server::dispatch;
use crate::rpc::{
    ERROR_OBJECT, EventHub, HandlerResult, IncomingMessage, LocalFailure, ObjectSink, Outgoing,
    RequestView, Responder, Transport, TransportError, TransportSender, flags as rpc_flags,
};
use shm_layout::{Kind, MessageHeader, MessageView, MessageWriter};

/// What is left of a caller's deadline; without one, an hour (the waits below loop
/// and re-check their condition, so a long wait is only an upper bound).
fn time_left(deadline: Option<Instant>) -> Duration {
    match deadline {
        Some(d) => d.saturating_duration_since(Instant::now()),
        None => Duration::from_secs(3600),
    }
}

/// One wait on `cv` bounded by the caller's deadline: `Timeout` once it has passed.
/// The caller re-checks its condition after each return (spurious wake-ups).
fn wait_until<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    deadline: Option<Instant>,
) -> Result<MutexGuard<'a, T>, TransportError> {
    let left = time_left(deadline);
    if left.is_zero() {
        return Err(TransportError::Timeout);
    }
    Ok(cv
        .wait_timeout(guard, left)
        .unwrap_or_else(PoisonError::into_inner)
        .0)
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; the state stays consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This process's instance id: random, drawn once, in every handshake.
pub fn process_instance() -> u128 {
    static ID: OnceLock<u128> = OnceLock::new();
    *ID.get_or_init(rand::random)
}

/// A received message, owned (the connection's receive buffer is handed over whole).
#[derive(Debug, Clone)]
pub struct NetMessage {
    header: MessageHeader,
    bytes: Vec<u8>,
    flags: u64,
}

impl NetMessage {
    /// Validated bytes from the connection; the peer may not set [`rpc_flags::LOCAL`].
    fn from_wire(bytes: Vec<u8>) -> Option<Self> {
        let header = *MessageView::parse(&bytes).ok()?.header();
        let flags = header.flags & shm_layout::flags::APP_MASK & !rpc_flags::LOCAL;
        Some(NetMessage {
            header,
            bytes,
            flags,
        })
    }

    /// A reply made up here: the call `request_id` failed in transit.
    fn local_failure(request_id: u64, failure: &Failure) -> Self {
        let code = match failure {
            Failure::PeerRestarted => LocalFailure::PeerRestarted,
            Failure::ConnectionLost(_) => LocalFailure::ConnectionLost,
            Failure::Canceled => LocalFailure::Canceled,
            Failure::NotConnected => LocalFailure::NotConnected,
            _ => LocalFailure::Other,
        };
        let mut payload = vec![code as u8];
        payload.extend_from_slice(failure.to_string().as_bytes());
        let bytes = build(
            &Outgoing::new(0, Kind::Reply)
                .request_id(request_id)
                .flags(rpc_flags::LOCAL),
            &[payload.len() as u64],
            &mut |sink| {
                sink.object(ERROR_OBJECT, payload.len() as u64)?
                    .copy_from_slice(&payload);
                Ok(())
            },
        )
        // Built from lengths computed just above: it cannot fail.
        .unwrap_or_default();
        let mut m = NetMessage::from_wire(bytes).unwrap_or(NetMessage {
            header: MessageHeader::new(0, Kind::Reply, 0, request_id),
            bytes: Vec::new(),
            flags: 0,
        });
        m.flags |= rpc_flags::LOCAL;
        m
    }

    /// The whole message, header included.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn view(&self) -> MessageView<'_> {
        MessageView::from_validated(self.header, &self.bytes)
    }
}

impl IncomingMessage for NetMessage {
    fn message_id(&self) -> u64 {
        self.header.message_id
    }

    fn kind(&self) -> Kind {
        self.header.kind().unwrap_or(Kind::Raw)
    }

    fn request_id(&self) -> u64 {
        self.header.request_id
    }

    fn flags(&self) -> u64 {
        self.flags
    }

    fn object(&self, id: u64) -> Option<&[u8]> {
        self.view().object(id)
    }

    fn object_at(&self, index: usize) -> Option<(u64, &[u8])> {
        match self.view().objects().nth(index) {
            Some(Ok(o)) => Some((o.id, o.data)),
            _ => None,
        }
    }

    fn object_count(&self) -> usize {
        self.header.object_count as usize
    }
}

/// Writes a message into a fresh buffer: the ring's bytes, for the wire.
fn build(
    out: &Outgoing,
    object_lens: &[u64],
    fill: &mut dyn FnMut(&mut dyn ObjectSink) -> Result<(), TransportError>,
) -> Result<Vec<u8>, TransportError> {
    let len =
        shm_layout::message_len(object_lens.iter().copied()).ok_or(TransportError::TooLarge {
            size: u64::MAX,
            max: u64::MAX,
        })?;
    let len = usize::try_from(len).map_err(|_| TransportError::TooLarge {
        size: len,
        max: usize::MAX as u64,
    })?;
    let mut buf = vec![0u8; len];
    let mut header = MessageHeader::new(
        out.message_id,
        out.kind,
        object_lens.len() as u64,
        out.request_id,
    );
    header.flags |= out.flags & shm_layout::flags::APP_MASK;
    let mut writer =
        MessageWriter::new(&mut buf, header).map_err(|e| TransportError::Layout(e.to_string()))?;
    struct Sink<'w, 'b> {
        w: &'w mut MessageWriter<'b>,
        lens: &'w [u64],
        next: usize,
    }
    impl ObjectSink for Sink<'_, '_> {
        fn object(&mut self, id: u64, len: u64) -> Result<&mut [u8], TransportError> {
            if self.lens.get(self.next) != Some(&len) {
                return Err(TransportError::Layout(format!(
                    "object {} of {len} bytes was announced as {:?}",
                    self.next,
                    self.lens.get(self.next)
                )));
            }
            self.next += 1;
            self.w
                .object_mut(id, len)
                .map_err(|e| TransportError::Layout(e.to_string()))
        }
    }
    let mut sink = Sink {
        w: &mut writer,
        lens: object_lens,
        next: 0,
    };
    fill(&mut sink)?;
    writer
        .finish()
        .map_err(|e| TransportError::Layout(e.to_string()))?;
    Ok(buf)
}

/// The delivery a message asks for through its RPC flag bits.
fn delivery_of(flags: u64, table: &HashMap<u64, Delivery>, message_id: u64) -> Delivery {
    if flags & rpc_flags::ONE_SHOT != 0 {
        Delivery::OneShot
    } else if flags & rpc_flags::IDEMPOTENT != 0 {
        Delivery::Idempotent
    } else if flags & rpc_flags::ORDERED != 0 {
        Delivery::Ordered
    } else {
        table.get(&message_id).copied().unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// The connection tasks, shared by both sides.

/// What a connection's tasks need from whoever owns the state machine.
pub(super) trait Host: Send + Sync + 'static {
    /// Runs `f` on the connection (`None` once it is gone), then collects what it did.
    fn with<R>(&self, f: impl FnOnce(&mut Connection, Instant) -> R) -> Option<R>;
    /// The socket is closed and dropped.
    fn finished(&self);
    /// What wakes a reader paused by [`reading_paused`](Self::reading_paused); `None`: it
    /// never pauses.
    fn backlog_room(&self) -> Option<&Notify> {
        None
    }
    /// Whether the socket should not be read for now (the application is behind).
    fn reading_paused(&self) -> bool {
        false
    }
    /// Whether the connection was given up on with bytes still to write (the peer does
    /// not read): the writer stops waiting for the socket and drops it.
    fn abandoned(&self) -> bool {
        false
    }
    /// What wakes a writer when the connection is abandoned; `None`: it never is.
    fn give_up(&self) -> Option<&Notify> {
        None
    }
}

/// Bytes gathered per socket write: a few frames, so that a huge message still yields to
/// small ones every write.
pub(super) const WRITE_BATCH: usize = 128 * 1024;
/// The connection's send budget over TCP ([`Connection::set_send_budget`]): the bytes
/// taken from the core per socket write. Small enough that a call queued behind a huge
/// message waits for little of it, large enough that a write moves a good batch.
const SEND_BUDGET: usize = 64 * 1024;
/// `TCP_NOTSENT_LOWAT`: the most bytes the kernel holds that it has not sent yet. Without
/// it a socket's send buffer grows to megabytes (Linux autotunes it up to 4 MiB), and
/// every byte of a huge message in there is a byte a small call queued after it waits
/// for; with it, the unsent bytes wait in the core's scheduler, where the call passes
/// them. Bytes in flight (sent, not yet acknowledged) are not limited, so neither is
/// throughput: the kernel asks for more as soon as it sends.
const NOTSENT_LOWAT: u32 = 128 * 1024;
/// Bytes read per socket read.
const READ_CHUNK: usize = 64 * 1024;

/// Sets the options of a connection's socket, dialed or accepted.
fn tune_socket(stream: &TcpStream) {
    // Frames are whole buffers already: Nagle would only add latency to small calls.
    let _ = stream.set_nodelay(true);
    // An option the kernel may lack: the connection works without it, only a small call
    // behind a huge message waits longer.
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
}

/// Writes all of `out` with vectored writes.
async fn write_vectored_all<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut Transmit,
) -> std::io::Result<()> {
    while !out.is_empty() {
        let n = wr.write_vectored(&out.io_slices()).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        out.advance(n);
    }
    Ok(())
}

/// Writes one batch of frames, then flushes: a TLS stream takes the plaintext and may
/// keep the tail of its records when the socket is full (tokio-rustls answers `Ok` then);
/// without the flush they would wait for the next write, and a last request or reply for
/// a keep-alive or a timeout. Over plain TCP the flush does nothing. `flat` is scratch
/// for a stream without vectored writes.
pub(super) async fn write_batch<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut Transmit,
    flat: &mut Vec<u8>,
    vectored: bool,
) -> std::io::Result<()> {
    if vectored {
        write_vectored_all(wr, out).await?;
    } else {
        flat.clear();
        out.flatten_into(flat);
        wr.write_all(flat).await?;
    }
    wr.flush().await
}

/// Runs one connection over `stream` until it closes.
async fn run_connection<S, H>(stream: S, host: Arc<H>, wake: Arc<Notify>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Host,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let reader_host = Arc::clone(&host);
    let reader_wake = Arc::clone(&wake);
    let reader = async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if let Some(room) = reader_host.backlog_room() {
                // Requests wait for the handler: stop reading until it catches up, so
                // TCP's own flow control holds the peer back.
                loop {
                    let notified = room.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if !reader_host.reading_paused() {
                        break;
                    }
                    notified.await;
                }
            }
            let r = rd.read(&mut buf).await;
            let now = Instant::now();
            let done = reader_host.with(|c, _| {
                match &r {
                    Ok(0) => c.handle_eof(),
                    Ok(n) => c.handle_data(now, &buf[..*n]),
                    Err(e) => c.handle_io_error(e.to_string()),
                }
                c.is_closed()
            });
            reader_wake.notify_one();
            if done != Some(false) {
                break;
            }
        }
    };
    let reader = tokio::spawn(reader.in_current_span());
    // Aborted with the writer, too (a killed server's tasks): the read half holds the
    // socket open until the reader goes.
    struct AbortOnDrop(JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let reader = AbortOnDrop(reader);
    // Frames as the core gives them: headers copied, payloads slices of the messages,
    // written with vectored writes (TLS too: rustls encrypts records from the pieces, it
    // does not make one of each); a stream without them gets them flattened into `flat`.
    let mut out = Transmit::new();
    let mut flat = Vec::new();
    let vectored = wr.is_write_vectored();
    host.with(|c, _| c.set_send_budget(Some(SEND_BUDGET)));
    let mut written = 0;
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some((closed, deadline)) = host.with(|c, now| {
            c.handle_written(std::mem::take(&mut written));
            c.handle_timeout(now);
            while out.len() < WRITE_BATCH && c.poll_transmit(now, &mut out) {}
            (c.is_closed(), c.poll_timeout())
        }) else {
            break;
        };
        if !out.is_empty() {
            written = out.len();
            let write = write_batch(&mut wr, &mut out, &mut flat, vectored);
            // A peer that does not read holds the write forever: given up on, the writer
            // stops waiting and drops the socket.
            let sent = tokio::select! {
                r = write => Some(r),
                () = abandoned(&*host) => None,
            };
            match sent {
                None => break,
                Some(Err(e)) => {
                    host.with(|c, _| c.handle_io_error(e.to_string()));
                    break;
                }
                Some(Ok(())) => {}
            }
            continue;
        }
        if closed {
            break;
        }
        match deadline {
            Some(d) => {
                tokio::select! {
                    () = &mut notified => {}
                    () = tokio::time::sleep_until(d.into()) => {}
                }
            }
            None => notified.await,
        }
    }
    if !host.abandoned() {
        // (A TLS shutdown writes, which a peer that does not read would hold forever.)
        let _ = wr.shutdown().await;
    }
    drop(reader);
    host.finished();
}

/// Returns once the host gave the connection up ([`Host::abandoned`]); never for a host
/// that cannot.
async fn abandoned<H: Host>(host: &H) {
    let Some(give_up) = host.give_up() else {
        return std::future::pending().await;
    };
    loop {
        let notified = give_up.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if host.abandoned() {
            return;
        }
        notified.await;
    }
}

// ---------------------------------------------------------------------------------------
// Client.

/// How a [`NetClient`] connects and behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The protocol spoken (the IDL protocol's name and version).
    pub protocol: ProtocolSpec,
    /// The connections' behaviour (buffer size, keep-alive, timeouts, compression).
    pub conn: ConnConfig,
    /// The pool's behaviour (size, growth, backoff).
    pub pool: PoolConfig,
    /// How long one TCP connect may take.
    pub connect_timeout: Duration,
    /// Delivery per message id (what the IDL's `@one_shot`, `@idempotent`, `@ordered` say);
    /// the RPC flag bits of a message override it.
    pub deliveries: HashMap<u64, Delivery>,
    /// The instance id in the handshake (default: [`process_instance`]).
    pub instance: Option<u128>,
    /// TLS over TCP (`tls://`): the server's certificate is verified against
    /// [`ClientTls::roots`] and [`ClientTls::server_name`]; `None`: plain TCP. (QUIC takes
    /// its TLS as an argument of [`NetClient::new_quic`].)
    pub tls: Option<ClientTls>,
    /// Reach the destination through this SOCKS5 proxy (TLS, when set, runs inside the
    /// tunnel, end to end).
    pub socks5: Option<Socks5Proxy>,
}

impl ClientConfig {
    /// Defaults for a client of `protocol`.
    pub fn new(protocol: ProtocolSpec) -> Self {
        ClientConfig {
            protocol,
            conn: ConnConfig::default(),
            pool: PoolConfig::default(),
            connect_timeout: Duration::from_secs(5),
            deliveries: HashMap::new(),
            instance: None,
            tls: None,
            socks5: None,
        }
    }
}

/// What happened to a client's connections (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A connection finished its handshake with this server instance.
    Connected {
        /// The server's instance id.
        instance: u128,
    },
    /// A connect failed.
    ConnectFailed(String),
    /// A connection closed.
    Closed(ConnError),
    /// A message was not delivered.
    Failed {
        /// Its token (the request id of a call).
        token: u64,
        /// Why.
        failure: Failure,
    },
}

/// Who is draining a client's pool events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waker {
    /// The application (sends, cancels, closes).
    User,
    /// The pool task.
    Pool,
    /// A connection's tasks.
    Conn(ConnId),
}

struct ClientCore {
    pool: Pool<SocketAddr>,
    wakes: HashMap<ConnId, Arc<Notify>>,
    /// Each connection's span, and whether its handshake finished.
    spans: HashMap<ConnId, (Span, bool)>,
    next_token: u64,
}

pub(super) struct ClientShared {
    core: Mutex<ClientCore>,
    /// Signalled (with `core`) when the pool's queue has room again, for sends that wait.
    room_cv: Condvar,
    /// Sends waiting on `room_cv` (no signal is paid for when there are none).
    room_waiters: AtomicU32,
    /// The outcome of messages someone waits for ([`Sending`]): `None` while on the way.
    tracked: Mutex<HashMap<u64, Option<Result<(), Failure>>>>,
    tracked_cv: Condvar,
    /// Wakes the pool task (new message, connect result, close).
    pool_wake: Notify,
    inbox: Mutex<VecDeque<NetMessage>>,
    inbox_cv: Condvar,
    inbox_wake: Notify,
    events: Mutex<Vec<ClientEvent>>,
    events_cv: Condvar,
    version: AtomicU32,
    closed: AtomicBool,
    pub(super) config: ClientConfig,
    runtime: tokio::runtime::Handle,
    delivered: AtomicU64,
    /// Runs of the pool task and of the connections' tasks ([`NetClient::wakeups`]).
    wakeups: AtomicU64,
    /// Connection tasks past their connect (what [`NetClient`]'s drop waits for, briefly,
    /// so that their `CLOSE` reaches the peer).
    pub(super) live_conns: AtomicUsize,
    /// What [`NetClient::stats`] reads beside the pool's own counters.
    pub(super) counters: Counters,
    /// The client's span (`net_client{transport, dest, protocol}`), its connections'
    /// spans' parent.
    span: Span,
    /// `tcp`, `tls` or `quic`.
    transport: &'static str,
    /// Connects over QUIC instead of TCP.
    #[cfg(feature = "quic")]
    pub(super) quic: Option<Arc<super::quic::Dialer>>,
    /// TLS over TCP, from [`ClientConfig::tls`].
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl ClientShared {
    /// Runs `f` on the pool, then delivers what came out and wakes who must act.
    pub(super) fn with_pool<R>(&self, f: impl FnOnce(&mut Pool<SocketAddr>) -> R) -> R {
        let mut core = lock(&self.core);
        let r = f(&mut core.pool);
        core.pool.process();
        self.drain_from(&mut core, Waker::User);
        r
    }

    /// Delivers what the pool did and wakes the tasks that may have work, except the
    /// caller (`from`): a task that woke itself would spin.
    fn drain_from(&self, core: &mut ClientCore, from: Waker) {
        let mut inbox = Vec::new();
        let mut events = Vec::new();
        while let Some(e) = core.pool.poll_event() {
            match e {
                PoolEvent::Message { bytes, conn, .. } => {
                    tracing::trace!(conn, len = bytes.len(), "message received");
                    if let Some(m) = NetMessage::from_wire(bytes) {
                        inbox.push(m);
                    }
                }
                PoolEvent::Connected { peer, conn } => {
                    let version = peer.protocols.first().map_or(0, |(_, v)| *v);
                    if version != 0 {
                        self.version.store(version, Ordering::Relaxed);
                    }
                    bump(&self.counters.connections_opened);
                    if let Some((span, opened)) = core.spans.get_mut(&conn) {
                        *opened = true;
                        span.in_scope(|| {
                            tracing::info!(
                                instance = %format_args!("{:032x}", peer.instance),
                                version,
                                buffer = peer.buffer_size,
                                compression = peer.compression,
                                "connected"
                            )
                        });
                    }
                    events.push(ClientEvent::Connected {
                        instance: peer.instance,
                    });
                }
                PoolEvent::ConnectFailed { error, conn } => {
                    bump(&self.counters.connects_failed);
                    let span = core
                        .spans
                        .get(&conn)
                        .map_or_else(Span::none, |s| s.0.clone());
                    span.in_scope(|| tracing::warn!(%error, "connect failed"));
                    events.push(ClientEvent::ConnectFailed(error))
                }
                PoolEvent::Closed { error, conn } => {
                    let (span, opened) = core
                        .spans
                        .get(&conn)
                        .map_or_else(|| (Span::none(), false), |(s, o)| (s.clone(), *o));
                    span.in_scope(|| self.counters.closed(&error, opened, true));
                    events.push(ClientEvent::Closed(error))
                }
                PoolEvent::Sent { token } => {
                    tracing::trace!(token, "message sent");
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    self.settle(token, Ok(()));
                }
                // A client takes no streamed messages (`max_streamed` 0): they arrive
                // reassembled, as `Message`.
                PoolEvent::StreamStarted { .. }
                | PoolEvent::StreamData { .. }
                | PoolEvent::StreamEnded { .. }
                | PoolEvent::StreamAborted { .. } => {}
                PoolEvent::Failed {
                    token,
                    request_id,
                    failure,
                } => {
                    if let Some(id) = request_id {
                        inbox.push(NetMessage::local_failure(id, &failure));
                    }
                    self.count_failure(&failure, token, false, false);
                    self.settle(token, Err(failure.clone()));
                    events.push(ClientEvent::Failed { token, failure });
                }
            }
        }
        // Wake only the tasks with something to do: a connection handed a frame to send
        // (or closed), the pool task when a connect may be due. Waking them whenever
        // anything happened made a connection's writer and the pool task wake each other
        // for ever (each one's `drain_from` woke the other): a client spun a core even
        // when idle, and that spin was most of a call's CPU.
        for (id, w) in &core.wakes {
            if from != Waker::Conn(*id) && core.pool.wants_transmit(*id) {
                w.notify_one();
            }
        }
        if from != Waker::Pool && core.pool.needs_driver() {
            self.pool_wake.notify_one();
        }
        if !inbox.is_empty() {
            lock(&self.inbox).extend(inbox);
            self.inbox_cv.notify_all();
            self.inbox_wake.notify_waiters();
            self.inbox_wake.notify_one();
        }
        if !events.is_empty() {
            lock(&self.events).extend(events);
            self.events_cv.notify_all();
        }
        if self.room_waiters.load(Ordering::Relaxed) > 0
            && (core.pool.has_room() || core.pool.is_closed())
        {
            self.room_cv.notify_all();
        }
    }

    /// Counts (and logs, at debug: it is per message) a message not delivered;
    /// `at_send`: refused by the send itself (not failed later on its way); `no_queue`:
    /// the send was not to wait in the queue.
    fn count_failure(&self, failure: &Failure, token: u64, at_send: bool, no_queue: bool) {
        let c = &self.counters;
        let (counter, reason) = match failure {
            Failure::Canceled => return,
            Failure::QueueFull if no_queue => (&c.dropped_no_queue, "no_queue"),
            Failure::QueueFull => (&c.dropped_queue_full, "queue full"),
            Failure::TooLarge { .. } | Failure::Source(_) => (&c.dropped_refused, "refused"),
            Failure::PoolClosed if at_send => (&c.dropped_refused, "refused"),
            _ => (&c.messages_failed, "failed"),
        };
        bump(counter);
        tracing::debug!(token, reason, %failure, "message not delivered");
    }

    /// What it did so far.
    fn stats(&self) -> NetStats {
        let core = lock(&self.core);
        let mut s = self.counters.snapshot(core.pool.stats());
        s.reconnects = core.pool.reconnects();
        s.resends = core.pool.resends();
        s
    }

    /// Records the outcome of a tracked message.
    fn settle(&self, token: u64, outcome: Result<(), Failure>) {
        let mut tracked = lock(&self.tracked);
        if let Some(slot) = tracked.get_mut(&token) {
            *slot = Some(outcome);
            self.tracked_cv.notify_all();
        }
    }

    /// Queues `msg` (the RPC's `no_queue`: only if a connection takes it now), waiting up
    /// to `timeout` for room in a full queue; `track`: its outcome is kept for a
    /// [`Sending`].
    fn enqueue(
        &self,
        mut msg: OutMessage,
        no_queue: bool,
        timeout: Duration,
        track: bool,
    ) -> Result<u64, TransportError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut core = lock(&self.core);
        // The token names the message in cancels and failures: a call's request id, else
        // a number of our own (high bit set, never a request id in practice).
        msg.token = match msg.request_id {
            Some(id) => id,
            None => {
                core.next_token += 1;
                core.next_token
            }
        };
        let token = msg.token;
        if track {
            lock(&self.tracked).insert(token, None);
        }
        loop {
            let r = if no_queue {
                core.pool.send_now(msg)
            } else {
                core.pool.send(msg)
            };
            match r {
                Err((Failure::QueueFull, m)) if !no_queue => {
                    let left = time_left(deadline);
                    if left.is_zero() || !can_block() {
                        lock(&self.tracked).remove(&token);
                        self.count_failure(&Failure::QueueFull, token, true, false);
                        return Err(TransportError::Timeout);
                    }
                    msg = m;
                    self.room_waiters.fetch_add(1, Ordering::Relaxed);
                    let wait = |core| {
                        self.room_cv
                            .wait_timeout(core, left)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    };
                    // On a runtime's worker, let its other tasks (our connections) run
                    // elsewhere while this one waits.
                    core = if tokio::runtime::Handle::try_current().is_ok() {
                        tokio::task::block_in_place(|| wait(core))
                    } else {
                        wait(core)
                    };
                    self.room_waiters.fetch_sub(1, Ordering::Relaxed);
                }
                r => {
                    core.pool.process();
                    self.drain_from(&mut core, Waker::User);
                    if let Err((f, _)) = &r {
                        lock(&self.tracked).remove(&token);
                        self.count_failure(f, token, true, no_queue);
                    }
                    return r.map(|()| token).map_err(|(f, _)| match f {
                        Failure::NotConnected => TransportError::NotConnected,
                        Failure::QueueFull => TransportError::Dropped,
                        Failure::TooLarge { size, max } => TransportError::TooLarge { size, max },
                        Failure::PoolClosed => TransportError::PeerDied,
                        other => TransportError::Io(other.to_string()),
                    });
                }
            }
        }
    }
}

/// Whether this thread may block waiting for room: not on a current-thread runtime,
/// whose only thread runs the connections that would make the room.
fn can_block() -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread,
        Err(_) => true,
    }
}

/// One connection of a client's pool, as its tasks see it.
pub(super) struct ClientConn {
    pub(super) shared: Arc<ClientShared>,
    pub(super) id: ConnId,
}

impl Host for ClientConn {
    fn with<R>(&self, f: impl FnOnce(&mut Connection, Instant) -> R) -> Option<R> {
        self.shared.wakeups.fetch_add(1, Ordering::Relaxed);
        let mut core = lock(&self.shared.core);
        let r = core.pool.connection(self.id).map(|c| f(c, Instant::now()));
        core.pool.process();
        self.shared.drain_from(&mut core, Waker::Conn(self.id));
        r
    }

    fn finished(&self) {
        let mut core = lock(&self.shared.core);
        core.pool.remove(self.id);
        core.wakes.remove(&self.id);
        self.shared.drain_from(&mut core, Waker::Conn(self.id));
        core.spans.remove(&self.id);
    }
}

async fn pool_task(shared: Arc<ClientShared>) {
    loop {
        shared.wakeups.fetch_add(1, Ordering::Relaxed);
        let deadline = {
            let mut core = lock(&shared.core);
            let now = Instant::now();
            core.pool.handle_timeout(now);
            while let Some(PoolAction::Connect { conn, addr }) = core.pool.poll_action(now) {
                let wake = Arc::new(Notify::new());
                core.wakes.insert(conn, Arc::clone(&wake));
                let span = tracing::info_span!(
                    parent: &shared.span,
                    "net_conn",
                    side = "client",
                    transport = shared.transport,
                    peer = %addr,
                    protocol = %shared.config.protocol.name,
                    conn,
                );
                span.in_scope(|| tracing::debug!("connecting"));
                core.spans.insert(conn, (span.clone(), false));
                tokio::spawn(connect_task(Arc::clone(&shared), conn, addr, wake).instrument(span));
            }
            shared.drain_from(&mut core, Waker::Pool);
            if core.pool.is_closed() && core.wakes.is_empty() {
                break;
            }
            core.pool.poll_timeout()
        };
        let woken = shared.pool_wake.notified();
        match deadline {
            Some(d) => {
                tokio::select! {
                    () = woken => {}
                    () = tokio::time::sleep_until(d.into()) => {}
                }
            }
            None => woken.await,
        }
    }
}

/// A client's socket: plain TCP, or TLS over it.
enum Dialed {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A TCP connection to `addr` (through the SOCKS5 proxy when configured), with its TLS
/// handshake done when configured.
async fn dial(shared: &ClientShared, addr: SocketAddr) -> Result<Dialed, String> {
    let stream = match &shared.config.socks5 {
        Some(proxy) => proxy.connect(addr).await?,
        None => TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?,
    };
    tune_socket(&stream);
    match &shared.tls {
        None => Ok(Dialed::Plain(stream)),
        Some((connector, name)) => match connector.connect(name.clone(), stream).await {
            Ok(s) => {
                tracing::debug!(server_name = ?name, "TLS handshake done");
                Ok(Dialed::Tls(Box::new(s)))
            }
            Err(e) => {
                bump(&shared.counters.handshakes_failed);
                Err(format!("TLS handshake with {addr}: {e}"))
            }
        },
    }
}

async fn connect_task(shared: Arc<ClientShared>, id: ConnId, addr: SocketAddr, wake: Arc<Notify>) {
    #[cfg(feature = "quic")]
    if let Some(dialer) = shared.quic.clone() {
        return super::quic::connect_task(dialer, shared, id, addr, wake).await;
    }
    // The proxy's and TLS's handshakes count as part of the connect.
    let timeout = shared.config.connect_timeout;
    let stream = match tokio::time::timeout(timeout, dial(&shared, addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return connect_failed(&shared, id, e),
        Err(_) => {
            bump(&shared.counters.timeouts);
            return connect_failed(&shared, id, format!("connecting to {addr}: timed out"));
        }
    };
    shared.with_pool(|p| p.handle_connected(Instant::now(), id));
    let _live = LiveConn::new(&shared);
    let host = Arc::new(ClientConn {
        shared: Arc::clone(&shared),
        id,
    });
    match stream {
        Dialed::Plain(s) => run_connection(s, host, wake).await,
        Dialed::Tls(s) => run_connection(*s, host, wake).await,
    }
}

/// Counts a connection task past its connect in [`ClientShared::live_conns`] while it runs
/// (also when its runtime drops it).
pub(super) struct LiveConn<'a>(&'a ClientShared);

impl<'a> LiveConn<'a> {
    pub(super) fn new(shared: &'a ClientShared) -> LiveConn<'a> {
        shared.live_conns.fetch_add(1, Ordering::AcqRel);
        LiveConn(shared)
    }
}

impl Drop for LiveConn<'_> {
    fn drop(&mut self) {
        self.0.live_conns.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long dropping a [`NetClient`] that owns its runtime waits for its connections to
/// say `CLOSE` and shut down. Without it the runtime's end cut them off mid-close: over TCP
/// the peer saw an EOF instead of the reason, and over QUIC it saw nothing at all until its
/// idle timeout, keeping the client's place (a gateway's `max_connections`) that long.
const DROP_GRACE: Duration = Duration::from_millis(500);

pub(super) fn connect_failed(shared: &ClientShared, id: ConnId, error: String) {
    let mut core = lock(&shared.core);
    core.pool.handle_connect_failed(Instant::now(), id, error);
    core.wakes.remove(&id);
    shared.drain_from(&mut core, Waker::User);
    core.spans.remove(&id);
}

/// The pool of connections to one destination, as an RPC transport. Clone its
/// [`sender`](Transport::sender) to send from other threads.
pub struct NetClient {
    shared: Arc<ClientShared>,
    /// A runtime of our own when created outside one.
    _runtime: Option<Arc<tokio::runtime::Runtime>>,
}

impl std::fmt::Debug for NetClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetClient").finish_non_exhaustive()
    }
}

/// The sending half of a [`NetClient`].
#[derive(Clone)]
pub struct NetSender {
    shared: Arc<ClientShared>,
}

impl std::fmt::Debug for NetSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetSender").finish_non_exhaustive()
    }
}

impl NetClient {
    /// A client of the destination at `addrs` (one name may resolve to several). Nothing
    /// connects until the first message; on a tokio runtime if called on one, else on a
    /// runtime of its own.
    pub fn new(addrs: Vec<SocketAddr>, config: ClientConfig) -> std::io::Result<NetClient> {
        Self::with_dialer(
            addrs,
            config,
            #[cfg(feature = "quic")]
            None,
        )
    }

    /// [`new`](Self::new), connecting through `quic` when given.
    pub(super) fn with_dialer(
        addrs: Vec<SocketAddr>,
        config: ClientConfig,
        #[cfg(feature = "quic")] quic: Option<Arc<super::quic::Dialer>>,
    ) -> std::io::Result<NetClient> {
        let (handle, runtime) = match tokio::runtime::Handle::try_current() {
            Ok(h) => (h, None),
            Err(_) => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()?;
                (rt.handle().clone(), Some(Arc::new(rt)))
            }
        };
        let instance = config.instance.unwrap_or_else(process_instance);
        // A bad certificate or name is an error here, not at every connect.
        let tls = match &config.tls {
            Some(t) => Some((
                tokio_rustls::TlsConnector::from(Arc::new(t.rustls_config()?)),
                t.name()?,
            )),
            None => None,
        };
        #[cfg(feature = "quic")]
        let is_quic = quic.is_some();
        #[cfg(not(feature = "quic"))]
        let is_quic = false;
        let transport = match (is_quic, tls.is_some()) {
            (true, _) => "quic",
            (false, true) => "tls",
            (false, false) => "tcp",
        };
        let span = tracing::info_span!(
            "net_client",
            transport,
            dest = ?addrs,
            protocol = %config.protocol.name,
        );
        let mut pool_config = config.pool.clone();
        pool_config.seed = rand::random();
        // A client has no consumer for streamed messages: they arrive reassembled.
        let conn_config = ConnConfig {
            max_streamed: 0,
            ..config.conn.clone()
        };
        let pool = Pool::new(
            pool_config,
            conn_config,
            instance,
            vec![config.protocol.clone()],
            addrs,
        );
        let shared = Arc::new(ClientShared {
            core: Mutex::new(ClientCore {
                pool,
                wakes: HashMap::new(),
                spans: HashMap::new(),
                next_token: 1 << 63,
            }),
            room_cv: Condvar::new(),
            room_waiters: AtomicU32::new(0),
            tracked: Mutex::new(HashMap::new()),
            tracked_cv: Condvar::new(),
            pool_wake: Notify::new(),
            inbox: Mutex::new(VecDeque::new()),
            inbox_cv: Condvar::new(),
            inbox_wake: Notify::new(),
            events: Mutex::new(Vec::new()),
            events_cv: Condvar::new(),
            version: AtomicU32::new(config.protocol.max_version),
            closed: AtomicBool::new(false),
            config,
            runtime: handle.clone(),
            delivered: AtomicU64::new(0),
            wakeups: AtomicU64::new(0),
            live_conns: AtomicUsize::new(0),
            counters: Counters::default(),
            span,
            transport,
            #[cfg(feature = "quic")]
            quic,
            tls,
        });
        handle.spawn(pool_task(Arc::clone(&shared)).instrument(shared.span.clone()));
        Ok(NetClient {
            shared,
            _runtime: runtime,
        })
    }

    /// Resolves `host:port` and makes a client of it (see [`new`](Self::new)).
    pub fn resolve(dest: &str, config: ClientConfig) -> std::io::Result<NetClient> {
        use std::net::ToSocketAddrs;
        let addrs: Vec<SocketAddr> = dest.to_socket_addrs()?.collect();
        Self::new(addrs, config)
    }

    /// A client whose first connection is up (handshake done), or the error of the first
    /// failure within `timeout`.
    pub fn connect(
        addrs: Vec<SocketAddr>,
        config: ClientConfig,
        timeout: Duration,
    ) -> Result<NetClient, TransportError> {
        let client = Self::new(addrs, config).map_err(|e| TransportError::Io(e.to_string()))?;
        client.first_connection(timeout)
    }

    /// Opens one connection and waits for its handshake (see [`connect`](Self::connect)).
    pub(super) fn first_connection(self, timeout: Duration) -> Result<NetClient, TransportError> {
        let client = self;
        client.shared.with_pool(|p| {
            // An empty queue opens nothing: ask for one connection by hand.
            p.wake_up();
        });
        let ev = client.wait_event(timeout, |e| {
            matches!(
                e,
                ClientEvent::Connected { .. }
                    | ClientEvent::ConnectFailed(_)
                    | ClientEvent::Closed(_)
            )
        });
        match ev {
            Some(ClientEvent::Connected { .. }) => Ok(client),
            Some(ClientEvent::ConnectFailed(e)) => Err(TransportError::Io(e)),
            Some(ClientEvent::Closed(e)) => Err(TransportError::Io(e.to_string())),
            _ => Err(TransportError::Timeout),
        }
    }

    /// Cancels the message `token` (a call's request id): dropped if it has not started.
    pub fn cancel(&self, token: u64) -> Canceled {
        self.shared.with_pool(|p| p.cancel(token))
    }

    /// Asks for a connection even with nothing queued (after the backoff, if the last
    /// connect failed): a client that wants to be connected before its next message.
    pub fn wake_up(&self) {
        self.shared.with_pool(|p| p.wake_up());
    }

    /// Closes the pool: at once (`force`: unfinished messages fail), or once everything
    /// queued was sent and every awaited reply arrived (new messages are refused).
    pub fn close(&self, force: bool) {
        self.shared.with_pool(|p| p.close(force));
    }

    /// Whether the pool finished closing.
    pub fn is_closed(&self) -> bool {
        lock(&self.shared.core).pool.is_closed()
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.core).pool.open_connections()
    }

    /// What it did so far: connections, messages, bytes, retries, drops (see
    /// [`NetStats`]). Takes the pool's lock briefly.
    pub fn stats(&self) -> NetStats {
        self.shared.stats()
    }

    /// Messages fully sent so far.
    pub fn messages_sent(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// How many times the client's tasks ran so far (the pool's, and each connection's
    /// reader and writer): a diagnostic of its CPU cost. It grows with the traffic (a few
    /// per message) and with the timers (keep-alives, reconnects), and stays put while the
    /// client is idle.
    pub fn wakeups(&self) -> u64 {
        self.shared.wakeups.load(Ordering::Relaxed)
    }

    /// The events so far (connects, closes, failures), taken.
    pub fn take_events(&self) -> Vec<ClientEvent> {
        std::mem::take(&mut *lock(&self.shared.events))
    }

    /// Waits up to `timeout` for an event matching `pred` (taking it; earlier events stay).
    pub fn wait_event(
        &self,
        timeout: Duration,
        pred: impl Fn(&ClientEvent) -> bool,
    ) -> Option<ClientEvent> {
        wait_event(&self.shared.events, &self.shared.events_cv, timeout, pred)
    }

    /// The tokio runtime the client's tasks run on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.shared.runtime
    }

    fn pop(&self) -> Option<NetMessage> {
        lock(&self.shared.inbox).pop_front()
    }
}

fn wait_event<E: Clone>(
    events: &Mutex<Vec<E>>,
    cv: &Condvar,
    timeout: Duration,
    pred: impl Fn(&E) -> bool,
) -> Option<E> {
    let deadline = Instant::now() + timeout;
    let mut guard = lock(events);
    loop {
        if let Some(i) = guard.iter().position(&pred) {
            return Some(guard.remove(i));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        guard = cv
            .wait_timeout(guard, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

impl Drop for NetClient {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        self.shared.with_pool(|p| p.close(true));
        if let Some(rt) = self._runtime.take().and_then(|rt| Arc::try_unwrap(rt).ok()) {
            // The connections run on this runtime, not on the dropping thread's (if it has
            // one): waiting for them cannot deadlock, and is bounded.
            let deadline = Instant::now() + DROP_GRACE;
            while self.shared.live_conns.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            rt.shutdown_background();
        }
    }
}

/// A streamed message on its way ([`NetSender::send_stream`]).
pub struct Sending {
    token: u64,
    shared: Arc<ClientShared>,
}

impl std::fmt::Debug for Sending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sending")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Sending {
    /// The message's token (its request id for a call): what cancels and
    /// [`ClientEvent::Failed`] name it by.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Waits up to `timeout` for the message to be fully sent (its last frame handed to
    /// the socket), or for the reason it was not.
    pub fn wait(&self, timeout: Duration) -> Result<(), TransportError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut tracked = lock(&self.shared.tracked);
        loop {
            match tracked.get(&self.token) {
                Some(Some(Ok(()))) => return Ok(()),
                Some(Some(Err(f))) => {
                    return Err(match f {
                        Failure::ConnectionLost(why) => TransportError::ConnectionLost(why.clone()),
                        Failure::PoolClosed => TransportError::PeerDied,
                        Failure::NotConnected => TransportError::NotConnected,
                        other => TransportError::Io(other.to_string()),
                    });
                }
                Some(None) => {}
                None => return Err(TransportError::Io("not a tracked message".into())),
            }
            tracked = wait_until(&self.shared.tracked_cv, tracked, deadline)?;
        }
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        lock(&self.shared.tracked).remove(&self.token);
    }
}

impl NetSender {
    /// Sends a message of one object, `object_id`, of `len` bytes read from `reader` one
    /// frame at a time (a file of several GiB, a generator): it is never whole in memory.
    /// It goes out interleaved with other messages, as fast as the receiver consumes it
    /// (flow control), and a receiver with a [stream handler](Served::with_streams)
    /// reads it piece by piece; others reassemble it (up to their `max_message`).
    ///
    /// `out` gives its id, kind, request id and RPC flags (a call's reply arrives like
    /// any reply); `timeout` bounds the wait for room in the send queue (`no_queue`:
    /// fails at once). The message cannot be resent (a reader does not rewind): if its
    /// connection drops, it fails. Wait for it with [`Sending::wait`].
    pub fn send_stream(
        &self,
        out: &Outgoing,
        object_id: u64,
        len: u64,
        reader: impl std::io::Read + Send + 'static,
        timeout: Duration,
    ) -> Result<Sending, TransportError> {
        let source = ReaderSource::new(out, object_id, len, reader)?;
        let shared = &self.shared;
        let sync = out.flags & rpc_flags::SYNC != 0;
        let awaits = match out.kind {
            Kind::Request => true,
            Kind::OneWay => sync,
            _ => false,
        };
        let msg = OutMessage {
            token: 0,
            protocol: 0,
            source: Box::new(source),
            delivery: delivery_of(out.flags, &shared.config.deliveries, out.message_id),
            request_id: (awaits && out.request_id != 0).then_some(out.request_id),
            streamed: true,
        };
        let token = shared.enqueue(msg, out.no_queue, timeout, true)?;
        Ok(Sending {
            token,
            shared: Arc::clone(shared),
        })
    }

    /// Cancels the message `token` (a call's request id): dropped if it has not started.
    pub fn cancel(&self, token: u64) -> Canceled {
        self.shared.with_pool(|p| p.cancel(token))
    }

    /// Closes the pool (see [`NetClient::close`]).
    pub fn close(&self, force: bool) {
        self.shared.with_pool(|p| p.close(force));
    }

    /// [`NetClient::wakeups`], for a client whose receiving half was handed on (to an
    /// [`AsyncClient`](crate::rpc::AsyncClient)).
    pub fn wakeups(&self) -> u64 {
        self.shared.wakeups.load(Ordering::Relaxed)
    }
}

impl TransportSender for NetSender {
    fn send_with(
        &self,
        out: &Outgoing,
        object_lens: &[u64],
        fill: &mut dyn FnMut(&mut dyn ObjectSink) -> Result<(), TransportError>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let shared = &self.shared;
        if canceled_here(shared, out.kind, out.flags, out.request_id) {
            return Ok(());
        }
        let bytes = build(out, object_lens, fill)?;
        send_bytes(
            shared,
            out.flags,
            out.message_id,
            bytes,
            out.no_queue,
            timeout,
        )
    }

    fn max_message(&self) -> u64 {
        // The peer's own limit is checked when a message is queued.
        self.shared.config.conn.max_message
    }
}

impl NetSender {
    /// Sends a whole message as it is (header and objects, as a ring holds it: what a
    /// gateway forwards), with the delivery its RPC flags or the configured table name.
    /// Its token (for [`cancel`](Self::cancel) and [`ClientEvent::Failed`]) is its request
    /// id when it awaits a reply.
    pub fn send_message(&self, bytes: Vec<u8>) -> Result<(), TransportError> {
        // A full queue fails at once (`Timeout`).
        self.send_message_timeout(bytes, Duration::ZERO)
    }

    /// Whether a message would find room in the send queue now.
    pub fn has_room(&self) -> bool {
        lock(&self.shared.core).pool.has_room()
    }

    /// [`send_message`](Self::send_message), waiting up to `timeout` for room in the
    /// send queue ([`PoolConfig::max_queued`](super::PoolConfig::max_queued)) before it
    /// fails with `Timeout`: a gateway's backpressure toward a slow peer.
    pub fn send_message_timeout(
        &self,
        bytes: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let header = *MessageView::parse(&bytes)
            .map_err(|e| TransportError::Layout(e.to_string()))?
            .header();
        let kind = header.kind().unwrap_or(Kind::Raw);
        if canceled_here(&self.shared, kind, header.flags, header.request_id) {
            return Ok(());
        }
        send_bytes(
            &self.shared,
            header.flags,
            header.message_id,
            bytes,
            false,
            timeout,
        )
    }
}

/// A cancel message: a canceled call that has not left is dropped here (true: nothing to
/// send); one on the wire is forgotten (its reply will be discarded) and the server must
/// be told (false).
fn canceled_here(shared: &ClientShared, kind: Kind, flags: u64, request_id: u64) -> bool {
    if kind != Kind::Control || flags & rpc_flags::CANCEL == 0 {
        return false;
    }
    let outcome = shared.with_pool(|p| {
        let c = p.cancel(request_id);
        p.forget_reply(request_id);
        c
    });
    outcome != Canceled::NotCancelable
}

/// Queues a built message on the pool, waiting up to `timeout` for room (`no_queue`: only
/// if a connection takes it now).
fn send_bytes(
    shared: &ClientShared,
    flags: u64,
    message_id: u64,
    bytes: Vec<u8>,
    no_queue: bool,
    timeout: Duration,
) -> Result<(), TransportError> {
    {
        let delivery = delivery_of(flags, &shared.config.deliveries, message_id);
        let msg = OutMessage::from_bytes(0, bytes, delivery);
        shared.enqueue(msg, no_queue, timeout, false).map(|_| ())
    }
}

impl Transport for NetClient {
    type Sender = NetSender;
    type Message<'a> = NetMessage;

    fn sender(&self) -> NetSender {
        NetSender {
            shared: Arc::clone(&self.shared),
        }
    }

    fn recv_timeout(&mut self, timeout: Duration) -> Result<NetMessage, TransportError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut inbox = lock(&self.shared.inbox);
        loop {
            if let Some(m) = inbox.pop_front() {
                return Ok(m);
            }
            if self.is_closed_now() {
                return Err(TransportError::PeerDied);
            }
            inbox = wait_until(&self.shared.inbox_cv, inbox, deadline)?;
        }
    }

    fn try_recv(&mut self) -> Result<Option<NetMessage>, TransportError> {
        match self.pop() {
            Some(m) => Ok(Some(m)),
            None if self.is_closed_now() => Err(TransportError::PeerDied),
            None => Ok(None),
        }
    }

    fn peer_alive(&self) -> bool {
        !self.is_closed_now()
    }

    fn version(&self) -> u32 {
        self.shared.version.load(Ordering::Relaxed)
    }
}

impl NetClient {
    /// Closed pools never deliver again.
    fn is_closed_now(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
            || self
                .shared
                .core
                .try_lock()
                .map(|c| c.pool.is_closed())
                .unwrap_or(false)
    }
}

impl crate::rpc::AsyncTransport for NetClient {
    type Sender = NetSender;
    type Message<'a> = NetMessage;

    fn sender(&self) -> NetSender {
        Transport::sender(self)
    }

    fn version(&self) -> u32 {
        Transport::version(self)
    }

    async fn recv(&mut self) -> Result<NetMessage, TransportError> {
        loop {
            let notified = self.shared.inbox_wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(m) = self.pop() {
                return Ok(m);
            }
            if self.is_closed_now() {
                return Err(TransportError::PeerDied);
            }
            notified.await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server.

/// A request handler of a served protocol (the RPC server's handler, shareable).
pub type Handler = Arc<dyn Fn(&RequestView<'_>, Responder<'_>) -> HandlerResult + Send + Sync>;

/// A handler of streamed messages (see [`Served::with_streams`]): the request's header,
/// its one object as a [`NetStream`] to read piece by piece, and the responder.
pub type StreamHandler =
    Arc<dyn Fn(&RequestView<'_>, &mut NetStream, Responder<'_>) -> HandlerResult + Send + Sync>;

/// A protocol a [`NetServer`] serves, with its handler.
#[derive(Clone)]
pub struct Served {
    /// The protocol's name and versions.
    pub spec: ProtocolSpec,
    /// Its handler.
    pub handler: Handler,
    /// Instead of the handler: messages forwarded as they are (see [`Served::forward`]).
    pub forward: Option<Arc<dyn Forward>>,
    /// Where its clients are registered for server-to-client events (each connection as
    /// a [`ChannelId`] from [`NET_CHANNEL_IDS`] on), if anywhere.
    pub events: Option<EventHub>,
    /// Its handler of streamed messages, if it takes them (else they are reassembled,
    /// up to `max_message`, and go to `handler`).
    pub streams: Option<StreamHandler>,
}

/// The first [`ChannelId`] a [`NetServer`] gives its connections in an [`EventHub`]: far
/// above the ids of shm channels, so one hub can hold the clients of both.
pub const NET_CHANNEL_IDS: u64 = 1 << 62;

impl Served {
    /// Serves `spec` with `handler`.
    pub fn new(
        spec: ProtocolSpec,
        handler: impl Fn(&RequestView<'_>, Responder<'_>) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        Served {
            spec,
            handler: Arc::new(handler),
            forward: None,
            events: None,
            streams: None,
        }
    }

    /// Registers each client in `hub` once its handshake is done (and removes it when it
    /// leaves), so the server can send it events.
    #[must_use]
    pub fn with_events(mut self, hub: EventHub) -> Self {
        self.events = Some(hub);
        self
    }

    /// Takes streamed messages ([`NetSender::send_stream`]) with `handler`, on a thread
    /// per message, reading the object as it arrives: a message larger than memory is
    /// never whole in it, and a slow handler slows its own stream only (flow control).
    /// Messages up to `ServerConfig::conn.max_streamed` bytes (no limit by default) are
    /// taken; larger ones are refused (the sender's message fails, the connection stays).
    pub fn with_streams(
        mut self,
        handler: impl Fn(&RequestView<'_>, &mut NetStream, Responder<'_>) -> HandlerResult
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.streams = Some(Arc::new(handler));
        self
    }

    /// Serves `spec` by handing every message to `forward` as it arrived (a gateway), and
    /// letting it send any message back (replies, events) through the [`Link`].
    pub fn forward(spec: ProtocolSpec, forward: Arc<dyn Forward>) -> Self {
        Served {
            spec,
            handler: Arc::new(|_: &RequestView<'_>, _: Responder<'_>| {
                Err(crate::rpc::HandlerError::UnknownMethod)
            }),
            forward: Some(forward),
            events: None,
            streams: None,
        }
    }
}

/// A protocol served by forwarding its messages byte for byte instead of through a handler
/// (what a gateway does). The callbacks run on the connection's I/O tasks: they must not
/// block (hand the work to a thread of your own).
pub trait Forward: Send + Sync + 'static {
    /// A client finished its handshake naming this protocol. `Err(reason)` refuses it: the
    /// connection is closed with [`CloseCode::Refused`](super::CloseCode) and the reason.
    fn opened(&self, link: &Link) -> Result<(), String>;
    /// A complete, validated message of this protocol arrived on `link`. Nothing holds the
    /// client back while the forwarder keeps messages: bound them yourself.
    fn message(&self, link: &Link, message: NetMessage);
    /// The connection closed (after [`opened`](Self::opened) accepted it).
    fn closed(&self, link: &Link, error: &ConnError);
}

/// One served connection, as a [`Forward`] sees it: who the peer is, and a way to send it
/// messages at any time (replies, and events nobody asked for).
#[derive(Clone)]
pub struct Link {
    conn: Arc<ServerConn>,
    protocol: u16,
    version: u32,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("id", &self.conn.id)
            .field("peer", &self.conn.peer)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A number naming the connection, unique in this process.
    pub fn id(&self) -> u64 {
        self.conn.id
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.conn.peer
    }

    /// The protocol version the handshake agreed.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The certificate the peer presented, verified by the server's TLS (mutual TLS over
    /// QUIC or TCP); `None` when it presented none or the transport has no TLS.
    pub fn peer_identity(&self) -> Option<&PeerIdentity> {
        self.conn.client.as_deref()
    }

    /// Sends a whole message (header and objects, as a ring holds it) to the peer.
    pub fn send_message(&self, bytes: Vec<u8>) -> Result<(), TransportError> {
        MessageView::parse(&bytes).map_err(|e| TransportError::Layout(e.to_string()))?;
        let mut c = lock(&self.conn.conn);
        if c.is_closed() {
            return Err(TransportError::PeerDied);
        }
        if let Some(p) = c.peer()
            && bytes.len() as u64 > p.max_message
        {
            return Err(TransportError::TooLarge {
                size: bytes.len() as u64,
                max: p.max_message,
            });
        }
        let mut msg = OutMessage::from_bytes(0, bytes, Delivery::Default);
        msg.protocol = self.protocol;
        c.send(msg);
        drop(c);
        self.conn.wake.notify_one();
        Ok(())
    }

    /// Closes the connection, telling the peer `reason` (as a refusal).
    pub fn close(&self, reason: String) {
        lock(&self.conn.conn).close(ConnError::Refused(reason));
        self.conn.wake.notify_one();
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.conn.conn).is_closed()
    }

    /// Messages queued to the peer or being written, not yet fully sent (a gateway
    /// bounds what it holds toward a slow peer with it).
    pub fn unsent(&self) -> usize {
        lock(&self.conn.conn).unsent()
    }
}

/// How a [`NetServer`] behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The connections' behaviour (buffer size, inactivity timeout, keep-alive guard).
    pub conn: ConnConfig,
    /// How long writing a reply may wait (for room in the connection's send queue, see
    /// [`max_queued_bytes`](Self::max_queued_bytes)).
    pub reply_timeout: Duration,
    /// The most bytes of replies and events queued for one client and not yet written to
    /// its socket. When a message does not fit, its send waits up to its timeout for room
    /// (the reply timeout for a handler's reply, the caller's for an event) — a `no_queue`
    /// one not at all: it fails with [`TransportError::Dropped`] and the connection stays.
    /// A send that times out fails with [`TransportError::Timeout`] and closes the
    /// connection ([`ConnError::SlowPeer`]): a client that has read nothing for that long
    /// is not reading. One message larger than the bound is queued when nothing else is.
    pub max_queued_bytes: u64,
    /// The most bytes of complete requests waiting for a connection's handler thread:
    /// past it the server stops reading that client's socket until the handler catches
    /// up, so TCP's flow control holds the client back (TCP and TLS; not over QUIC, see
    /// `docs/SECURITY.md`). Streamed messages are flow-controlled on their own.
    pub max_request_backlog: u64,
    /// The most connections served at once, counted from the end of their TLS or QUIC
    /// handshake (those are bounded by `conn.handshake_timeout`), ours included. A
    /// connection beyond it is told why: its hello (due within a second) is answered,
    /// then the connection is closed with [`CloseCode::Refused`](super::frame::CloseCode)
    /// and "the server's limit of N connections is reached"; it costs no handler thread.
    /// Past as many again being refused at once, more are dropped unanswered. Every
    /// connection may hold the queues and windows above, so this bounds what clients
    /// together make the server hold.
    pub max_connections: usize,
    /// The instance id in the handshake (default: [`process_instance`]).
    pub instance: Option<u128>,
    /// TLS over TCP (`tls://`), with mutual TLS when [`ServerTls::client_roots`] is set;
    /// `None`: plain TCP. (QUIC takes its TLS as an argument of
    /// [`NetServer::bind_quic`].)
    pub tls: Option<ServerTls>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            conn: ConnConfig::default(),
            reply_timeout: Duration::from_secs(5),
            max_queued_bytes: 8 << 20,
            max_request_backlog: 8 << 20,
            max_connections: 1024,
            instance: None,
            tls: None,
        }
    }
}

/// What happened on a server's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// A client finished its handshake.
    Accepted {
        /// Its address.
        peer: SocketAddr,
        /// Its instance id.
        instance: u128,
        /// The certificate it authenticated with (mutual TLS), verified.
        client: Option<Arc<PeerIdentity>>,
    },
    /// A connection failed before our handshake: its TLS handshake failed (no client
    /// certificate, one from a CA not trusted, a client that refused ours) or timed out.
    HandshakeFailed {
        /// The client's address.
        peer: SocketAddr,
        /// Why.
        error: String,
    },
    /// A connection closed.
    Closed {
        /// The client's address.
        peer: SocketAddr,
        /// Why.
        error: ConnError,
    },
}

pub(super) struct ServerShared {
    config: ServerConfig,
    instance: u128,
    protocols: Vec<Served>,
    events: Mutex<Vec<ServerEvent>>,
    events_cv: Condvar,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Every connection, so that a kill also ends their dispatch threads.
    conns: Mutex<Vec<std::sync::Weak<ServerConn>>>,
    stopped: AtomicBool,
    /// Connections admitted under [`ServerConfig::max_connections`] and not finished.
    live: AtomicUsize,
    /// Connections beyond it being answered and refused (at most as many again).
    refusing: AtomicUsize,
    /// What [`NetServer::stats`] reads beside its connections' own counters.
    pub(super) counters: Counters,
    /// The traffic of connections gone (each adds its own as it is dropped).
    gone: Mutex<ConnStats>,
    /// `net_server{transport, local, protocols}`, its connections' spans' parent.
    pub(super) span: Span,
    /// `tcp`, `tls` or `quic`.
    transport: &'static str,
}

/// A protocol of a connection served by a [`Forward`], and the link it was handed.
type Forwarded = (Arc<dyn Forward>, Link);

/// One accepted connection.
pub(super) struct ServerConn {
    server: Arc<ServerShared>,
    peer: SocketAddr,
    /// The client's verified certificate (mutual TLS).
    client: Option<Arc<PeerIdentity>>,
    pub(super) conn: Mutex<Connection>,
    pub(super) wake: Arc<Notify>,
    /// The pieces of incoming streamed messages, to their handlers' threads.
    streams: Mutex<HashMap<u32, std::sync::mpsc::Sender<Piece>>>,
    /// Complete requests, to the connection's dispatch thread (protocol index, message).
    requests: Mutex<Option<std::sync::mpsc::Sender<(u16, NetMessage)>>>,
    /// The version agreed for each protocol index, and the handler serving it.
    handlers: Mutex<Vec<(u32, Option<Handler>)>>,
    /// Per protocol index: the forwarder that accepted it (cleared when the connection
    /// closes, which ends the `Link` -> connection cycle).
    forwards: Mutex<Vec<Option<Forwarded>>>,
    /// Names the connection in [`Link::id`].
    id: u64,
    /// The stream handler serving each protocol index, where there is one.
    stream_handlers: Mutex<Vec<Option<StreamHandler>>>,
    /// Itself, for the links it hands out and the threads of stream handlers.
    me: std::sync::Weak<ServerConn>,
    /// `net_conn{side, transport, peer, conn, protocol}`.
    span: Span,
    /// Its handshake finished.
    opened: AtomicBool,
    /// Signalled (with `conn`'s mutex) when queued bytes went out or the connection
    /// closed: what replies and events waiting for room wait on.
    room: Condvar,
    /// Bytes of requests handed to the dispatch thread and not yet handled.
    backlog: AtomicU64,
    /// Wakes the reader paused for the backlog.
    backlog_room: Notify,
    /// Given up on: the peer does not read ([`ConnError::SlowPeer`]).
    abandoned: AtomicBool,
    /// Wakes the writer when the connection is given up on.
    give_up: Notify,
    /// Counted in the server's `live` connections (until it finishes); `false`: over
    /// the limit, to be refused once its handshake is answered.
    admitted: AtomicBool,
    /// Counted in the server's `refusing` connections (until it finishes).
    refusing: AtomicBool,
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        self.leave();
        *lock(&self.server.gone) += lock(&self.conn).stats();
    }
}

impl Host for ServerConn {
    fn backlog_room(&self) -> Option<&Notify> {
        Some(&self.backlog_room)
    }

    fn reading_paused(&self) -> bool {
        self.backlog.load(Ordering::Acquire) >= self.server.config.max_request_backlog
            && lock(&self.requests).is_some()
    }

    fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Acquire)
    }

    fn give_up(&self) -> Option<&Notify> {
        Some(&self.give_up)
    }

    fn with<R>(&self, f: impl FnOnce(&mut Connection, Instant) -> R) -> Option<R> {
        let mut c = lock(&self.conn);
        let queued = c.queued_bytes();
        let r = f(&mut c, Instant::now());
        if c.queued_bytes() < queued || c.is_closed() {
            self.room.notify_all();
        }
        let mut events = Vec::new();
        while let Some(e) = c.poll_event() {
            events.push(e);
        }
        drop(c);
        let _span = (!events.is_empty()).then(|| self.span.enter());
        for e in events {
            match e {
                ConnEvent::Connected(_) if !self.admitted.load(Ordering::Acquire) => {
                    let max = self.server.config.max_connections;
                    bump(&self.server.counters.connections_refused);
                    tracing::warn!(max, "refused: the server's connection limit is reached");
                    lock(&self.conn).close(ConnError::Refused(format!(
                        "the server's limit of {max} connections is reached"
                    )));
                    self.wake.notify_one();
                }
                ConnEvent::Connected(peer) => {
                    self.accepted(&peer);
                    let handlers = peer
                        .protocols
                        .iter()
                        .map(|(spec, v)| {
                            let h = self
                                .server
                                .protocols
                                .iter()
                                .find(|s| s.spec.name == spec.name)
                                .map(|s| Arc::clone(&s.handler));
                            (*v, h)
                        })
                        .collect();
                    *lock(&self.handlers) = handlers;
                    *lock(&self.stream_handlers) = peer
                        .protocols
                        .iter()
                        .map(|(spec, _)| {
                            self.server
                                .protocols
                                .iter()
                                .find(|s| s.spec.name == spec.name)
                                .and_then(|s| s.streams.clone())
                        })
                        .collect();
                    self.open_forwards(&peer);
                    self.register_events(&peer.protocols);
                    self.server.event(ServerEvent::Accepted {
                        peer: self.peer,
                        instance: peer.instance,
                        client: self.client.clone(),
                    });
                }
                ConnEvent::Message { protocol, bytes } => {
                    tracing::trace!(protocol, len = bytes.len(), "message received");
                    let forward = lock(&self.forwards)
                        .get(protocol as usize)
                        .cloned()
                        .flatten();
                    match (forward, NetMessage::from_wire(bytes)) {
                        (Some((f, link)), Some(m)) => f.message(&link, m),
                        (None, Some(m)) => {
                            if let Some(tx) = lock(&self.requests).as_ref() {
                                let len = m.bytes().len() as u64;
                                self.backlog.fetch_add(len, Ordering::AcqRel);
                                if tx.send((protocol, m)).is_err() {
                                    self.backlog.fetch_sub(len, Ordering::AcqRel);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                ConnEvent::Closed(error) => {
                    let opened = self.opened.load(Ordering::Relaxed);
                    self.server.counters.closed(&error, opened, false);
                    lock(&self.requests).take();
                    // A reader paused for the backlog has nothing more to wait for.
                    self.backlog_room.notify_one();
                    let forwards = std::mem::take(&mut *lock(&self.forwards));
                    for (f, link) in forwards.into_iter().flatten() {
                        f.closed(&link, &error);
                    }
                    self.unregister_events();
                    self.server.event(ServerEvent::Closed {
                        peer: self.peer,
                        error,
                    });
                }
                ConnEvent::Sent { .. } => {}
                ConnEvent::Failed { token, reason, .. } => {
                    bump(&self.server.counters.dropped_refused);
                    tracing::debug!(token, reason = %reason, "message not delivered");
                }
                ConnEvent::StreamStarted {
                    protocol,
                    stream,
                    header,
                    object_id,
                    len,
                } => self.start_stream(protocol, stream, header, object_id, len),
                ConnEvent::StreamData { stream, bytes } => {
                    let delivered = lock(&self.streams)
                        .get(&stream)
                        .is_some_and(|tx| tx.send(Piece::Data(bytes)).is_ok());
                    if !delivered {
                        // Its handler is gone (it returned early): stop the sender.
                        lock(&self.streams).remove(&stream);
                        lock(&self.conn).refuse_stream(stream);
                        self.wake.notify_one();
                    }
                }
                ConnEvent::StreamEnded { stream } => {
                    if let Some(tx) = lock(&self.streams).remove(&stream) {
                        let _ = tx.send(Piece::End);
                    }
                }
                ConnEvent::StreamAborted { stream, reason } => {
                    if let Some(tx) = lock(&self.streams).remove(&stream) {
                        let _ = tx.send(Piece::Aborted(reason));
                    }
                }
            }
        }
        Some(r)
    }

    fn finished(&self) {
        self.leave();
        lock(&self.requests).take();
        self.unregister_events();
        lock(&self.streams).clear();
        let _guard = lock(&self.conn);
        self.room.notify_all();
    }
}

impl ServerConn {
    /// Gives its place under [`ServerConfig::max_connections`] (or among those being
    /// refused) back, once.
    fn leave(&self) {
        if self.admitted.swap(false, Ordering::AcqRel) {
            self.server.live.fetch_sub(1, Ordering::AcqRel);
        }
        if self.refusing.swap(false, Ordering::AcqRel) {
            self.server.refusing.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Counts and logs a finished handshake.
    fn accepted(&self, peer: &super::conn::PeerInfo) {
        self.opened.store(true, Ordering::Relaxed);
        bump(&self.server.counters.connections_opened);
        let names: Vec<&str> = peer
            .protocols
            .iter()
            .filter(|(_, v)| *v != 0)
            .map(|(spec, _)| spec.name.as_str())
            .collect();
        self.span
            .record("protocol", tracing::field::display(names.join(",")));
        tracing::info!(
            instance = %format_args!("{:032x}", peer.instance),
            client = self.client.as_ref().map(|c| c.subject()),
            "accepted"
        );
    }

    /// Puts this client in the event hub of each protocol it speaks that has one.
    fn register_events(&self, protocols: &[(ProtocolSpec, u32)]) {
        for (spec, version) in protocols {
            let hub = self
                .server
                .protocols
                .iter()
                .find(|s| s.spec.name == spec.name)
                .and_then(|s| s.events.as_ref());
            if let Some(hub) = hub
                && *version != 0
            {
                hub.insert_versioned(self.channel_id(), WeakConnSender(self.me.clone()), *version);
            }
        }
    }

    /// Its name in event hubs.
    fn channel_id(&self) -> ChannelId {
        ChannelId(NET_CHANNEL_IDS + self.id)
    }

    fn unregister_events(&self) {
        for hub in self
            .server
            .protocols
            .iter()
            .filter_map(|s| s.events.as_ref())
        {
            hub.remove(self.channel_id());
        }
    }

    /// A streamed message began: its handler runs on a thread of its own (it may take
    /// long, and other requests of the connection must not wait for it), reading the
    /// pieces as they come. Without a stream handler for its protocol it is refused.
    fn start_stream(
        &self,
        protocol: u16,
        stream: u32,
        header: MessageHeader,
        object_id: u64,
        len: u64,
    ) {
        let handler = lock(&self.stream_handlers)
            .get(protocol as usize)
            .cloned()
            .flatten();
        let version = lock(&self.handlers)
            .get(protocol as usize)
            .map_or(0, |(v, _)| *v);
        let kind = header.kind();
        let (Some(handler), Some(Kind::Request | Kind::OneWay)) = (handler, kind) else {
            bump(&self.server.counters.dropped_refused);
            tracing::debug!(stream, "streamed message refused: no stream handler for it");
            lock(&self.conn).refuse_stream(stream);
            self.wake.notify_one();
            return;
        };
        // The handler sees the message's header (id, kind, request id, flags); its one
        // object comes through the stream.
        let Ok(stub) = build(
            &Outgoing::new(header.message_id, kind.unwrap_or(Kind::OneWay))
                .request_id(header.request_id)
                .flags(header.flags & shm_layout::flags::APP_MASK),
            &[],
            &mut |_| Ok(()),
        ) else {
            return;
        };
        let Some(stub) = NetMessage::from_wire(stub) else {
            return;
        };
        let Some(conn) = self.me.upgrade() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        lock(&self.streams).insert(stream, tx);
        let opts = crate::rpc::ServeOptions {
            reply_timeout: self.server.config.reply_timeout,
            ..crate::rpc::ServeOptions::default()
        };
        let timeout = self.server.config.conn.inactivity_timeout;
        std::thread::spawn(move || {
            let _current = CurrentClient::set(ClientInfo {
                addr: conn.peer,
                identity: conn.client.clone(),
            });
            let sender = ConnSender(Arc::clone(&conn));
            let mut input = NetStream::new(object_id, len, stream, rx, conn, timeout);
            let mut h = |v: &RequestView<'_>, r: Responder<'_>| handler(v, &mut input, r);
            let _ = dispatch(&stub, &sender, None, version, &mut h, &opts);
        });
    }
}

/// The runtime we are on, or one of our own.
pub(super) fn runtime_handle()
-> std::io::Result<(tokio::runtime::Handle, Option<Arc<tokio::runtime::Runtime>>)> {
    Ok(match tokio::runtime::Handle::try_current() {
        Ok(h) => (h, None),
        Err(_) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            (rt.handle().clone(), Some(Arc::new(rt)))
        }
    })
}

impl ServerShared {
    pub(super) fn new(
        mut config: ServerConfig,
        protocols: Vec<Served>,
        transport: &'static str,
        local: SocketAddr,
    ) -> Arc<Self> {
        if protocols.iter().all(|p| p.streams.is_none()) {
            // Nobody would consume them: streamed messages are reassembled.
            config.conn.max_streamed = 0;
        }
        let names: Vec<&str> = protocols.iter().map(|p| p.spec.name.as_str()).collect();
        let span = tracing::info_span!(
            "net_server",
            transport,
            local = %local,
            protocols = %names.join(","),
        );
        Arc::new(ServerShared {
            counters: Counters::default(),
            gone: Mutex::new(ConnStats::default()),
            span,
            transport,
            instance: config.instance.unwrap_or_else(process_instance),
            config,
            protocols,
            events: Mutex::new(Vec::new()),
            events_cv: Condvar::new(),
            tasks: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            live: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
        })
    }

    /// The connections' behaviour.
    #[cfg(feature = "quic")]
    pub(super) fn conn_config(&self) -> &ConnConfig {
        &self.config.conn
    }

    /// Whether the server was killed.
    #[cfg(feature = "quic")]
    pub(super) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Keeps `task` to abort it when the server is killed.
    pub(super) fn keep_task(&self, task: JoinHandle<()>) {
        let mut tasks = lock(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// The span of a connection from `peer` (its id and protocol recorded later).
    pub(super) fn conn_span(&self, peer: SocketAddr) -> Span {
        tracing::info_span!(
            parent: &self.span,
            "net_conn",
            side = "server",
            transport = self.transport,
            peer = %peer,
            conn = tracing::field::Empty,
            protocol = tracing::field::Empty,
        )
    }

    /// A TLS handshake (or QUIC's) failed, or timed out (`timed_out`).
    pub(super) fn handshake_failed(&self, peer: SocketAddr, error: String, timed_out: bool) {
        bump(&self.counters.handshakes_failed);
        if timed_out {
            bump(&self.counters.timeouts);
        }
        tracing::warn!(%error, "handshake failed");
        self.event(ServerEvent::HandshakeFailed { peer, error });
    }

    pub(super) fn event(&self, e: ServerEvent) {
        lock(&self.events).push(e);
        self.events_cv.notify_all();
    }
}

/// Replies and events of one server connection.
#[derive(Clone)]
struct ConnSender(Arc<ServerConn>);

impl TransportSender for ConnSender {
    fn send_with(
        &self,
        out: &Outgoing,
        object_lens: &[u64],
        fill: &mut dyn FnMut(&mut dyn ObjectSink) -> Result<(), TransportError>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let bytes = build(out, object_lens, fill)?;
        let len = bytes.len() as u64;
        let max = self.0.server.config.max_queued_bytes;
        let deadline = Instant::now().checked_add(timeout);
        let mut c = lock(&self.0.conn);
        let counters = &self.0.server.counters;
        loop {
            if c.is_closed() {
                bump(&counters.messages_failed);
                return Err(TransportError::PeerDied);
            }
            if let Some(p) = c.peer()
                && len > p.max_message
            {
                bump(&counters.dropped_refused);
                return Err(TransportError::TooLarge {
                    size: len,
                    max: p.max_message,
                });
            }
            let queued = c.queued_bytes();
            if queued == 0 || queued.saturating_add(len) <= max {
                break;
            }
            if out.no_queue {
                bump(&counters.dropped_no_queue);
                return Err(TransportError::Dropped);
            }
            c = match wait_until(&self.0.room, c, deadline) {
                Ok(c) => c,
                Err(e) => {
                    bump(&counters.dropped_queue_full);
                    // Nothing went out for the whole timeout: the client does not read.
                    let mut c = lock(&self.0.conn);
                    if !c.is_closed() {
                        let queued = c.queued_bytes();
                        c.close(ConnError::SlowPeer {
                            queued,
                            waited: timeout,
                        });
                        self.0.abandoned.store(true, Ordering::Release);
                    }
                    drop(c);
                    // Hands the close on (server event, event hubs) at once: the writer,
                    // stuck on the socket, will not look again.
                    self.0.with(|_, _| ());
                    self.0.give_up.notify_one();
                    self.0.wake.notify_one();
                    return Err(e);
                }
            };
        }
        c.send(OutMessage::from_bytes(0, bytes, Delivery::Default));
        drop(c);
        self.0.wake.notify_one();
        Ok(())
    }

    fn max_message(&self) -> u64 {
        lock(&self.0.conn)
            .peer()
            .map_or(u64::MAX, |p| p.max_message)
    }
}

/// A [`ConnSender`] held by an event hub: it does not keep a gone connection alive.
struct WeakConnSender(std::sync::Weak<ServerConn>);

impl TransportSender for WeakConnSender {
    fn send_with(
        &self,
        out: &Outgoing,
        object_lens: &[u64],
        fill: &mut dyn FnMut(&mut dyn ObjectSink) -> Result<(), TransportError>,
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let conn = self.0.upgrade().ok_or(TransportError::PeerDied)?;
        ConnSender(conn).send_with(out, object_lens, fill, timeout)
    }

    fn max_message(&self) -> u64 {
        self.0.upgrade().map_or(0, |c| ConnSender(c).max_message())
    }
}

/// A TCP listener serving one or more protocols.
pub struct NetServer {
    local_addr: SocketAddr,
    shared: Arc<ServerShared>,
    _runtime: Option<Arc<tokio::runtime::Runtime>>,
}

impl std::fmt::Debug for NetServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl NetServer {
    /// Listens on `addr` and serves `protocols` (a client speaks any subset of them).
    pub fn bind(
        addr: SocketAddr,
        config: ServerConfig,
        protocols: Vec<Served>,
    ) -> std::io::Result<NetServer> {
        let (handle, runtime) = runtime_handle()?;
        // A bad certificate or key is an error here, not at every accept.
        let tls = match &config.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                t.rustls_config()?,
            ))),
            None => None,
        };
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let local_addr = std_listener.local_addr()?;
        let listener = {
            let _guard = handle.enter();
            TcpListener::from_std(std_listener)?
        };
        let transport = if tls.is_some() { "tls" } else { "tcp" };
        let shared = ServerShared::new(config, protocols, transport, local_addr);
        let accept = handle
            .spawn(accept_loop(listener, Arc::clone(&shared), tls).instrument(shared.span.clone()));
        lock(&shared.tasks).push(accept);
        Ok(NetServer {
            local_addr,
            shared,
            _runtime: runtime,
        })
    }

    /// A server of `shared` listening at `local_addr` (its accept task already pushed).
    #[cfg(feature = "quic")]
    pub(super) fn from_parts(
        local_addr: SocketAddr,
        shared: Arc<ServerShared>,
        runtime: Option<Arc<tokio::runtime::Runtime>>,
    ) -> NetServer {
        NetServer {
            local_addr,
            shared,
            _runtime: runtime,
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connections it serves now, those still in their handshake included: what
    /// counts against [`ServerConfig::max_connections`].
    pub fn connections(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// What it did so far: connections, messages, bytes, drops (see [`NetStats`]).
    /// Locks each live connection briefly.
    pub fn stats(&self) -> NetStats {
        let conns: Vec<_> = lock(&self.shared.conns)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        let mut traffic = ConnStats::default();
        for c in &conns {
            traffic += lock(&c.conn).stats();
        }
        // Read while `conns` are held: none of them can add itself to `gone` meanwhile.
        traffic += *lock(&self.shared.gone);
        drop(conns);
        self.shared.counters.snapshot(traffic)
    }

    /// The events so far, taken.
    pub fn take_events(&self) -> Vec<ServerEvent> {
        std::mem::take(&mut *lock(&self.shared.events))
    }

    /// Waits up to `timeout` for an event matching `pred` (taking it).
    pub fn wait_event(
        &self,
        timeout: Duration,
        pred: impl Fn(&ServerEvent) -> bool,
    ) -> Option<ServerEvent> {
        wait_event(&self.shared.events, &self.shared.events_cv, timeout, pred)
    }

    /// Stops listening and drops every connection at once, without a word to the clients
    /// (as if the process died).
    pub fn kill(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        for t in lock(&self.shared.tasks).drain(..) {
            t.abort();
        }
        // (Kept in the list: their traffic still counts in `stats` until they are gone.)
        for c in lock(&self.shared.conns).iter() {
            if let Some(c) = c.upgrade() {
                lock(&c.requests).take();
                lock(&c.forwards).clear();
                c.unregister_events();
            }
        }
    }
}

impl Drop for NetServer {
    fn drop(&mut self) {
        self.kill();
        // A handler still running must not hold the dropping thread.
        if let Some(rt) = self._runtime.take().and_then(|rt| Arc::try_unwrap(rt).ok()) {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ServerShared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of descriptors, or similar: try again shortly rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        tune_socket(&stream);
        let span = shared.conn_span(peer);
        span.in_scope(|| tracing::debug!("accepted a TCP connection"));
        let task = match &tls {
            None => {
                // (`None`: over the limit and too many being refused: dropped unanswered.)
                let Some(sc) = accept_conn(&shared, peer, None, span.clone()) else {
                    continue;
                };
                let wake = Arc::clone(&sc.wake);
                tokio::spawn(run_connection(stream, sc, wake).instrument(span))
            }
            // The TLS handshake runs on the connection's task: a slow client never holds
            // the accept loop.
            Some(acceptor) => tokio::spawn(
                accept_tls(acceptor.clone(), stream, peer, Arc::clone(&shared)).instrument(span),
            ),
        };
        shared.keep_task(task);
    }
}

/// Runs a TLS connection from `peer` once its TLS handshake succeeded (within the
/// handshake timeout), with the client's verified certificate if it sent one.
async fn accept_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<ServerShared>,
) {
    let limit = shared.config.conn.handshake_timeout;
    let error = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let client = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(PeerIdentity::from_chain)
                .map(Arc::new);
            let Some(sc) = accept_conn(&shared, peer, client, Span::current()) else {
                return;
            };
            let wake = Arc::clone(&sc.wake);
            return run_connection(tls, sc, wake).await;
        }
        Ok(Err(e)) => format!("TLS handshake: {e}"),
        Err(_) => {
            return shared.handshake_failed(peer, "TLS handshake: timed out".into(), true);
        }
    };
    shared.handshake_failed(peer, error, false);
}

/// Who sent the request a handler is serving: see [`current_client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address (the proxy's, when it came through one).
    pub addr: SocketAddr,
    /// The certificate it authenticated with, verified against
    /// [`ServerTls::client_roots`] (mutual TLS); `None` over plain TCP or when the
    /// server does not ask for client certificates.
    pub identity: Option<Arc<PeerIdentity>>,
}

thread_local! {
    /// The client of the connection whose dispatch thread this is.
    static CURRENT_CLIENT: std::cell::RefCell<Option<ClientInfo>> =
        const { std::cell::RefCell::new(None) };
}

/// The client whose request the calling handler is serving, when called from a
/// [`NetServer`]'s handler (`None` elsewhere): its address and, with mutual TLS, its
/// verified certificate ([`PeerIdentity`]: subject, common name, subject alternative
/// names). A server's policy keys on it, e.g. to refuse a method to some clients:
///
/// ```rust,ignore
/// let allowed = shm_channel::net::current_client()
///     .and_then(|c| c.identity)
///     .is_some_and(|id| id.matches("billing.example.org"));
/// ```
///
/// Works unchanged inside the methods of a generated server: each connection's
/// requests are handled on a thread of its own, which carries this.
pub fn current_client() -> Option<ClientInfo> {
    CURRENT_CLIENT.with(|c| c.borrow().clone())
}

/// Sets [`current_client`] for this thread while alive.
struct CurrentClient;

impl CurrentClient {
    fn set(info: ClientInfo) -> CurrentClient {
        CURRENT_CLIENT.with(|c| *c.borrow_mut() = Some(info));
        CurrentClient
    }
}

impl Drop for CurrentClient {
    fn drop(&mut self) {
        // The blocking pool reuses its threads: the next connection's must not see ours.
        CURRENT_CLIENT.with(|c| c.borrow_mut().take());
    }
}

/// How long a connection over [`ServerConfig::max_connections`] may take to send its
/// hello before it is dropped without an answer.
const REFUSAL_HANDSHAKE: Duration = Duration::from_secs(1);

/// Takes a place under `max` in `count`, if there is one (never past it, even for a
/// moment: accepts run at once over TCP, TLS and QUIC).
fn take_place(count: &AtomicUsize, max: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// A new connection of `shared` from `peer` (authenticated as `client`, with mutual
/// TLS), with its dispatch thread. Beyond [`ServerConfig::max_connections`]: without one,
/// to be refused once its handshake is answered (which it must send within
/// [`REFUSAL_HANDSHAKE`]); `None` when as many again are being refused already (the
/// caller drops it unanswered).
pub(super) fn accept_conn(
    shared: &Arc<ServerShared>,
    peer: SocketAddr,
    client: Option<Arc<PeerIdentity>>,
    span: Span,
) -> Option<Arc<ServerConn>> {
    let max = shared.config.max_connections;
    let admitted = take_place(&shared.live, max);
    let refusing = !admitted && take_place(&shared.refusing, max.max(1));
    let mut config = shared.config.conn.clone();
    if !admitted {
        if !refusing {
            bump(&shared.counters.connections_refused);
            span.in_scope(|| tracing::warn!(max, "dropped: the server is at its connection limit"));
            return None;
        }
        config.handshake_timeout = config.handshake_timeout.min(REFUSAL_HANDSHAKE);
    }
    let conn = Connection::server(
        Instant::now(),
        config,
        shared.instance,
        shared.protocols.iter().map(|p| p.spec.clone()).collect(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    span.record("conn", id);
    if let Some(c) = &client {
        span.in_scope(|| {
            tracing::info!(
                subject = c.subject(),
                common_name = c.common_name(),
                "client certificate verified"
            )
        });
    }
    let sc = Arc::new_cyclic(|me| ServerConn {
        server: Arc::clone(shared),
        peer,
        client: client.clone(),
        conn: Mutex::new(conn),
        wake: Arc::new(Notify::new()),
        requests: Mutex::new(admitted.then_some(tx)),
        handlers: Mutex::new(Vec::new()),
        forwards: Mutex::new(Vec::new()),
        id,
        me: me.clone(),
        span,
        opened: AtomicBool::new(false),
        streams: Mutex::new(HashMap::new()),
        stream_handlers: Mutex::new(Vec::new()),
        room: Condvar::new(),
        backlog: AtomicU64::new(0),
        backlog_room: Notify::new(),
        abandoned: AtomicBool::new(false),
        give_up: Notify::new(),
        admitted: AtomicBool::new(admitted),
        refusing: AtomicBool::new(refusing),
    });
    // Handlers may block (they are the application's code): a thread per connection,
    // requests of one connection in order.
    {
        let mut conns = lock(&shared.conns);
        conns.retain(|c| c.strong_count() > 0);
        conns.push(Arc::downgrade(&sc));
    }
    if !admitted {
        return Some(sc);
    }
    let worker = Arc::clone(&sc);
    // Requests are owned copies already: nothing for copy_on_receive to do.
    let opts = crate::rpc::ServeOptions {
        reply_timeout: shared.config.reply_timeout,
        ..crate::rpc::ServeOptions::default()
    };
    tokio::task::spawn_blocking(move || {
        let _current = CurrentClient::set(ClientInfo {
            addr: peer,
            identity: client,
        });
        let sender = ConnSender(Arc::clone(&worker));
        while let Ok((protocol, msg)) = rx.recv() {
            let entry = lock(&worker.handlers).get(protocol as usize).cloned();
            let Some((version, Some(handler))) = entry else {
                worker
                    .backlog
                    .fetch_sub(msg.bytes().len() as u64, Ordering::AcqRel);
                worker.backlog_room.notify_one();
                continue;
            };
            let mut h = |v: &RequestView<'_>, r: Responder<'_>| handler(v, r);
            let channel = Some(worker.channel_id());
            let result = dispatch(&msg, &sender, channel, version, &mut h, &opts);
            worker
                .backlog
                .fetch_sub(msg.bytes().len() as u64, Ordering::AcqRel);
            worker.backlog_room.notify_one();
            if result.is_err() {
                break;
            }
        }
    });
    Some(sc)
}

impl ServerConn {
    /// Offers the connection to the forwarders of the protocols it agreed on; the first
    /// refusal closes it.
    fn open_forwards(&self, peer: &super::conn::PeerInfo) {
        let Some(me) = self.me.upgrade() else { return };
        let mut opened = Vec::with_capacity(peer.protocols.len());
        let mut refused = None;
        for (index, (spec, version)) in peer.protocols.iter().enumerate() {
            let forward = self
                .server
                .protocols
                .iter()
                .find(|s| s.spec.name == spec.name)
                .and_then(|s| s.forward.clone());
            let (Some(f), true, None) = (forward, *version != 0, &refused) else {
                opened.push(None);
                continue;
            };
            let link = Link {
                conn: Arc::clone(&me),
                protocol: u16::try_from(index).unwrap_or(u16::MAX),
                version: *version,
            };
            match f.opened(&link) {
                Ok(()) => opened.push(Some((f, link))),
                Err(reason) => {
                    refused = Some(reason);
                    opened.push(None);
                }
            }
        }
        *lock(&self.forwards) = opened;
        if let Some(reason) = refused {
            lock(&self.conn).close(ConnError::Refused(reason));
            self.wake.notify_one();
        }
    }

    /// Wakes the connection's writer.
    #[cfg(feature = "quic")]
    pub(super) fn wake(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }
}
