//! Network connectors over real loopback sockets: the scenarios of seed 003's test plan,
//! each by its name, plus a server killed and restarted mid-call and hostile frames.
//!
//! The same scenarios run over QUIC in `tests/net_quic.rs` (one suite, two transports):
//! servers and clients are made through `transport`, which picks by the test crate.
//!
//! Every wait is bounded (short timeouts through the configs, a watchdog per test); no
//! assertion is about time.

#![cfg(feature = "net")]

// Public for `net_quic.rs`, which includes this file as a module.
pub(crate) mod support;
#[path = "support/transport.rs"]
pub(crate) mod transport;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shm_channel::layout::{Kind, MessageHeader, MessageView, MessageWriter, message_len};
use shm_channel::net::frame::{self, FrameHeader, Hello, ProtocolSpec, data_flags, kind};
use shm_channel::net::{
    Canceled, ClientConfig, ClientEvent, CloseCode, Compressor, ConnConfig, ConnError, ConnEvent,
    Connection, Delivery, Failure, Lz4, NetClient, NetServer, OutMessage, PoolConfig, Served,
    ServerConfig, ServerEvent, Snappy,
};
use shm_channel::rpc::{
    AsyncClient, CallError, Client, HandlerError, IncomingMessage, LocalFailure, Method, Outgoing,
    RequestView, Responder, Transport, TransportError, flags, send_objects,
};
use support::with_watchdog;

const ECHO: Method = Method::new("echo", 1);
const SLOW: Method = Method::new("slow", 2);
const QUERY: Method = Method::new("query", 3);
const WAIT: Duration = Duration::from_secs(10);

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

fn payload(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(2654435761).wrapping_add(seed) as u8)
        .collect()
}

/// Echo (object 0 back), a slow echo (after `delay`), and a query answered with a
/// different shape (the request's length as 8 bytes, then a tag).
fn echo_handler(
    tag: &'static str,
    delay: Duration,
) -> impl Fn(&RequestView<'_>, Responder<'_>) -> Result<shm_channel::rpc::Replied, HandlerError>
+ Send
+ Sync
+ 'static {
    move |req, resp| {
        let data = req.object(0).unwrap_or_default();
        match req.message_id() {
            1 => resp.reply(&[(0, data)]),
            2 => {
                std::thread::sleep(delay);
                resp.reply(&[(0, data)])
            }
            3 => resp.reply(&[
                (0, &(data.len() as u64).to_le_bytes()[..]),
                (1, tag.as_bytes()),
            ]),
            _ => Err(HandlerError::UnknownMethod),
        }
    }
}

fn echo_proto() -> ProtocolSpec {
    ProtocolSpec::new("Echo", 1)
}

fn server(config: ServerConfig, delay: Duration) -> NetServer {
    transport::bind(
        localhost(),
        config,
        vec![Served::new(echo_proto(), echo_handler("echo", delay))],
    )
    .unwrap()
}

fn test_conn() -> ConnConfig {
    ConnConfig {
        handshake_timeout: Duration::from_secs(5),
        ..ConnConfig::default()
    }
}

fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new(echo_proto());
    c.conn = test_conn();
    c.pool.backoff_min = Duration::from_millis(20);
    c.pool.backoff_max = Duration::from_millis(200);
    c.connect_timeout = Duration::from_secs(2);
    c
}

fn decode_echo(m: &dyn IncomingMessage) -> Result<Vec<u8>, String> {
    m.object(0)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "no object".into())
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Basic protocol functionality: the message writer and reader (the connection state
// machines) directly, in memory.

fn message(id: u64, kind: Kind, request_id: u64, data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; message_len([data.len() as u64]).unwrap() as usize];
    let mut w = MessageWriter::new(&mut buf, MessageHeader::new(id, kind, 1, request_id)).unwrap();
    w.push_object(0, data).unwrap();
    w.finish().unwrap();
    buf
}

/// Moves bytes between two connections until both are quiet; returns what `b` received.
fn pump(now: Instant, a: &mut Connection, b: &mut Connection) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    loop {
        let mut buf = Vec::new();
        let mut moved = false;
        while a.poll_transmit(now, &mut buf) {
            moved = true;
        }
        b.handle_data(now, &buf);
        buf.clear();
        while b.poll_transmit(now, &mut buf) {
            moved = true;
        }
        a.handle_data(now, &buf);
        while let Some(e) = b.poll_event() {
            match e {
                ConnEvent::Message { bytes, .. } => got.push(bytes),
                ConnEvent::Closed(e) => panic!("closed: {e}"),
                _ => {}
            }
        }
        while a.poll_event().is_some() {}
        if !moved {
            return got;
        }
    }
}

#[test]
fn protocol_basic() {
    let now = Instant::now();
    let mut w = Connection::client(now, ConnConfig::default(), 1, vec![echo_proto()]);
    let mut r = Connection::server(now, ConnConfig::default(), 2, vec![echo_proto()]);
    let sizes = [0, 1, 100, 4000, 4096, 5000, 65_536, 300_000, 1 << 20];
    for (i, n) in sizes.iter().enumerate() {
        let m = message(i as u64, Kind::OneWay, 0, &payload(*n, i as u64));
        w.send(OutMessage::from_bytes(i as u64, m, Delivery::Default));
    }
    let got = pump(now, &mut w, &mut r);
    assert_eq!(got.len(), sizes.len());
    let mut seen = vec![false; sizes.len()];
    for bytes in got {
        let v = MessageView::parse(&bytes).unwrap();
        let i = v.header().message_id as usize;
        assert_eq!(v.object(0).unwrap(), &payload(sizes[i], i as u64)[..]);
        seen[i] = true;
    }
    assert!(seen.iter().all(|s| *s));
}

