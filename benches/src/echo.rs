//! Peers in a separate process, for the round-trip and streaming benches.
//!
//! A bench binary re-executes itself as the peer: [`Client::start`] spawns
//! `current_exe()` with [`PEER_ENV`] naming the [`Contender`], and the bench's
//! `main` calls [`serve_if_peer`] first, which runs the server and exits.
//! One server process lives for all the message sizes of one contender, so
//! process start-up stays out of every measurement.
//!
//! The server works in one of two [`Mode`]s:
//!
//! - [`Mode::Echo`] (round trips): the client **writes** the payload (its
//!   first 8 bytes the sequence number, the rest a fill byte derived from it),
//!   the server **reads** all of it, checking it, and **writes** it into its
//!   reply (a copy), and the client **reads** every byte of the reply and
//!   checks it.
//! - [`Mode::Stream`] (one way): the client writes and sends a batch of
//!   messages; the server reads and checks every byte of each; the last
//!   message of a batch carries [`ACK`] in its sequence word, and the server
//!   answers it with an 8-byte acknowledgement, which ends the batch.
//!
//! Lengths must be multiples of 8 and at least 8 (the raw contender moves
//! whole words).
//!
//! Where the processes run is a [`Placement`]: free, both on one core, or on
//! two different cores.
#![forbid(unsafe_code)]

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, getppid, set_parent_process_death_signal};
use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
use shm_channel::layout::object_size;
use shm_channel::ring::testing::SharedWords;
use shm_channel::ring::{RecvError, WaitPolicy};
use shm_channel::service::{self, ClientConfig, ConnectError, Service, ServiceConfig};
use shm_channel::{Channel, Kind};

use crate::{iox_peer, ipc_peer, stubs_peer};

/// Errors of the bench harness: reported, then the bench fails.
pub type Result<T, E = Box<dyn Error + Send + Sync>> = std::result::Result<T, E>;

/// Names the contender when this process is a re-executed server.
pub const PEER_ENV: &str = "SHM_BENCH_ECHO_PEER";
/// Where the server finds its client (a service name, a socket path, an
/// address, or the raw contender's memfds).
pub(crate) const WHERE_ENV: &str = "SHM_BENCH_ECHO_WHERE";
/// The largest payload the server must handle.
const MAX_ENV: &str = "SHM_BENCH_ECHO_MAX";
/// The client's pid: the server exits if it is no longer its parent.
const PARENT_ENV: &str = "SHM_BENCH_ECHO_PARENT";
/// `echo` or `stream`.
const MODE_ENV: &str = "SHM_BENCH_ECHO_MODE";
/// The shm contenders' ring maximum, bytes.
const RING_ENV: &str = "SHM_BENCH_RING_MAX";
/// Set (to `1`) when the generated client's both sides poll
/// (`Options::stub_spin`).
const STUB_SPIN_ENV: &str = "SHM_BENCH_STUB_SPIN";

/// A healthy peer answers in microseconds; this only fires when it is stuck
/// or gone, and turns a hang into a failed bench.
pub const STUCK: Duration = Duration::from_secs(10);
/// How long the server may take to come up, and to exit at the end.
pub(crate) const START_STOP: Duration = Duration::from_secs(10);
/// How often a waiting server checks that its client still lives.
const LIVENESS: Duration = Duration::from_millis(100);
/// The shm contenders' protocol name.
const PROTOCOL: &str = "BenchEcho";
/// Message ids of the shm contenders.
const PING: u64 = 1;
const PONG: u64 = 2;
/// The object id of the payload.
const PAYLOAD: u64 = 0;
/// Set in a streamed message's sequence word: the server acknowledges it.
pub const ACK: u64 = 1 << 63;

/// One way of moving the bytes; [`id`](Contender::id) is the criterion id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contender {
    /// shm-channel, both sides polling (`WaitPolicy::SPIN`).
    ShmSpin,
    /// shm-channel with its default policy: adaptive spin, then park.
    ShmPark,
    /// shm-channel parking at once (`WaitPolicy::PARK`): every message a
    /// kernel wake-up.
    ShmParkNoSpin,
    /// The blocking client generated from `benches/idl/bench.idl`, over a
    /// shm-channel `Channel` with the default policy.
    GenBlocking,
    /// The async client generated from the same IDL (tokio, current thread).
    GenAsync,
    /// A Unix stream socket, blocking reads and writes.
    Uds,
    /// Two pipes (the server's stdin and stdout).
    Pipe,
    /// TCP over loopback with `TCP_NODELAY`.
    Tcp,
    /// ipc-channel's byte channels (`ipc::bytes_channel`), set up through an
    /// `IpcOneShotServer` as its documentation shows for two processes.
    IpcChannel,
    /// iceoryx2 publish-subscribe over `[u8]` slices (`ipc::Service`), one
    /// service each way, both sides polling `receive`.
    Iceoryx2,
    /// A bare shared-memory ping-pong (or, streaming, a single-producer
    /// ring) on atomic words, no library: the physical limit.
    RawSpin,
}

impl Contender {
    /// Every contender, in the order the benches run them.
    pub const ALL: [Contender; 11] = [
        Contender::RawSpin,
        Contender::ShmSpin,
        Contender::ShmPark,
        Contender::ShmParkNoSpin,
        Contender::GenBlocking,
        Contender::GenAsync,
        Contender::Iceoryx2,
        Contender::IpcChannel,
        Contender::Uds,
        Contender::Pipe,
        Contender::Tcp,
    ];

