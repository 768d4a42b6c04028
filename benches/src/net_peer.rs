//! The `net` bench's contenders (issues 7 and 8): a client in this process,
//! its server in a **separate process** (the bench or test binary
//! re-executed with [`NET_PEER_ENV`] naming the [`NetContender`]; its `main`
//! calls [`serve_if_net_peer`] first).
//!
//! - `bare-tcp`: a bare tokio TCP echo, the yardstick. Length-prefixed frames
//!   (4 bytes little-endian, then the payload) over one loopback connection
//!   with `TCP_NODELAY`; the server runs on a current-thread runtime, the
//!   client `block_on`s a current-thread runtime of its own.
//! - `rpc-tcp`, `rpc-tcp-lz4`, `rpc-tls`, `rpc-quic`: `rpc::Client` over a `NetClient`
//!   (one connection, the default 4 KiB frames), served by a `NetServer`;
//!   plain, with LZ4 per frame, inside TLS 1.3 (`rpc-tls`), and over QUIC
//!   (for TLS and QUIC, a self-signed certificate the server makes and hands
//!   to the client, which trusts only it).
//!
//! Every contender does the same work as `benches::echo`'s: the client
//! writes each payload (its sequence number, then a fill byte), the server
//! reads and checks every byte, echoes it (a copy) or, streaming, counts it;
//! the client checks every byte of each echo. A bad byte, a lost or
//! reordered message fails the bench.
//!
//! The `rpc-*` contenders also measure the small call **while a huge
//! message is on the wire** on the same connection
//! ([`NetBench::round_trips_during_big`]): a one-way message of
//! [`Options::big`] bytes (pseudo-random words: incompressible) is queued,
//! and small calls run until its last byte was written; only calls made
//! wholly within that window count.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, getppid, set_parent_process_death_signal};
use shm_channel::net::tls::{CertificateDer, PrivateKeyDer};
use shm_channel::net::{
    ClientConfig, ClientTls, Delivery, Identity, Lz4, NetClient, NetServer, ProtocolSpec, Served,
    ServerConfig, ServerTls,
};
use shm_channel::rpc::{self, HandlerError, HandlerResult, Method, RequestView, Responder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::echo::{
    Placement, Result, START_STOP, STUCK, check_ack, check_len, check_payload, check_seq,
    fill_message, fill_payload, read_message,
};

/// Names the contender when this process is a re-executed net server.
pub const NET_PEER_ENV: &str = "SHM_BENCH_NET_PEER";
/// The client's pid: the server exits if it is no longer its parent.
const PARENT_ENV: &str = "SHM_BENCH_NET_PARENT";
/// The largest message the server accepts, bytes.
const MAX_ENV: &str = "SHM_BENCH_NET_MAX";

/// The protocol of the `rpc-*` contenders.
const PROTOCOL: &str = "BenchNet";
/// Returns the payload, copied.
const ECHO: Method = Method::new("echo", 1);
/// One-way: the server reads every byte.
const SINK: Method = Method::new("sink", 2);
/// Answers the sequence number of the last `sink` read.
const FLUSH: Method = Method::new("flush", 3);
/// One-way, huge: the server reads every byte.
const BIG: Method = Method::new("big", 4);
/// Answers how many `big` messages were read and found whole.
const BIGS: Method = Method::new("bigs", 5);
/// How long the server may take to receive and read a huge message (1 GiB
/// over QUIC on a loaded machine: tens of seconds).
const BIG_WAIT: Duration = Duration::from_secs(180);
/// Huge messages in a row that may go out before a call returns.
const MAX_BARREN: u32 = 200;
/// Room for a message's header and object table beyond its payload.
const HEADROOM: u64 = 4096;

/// One way of carrying the calls; [`id`](NetContender::id) is the
/// criterion id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetContender {
    /// A bare tokio TCP echo: the yardstick.
    BareTcp,
    /// `rpc::Client` over a TCP `NetClient`.
    RpcTcp,
    /// The same with LZ4 per frame.
    RpcTcpLz4,
    /// `rpc::Client` over a TCP `NetClient` inside TLS 1.3.
    RpcTls,
    /// `rpc::Client` over a QUIC `NetClient`.
    RpcQuic,
}