#[test]
fn protocol_synchronous() {
    let now = Instant::now();
    let mut w = Connection::client(now, ConnConfig::default(), 1, vec![echo_proto()]);
    let mut r = Connection::server(now, ConnConfig::default(), 2, vec![echo_proto()]);
    // Ordered messages of decreasing size, interleaved with default ones: the ordered ones
    // must arrive in the order sent although later ones are smaller.
    for i in 0..6u64 {
        let n = 200_000 - i as usize * 30_000;
        let m = message(100 + i, Kind::OneWay, 0, &payload(n, i));
        w.send(OutMessage::from_bytes(100 + i, m, Delivery::Ordered));
        let m = message(i, Kind::OneWay, 0, &payload(10, i));
        w.send(OutMessage::from_bytes(i, m, Delivery::Default));
    }
    let got = pump(now, &mut w, &mut r);
    let ids: Vec<u64> = got
        .iter()
        .map(|b| MessageView::parse(b).unwrap().header().message_id)
        .collect();
    let ordered: Vec<u64> = ids.iter().copied().filter(|i| *i >= 100).collect();
    assert_eq!(ordered, (100..106).collect::<Vec<_>>());
    assert_eq!(ids.len(), 12);
    // The small default messages were not held back behind the ordered ones.
    let first_ordered = ids.iter().position(|i| *i >= 100).unwrap();
    assert!(first_ordered > 0, "{ids:?}");
}

// ---------------------------------------------------------------------------------------
// Basic IPC functionality.

fn clientserver_basic(pool_size: usize) {
    with_watchdog(Duration::from_secs(60), move || {
        let srv = server(ServerConfig::default(), Duration::ZERO);
        let mut config = client_config();
        config.pool = PoolConfig {
            max_connections: pool_size,
            max_pending_connects: 2,
            grow_threshold: 2,
            per_connection: 2,
            ..config.pool
        };
        let rt = runtime();
        rt.block_on(async {
            let net = transport::client(vec![srv.local_addr()], config).unwrap();
            let client = Arc::new(AsyncClient::new(net));
            let mut calls = Vec::new();
            for i in 0..60u64 {
                let c = Arc::clone(&client);
                calls.push(tokio::spawn(async move {
                    let data = payload(((i * 7919) % 200_000) as usize, i);
                    let got = c
                        .call(&ECHO, &[(0, &data)], WAIT, decode_echo)
                        .await
                        .unwrap();
                    assert_eq!(got, data, "call {i}");
                }));
            }
            for c in calls {
                c.await.unwrap();
            }
        });
        let accepted = srv
            .take_events()
            .iter()
            .filter(|e| matches!(e, ServerEvent::Accepted { .. }))
            .count();
        assert!(accepted <= pool_size, "{accepted} connections");
        if pool_size > 1 {
            assert!(accepted >= 2, "the pool grew with its queue: {accepted}");
        }
    });
}

#[test]
fn clientserver_basic_pool_1() {
    clientserver_basic(1);
}

#[test]
fn clientserver_basic_pool_4() {
    clientserver_basic(4);
}

/// `clientserver_basic` with per-buffer compression (Snappy, as in the seed; and LZ4).
fn clientserver_basic_compressed(compressor: Arc<dyn Compressor>) {
    with_watchdog(Duration::from_secs(60), move || {
        let conn = ConnConfig {
            compression: vec![Arc::clone(&compressor)],
            ..test_conn()
        };
        let srv = transport::bind(
            localhost(),
            ServerConfig {
                conn: conn.clone(),
                ..ServerConfig::default()
            },
            vec![Served::new(
                echo_proto(),
                echo_handler("echo", Duration::ZERO),
            )],
        )
        .unwrap();
        let mut config = client_config();
        config.conn = conn;
        let net = transport::client(vec![srv.local_addr()], config).unwrap();
        let handle = net.sender();
        let mut client = Client::new(net);
        for i in 0..20u64 {
            // Text-like data: repeated words of varying length.
            let data: Vec<u8> = format!("message {i} says hello again; ")
                .into_bytes()
                .into_iter()
                .cycle()
                .take((i as usize * 7919) % 100_000)
                .collect();
            assert_eq!(
                client
                    .call(&ECHO, &[(0, &data)], WAIT, decode_echo)
                    .unwrap(),
                data
            );
        }
        let stats = client.transport().stats();
        assert!(stats.frames_compressed > 0, "{stats:?}");
        assert!(
            stats.wire_bytes_sent * 2 < stats.raw_bytes_sent,
            "{stats:?}"
        );
        drop(handle);
    });
}

#[test]
fn clientserver_basic_snappy() {
    clientserver_basic_compressed(Arc::new(Snappy));
}

#[test]
fn clientserver_basic_lz4() {
    clientserver_basic_compressed(Arc::new(Lz4));
}

/// The most wake-ups an idle client's tasks may have over `IDLE`: none are due (no reply
/// pending, so no keep-alive timer), a few spare for stragglers of the last call.
const IDLE_WAKEUPS: u64 = 8;
const IDLE: Duration = Duration::from_millis(300);