    /// The id in criterion's output and in the docs.
    pub fn id(self) -> &'static str {
        match self {
            Contender::ShmSpin => "shm-spin",
            Contender::ShmPark => "shm-park",
            Contender::ShmParkNoSpin => "shm-park-nospin",
            Contender::GenBlocking => "gen-blocking",
            Contender::GenAsync => "gen-async",
            Contender::Uds => "uds",
            Contender::Pipe => "pipe",
            Contender::Tcp => "tcp",
            Contender::IpcChannel => "ipc-channel",
            Contender::Iceoryx2 => "iceoryx2",
            Contender::RawSpin => "raw-spin",
        }
    }

    /// The contender with this id.
    pub fn from_id(id: &str) -> Option<Contender> {
        Self::ALL.into_iter().find(|c| c.id() == id)
    }

    /// The shm contenders' wait policy (both sides use the same).
    fn wait_policy(self) -> Option<WaitPolicy> {
        match self {
            Contender::ShmSpin => Some(WaitPolicy::SPIN),
            Contender::ShmPark => Some(WaitPolicy::default()),
            Contender::ShmParkNoSpin => Some(WaitPolicy::PARK),
            _ => None,
        }
    }
}

/// What the server does with each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Echo it (round trips).
    Echo,
    /// Read it; acknowledge the last of each batch (one-way streaming).
    Stream,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Echo => "echo",
            Mode::Stream => "stream",
        }
    }
}

/// How a client and its server are set up.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Echo or stream.
    pub mode: Mode,
    /// The largest payload, bytes.
    pub max: usize,
    /// The shm contenders' ring maximum (both directions), bytes; iceoryx2's
    /// publishers are sized for `max`.
    pub ring_max: u64,
    /// The blocking generated client (`gen-blocking`) and its server both
    /// poll (`WaitPolicy::SPIN`, as `shm-spin`) instead of shm-channel's
    /// default spin-then-park. Not for `gen-async`.
    pub stub_spin: bool,
    /// The async generated client (`gen-async`) parks at once
    /// (`WaitPolicy::PARK` on its channel; the server keeps the default):
    /// the async client as it was before its spin phase, every reply a
    /// kernel wake-up.
    pub async_nospin: bool,
}

impl Options {
    /// `mode` with payloads up to `max` bytes and rings of a maximum of 4
    /// times that (at least 4 MiB): room for several of the largest
    /// messages (rings start at a page and grow on demand).
    pub fn new(mode: Mode, max: usize) -> Options {
        Options {
            mode,
            max,
            ring_max: (4 * max as u64).max(4 << 20),
            stub_spin: false,
            async_nospin: false,
        }
    }
}

/// Which CPUs the client and the server run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Wherever the scheduler puts them.
    Unpinned,
    /// Both pinned to this one CPU: every hand-over is a context switch.
    SameCore(usize),
    /// Client on the first CPU, server on the second.
    CrossCore(usize, usize),
}

impl Placement {
    /// Placements named in `list` (comma-separated: `unpinned`, `samecore`,
    /// `crosscore`), built from the CPUs this process may run on; a
    /// placement that needs more CPUs than allowed is left out with a note
    /// on stderr.
    pub fn parse_list(list: &str) -> Result<Vec<Placement>> {
        let cpus = allowed_cpus()?;
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let placement = match (name, cpus.as_slice()) {
                ("unpinned", _) => Placement::Unpinned,
                ("samecore", [first, ..]) => Placement::SameCore(*first),
                ("crosscore", [first, second, ..]) => Placement::CrossCore(*first, *second),
                ("samecore" | "crosscore", _) => {
                    eprintln!("skipping {name}: this process may only run on CPUs {cpus:?}");
                    continue;
                }
                _ => return Err(format!("unknown placement {name:?}").into()),
            };
            out.push(placement);
        }
        Ok(out)
    }

    /// Appended to the contender's id: ``, `-samecore`, `-crosscore`.
    pub fn suffix(self) -> &'static str {
        match self {
            Placement::Unpinned => "",
            Placement::SameCore(_) => "-samecore",
            Placement::CrossCore(..) => "-crosscore",
        }
    }

    /// For humans and the JSON files: `unpinned`, `both on CPU 0`, ...
    pub fn describe(self) -> String {
        match self {
            Placement::Unpinned => "unpinned".to_owned(),
            Placement::SameCore(cpu) => format!("client and server both on CPU {cpu}"),
            Placement::CrossCore(a, b) => format!("client on CPU {a}, server on CPU {b}"),
        }
    }

    /// The (client, server) CPUs, if pinned.
    pub(crate) fn cpus(self) -> Option<(usize, usize)> {
        match self {
            Placement::Unpinned => None,
            Placement::SameCore(cpu) => Some((cpu, cpu)),
            Placement::CrossCore(a, b) => Some((a, b)),
        }
    }
}

/// The CPUs this thread may run on.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU).filter(|&i| set.is_set(i)).collect())
}

/// Pins the calling thread (and the processes it spawns from now on) for
/// the client's side of `placement`; returns the previous mask, to give to
/// [`restore_affinity`]. `Unpinned` changes nothing.
pub fn pin_client(placement: Placement) -> Result<Option<CpuSet>> {
    let Some((cpu, _)) = placement.cpus() else {
        return Ok(None);
    };
    let before = sched_getaffinity(None)?;
    sched_setaffinity(None, &one_cpu(cpu))?;
    Ok(Some(before))
}

/// Undoes [`pin_client`].
pub fn restore_affinity(before: Option<CpuSet>) -> Result<()> {
    if let Some(set) = before {
        sched_setaffinity(None, &set)?;
    }
    Ok(())
}

/// Pins process `pid` (its main thread, and the threads it starts from
/// then on) to `cpu`.
pub(crate) fn pin_process(pid: Pid, cpu: usize) -> Result<()> {
    sched_setaffinity(Some(pid), &one_cpu(cpu))?;
    Ok(())
}

fn one_cpu(cpu: usize) -> CpuSet {
    let mut set = CpuSet::new();
    set.set(cpu);
    set
}

/// Writes the payload of message `seq` into `data`: `seq` (with [`ACK`] if
/// `ack`) in the first 8 bytes, the fill byte `seq as u8` in the rest.
pub fn fill_message(data: &mut [u8], seq: u64, ack: bool) {
    let (head, rest) = data.split_at_mut(8);
    let word = if ack { seq | ACK } else { seq };
    head.copy_from_slice(&word.to_le_bytes());
    rest.fill(seq as u8);
}

/// Writes the payload of round trip `seq` into `data`.
pub fn fill_payload(data: &mut [u8], seq: u64) {
    fill_message(data, seq, false);
}

