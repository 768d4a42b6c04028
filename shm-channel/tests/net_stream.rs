//! Messages larger than memory over real loopback sockets, and the client's send-queue
//! backpressure.
//!
//! - `streamed_upload_4gib_bounded_memory`: a 4 GiB message generated on the fly (never
//!   in memory) streams to a server in another process (this binary re-executed), whose
//!   handler consumes it piece by piece with a running checksum, while small calls keep
//!   flowing on the same connection; the resident set of both processes, sampled during
//!   the transfer, stays under 256 MiB. `SHM_STREAM_TEST_BYTES` sets a smaller size for
//!   local iteration.
//! - the stream handler's side cases: a handler that stops early refuses the rest, a
//!   server without a stream handler reassembles (or refuses what is too large).
//! - backpressure: a bounded queue makes a send wait at most its timeout for room, and a
//!   `no_queue` send fail at once (`Dropped`) when nothing can take it now.
//!
//! Every wait is bounded; no assertion is about time.

#![cfg(feature = "net")]

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use shm_channel::layout::Kind;
use shm_channel::net::frame::MAX_BUFFER;
use shm_channel::net::{
    ClientConfig, ConnConfig, NetClient, NetServer, NetStream, ProtocolSpec, Served, ServerConfig,
};
use shm_channel::rpc::{
    CallError, Client, HandlerError, IncomingMessage, Method, Outgoing, RequestView, Responder,
    Transport, TransportError, send_objects,
};
use support::{ChildGuard, child_role, child_service_env, service_env, with_watchdog};

const ECHO: Method = Method::new("echo", 1);
/// Answers (bytes consumed, checksum) of the last streamed upload, once it ended.
const RESULT: Method = Method::new("result", 2);
/// The upload itself (a one-way streamed message).
const UPLOAD: Method = Method::new("upload", 3);
const WAIT: Duration = Duration::from_secs(20);
const TEST: &str = "streamed_upload_4gib_bounded_memory";
const SIZE_ENV: &str = "SHM_STREAM_TEST_BYTES";
const RSS_LIMIT: u64 = 256 << 20;