/// An idle client's tasks sleep: its wake-ups over a quiet spell stay below
/// `IDLE_WAKEUPS`, on its own runtime (a blocking `Client`) and on the caller's
/// current-thread one (an `AsyncClient`). A connection's writer and the pool task used to
/// wake each other for ever, spinning a core even when idle (thousands of wake-ups over
/// `IDLE`, however loaded the machine), which was most of a call's CPU under load.
#[test]
fn an_idle_client_does_not_spin() {
    with_watchdog(Duration::from_secs(60), || {
        let srv = server(ServerConfig::default(), Duration::ZERO);
        let check = |what: &str, woke: u64| {
            assert!(
                woke <= IDLE_WAKEUPS,
                "{what}: {woke} wake-ups of an idle client in {IDLE:?}"
            );
        };

        let net = transport::client(vec![srv.local_addr()], client_config()).unwrap();
        let mut client = Client::new(net);
        for i in 0..10u64 {
            let data = payload(100, i);
            assert_eq!(
                client
                    .call(&ECHO, &[(0, &data)], WAIT, decode_echo)
                    .unwrap(),
                data
            );
        }
        let before = client.transport().wakeups();
        assert!(before > 0, "the counter counts");
        std::thread::sleep(IDLE);
        check("own runtime", client.transport().wakeups() - before);
        drop(client);

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let net = transport::client(vec![srv.local_addr()], client_config()).unwrap();
            let sender = net.sender();
            let client = AsyncClient::new(net);
            for i in 0..10u64 {
                let data = payload(100, i);
                let got = client.call(&ECHO, &[(0, &data)], WAIT, decode_echo).await;
                assert_eq!(got.unwrap(), data);
            }
            let before = sender.wakeups();
            // The runtime's only thread sleeps here, free to run the client's tasks.
            tokio::time::sleep(IDLE).await;
            check("current-thread runtime", sender.wakeups() - before);
        });
    });
}

/// A handler that falls behind holds its client back instead of the server taking every
/// request into memory: past `max_request_backlog` the server stops reading the
/// connection, so TCP's flow control stops the client. Here the handler holds the first
/// of 64 requests of 256 KiB (16 MiB) with a 1 MiB backlog: the server receives a
/// handful, not all 64; once released, every request is answered, right, once.
///
/// Not over QUIC: there the server never stops reading (docs/SECURITY.md, "Known
/// weaknesses"). A paused QUIC connection was tried: its unread message streams used up
/// QUIC's connection window, so the client's grants on the control stream stopped too,
/// and replies that needed them waited for their timeout.
#[test]
fn a_handler_that_falls_behind_holds_its_client_back() {
    if transport::is_quic() {
        println!("skipped over QUIC: the request backlog does not pause reading there");
        return;
    }
    const CALLS: u64 = 64;
    const SIZE: usize = 256 << 10;
    const BACKLOG: u64 = 1 << 20;
    /// The requests the server may have received while held: under 1 MiB (the one in
    /// the handler included) before the last read, and what that read completed: one read
    /// of 64 KiB, up to 16 frames of 4 KiB, each possibly a message's last (the client
    /// sends the 64 round robin, so they end together). Seen: 5-13.
    const MOST_HELD: u64 = 24;
    with_watchdog(Duration::from_secs(90), || {
        let release = Arc::new(AtomicBool::new(false));
        let handled = Arc::new(AtomicUsize::new(0));
        let srv = {
            let (release, handled) = (Arc::clone(&release), Arc::clone(&handled));
            transport::bind(
                localhost(),
                ServerConfig {
                    max_request_backlog: BACKLOG,
                    reply_timeout: Duration::from_secs(30),
                    ..ServerConfig::default()
                },
                vec![Served::new(echo_proto(), move |req, resp| {
                    let until = Instant::now() + Duration::from_secs(60);
                    while !release.load(Ordering::SeqCst) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    handled.fetch_add(1, Ordering::SeqCst);
                    resp.reply(&[(0, req.object(0).unwrap_or_default())])
                })],
            )
            .unwrap()
        };
        let rt = runtime();
        let _in = rt.enter();
        let client = Arc::new(AsyncClient::new(
            transport::client(vec![srv.local_addr()], client_config()).unwrap(),
        ));
        let calls: Vec<_> = (0..CALLS)
            .map(|i| {
                let client = Arc::clone(&client);
                rt.spawn(async move {
                    let data = payload(SIZE, i);
                    let got = client
                        .call(&ECHO, &[(0, &data)], Duration::from_secs(60), decode_echo)
                        .await;
                    (got, data)
                })
            })
            .collect();
        // Until the server's count of received requests stops growing for 500 ms (or
        // all arrived).
        let received = || srv.stats().messages_received;
        support::settled(
            received,
            0,
            CALLS,
            Duration::from_millis(500),
            Duration::from_secs(20),
        );
        let held = received();
        println!("the server received {held} of {CALLS} requests while its handler was held");
        assert!(held >= 1, "no request reached the server");
        assert!(
            held <= MOST_HELD,
            "the server took {held} of {CALLS} requests of {SIZE} B into memory with a \
             backlog of {BACKLOG} B and a handler holding the first"
        );
        release.store(true, Ordering::SeqCst);
        for call in calls {
            let (got, data) = rt.block_on(call).unwrap();
            assert_eq!(got.as_deref(), Ok(&data[..]));
        }
        assert_eq!(handled.load(Ordering::SeqCst), CALLS as usize, "each once");
        assert_eq!(received(), CALLS);
    });
}

/// An echo server that serves two connections at most.
fn server_of_two() -> NetServer {
    let config = ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    };
    server(config, Duration::ZERO)
}