impl NetContender {
    /// Every contender, in the order the bench runs them.
    pub const ALL: [NetContender; 5] = [
        NetContender::BareTcp,
        NetContender::RpcTcp,
        NetContender::RpcTcpLz4,
        NetContender::RpcTls,
        NetContender::RpcQuic,
    ];

    /// The id in criterion's output and in the docs.
    pub fn id(self) -> &'static str {
        match self {
            NetContender::BareTcp => "bare-tcp",
            NetContender::RpcTcp => "rpc-tcp",
            NetContender::RpcTcpLz4 => "rpc-tcp-lz4",
            NetContender::RpcTls => "rpc-tls",
            NetContender::RpcQuic => "rpc-quic",
        }
    }

    /// The contender with this id.
    pub fn from_id(id: &str) -> Option<NetContender> {
        Self::ALL.into_iter().find(|c| c.id() == id)
    }

    /// Whether it goes through the RPC layer (and can carry a huge message
    /// beside small calls).
    pub fn is_rpc(self) -> bool {
        self != NetContender::BareTcp
    }
}

/// How a client and its server are set up.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The largest payload of a round trip or a streamed message, bytes.
    pub max: usize,
    /// The huge message's payload, bytes (0: none; `rpc-*` only).
    pub big: usize,
}

/// The client end: the connection and the server process.
pub struct NetBench {
    conn: Conn,
    server: Server,
    max: usize,
    seq: u64,
    big: Option<Big>,
}

enum Conn {
    Bare(Box<BareClient>),
    Rpc(Box<rpc::Client<NetClient>>),
}

/// The huge message: its payload (written once, when first needed) and
/// how many were sent.
struct Big {
    len: usize,
    payload: Vec<u8>,
    sent: u64,
    /// Whether the last one is still being written (kept across batches).
    in_flight: bool,
    /// Messages fully written before the last one, and since.
    base: u64,
    since: u64,
}

impl NetBench {
    /// Starts a server process for `contender` (pinned as `placement` says;
    /// the caller pinned this thread with `echo::pin_client`) and connects.
    pub fn start(contender: NetContender, placement: Placement, opts: Options) -> Result<NetBench> {
        check_len(opts.max, usize::MAX)?;
        let max_message = opts.max.max(opts.big) as u64 + HEADROOM;
        let mut server = Server::spawn(contender, placement, max_message)?;
        let (port, cert) = server.ready()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let conn = match contender {
            NetContender::BareTcp => Conn::Bare(Box::new(BareClient::connect(addr, opts.max)?)),
            _ => {
                let mut config = ClientConfig::new(ProtocolSpec::new(PROTOCOL, 1));
                config.conn.max_message = max_message;
                // One connection, as the bare echo has (and the huge message must
                // share it with the small calls).
                config.pool.max_connections = 1;
                // Streamed and huge messages, and the calls that count them, go
                // out one after another: frames of messages in progress interleave,
                // so a later small message would otherwise complete first.
                for m in [SINK, FLUSH, BIG, BIGS] {
                    config.deliveries.insert(m.id, Delivery::Ordered);
                }
                if contender == NetContender::RpcTcpLz4 {
                    config.conn.compression = vec![Arc::new(Lz4)];
                }
                let tls = || ClientTls::new("localhost", vec![CertificateDer::from(cert.clone())]);
                let net = match contender {
                    NetContender::RpcQuic => {
                        NetClient::connect_quic(vec![addr], config, &tls(), START_STOP)?
                    }
                    _ => {
                        if contender == NetContender::RpcTls {
                            config.tls = Some(tls());
                        }
                        NetClient::connect(vec![addr], config, START_STOP)?
                    }
                };
                let mut client = rpc::Client::new(net);
                client.set_default_timeout(STUCK);
                Conn::Rpc(Box::new(client))
            }
        };
        if opts.big > 0 {
            check_len(opts.big, usize::MAX)?;
        }
        let big = (opts.big > 0).then_some(Big {
            len: opts.big,
            payload: Vec::new(),
            sent: 0,
            in_flight: false,
            base: 0,
            since: 0,
        });
        Ok(NetBench {
            conn,
            server,
            max: opts.max,
            seq: 0,
            big,
        })
    }

