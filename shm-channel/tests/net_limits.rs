//! What a hostile network client cannot make a `NetServer` hold (docs/SECURITY.md,
//! "Network limits"): a client that sends requests and never reads its socket, in a
//! process of its own, against a server in a process of its own whose resident memory is
//! read from `/proc`; and events to a client that never reads.
//!
//! No assertion is about time: the bounds are in bytes, the waits have watchdogs.

#![cfg(feature = "net")]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use shm_channel::layout::{Kind, MessageHeader, MessageWriter, message_len};
use shm_channel::net::frame::{self, FrameHeader, Hello, ProtocolSpec, data_flags, kind};
use shm_channel::net::{
    ClientConfig, ConnError, NetClient, NetServer, Served, ServerConfig, ServerEvent,
};
use shm_channel::rpc::{
    AsyncClient, EventHub, HandlerError, IncomingMessage, Method, Outgoing, RequestView, Responder,
    TransportError,
};
use support::{ChildGuard, child_role, with_watchdog};

const ECHO: Method = Method::new("echo", 1);
const WAIT: Duration = Duration::from_secs(20);
/// The request body of the hostile client: under the 64 KiB a stream may send without a
/// grant, so it never needs to read one.
const HOSTILE_BODY: usize = 60 << 10;
/// Requests the hostile client sends (about 120 MiB, and as much in replies).
const HOSTILE_REQUESTS: u64 = 2000;
/// The most the server's resident memory may grow while the hostile client pushes:
/// the send queue (8 MiB) and the request backlog (8 MiB) of its connection, a few
/// requests being reassembled, the allocator's slack. Without the bounds it grows by the
/// 240 MiB the client sends and asks for.
const RSS_BOUND: u64 = 48 << 20;

fn proto() -> ProtocolSpec {
    ProtocolSpec::new("Echo", 1)
}

fn echo(
    req: &RequestView<'_>,
    resp: Responder<'_>,
) -> Result<shm_channel::rpc::Replied, HandlerError> {
    match req.message_id() {
        1 => resp.reply(&[(0, req.object(0).unwrap_or_default())]),
        _ => Err(HandlerError::UnknownMethod),
    }
}

fn rss_of(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("/proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm");
    pages * 4096
}

fn message(id: u64, kind: Kind, request_id: u64, data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; message_len([data.len() as u64]).unwrap() as usize];
    let mut w = MessageWriter::new(&mut buf, MessageHeader::new(id, kind, 1, request_id)).unwrap();
    w.push_object(0, data).unwrap();
    w.finish().unwrap();
    buf
}

/// A raw TCP connection that speaks the handshake (and reads the welcome: the last thing
/// it ever reads).
fn raw_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut hello = Vec::new();
    Hello {
        instance: 66,
        buffer_size: frame::DEFAULT_BUFFER,
        max_message: 1 << 30,
        compression: vec![],
        protocols: vec![proto()],
    }
    .encode(&mut hello);
    s.write_all(&hello).unwrap();
    let mut head = [0u8; frame::RECORD_HEADER];
    s.read_exact(&mut head).unwrap();
    let len = u32::from_le_bytes(head[10..14].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    s
}

/// The DATA frames of `msg` on `stream`.
fn frames(stream: u32, msg: &[u8]) -> Vec<u8> {
    let room = frame::DEFAULT_BUFFER as usize - frame::FRAME_HEADER;
    let mut out = Vec::new();
    let mut at = 0;
    while at < msg.len() {
        let n = room.min(msg.len() - at);
        let mut flags = 0;
        if at == 0 {
            flags |= data_flags::FIRST;
        }
        if at + n == msg.len() {
            flags |= data_flags::LAST;
        }
        FrameHeader {
            kind: kind::DATA,
            flags,
            protocol: 0,
            stream,
            payload: n as u32,
            raw: n as u32,
        }
        .encode(&mut out);
        out.extend_from_slice(&msg[at..at + n]);
        at += n;
    }
    out
}

/// The server child: a `NetServer` echoing, with a 3 s reply timeout; prints
/// "listening PORT", then "closed ERROR" for every connection that closes.
fn server_child() -> ! {
    let srv = NetServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        ServerConfig {
            reply_timeout: Duration::from_secs(3),
            ..ServerConfig::default()
        },
        vec![Served::new(proto(), echo)],
    )
    .expect("bind");
    println!("listening {}", srv.local_addr().port());
    loop {
        if let Some(ServerEvent::Closed { error, .. }) = srv
            .wait_event(Duration::from_secs(1), |e| {
                matches!(e, ServerEvent::Closed { .. })
            })
        {
            println!("closed {error}");
        }
    }
}