/// A server at its connection limit answers a newcomer's handshake and closes it with
/// the reason; the clients it serves keep working; a client that leaves frees its place.
#[test]
fn a_server_at_its_connection_limit_refuses_newcomers_clearly() {
    with_watchdog(Duration::from_secs(60), || {
        let srv = server_of_two();
        let addr = srv.local_addr();
        let call = |client: &mut Client<NetClient>, i: u64| {
            let data = payload(1000, i);
            let got = client.call(&ECHO, &[(0, &data)], WAIT, decode_echo);
            assert_eq!(got.as_deref(), Ok(&data[..]), "call {i}");
        };
        let connect = || Client::new(transport::client(vec![addr], client_config()).unwrap());
        let mut first = connect();
        let mut second = connect();
        call(&mut first, 1);
        call(&mut second, 2);
        assert_eq!(srv.connections(), 2);

        // A third: its call fails at once with the reason, and its connection is closed
        // with it.
        let mut third = connect();
        let data = payload(10, 3);
        let refused = third.call(&ECHO, &[(0, &data)], WAIT, decode_echo);
        match &refused {
            Err(CallError::Transport(TransportError::ConnectionLost(why))) => assert!(
                why.contains("refused") && why.contains("the server's limit of 2 connections"),
                "{why}"
            ),
            other => panic!("a refused client's call: {other:?}"),
        }
        let closed = third
            .transport()
            .wait_event(WAIT, |e| matches!(e, ClientEvent::Closed(_)));
        match closed {
            Some(ClientEvent::Closed(ConnError::ClosedByPeer {
                code: CloseCode::Refused,
                reason,
            })) => assert!(
                reason.contains("the server's limit of 2 connections is reached"),
                "{reason}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(srv.stats().connections_refused >= 1, "{}", srv.stats());
        // The two it serves are untouched.
        for i in 10..20 {
            call(&mut first, i);
            call(&mut second, i);
        }
        drop(third);

        // One leaves: its place is free again.
        drop(first);
        let deadline = Instant::now() + WAIT;
        while srv.connections() > 1 {
            assert!(Instant::now() < deadline, "the place was never freed");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut fourth = connect();
        call(&mut fourth, 4);
        call(&mut second, 5);
        assert_eq!(srv.connections(), 2);
    });
}

/// Past `max_connections`, as many again are answered and refused at once (each must
/// send its hello within a second); more than that are dropped unanswered, so a flood of
/// silent connections beyond the limit costs the server little. Over TCP (raw sockets).
#[test]
fn past_the_refusals_a_server_at_its_limit_drops_connections_unanswered() {
    if transport::is_quic() {
        println!("skipped over QUIC: the test's silent connections are raw TCP sockets");
        return;
    }
    with_watchdog(Duration::from_secs(60), || {
        let srv = server_of_two();
        let addr = srv.local_addr();
        let mut served: Vec<_> = (0..2u64)
            .map(|i| {
                let mut c = Client::new(transport::client(vec![addr], client_config()).unwrap());
                let data = payload(100, i);
                assert_eq!(c.call(&ECHO, &[(0, &data)], WAIT, decode_echo), Ok(data));
                c
            })
            .collect();
        // The silent ones hold the two places for refusals for a second; the next is
        // dropped at once. (A machine that stalls this thread for that second gives the
        // fifth a refusal place: tried again.)
        let dropped_at_once = (0..3).any(|_| {
            let before = srv.stats().connections_refused;
            let _silent: Vec<TcpStream> = (0..2)
                .map(|_| TcpStream::connect(addr).expect("connect"))
                .collect();
            let opened = Instant::now();
            let mut fifth = TcpStream::connect(addr).expect("connect");
            fifth.set_read_timeout(Some(WAIT)).unwrap();
            let mut byte = [0u8; 1];
            let ended = matches!(fifth.read(&mut byte), Ok(0) | Err(_));
            assert!(ended, "the fifth connection was answered");
            let quick = opened.elapsed() < Duration::from_millis(900);
            let refused = srv.stats().connections_refused - before;
            println!(
                "fifth ended after {:?}; refused: {refused}",
                opened.elapsed()
            );
            // Let the silent ones' places go before trying again.
            std::thread::sleep(Duration::from_millis(1500));
            quick && refused == 1
        });
        assert!(
            dropped_at_once,
            "the fifth connection was never dropped at once"
        );
        // The two served clients never noticed.
        for (i, c) in served.iter_mut().enumerate() {
            let data = payload(100, i as u64 + 10);
            assert_eq!(c.call(&ECHO, &[(0, &data)], WAIT, decode_echo), Ok(data));
        }
        assert_eq!(srv.connections(), 2);
    });
}

#[test]
fn clientserver_sendrequest() {
    with_watchdog(Duration::from_secs(30), || {
        let srv = server(ServerConfig::default(), Duration::ZERO);
        let mut client =
            Client::new(transport::client(vec![srv.local_addr()], client_config()).unwrap());
        for i in 0..20u64 {
            let data = payload(i as usize * 1000, i);
            // A request answered by a response of another shape.
            let (len, tag) = client
                .call(&QUERY, &[(0, &data)], WAIT, |m| {
                    let len = u64::from_le_bytes(
                        m.object(0).ok_or("len")?.try_into().map_err(|_| "len")?,
                    );
                    Ok((len, m.object(1).ok_or("tag")?.to_vec()))
                })
                .unwrap();
            assert_eq!((len, &tag[..]), (data.len() as u64, &b"echo"[..]));
            let back = client
                .call(&ECHO, &[(0, &data)], WAIT, decode_echo)
                .unwrap();
            assert_eq!(back, data);
        }
        // An unknown method gets its typed error.
        let e = client
            .call(&Method::new("nope", 99), &[], WAIT, decode_echo)
            .unwrap_err();
        assert_eq!(e, CallError::UnknownMethod { message_id: 99 });
    });
}

/// `@ordered` one-way messages of mixed sizes (a large one often followed by tiny ones)
/// reach the handler in the order sent, over a loss-free loopback as over any network:
/// over QUIC each message cannot simply take a QUIC stream of its own, or a small one
/// finishes before the large one sent before it. The `@ordered` query sent last sees
/// them all.
#[test]
fn ordered_oneways_arrive_in_order() {
    const SINK: Method = Method::new("sink", 4).delivery(flags::ORDERED);
    const SUNK: Method = Method::new("sunk", 5).delivery(flags::ORDERED);
    const COUNT: u64 = 120;
    let size = |i: u64| match i {
        i if i % 20 == 0 => 512 << 10,
        i if i % 5 == 0 => (64 << 10) + (i as usize * 97) % 4096,
        i => (i as usize * 7919) % 2000,
    };
    with_watchdog(Duration::from_secs(120), move || {
        let got = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
        let bad = Arc::new(AtomicUsize::new(0));
        let (got2, bad2) = (Arc::clone(&got), Arc::clone(&bad));
        let srv = transport::bind(
            localhost(),
            ServerConfig::default(),
            vec![Served::new(echo_proto(), move |req, resp| {
                let data = req.object(0).unwrap_or_default();
                match req.message_id() {
                    4 => {
                        let seq = data
                            .get(..8)
                            .map_or(u64::MAX, |s| u64::from_le_bytes(s.try_into().unwrap()));
                        if data[8.min(data.len())..] != payload(size(seq), seq)[..] {
                            bad2.fetch_add(1, Ordering::Relaxed);
                        }
                        got2.lock().unwrap().push(seq);
                        resp.done()
                    }
                    5 => {
                        let seen: Vec<u8> = got2
                            .lock()
                            .unwrap()
                            .iter()
                            .flat_map(|s| s.to_le_bytes())
                            .collect();
                        resp.reply(&[(0, &seen[..])])
                    }
                    _ => Err(HandlerError::UnknownMethod),
                }
            })],
        )
        .unwrap();
        let mut client =
            Client::new(transport::client(vec![srv.local_addr()], client_config()).unwrap());
        for seq in 0..COUNT {
            let mut data = seq.to_le_bytes().to_vec();
            data.extend_from_slice(&payload(size(seq), seq));
            client
                .send_oneway(&SINK, &[(0, &data)], WAIT, false)
                .unwrap();
        }
        let seen: Vec<u64> = client
            .call(&SUNK, &[], WAIT, decode_echo)
            .unwrap()
            .chunks_exact(8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
            .collect();
        assert_eq!(seen, (0..COUNT).collect::<Vec<_>>(), "the order of arrival");
        assert_eq!(bad.load(Ordering::Relaxed), 0, "messages received wrong");
    });
}

#[test]
fn peer2peer_basic() {
    with_watchdog(Duration::from_secs(60), || {
        let a = server(ServerConfig::default(), Duration::ZERO);
        let b = server(ServerConfig::default(), Duration::ZERO);
        let rt = runtime();
        rt.block_on(async {
            let mut config = client_config();
            config.pool.max_connections = 2;
            let a_to_b = Arc::new(AsyncClient::new(
                transport::client(vec![b.local_addr()], config.clone()).unwrap(),
            ));
            let b_to_a = Arc::new(AsyncClient::new(
                transport::client(vec![a.local_addr()], config).unwrap(),
            ));
            let mut calls = Vec::new();
            for i in 0..40u64 {
                let c = Arc::clone(if i % 2 == 0 { &a_to_b } else { &b_to_a });
                calls.push(tokio::spawn(async move {
                    let data = payload(((i * 104_729) % 100_000) as usize, i);
                    let got = c
                        .call(&ECHO, &[(0, &data)], WAIT, decode_echo)
                        .await
                        .unwrap();
                    assert_eq!(got, data);
                }));
            }
            for c in calls {
                c.await.unwrap();
            }
        });
        for s in [&a, &b] {
            assert!(
                s.take_events()
                    .iter()
                    .any(|e| matches!(e, ServerEvent::Accepted { .. }))
            );
        }
    });
}

// ---------------------------------------------------------------------------------------
// Keep-alive and its denial-of-service guard.

fn closed_with(srv: &NetServer, want: ConnError) {
    let e = srv.wait_event(WAIT, |e| matches!(e, ServerEvent::Closed { .. }));
    match e {
        Some(ServerEvent::Closed { error, .. }) => assert_eq!(error, want),
        other => panic!("expected a close, got {other:?}"),
    }
}

#[test]
fn keepalive_fail_too_many_keepalives() {
    with_watchdog(Duration::from_secs(30), || {
        let srv = server(
            ServerConfig {
                conn: ConnConfig {
                    max_keepalives: 5,
                    keepalive_window: Duration::from_secs(30),
                    ..test_conn()
                },
                ..ServerConfig::default()
            },
            Duration::from_millis(1500),
        );
        let mut config = client_config();
        config.conn.keepalive_interval = Duration::from_millis(5);
        let mut client = Client::new(transport::client(vec![srv.local_addr()], config).unwrap());
        let e = client
            .call(&SLOW, &[(0, b"x")], WAIT, decode_echo)
            .unwrap_err();
        closed_with(&srv, ConnError::TooManyKeepalives);
        assert!(
            matches!(e, CallError::Transport(TransportError::ConnectionLost(_))),
            "{e:?}"
        );
        let closes: Vec<ClientEvent> = client.transport().take_events();
        assert!(
            closes.iter().any(|e| matches!(
                e,
                ClientEvent::Closed(ConnError::ClosedByPeer {
                    code: CloseCode::TooManyKeepalives,
                    ..
                })
            )),
            "{closes:?}"
        );
    });
}

#[test]
fn keepalive_fail_inactivity() {
    with_watchdog(Duration::from_secs(30), || {
        let srv = server(
            ServerConfig {
                conn: ConnConfig {
                    inactivity_timeout: Duration::from_millis(200),
                    ..test_conn()
                },
                ..ServerConfig::default()
            },
            Duration::from_millis(1500),
        );
        let mut config = client_config();
        config.conn.keepalive_interval = Duration::from_secs(60);
        let mut client = Client::new(transport::client(vec![srv.local_addr()], config).unwrap());
        let e = client
            .call(&SLOW, &[(0, b"x")], WAIT, decode_echo)
            .unwrap_err();
        closed_with(&srv, ConnError::InactivityTimeout);
        assert!(
            matches!(e, CallError::Transport(TransportError::ConnectionLost(_))),
            "{e:?}"
        );
    });
}

#[test]
fn keepalive_success() {
    with_watchdog(Duration::from_secs(30), || {
        let srv = server(
            ServerConfig {
                conn: ConnConfig {
                    inactivity_timeout: Duration::from_millis(600),
                    max_keepalives: 1000,
                    ..test_conn()
                },
                ..ServerConfig::default()
            },
            Duration::from_millis(2000),
        );
        let mut config = client_config();
        config.conn.keepalive_interval = Duration::from_millis(50);
        config.conn.keepalive_idle = true;
        let mut client = Client::new(transport::client(vec![srv.local_addr()], config).unwrap());
        // The reply takes over three inactivity periods: keep-alives hold the connection.
        let got = client
            .call(&SLOW, &[(0, b"late")], WAIT, decode_echo)
            .unwrap();
        assert_eq!(got, b"late");
        // Idle for several inactivity periods, then a call on the same connection.
        std::thread::sleep(Duration::from_millis(1500));
        let got = client
            .call(&ECHO, &[(0, b"again")], WAIT, decode_echo)
            .unwrap();
        assert_eq!(got, b"again");
        let events = srv.take_events();
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, ServerEvent::Closed { .. })),
            "{events:?}"
        );
        let accepted = events
            .iter()
            .filter(|e| matches!(e, ServerEvent::Accepted { .. }))
            .count();
        assert_eq!(accepted, 1);
    });
}

// ---------------------------------------------------------------------------------------
// One-shot delivery and cancel.

#[test]
fn clientserver_delayed() {
    with_watchdog(Duration::from_secs(30), || {
        let addr = free_port();
        let net = transport::client(vec![addr], client_config()).unwrap();
        let sender = net.sender();
        let mut client = Client::new(net);
        let call = std::thread::spawn(move || {
            let got = client.call(&ECHO, &[(0, b"hello")], WAIT, decode_echo);
            (client, got)
        });
        // The client retries meanwhile (with backoff); then the server starts.
        std::thread::sleep(Duration::from_millis(300));
        let _srv = transport::bind(
            addr,
            ServerConfig::default(),
            vec![Served::new(
                echo_proto(),
                echo_handler("echo", Duration::ZERO),
            )],
        )
        .unwrap();
        let (client, got) = call.join().unwrap();
        assert_eq!(got.unwrap(), b"hello");
        let failed_connects = client
            .transport()
            .take_events()
            .iter()
            .filter(|e| matches!(e, ClientEvent::ConnectFailed(_)))
            .count();
        if transport::is_quic() {
            // QUIC resends its first packet until the connect timeout: a server that
            // comes up meanwhile is reached by the first attempt.
            eprintln!("failed connects over QUIC: {failed_connects}");
        } else {
            assert!(failed_connects >= 1);
        }
        // The message was sent (and answered): canceling it fails.
        assert_ne!(client.transport().cancel(1), Canceled::Dropped);
        drop(sender);
    });
}

#[test]
fn clientserver_noserver() {
    with_watchdog(Duration::from_secs(30), || {
        let mut net = transport::client(vec![free_port()], client_config()).unwrap();
        let sender = net.sender();
        let out = Outgoing::new(ECHO.id, Kind::Request).request_id(7);
        send_objects(&sender, &out, &[(0, b"lost?")], WAIT).unwrap();
        // Nothing completes while there is no server.
        assert_eq!(
            net.recv_timeout(Duration::from_millis(300)).unwrap_err(),
            TransportError::Timeout
        );
        assert_eq!(net.cancel(7), Canceled::Dropped);
        // The call completes with "canceled".
        let m = net.recv_timeout(WAIT).unwrap();
        assert_eq!((m.kind(), m.request_id()), (Kind::Reply, 7));
        assert!(m.flags() & flags::LOCAL != 0);
        assert_eq!(m.object(0).unwrap()[0], LocalFailure::Canceled as u8);
        assert_eq!(net.cancel(7), Canceled::Unknown);
    });
}

#[test]
fn clientserver_oneshot() {
    with_watchdog(Duration::from_secs(30), || {
        let mut config = client_config();
        config.deliveries.insert(ECHO.id, Delivery::OneShot);
        let mut client = Client::new(transport::client(vec![free_port()], config).unwrap());
        let e = client
            .call(&ECHO, &[(0, b"once")], WAIT, decode_echo)
            .unwrap_err();
        assert_eq!(e, CallError::Transport(TransportError::NotConnected));
        // The flag bit asks for it per message, too.
        let sender = client.sender().clone();
        let out = Outgoing::new(ECHO.id, Kind::OneWay).flags(flags::ONE_SHOT);
        assert_eq!(
            send_objects(&sender, &out, &[(0, b"x")], WAIT),
            Err(TransportError::NotConnected)
        );
    });
}

/// Binds `addr` again, retrying while the old listener is still going away.
fn rebind(addr: SocketAddr, config: ServerConfig, served: Vec<Served>) -> NetServer {
    let deadline = Instant::now() + WAIT;
    loop {
        match transport::bind(addr, config.clone(), served.clone()) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("rebinding {addr}: {e}"),
        }
    }
}