/// Reads every byte of a message written by [`fill_message`] and checks
/// it; returns its sequence number and whether it asks for an ACK.
pub fn read_message(data: &[u8]) -> Result<(u64, bool)> {
    let Some((head, rest)) = data.split_first_chunk::<8>() else {
        return Err(format!("a message of {} bytes, shorter than 8", data.len()).into());
    };
    let word = u64::from_le_bytes(*head);
    let seq = word & !ACK;
    let fill = seq as u8;
    // An OR over all bytes rather than `all`: no early exit, so it
    // vectorises and always reads everything.
    let diff = rest.iter().fold(0u8, |acc, &b| acc | (b ^ fill));
    if diff != 0 {
        return Err(format!("message {seq}: the payload is corrupted").into());
    }
    Ok((seq, word & ACK != 0))
}

/// Reads every byte of `data` and checks it is the payload of round trip
/// `seq` of `len` bytes.
pub fn check_payload(data: &[u8], seq: u64, len: usize) -> Result<()> {
    if data.len() != len {
        return Err(format!(
            "round trip {seq}: {} bytes came back, not {len}",
            data.len()
        )
        .into());
    }
    let (got, ack) = read_message(data)?;
    if got != seq || ack {
        return Err(format!("round trip {seq}: the reply is of round trip {got}").into());
    }
    Ok(())
}

/// Checks a streamed batch's acknowledgement.
pub(crate) fn check_ack(data: &[u8], last: u64) -> Result<()> {
    let got = data
        .first_chunk::<8>()
        .map(|b| u64::from_le_bytes(*b))
        .ok_or("an acknowledgement shorter than 8 bytes")?;
    if data.len() != 8 || got != last {
        return Err(format!("expected the acknowledgement of {last}, got {got}").into());
    }
    Ok(())
}

pub(crate) fn check_len(len: usize, max: usize) -> Result<()> {
    if len < 8 || !len.is_multiple_of(8) || len > max {
        return Err(format!("payload of {len} bytes: must be a multiple of 8 in 8..={max}").into());
    }
    Ok(())
}

/// What a server does with one message, the same for every contender:
/// checks it is the next one and reads it all; in [`Mode::Echo`] the caller
/// then sends a copy back; in [`Mode::Stream`], returns whether to send an
/// acknowledgement.
pub(crate) struct Expect {
    next: u64,
}

impl Expect {
    pub(crate) fn new() -> Expect {
        Expect { next: 1 }
    }

    /// Checks `data`; returns `Some(seq)` when the server must answer now
    /// (every message in echo mode, the batch's last when streaming).
    pub(crate) fn take(&mut self, data: &[u8], mode: Mode) -> Result<Option<u64>> {
        let (seq, ack) = read_message(data)?;
        check_seq(seq, self.next)?;
        self.next += 1;
        Ok(match mode {
            Mode::Echo => Some(seq),
            Mode::Stream => ack.then_some(seq),
        })
    }
}

/// The client end: the connection and the server process.
pub struct Client {
    conn: Conn,
    server: ServerProcess,
    max: usize,
    seq: u64,
}

enum Conn {
    Shm(Box<Channel>),
    Stream(StreamConn),
    Raw(RawConn),
    Ipc(ipc_peer::IpcConn),
    Iox(Box<iox_peer::IoxConn>),
    Stub(stubs_peer::StubConn),
}