/// The hostile child: handshakes, then writes echo requests of 60 KiB as fast as the
/// socket takes them and never reads. Prints "open", "stuck N" when no byte went out for
/// a second after N requests, "sent N" when all went out, "reset" when a write failed (the
/// server dropped it). Runs until killed.
fn hostile_child(port: u16) -> ! {
    let mut s = raw_client(SocketAddr::from(([127, 0, 0, 1], port)));
    s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    println!("open");
    let body = vec![0xa5u8; HOSTILE_BODY];
    let mut stuck_said = false;
    let mut last_progress = Instant::now();
    'requests: for i in 1..=HOSTILE_REQUESTS {
        let bytes = frames(i as u32, &message(ECHO.id, Kind::Request, i, &body));
        let mut at = 0;
        while at < bytes.len() {
            match s.write(&bytes[at..]) {
                Ok(n) => {
                    at += n;
                    last_progress = Instant::now();
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if !stuck_said && last_progress.elapsed() >= Duration::from_secs(1) {
                        println!("stuck {i}");
                        stuck_said = true;
                    }
                }
                Err(_) => {
                    println!("reset");
                    break 'requests;
                }
            }
        }
        if i == HOSTILE_REQUESTS {
            println!("sent {i}");
        }
    }
    // Holds the socket (and never reads) until killed.
    loop {
        thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn limits_child() {
    let Some(role) = child_role() else { return };
    match role.as_str() {
        "server" => server_child(),
        "hostile" => {
            let port = std::env::var("SHM_LIMITS_PORT")
                .expect("port")
                .parse()
                .expect("port");
            hostile_child(port)
        }
        other => panic!("unknown role {other}"),
    }
}

fn good_client(port: u16) -> AsyncClient<NetClient> {
    let mut config = ClientConfig::new(proto());
    config.connect_timeout = Duration::from_secs(5);
    let net =
        NetClient::new(vec![SocketAddr::from(([127, 0, 0, 1], port))], config).expect("client");
    AsyncClient::new(net)
}

fn decode(m: &dyn IncomingMessage) -> Result<Vec<u8>, String> {
    m.object(0)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "no object".into())
}