    /// `count` round trips of `len` bytes; `each` after every one.
    pub fn round_trips(&mut self, len: usize, count: u64, each: &mut dyn FnMut()) -> Result<()> {
        check_len(len, self.max)?;
        for _ in 0..count {
            self.seq += 1;
            let seq = self.seq;
            match &mut self.conn {
                Conn::Bare(c) => c.round_trip(seq, len)?,
                Conn::Rpc(c) => rpc_round_trip(c, &ECHO, seq, len)?,
            }
            each();
        }
        Ok(())
    }

    /// Streams `count` messages of `len` bytes, then waits until the server
    /// read them all (the bare echo acknowledges the last; the RPC client
    /// calls `flush`, answered once every earlier message was handled).
    pub fn stream(&mut self, len: usize, count: u64) -> Result<()> {
        check_len(len, self.max)?;
        if count == 0 {
            return Ok(());
        }
        let first = self.seq + 1;
        let last = self.seq + count;
        self.seq = last;
        match &mut self.conn {
            Conn::Bare(c) => c.stream(first, last, len),
            Conn::Rpc(c) => {
                for seq in first..=last {
                    c.send_oneway_with(
                        &SINK,
                        &[len as u64],
                        |sink| {
                            fill_message(sink.object(0, len as u64)?, seq, false);
                            Ok(())
                        },
                        STUCK,
                        false,
                    )?;
                }
                let got = poll_count(c, &FLUSH, last, STUCK)?;
                check_seq(got, last)
            }
        }
    }

    /// Round trips of `len` bytes while the huge message is being written
    /// on the same connection, until `count` of them were made wholly
    /// within such a window; a new huge message is queued (not timed)
    /// whenever the last one is out. Each counted call's time goes to
    /// `record`; returns their total.
    pub fn round_trips_during_big(
        &mut self,
        len: usize,
        count: u64,
        record: &mut dyn FnMut(Duration),
    ) -> Result<Duration> {
        check_len(len, self.max)?;
        let (Conn::Rpc(c), Some(big)) = (&mut self.conn, &mut self.big) else {
            return Err("a huge message needs an rpc contender started with Options::big".into());
        };
        if big.payload.is_empty() {
            big.payload = vec![0u8; big.len];
            fill_noise(&mut big.payload);
        }
        let mut total = Duration::ZERO;
        let mut counted = 0;
        // Huge messages sent without a call counted within one: the transfer
        // is faster than a call, so there is nothing to measure.
        let mut barren = 0;
        while counted < count {
            if !big.in_flight {
                if barren > MAX_BARREN {
                    return Err(format!(
                        "{barren} huge messages of {} bytes each went out before a call returned",
                        big.len
                    )
                    .into());
                }
                barren += 1;
                // The server handles one connection's requests in order, on one
                // thread: reading the last huge message whole takes it a while,
                // and calls made meanwhile would measure that, not the wire.
                // Wait (untimed) until it is done.
                let read = poll_count(c, &BIGS, big.sent, BIG_WAIT)?;
                if read != big.sent {
                    return Err(format!(
                        "the server read {read} huge messages whole, {} were sent",
                        big.sent
                    )
                    .into());
                }
                big.base = c.transport().messages_sent();
                big.since = 0;
                let payload = &big.payload;
                c.send_oneway_with(
                    &BIG,
                    &[payload.len() as u64],
                    |sink| {
                        sink.object(0, payload.len() as u64)?
                            .copy_from_slice(payload);
                        Ok(())
                    },
                    STUCK,
                    false,
                )?;
                big.sent += 1;
                big.in_flight = true;
            }
            self.seq += 1;
            let start = Instant::now();
            rpc_round_trip(c, &ECHO, self.seq, len)?;
            let took = start.elapsed();
            big.since += 1;
            // The huge message is out once the count of messages written passed it.
            let out = c.transport().messages_sent() >= big.base + 1 + big.since;
            if !out {
                record(took);
                total += took;
                counted += 1;
                barren = 0;
            }
            big.in_flight = !out;
        }
        Ok(total)
    }