/// A server whose handler never answers until released (it is about to be killed).
fn stuck_server(addr: SocketAddr, release: Arc<AtomicBool>, seen: Arc<AtomicUsize>) -> NetServer {
    rebind(
        addr,
        ServerConfig {
            instance: Some(1),
            ..ServerConfig::default()
        },
        vec![Served::new(echo_proto(), move |_req, _resp| {
            seen.fetch_add(1, Ordering::SeqCst);
            let until = Instant::now() + WAIT;
            while !release.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(HandlerError::Failed("released".into()))
        })],
    )
}

#[test]
fn clientserver_idempotent() {
    with_watchdog(Duration::from_secs(40), || {
        let release = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let first = stuck_server(localhost(), Arc::clone(&release), Arc::clone(&seen));
        let addr = first.local_addr();
        let mut config = client_config();
        config.deliveries.insert(ECHO.id, Delivery::Idempotent);
        let mut client = Client::new(transport::client(vec![addr], config).unwrap());
        let long = payload(4 << 20, 9);
        let expect = long.clone();
        let call = std::thread::spawn(move || client.call(&ECHO, &[(0, &long)], WAIT, decode_echo));
        // The long message reached the first server, whose reply never comes: restart it.
        let deadline = Instant::now() + WAIT;
        while seen.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        first.kill();
        release.store(true, Ordering::SeqCst);
        let _second = rebind(
            addr,
            ServerConfig {
                instance: Some(2),
                ..ServerConfig::default()
            },
            vec![Served::new(
                echo_proto(),
                echo_handler("echo", Duration::ZERO),
            )],
        );
        assert_eq!(call.join().unwrap().unwrap(), expect, "resent and answered");
    });
}