fn proto() -> ProtocolSpec {
    ProtocolSpec::new("Upload", 1)
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A port nothing listens on (bound, then released).
fn free_port() -> SocketAddr {
    TcpListener::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Deterministic bytes produced on the fly (splitmix64 of the word index), with a
/// running checksum of what was produced: a message of any size that never exists in
/// memory.
struct Generator {
    left: u64,
    at: u64,
    sum: Arc<Checksum>,
}

/// A running checksum of a byte stream, independent of how the stream is cut: 8-byte
/// little-endian words folded with a multiply-rotate, a partial word carried over.
#[derive(Default)]
struct Checksum {
    state: Mutex<(u64, u64, Vec<u8>)>,
}

impl Checksum {
    fn update(&self, mut data: &[u8]) {
        let mut s = self.state.lock().unwrap();
        let (h, n, tail) = &mut *s;
        *n += data.len() as u64;
        while !tail.is_empty() && !data.is_empty() {
            tail.push(data[0]);
            data = &data[1..];
            if tail.len() == 8 {
                *h = fold(*h, u64::from_le_bytes(tail[..].try_into().unwrap()));
                tail.clear();
            }
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            *h = fold(*h, u64::from_le_bytes(w.try_into().unwrap()));
        }
        tail.extend_from_slice(words.remainder());
    }

    /// (bytes, checksum).
    fn value(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap();
        let mut h = s.0;
        for &b in &s.2 {
            h = fold(h, u64::from(b));
        }
        (s.1, h)
    }
}

fn fold(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
}

fn splitmix(i: u64) -> u64 {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Read for Generator {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let buf = &mut buf[..n];
        // Byte k of the stream is byte k % 8 of splitmix(k / 8).
        let mut i = 0;
        while i < n {
            let k = self.at + i as u64;
            let off = (k % 8) as usize;
            let take = (8 - off).min(n - i);
            buf[i..i + take].copy_from_slice(&splitmix(k / 8).to_le_bytes()[off..off + take]);
            i += take;
        }
        self.sum.update(buf);
        self.at += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

/// The resident set of process `pid`, from /proc.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What the server process saw of the upload.
#[derive(Default)]
struct Upload {
    /// Bytes consumed so far.
    progress: AtomicU64,
    /// (bytes, checksum) once it ended.
    done: Mutex<Option<Result<(u64, u64), String>>>,
    ended: Condvar,
}

fn upload_server(addr: SocketAddr) -> NetServer {
    let state = Arc::new(Upload::default());
    let calls = Arc::clone(&state);
    let streams = Arc::clone(&state);
    let config = ServerConfig {
        conn: ConnConfig {
            buffer_size: MAX_BUFFER,
            ..ConnConfig::default()
        },
        ..ServerConfig::default()
    };
    let served = Served::new(proto(), move |req, resp| match req.message_id() {
        // A small call: the bytes of the upload consumed so far, and the request back.
        1 => {
            let at = calls.progress.load(Ordering::Relaxed).to_le_bytes();
            resp.reply(&[(0, &at[..]), (1, req.object(0).unwrap_or_default())])
        }
        2 => {
            let deadline = Instant::now() + WAIT;
            let mut done = calls.done.lock().unwrap();
            while done.is_none() && Instant::now() < deadline {
                done = calls.ended.wait_timeout(done, WAIT).unwrap().0;
            }
            match done.take() {
                Some(Ok((n, sum))) => {
                    resp.reply(&[(0, &n.to_le_bytes()[..]), (1, &sum.to_le_bytes()[..])])
                }
                Some(Err(e)) => Err(HandlerError::Failed(e)),
                None => Err(HandlerError::Failed("the upload never ended".into())),
            }
        }
        _ => Err(HandlerError::UnknownMethod),
    })
    .with_streams(move |req, input, resp| {
        assert_eq!(req.message_id(), UPLOAD.id);
        let sum = Checksum::default();
        let outcome = loop {
            match input.next_chunk() {
                Ok(Some(piece)) => {
                    sum.update(&piece);
                    streams
                        .progress
                        .fetch_add(piece.len() as u64, Ordering::Relaxed);
                }
                Ok(None) => break Ok(sum.value()),
                Err(e) => break Err(e.to_string()),
            }
        };
        if let Ok((n, _)) = &outcome {
            assert_eq!(*n, input.len());
        }
        *streams.done.lock().unwrap() = Some(outcome);
        streams.ended.notify_all();
        resp.done()
    });
    NetServer::bind(addr, config, vec![served]).unwrap()
}

fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new(proto());
    config.conn.buffer_size = MAX_BUFFER;
    config.pool.backoff_min = Duration::from_millis(10);
    config.pool.backoff_max = Duration::from_millis(100);
    config
}

fn decode_progress(m: &dyn IncomingMessage) -> Result<u64, String> {
    let at = m.object(0).ok_or("no object 0")?;
    Ok(u64::from_le_bytes(
        at.try_into().map_err(|_| "not 8 bytes")?,
    ))
}

#[test]
fn streamed_upload_4gib_bounded_memory() {
    let size: u64 = std::env::var(SIZE_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4 << 30);
    if child_role().as_deref() == Some("upload-server") {
        let (_, _, port) = child_service_env();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let _server = upload_server(addr);
        println!("READY");
        // The parent kills us; the sleep only bounds an orphan's life.
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    with_watchdog(Duration::from_secs(600), move || {
        let addr = free_port();
        let dir = std::env::temp_dir();
        let mut child = ChildGuard::spawn(
            TEST,
            "upload-server",
            &service_env(&dir, "upload", u64::from(addr.port())),
        );
        child.wait_for_line("READY");
        let server_pid = child.id();
        let net = NetClient::connect(vec![addr], client_config(), WAIT).unwrap();
        let sender = net.sender();
        let mut client = Client::new(net);
        let sent = Arc::new(Checksum::default());
        let generator = Generator {
            left: size,
            at: 0,
            sum: Arc::clone(&sent),
        };
        let start = Instant::now();
        let upload = sender
            .send_stream(
                &Outgoing::new(UPLOAD.id, Kind::OneWay),
                0,
                size,
                generator,
                WAIT,
            )
            .unwrap();
        // Sample both resident sets while the upload runs.
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let me = std::process::id();
                let (mut client_peak, mut server_peak, mut samples) = (0, 0, 0u64);
                while !done.load(Ordering::Relaxed) {
                    client_peak = client_peak.max(rss(me).unwrap_or(0));
                    server_peak = server_peak.max(rss(server_pid).unwrap_or(0));
                    samples += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                (client_peak, server_peak, samples)
            })
        };
        // Small calls on the same connection until the upload is through; each says how
        // far the server's consumer was when it answered.
        let mut calls = 0u64;
        let mut mid_transfer = 0u64;
        let mut waited = Duration::ZERO;
        loop {
            let progress = client
                .call(&ECHO, &[(0, b"ping")], WAIT, decode_progress)
                .unwrap();
            calls += 1;
            if progress > 0 && progress < size {
                mid_transfer += 1;
            }
            match upload.wait(Duration::from_millis(5)) {
                Ok(()) => break,
                Err(TransportError::Timeout) => waited += Duration::from_millis(5),
                Err(e) => panic!("the upload failed: {e}"),
            }
            assert!(
                waited < Duration::from_secs(500),
                "the upload never finished"
            );
        }
        let result = client
            .call(&RESULT, &[], WAIT, |m| {
                let n = m.object(0).ok_or("no object 0")?;
                let sum = m.object(1).ok_or("no object 1")?;
                Ok::<_, String>((
                    u64::from_le_bytes(n.try_into().map_err(|_| "n")?),
                    u64::from_le_bytes(sum.try_into().map_err(|_| "sum")?),
                ))
            })
            .unwrap();
        let elapsed = start.elapsed();
        done.store(true, Ordering::Relaxed);
        let (client_peak, server_peak, samples) = sampler.join().unwrap();
        println!(
            "streamed {size} bytes in {elapsed:?} ({:.0} MB/s); {calls} small calls, \
             {mid_transfer} answered mid-transfer; peak RSS client {} MiB, server {} MiB \
             ({samples} samples)",
            size as f64 / elapsed.as_secs_f64() / 1e6,
            client_peak >> 20,
            server_peak >> 20,
        );
        assert_eq!(result, sent.value(), "the server consumed what was sent");
        assert_eq!(result.0, size);
        assert!(mid_transfer > 0, "no small call was answered mid-transfer");
        assert!(samples > 0 && client_peak > 0 && server_peak > 0);
        assert!(client_peak < RSS_LIMIT, "client RSS {client_peak}");
        assert!(server_peak < RSS_LIMIT, "server RSS {server_peak}");
        drop(child);
    });
}

/// A server whose stream handler reads `keep` bytes of each upload, then returns.
fn quitting_server(keep: u64, seen: Arc<AtomicU64>) -> NetServer {
    let served = Served::new(proto(), |_req: &RequestView<'_>, resp: Responder<'_>| {
        resp.reply(&[(0, b"ok")])
    })
    .with_streams(move |_req, input: &mut NetStream, resp| {
        let mut buf = vec![0u8; 4096];
        let mut got = 0;
        while got < keep {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        seen.store(got, Ordering::SeqCst);
        resp.done()
    });
    NetServer::bind(localhost(), ServerConfig::default(), vec![served]).unwrap()
}

#[test]
fn a_handler_that_stops_early_refuses_the_rest_and_the_connection_lives_on() {
    with_watchdog(Duration::from_secs(60), || {
        let seen = Arc::new(AtomicU64::new(0));
        let server = quitting_server(100_000, Arc::clone(&seen));
        let net = NetClient::connect(vec![server.local_addr()], client_config(), WAIT).unwrap();
        let sender = net.sender();
        let mut client = Client::new(net);
        let sum = Arc::new(Checksum::default());
        let size = 1u64 << 30;
        let upload = sender
            .send_stream(
                &Outgoing::new(UPLOAD.id, Kind::OneWay),
                0,
                size,
                Generator {
                    left: size,
                    at: 0,
                    sum: Arc::clone(&sum),
                },
                WAIT,
            )
            .unwrap();
        let err = upload.wait(WAIT).unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        assert!(seen.load(Ordering::SeqCst) >= 100_000);
        // Far less than the gigabyte was produced: the sender stopped.
        assert!(sum.value().0 < size / 4, "{} bytes produced", sum.value().0);
        let reply = client
            .call(&ECHO, &[(0, b"x")], WAIT, |m| {
                Ok::<_, String>(m.object(0).unwrap_or_default().to_vec())
            })
            .unwrap();
        assert_eq!(reply, b"ok");
    });
}

#[test]
fn a_server_without_a_stream_handler_reassembles_or_refuses() {
    with_watchdog(Duration::from_secs(60), || {
        let lens = Arc::new(Mutex::new(Vec::new()));
        let got = Arc::clone(&lens);
        let served = Served::new(proto(), move |req, resp| {
            got.lock()
                .unwrap()
                .push(req.object(0).map(<[u8]>::len).unwrap_or(0));
            resp.done()
        });
        let config = ServerConfig {
            conn: ConnConfig {
                max_message: 1 << 20,
                ..ConnConfig::default()
            },
            ..ServerConfig::default()
        };
        let server = NetServer::bind(localhost(), config, vec![served]).unwrap();
        let net = NetClient::connect(vec![server.local_addr()], client_config(), WAIT).unwrap();
        let sender = net.sender();
        let stream = |len: u64| {
            sender.send_stream(
                &Outgoing::new(UPLOAD.id, Kind::OneWay),
                0,
                len,
                Generator {
                    left: len,
                    at: 0,
                    sum: Arc::new(Checksum::default()),
                },
                WAIT,
            )
        };
        // Within max_message: reassembled and handed to the ordinary handler.
        stream(300_000).unwrap().wait(WAIT).unwrap();
        // Beyond it: the server closes that connection (a plain message that large
        // would be refused by the sender; a streamed one finds out on the wire).
        let big = stream(4 << 20).unwrap();
        assert!(big.wait(WAIT).is_err());
        let deadline = Instant::now() + WAIT;
        while lens.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*lens.lock().unwrap(), vec![300_000]);
    });
}

// ---------------------------------------------------------------------------------------
// Backpressure.

fn oneway(i: u8) -> (Outgoing, Vec<u8>) {
    (Outgoing::new(ECHO.id, Kind::OneWay), vec![i; 16])
}

#[test]
fn a_full_queue_makes_sends_wait_for_room_and_no_queue_sends_fail_at_once() {
    with_watchdog(Duration::from_secs(60), || {
        let addr = free_port();
        let mut config = client_config();
        config.pool.max_queued = 2;
        config.connect_timeout = Duration::from_secs(1);
        let client = NetClient::new(vec![addr], config).unwrap();
        let sender = client.sender();
        // Nobody listens: messages wait in the queue, which holds two.
        for i in 0..2 {
            let (out, data) = oneway(i);
            send_objects(&sender, &out, &[(0, &data)], WAIT).unwrap();
        }
        // Full: a send waits its timeout for room, then fails; no_queue fails at once.
        let (out, data) = oneway(2);
        assert_eq!(
            send_objects(&sender, &out, &[(0, &data)], Duration::from_millis(50)),
            Err(TransportError::Timeout)
        );
        assert_eq!(
            send_objects(&sender, &out.no_queue(true), &[(0, &data)], WAIT),
            Err(TransportError::Dropped)
        );
        // A send that may wait long enough gets in once the server is up (the gate opens).
        let waiting = {
            let sender = client.sender();
            std::thread::spawn(move || {
                let (out, data) = oneway(3);
                send_objects(&sender, &out, &[(0, &data)], WAIT)
            })
        };
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&seen);
        let _server = NetServer::bind(
            addr,
            ServerConfig::default(),
            vec![Served::new(proto(), move |_req, resp| {
                counter.fetch_add(1, Ordering::SeqCst);
                resp.done()
            })],
        )
        .unwrap();
        assert_eq!(waiting.join().unwrap(), Ok(()));
        let deadline = Instant::now() + WAIT;
        while seen.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            seen.load(Ordering::SeqCst),
            3,
            "the queued and the waiting send"
        );
        // Connected, with room: a no_queue message goes out.
        let (out, data) = oneway(4);
        send_objects(&sender, &out.no_queue(true), &[(0, &data)], WAIT).unwrap();
        while seen.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(seen.load(Ordering::SeqCst), 4);
    });
}

#[test]
fn a_no_queue_call_without_a_connection_is_dropped() {
    with_watchdog(Duration::from_secs(30), || {
        let net = NetClient::new(vec![free_port()], client_config()).unwrap();
        let client = Client::new(net);
        let r = client.send_oneway(&ECHO, &[(0, b"x")], WAIT, true);
        assert_eq!(r, Err(CallError::Dropped));
        assert!(client.transport().peer_alive());
    });
}
