//! Observability of the network connectors, over real loopback sockets, TCP and QUIC
//! alike: the counters of `NetClient::stats` and `NetServer::stats` (messages, bytes,
//! connections, failures, reconnects, drops, hostile frames) and the `tracing` events
//! (their fields and their connection's span), caught by a small capturing layer.
//!
//! Every wait is bounded (a watchdog per test, deadlines on polls); no assertion is about
//! time.

#![cfg(feature = "quic")]

mod support;
#[path = "support/transport.rs"]
mod transport;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use shm_channel::layout::Kind;
use shm_channel::net::ServerConfig;
use shm_channel::net::frame::{self, FrameHeader, Hello, ProtocolSpec, kind};
use shm_channel::net::{ClientConfig, ConnConfig, NetClient, NetServer, NetStats, Served};
use shm_channel::rpc::{
    Client, HandlerError, IncomingMessage, Method, Outgoing, RequestView, Responder, Transport,
    TransportError, flags, send_objects,
};
use support::with_watchdog;
use transport::Net;

const ECHO: Method = Method::new("echo", 1);
const WAIT: Duration = Duration::from_secs(20);
const BOTH: [Net; 2] = [Net::Tcp, Net::Quic];

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A port nothing listens on, TCP or UDP (bound, then released).
fn free_port() -> SocketAddr {
    TcpListener::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap()
}

fn proto(name: &str) -> ProtocolSpec {
    ProtocolSpec::new(name, 1)
}

fn echo(
    req: &RequestView<'_>,
    resp: Responder<'_>,
) -> Result<shm_channel::rpc::Replied, HandlerError> {
    resp.reply(&[(0, req.object(0).unwrap_or_default())])
}

fn server(net: Net, addr: SocketAddr, name: &str) -> NetServer {
    server_with(net, addr, name, ServerConfig::default())
}

fn server_with(net: Net, addr: SocketAddr, name: &str, config: ServerConfig) -> NetServer {
    // A restarted server's port may take a moment to free up.
    let deadline = Instant::now() + WAIT;
    loop {
        match net.bind(addr, config.clone(), vec![Served::new(proto(name), echo)]) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("binding {addr}: {e}"),
        }
    }
}

fn client_config(name: &str) -> ClientConfig {
    let mut c = ClientConfig::new(proto(name));
    c.conn = ConnConfig {
        handshake_timeout: Duration::from_secs(5),
        keepalive_interval: Duration::from_secs(3600),
        ..ConnConfig::default()
    };
    c.pool.backoff_min = Duration::from_millis(20);
    c.pool.backoff_max = Duration::from_millis(200);
    c.connect_timeout = Duration::from_secs(2);
    c
}

fn decode(m: &dyn IncomingMessage) -> Result<Vec<u8>, String> {
    m.object(0)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "no object".into())
}

