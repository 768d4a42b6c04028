//! Messages through shared-memory rings between two real processes.
//!
//! ```sh
//! cargo run --release --example ring_demo
//! ```
//!
//! The parent creates two memfd rings (parent -> child and child -> parent)
//! and starts its own executable again as the child, passing the rings as
//! `/proc/<parent pid>/fd/<fd>` paths (until the channel passes fds over a
//! socket, this is how a second process opens a ring). Then it measures:
//!
//! 1. a one-way stream of 64-byte messages, each with a sequence number and
//!    a checksum that the child verifies; the child acknowledges the end
//!    with the count and the sum of the checksums it saw;
//! 2. ping-pong round trips of 64-byte messages (latency percentiles);
//! 3. what the rings cost: capacity and the memfd's allocated bytes, and
//!    how often each side went to sleep or woke the other (a system call
//!    each) rather than finding its peer busy.
//!
//! Any failure in the child is printed by the child and ends it with a
//! non-zero status, which the parent reports; the parent kills the child if
//! it fails itself or if the child does not exit in time.
#![forbid(unsafe_code)]

use std::error::Error;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use shm_channel::layout::{MESSAGE_HEADER_SIZE, RECORD_ALIGN, align_up, object_size};
use shm_channel::ring::WaitStats;
use shm_channel::{Kind, Ring, RingConfig, RingReader, RingWriter};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// Maximum size of each ring: both start at one page and grow on demand.
const RING_MAX: u64 = 1 << 20;
/// Messages in the one-way stream.
const STREAM_MESSAGES: u64 = 2_000_000;
/// Payload of every message.
const PAYLOAD: usize = 64;
/// Round trips, unless `PING_BUDGET` runs out first.
const PINGS: usize = 100_000;
/// Upper bound on the ping-pong phase, so a busy machine still finishes the
/// demo in a few seconds.
const PING_BUDGET: Duration = Duration::from_secs(3);
/// Longest wait for any single message or for room in a ring: a healthy
/// peer answers in microseconds, so this only fires when it is stuck or gone.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the parent waits for the child to exit at the end.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Argument that starts the child role.
const CHILD_ARG: &str = "--child";