#[test]
fn server_killed_and_restarted_mid_call_gives_peer_restarted() {
    with_watchdog(Duration::from_secs(40), || {
        let release = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicUsize::new(0));
        let first = stuck_server(localhost(), Arc::clone(&release), Arc::clone(&seen));
        let addr = first.local_addr();
        let mut client = Client::new(transport::client(vec![addr], client_config()).unwrap());
        let call = std::thread::spawn(move || {
            let r = client.call(&ECHO, &[(0, b"old")], WAIT, decode_echo);
            (client, r)
        });
        let deadline = Instant::now() + WAIT;
        while seen.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        first.kill();
        release.store(true, Ordering::SeqCst);
        let _second = rebind(
            addr,
            ServerConfig {
                instance: Some(2),
                ..ServerConfig::default()
            },
            vec![Served::new(
                echo_proto(),
                echo_handler("echo", Duration::ZERO),
            )],
        );
        let (mut client, r) = call.join().unwrap();
        assert_eq!(r.unwrap_err(), CallError::PeerRestarted);
        // The new incarnation serves new calls.
        assert_eq!(
            client
                .call(&ECHO, &[(0, b"new")], WAIT, decode_echo)
                .unwrap(),
            b"new"
        );
    });
}

// ---------------------------------------------------------------------------------------
// Multi-protocol.

