//! The QUIC driver: the same sans-io core ([`Connection`](super::Connection), [`Pool`](super::Pool)) over
//! quinn, with TLS 1.3 from rustls on ring.
//!
//! QUIC gives reliability over UDP (loss, duplication, reordering), encryption, and
//! independent streams. The core's byte stream is cut into its units and spread over
//! QUIC streams, so that a lost packet of one message never holds back another:
//!
//! - one **bidirectional control stream**, opened by the client: the handshake records,
//!   keep-alives and `CLOSE` frames (everything but message data), in order;
//! - one **unidirectional stream per message**: every `DATA` frame of the core's stream id,
//!   from `FIRST` to `LAST` (then the QUIC stream is finished), and its `ABORT` if any;
//! - except `@ordered` messages ([`Delivery::Ordered`](super::Delivery)): they share one
//!   unidirectional **ordered lane**, opened with the first of them and kept for the
//!   connection. The core starts them one at a time, so on the lane each one's frames
//!   follow the previous one's `LAST`, and the receiver completes them in the order sent,
//!   whatever QUIC loses or reorders. (On streams of their own, a small one sent after a
//!   large one was often complete first, even on loopback: QUIC sends its streams side
//!   by side.)
//!
//! The receiving side reassembles whole frames per QUIC stream and hands each to the core
//! in one piece, so frames of different streams never mix. Message frames wait until the
//! handshake record arrived on the control stream. Everything else (handshake, message
//! kinds, pools, cancel, keep-alive, timeouts, limits) is the core's, as over TCP.
//!
//! UDP socket buffers are raised to [`UDP_BUFFER`] where the kernel allows, and QUIC's
//! receive windows bounded by [`RECEIVE_WINDOW`]: on a loaded machine's loopback the
//! kernel's default 208 KiB receive buffer overflowed while the receiving thread was not
//! running (hundreds of drops per run), each drop costing quinn a loss recovery (a probe
//! timeout of 25 ms and more, and a smaller congestion window) that made large messages
//! slow and erratic.
//!
//! Writes go through a per-stream task each; a byte budget per connection
//! ([`SEND_BUDGET`]) stops the core from producing frames faster than QUIC takes them,
//! while its timers keep running.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tls::io_err;
pub use super::tls::{
    ALPN, CertificateDer, ClientTls, Identity, PeerIdentity, PrivateKeyDer, PrivatePkcs8KeyDer,
    ServerTls,
};
use quinn::{ReadError, ReadExactError, RecvStream, SendStream, VarInt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, Span};

use super::conn::{ConnConfig, ConnError};
use super::frame::{self, FRAME_HEADER, FrameError, data_flags, kind};
use super::pool::ConnId;
use super::stats::{Counters, bump};
use super::tcp::{
    ClientConfig, ClientConn, ClientShared, Host, NetClient, NetServer, Served, ServerConfig,
    ServerShared, WRITE_BATCH, accept_conn, connect_failed, runtime_handle,
};
use crate::rpc::TransportError;

/// Bytes of frames handed to QUIC but not yet taken by it, per connection.
pub const SEND_BUDGET: usize = 4 << 20;

/// Bytes read per control-stream read.
const READ_CHUNK: usize = 64 * 1024;
/// The largest frame on the wire (header and the largest payload).
const MAX_FRAME: usize = frame::MAX_BUFFER as usize;

/// TLS of a QUIC client: the same as over TCP ([`ClientTls`]).
pub type QuicClientTls = ClientTls;

/// TLS of a QUIC server: the same as over TCP ([`ServerTls`]).
pub type QuicServerTls = ServerTls;

/// The UDP socket buffers asked for, each way (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`): room for the bursts a peer sends while this side's
/// thread is not running.
pub const UDP_BUFFER: usize = 4 << 20;

/// QUIC's receive window, per connection and per stream: the most bytes a peer may send
/// ahead of what this side has read. Bounded (quinn's default connection window is
/// unbounded) so that what is in flight towards one connection fits its socket buffer;
/// 2 MiB still fills a 40 MiB/s path with a 50 ms round trip.
pub const RECEIVE_WINDOW: u32 = 2 << 20;