impl Client {
    /// Starts a server process for `contender` placed as `placement` says
    /// (the caller pinned this thread with [`pin_client`]) and connects to
    /// it.
    pub fn start(contender: Contender, placement: Placement, opts: Options) -> Result<Client> {
        let max = opts.max;
        check_len(max, usize::MAX)?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(PEER_ENV, contender.id())
            .env(MAX_ENV, max.to_string())
            .env(MODE_ENV, opts.mode.name())
            .env(RING_ENV, opts.ring_max.to_string())
            .env(STUB_SPIN_ENV, if opts.stub_spin { "1" } else { "0" })
            .env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let deadline = Instant::now() + START_STOP;
        let pin = |server: &ServerProcess| -> Result<()> {
            if let Some((_, cpu)) = placement.cpus() {
                sched_setaffinity(Some(server.pid()?), &one_cpu(cpu))?;
            }
            Ok(())
        };
        let (conn, server) = match contender {
            Contender::ShmSpin | Contender::ShmPark | Contender::ShmParkNoSpin => {
                let name = unique("rtt");
                cmd.env(WHERE_ENV, &name);
                let mut server = ServerProcess::spawn(&mut cmd)?;
                pin(&server)?;
                let config =
                    ClientConfig::new(PROTOCOL, 1..=1).ring_sizes(opts.ring_max, opts.ring_max);
                let mut channel = loop {
                    match service::connect(&name, &config) {
                        Ok(channel) => break channel,
                        // Not bound yet: the server is still starting.
                        Err(ConnectError::NotRunning { .. }) => server.still_starting(deadline)?,
                        Err(e) => return Err(e.into()),
                    }
                };
                if let Some(policy) = contender.wait_policy() {
                    channel.set_wait_policy(policy);
                }
                (Conn::Shm(Box::new(channel)), server)
            }
            Contender::GenBlocking | Contender::GenAsync => {
                let name = unique("gen");
                cmd.env(WHERE_ENV, &name);
                let mut server = ServerProcess::spawn(&mut cmd)?;
                pin(&server)?;
                let is_async = contender == Contender::GenAsync;
                if is_async && opts.stub_spin {
                    return Err("gen-async has no polling case".into());
                }
                // The client's policy; the server's comes from STUB_SPIN_ENV.
                let policy = if is_async {
                    opts.async_nospin.then_some(WaitPolicy::PARK)
                } else {
                    opts.stub_spin.then_some(WaitPolicy::SPIN)
                };
                let conn = stubs_peer::StubConn::connect(
                    &name,
                    opts.ring_max,
                    is_async,
                    policy,
                    &mut server,
                    deadline,
                )?;
                (Conn::Stub(conn), server)
            }
            Contender::Uds => {
                let path = std::env::temp_dir().join(format!("{}.sock", unique("rtt-uds")));
                let listener = UnixListener::bind(&path)?;
                let _unlink = RemoveOnDrop(path.clone());
                cmd.env(WHERE_ENV, &path);
                let mut server = ServerProcess::spawn(&mut cmd)?;
                pin(&server)?;
                listener.set_nonblocking(true)?;
                let (stream, _) = accept_until(&mut server, deadline, || listener.accept())?;
                stream.set_nonblocking(false)?;
                let reader = stream.try_clone()?;
                (Conn::Stream(StreamConn::new(reader, stream, max)), server)
            }
            Contender::Tcp => {
                let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
                cmd.env(WHERE_ENV, listener.local_addr()?.to_string());
                let mut server = ServerProcess::spawn(&mut cmd)?;
                pin(&server)?;
                listener.set_nonblocking(true)?;
                let (stream, _) = accept_until(&mut server, deadline, || listener.accept())?;
                stream.set_nonblocking(false)?;
                stream.set_nodelay(true)?;
                let reader = stream.try_clone()?;
                (Conn::Stream(StreamConn::new(reader, stream, max)), server)
            }
            Contender::Pipe => {
                cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
                let mut server = ServerProcess::spawn(&mut cmd)?;
                pin(&server)?;
                let child = server.child_mut()?;
                let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err("the server's pipes are missing".into());
                };
                (Conn::Stream(StreamConn::new(from, to, max)), server)
            }
            Contender::IpcChannel => {
                let (accept, name) = ipc_peer::IpcConn::listen()?;
                cmd.env(WHERE_ENV, name);
                let mut server = ServerProcess::spawn(&mut cmd)?;
                pin(&server)?;
                let conn = accept.wait(&mut server, deadline)?;
                (Conn::Ipc(conn), server)
            }
            Contender::Iceoryx2 => {
                let name = unique("iox");
                let iox = iox_peer::IoxConn::client(&name, max)?;
                cmd.env(WHERE_ENV, &name);
                let mut server = ServerProcess::spawn(&mut cmd)?;
                pin(&server)?;
                iox.wait_hello(&mut server, deadline)?;
                (Conn::Iox(Box::new(iox)), server)
            }
            Contender::RawSpin => {
                let raw = RawMemory::create(opts.mode, max)?;
                cmd.env(WHERE_ENV, raw.proc_paths());
                let server = ServerProcess::spawn(&mut cmd)?;
                pin(&server)?;
                (Conn::Raw(RawConn { mem: raw, sent: 0 }), server)
            }
        };
        Ok(Client {
            conn,
            server,
            max,
            seq: 0,
        })
    }

    /// The server's pid.
    pub fn server_pid(&self) -> u32 {
        self.server.0.as_ref().map_or(0, Child::id)
    }

    /// `count` round trips of `len` bytes; `each` after every one (the
    /// bench's clock and histogram). The async contender runs them inside
    /// one `block_on`.
    pub fn round_trips(&mut self, len: usize, count: u64, each: &mut dyn FnMut()) -> Result<()> {
        if let Conn::Stub(stub) = &mut self.conn {
            check_len(len, self.max)?;
            let first = self.seq + 1;
            self.seq += count;
            return stub.round_trips(first, count, len, each);
        }
        for _ in 0..count {
            self.round_trip(len)?;
            each();
        }
        Ok(())
    }

    /// `count` typed calls `add_one(seq) -> u64` through the generated
    /// client (the `gen-*` contenders only; the bare channel's counterpart
    /// is [`round_trips`](Self::round_trips) of 8 bytes); `each` after
    /// every one.
    pub fn typed_calls(&mut self, count: u64, each: &mut dyn FnMut()) -> Result<()> {
        let Conn::Stub(stub) = &mut self.conn else {
            return Err("typed calls need a generated client (gen-blocking, gen-async)".into());
        };
        let first = self.seq + 1;
        self.seq += count;
        stub.typed_calls(first, count, each)
    }

    /// One round trip of `len` bytes: write the payload, send it, receive
    /// the echo and check every byte of it.
    pub fn round_trip(&mut self, len: usize) -> Result<()> {
        check_len(len, self.max)?;
        self.seq += 1;
        let seq = self.seq;
        match &mut self.conn {
            Conn::Shm(ch) => {
                shm_send(ch.tx(), seq, len, false)?;
                let reply = ch.recv_timeout(STUCK)?;
                let data = reply.object(PAYLOAD).ok_or("a reply without its payload")?;
                check_payload(data, seq, len)
            }
            Conn::Stream(s) => s.round_trip(seq, len),
            Conn::Raw(r) => r.round_trip(seq, len),
            Conn::Ipc(c) => c.round_trip(seq, len),
            Conn::Iox(c) => c.round_trip(seq, len),
            Conn::Stub(c) => c.round_trips(seq, 1, len, &mut || {}),
        }
    }

    /// Streams `count` messages of `len` bytes (written in full by this
    /// side, read in full by the server), then waits for the server's
    /// acknowledgement of the last one.
    pub fn stream(&mut self, len: usize, count: u64) -> Result<()> {
        check_len(len, self.max)?;
        if count == 0 {
            return Ok(());
        }
        let first = self.seq + 1;
        let last = self.seq + count;
        self.seq = last;
        match &mut self.conn {
            Conn::Shm(ch) => {
                for seq in first..=last {
                    shm_send(ch.tx(), seq, len, seq == last)?;
                }
                let ack = ch.recv_timeout(STUCK)?;
                check_ack(ack.object(PAYLOAD).ok_or("an ack without payload")?, last)
            }
            Conn::Stream(s) => s.stream(first, last, len),
            Conn::Raw(r) => r.stream(first, last, len),
            Conn::Ipc(c) => c.stream(first, last, len),
            Conn::Iox(c) => c.stream(first, last, len),
            Conn::Stub(c) => c.stream(first, last, len),
        }
    }

    /// Ends the connection and waits for the server to exit cleanly.
    pub fn finish(self) -> Result<()> {
        let Client {
            conn, mut server, ..
        } = self;
        match conn {
            Conn::Shm(ch) => (*ch).close()?,
            // Dropping the write end is the server's end of input.
            Conn::Stream(s) => drop(s),
            Conn::Raw(r) => r.quit(),
            Conn::Ipc(c) => drop(c),
            Conn::Iox(c) => c.quit()?,
            Conn::Stub(c) => drop(c),
        }
        server.wait_success()
    }
}