/// Message ids of the demo's little protocol.
mod id {
    /// Child -> parent: both rings are open.
    pub const HELLO: u64 = 1;
    /// Parent -> child: one stream message (sequence number, data, checksum).
    pub const STREAM: u64 = 2;
    /// Parent -> child: the stream is over.
    pub const STREAM_END: u64 = 3;
    /// Child -> parent: messages counted and the sum of their checksums.
    pub const STREAM_ACK: u64 = 4;
    /// Parent -> child: a round trip starts.
    pub const PING: u64 = 5;
    /// Child -> parent: the ping's payload, echoed.
    pub const PONG: u64 = 6;
    /// Parent -> child: report and exit.
    pub const DONE: u64 = 7;
    /// Child -> parent: the child's wait statistics, then it exits.
    pub const BYE: u64 = 8;
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some(CHILD_ARG) => match (args.get(2), args.get(3)) {
            (Some(inbound), Some(outbound)) => child(inbound, outbound),
            _ => Err("usage: ring_demo --child <inbound ring path> <outbound ring path>".into()),
        },
        _ => parent(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let role = if args.get(1).map(String::as_str) == Some(CHILD_ARG) {
                "child"
            } else {
                "parent"
            };
            eprintln!("ring_demo ({role}): error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- the payload: sequence number, six words derived from it, checksum ----

/// SplitMix64's finaliser: cheap, and every input bit changes the output.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Checksum of the first seven words of a payload.
fn checksum(words: &[u64; 7]) -> u64 {
    words
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |acc, &w| mix(acc ^ w))
}

/// Fills a 64-byte payload for message `seq`; returns its checksum.
fn fill_payload(seq: u64, out: &mut [u8]) -> u64 {
    let mut words = [0u64; 7];
    words[0] = seq;
    for (i, w) in words.iter_mut().enumerate().skip(1) {
        *w = mix(seq ^ ((i as u64) << 56));
    }
    let sum = checksum(&words);
    for (chunk, w) in out.chunks_exact_mut(8).zip(words.iter().chain([&sum])) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    sum
}

/// Checks a received payload; returns its sequence number and checksum.
fn check_payload(data: &[u8]) -> Result<(u64, u64)> {
    if data.len() != PAYLOAD {
        return Err(format!("payload of {} bytes, expected {PAYLOAD}", data.len()).into());
    }
    let mut words = [0u64; 8];
    for (w, chunk) in words.iter_mut().zip(data.chunks_exact(8)) {
        // `chunks_exact(8)` yields 8-byte chunks only.
        *w = u64::from_le_bytes(chunk.try_into()?);
    }
    let [body @ .., sum] = words;
    if checksum(&body) != sum {
        return Err(format!("checksum mismatch in message {}", body[0]).into());
    }
    Ok((body[0], sum))
}

/// Reads the 8-byte little-endian words of a small control message.
fn words<const N: usize>(data: &[u8]) -> Result<[u64; N]> {
    let mut out = [0u64; N];
    if data.len() != N * 8 {
        return Err(format!(
            "control message of {} bytes, expected {}",
            data.len(),
            N * 8
        )
        .into());
    }
    for (w, chunk) in out.iter_mut().zip(data.chunks_exact(8)) {
        *w = u64::from_le_bytes(chunk.try_into()?);
    }
    Ok(out)
}

fn send_words(writer: &RingWriter, message_id: u64, words: &[u64]) -> Result<()> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    writer.send_objects(message_id, Kind::Raw, &[(0, &bytes)], PEER_TIMEOUT)?;
    Ok(())
}

/// Receives one message, requires its id and returns its first object.
fn expect_message(reader: &mut RingReader, message_id: u64) -> Result<Vec<u8>> {
    let msg = reader.receive_timeout(PEER_TIMEOUT)?;
    if msg.message_id() != message_id {
        return Err(format!("expected message {message_id}, got {}", msg.message_id()).into());
    }
    Ok(msg.object(0).unwrap_or_default().to_vec())
}

// ---- the parent ----

/// The child process; killed and reaped if dropped before it exits.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Waits up to `timeout` for the child to exit successfully.
    fn finish(&mut self, timeout: Duration) -> Result<()> {
        let Some(child) = self.0.as_mut() else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.0 = None;
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("child exited with {status}").into())
                };
            }
            if Instant::now() >= deadline {
                return Err(format!("child still running after {timeout:?}; killed").into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Turns a parent-side error into the child's if the child has died:
    /// its own message (on stderr) says what went wrong first.
    fn blame(&mut self, e: Box<dyn Error>) -> Box<dyn Error> {
        if let Some(child) = self.0.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.0 = None;
            return format!("child exited with {status} (then: {e})").into();
        }
        e
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // Best effort: the child may have exited between the check and
            // the kill; either way it is reaped.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `/proc/<our pid>/fd/<fd>`: how the child opens a ring we created.
fn proc_path(ring: &Ring) -> Result<String> {
    let fd = ring.fd().ok_or("a memfd ring has an fd")?;
    Ok(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        fd.as_raw_fd()
    ))
}

fn parent() -> Result<()> {
    let config = RingConfig::new("RingDemo", RING_MAX);
    let to_child = Ring::create_memfd("ring_demo-to-child", &config)?;
    let from_child = Ring::create_memfd("ring_demo-from-child", &config)?;
    let writer = to_child.writer();
    let mut reader = from_child.reader()?;

    let exe = std::env::current_exe()?;
    let mut child = ChildGuard(Some(
        Command::new(exe)
            .arg(CHILD_ARG)
            .arg(proc_path(&to_child)?)
            .arg(proc_path(&from_child)?)
            .stdin(Stdio::null())
            .spawn()?,
    ));
    let child_pid = child.0.as_ref().map_or(0, Child::id);

    let run = (|| -> Result<(Stream, Pings, [u64; 6])> {
        expect_message(&mut reader, id::HELLO)?;
        let stream = stream(&writer, &mut reader)?;
        let pings = ping_pong(&writer, &mut reader)?;
        send_words(&writer, id::DONE, &[])?;
        let child_stats = words(&expect_message(&mut reader, id::BYE)?)?;
        Ok((stream, pings, child_stats))
    })();
    let (stream, pings, child_stats) = run.map_err(|e| child.blame(e))?;
    child.finish(EXIT_TIMEOUT)?;

    let report = Report {
        child_pid,
        stream,
        pings,
        rings: [&to_child, &from_child],
        parent_stats: [to_child.wait_stats(), from_child.wait_stats()],
        child_stats,
    };
    report.print();
    Ok(())
}

struct Stream {
    messages: u64,
    elapsed: Duration,
}

/// Streams `STREAM_MESSAGES` messages and waits for the child's verdict.
fn stream(writer: &RingWriter, reader: &mut RingReader) -> Result<Stream> {
    // Cannot overflow: `PAYLOAD` is 64.
    let size = object_size(PAYLOAD as u64).unwrap_or(u64::MAX);
    let mut sum = 0u64;
    let start = Instant::now();
    for seq in 0..STREAM_MESSAGES {
        let mut slot =
            writer.allocate_for_send_timeout(size, id::STREAM, 1, false, PEER_TIMEOUT)?;
        sum = sum.wrapping_add(fill_payload(seq, slot.object_mut(0, PAYLOAD as u64)?));
        slot.send()?;
    }
    send_words(writer, id::STREAM_END, &[STREAM_MESSAGES, sum])?;
    let [count, their_sum] = words(&expect_message(reader, id::STREAM_ACK)?)?;
    let elapsed = start.elapsed();
    if count != STREAM_MESSAGES || their_sum != sum {
        return Err(format!(
            "child saw {count} messages with checksum sum {their_sum:#x}, \
             sent {STREAM_MESSAGES} with {sum:#x}"
        )
        .into());
    }
    Ok(Stream {
        messages: count,
        elapsed,
    })
}

struct Pings {
    /// Round-trip times, sorted.
    rtts: Vec<Duration>,
    elapsed: Duration,
}

/// Round trips until `PINGS` are done or `PING_BUDGET` is spent.
fn ping_pong(writer: &RingWriter, reader: &mut RingReader) -> Result<Pings> {
    let size = object_size(PAYLOAD as u64).unwrap_or(u64::MAX);
    let mut rtts = Vec::with_capacity(PINGS);
    let start = Instant::now();
    for seq in 0..PINGS as u64 {
        if start.elapsed() >= PING_BUDGET {
            break;
        }
        let t0 = Instant::now();
        let mut slot = writer.allocate_for_send_timeout(size, id::PING, 1, false, PEER_TIMEOUT)?;
        fill_payload(seq, slot.object_mut(0, PAYLOAD as u64)?);
        slot.send()?;
        let msg = reader.receive_timeout(PEER_TIMEOUT)?;
        let rtt = t0.elapsed();
        if msg.message_id() != id::PONG {
            return Err(format!("expected a pong, got message {}", msg.message_id()).into());
        }
        let (echoed, _) = check_payload(msg.object(0).unwrap_or_default())?;
        if echoed != seq {
            return Err(format!("pong {echoed} answers ping {seq}").into());
        }
        rtts.push(rtt);
    }
    let elapsed = start.elapsed();
    rtts.sort_unstable();
    Ok(Pings { rtts, elapsed })
}

/// What the parent prints at the end.
struct Report<'a> {
    child_pid: u32,
    stream: Stream,
    pings: Pings,
    /// Parent -> child, child -> parent.
    rings: [&'a Ring; 2],
    /// The parent's handles' waits on each ring (same order).
    parent_stats: [WaitStats; 2],
    /// The child's, as it sent them: (parks, timeouts, wake-ups sent) on
    /// each ring, same order.
    child_stats: [u64; 6],
}

impl Report<'_> {
    fn print(&self) {
        let secs = self.stream.elapsed.as_secs_f64();
        let rate = self.stream.messages as f64 / secs;
        let record = align_up(
            MESSAGE_HEADER_SIZE + object_size(PAYLOAD as u64).unwrap_or(0),
            RECORD_ALIGN,
        )
        .unwrap_or(0);
        println!(
            "ring_demo: parent pid {}, child pid {}, two memfd rings of at most {} KiB",
            std::process::id(),
            self.child_pid,
            RING_MAX >> 10
        );
        println!();
        println!(
            "one-way stream, parent -> child \
             ({PAYLOAD}-byte payloads, {record} bytes per message in the ring)"
        );
        println!(
            "  {} messages in {secs:.3} s, every sequence number and checksum verified by the child",
            self.stream.messages
        );
        println!(
            "  {:.2} million messages/s, {:.0} MB/s of payload",
            rate / 1e6,
            rate * PAYLOAD as f64 / 1e6
        );
        println!();
        let rtts = &self.pings.rtts;
        let n = rtts.len();
        println!(
            "ping-pong, {PAYLOAD}-byte payloads: {n} round trips in {:.3} s",
            self.pings.elapsed.as_secs_f64()
        );
        if n > 0 {
            let pct = |p: usize| rtts[(n * p / 100).min(n - 1)];
            let mean = rtts.iter().sum::<Duration>() / n as u32;
            println!(
                "  round trip: min {:?}, p50 {:?}, p99 {:?}, max {:?}, mean {:?}",
                rtts[0],
                pct(50),
                pct(99),
                rtts[n - 1],
                mean
            );
        }
        println!();
        println!("the rings at the end (both phases)");
        let names = ["parent -> child", "child -> parent"];
        for (i, ring) in self.rings.iter().enumerate() {
            let allocated = ring
                .allocated_bytes()
                .map_or_else(|| "unknown".to_owned(), |b| format!("{b} B"));
            let p = &self.parent_stats[i];
            let c = &self.child_stats[i * 3..i * 3 + 3];
            println!(
                "  {}: capacity {} B of {} B maximum, memfd allocated {allocated}",
                names[i],
                ring.capacity(),
                ring.max_size()
            );
            println!(
                "    sleeps (timed out) / wake-ups sent: parent {} ({}) / {}, child {} ({}) / {}",
                p.parks, p.park_timeouts, p.rings, c[0], c[1], c[2]
            );
        }
    }
}