/// A UDP socket bound to `addr`, with buffers of [`UDP_BUFFER`] where the kernel allows.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    // Best effort: a kernel that refuses leaves its default, and QUIC recovers what
    // overflows as any loss, only slower.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&socket, UDP_BUFFER);
    let _ = rustix::net::sockopt::set_socket_send_buffer_size(&socket, UDP_BUFFER);
    Ok(socket)
}

/// QUIC's own limits, from the connection's: as many concurrent message streams as the
/// core accepts in progress and the ordered lane, one control stream, an idle timeout
/// past the core's own.
fn transport_config(conn: &ConnConfig, server: bool) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    let streams = u32::try_from(conn.max_incoming_streams)
        .unwrap_or(u32::MAX)
        .clamp(1, 1 << 16)
        + 1;
    t.max_concurrent_uni_streams(VarInt::from_u32(streams));
    t.receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    t.stream_receive_window(VarInt::from_u32(RECEIVE_WINDOW));
    t.max_concurrent_bidi_streams(VarInt::from_u32(u32::from(server)));
    let idle = conn.inactivity_timeout.max(conn.handshake_timeout) + Duration::from_secs(5);
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t
}

impl ClientTls {
    /// The quinn client configuration (TLS 1.3, ring, our ALPN, limits from `conn`).
    pub fn quinn_config(&self, conn: &ConnConfig) -> std::io::Result<quinn::ClientConfig> {
        let tls = self.rustls_config()?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(io_err)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(conn, false)));
        Ok(config)
    }
}

impl ServerTls {
    /// The quinn server configuration (TLS 1.3, ring, our ALPN, limits from `conn`).
    pub fn quinn_config(&self, conn: &ConnConfig) -> std::io::Result<quinn::ServerConfig> {
        let tls = self.rustls_config()?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(io_err)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(conn, true)));
        Ok(config)
    }
}

// ---------------------------------------------------------------------------------------
// Client.

/// How a client's pool dials: over QUIC with this TLS.
pub(super) struct Dialer {
    config: quinn::ClientConfig,
    server_name: String,
}

impl Dialer {
    /// A fresh endpoint per connection: a restarted server never sees an old one's state.
    async fn dial(
        &self,
        addr: SocketAddr,
        counters: &Counters,
    ) -> Result<(quinn::Endpoint, quinn::Connection, SendStream, RecvStream), String> {
        let local: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = udp_socket(local).map_err(|e| e.to_string())?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| e.to_string())?;
        let conn = endpoint
            .connect_with(self.config.clone(), addr, &self.server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| {
                // The peer answered, and the TLS handshake (or QUIC's own) failed.
                if matches!(
                    e,
                    quinn::ConnectionError::TransportError(_)
                        | quinn::ConnectionError::ConnectionClosed(_)
                ) {
                    bump(&counters.handshakes_failed);
                }
                e.to_string()
            })?;
        let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        Ok((endpoint, conn, send, recv))
    }
}

pub(super) async fn connect_task(
    dialer: Arc<Dialer>,
    shared: Arc<ClientShared>,
    id: ConnId,
    addr: SocketAddr,
    wake: Arc<Notify>,
) {
    let timeout = shared.config.connect_timeout;
    let dialing = dialer.dial(addr, &shared.counters);
    let (endpoint, conn, send, recv) = match tokio::time::timeout(timeout, dialing).await {
        Ok(Ok(parts)) => parts,
        Ok(Err(e)) => {
            return connect_failed(&shared, id, format!("connecting to quic://{addr}: {e}"));
        }
        Err(_) => {
            bump(&shared.counters.timeouts);
            return connect_failed(
                &shared,
                id,
                format!("connecting to quic://{addr}: timed out"),
            );
        }
    };
    shared.with_pool(|p| p.handle_connected(Instant::now(), id));
    let _live = super::tcp::LiveConn::new(&shared);
    let conn_config = shared.config.conn.clone();
    let host = Arc::new(ClientConn {
        shared: Arc::clone(&shared),
        id,
    });
    run_quic(conn, send, recv, host, wake, &conn_config).await;
    // The endpoint's driver sends the CONNECTION_CLOSE that `run_quic` asked for: give it
    // a moment (the close goes out at once; draining the connection would take 3 PTOs),
    // or the server learns of the end only at its idle timeout.
    let _ = tokio::time::timeout(QUIC_CLOSE_FLUSH, endpoint.wait_idle()).await;
    drop(endpoint);
}