#[test]
fn multiprotocol() {
    with_watchdog(Duration::from_secs(40), || {
        let protos = ["Alpha", "Beta", "Gamma"];
        let tags: [&'static str; 3] = ["alpha", "beta", "gamma"];
        let srv = transport::bind(
            localhost(),
            ServerConfig::default(),
            protos
                .iter()
                .zip(tags)
                .map(|(p, t)| {
                    Served::new(ProtocolSpec::new(*p, 2), echo_handler(t, Duration::ZERO))
                })
                .collect(),
        )
        .unwrap();
        let rt = runtime();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for (p, tag) in [("Alpha", "alpha"), ("Gamma", "gamma")] {
                let mut config = client_config();
                config.protocol = ProtocolSpec::new(p, 1);
                let client = Arc::new(AsyncClient::new(
                    transport::client(vec![srv.local_addr()], config).unwrap(),
                ));
                assert_eq!(client.version(), 1);
                for i in 0..20u64 {
                    let c = Arc::clone(&client);
                    tasks.push(tokio::spawn(async move {
                        let data = payload((i * 3001) as usize, i);
                        let got = c
                            .call(&ECHO, &[(0, &data)], WAIT, decode_echo)
                            .await
                            .unwrap();
                        assert_eq!(got, data);
                        let (len, t) = c
                            .call(&QUERY, &[(0, &data)], WAIT, |m| {
                                Ok((m.object(0).unwrap().to_vec(), m.object(1).unwrap().to_vec()))
                            })
                            .await
                            .unwrap();
                        assert_eq!(len, (data.len() as u64).to_le_bytes());
                        assert_eq!(t, tag.as_bytes(), "served by its own protocol's handler");
                    }));
                }
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
        // A client of a protocol the server does not serve is refused.
        let mut config = client_config();
        config.protocol = ProtocolSpec::new("Delta", 1);
        let e = transport::connect(vec![srv.local_addr()], config, WAIT).unwrap_err();
        assert!(
            e.to_string().contains("refused") || e.to_string().contains("Refused"),
            "{e}"
        );
    });
}

// ---------------------------------------------------------------------------------------
// Closing pools.

fn is_closed_failure(e: &CallError) -> bool {
    matches!(e, CallError::Transport(TransportError::Io(s)) if s.contains("closed"))
        || *e == CallError::PeerDied
}

#[test]
fn pool_force_close() {
    with_watchdog(Duration::from_secs(40), || {
        let srv = server(ServerConfig::default(), Duration::from_millis(200));
        let rt = runtime();
        rt.block_on(async {
            let net = transport::client(vec![srv.local_addr()], client_config()).unwrap();
            let handle = net.sender();
            let client = Arc::new(AsyncClient::new(net));
            let mut calls = Vec::new();
            for i in 0..10u64 {
                let c = Arc::clone(&client);
                calls.push(tokio::spawn(async move {
                    let data = payload(100_000, i);
                    c.call(&SLOW, &[(0, &data)], WAIT, decode_echo).await
                }));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            handle.close(true);
            let mut failed = 0;
            for c in calls {
                match c.await.unwrap() {
                    Ok(_) => {}
                    Err(e) => {
                        assert!(is_closed_failure(&e), "{e:?}");
                        failed += 1;
                    }
                }
            }
            assert!(failed > 0, "force-closing failed the unfinished calls");
        });
        // Blocking client: force-close from another thread while calls are queued.
        let net = transport::client(vec![srv.local_addr()], client_config()).unwrap();
        let sender = net.sender();
        for i in 1..=5u64 {
            let out = Outgoing::new(SLOW.id, Kind::Request).request_id(i);
            send_objects(&sender, &out, &[(0, &payload(50_000, i))], WAIT).unwrap();
        }
        net.close(true);
        assert!(net.is_closed());
        let out = Outgoing::new(SLOW.id, Kind::Request).request_id(9);
        assert_eq!(
            send_objects(&sender, &out, &[(0, b"late")], WAIT),
            Err(TransportError::PeerDied)
        );
        let failures = net
            .take_events()
            .into_iter()
            .filter(|e| {
                matches!(
                    e,
                    ClientEvent::Failed {
                        failure: Failure::PoolClosed,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(failures, 5, "every unfinished call was told");
    });
}

#[test]
fn pool_delay_close() {
    with_watchdog(Duration::from_secs(40), || {
        let srv = server(ServerConfig::default(), Duration::from_millis(20));
        let mut net = transport::client(vec![srv.local_addr()], client_config()).unwrap();
        let sender = net.sender();
        for i in 1..=10u64 {
            let out = Outgoing::new(SLOW.id, Kind::Request).request_id(i);
            send_objects(&sender, &out, &[(0, &payload(50_000, i))], WAIT).unwrap();
        }
        net.close(false);
        // New messages are refused; every queued one is still answered.
        let out = Outgoing::new(SLOW.id, Kind::Request).request_id(99);
        assert_eq!(
            send_objects(&sender, &out, &[(0, b"late")], WAIT),
            Err(TransportError::PeerDied)
        );
        let mut replies = 0;
        while replies < 10 {
            let m = net.recv_timeout(WAIT).unwrap();
            assert_eq!(m.kind(), Kind::Reply);
            assert_eq!(m.flags() & flags::LOCAL, 0, "a real reply");
            assert_eq!(m.object(0).unwrap(), &payload(50_000, m.request_id())[..]);
            replies += 1;
        }
        let deadline = Instant::now() + WAIT;
        while !net.is_closed() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(net.is_closed());
        closed_with(
            &srv,
            ConnError::ClosedByPeer {
                code: CloseCode::Normal,
                reason: "closed locally".into(),
            },
        );
    });
}

// ---------------------------------------------------------------------------------------
// Hostile frames over a real socket: each closes its own connection only.

/// A raw connection past the handshake.
fn raw_client(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut hello = Vec::new();
    Hello {
        instance: 77,
        buffer_size: frame::DEFAULT_BUFFER,
        max_message: 1 << 20,
        compression: vec![],
        protocols: vec![echo_proto()],
    }
    .encode(&mut hello);
    s.write_all(&hello).unwrap();
    // The welcome: magic, version, length, body.
    let mut head = [0u8; frame::RECORD_HEADER];
    s.read_exact(&mut head).unwrap();
    let len = u32::from_le_bytes(head[10..14].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    s
}

fn frame_bytes(h: FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    h.encode(&mut f);
    f.extend_from_slice(payload);
    f
}

#[test]
fn hostile_frames_close_only_their_connection() {
    if transport::is_quic() {
        // Raw TCP bytes; `net_quic.rs` has the QUIC counterparts.
        eprintln!("TCP only: skipped over QUIC");
        return;
    }
    with_watchdog(Duration::from_secs(40), || {
        let srv = server(ServerConfig::default(), Duration::ZERO);
        let mut good =
            Client::new(transport::client(vec![srv.local_addr()], client_config()).unwrap());
        assert_eq!(
            good.call(&ECHO, &[(0, b"before")], WAIT, decode_echo)
                .unwrap(),
            b"before"
        );
        let msg = message(1, Kind::Request, 1, b"hostile");
        let data = |flags: u8, payload: &[u8]| {
            frame_bytes(
                FrameHeader {
                    kind: kind::DATA,
                    flags,
                    protocol: 0,
                    stream: 1,
                    payload: payload.len() as u32,
                    raw: payload.len() as u32,
                },
                payload,
            )
        };
        let mut bad_flags = msg.clone();
        bad_flags[16] = 0xff;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "malformed",
                data(data_flags::FIRST | data_flags::LAST, &bad_flags),
            ),
            ("truncated", data(data_flags::FIRST, &msg[..30])),
            ("oversized", {
                let mut f = data(data_flags::FIRST, &msg);
                f[8..12].copy_from_slice(&(1u32 << 20).to_le_bytes());
                f
            }),
        ];
        for (name, bytes) in cases {
            let mut raw = raw_client(srv.local_addr());
            srv.wait_event(WAIT, |e| {
                matches!(e, ServerEvent::Accepted { instance: 77, .. })
            })
            .unwrap();
            raw.write_all(&bytes).unwrap();
            match srv.wait_event(WAIT, |e| matches!(e, ServerEvent::Closed { .. })) {
                Some(ServerEvent::Closed {
                    error: ConnError::Frame(e),
                    ..
                }) => {
                    eprintln!("{name}: {e}")
                }
                other => panic!("{name}: {other:?}"),
            }
            // The server said why, then closed.
            let mut rest = Vec::new();
            let _ = raw.read_to_end(&mut rest);
            assert_eq!(rest.first(), Some(&kind::CLOSE), "{name}");
            // The good client never noticed.
            let back = good
                .call(&ECHO, &[(0, name.as_bytes())], WAIT, decode_echo)
                .unwrap();
            assert_eq!(back, name.as_bytes());
        }
    });
}