#[test]
fn a_client_that_never_reads_cannot_grow_the_server_and_others_are_served() {
    if child_role().is_some() {
        return;
    }
    with_watchdog(Duration::from_secs(120), || {
        let mut server = ChildGuard::spawn("limits_child", "server", &[]);
        let port: u16 = server.wait_for_prefix("listening ").parse().expect("port");
        let server_pid = server.id();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = {
            let _in = rt.enter();
            Arc::new(good_client(port))
        };
        // Warm-up: the server's threads, buffers and allocator pools exist before the
        // baseline is read.
        rt.block_on(async {
            for i in 0..50u8 {
                let data = vec![i; HOSTILE_BODY];
                let got = client
                    .call(&ECHO, &[(0, &data)], WAIT, decode)
                    .await
                    .unwrap();
                assert_eq!(got, data);
            }
        });
        let baseline = rss_of(server_pid);

        let mut hostile = ChildGuard::spawn(
            "limits_child",
            "hostile",
            &[("SHM_LIMITS_PORT", port.to_string())],
        );
        hostile.wait_for_line("open");
        // A good client calls all along; every call must be answered.
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let caller = {
            let (stop, answered, client) = (
                Arc::clone(&stop),
                Arc::clone(&answered),
                Arc::clone(&client),
            );
            let handle = rt.handle().clone();
            thread::spawn(move || {
                handle.block_on(async {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) || i < 20 {
                        let data = vec![i as u8; 1000 + (i as usize % 7) * 1000];
                        let got = client.call(&ECHO, &[(0, &data)], WAIT, decode).await;
                        assert_eq!(got.as_deref(), Ok(&data[..]), "good call {i}");
                        answered.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                });
            })
        };
        // Until the server drops the hostile client (its queued replies found no room
        // for the reply timeout), the server's memory is sampled.
        let mut peak = baseline;
        let mut hostile_lines = Vec::new();
        let mut closed = None;
        let deadline = Instant::now() + Duration::from_secs(90);
        while closed.is_none() {
            // (Past the bound the loop ends: the assertion below fails.)
            assert!(
                Instant::now() < deadline,
                "the hostile client was never dropped"
            );
            peak = peak.max(rss_of(server_pid));
            if peak - baseline > RSS_BOUND {
                break;
            }
            hostile_lines.extend(hostile.lines_so_far());
            closed = server
                .lines_so_far()
                .into_iter()
                .find(|l| l.contains("closed") && l.contains("does not read"));
            thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        caller.join().expect("the good client's calls");
        hostile_lines.extend(hostile.lines_so_far());
        let grew = peak.saturating_sub(baseline);
        println!(
            "server RSS: baseline {} KiB, peak {} KiB (+{} KiB); good calls answered: {}; \
             hostile: {hostile_lines:?}; server: {closed:?}",
            baseline >> 10,
            peak >> 10,
            grew >> 10,
            answered.load(Ordering::Relaxed)
        );
        assert!(
            grew <= RSS_BOUND,
            "the server grew by {} KiB for a client that never reads",
            grew >> 10
        );
        // The server stopped reading it (its request backlog was full) before it dropped it.
        assert!(
            hostile_lines.iter().any(|l| l.starts_with("stuck")),
            "the hostile client was never held back: {hostile_lines:?}"
        );
        assert!(answered.load(Ordering::Relaxed) >= 20);
        // After the hostile client is gone a new call is still served.
        rt.block_on(async {
            let got = client.call(&ECHO, &[(0, b"after")], WAIT, decode).await;
            assert_eq!(got.as_deref(), Ok(&b"after"[..]));
        });
        drop(hostile);
        drop(server);
    });
}

#[test]
fn events_to_a_client_that_never_reads_are_dropped_or_time_out_and_close_it() {
    if child_role().is_some() {
        return;
    }
    with_watchdog(Duration::from_secs(60), || {
        let hub = EventHub::new();
        let srv = NetServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            ServerConfig {
                max_queued_bytes: 1 << 20,
                ..ServerConfig::default()
            },
            vec![Served::new(proto(), echo).with_events(hub.clone())],
        )
        .unwrap();
        let _silent = raw_client(srv.local_addr());
        let deadline = Instant::now() + WAIT;
        while hub.clients().is_empty() {
            assert!(Instant::now() < deadline, "never registered");
            thread::sleep(Duration::from_millis(5));
        }
        // 1000 no_queue events of 64 KiB (64 MiB) at a client that reads nothing: what the
        // kernel's socket buffers and the 1 MiB queue take gets through, the rest is
        // dropped at once, and the connection stays.
        let event = vec![7u8; 64 << 10];
        let no_queue = Outgoing::new(9, Kind::Event).no_queue(true);
        let (mut sent, mut dropped) = (0u64, 0u64);
        for _ in 0..1000 {
            let r = hub.broadcast_message(&no_queue, &[(0, &event)], Duration::from_secs(1));
            sent += r.sent as u64;
            for (_, e) in &r.failed {
                assert_eq!(*e, TransportError::Dropped);
                dropped += 1;
            }
            // Leave the writer a chance to fill the socket.
            thread::yield_now();
        }
        println!("no_queue events: {sent} queued, {dropped} dropped");
        assert_eq!(sent + dropped, 1000);
        assert!(dropped >= 500, "{dropped} dropped of 1000");
        assert_eq!(
            hub.clients().len(),
            1,
            "a drop does not close the connection"
        );
        // An event that waits for room gives up at its timeout, and the client that read
        // nothing for that long is dropped.
        let r = hub.broadcast_message(
            &Outgoing::new(9, Kind::Event),
            &[(0, &event)],
            Duration::from_millis(300),
        );
        assert_eq!(r.failed.len(), 1, "{r:?}");
        assert_eq!(r.failed[0].1, TransportError::Timeout);
        let closed = srv.wait_event(WAIT, |e| matches!(e, ServerEvent::Closed { .. }));
        assert!(
            matches!(
                closed,
                Some(ServerEvent::Closed {
                    error: ConnError::SlowPeer { .. },
                    ..
                })
            ),
            "{closed:?}"
        );
        // Others are served.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = {
            let _in = rt.enter();
            good_client(srv.local_addr().port())
        };
        rt.block_on(async {
            let got = client.call(&ECHO, &[(0, b"hi")], WAIT, decode).await;
            assert_eq!(got.as_deref(), Ok(&b"hi"[..]));
        });
    });
}