/// See [`connect_task`]'s end.
const QUIC_CLOSE_FLUSH: Duration = Duration::from_millis(50);

impl NetClient {
    /// A client of the QUIC destination at `addrs` (see [`new`](Self::new)): the same pool,
    /// message kinds and RPC transport, over QUIC with `tls`.
    pub fn new_quic(
        addrs: Vec<SocketAddr>,
        config: ClientConfig,
        tls: &QuicClientTls,
    ) -> std::io::Result<NetClient> {
        let dialer = Dialer {
            config: tls.quinn_config(&config.conn)?,
            server_name: tls.server_name.clone(),
        };
        NetClient::with_dialer(addrs, config, Some(Arc::new(dialer)))
    }

    /// [`new_quic`](Self::new_quic), once the first connection finished its handshake (see
    /// [`connect`](Self::connect)).
    pub fn connect_quic(
        addrs: Vec<SocketAddr>,
        config: ClientConfig,
        tls: &QuicClientTls,
        timeout: Duration,
    ) -> Result<NetClient, TransportError> {
        Self::new_quic(addrs, config, tls)
            .map_err(|e| TransportError::Io(e.to_string()))?
            .first_connection(timeout)
    }
}

// ---------------------------------------------------------------------------------------
// Server.

impl NetServer {
    /// Listens for QUIC on the UDP address `addr` and serves `protocols` (see
    /// [`bind`](Self::bind)).
    pub fn bind_quic(
        addr: SocketAddr,
        config: ServerConfig,
        protocols: Vec<Served>,
        tls: &QuicServerTls,
    ) -> std::io::Result<NetServer> {
        let (handle, runtime) = runtime_handle()?;
        let server_config = tls.quinn_config(&config.conn)?;
        let socket = udp_socket(addr)?;
        let local_addr = socket.local_addr()?;
        let endpoint = {
            let _guard = handle.enter();
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(server_config),
                socket,
                Arc::new(quinn::TokioRuntime),
            )?
        };
        let shared = ServerShared::new(config, protocols, "quic", local_addr);
        let accept = handle
            .spawn(accept_loop(endpoint, Arc::clone(&shared)).instrument(shared.span.clone()));
        shared.keep_task(accept);
        Ok(NetServer::from_parts(local_addr, shared, runtime))
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<ServerShared>) {
    while let Some(incoming) = endpoint.accept().await {
        if shared.is_stopped() {
            return;
        }
        let shared2 = Arc::clone(&shared);
        let peer = incoming.remote_address();
        let span = shared.conn_span(peer);
        span.in_scope(|| tracing::debug!("accepting a QUIC connection"));
        let handshake = async move {
            let conn_config = shared2.conn_config().clone();
            let limit = conn_config.handshake_timeout;
            // A peer that never finishes TLS, or never opens the control stream, is
            // dropped at the handshake timeout.
            let conn = match tokio::time::timeout(limit, incoming).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    return shared2.handshake_failed(peer, format!("QUIC handshake: {e}"), false);
                }
                Err(_) => {
                    let error = "QUIC handshake: timed out".into();
                    return shared2.handshake_failed(peer, error, true);
                }
            };
            let Ok(Ok((send, recv))) = tokio::time::timeout(limit, conn.accept_bi()).await else {
                conn.close(VarInt::from_u32(1), b"no control stream");
                let error = "QUIC: no control stream opened in time".into();
                return shared2.handshake_failed(peer, error, true);
            };
            // Mutual TLS: the client's certificate, verified by rustls.
            let client = conn
                .peer_identity()
                .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
                .and_then(|chain| PeerIdentity::from_chain(&chain))
                .map(Arc::new);
            let Some(sc) = accept_conn(&shared2, conn.remote_address(), client, Span::current())
            else {
                conn.close(
                    VarInt::from_u32(0),
                    b"the server is at its connection limit",
                );
                return;
            };
            let wake = sc.wake();
            run_quic(conn, send, recv, sc, wake, &conn_config).await;
        };
        let task = tokio::spawn(handshake.instrument(span));
        shared.keep_task(task);
    }
}

// ---------------------------------------------------------------------------------------
// One connection, both sides.