/// Reserves, writes in place and sends one shm message.
fn shm_send(tx: &shm_channel::RingWriter, seq: u64, len: usize, ack: bool) -> Result<()> {
    let size = object_size(len as u64).ok_or("payload size overflows")?;
    let mut slot = tx.allocate_for_send_timeout(size, PING, 1, false, STUCK)?;
    slot.set_kind(Kind::OneWay);
    fill_message(slot.object_mut(PAYLOAD, len as u64)?, seq, ack);
    slot.send()?;
    Ok(())
}

/// A unique name among this process's servers and other processes.
fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("shm-bench-{what}-{}-{n}", std::process::id())
}

/// Removes a socket file when the client is set up (or fails to be).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Polls a non-blocking `accept` until the server connects, fails, or the
/// deadline passes.
fn accept_until<T>(
    server: &mut ServerProcess,
    deadline: Instant,
    mut accept: impl FnMut() -> io::Result<T>,
) -> Result<T> {
    loop {
        match accept() {
            Ok(v) => return Ok(v),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => server.still_starting(deadline)?,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The server process: killed and reaped if dropped before it exited, so a
/// failing bench leaves nothing behind.
pub(crate) struct ServerProcess(Option<Child>);

impl ServerProcess {
    fn spawn(cmd: &mut Command) -> Result<ServerProcess> {
        Ok(ServerProcess(Some(cmd.spawn()?)))
    }

    fn child_mut(&mut self) -> Result<&mut Child> {
        self.0.as_mut().ok_or_else(|| "the server is gone".into())
    }

    fn pid(&self) -> Result<Pid> {
        self.0
            .as_ref()
            .map(Pid::from_child)
            .ok_or_else(|| "the server is gone".into())
    }

    /// Between attempts to reach a starting server: fails if it exited or
    /// the deadline passed, else waits a millisecond.
    pub(crate) fn still_starting(&mut self, deadline: Instant) -> Result<()> {
        if let Some(status) = self.child_mut()?.try_wait()? {
            return Err(format!("the server exited while starting: {status}").into());
        }
        if Instant::now() >= deadline {
            return Err(format!("the server did not come up within {START_STOP:?}").into());
        }
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }

    /// Waits for the server to exit with success; kills it after
    /// [`START_STOP`].
    fn wait_success(&mut self) -> Result<()> {
        wait_child_success(&mut self.0)
    }
}

/// Waits up to [`START_STOP`] for the child in `slot` to exit with success,
/// emptying the slot once it exited. On a timeout the child stays in the slot,
/// for its owner's `Drop` to kill ([`kill_child`]).
pub(crate) fn wait_child_success(slot: &mut Option<Child>) -> Result<()> {
    let deadline = Instant::now() + START_STOP;
    let child = slot.as_mut().ok_or("the server is gone")?;
    loop {
        if let Some(status) = child.try_wait()? {
            *slot = None;
            return if status.success() {
                Ok(())
            } else {
                Err(format!("the server failed: {status}").into())
            };
        }
        if Instant::now() >= deadline {
            return Err(format!("the server did not exit within {START_STOP:?}").into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Kills and reaps the child in `slot`, if any: a failing bench leaves no
/// process behind.
pub(crate) fn kill_child(slot: &mut Option<Child>) {
    if let Some(mut child) = slot.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        kill_child(&mut self.0);
    }
}

/// A byte stream (socket or pipes) with length-prefixed frames: 4 bytes of
/// length (little-endian), then the payload.
struct StreamConn {
    reader: BufReader<Box<dyn Read + Send>>,
    writer: Box<dyn Write + Send>,
    /// The frame being sent (length and payload), reused.
    out: Vec<u8>,
    /// The payload received, reused.
    input: Vec<u8>,
}

impl StreamConn {
    fn new(
        reader: impl Read + Send + 'static,
        writer: impl Write + Send + 'static,
        max: usize,
    ) -> Self {
        StreamConn {
            // Room for a whole frame: one `read` usually takes all of it.
            reader: BufReader::with_capacity(max + 4, Box::new(reader)),
            writer: Box::new(writer),
            out: Vec::with_capacity(max + 4),
            input: vec![0; max],
        }
    }

    /// Sends `self.out` as one frame (one `write` when it fits the socket
    /// or pipe buffer).
    fn send_frame(&mut self) -> io::Result<()> {
        self.writer.write_all(&self.out)
    }

    /// Writes message `seq` of `len` bytes into `self.out` and sends it.
    fn send_message(&mut self, seq: u64, len: usize, ack: bool) -> io::Result<()> {
        self.out.clear();
        self.out.extend_from_slice(&(len as u32).to_le_bytes());
        self.out.resize(4 + len, 0);
        fill_message(&mut self.out[4..], seq, ack);
        self.send_frame()
    }

    /// Receives one frame into `self.input`; `Ok(None)` at a clean end of
    /// input between frames.
    fn recv_frame(&mut self, max: usize) -> Result<Option<usize>> {
        let mut len = [0u8; 4];
        match self.reader.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > max {
            return Err(format!("a frame of {len} bytes, more than the {max} expected").into());
        }
        self.reader.read_exact(&mut self.input[..len])?;
        Ok(Some(len))
    }

    fn round_trip(&mut self, seq: u64, len: usize) -> Result<()> {
        self.send_message(seq, len, false)?;
        let got = self
            .recv_frame(len)?
            .ok_or("the echo server closed the connection")?;
        check_payload(&self.input[..got], seq, len)
    }

    fn stream(&mut self, first: u64, last: u64, len: usize) -> Result<()> {
        for seq in first..=last {
            self.send_message(seq, len, seq == last)?;
        }
        let got = self
            .recv_frame(8)?
            .ok_or("the server closed the connection")?;
        check_ack(&self.input[..got], last)
    }

    /// The server's side: serves frames until the client closes.
    fn serve(&mut self, max: usize, mode: Mode) -> Result<()> {
        let mut expect = Expect::new();
        while let Some(len) = self.recv_frame(max)? {
            let data = &self.input[..len];
            let Some(seq) = expect.take(data, mode)? else {
                continue;
            };
            self.out.clear();
            match mode {
                Mode::Echo => {
                    self.out.extend_from_slice(&(len as u32).to_le_bytes());
                    // The copy reads every byte received and writes every
                    // byte sent.
                    self.out.extend_from_slice(data);
                }
                Mode::Stream => {
                    self.out.extend_from_slice(&8u32.to_le_bytes());
                    self.out.extend_from_slice(&seq.to_le_bytes());
                }
            }
            self.send_frame()?;
        }
        Ok(())
    }
}

pub(crate) fn check_seq(got: u64, expect: u64) -> Result<()> {
    if got != expect {
        return Err(format!("expected message {expect}, got {got}").into());
    }
    Ok(())
}

/// Control words of the raw contender, each on its own 128-byte stretch
/// (two cache lines, so the adjacent-line prefetcher does not couple them).
/// Echo: the request's sequence number; stream: the count of messages
/// published (the producer's head).
const CTL_REQUEST: usize = 0;
/// The payload's length.
const CTL_LEN: usize = 1;
/// Echo: the reply's sequence number; stream: the count of messages
/// consumed (the consumer's tail).
const CTL_REPLY: usize = 16;
/// Stream: the last acknowledged sequence number.
const CTL_ACK: usize = 32;
/// The request (or head) word that tells the raw server to exit.
const QUIT: u64 = u64::MAX;
/// The raw stream ring's data, bytes: room for at least two of the largest
/// messages, and for many small ones.
const RAW_STREAM_MIN: usize = 256 << 10;
/// Spins before a raw waiter starts yielding: about 128 `pause`s (a
/// microsecond or a few; AMD's `pause` is slow), where a round trip across
/// cores takes a fraction of one. Without yielding, a waiter that shares its
/// CPU with its peer (pinned to one core, or a busy machine) would hand over
/// only when the scheduler's tick preempts it.
pub(crate) const RAW_PURE_SPINS: u32 = 128;

/// The raw contender's shared memory: one page of control words, then data
/// pages (echo: the request's pages, then the reply's; stream: the ring's
/// slots), each a [`SharedWords`] page (a sealed memfd mapped in both
/// processes).
struct RawMemory {
    pages: Vec<SharedWords>,
    /// Echo: pages per payload; stream: pages of the ring.
    per_payload: usize,
    mode: Mode,
}

impl RawMemory {
    /// Data pages for `mode` and payloads up to `max`: (per_payload, total).
    fn geometry(mode: Mode, max: usize) -> (usize, usize) {
        match mode {
            Mode::Echo => {
                let per = (max / 8).div_ceil(SharedWords::LEN);
                (per, 2 * per)
            }
            Mode::Stream => {
                let per = ((2 * max).max(RAW_STREAM_MIN) / 8).div_ceil(SharedWords::LEN);
                (per, per)
            }
        }
    }

    fn create(mode: Mode, max: usize) -> Result<RawMemory> {
        let (per_payload, data) = Self::geometry(mode, max);
        let pages = (0..1 + data)
            .map(|i| SharedWords::create(&format!("shm-bench-raw-{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RawMemory {
            pages,
            per_payload,
            mode,
        })
    }

    /// The server opens our pages through `/proc/<pid>/fd/<fd>` (the fds are
    /// close-on-exec, so they are not inherited).
    fn proc_paths(&self) -> String {
        let pid = std::process::id();
        let paths: Vec<String> = self
            .pages
            .iter()
            .map(|p| {
                format!(
                    "/proc/{pid}/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&p.fd())
                )
            })
            .collect();
        paths.join(",")
    }

    fn open(paths: &str, mode: Mode, max: usize) -> Result<RawMemory> {
        let (per_payload, data) = Self::geometry(mode, max);
        let pages = paths
            .split(',')
            .map(|path| -> Result<SharedWords> {
                let file: File = OpenOptions::new().read(true).write(true).open(path)?;
                Ok(SharedWords::open(OwnedFd::from(file))?)
            })
            .collect::<Result<Vec<_>>>()?;
        if pages.len() != 1 + data {
            return Err(format!("{} raw pages for payloads of {max} bytes", pages.len()).into());
        }
        Ok(RawMemory {
            pages,
            per_payload,
            mode,
        })
    }

    fn control(&self, i: usize) -> &AtomicU64 {
        self.pages[0]
            .word(i)
            .expect("control words lie in the first page")
    }

    /// Data word `i`. (Plain indexing: an iterator chain over the pages
    /// measured 4x slower.)
    fn data(&self, i: usize) -> &AtomicU64 {
        self.pages[1 + i / SharedWords::LEN]
            .word(i % SharedWords::LEN)
            .expect("data words lie within the pages made for the largest payload")
    }

    /// Word `i` of the request (`reply == false`) or of the reply (echo).
    fn word(&self, reply: bool, i: usize) -> &AtomicU64 {
        let base = if reply {
            self.per_payload * SharedWords::LEN
        } else {
            0
        };
        self.data(base + i)
    }

    /// Stream: how many messages of `words` words the ring holds.
    fn slots(&self, words: usize) -> u64 {
        (self.per_payload * SharedWords::LEN / words) as u64
    }
}

/// Spins until `word` holds something other than `old` (`Acquire`); returns it.
pub(crate) fn raw_wait_change(word: &AtomicU64, old: u64) -> u64 {
    raw_wait_until(word, |v| v != old)
}

/// Spins (then yields) until `ready(word)`; returns the value.
fn raw_wait_until(word: &AtomicU64, ready: impl Fn(u64) -> bool) -> u64 {
    let mut spins = 0u32;
    loop {
        let v = word.load(Ordering::Acquire);
        if ready(v) {
            return v;
        }
        if spins < RAW_PURE_SPINS {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

struct RawConn {
    mem: RawMemory,
    /// Stream: messages published so far (the head).
    sent: u64,
}

impl RawConn {
    fn round_trip(&mut self, seq: u64, len: usize) -> Result<()> {
        let m = &self.mem;
        let words = len / 8;
        let fill = u64::from_ne_bytes([seq as u8; 8]);
        // The payload as words: the same bytes as `fill_payload` writes.
        m.word(false, 0).store(seq.to_le(), Ordering::Relaxed);
        for i in 1..words {
            m.word(false, i).store(fill, Ordering::Relaxed);
        }
        m.control(CTL_LEN).store(len as u64, Ordering::Relaxed);
        // Release: the payload and length are visible before the request.
        m.control(CTL_REQUEST).store(seq, Ordering::Release);
        raw_wait_change(m.control(CTL_REPLY), seq - 1);
        let mut diff = m.word(true, 0).load(Ordering::Relaxed) ^ seq.to_le();
        for i in 1..words {
            diff |= m.word(true, i).load(Ordering::Relaxed) ^ fill;
        }
        if diff != 0 {
            return Err(format!("round trip {seq}: the payload came back corrupted").into());
        }
        Ok(())
    }

    /// A single-producer ring: slot `n % slots` holds message `n`; the
    /// producer waits while the ring is full, writes the slot word by word
    /// and publishes the head.
    fn stream(&mut self, first: u64, last: u64, len: usize) -> Result<()> {
        let m = &self.mem;
        let words = len / 8;
        let slots = m.slots(words);
        // The length changes only between batches, when the ring is empty
        // (the previous batch was acknowledged, so consumed).
        m.control(CTL_LEN).store(len as u64, Ordering::Relaxed);
        for seq in first..=last {
            let n = self.sent;
            raw_wait_until(m.control(CTL_REPLY), |tail| n - tail < slots);
            let base = (n % slots) as usize * words;
            let head = if seq == last { seq | ACK } else { seq };
            let fill = u64::from_ne_bytes([seq as u8; 8]);
            m.data(base).store(head.to_le(), Ordering::Relaxed);
            for i in 1..words {
                m.data(base + i).store(fill, Ordering::Relaxed);
            }
            self.sent = n + 1;
            m.control(CTL_REQUEST).store(n + 1, Ordering::Release);
        }
        let acked = raw_wait_change(m.control(CTL_ACK), first - 1);
        check_seq(acked, last)
    }

    fn quit(self) {
        self.mem.control(CTL_REQUEST).store(QUIT, Ordering::Release);
    }

    /// The server's side: serves until the client says [`QUIT`].
    fn serve(&self) -> Result<()> {
        match self.mem.mode {
            Mode::Echo => self.serve_echo(),
            Mode::Stream => self.serve_stream(),
        }
    }

    fn serve_echo(&self) -> Result<()> {
        let m = &self.mem;
        let mut last = 0;
        loop {
            let seq = raw_wait_change(m.control(CTL_REQUEST), last);
            if seq == QUIT {
                return Ok(());
            }
            check_seq(seq, last + 1)?;
            last = seq;
            let len = usize::try_from(m.control(CTL_LEN).load(Ordering::Relaxed))?;
            if len > m.per_payload * SharedWords::LEN * 8 {
                return Err(format!("a raw request of {len} bytes does not fit").into());
            }
            let words = len / 8;
            // The copy reads every word received and writes every word sent.
            for i in 0..words {
                m.word(true, i)
                    .store(m.word(false, i).load(Ordering::Relaxed), Ordering::Relaxed);
            }
            let head = u64::from_le(m.word(true, 0).load(Ordering::Relaxed));
            check_seq(head, seq)?;
            m.control(CTL_REPLY).store(seq, Ordering::Release);
        }
    }

    fn serve_stream(&self) -> Result<()> {
        let m = &self.mem;
        let mut tail = 0u64;
        let mut expect = 1u64;
        loop {
            let head = raw_wait_change(m.control(CTL_REQUEST), tail);
            if head == QUIT {
                return Ok(());
            }
            let len = usize::try_from(m.control(CTL_LEN).load(Ordering::Relaxed))?;
            let words = len / 8;
            if words == 0 || len > m.per_payload * SharedWords::LEN * 4 {
                return Err(format!("a raw message of {len} bytes does not fit").into());
            }
            let slots = m.slots(words);
            while tail < head {
                let base = (tail % slots) as usize * words;
                let word = u64::from_le(m.data(base).load(Ordering::Relaxed));
                let seq = word & !ACK;
                check_seq(seq, expect)?;
                expect += 1;
                let fill = u64::from_ne_bytes([seq as u8; 8]);
                // Reads every word of the message.
                let mut diff = 0;
                for i in 1..words {
                    diff |= m.data(base + i).load(Ordering::Relaxed) ^ fill;
                }
                if diff != 0 {
                    return Err(format!("raw message {seq}: corrupted").into());
                }
                tail += 1;
                m.control(CTL_REPLY).store(tail, Ordering::Release);
                if word & ACK != 0 {
                    m.control(CTL_ACK).store(seq, Ordering::Release);
                }
            }
        }
    }
}

/// If this process is a re-executed server, serves its client and returns
/// the exit code; `None` in the bench process itself. Call it first thing
/// in `main`.
pub fn serve_if_peer() -> Option<i32> {
    let id = std::env::var(PEER_ENV).ok()?;
    Some(match serve(&id) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench server ({id}): {e}");
            1
        }
    })
}

fn serve(id: &str) -> Result<()> {
    let contender = Contender::from_id(id).ok_or_else(|| format!("unknown contender {id:?}"))?;
    let env = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let max: usize = env(MAX_ENV)?.parse()?;
    let parent: i32 = env(PARENT_ENV)?.parse()?;
    let ring_max: u64 = env(RING_ENV)?.parse()?;
    let mode = match env(MODE_ENV)?.as_str() {
        "echo" => Mode::Echo,
        "stream" => Mode::Stream,
        other => return Err(format!("unknown mode {other:?}").into()),
    };
    // Die with the client even if it is killed; then check it did not die
    // before this took effect.
    set_parent_process_death_signal(Some(Signal::KILL))?;
    if getppid().map(Pid::as_raw_pid) != Some(parent) {
        return Err("the client is gone".into());
    }
    match contender {
        Contender::ShmSpin | Contender::ShmPark | Contender::ShmParkNoSpin => {
            let name = env(WHERE_ENV)?;
            let config = ServiceConfig::new(PROTOCOL, 1..=1).ring_sizes(ring_max, ring_max);
            let mut service = Service::bind(&name, config)?;
            let mut channel = service.accept_timeout(START_STOP)?;
            drop(service);
            if let Some(policy) = contender.wait_policy() {
                channel.set_wait_policy(policy);
            }
            serve_shm(&mut channel, max, mode)
        }
        Contender::Uds => {
            let stream = UnixStream::connect(env(WHERE_ENV)?)?;
            StreamConn::new(stream.try_clone()?, stream, max).serve(max, mode)
        }
        Contender::Tcp => {
            let stream = TcpStream::connect(env(WHERE_ENV)?)?;
            stream.set_nodelay(true)?;
            StreamConn::new(stream.try_clone()?, stream, max).serve(max, mode)
        }
        Contender::Pipe => {
            // Our own handles on stdin and stdout (duplicates), unbuffered:
            // `io::Stdout` would split frames at newline bytes.
            let input = File::from(io::stdin().as_fd().try_clone_to_owned()?);
            let output = File::from(io::stdout().as_fd().try_clone_to_owned()?);
            StreamConn::new(input, output, max).serve(max, mode)
        }
        Contender::GenBlocking | Contender::GenAsync => {
            let policy = (env(STUB_SPIN_ENV)? == "1").then_some(WaitPolicy::SPIN);
            stubs_peer::serve(&env(WHERE_ENV)?, ring_max, policy)
        }
        Contender::IpcChannel => ipc_peer::serve(&env(WHERE_ENV)?, max, mode),
        Contender::Iceoryx2 => iox_peer::serve(&env(WHERE_ENV)?, max, mode),
        Contender::RawSpin => RawConn {
            mem: RawMemory::open(&env(WHERE_ENV)?, mode, max)?,
            sent: 0,
        }
        .serve(),
    }
}

/// Serves until the client closes the channel.
fn serve_shm(channel: &mut Channel, max: usize, mode: Mode) -> Result<()> {
    // A handle of our own on the send ring (with the policy just set), so a
    // received message, borrowed from the channel, can be copied straight
    // into the reply.
    let tx = channel.tx().clone();
    let mut expect = Expect::new();
    loop {
        // Bounded waits: a spinning receiver (`WaitPolicy::SPIN`) never
        // parks, so it learns that the client left only between waits.
        match channel.recv_timeout(LIVENESS) {
            Ok(msg) => {
                let data = msg.object(PAYLOAD).ok_or("a message without its payload")?;
                if data.len() > max {
                    return Err(format!("a message of {} bytes", data.len()).into());
                }
                let Some(seq) = expect.take(data, mode)? else {
                    continue;
                };
                let reply: &[u8] = match mode {
                    // The copy reads every byte received and writes every
                    // byte sent.
                    Mode::Echo => data,
                    Mode::Stream => &seq.to_le_bytes(),
                };
                let size = object_size(reply.len() as u64).ok_or("payload size overflows")?;
                let mut slot = tx.allocate_for_send_timeout(size, PONG, 1, false, STUCK)?;
                slot.set_kind(Kind::OneWay);
                slot.object_mut(PAYLOAD, reply.len() as u64)?
                    .copy_from_slice(reply);
                slot.send()?;
                continue;
            }
            Err(RecvError::PeerDied) => return Ok(()),
            Err(RecvError::Timeout) => {}
            Err(e) => return Err(e.into()),
        }
        if !channel.peer_alive() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_reads_back_with_its_sequence_and_ack() {
        let mut data = vec![0u8; 64];
        fill_message(&mut data, 7, true);
        assert_eq!(read_message(&data).unwrap(), (7, true));
        fill_payload(&mut data, 9);
        assert_eq!(read_message(&data).unwrap(), (9, false));
        check_payload(&data, 9, 64).unwrap();
        assert!(check_payload(&data, 8, 64).is_err());
        assert!(check_payload(&data[..56], 9, 64).is_err());
    }

    #[test]
    fn any_corrupted_byte_is_found() {
        let mut data = vec![0u8; 1024];
        for i in 8..data.len() {
            fill_payload(&mut data, 300);
            data[i] ^= 0x10;
            assert!(read_message(&data).is_err(), "byte {i}");
        }
        assert!(read_message(&data[..7]).is_err());
    }

    #[test]
    fn the_server_side_checks_order_and_answers_per_mode() {
        let mut data = vec![0u8; 16];
        let mut echo = Expect::new();
        fill_payload(&mut data, 1);
        assert_eq!(echo.take(&data, Mode::Echo).unwrap(), Some(1));
        fill_payload(&mut data, 3);
        assert!(
            echo.take(&data, Mode::Echo).is_err(),
            "message 2 was skipped"
        );
        let mut stream = Expect::new();
        fill_message(&mut data, 1, false);
        assert_eq!(stream.take(&data, Mode::Stream).unwrap(), None);
        fill_message(&mut data, 2, true);
        assert_eq!(stream.take(&data, Mode::Stream).unwrap(), Some(2));
        check_ack(&2u64.to_le_bytes(), 2).unwrap();
        assert!(check_ack(&1u64.to_le_bytes(), 2).is_err());
    }

    #[test]
    fn lengths_are_whole_words_within_the_maximum() {
        assert!(check_len(8, 64).is_ok());
        assert!(check_len(64, 64).is_ok());
        assert!(check_len(0, 64).is_err());
        assert!(check_len(12, 64).is_err());
        assert!(check_len(72, 64).is_err());
    }
}