/// Polls `stats` until `done` holds (or the deadline passes), and returns the last read.
fn wait_stats(stats: impl Fn() -> NetStats, done: impl Fn(&NetStats) -> bool) -> NetStats {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = stats();
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// Counters.

#[test]
fn stats_count_calls_messages_and_bytes_on_both_sides() {
    with_watchdog(Duration::from_secs(60), || {
        for net in BOTH {
            let srv = server(net, localhost(), "Echo");
            let mut client = Client::new(
                net.client(vec![srv.local_addr()], client_config("Echo"))
                    .unwrap(),
            );
            const N: u64 = 40;
            let mut payload_bytes = 0;
            for i in 0..N {
                let data = vec![i as u8; 100 + 997 * i as usize];
                payload_bytes += data.len() as u64;
                assert_eq!(
                    client.call(&ECHO, &[(0, &data)], WAIT, decode).unwrap(),
                    data
                );
            }
            let c = client.transport().stats();
            eprintln!("{net:?} client:\n{c}");
            assert_eq!(c.messages_sent, N, "{net:?}: {c:?}");
            assert_eq!(client.transport().messages_sent(), N);
            assert_eq!(c.messages_received, N, "{net:?}: {c:?}");
            assert_eq!(c.connections_opened, 1, "{net:?}: {c:?}");
            assert_eq!(c.connections_closed, 0, "{net:?}: {c:?}");
            assert_eq!(c.connects_failed + c.reconnects + c.resends, 0, "{c:?}");
            assert!(c.raw_bytes_sent > payload_bytes, "{net:?}: {c:?}");
            assert!(c.raw_bytes_received > payload_bytes, "{net:?}: {c:?}");
            // Uncompressed: frame headers on top of the message bytes.
            assert!(c.wire_bytes_sent > c.raw_bytes_sent, "{net:?}: {c:?}");
            assert!(
                c.wire_bytes_received > c.raw_bytes_received,
                "{net:?}: {c:?}"
            );
            // The server saw the same, the other way round (its replies counted as
            // they were handed to the socket, before the client read them).
            let s = srv.stats();
            eprintln!("{net:?} server:\n{s}");
            assert_eq!(s.messages_received, N, "{net:?}: {s:?}");
            assert_eq!(s.messages_sent, N, "{net:?}: {s:?}");
            assert_eq!(s.connections_opened, 1, "{net:?}: {s:?}");
            assert_eq!(s.raw_bytes_received, c.raw_bytes_sent, "{net:?}");
            assert_eq!(s.raw_bytes_sent, c.raw_bytes_received, "{net:?}");
            // Every byte one side's core wrote, the other's read (nothing else was sent:
            // no keep-alive in this config).
            assert_eq!(s.wire_bytes_sent, c.wire_bytes_received, "{net:?}");
            assert_eq!(s.wire_bytes_received, c.wire_bytes_sent, "{net:?}");
            // A closed client is counted closed on both sides, and its traffic stays in
            // the server's counters after its connection is gone.
            drop(client);
            // (Over QUIC a dropped client's CLOSE may never leave: its runtime goes with
            // it, and the server only learns at its idle timeout. Not counted here.)
            if net == Net::Tcp {
                let s = wait_stats(|| srv.stats(), |s| s.connections_closed == 1);
                assert_eq!(s.connections_closed, 1, "{net:?}: {s:?}");
            }
            let s = srv.stats();
            assert_eq!(s.messages_received, N, "{net:?}: {s:?}");
            assert_eq!(s.hostile_frames + s.handshakes_failed, 0, "{net:?}: {s:?}");
        }
    });
}

#[test]
fn stats_count_a_killed_servers_failed_connects_and_reconnects() {
    with_watchdog(Duration::from_secs(120), || {
        for net in BOTH {
            let first = server(net, localhost(), "Echo");
            let addr = first.local_addr();
            // Keep-alives while a reply is awaited: a killed QUIC server says nothing (no
            // FIN as over TCP), so its silence is what tells.
            let mut config = client_config("Echo");
            config.conn.keepalive_interval = Duration::from_millis(200);
            config.conn.inactivity_timeout = Duration::from_secs(2);
            let client = net.connect(vec![addr], config, WAIT).unwrap();
            first.kill();
            drop(first);
            // A request to the dead server: it (or, once the connection is found dead,
            // the pool) keeps asking for a connection.
            let request = Outgoing::new(ECHO.id, Kind::Request).request_id(1 << 40);
            send_objects(&client.sender(), &request, &[(0, b"lost")], WAIT).unwrap();
            let s = wait_stats(|| client.stats(), |s| s.connects_failed >= 2);
            eprintln!("{net:?} while down:\n{s}");
            assert_eq!(s.connections_closed, 1, "{net:?}: {s:?}");
            assert!(s.connects_failed >= 2, "{net:?}: {s:?}");
            assert!(s.reconnects >= s.connects_failed, "{net:?}: {s:?}");
            // (Over QUIC the dead server's silence may have told, or quinn's close of its
            // dropped connection: either way one close.)
            assert!(s.keepalive_failures <= 1, "{net:?}: {s:?}");
            let second = server(net, addr, "Echo");
            let s = wait_stats(|| client.stats(), |s| s.connections_opened == 2);
            eprintln!("{net:?} after the restart:\n{s}");
            assert_eq!(s.connections_opened, 2, "{net:?}: {s:?}");
            // Every connect after the drop was a retry; the last one succeeded.
            assert_eq!(s.reconnects, s.connects_failed + 1, "{net:?}: {s:?}");
            let mut client = Client::new(client);
            assert_eq!(
                client.call(&ECHO, &[(0, b"two")], WAIT, decode).unwrap(),
                b"two"
            );
            assert_eq!(second.stats().connections_opened, 1, "{net:?}");
        }
    });
}

#[test]
fn stats_count_an_idempotent_calls_resend() {
    with_watchdog(Duration::from_secs(90), || {
        for net in BOTH {
            // A first server whose handler holds the call until it is killed.
            let seen = Arc::new(AtomicBool::new(false));
            let release = Arc::new(AtomicBool::new(false));
            let (s, r) = (Arc::clone(&seen), Arc::clone(&release));
            let first = net
                .bind(
                    localhost(),
                    ServerConfig::default(),
                    vec![Served::new(proto("Echo"), move |_req, _resp| {
                        s.store(true, Ordering::SeqCst);
                        let until = Instant::now() + WAIT;
                        while !r.load(Ordering::SeqCst) && Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(HandlerError::Failed("released".into()))
                    })],
                )
                .unwrap();
            let addr = first.local_addr();
            // Keep-alives while the reply is awaited: how a client finds a killed QUIC
            // server gone.
            let mut config = client_config("Echo");
            config.conn.keepalive_interval = Duration::from_millis(200);
            config.conn.inactivity_timeout = Duration::from_secs(2);
            let mut client = net.connect(vec![addr], config, WAIT).unwrap();
            let id = 1 << 41;
            let call = Outgoing::new(ECHO.id, Kind::Request)
                .request_id(id)
                .flags(flags::IDEMPOTENT);
            send_objects(&client.sender(), &call, &[(0, b"again")], WAIT).unwrap();
            let deadline = Instant::now() + WAIT;
            while !seen.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(
                seen.load(Ordering::SeqCst),
                "{net:?}: the call never arrived"
            );
            first.kill();
            release.store(true, Ordering::SeqCst);
            drop(first);
            let second = server(net, addr, "Echo");
            // Sent again once the pool found its connection gone, answered by the second.
            let reply = client.recv_timeout(WAIT).unwrap();
            assert_eq!(reply.request_id(), id, "{net:?}");
            assert_eq!(reply.object(0), Some(&b"again"[..]), "{net:?}");
            let s = client.stats();
            eprintln!("{net:?}:\n{s}");
            assert_eq!(s.resends, 1, "{net:?}: {s:?}");
            assert_eq!(s.messages_sent, 2, "{net:?}: {s:?}");
            assert_eq!(s.messages_failed, 0, "{net:?}: {s:?}");
            assert_eq!(second.stats().messages_received, 1, "{net:?}");
        }
    });
}

#[test]
fn stats_count_no_queue_and_queue_full_drops() {
    with_watchdog(Duration::from_secs(60), || {
        for net in BOTH {
            // Nothing listens there: no connection ever opens.
            let mut config = client_config("Echo");
            config.pool.max_queued = 1;
            let client = net.client(vec![free_port()], config).unwrap();
            let sender = client.sender();
            let one_way = || Outgoing::new(ECHO.id, Kind::OneWay);
            let r = send_objects(
                &sender,
                &one_way().no_queue(true),
                &[(0, b"now or never")],
                Duration::ZERO,
            );
            assert_eq!(r, Err(TransportError::Dropped), "{net:?}");
            // One message waits in the queue for a connection; the next finds no room.
            send_objects(&sender, &one_way(), &[(0, b"queued")], Duration::ZERO).unwrap();
            let r = send_objects(&sender, &one_way(), &[(0, b"no room")], Duration::ZERO);
            assert_eq!(r, Err(TransportError::Timeout), "{net:?}");
            let s = client.stats();
            eprintln!("{net:?}:\n{s}");
            assert_eq!(s.dropped_no_queue, 1, "{net:?}: {s:?}");
            assert_eq!(s.dropped_queue_full, 1, "{net:?}: {s:?}");
            assert_eq!(s.messages_sent, 0, "{net:?}: {s:?}");
        }
    });
}

/// A DATA frame with flags no version defines.
fn bad_frame() -> Vec<u8> {
    let mut f = Vec::new();
    FrameHeader {
        kind: kind::DATA,
        flags: 0xff,
        protocol: 0,
        stream: 1,
        payload: 0,
        raw: 0,
    }
    .encode(&mut f);
    f
}

fn hello(instance: u128) -> Vec<u8> {
    let mut hello = Vec::new();
    Hello {
        instance,
        buffer_size: frame::DEFAULT_BUFFER,
        max_message: 1 << 20,
        compression: vec![],
        protocols: vec![proto("Echo")],
    }
    .encode(&mut hello);
    hello
}

/// Reads a handshake record (the welcome) from `r`.
fn read_record(r: &mut impl Read) -> Vec<u8> {
    let mut head = [0u8; frame::RECORD_HEADER];
    r.read_exact(&mut head).unwrap();
    let len = u32::from_le_bytes(head[10..14].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    body
}

/// Waits for `srv` to count `hostile` hostile frames: the first broke its hello (a failed
/// handshake), the others came over `opened` connections (each closed for it).
fn expect_hostile(srv: &NetServer, hostile: u64, opened: u64) {
    let s = wait_stats(|| srv.stats(), |s| s.hostile_frames == hostile);
    eprintln!("server:\n{s}");
    assert_eq!(s.hostile_frames, hostile, "{s:?}");
    assert_eq!(s.handshakes_failed, 1, "{s:?}");
    assert_eq!(s.connections_opened, opened, "{s:?}");
    assert_eq!(s.connections_closed, opened, "{s:?}");
}

#[test]
fn stats_count_hostile_frames_over_tcp() {
    with_watchdog(Duration::from_secs(60), || {
        let srv = server(Net::Tcp, localhost(), "Echo");
        let addr = srv.local_addr();
        // Garbage instead of a hello.
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.set_read_timeout(Some(WAIT)).unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let _ = raw.read_to_end(&mut Vec::new());
        expect_hostile(&srv, 1, 0);
        // A bad frame after a good handshake.
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.set_read_timeout(Some(WAIT)).unwrap();
        raw.write_all(&hello(5)).unwrap();
        read_record(&mut raw);
        raw.write_all(&bad_frame()).unwrap();
        let _ = raw.read_to_end(&mut Vec::new());
        expect_hostile(&srv, 2, 1);

        // The client's side: a "server" that answers the hello with garbage.
        let fake = TcpListener::bind(localhost()).unwrap();
        let fake_addr = fake.local_addr().unwrap();
        let fake_thread = std::thread::spawn(move || {
            let (mut s, _) = fake.accept().unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            let _ = s.write_all(&[0xab; 64]);
            let _ = s.read_to_end(&mut Vec::new());
        });
        let client = NetClient::new(vec![fake_addr], client_config("Echo")).unwrap();
        client.wake_up();
        let c = wait_stats(|| client.stats(), |s| s.hostile_frames == 1);
        eprintln!("client:\n{c}");
        assert_eq!(c.hostile_frames, 1, "{c:?}");
        assert_eq!(c.handshakes_failed, 1, "{c:?}");
        assert!(c.connects_failed >= 1, "{c:?}");
        assert_eq!(c.connections_opened, 0, "{c:?}");
        drop(client);
        fake_thread.join().unwrap();
    });
}

/// A QUIC connection to `addr` (trusting the test certificate), its control stream open.
async fn raw_quic(
    addr: SocketAddr,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let ep = quinn::Endpoint::client(localhost()).unwrap();
    let config = transport::tls()
        .client
        .quinn_config(&ConnConfig::default())
        .unwrap();
    let conn = ep
        .connect_with(config, addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    (ep, conn, send, recv)
}

#[test]
fn stats_count_hostile_frames_over_quic() {
    with_watchdog(Duration::from_secs(60), || {
        let srv = server(Net::Quic, localhost(), "Echo");
        let addr = srv.local_addr();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // Garbage on the control stream instead of a hello.
        let _first = rt.block_on(async {
            let (ep, conn, mut send, _recv) = raw_quic(addr).await;
            send.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            (ep, conn, send)
        });
        expect_hostile(&srv, 1, 0);
        // A good hello, then a bad frame on a message stream.
        let _second = rt.block_on(async {
            let (ep, conn, mut send, mut recv) = raw_quic(addr).await;
            send.write_all(&hello(6)).await.unwrap();
            let mut head = [0u8; frame::RECORD_HEADER];
            recv.read_exact(&mut head).await.unwrap();
            let mut stream = conn.open_uni().await.unwrap();
            stream.write_all(&bad_frame()).await.unwrap();
            (ep, conn, send, recv, stream)
        });
        expect_hostile(&srv, 2, 1);
    });
}

#[test]
fn stats_count_a_silent_clients_keepalive_failure() {
    with_watchdog(Duration::from_secs(60), || {
        for net in BOTH {
            let config = ServerConfig {
                conn: ConnConfig {
                    inactivity_timeout: Duration::from_millis(300),
                    ..ConnConfig::default()
                },
                ..ServerConfig::default()
            };
            let srv = server_with(net, localhost(), "Echo", config);
            let addr = srv.local_addr();
            // A client that says hello, then nothing (no keep-alive either).
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let _silent: Box<dyn std::any::Any> = match net {
                Net::Tcp => {
                    let mut raw = TcpStream::connect(addr).unwrap();
                    raw.set_read_timeout(Some(WAIT)).unwrap();
                    raw.write_all(&hello(8)).unwrap();
                    read_record(&mut raw);
                    Box::new(raw)
                }
                Net::Quic => Box::new(rt.block_on(async {
                    let (ep, conn, mut send, mut recv) = raw_quic(addr).await;
                    send.write_all(&hello(8)).await.unwrap();
                    let mut head = [0u8; frame::RECORD_HEADER];
                    recv.read_exact(&mut head).await.unwrap();
                    (ep, conn, send, recv)
                })),
            };
            let s = wait_stats(|| srv.stats(), |s| s.keepalive_failures == 1);
            eprintln!("{net:?} server:\n{s}");
            assert_eq!(s.keepalive_failures, 1, "{net:?}: {s:?}");
            assert_eq!(s.connections_opened, 1, "{net:?}: {s:?}");
            assert_eq!(s.connections_closed, 1, "{net:?}: {s:?}");
            assert_eq!(s.hostile_frames + s.handshakes_failed, 0, "{net:?}: {s:?}");
        }
    });
}

// ---------------------------------------------------------------------------------------
// Tracing.

mod catch {
    //! A `tracing` layer that keeps every event at debug level or above, with its fields
    //! and those of the spans it happened in.

    use super::*;
    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    #[derive(Debug, Clone, Default)]
    pub struct Fields(pub BTreeMap<&'static str, String>);

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name(), value.to_string());
        }

        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name(), format!("{value:?}"));
        }
    }

    /// One event: its level, its fields, its spans' (outermost first).
    #[derive(Debug, Clone)]
    pub struct Caught {
        pub level: tracing::Level,
        pub fields: Fields,
        pub spans: Vec<(&'static str, Fields)>,
    }

    impl Caught {
        /// The event's message.
        pub fn message(&self) -> &str {
            self.fields.0.get("message").map_or("", String::as_str)
        }

        /// A field of the event, else of its innermost span that has it.
        pub fn get(&self, name: &str) -> Option<&str> {
            self.fields.0.get(name).map(String::as_str).or_else(|| {
                self.spans
                    .iter()
                    .rev()
                    .find_map(|(_, f)| f.0.get(name).map(String::as_str))
            })
        }

        /// Whether it happened in a span called `name`.
        pub fn in_span(&self, name: &str) -> bool {
            self.spans.iter().any(|(n, _)| *n == name)
        }
    }

    struct Catcher(Arc<Mutex<Vec<Caught>>>);

    impl<S> Layer<S> for Catcher
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(fields);
            }
        }

        fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
            if let Some(span) = ctx.span(id)
                && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
            {
                values.record(fields);
            }
        }

        fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            let spans = ctx
                .event_scope(event)
                .map(|scope| {
                    scope
                        .from_root()
                        .map(|s| {
                            let f = s.extensions().get::<Fields>().cloned();
                            (s.name(), f.unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default();
            self.0.lock().unwrap().push(Caught {
                level: *event.metadata().level(),
                fields,
                spans,
            });
        }
    }

    /// Installs the catcher for the whole process (once) and returns what it caught.
    pub fn caught() -> Arc<Mutex<Vec<Caught>>> {
        static CAUGHT: OnceLock<Arc<Mutex<Vec<Caught>>>> = OnceLock::new();
        Arc::clone(CAUGHT.get_or_init(|| {
            let caught = Arc::default();
            let subscriber = tracing_subscriber::registry()
                .with(Catcher(Arc::clone(&caught)).with_filter(LevelFilter::DEBUG));
            tracing::subscriber::set_global_default(subscriber).unwrap();
            caught
        }))
    }

    /// Waits for an event matching `pred`.
    pub fn wait_for(pred: impl Fn(&Caught) -> bool) -> Caught {
        let caught = caught();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(c) = caught.lock().unwrap().iter().find(|c| pred(c)) {
                return c.clone();
            }
            assert!(Instant::now() < deadline, "no such event was logged");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn tracing_events_of_a_refused_handshake_and_of_reconnects_carry_their_fields() {
    with_watchdog(Duration::from_secs(90), || {
        catch::caught();
        for net in BOTH {
            let transport = net.name();
            // A client of a protocol the server does not serve: refused in the handshake.
            let srv = server(net, localhost(), "Echo");
            let wrong = format!("Nope{transport}");
            let client = net
                .client(vec![srv.local_addr()], client_config(&wrong))
                .unwrap();
            client.wake_up();
            let peer = srv.local_addr().to_string();
            let ev = catch::wait_for(|c| {
                c.message() == "handshake failed" && c.get("protocol") == Some(&wrong)
            });
            eprintln!("{ev:?}");
            assert_eq!(ev.level, tracing::Level::WARN);
            assert!(ev.in_span("net_client") && ev.in_span("net_conn"), "{ev:?}");
            assert_eq!(ev.get("side"), Some("client"));
            assert_eq!(ev.get("transport"), Some(transport));
            assert_eq!(ev.get("peer"), Some(peer.as_str()));
            assert!(ev.get("conn").is_some_and(|c| c.parse::<u64>().is_ok()));
            let reason = ev.get("reason").unwrap();
            assert!(reason.contains("refused"), "{reason}");
            // The server logged its side in its connection's span.
            let ev = catch::wait_for(|c| {
                c.message() == "handshake failed"
                    && c.get("side") == Some("server")
                    && c.get("reason").is_some_and(|r| r.contains(&wrong))
            });
            assert!(ev.in_span("net_server"), "{ev:?}");
            assert_eq!(ev.get("transport"), Some(transport));
            assert!(
                ev.get("peer").is_some() && ev.get("conn").is_some(),
                "{ev:?}"
            );
            assert_eq!(srv.stats().handshakes_failed, 1);
            assert_eq!(client.stats().handshakes_failed, 1);
            drop(client);

            // A client of a port nothing answers on, with a message waiting: it retries.
            let gone = format!("Gone{transport}");
            let addr = free_port();
            let client = net.client(vec![addr], client_config(&gone)).unwrap();
            let out = Outgoing::new(ECHO.id, Kind::OneWay);
            send_objects(&client.sender(), &out, &[(0, b"later")], Duration::ZERO).unwrap();
            let ours = |c: &catch::Caught| c.get("protocol") == Some(&gone);
            let failed = catch::wait_for(|c| ours(c) && c.message() == "connect failed");
            assert_eq!(failed.level, tracing::Level::WARN);
            assert!(
                failed.get("error").is_some_and(|e| !e.is_empty()),
                "{failed:?}"
            );
            assert_eq!(failed.get("peer"), Some(addr.to_string().as_str()));
            let backoff = catch::wait_for(|c| ours(c) && c.message() == "reconnect backoff");
            assert!(backoff.in_span("net_client"), "{backoff:?}");
            assert!(
                backoff
                    .get("failures")
                    .is_some_and(|f| f.parse::<u32>().unwrap() >= 1)
            );
            assert!(
                backoff
                    .get("backoff_ms")
                    .is_some_and(|b| b.parse::<u64>().is_ok())
            );
            let again = catch::wait_for(|c| ours(c) && c.message() == "reconnecting");
            assert_eq!(again.level, tracing::Level::INFO);
            assert!(
                again
                    .get("attempt")
                    .is_some_and(|a| a.parse::<u32>().unwrap() >= 1)
            );
            assert_eq!(again.get("transport"), Some(transport));
            assert!(client.stats().reconnects >= 1);
            // Nothing per message above debug.
            let noisy: Vec<_> = catch::caught()
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.level <= tracing::Level::INFO && c.message().contains("message"))
                .cloned()
                .collect();
            assert!(noisy.is_empty(), "{noisy:?}");
        }
    });
}