    /// Ends the connection and waits for the server to exit cleanly; with a
    /// huge message, first checks the server read every one of them whole.
    pub fn finish(self) -> Result<()> {
        let NetBench {
            conn,
            mut server,
            big,
            ..
        } = self;
        match conn {
            Conn::Bare(c) => drop(c),
            Conn::Rpc(mut c) => {
                if let Some(big) = big {
                    let got = poll_count(&mut c, &BIGS, big.sent, BIG_WAIT)?;
                    if got != big.sent {
                        return Err(format!(
                            "the server read {got} huge messages whole, {} were sent",
                            big.sent
                        )
                        .into());
                    }
                }
                let net = c.into_transport();
                net.close(false);
                drop(net);
            }
        }
        server.finish()
    }
}

/// The huge message's payload: pseudo-random words (incompressible, so LZ4
/// tries every frame and sends it as it is), a function of their index.
fn noise(i: usize) -> u64 {
    // splitmix64's finaliser.
    let mut x = (i as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fill_noise(data: &mut [u8]) {
    for (i, w) in data.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&noise(i).to_le_bytes());
    }
}

/// Reads every byte of a huge message and checks it.
fn check_noise(data: &[u8]) -> Result<()> {
    if data.is_empty() || !data.len().is_multiple_of(8) {
        return Err(format!("a huge message of {} bytes", data.len()).into());
    }
    let diff = data.chunks_exact(8).enumerate().fold(0u64, |acc, (i, w)| {
        acc | (u64::from_le_bytes(w.try_into().unwrap_or_default()) ^ noise(i))
    });
    if diff != 0 {
        return Err("a huge message is corrupted".into());
    }
    Ok(())
}

/// One echo call of `len` bytes (payload `seq`) through `method` (an echo: the reply is
/// the request's object 0), its reply checked. Shared with the gateway bench.
pub(crate) fn rpc_round_trip<T: rpc::Transport>(
    c: &mut rpc::Client<T>,
    method: &Method,
    seq: u64,
    len: usize,
) -> Result<()> {
    c.call_with(
        method,
        &[len as u64],
        |sink| {
            fill_payload(sink.object(0, len as u64)?, seq);
            Ok(())
        },
        STUCK,
        |m| {
            let data = m.object(0).ok_or("a reply without its payload")?;
            check_payload(data, seq, len).map_err(|e| e.to_string())
        },
    )?;
    Ok(())
}

/// Calls `method` (`flush` or `bigs`) until the server's count reaches
/// `want` or `timeout` passes; returns the last answer. Over TCP the first
/// answer is final (both it and what it counts are `@ordered`, and one TCP
/// stream delivers in order); over QUIC each message has a stream of its
/// own, and a small call may overtake the end of a large message sent
/// before it.
fn poll_count(
    c: &mut rpc::Client<NetClient>,
    method: &Method,
    want: u64,
    timeout: Duration,
) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = c.call(method, &[], timeout, decode_u64)?;
        if got >= want || Instant::now() >= deadline {
            return Ok(got);
        }
    }
}

fn decode_u64(m: &dyn rpc::IncomingMessage) -> std::result::Result<u64, String> {
    m.object(0)
        .and_then(|d| d.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| "a reply without its u64".to_owned())
}

// ---------------------------------------------------------------------------------------
// The bare tokio echo.

/// The bare client: a current-thread runtime driving one TCP stream.
struct BareClient {
    rt: tokio::runtime::Runtime,
    stream: tokio::net::TcpStream,
    /// The frame being sent (length and payload), reused.
    out: Vec<u8>,
    /// The payload received, reused.
    input: Vec<u8>,
}

impl BareClient {
    fn connect(addr: SocketAddr, max: usize) -> Result<BareClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stream = rt.block_on(async {
            tokio::time::timeout(START_STOP, tokio::net::TcpStream::connect(addr)).await
        })??;
        stream.set_nodelay(true)?;
        Ok(BareClient {
            rt,
            stream,
            out: Vec::with_capacity(max + 4),
            input: vec![0; max],
        })
    }

    fn round_trip(&mut self, seq: u64, len: usize) -> Result<()> {
        let BareClient {
            rt,
            stream,
            out,
            input,
        } = self;
        rt.block_on(async {
            frame_message(out, seq, len, false, false);
            stream.write_all(out).await?;
            let (got, _) = recv_frame(stream, input, len)
                .await?
                .ok_or("the echo server closed the connection")?;
            check_payload(&input[..got], seq, len)
        })
    }

    fn stream(&mut self, first: u64, last: u64, len: usize) -> Result<()> {
        let BareClient {
            rt,
            stream,
            out,
            input,
        } = self;
        rt.block_on(async {
            for seq in first..=last {
                frame_message(out, seq, len, true, seq == last);
                stream.write_all(out).await?;
            }
            let (got, _) = recv_frame(stream, input, 8)
                .await?
                .ok_or("the server closed the connection")?;
            check_ack(&input[..got], last)
        })
    }
}