/// Frame bytes for a stream's writer, holding their share of the send budget.
struct Chunk {
    bytes: Vec<u8>,
    _permit: Option<OwnedSemaphorePermit>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Runs one connection over `conn` (its control stream being `send`/`recv`) until it
/// closes.
async fn run_quic<H: Host>(
    conn: quinn::Connection,
    send: SendStream,
    recv: RecvStream,
    host: Arc<H>,
    wake: Arc<Notify>,
    config: &ConnConfig,
) {
    // Readers: aborted when this returns (or is aborted, as by a server's kill).
    let mut readers = JoinSet::new();
    let (open_tx, open_rx) = watch::channel(false);
    readers
        .spawn(read_control(recv, Arc::clone(&host), Arc::clone(&wake), open_tx).in_current_span());
    readers.spawn(
        accept_streams(conn.clone(), Arc::clone(&host), Arc::clone(&wake), open_rx)
            .in_current_span(),
    );
    let budget = Arc::new(Semaphore::new(SEND_BUDGET));
    let mut writers = JoinSet::new();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    writers.spawn(write_stream(send, control_rx, Arc::clone(&wake), true));
    let mut router = Router {
        conn: conn.clone(),
        control: control_tx,
        streams: HashMap::new(),
        lane: None,
        record_sent: false,
        budget: Arc::clone(&budget),
        wake: Arc::clone(&wake),
        writers,
        open_timeout: config.inactivity_timeout,
    };
    let mut out = Vec::with_capacity(WRITE_BATCH + MAX_FRAME);
    // The ordered messages' stream ids seen while making `out`.
    let mut ordered = Vec::new();
    loop {
        out.clear();
        ordered.clear();
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Frames only while QUIC keeps up; timers always.
        let room = budget.available_permits() >= WRITE_BATCH + MAX_FRAME;
        let Some((closed, deadline)) = host.with(|c, now| {
            c.handle_timeout(now);
            if room || c.is_closed() {
                while out.len() < WRITE_BATCH && c.poll_transmit(now, &mut out) {
                    let s = c.last_ordered_stream();
                    if s != 0 && ordered.last() != Some(&s) {
                        ordered.push(s);
                    }
                }
            } else {
                // Control frames still go, on the control stream, past the data QUIC is
                // not taking: the peer's replies may be waiting for our grants, and the
                // peer may not take our data until it has sent them.
                while out.len() < WRITE_BATCH && c.poll_control(now, &mut out) {}
            }
            (c.is_closed(), c.poll_timeout())
        }) else {
            break;
        };
        if !out.is_empty() {
            if let Err(e) = router.route(&out, &ordered).await {
                host.with(|c, _| c.handle_io_error(e));
                break;
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
    host.finished();
    // Let what was written (a CLOSE frame above all) reach the peer, briefly.
    let Router {
        control,
        streams,
        lane,
        mut writers,
        ..
    } = router;
    drop((control, streams, lane));
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while writers.join_next().await.is_some() {}
    })
    .await;
    conn.close(VarInt::from_u32(0), b"");
    drop(readers);
}

/// Spreads the core's output over QUIC streams.
struct Router {
    conn: quinn::Connection,
    control: mpsc::UnboundedSender<Chunk>,
    /// Core stream id -> the writer of its QUIC stream (the lane's, for an ordered one).
    streams: HashMap<u32, mpsc::UnboundedSender<Chunk>>,
    /// The writer of the QUIC stream all ordered messages share, once one was sent.
    lane: Option<mpsc::UnboundedSender<Chunk>>,
    record_sent: bool,
    budget: Arc<Semaphore>,
    wake: Arc<Notify>,
    writers: JoinSet<()>,
    open_timeout: Duration,
}

impl Router {
    fn chunk(&self, bytes: Vec<u8>) -> Chunk {
        let permit = u32::try_from(bytes.len())
            .ok()
            .and_then(|n| Arc::clone(&self.budget).try_acquire_many_owned(n).ok());
        Chunk {
            bytes,
            _permit: permit,
        }
    }

    /// Opens a QUIC stream (waiting, up to the inactivity timeout, for the peer to grant
    /// one) and starts its writer.
    async fn open(&mut self) -> Result<mpsc::UnboundedSender<Chunk>, String> {
        let send = tokio::time::timeout(self.open_timeout, self.conn.open_uni())
            .await
            .map_err(|_| "no stream granted by the peer".to_string())?
            .map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.writers
            .spawn(write_stream(send, rx, Arc::clone(&self.wake), false));
        Ok(tx)
    }

    /// Routes the frames of `out`; `ordered` holds the stream ids of ordered messages
    /// among them.
    async fn route(&mut self, out: &[u8], ordered: &[u32]) -> Result<(), String> {
        // Consecutive frames of one target go out as one chunk (one QUIC write).
        let mut batches: Vec<(Option<u32>, Vec<u8>)> = Vec::new();
        let mut finished = Vec::new();
        let mut at = 0;
        while at < out.len() {
            let rest = &out[at..];
            if !self.record_sent {
                // Our own handshake record comes first; anything else (never expected)
                // goes to the control stream as it is.
                let n = match frame::split_record(rest) {
                    Ok(Some((_, n))) => n,
                    _ => rest.len(),
                };
                push(&mut batches, None, &rest[..n]);
                self.record_sent = true;
                at += n;
                continue;
            }
            if rest.len() < FRAME_HEADER {
                push(&mut batches, None, rest);
                break;
            }
            let len = (FRAME_HEADER + u32_at(rest, 8) as usize).min(rest.len());
            let f = &rest[..len];
            at += len;
            let k = f[0];
            if k != kind::DATA && k != kind::ABORT {
                push(&mut batches, None, f);
                continue;
            }
            let stream = u32_at(f, 4);
            let first = k == kind::DATA && f[1] & data_flags::FIRST != 0;
            if first && !self.streams.contains_key(&stream) {
                let tx = if ordered.contains(&stream) {
                    match &self.lane {
                        Some(lane) => lane.clone(),
                        None => {
                            let lane = self.open().await?;
                            self.lane.insert(lane).clone()
                        }
                    }
                } else {
                    self.open().await?
                };
                self.streams.insert(stream, tx);
            }
            // A stream we never opened (an ABORT of an unknown one): the control stream.
            let target = self.streams.contains_key(&stream).then_some(stream);
            push(&mut batches, target, f);
            if k == kind::ABORT || f[1] & data_flags::LAST != 0 {
                finished.push(stream);
            }
        }
        for (target, bytes) in batches {
            let chunk = self.chunk(bytes);
            match target.and_then(|s| self.streams.get(&s)) {
                // A writer that failed leaves the connection to its readers' errors.
                Some(tx) => {
                    let _ = tx.send(chunk);
                }
                None => self
                    .control
                    .send(chunk)
                    .map_err(|_| "the control stream failed".to_string())?,
            }
        }
        for s in finished {
            self.streams.remove(&s);
        }
        // Reap the writers of finished streams.
        while self.writers.try_join_next().is_some() {}
        Ok(())
    }
}

/// Appends `bytes` for `target` (a core stream id, or `None`: the control stream) to the
/// last batch when it has the same target, else as a new batch.
fn push(batches: &mut Vec<(Option<u32>, Vec<u8>)>, target: Option<u32>, bytes: &[u8]) {
    match batches.last_mut() {
        Some((t, b)) if *t == target => b.extend_from_slice(bytes),
        _ => batches.push((target, bytes.to_vec())),
    }
}

/// Writes one stream's chunks, then finishes it (and, for the control stream, waits until
/// the peer has it all).
async fn write_stream(
    mut send: SendStream,
    mut rx: mpsc::UnboundedReceiver<Chunk>,
    wake: Arc<Notify>,
    wait_acked: bool,
) {
    while let Some(chunk) = rx.recv().await {
        if send.write_all(&chunk.bytes).await.is_err() {
            return;
        }
        drop(chunk);
        // Budget came back: the writer may produce again.
        wake.notify_one();
    }
    let _ = send.finish();
    if wait_acked {
        let _ = send.stopped().await;
    }
}

/// Tells the core its peer broke the framing on a QUIC stream.
fn violation<H: Host>(host: &H, wake: &Notify, e: FrameError) {
    host.with(|c, _| c.close(ConnError::Frame(e)));
    wake.notify_one();
}

/// The end of the connection, as the core sees it.
fn lost<H: Host>(host: &H, wake: &Notify, e: &ReadError) {
    host.with(|c, _| match e {
        // The peer closed (or its process died and its endpoint said so).
        ReadError::ConnectionLost(
            quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::Reset,
        ) => c.handle_eof(),
        other => c.handle_io_error(other.to_string()),
    });
    wake.notify_one();
}

/// Feeds the control stream to the core, one handshake record or frame at a time.
async fn read_control<H: Host>(
    mut recv: RecvStream,
    host: Arc<H>,
    wake: Arc<Notify>,
    open: watch::Sender<bool>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut record_done = false;
    // Bytes the unit parser cannot make sense of go to the core as they are: it reports
    // the very error it would over TCP.
    let mut raw = false;
    loop {
        match recv.read(&mut chunk).await {
            Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(None) => {
                host.with(|c, now| {
                    if !buf.is_empty() {
                        c.handle_data(now, &buf);
                    }
                    c.handle_eof();
                });
                wake.notify_one();
                return;
            }
            Err(e) => return lost(&*host, &wake, &e),
        }
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            if rest.is_empty() {
                break;
            }
            let unit = if raw {
                rest.len()
            } else if !record_done {
                match frame::split_record(rest) {
                    Ok(Some((_, n))) => n,
                    Ok(None) => break,
                    Err(_) => {
                        raw = true;
                        rest.len()
                    }
                }
            } else if rest.len() < FRAME_HEADER {
                break;
            } else {
                let len = FRAME_HEADER + u32_at(rest, 8) as usize;
                if len > MAX_FRAME {
                    raw = true;
                    rest.len()
                } else if rest.len() < len {
                    break;
                } else {
                    len
                }
            };
            let closed = host.with(|c, now| {
                c.handle_data(now, &rest[..unit]);
                c.is_closed()
            });
            at += unit;
            if !record_done && !raw {
                record_done = true;
                let _ = open.send(true);
            }
            wake.notify_one();
            if closed != Some(false) {
                return;
            }
        }
        buf.drain(..at);
    }
}

/// Accepts the peer's message streams, a reader each.
async fn accept_streams<H: Host>(
    conn: quinn::Connection,
    host: Arc<H>,
    wake: Arc<Notify>,
    open: watch::Receiver<bool>,
) {
    let mut readers = JoinSet::new();
    while let Ok(recv) = conn.accept_uni().await {
        readers.spawn(
            read_stream(recv, Arc::clone(&host), Arc::clone(&wake), open.clone()).in_current_span(),
        );
        while readers.try_join_next().is_some() {}
    }
}

/// Feeds one message stream's frames to the core, each whole.
async fn read_stream<H: Host>(
    mut recv: RecvStream,
    host: Arc<H>,
    wake: Arc<Notify>,
    mut open: watch::Receiver<bool>,
) {
    // The peer's handshake record first (it may be behind on the control stream).
    if open.wait_for(|o| *o).await.is_err() {
        return;
    }
    loop {
        let mut head = [0u8; FRAME_HEADER];
        match recv.read_exact(&mut head).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(0)) => return,
            Err(ReadExactError::FinishedEarly(_)) => {
                return violation(&*host, &wake, FrameError::Truncated("frame on a stream"));
            }
            // A reset stream: the core drops the partial message when the connection
            // closes; a lost connection is reported by the control stream.
            Err(ReadExactError::ReadError(_)) => return,
        }
        if head[0] != kind::DATA && head[0] != kind::ABORT {
            return violation(
                &*host,
                &wake,
                FrameError::Malformed(format!("frame type {} on a message stream", head[0])),
            );
        }
        let len = FRAME_HEADER + u32_at(&head, 8) as usize;
        if len > MAX_FRAME {
            return violation(
                &*host,
                &wake,
                FrameError::Oversized {
                    what: "frame",
                    len: len as u64,
                    max: MAX_FRAME as u64,
                },
            );
        }
        let mut f = vec![0u8; len];
        f[..FRAME_HEADER].copy_from_slice(&head);
        match recv.read_exact(&mut f[FRAME_HEADER..]).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(_)) => {
                return violation(&*host, &wake, FrameError::Truncated("frame on a stream"));
            }
            Err(ReadExactError::ReadError(_)) => return,
        }
        let closed = host.with(|c, now| {
            c.handle_data(now, &f);
            c.is_closed()
        });
        wake.notify_one();
        if closed != Some(false) {
            return;
        }
    }
}