// ---- the child ----

/// Opens a ring of the parent's through its /proc path.
fn open_ring(path: &str) -> Result<Ring> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("opening {path}: {e}"))?;
    Ok(Ring::open_memfd(
        OwnedFd::from(file),
        RING_MAX,
        PEER_TIMEOUT,
    )?)
}

fn child(inbound: &str, outbound: &str) -> Result<()> {
    let inbound = open_ring(inbound)?;
    let outbound = open_ring(outbound)?;
    let mut reader = inbound.reader()?;
    let writer = outbound.writer();
    send_words(&writer, id::HELLO, &[])?;

    // The stream: every message in order, every checksum right.
    let mut expected = 0u64;
    let mut sum = 0u64;
    loop {
        let msg = reader.receive_timeout(PEER_TIMEOUT)?;
        let data = msg.object(0).unwrap_or_default();
        match msg.message_id() {
            id::STREAM => {
                let (seq, check) = check_payload(data)?;
                if seq != expected {
                    return Err(format!("stream message {seq} arrived, expected {expected}").into());
                }
                expected += 1;
                sum = sum.wrapping_add(check);
            }
            id::STREAM_END => {
                let [count, _] = words::<2>(data)?;
                if count != expected {
                    return Err(format!("parent sent {count} messages, {expected} arrived").into());
                }
                break;
            }
            other => return Err(format!("unexpected message {other} in the stream").into()),
        }
    }
    send_words(&writer, id::STREAM_ACK, &[expected, sum])?;

    // Ping-pong until told to stop: echo each ping's payload.
    loop {
        let msg = reader.receive_timeout(PEER_TIMEOUT)?;
        match msg.message_id() {
            id::PING => {
                let data = msg.object(0).unwrap_or_default();
                writer.send_objects(id::PONG, Kind::Raw, &[(0, data)], PEER_TIMEOUT)?;
            }
            id::DONE => break,
            other => return Err(format!("unexpected message {other} during ping-pong").into()),
        }
    }
    let mut stats = Vec::with_capacity(6);
    for ring in [&inbound, &outbound] {
        let s = ring.wait_stats();
        stats.extend([s.parks, s.park_timeouts, s.rings]);
    }
    send_words(&writer, id::BYE, &stats)
}