/// Set in a bare frame's length word: a streamed message, not echoed.
const ONE_WAY: u32 = 1 << 31;

/// Message `seq` of `len` bytes as a frame, into `out`: a round trip, or a
/// streamed message (`one_way`, acknowledged when `ack`).
fn frame_message(out: &mut Vec<u8>, seq: u64, len: usize, one_way: bool, ack: bool) {
    out.clear();
    let word = len as u32 | if one_way { ONE_WAY } else { 0 };
    out.extend_from_slice(&word.to_le_bytes());
    out.resize(4 + len, 0);
    fill_message(&mut out[4..], seq, ack);
}

/// Reads one frame's payload into `input`; returns its length and whether
/// it is one-way; `Ok(None)` at a clean end of input between frames.
async fn recv_frame(
    stream: &mut tokio::net::TcpStream,
    input: &mut [u8],
    max: usize,
) -> Result<Option<(usize, bool)>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let word = u32::from_le_bytes(len);
    let len = (word & !ONE_WAY) as usize;
    if len > max || len > input.len() {
        return Err(format!("a frame of {len} bytes, more than the {max} expected").into());
    }
    stream.read_exact(&mut input[..len]).await?;
    Ok(Some((len, word & ONE_WAY != 0)))
}

/// The bare server: accepts one connection, echoes each round trip and
/// reads each streamed message (acknowledging those marked `ACK`) until the
/// client closes it.
async fn serve_bare(listener: tokio::net::TcpListener, max: usize) -> Result<()> {
    let (mut stream, _) = tokio::time::timeout(START_STOP, listener.accept()).await??;
    stream.set_nodelay(true)?;
    let mut input = vec![0u8; max];
    let mut out = Vec::with_capacity(max + 4);
    let mut order = Order::default();
    while let Some((len, one_way)) = recv_frame(&mut stream, &mut input, max).await? {
        let data = &input[..len];
        let (seq, ack) = order.take(data)?;
        out.clear();
        if one_way {
            if !ack {
                continue;
            }
            out.extend_from_slice(&8u32.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
        } else {
            out.extend_from_slice(&(len as u32).to_le_bytes());
            // The copy reads every byte received and writes every byte sent.
            out.extend_from_slice(data);
        }
        stream.write_all(&out).await?;
    }
    Ok(())
}

/// Checks that messages arrive whole and in order: round trips and streamed
/// messages are numbered from one sequence by the client.
#[derive(Default)]
struct Order {
    last: u64,
}

impl Order {
    /// Reads every byte of `data`; returns its sequence number and whether
    /// it asks for an acknowledgement.
    fn take(&mut self, data: &[u8]) -> Result<(u64, bool)> {
        let (seq, ack) = read_message(data)?;
        check_seq(seq, self.last + 1)?;
        self.last = seq;
        Ok((seq, ack))
    }
}

// ---------------------------------------------------------------------------------------
// The RPC server.

/// Which messages of one sequence (round trips and streamed messages) a
/// server has read: every number up to `last`, and those beyond it that
/// arrived early. Over QUIC each message has a stream of its own, and one
/// may overtake another sent before it, even `@ordered` ones; a number
/// read twice, or never, is still caught (`flush` answers `last`).
#[derive(Default)]
struct Seen {
    last: u64,
    ahead: std::collections::BTreeSet<u64>,
}

impl Seen {
    fn take(&mut self, data: &[u8]) -> Result<()> {
        let (seq, _) = read_message(data)?;
        if seq <= self.last || !self.ahead.insert(seq) {
            return Err(format!("message {seq} arrived twice").into());
        }
        while self.ahead.remove(&(self.last + 1)) {
            self.last += 1;
        }
        Ok(())
    }
}

/// What the RPC server's handlers share: the messages read (one sequence
/// for round trips and streamed messages), the count of huge messages read
/// whole, and the first failure of a one-way message (reported through the
/// next `flush` or `bigs`: one-ways have no reply).
#[derive(Default)]
struct RpcState {
    seen: Mutex<Seen>,
    bigs: AtomicU64,
    failed: Mutex<Option<String>>,
}

impl RpcState {
    fn take(&self, data: &[u8]) -> Result<()> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(data)
    }

    fn fail(&self, e: String) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.get_or_insert(e);
    }

    fn check_failed(&self) -> std::result::Result<(), HandlerError> {
        match &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(HandlerError::Failed(e.clone())),
            None => Ok(()),
        }
    }

    fn handle(&self, req: &RequestView<'_>, resp: Responder<'_>) -> HandlerResult {
        let payload = || {
            req.object(0)
                .ok_or_else(|| HandlerError::Failed("a request without its payload".into()))
        };
        match req.message_id() {
            1 => {
                let data = payload()?;
                self.take(data)
                    .map_err(|e| HandlerError::Failed(e.to_string()))?;
                // The copy reads every byte received and writes every byte sent.
                resp.reply(&[(0, data)])
            }
            2 => {
                if let Err(e) = payload()
                    .map_err(|e| e.to_string())
                    .and_then(|d| self.take(d).map_err(|e| e.to_string()))
                {
                    self.fail(format!("sink: {e}"));
                }
                resp.done()
            }
            3 => {
                self.check_failed()?;
                let last = self.seen.lock().unwrap_or_else(|e| e.into_inner()).last;
                resp.reply(&[(0, &last.to_le_bytes())])
            }
            4 => {
                match payload()
                    .map_err(|e| e.to_string())
                    .and_then(|d| check_noise(d).map_err(|e| e.to_string()))
                {
                    Ok(_) => {
                        self.bigs.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => self.fail(format!("big: {e}")),
                }
                resp.done()
            }
            5 => {
                self.check_failed()?;
                let n = self.bigs.load(Ordering::Relaxed);
                resp.reply(&[(0, &n.to_le_bytes())])
            }
            _ => Err(HandlerError::UnknownMethod),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The server process.

/// The server process: its stdout says where it listens (`ready <port>
/// <certificate hex or ->`), its stdin closing tells it to exit. Killed and
/// reaped if dropped before it exited.
struct Server {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    ready: mpsc::Receiver<std::io::Result<String>>,
}

impl Server {
    fn spawn(contender: NetContender, placement: Placement, max_message: u64) -> Result<Server> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(NET_PEER_ENV, contender.id())
            .env(MAX_ENV, max_message.to_string())
            .env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or("the server's stdout is missing")?;
        let mut server = Server {
            child: Some(child),
            stdin,
            ready: mpsc::channel().1,
        };
        if let Some((_, cpu)) = placement.cpus()
            && let Some(child) = &server.child
        {
            crate::echo::pin_process(Pid::from_child(child), cpu)?;
        }
        // A thread reads the line, so a server that never writes it is a
        // timeout, not a hang.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        server.ready = rx;
        Ok(server)
    }

    /// Waits for the server's port (and QUIC certificate).
    fn ready(&mut self) -> Result<(u16, Vec<u8>)> {
        let line = match self.ready.recv_timeout(START_STOP) {
            Ok(r) => r?,
            Err(_) => {
                return Err(format!("the server did not come up within {START_STOP:?}").into());
            }
        };
        let mut words = line.split_whitespace();
        let (Some("ready"), Some(port), Some(cert)) = (words.next(), words.next(), words.next())
        else {
            return Err(format!("the server said {line:?}, not its port").into());
        };
        let cert = if cert == "-" {
            Vec::new()
        } else {
            from_hex(cert)?
        };
        Ok((port.parse()?, cert))
    }

    /// Closes the server's stdin and waits for it to exit with success.
    fn finish(&mut self) -> Result<()> {
        drop(self.stdin.take());
        crate::echo::wait_child_success(&mut self.child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        crate::echo::kill_child(&mut self.child);
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return Err("odd hex length".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| Ok(u8::from_str_radix(&s[i..i + 2], 16)?))
        .collect()
}

/// If this process is a re-executed net server, serves its client and
/// returns the exit code; `None` otherwise. Call it first thing in `main`.
pub fn serve_if_net_peer() -> Option<i32> {
    let id = std::env::var(NET_PEER_ENV).ok()?;
    Some(match serve(&id) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("net bench server ({id}): {e}");
            1
        }
    })
}

fn serve(id: &str) -> Result<()> {
    let contender =
        NetContender::from_id(id).ok_or_else(|| format!("unknown net contender {id:?}"))?;
    let env = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let max_message: u64 = env(MAX_ENV)?.parse()?;
    let parent: i32 = env(PARENT_ENV)?.parse()?;
    // Die with the client even if it is killed; then check it did not die
    // before this took effect.
    set_parent_process_death_signal(Some(Signal::KILL))?;
    if getppid().map(Pid::as_raw_pid) != Some(parent) {
        return Err("the client is gone".into());
    }
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let say_ready = |port: u16, cert: &[u8]| -> Result<()> {
        let cert = if cert.is_empty() {
            "-".to_owned()
        } else {
            to_hex(cert)
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {port} {cert}")?;
        out.flush()?;
        Ok(())
    };
    if contender == NetContender::BareTcp {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind(any))?;
        say_ready(listener.local_addr()?.port(), &[])?;
        let max = usize::try_from(max_message)?;
        return rt.block_on(serve_bare(listener, max));
    }
    let state = Arc::new(RpcState::default());
    let handler_state = Arc::clone(&state);
    let served = vec![Served::new(
        ProtocolSpec::new(PROTOCOL, 1),
        move |req, resp| handler_state.handle(req, resp),
    )];
    let mut config = ServerConfig::default();
    config.conn.max_message = max_message;
    if contender == NetContender::RpcTcpLz4 {
        config.conn.compression = vec![Arc::new(Lz4)];
    }
    let identity = || -> Result<(Identity, Vec<u8>)> {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
        let der = cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        Ok((Identity::new(vec![der.clone()], key), der.to_vec()))
    };
    let (server, cert) = match contender {
        NetContender::RpcQuic => {
            let (id, der) = identity()?;
            let tls = ServerTls::new(id);
            (NetServer::bind_quic(any, config, served, &tls)?, der)
        }
        NetContender::RpcTls => {
            let (id, der) = identity()?;
            config.tls = Some(ServerTls::new(id));
            (NetServer::bind(any, config, served)?, der)
        }
        _ => (NetServer::bind(any, config, served)?, Vec::new()),
    };
    say_ready(server.local_addr().port(), &cert)?;
    // Serves until the client closes our stdin.
    let mut sink = Vec::new();
    std::io::stdin().lock().read_to_end(&mut sink)?;
    drop(server);
    match state
        .failed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(from_hex(&to_hex(&bytes)).unwrap(), bytes);
        assert!(from_hex("abc").is_err());
        assert!(from_hex("zz").is_err());
    }

    #[test]
    fn noise_is_checked_word_by_word() {
        let mut data = vec![0u8; 4096];
        fill_noise(&mut data);
        check_noise(&data).unwrap();
        data[1234] ^= 1;
        assert!(check_noise(&data).is_err());
        assert!(check_noise(&data[..12]).is_err());
        assert!(check_noise(&[]).is_err());
    }

    #[test]
    fn seen_takes_any_order_once() {
        let msg = |seq| {
            let mut data = vec![0u8; 16];
            fill_message(&mut data, seq, false);
            data
        };
        let mut seen = Seen::default();
        seen.take(&msg(2)).unwrap();
        assert_eq!(seen.last, 0);
        seen.take(&msg(1)).unwrap();
        assert_eq!(seen.last, 2);
        assert!(seen.take(&msg(2)).is_err());
        seen.take(&msg(4)).unwrap();
        assert!(seen.take(&msg(4)).is_err());
        assert_eq!(seen.last, 2);
        let mut bad = msg(3);
        bad[9] ^= 1;
        assert!(seen.take(&bad).is_err());
    }

    #[test]
    fn ids_round_trip() {
        for c in NetContender::ALL {
            assert_eq!(NetContender::from_id(c.id()), Some(c));
        }
        assert_eq!(NetContender::from_id("tcp"), None);
    }
}
