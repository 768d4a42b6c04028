//! Round trips between two processes through an shm-channel service, measured.
//!
//! ```sh
//! cargo run --release --example ping
//! ```
//!
//! One command, two processes: the client (what you started) re-executes
//! itself as the server (`ping --server <name>`), which binds a service named
//! after the client's pid; the client connects to it by name
//! (`shm_channel::service::connect`) and sends pings of 8 B, 64 B, 1 KiB and
//! 64 KiB, first with the default wait policy (spin adaptively, then park),
//! then with both sides spinning (`WaitPolicy::SPIN`). For each it prints
//! round-trip percentiles (p50, p90, p99, p99.9, max) from an HDR histogram.
//!
//! Every byte is touched: the client writes the payload in place in the ring
//! (a sequence number, then a fill byte derived from it), the server copies
//! it byte for byte into its reply, and the client checks every byte of the
//! reply.
//!
//! The server exits when the client disconnects. Any error ends the client
//! with a non-zero status; if the client fails, it kills the server (a guard),
//! and a server error is printed by the server and reported by the client.
#![forbid(unsafe_code)]

use std::error::Error;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use examples::ServerGuard;
use hdrhistogram::Histogram;
use shm_channel::layout::object_size;
use shm_channel::ring::{RecvError, WaitPolicy};
use shm_channel::service::{self, ClientConfig, Service, ServiceConfig};
use shm_channel::{Channel, Kind};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// The argument that makes this executable the server.
const SERVER_ARG: &str = "--server";
/// The protocol both sides name in the handshake.
const PROTOCOL: &str = "Ping";
/// Each ring's maximum: room for several 64 KiB pings (rings start at one
/// page and grow on demand).
const RING_MAX: u64 = 1 << 20;
/// Payload sizes, bytes.
const SIZES: [usize; 4] = [8, 64, 1 << 10, 64 << 10];
/// Round trips before measuring (caches, ring growth, the adaptive spin).
const WARM_UP: u64 = 2_000;
/// Measuring time per size and policy: 8 cases stay well under 15 s in all.
const BUDGET: Duration = Duration::from_millis(700);
/// At most this many measured round trips per case.
const MAX_ROUND_TRIPS: u64 = 500_000;
/// A healthy peer answers in microseconds; this only fires when it is stuck.
const STUCK: Duration = Duration::from_secs(5);
/// How long the server may take to come up, and to exit at the end.
const START_STOP: Duration = Duration::from_secs(10);
/// How often a waiting server checks that the client is still there (a
/// spinning receiver never parks, so it does not hear of it otherwise).
const LIVENESS: Duration = Duration::from_millis(100);

/// Message ids.
mod id {
    /// Client -> server: a payload to echo.
    pub const PING: u64 = 1;
    /// Server -> client: the payload, copied.
    pub const PONG: u64 = 2;
    /// Client -> server: switch the wait policy (one byte, see `POLICIES`).
    pub const POLICY: u64 = 3;
    /// Server -> client: switched.
    pub const POLICY_ACK: u64 = 4;
}
/// The object id of every message's one object.
const OBJECT: u64 = 0;

/// The policies measured, in order: (code sent to the server, label).
const POLICIES: [(u8, &str); 2] = [
    (0, "default: spin adaptively (up to 100 µs), then park"),
    (1, "SPIN: both sides poll, never park"),
];

/// The wait policy a code names.
fn policy(code: u8) -> Result<WaitPolicy> {
    match code {
        0 => Ok(WaitPolicy::default()),
        1 => Ok(WaitPolicy::SPIN),
        _ => Err(format!("unknown wait policy code {code}").into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (role, result) = match (args.get(1).map(String::as_str), args.get(2)) {
        (Some(SERVER_ARG), Some(name)) => ("ping server", server(name)),
        (None, _) => ("ping", client()),
        _ => (
            "ping",
            Err(format!("usage: {} [{SERVER_ARG} NAME]", args[0]).into()),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{role}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn client() -> Result<()> {
    let name = format!("ping-{}", std::process::id());
    let mut server = ServerGuard::spawn_self(&[SERVER_ARG, &name])?;
    let server_pid = server.child()?.id();
    let config = ClientConfig::new(PROTOCOL, 1..=1).ring_sizes(RING_MAX, RING_MAX);
    let mut channel =
        examples::connect(&mut server, START_STOP, || service::connect(&name, &config))?;
    println!(
        "ping: client pid {} -> server pid {server_pid}, service {name:?}, {}; \
         {} CPUs, processes not pinned",
        std::process::id(),
        channel.id(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "payload: written in place by the client, copied byte for byte by the server, \
         every byte checked by the client"
    );
    let mut seq = 0u64;
    for (code, label) in POLICIES {
        // The server switches first and acknowledges; then this side.
        channel.send_objects(id::POLICY, Kind::OneWay, &[(OBJECT, &[code])], STUCK)?;
        let ack = channel.recv_timeout(STUCK)?;
        if ack.message_id() != id::POLICY_ACK {
            return Err(format!("expected a policy ack, got message {}", ack.message_id()).into());
        }
        drop(ack);
        channel.set_wait_policy(policy(code)?);
        println!();
        println!("wait policy {label}");
        println!(
            "{:>8} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "size", "round trips", "p50", "p90", "p99", "p99.9", "max"
        );
        for size in SIZES {
            for _ in 0..WARM_UP {
                seq += 1;
                round_trip(&mut channel, seq, size)?;
            }
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
            let start = Instant::now();
            let mut prev = start;
            while hist.len() < MAX_ROUND_TRIPS && prev - start < BUDGET {
                seq += 1;
                round_trip(&mut channel, seq, size)?;
                let now = Instant::now();
                hist.saturating_record(u64::try_from((now - prev).as_nanos())?);
                prev = now;
            }
            println!(
                "{:>8} {:>11} {:>10} {:>10} {:>10} {:>10} {:>10}",
                bytes(size),
                hist.len(),
                micros(hist.value_at_quantile(0.50)),
                micros(hist.value_at_quantile(0.90)),
                micros(hist.value_at_quantile(0.99)),
                micros(hist.value_at_quantile(0.999)),
                micros(hist.max()),
            );
        }
    }
    // Closing is the server's signal to exit.
    channel.close()?;
    server.wait_success(START_STOP)
}

/// One ping of `size` bytes and its echo, every byte written and checked.
fn round_trip(channel: &mut Channel, seq: u64, size: usize) -> Result<()> {
    let len = size as u64;
    let mut slot = channel.allocate_for_send_timeout(
        object_size(len).ok_or("payload size overflows")?,
        id::PING,
        1,
        false,
        STUCK,
    )?;
    slot.set_kind(Kind::OneWay);
    let data = slot.object_mut(OBJECT, len)?;
    data[..8].copy_from_slice(&seq.to_le_bytes());
    data[8..].fill(seq as u8);
    slot.send()?;
    let reply = channel.recv_timeout(STUCK)?;
    if reply.message_id() != id::PONG {
        return Err(format!("expected a pong, got message {}", reply.message_id()).into());
    }
    let data = reply.object(OBJECT).ok_or("a pong without its payload")?;
    // An OR over every byte (no early exit), so all of them are read.
    let diff = data.get(8..).map_or(1, |rest| {
        rest.iter().fold(0u8, |acc, &b| acc | (b ^ seq as u8))
    });
    if data.len() != size || data[..8] != seq.to_le_bytes() || diff != 0 {
        return Err(format!("ping {seq} of {size} bytes came back wrong").into());
    }
    Ok(())
}

/// The server: echoes pings until the client disconnects.
fn server(name: &str) -> Result<()> {
    let config = ServiceConfig::new(PROTOCOL, 1..=1).ring_sizes(RING_MAX, RING_MAX);
    let mut service = Service::bind(name, config)?;
    let mut channel = service.accept_timeout(START_STOP)?;
    // One client only: dropping the service removes its socket.
    drop(service);
    // Our own handle on the send ring, so that a ping (borrowed from the
    // channel) can be copied straight into the reply.
    let mut tx = channel.tx().clone();
    loop {
        let mut switch = None;
        match channel.recv_timeout(LIVENESS) {
            Ok(msg) => {
                let data = msg.object(OBJECT).ok_or("a message without its object")?;
                match msg.message_id() {
                    id::PING => {
                        let len = data.len() as u64;
                        let size = object_size(len).ok_or("payload size overflows")?;
                        let mut slot =
                            tx.allocate_for_send_timeout(size, id::PONG, 1, false, STUCK)?;
                        slot.set_kind(Kind::OneWay);
                        // Reads every byte of the ping, writes every byte of the pong.
                        slot.object_mut(OBJECT, len)?.copy_from_slice(data);
                        slot.send()?;
                        continue;
                    }
                    id::POLICY => switch = Some(policy(*data.first().ok_or("empty policy")?)?),
                    other => return Err(format!("unexpected message {other}").into()),
                }
            }
            Err(RecvError::PeerDied) => return Ok(()),
            Err(RecvError::Timeout) => {}
            Err(e) => return Err(e.into()),
        }
        match switch {
            Some(p) => {
                channel.set_wait_policy(p);
                tx = channel.tx().clone();
                tx.send_objects(id::POLICY_ACK, Kind::OneWay, &[(OBJECT, &[])], STUCK)?;
            }
            // Timed out: is the client still there?
            None if !channel.peer_alive() => return Ok(()),
            None => {}
        }
    }
}

fn bytes(n: usize) -> String {
    if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} B")
    }
}

fn micros(ns: u64) -> String {
    format!("{:.2} µs", ns as f64 / 1_000.0)
}
