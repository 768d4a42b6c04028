//! The sans-io core driven in memory with a simulated clock (quinn-proto's `Pair`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::conn::{
    CancelOutcome, ConnConfig, ConnError, ConnEvent, Connection, Delivery, OutMessage,
};
use super::frame::{self, CloseCode, FrameError, FrameHeader, ProtocolSpec, data_flags, kind};
use super::pool::{Canceled, ConnId, Failure, Pool, PoolAction, PoolConfig, PoolEvent};
use shm_layout::{Kind, MessageHeader, MessageView, MessageWriter, message_len};

/// A message with one object of `len` bytes (a pattern derived from `seed`).
pub(crate) fn message(id: u64, kind: Kind, request_id: u64, len: usize, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    let total = message_len([len as u64]).unwrap() as usize;
    let mut buf = vec![0u8; total];
    let mut w = MessageWriter::new(&mut buf, MessageHeader::new(id, kind, 1, request_id)).unwrap();
    w.push_object(0, &data).unwrap();
    w.finish().unwrap();
    buf
}

fn protocols() -> Vec<ProtocolSpec> {
    vec![ProtocolSpec::new("Echo", 2)]
}

fn config() -> ConnConfig {
    ConnConfig {
        keepalive_interval: Duration::from_millis(100),
        inactivity_timeout: Duration::from_millis(500),
        max_keepalives: 10,
        keepalive_window: Duration::from_secs(1),
        ..ConnConfig::default()
    }
}

/// A client and a server connection wired together in memory.
struct Pair {
    now: Instant,
    client: Connection,
    server: Connection,
    /// Every frame type the client sent, in order.
    client_frames: Vec<(u8, u8, u32)>,
}

impl Pair {
    fn new(client: ConnConfig, server: ConnConfig) -> Self {
        let now = Instant::now();
        Pair {
            now,
            client: Connection::client(now, client, 1, protocols()),
            server: Connection::server(now, server, 2, vec![ProtocolSpec::new("Echo", 3)]),
            client_frames: Vec::new(),
        }
    }

    /// Moves bytes both ways until neither side has anything to send.
    fn drive(&mut self) {
        loop {
            let mut moved = false;
            let mut buf = Vec::new();
            while self.client.poll_transmit(self.now, &mut buf) {
                moved = true;
            }
            self.record_frames(&buf);
            self.server.handle_data(self.now, &buf);
            buf.clear();
            while self.server.poll_transmit(self.now, &mut buf) {
                moved = true;
            }
            self.client.handle_data(self.now, &buf);
            if !moved {
                break;
            }
        }
    }

    /// Notes the frames in client bytes, once the handshake is past.
    fn record_frames(&mut self, mut buf: &[u8]) {
        if self.client_frames.is_empty() && buf.len() >= 8 && buf[..8] == frame::MAGIC {
            let (_, used) = frame::split_record(buf).unwrap().unwrap();
            buf = &buf[used..];
            self.client_frames.push((0, 0, 0));
        }
        while let Ok(Some(h)) = FrameHeader::decode(buf, frame::MAX_BUFFER) {
            self.client_frames.push((h.kind, h.flags, h.stream));
            buf = &buf[frame::FRAME_HEADER + h.payload as usize..];
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.drive();
    }

    fn events(c: &mut Connection) -> Vec<ConnEvent> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }
}

fn messages(events: &[ConnEvent]) -> Vec<&Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            ConnEvent::Message { bytes, .. } => Some(bytes),
            _ => None,
        })
        .collect()
}

fn closed(events: &[ConnEvent]) -> Option<&ConnError> {
    events.iter().find_map(|e| match e {
        ConnEvent::Closed(e) => Some(e),
        _ => None,
    })
}

#[test]
fn handshake_settles_buffer_size_versions_and_instances() {
    let mut p = Pair::new(
        ConnConfig {
            buffer_size: 16 * 1024,
            ..config()
        },
        ConnConfig {
            buffer_size: 8 * 1024,
            ..config()
        },
    );
    p.drive();
    let peer = p.client.peer().unwrap().clone();
    assert_eq!(peer.instance, 2);
    assert_eq!(peer.buffer_size, 8 * 1024);
    assert_eq!(peer.protocols[0].1, 2, "newest version both speak");
    assert_eq!(p.server.peer().unwrap().instance, 1);
    assert!(p.server.peer().unwrap().buffer_size == 8 * 1024);
}

#[test]
fn handshake_without_a_common_protocol_is_refused() {
    let now = Instant::now();
    let mut c = Connection::client(now, config(), 1, vec![ProtocolSpec::new("Other", 1)]);
    let mut s = Connection::server(now, config(), 2, protocols());
    let mut buf = Vec::new();
    while c.poll_transmit(now, &mut buf) {}
    s.handle_data(now, &buf);
    buf.clear();
    while s.poll_transmit(now, &mut buf) {}
    c.handle_data(now, &buf);
    assert!(matches!(
        closed(&Pair::events(&mut s)),
        Some(ConnError::Refused(_))
    ));
    assert!(matches!(
        closed(&Pair::events(&mut c)),
        Some(ConnError::Refused(_))
    ));
}

#[test]
fn messages_of_every_size_arrive_intact() {
    let mut p = Pair::new(config(), config());
    let sizes = [0usize, 1, 7, 100, 4000, 4016, 4096, 10_000, 100_000];
    for (i, &n) in sizes.iter().enumerate() {
        let m = message(i as u64, Kind::OneWay, 0, n, i as u8);
        p.client
            .send(OutMessage::from_bytes(i as u64, m, Delivery::Default));
    }
    p.drive();
    let ev = Pair::events(&mut p.server);
    let got = messages(&ev);
    assert_eq!(got.len(), sizes.len());
    for (i, &n) in sizes.iter().enumerate() {
        let want = message(i as u64, Kind::OneWay, 0, n, i as u8);
        assert!(got.iter().any(|g| **g == want), "message {i} of {n} bytes");
    }
    for g in got {
        MessageView::parse(g).unwrap();
    }
}

#[test]
fn a_small_message_overtakes_a_huge_one() {
    let mut p = Pair::new(config(), config());
    p.drive();
    let big = message(1, Kind::OneWay, 0, 1 << 20, 1);
    let small = message(2, Kind::OneWay, 0, 10, 2);
    p.client
        .send(OutMessage::from_bytes(1, big, Delivery::Default));
    p.client
        .send(OutMessage::from_bytes(2, small, Delivery::Default));
    p.drive();
    let ev = Pair::events(&mut p.server);
    let got = messages(&ev);
    assert_eq!(got.len(), 2);
    let first = MessageView::parse(got[0]).unwrap();
    assert_eq!(
        first.header().message_id,
        2,
        "the small message completes first"
    );
}

#[test]
fn in_order_delivery_holds_a_small_message_until_the_huge_one_before_it() {
    // The interleaving is the same (the sender's window), but the receiver delivers in
    // the order the messages were started, skipping aborted streams.
    let server = ConnConfig {
        in_order: true,
        ..config()
    };
    let mut p = Pair::new(config(), server);
    p.drive();
    let big = message(1, Kind::OneWay, 0, 1 << 20, 1);
    let small = message(2, Kind::OneWay, 0, 10, 2);
    p.client
        .send(OutMessage::from_bytes(1, big, Delivery::Default));
    p.client
        .send(OutMessage::from_bytes(2, small, Delivery::Default));
    // A source that fails before its first frame still uses its stream id: it is
    // aborted, never waited for.
    struct Broken;
    impl super::conn::MessageSource for Broken {
        fn len(&self) -> u64 {
            100
        }
        fn read(&mut self, _buf: &mut [u8]) -> Result<usize, String> {
            Err("broken".into())
        }
        fn rewind(&mut self) -> bool {
            false
        }
    }
    p.client.send(OutMessage {
        token: 3,
        protocol: 0,
        source: Box::new(Broken),
        delivery: Delivery::Default,
        request_id: None,
        streamed: false,
    });
    let tail = message(4, Kind::OneWay, 0, 10, 4);
    p.client
        .send(OutMessage::from_bytes(4, tail, Delivery::Default));
    p.drive();
    let ev = Pair::events(&mut p.server);
    let ids: Vec<u64> = messages(&ev)
        .iter()
        .map(|b| MessageView::parse(b).unwrap().header().message_id)
        .collect();
    assert_eq!(ids, vec![1, 2, 4]);
}

#[test]
fn ordered_messages_go_one_after_another() {
    let mut p = Pair::new(config(), config());
    p.drive();
    p.client_frames.clear();
    for i in 0..3u64 {
        let m = message(i, Kind::OneWay, 0, 20_000, i as u8);
        p.client
            .send(OutMessage::from_bytes(i, m, Delivery::Ordered));
    }
    p.drive();
    // With interleaving, frames of different streams would alternate; ordered streams
    // must appear as contiguous runs, in order.
    let streams: Vec<u32> = p
        .client_frames
        .iter()
        .filter(|(k, _, _)| *k == kind::DATA)
        .map(|(_, _, s)| *s)
        .collect();
    let mut runs = streams.clone();
    runs.dedup();
    assert_eq!(runs.len(), 3, "three contiguous runs: {streams:?}");
    assert!(runs.windows(2).all(|w| w[0] < w[1]));
    let ev = Pair::events(&mut p.server);
    let ids: Vec<u64> = messages(&ev)
        .iter()
        .map(|b| MessageView::parse(b).unwrap().header().message_id)
        .collect();
    assert_eq!(ids, vec![0, 1, 2]);
}

#[test]
fn replies_are_matched_and_keepalives_flow_while_one_is_pending() {
    let mut p = Pair::new(config(), config());
    p.drive();
    let req = message(5, Kind::Request, 42, 100, 0);
    p.client
        .send(OutMessage::from_bytes(42, req, Delivery::Default));
    p.drive();
    assert_eq!(p.client.awaiting(), 1);
    p.client_frames.clear();
    // The server takes long to answer: the client keeps the connection alive, and the
    // server, which hears keep-alives, does not time it out.
    for _ in 0..20 {
        p.advance(Duration::from_millis(100));
    }
    let keepalives = p
        .client_frames
        .iter()
        .filter(|(k, _, _)| *k == kind::KEEPALIVE)
        .count();
    assert!(keepalives >= 10, "{keepalives} keep-alives");
    assert!(closed(&Pair::events(&mut p.server)).is_none());
    let reply = message(5, Kind::Reply, 42, 10, 0);
    p.server
        .send(OutMessage::from_bytes(1, reply, Delivery::Default));
    p.drive();
    assert_eq!(p.client.awaiting(), 0);
    // Nothing pending: no more keep-alives, and the idle server times the client out.
    p.client_frames.clear();
    p.advance(Duration::from_millis(600));
    assert!(
        p.client_frames
            .iter()
            .all(|(k, _, _)| *k != kind::KEEPALIVE)
    );
    assert_eq!(
        closed(&Pair::events(&mut p.server)),
        Some(&ConnError::InactivityTimeout)
    );
    let client = Pair::events(&mut p.client);
    assert!(matches!(
        closed(&client),
        Some(ConnError::ClosedByPeer {
            code: CloseCode::InactivityTimeout,
            ..
        })
    ));
}

#[test]
fn a_keepalive_flood_closes_the_connection() {
    let mut p = Pair::new(
        ConnConfig {
            keepalive_interval: Duration::from_millis(1),
            keepalive_idle: true,
            ..config()
        },
        ConnConfig {
            max_keepalives: 5,
            ..config()
        },
    );
    p.drive();
    for _ in 0..10 {
        p.advance(Duration::from_millis(2));
    }
    assert_eq!(
        closed(&Pair::events(&mut p.server)),
        Some(&ConnError::TooManyKeepalives)
    );
    assert!(matches!(
        closed(&Pair::events(&mut p.client)),
        Some(ConnError::ClosedByPeer {
            code: CloseCode::TooManyKeepalives,
            ..
        })
    ));
}

#[test]
fn a_silent_server_closes_a_client_waiting_for_a_reply() {
    let mut p = Pair::new(config(), config());
    p.drive();
    p.client.send(OutMessage::from_bytes(
        1,
        message(1, Kind::Request, 1, 1, 0),
        Delivery::Default,
    ));
    p.drive();
    // The server's bytes stop arriving (its host froze): only the client's clock moves.
    p.now += Duration::from_millis(600);
    p.client.handle_timeout(p.now);
    assert_eq!(
        closed(&Pair::events(&mut p.client)),
        Some(&ConnError::InactivityTimeout)
    );
}

/// A server connection past its handshake, and the client frames' buffer size.
fn open_server() -> (Instant, Connection) {
    let mut p = Pair::new(config(), config());
    p.drive();
    Pair::events(&mut p.server);
    (p.now, p.server)
}

fn data_frame(flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    FrameHeader {
        kind: kind::DATA,
        flags,
        protocol: 0,
        stream,
        payload: payload.len() as u32,
        raw: payload.len() as u32,
    }
    .encode(&mut f);
    f.extend_from_slice(payload);
    f
}

#[test]
fn hostile_frames_close_the_connection_with_an_error() {
    let msg = message(1, Kind::OneWay, 0, 100, 0);
    let mut huge = message(1, Kind::OneWay, 0, 100, 0);
    huge[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let mut bad_padding = msg.clone();
    let end = bad_padding.len() - 1;
    bad_padding[end] = 0; // still valid? the pattern may end in 0: force a mismatch below
    let mut lying_count = msg.clone();
    lying_count[32..40].copy_from_slice(&5u64.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown type", {
            let mut f = data_frame(data_flags::FIRST | data_flags::LAST, 1, &msg);
            f[0] = 77;
            f
        }),
        ("oversized frame", {
            let mut f = data_frame(0, 1, &[]);
            f[8..12].copy_from_slice(&70_000u32.to_le_bytes());
            f[12..16].copy_from_slice(&70_000u32.to_le_bytes());
            f
        }),
        (
            "oversized message",
            data_frame(data_flags::FIRST, 1, &huge[..100]),
        ),
        (
            "truncated first frame",
            data_frame(data_flags::FIRST, 1, &msg[..20]),
        ),
        (
            "unknown stream",
            data_frame(data_flags::LAST, 9, &msg[..20]),
        ),
        (
            "last too early",
            data_frame(data_flags::FIRST | data_flags::LAST, 1, &msg[..60]),
        ),
        ("too long", {
            let mut m = msg.clone();
            m.extend_from_slice(&[0; 8]);
            data_frame(data_flags::FIRST | data_flags::LAST, 1, &m)
        }),
        (
            "object count lies",
            data_frame(data_flags::FIRST | data_flags::LAST, 1, &lying_count),
        ),
        ("unknown protocol", {
            let mut f = data_frame(data_flags::FIRST | data_flags::LAST, 1, &msg);
            f[2] = 3;
            f
        }),
        ("compressed without compression", {
            let mut f = data_frame(
                data_flags::FIRST | data_flags::LAST | data_flags::COMPRESSED,
                1,
                &msg,
            );
            f[12..16].copy_from_slice(&10u32.to_le_bytes());
            f
        }),
        ("keep-alive with a payload", {
            let mut f = Vec::new();
            let mut h = FrameHeader::control(kind::KEEPALIVE);
            h.payload = 4;
            h.encode(&mut f);
            f.extend_from_slice(&[1, 2, 3, 4]);
            f
        }),
        ("truncated close", {
            let mut f = Vec::new();
            let mut h = FrameHeader::control(kind::CLOSE);
            h.payload = 2;
            h.encode(&mut f);
            f.extend_from_slice(&[1, 2]);
            f
        }),
    ];
    for (name, bytes) in cases {
        let (now, mut s) = open_server();
        s.handle_data(now, &bytes);
        let ev = Pair::events(&mut s);
        match closed(&ev) {
            Some(ConnError::Frame(_)) => {}
            Some(ConnError::ClosedByPeer { .. }) if name == "truncated close" => {
                panic!("a truncated close was taken as a close")
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(messages(&ev).is_empty(), "{name}: delivered a message");
        // The peer is told why.
        let mut out = Vec::new();
        assert!(s.poll_transmit(now, &mut out), "{name}: no close frame");
        assert_eq!(out[0], kind::CLOSE);
    }
}

#[test]
fn a_stranger_is_rejected_at_the_handshake() {
    let now = Instant::now();
    let mut s = Connection::server(now, config(), 2, protocols());
    s.handle_data(now, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        closed(&Pair::events(&mut s)),
        Some(&ConnError::Frame(FrameError::BadMagic))
    );
}

#[test]
fn random_bytes_never_panic() {
    // A cheap deterministic fuzz: random frames after a good handshake, split at random.
    let mut rng = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let msg = message(1, Kind::OneWay, 0, 300, 0);
    for _ in 0..300 {
        let (now, mut s) = open_server();
        let mut bytes = data_frame(data_flags::FIRST | data_flags::LAST, 1, &msg);
        for _ in 0..(next() % 8) {
            let at = (next() as usize) % bytes.len();
            bytes[at] = next() as u8;
        }
        let cut = (next() as usize) % (bytes.len() + 1);
        s.handle_data(now, &bytes[..cut]);
        s.handle_data(now, &bytes[cut..]);
        let ev = Pair::events(&mut s);
        for m in messages(&ev) {
            MessageView::parse(m).expect("only valid messages are delivered");
        }
    }
}

#[test]
fn cancel_drops_only_what_has_not_started() {
    let mut p = Pair::new(config(), config());
    p.drive();
    p.client.send(OutMessage::from_bytes(
        1,
        message(1, Kind::Request, 1, 10, 0),
        Delivery::Default,
    ));
    p.drive();
    p.client.send(OutMessage::from_bytes(
        2,
        message(2, Kind::Request, 2, 10, 0),
        Delivery::Default,
    ));
    assert!(matches!(p.client.cancel(2), CancelOutcome::Canceled(_)));
    assert!(matches!(p.client.cancel(1), CancelOutcome::NotCancelable));
    assert!(matches!(p.client.cancel(3), CancelOutcome::Unknown));
}

/// A pool whose connections reach in-memory servers (one instance id per "server run").
struct PoolPair {
    now: Instant,
    pool: Pool<u32>,
    servers: HashMap<ConnId, Connection>,
    server_instance: u128,
    /// Whether connects succeed.
    up: bool,
    connects: Vec<u32>,
    events: Vec<PoolEvent>,
    /// The server echoes requests as replies.
    echo: bool,
}

impl PoolPair {
    fn new(config: PoolConfig, addrs: Vec<u32>) -> Self {
        PoolPair {
            now: Instant::now(),
            pool: Pool::new(config, self::config(), 1, protocols(), addrs),
            servers: HashMap::new(),
            server_instance: 100,
            up: true,
            connects: Vec::new(),
            events: Vec::new(),
            echo: true,
        }
    }

    /// Runs actions and moves bytes until quiet; connects complete at once (`up`) or fail.
    fn drive(&mut self) {
        loop {
            let mut moved = false;
            while let Some(PoolAction::Connect { conn, addr }) = self.pool.poll_action(self.now) {
                moved = true;
                self.connects.push(addr);
                if self.up {
                    self.pool.handle_connected(self.now, conn);
                    let s =
                        Connection::server(self.now, config(), self.server_instance, protocols());
                    self.servers.insert(conn, s);
                } else {
                    self.pool
                        .handle_connect_failed(self.now, conn, "refused".into());
                }
            }
            let ids: Vec<ConnId> = self.servers.keys().copied().collect();
            for id in ids {
                let mut buf = Vec::new();
                if let Some(c) = self.pool.connection(id) {
                    while c.poll_transmit(self.now, &mut buf) {}
                }
                let Some(s) = self.servers.get_mut(&id) else {
                    continue;
                };
                moved |= !buf.is_empty();
                s.handle_data(self.now, &buf);
                while let Some(ev) = s.poll_event() {
                    if let ConnEvent::Message { bytes, .. } = ev {
                        let h = MessageView::parse(&bytes).unwrap().header().to_owned();
                        if self.echo && h.kind() == Some(Kind::Request) {
                            let reply = message(h.message_id, Kind::Reply, h.request_id, 8, 0);
                            s.send(OutMessage::from_bytes(0, reply, Delivery::Default));
                        }
                    }
                }
                buf.clear();
                while s.poll_transmit(self.now, &mut buf) {}
                moved |= !buf.is_empty();
                if let Some(c) = self.pool.connection(id) {
                    c.handle_data(self.now, &buf);
                    if c.is_closed() {
                        // The socket goes once the close is flushed.
                    }
                }
            }
            self.pool.process();
            while let Some(e) = self.pool.poll_event() {
                moved = true;
                self.events.push(e);
            }
            if !moved {
                break;
            }
        }
    }

    /// Kills the server side of every connection (the server process died).
    fn kill_servers(&mut self) {
        for (id, _) in self.servers.drain() {
            if let Some(c) = self.pool.connection(id) {
                c.handle_eof();
            }
            self.pool.process();
            self.pool.remove(id);
        }
        while let Some(e) = self.pool.poll_event() {
            self.events.push(e);
        }
    }

    /// Lets `d` pass, stopping at every deadline the pool asks for.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        self.drive();
        while let Some(t) = self.pool.poll_timeout().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.pool.handle_timeout(self.now);
            self.drive();
        }
        self.now = end;
        self.pool.handle_timeout(self.now);
        self.drive();
    }

    fn failures(&self) -> Vec<(u64, Failure)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                PoolEvent::Failed { token, failure, .. } => Some((*token, failure.clone())),
                _ => None,
            })
            .collect()
    }

    fn replies(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, PoolEvent::Message { .. }))
            .count()
    }

    fn request(&mut self, id: u64, len: usize, delivery: Delivery) -> Result<(), Failure> {
        let m = message(7, Kind::Request, id, len, id as u8);
        self.pool
            .send(OutMessage::from_bytes(id, m, delivery))
            .map_err(|(f, _)| f)
    }
}

#[test]
fn pool_limits_pending_connects_and_grows_with_the_queue() {
    let config = PoolConfig {
        max_connections: 4,
        max_pending_connects: 2,
        grow_threshold: 2,
        per_connection: 1,
        ..PoolConfig::default()
    };
    let mut p = PoolPair::new(config, (0..100).collect());
    // Connects hang (never reported): at most two are in progress.
    for i in 1..=20 {
        p.request(i, 10, Delivery::Default).unwrap();
    }
    let mut pending = Vec::new();
    while let Some(a) = p.pool.poll_action(p.now) {
        pending.push(a);
    }
    assert_eq!(pending.len(), 2, "pending connects are limited");
    // They complete: the queue is long, so the pool grows to its maximum, not beyond.
    for PoolAction::Connect { conn, .. } in pending {
        p.pool.handle_connected(p.now, conn);
        p.servers.insert(
            conn,
            Connection::server(p.now, config_for_server(), 100, protocols()),
        );
    }
    p.drive();
    assert_eq!(p.pool.open_connections(), 4);
    assert_eq!(p.replies(), 20);
    assert_eq!(p.connects, vec![2, 3], "addresses taken in turn");
}

fn config_for_server() -> ConnConfig {
    config()
}

#[test]
fn pool_backs_off_with_jitter_and_recovers() {
    let config = PoolConfig {
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        ..PoolConfig::default()
    };
    let mut p = PoolPair::new(config, vec![1]);
    p.up = false;
    p.request(1, 10, Delivery::Default).unwrap();
    p.drive();
    assert_eq!(p.connects.len(), 1);
    // Retries come further and further apart, never beyond the maximum (plus jitter).
    let mut times = vec![p.now];
    let start = p.now;
    while p.connects.len() < 8 {
        let next = p.pool.poll_timeout().expect("a retry is scheduled");
        assert!(next > p.now);
        let before = p.connects.len();
        p.now = next;
        p.pool.handle_timeout(p.now);
        p.drive();
        if p.connects.len() > before {
            times.push(p.now);
        }
    }
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_secs(2)),
        "{gaps:?}"
    );
    assert!(gaps[0] >= Duration::from_millis(50) && gaps[0] <= Duration::from_millis(100));
    assert!(gaps[5] >= Duration::from_secs(1), "{gaps:?}");
    assert!(p.now - start < Duration::from_secs(20));
    // The server comes up: the message is delivered, the backoff is reset.
    p.up = true;
    let next = p.pool.poll_timeout().unwrap();
    p.now = next;
    p.pool.handle_timeout(p.now);
    p.drive();
    assert_eq!(p.replies(), 1);
    assert!(p.failures().is_empty());
}

#[test]
fn one_shot_fails_without_a_connection() {
    let mut p = PoolPair::new(PoolConfig::default(), vec![1]);
    assert_eq!(
        p.request(1, 10, Delivery::OneShot),
        Err(Failure::NotConnected)
    );
    p.request(2, 10, Delivery::Default).unwrap();
    p.drive();
    assert_eq!(p.replies(), 1);
    assert_eq!(p.request(3, 10, Delivery::OneShot), Ok(()));
    p.drive();
    assert_eq!(p.replies(), 2);
}

#[test]
fn queued_messages_cancel_and_sent_ones_do_not() {
    let mut p = PoolPair::new(PoolConfig::default(), vec![1]);
    p.up = false;
    p.request(1, 10, Delivery::Default).unwrap();
    p.drive();
    assert_eq!(p.pool.cancel(1), Canceled::Dropped);
    p.drive();
    assert_eq!(p.failures(), vec![(1, Failure::Canceled)]);
    p.up = true;
    p.echo = false;
    p.request(2, 10, Delivery::Default).unwrap();
    p.advance(Duration::from_secs(1));
    assert_eq!(
        p.pool.cancel(2),
        Canceled::NotCancelable,
        "awaiting its reply"
    );
    assert_eq!(p.pool.cancel(99), Canceled::Unknown);
}

#[test]
fn a_restarted_peer_fails_awaited_calls_and_idempotent_ones_are_resent() {
    let mut p = PoolPair::new(PoolConfig::default(), vec![1]);
    p.echo = false;
    p.request(1, 10, Delivery::Default).unwrap();
    p.request(2, 10, Delivery::Idempotent).unwrap();
    p.drive();
    assert_eq!(p.pool.connection(1).unwrap().awaiting(), 2);
    p.kill_servers();
    assert!(p.failures().is_empty(), "decided at the next handshake");
    p.server_instance = 200;
    p.echo = true;
    p.advance(Duration::from_secs(1));
    assert_eq!(p.failures(), vec![(1, Failure::PeerRestarted)]);
    assert_eq!(
        p.replies(),
        1,
        "the idempotent call was resent and answered"
    );
}

/// Regression (found by the network crash trials): a one-shot call awaiting its reply when
/// the connection dropped waited for the next handshake (forever, with the server gone)
/// instead of failing at once.
#[test]
fn a_one_shot_call_awaiting_its_reply_fails_when_the_connection_drops() {
    let mut p = PoolPair::new(PoolConfig::default(), vec![1]);
    p.request(3, 10, Delivery::Default).unwrap();
    p.drive();
    assert_eq!(p.replies(), 1, "connected");
    p.echo = false;
    p.request(1, 10, Delivery::OneShot).unwrap();
    p.request(2, 10, Delivery::Default).unwrap();
    p.drive();
    assert_eq!(p.pool.connection(1).unwrap().awaiting(), 2);
    p.up = false;
    p.kill_servers();
    assert!(
        matches!(p.failures()[..], [(1, Failure::ConnectionLost(_))]),
        "{:?}",
        p.failures()
    );
    p.advance(Duration::from_secs(1));
    assert_eq!(
        p.failures().len(),
        1,
        "the default call waits for a handshake"
    );
}

#[test]
fn the_same_peer_back_means_the_reply_was_lost() {
    let mut p = PoolPair::new(PoolConfig::default(), vec![1]);
    p.echo = false;
    p.request(1, 10, Delivery::Default).unwrap();
    p.drive();
    p.kill_servers();
    p.echo = true;
    p.request(2, 10, Delivery::Default).unwrap();
    p.advance(Duration::from_secs(1));
    assert!(matches!(
        p.failures()[..],
        [(1, Failure::ConnectionLost(_))]
    ));
    assert_eq!(p.replies(), 1);
}

#[test]
fn a_message_cut_mid_way_fails_unless_idempotent() {
    let mut p = PoolPair::new(PoolConfig::default(), vec![1]);
    p.drive();
    p.request(1, 10, Delivery::Default).unwrap();
    p.drive();
    p.request(2, 100_000, Delivery::Default).unwrap();
    p.request(3, 100_000, Delivery::Idempotent).unwrap();
    // One frame of each goes out, then the server dies.
    let mut buf = Vec::new();
    let c = p.pool.connection(1).unwrap();
    assert!(c.poll_transmit(p.now, &mut buf));
    assert!(c.poll_transmit(p.now, &mut buf));
    p.kill_servers();
    p.advance(Duration::from_secs(1));
    assert!(
        matches!(p.failures()[..], [(2, Failure::ConnectionLost(_))]),
        "{:?}",
        p.failures()
    );
    assert_eq!(
        p.replies(),
        2,
        "the first call's reply and the resent idempotent one"
    );
}

#[test]
fn force_close_fails_everything_and_delayed_close_finishes_first() {
    let mut p = PoolPair::new(PoolConfig::default(), vec![1]);
    p.echo = false;
    for i in 1..=5 {
        p.request(i, 10, Delivery::Default).unwrap();
    }
    p.drive();
    p.pool.close(true);
    p.drive();
    let f = p.failures();
    assert_eq!(f.len(), 5);
    assert!(f.iter().all(|(_, f)| *f == Failure::PoolClosed));
    assert!(p.pool.is_closed());
    assert_eq!(p.request(9, 1, Delivery::Default), Err(Failure::PoolClosed));

    let mut p = PoolPair::new(PoolConfig::default(), vec![1]);
    for i in 1..=5 {
        p.request(i, 10_000, Delivery::Default).unwrap();
    }
    p.pool.close(false);
    assert_eq!(p.request(9, 1, Delivery::Default), Err(Failure::PoolClosed));
    assert!(!p.pool.is_closed());
    p.drive();
    assert_eq!(p.replies(), 5);
    assert!(p.failures().is_empty());
    assert!(p.pool.is_closed());
}

#[test]
fn compression_is_negotiated_and_skipped_where_it_does_not_shrink() {
    use super::compress::{Compressor, Lz4, Snappy};
    use std::sync::Arc;
    let both: Vec<Arc<dyn Compressor>> = vec![Arc::new(Snappy), Arc::new(Lz4)];
    let lz4_only: Vec<Arc<dyn Compressor>> = vec![Arc::new(Lz4)];
    let mut p = Pair::new(
        ConnConfig {
            compression: both,
            ..config()
        },
        ConnConfig {
            compression: lz4_only,
            ..config()
        },
    );
    p.drive();
    assert_eq!(
        p.client.peer().unwrap().compression,
        2 - 1,
        "the one both have: lz4"
    );
    p.client_frames.clear();
    let text: Vec<u8> = b"compressible text, compressible text; "
        .iter()
        .copied()
        .cycle()
        .take(50_000)
        .collect();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<u8> = (0..50_000)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng as u8
        })
        .collect();
    let build = |id: u64, data: &[u8]| {
        let mut buf = vec![0u8; message_len([data.len() as u64]).unwrap() as usize];
        let mut w =
            MessageWriter::new(&mut buf, MessageHeader::new(id, Kind::OneWay, 1, 0)).unwrap();
        w.push_object(0, data).unwrap();
        w.finish().unwrap();
        buf
    };
    p.client.send(OutMessage::from_bytes(
        1,
        build(1, &text),
        Delivery::Ordered,
    ));
    p.client.send(OutMessage::from_bytes(
        2,
        build(2, &noise),
        Delivery::Ordered,
    ));
    p.drive();
    let ev = Pair::events(&mut p.server);
    let got = messages(&ev);
    assert_eq!(got.len(), 2);
    assert_eq!(
        MessageView::parse(got[0]).unwrap().object(0).unwrap(),
        &text[..]
    );
    assert_eq!(
        MessageView::parse(got[1]).unwrap().object(0).unwrap(),
        &noise[..]
    );
    let frames: Vec<(u8, u32)> = p
        .client_frames
        .iter()
        .filter(|(k, _, _)| *k == kind::DATA)
        .map(|(_, f, s)| (*f, *s))
        .collect();
    let compressed = |stream: u32| {
        frames
            .iter()
            .filter(|(f, s)| *s == stream && f & data_flags::FIRST == 0)
            .map(|(f, _)| f & data_flags::COMPRESSED != 0)
            .collect::<Vec<_>>()
    };
    assert!(
        compressed(1).iter().all(|c| *c),
        "text frames are compressed"
    );
    assert!(
        compressed(2).iter().all(|c| !*c),
        "noise frames go out as they are"
    );
    let stats = p.client.stats();
    assert!(stats.wire_bytes_sent < stats.raw_bytes_sent);
}

// ---------------------------------------------------------------------------------------
// Streamed messages and flow control.

/// A streamed one-way message of one object of `len` bytes (`message`'s pattern).
fn streamed(token: u64, len: usize, seed: u8) -> OutMessage {
    let mut m = OutMessage::from_bytes(
        token,
        message(token, Kind::OneWay, 0, len, seed),
        Delivery::Default,
    );
    m.streamed = true;
    m
}

/// A server configuration that takes streamed messages, with a small window.
fn streaming_server(window: u32) -> ConnConfig {
    ConnConfig {
        max_streamed: u64::MAX,
        stream_window: window,
        ..config()
    }
}

/// What a streamed message's consumer saw.
#[derive(Default, Debug)]
struct Consumed {
    started: Vec<(u32, u64, u64)>,
    data: HashMap<u32, Vec<u8>>,
    ended: Vec<u32>,
    aborted: Vec<u32>,
    messages: Vec<Vec<u8>>,
    /// Data delivered and not yet reported consumed, per stream.
    unconsumed: HashMap<u32, u64>,
}

impl Consumed {
    fn take(&mut self, c: &mut Connection) {
        while let Some(e) = c.poll_event() {
            match e {
                ConnEvent::StreamStarted {
                    stream,
                    object_id,
                    len,
                    header,
                    ..
                } => {
                    assert_eq!(header.object_count, 1);
                    self.started.push((stream, object_id, len));
                }
                ConnEvent::StreamData { stream, bytes } => {
                    *self.unconsumed.entry(stream).or_default() += bytes.len() as u64;
                    self.data.entry(stream).or_default().extend(bytes);
                }
                ConnEvent::StreamEnded { stream } => self.ended.push(stream),
                ConnEvent::StreamAborted { stream, .. } => self.aborted.push(stream),
                ConnEvent::Message { bytes, .. } => self.messages.push(bytes),
                ConnEvent::Closed(e) => panic!("closed: {e}"),
                _ => {}
            }
        }
    }

    /// Reports everything delivered as consumed.
    fn consume_all(&mut self, c: &mut Connection) {
        for (stream, n) in self.unconsumed.drain() {
            c.stream_consumed(stream, n);
        }
    }
}

fn object_of(bytes: &[u8]) -> Vec<u8> {
    MessageView::parse(bytes)
        .unwrap()
        .objects()
        .next()
        .unwrap()
        .unwrap()
        .data
        .to_vec()
}

#[test]
fn a_slow_consumer_holds_back_its_stream_only() {
    let window = 64 * 1024;
    let mut p = Pair::new(config(), streaming_server(window));
    p.drive();
    let big_len = 4 << 20;
    p.client.send(streamed(1, big_len, 7));
    p.drive();
    let mut seen = Consumed::default();
    seen.take(&mut p.server);
    assert_eq!(seen.started.len(), 1);
    let (stream, object_id, len) = seen.started[0];
    assert_eq!((object_id, len), (0, big_len as u64));
    // Nothing consumed: the sender stopped at the window (the initial one, then the
    // grant made at the first frame), however long we drive.
    let held = seen.data[&stream].len();
    assert!(held as u64 <= u64::from(window) + u64::from(frame::INITIAL_WINDOW));
    assert!(held < big_len / 8, "{held} bytes arrived unconsumed");
    p.advance(Duration::from_millis(10));
    seen.take(&mut p.server);
    assert_eq!(seen.data[&stream].len(), held, "no byte beyond the window");
    // Small messages still flow while the big one is stalled.
    for i in 10..30u64 {
        let m = message(i, Kind::OneWay, 0, 3000, i as u8);
        p.client
            .send(OutMessage::from_bytes(i, m, Delivery::Default));
    }
    p.drive();
    seen.take(&mut p.server);
    assert_eq!(seen.messages.len(), 20, "small messages overtake the stall");
    // The consumer reads: the rest comes, a window at a time, in order.
    let mut rounds = 0;
    while seen.ended.is_empty() {
        let before = seen.data[&stream].len();
        seen.consume_all(&mut p.server);
        p.drive();
        seen.take(&mut p.server);
        let got = seen.data[&stream].len() - before;
        assert!(got > 0, "consuming opened the window");
        assert!(got as u64 <= u64::from(window), "{got} bytes in one round");
        rounds += 1;
    }
    assert!(rounds >= big_len / window as usize / 2, "{rounds} rounds");
    let want = object_of(&message(1, Kind::OneWay, 0, big_len, 7));
    assert!(seen.data[&stream] == want, "the object's bytes, in order");
    assert_eq!(seen.ended, vec![stream]);
}

#[test]
fn a_streamed_message_is_reassembled_where_streams_are_not_taken() {
    let no_streams = ConnConfig {
        max_streamed: 0,
        ..config()
    };
    let mut p = Pair::new(config(), no_streams);
    p.drive();
    p.client.send(streamed(1, 300_000, 3));
    p.drive();
    let mut seen = Consumed::default();
    seen.take(&mut p.server);
    assert!(seen.started.is_empty());
    assert_eq!(seen.messages, vec![message(1, Kind::OneWay, 0, 300_000, 3)]);
}

#[test]
fn a_stream_over_the_limit_or_dropped_by_its_consumer_is_refused_not_fatal() {
    let mut p = Pair::new(
        config(),
        ConnConfig {
            max_streamed: 100_000,
            ..streaming_server(32 * 1024)
        },
    );
    p.drive();
    // Over the receiver's limit: refused; the connection lives on.
    p.client.send(streamed(1, 200_000, 1));
    p.drive();
    let failed: Vec<_> = Pair::events(&mut p.client)
        .into_iter()
        .filter_map(|e| match e {
            ConnEvent::Failed { token, reason, .. } => Some((token, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, 1);
    assert!(failed[0].1.contains("refused"), "{}", failed[0].1);
    // Within the limit, then dropped by its consumer mid-way.
    p.client.send(streamed(2, 90_000, 2));
    p.drive();
    let mut seen = Consumed::default();
    seen.take(&mut p.server);
    let (stream, _, _) = seen.started[0];
    p.server.refuse_stream(stream);
    p.drive();
    assert!(
        Pair::events(&mut p.client)
            .iter()
            .any(|e| matches!(e, ConnEvent::Failed { token: 2, .. }))
    );
    // Both refused streams are forgotten: later messages pass, nothing closed.
    p.client.send(OutMessage::from_bytes(
        3,
        message(3, Kind::OneWay, 0, 10, 3),
        Delivery::Default,
    ));
    p.drive();
    seen.take(&mut p.server);
    assert_eq!(seen.messages.len(), 1);
    assert!(p.client.is_open() && p.server.is_open());
}

#[test]
fn a_stalled_stream_keeps_the_connection_alive() {
    let mut p = Pair::new(config(), streaming_server(16 * 1024));
    p.drive();
    p.client.send(streamed(1, 1 << 20, 1));
    p.drive();
    p.client_frames.clear();
    // No reply is awaited, but the stalled stream waits on the server: keep-alives go
    // out and the server, hearing them, does not time the client out.
    for _ in 0..20 {
        p.advance(Duration::from_millis(100));
    }
    assert!(
        p.client_frames
            .iter()
            .any(|(k, _, _)| *k == kind::KEEPALIVE)
    );
    let mut seen = Consumed::default();
    seen.take(&mut p.server);
    assert!(p.server.is_open());
}

#[test]
fn a_closed_connection_aborts_its_incoming_streams() {
    let mut p = Pair::new(config(), streaming_server(16 * 1024));
    p.drive();
    p.client.send(streamed(1, 1 << 20, 1));
    p.drive();
    p.client.close(ConnError::Local);
    p.drive();
    let ev = Pair::events(&mut p.server);
    assert!(
        ev.iter()
            .any(|e| matches!(e, ConnEvent::StreamAborted { .. }))
    );
}

/// A server past its handshake that takes streams, with a window of 1 KiB.
fn open_streaming_server() -> (Instant, Connection) {
    let mut p = Pair::new(config(), streaming_server(1024));
    p.drive();
    Pair::events(&mut p.server);
    (p.now, p.server)
}

/// The first `n` bytes of a streamed message of one object of `len` bytes.
fn streamed_head(len: usize, n: usize) -> Vec<u8> {
    let mut m = message(1, Kind::OneWay, 0, len, 5);
    m.truncate(n);
    m
}

#[test]
fn hostile_streams_and_grants_close_the_connection() {
    let frame_room = frame::DEFAULT_BUFFER as usize - frame::FRAME_HEADER;
    let first = streamed_head(1 << 20, frame_room);
    let stream_first = data_flags::FIRST | data_flags::STREAM;
    let mut two_objects = streamed_head(1 << 20, frame_room);
    two_objects[32..40].copy_from_slice(&2u64.to_le_bytes());
    let mut short_object = streamed_head(1 << 20, frame_room);
    short_object[56..64].copy_from_slice(&100u64.to_le_bytes());
    let mut bad_padding = message(1, Kind::OneWay, 0, 13, 5);
    let at = bad_padding.len() - 1;
    bad_padding[at] = 0xff;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("past the window", {
            // Nothing consumed: 64 KiB (the initial window) is all the sender may send.
            let mut f = data_frame(stream_first, 1, &first);
            let body = vec![0x5a; frame_room];
            for _ in 0..(frame::INITIAL_WINDOW as usize / frame_room) {
                f.extend(data_frame(0, 1, &body));
            }
            f
        }),
        (
            "STREAM past the first frame",
            [
                data_frame(stream_first, 1, &first),
                data_frame(data_flags::STREAM, 1, &[0; 16]),
            ]
            .concat(),
        ),
        ("two objects", data_frame(stream_first, 1, &two_objects)),
        (
            "object shorter than the message",
            data_frame(stream_first, 1, &short_object),
        ),
        (
            "non-zero padding",
            data_frame(stream_first | data_flags::LAST, 1, &bad_padding),
        ),
        ("window for a stream never opened", {
            let mut f = Vec::new();
            let mut h = FrameHeader::control(kind::WINDOW);
            h.stream = 5;
            h.raw = 1000;
            h.encode(&mut f);
            f
        }),
        ("window of 0", {
            let mut f = Vec::new();
            FrameHeader::control(kind::WINDOW).encode(&mut f);
            f
        }),
        ("refusal of a stream never opened", {
            let mut f = Vec::new();
            let mut h = FrameHeader::control(kind::ABORT);
            h.flags = frame::abort_flags::REFUSED;
            h.stream = 7;
            h.encode(&mut f);
            f
        }),
        ("unknown abort flag", {
            let mut f = Vec::new();
            let mut h = FrameHeader::control(kind::ABORT);
            h.flags = 0x40;
            h.stream = 7;
            h.encode(&mut f);
            f
        }),
    ];
    for (name, bytes) in cases {
        let (now, mut s) = open_streaming_server();
        s.handle_data(now, &bytes);
        let ev = Pair::events(&mut s);
        assert!(
            matches!(closed(&ev), Some(ConnError::Frame(_))),
            "{name}: {:?}",
            closed(&ev)
        );
        assert!(
            !ev.iter()
                .any(|e| matches!(e, ConnEvent::StreamEnded { .. })),
            "{name}: ended a stream"
        );
    }
}

#[test]
fn a_grant_past_the_message_end_closes_the_connection() {
    let mut p = Pair::new(config(), streaming_server(16 * 1024));
    p.drive();
    p.client.send(streamed(1, 200_000, 1));
    p.drive();
    Pair::events(&mut p.client);
    // The server grants absurd credit for stream 1.
    let mut f = Vec::new();
    let mut h = FrameHeader::control(kind::WINDOW);
    h.stream = 1;
    h.raw = u32::MAX;
    h.encode(&mut f);
    p.client.handle_data(p.now, &f);
    let ev = Pair::events(&mut p.client);
    assert!(matches!(closed(&ev), Some(ConnError::Frame(_))), "{ev:?}");
    // A grant for a stream that finished since is not an error.
    let mut p = Pair::new(config(), streaming_server(16 * 1024));
    p.drive();
    p.client.send(streamed(1, 100, 1));
    p.drive();
    h.raw = 10;
    let mut f = Vec::new();
    h.encode(&mut f);
    p.client.handle_data(p.now, &f);
    assert!(p.client.is_open());
}

#[test]
fn the_queue_is_bounded_and_no_queue_sends_need_a_connection_now() {
    let config = PoolConfig {
        max_queued: 3,
        per_connection: 1,
        ..PoolConfig::default()
    };
    let mut p = PoolPair::new(config, vec![1]);
    p.up = false;
    // No connection: a no_queue message fails at once, nothing is queued.
    let m = OutMessage::from_bytes(100, message(7, Kind::OneWay, 0, 1, 0), Delivery::Default);
    assert!(matches!(p.pool.send_now(m), Err((Failure::QueueFull, _))));
    assert_eq!(p.pool.queued(), 0);
    for i in 1..=3 {
        p.request(i, 10, Delivery::Default).unwrap();
    }
    assert!(!p.pool.has_room());
    assert_eq!(p.request(4, 10, Delivery::Default), Err(Failure::QueueFull));
    // The connection comes up: the queue drains, room is back, and a no_queue message
    // that a connection can take goes out.
    p.up = true;
    p.drive();
    assert_eq!(p.replies(), 3);
    assert!(p.pool.has_room());
    let m = OutMessage::from_bytes(101, message(7, Kind::OneWay, 0, 1, 0), Delivery::Default);
    assert!(p.pool.send_now(m).is_ok());
    assert!(p.failures().is_empty(), "{:?}", p.failures());
}

/// The payload bytes of the data frames in `buf` (client frames, past the handshake)
/// whose stream passes `huge`, up to the last frame of stream `call` (all of them when
/// that frame is not in `buf`), and whether it was.
fn huge_bytes_before(buf: &[u8], huge: impl Fn(u32) -> bool, call: u32) -> (usize, bool) {
    let mut rest = buf;
    let mut n = 0;
    while let Ok(Some(h)) = FrameHeader::decode(rest, frame::MAX_BUFFER) {
        if h.kind == kind::DATA && h.stream == call && h.flags & data_flags::LAST != 0 {
            return (n, true);
        }
        if h.kind == kind::DATA && huge(h.stream) {
            n += h.payload as usize;
        }
        rest = &rest[frame::FRAME_HEADER + h.payload as usize..];
    }
    (n, false)
}

/// Head of line: a small call queued while huge one-way messages are being sent overtakes
/// them. The driver is modelled as the TCP driver works: each round it takes frames from
/// the core until the send budget is spent, then writes them all (and reports them
/// written). The call is queued while a round's frames are being written: those go out
/// ahead of it (at most the budget plus a frame), then the call's frame is the first one
/// the core gives (a small message waits for no frame of a huge one). Counted in bytes of
/// the huge messages, deterministic: no clock is read.
#[test]
fn a_small_call_overtakes_huge_messages_within_one_budget() {
    const BUDGET: usize = 64 * 1024;
    const HUGE: usize = 4 << 20;
    let mut p = Pair::new(config(), config());
    p.drive();
    let frame_room = p.client.peer().unwrap().buffer_size as usize - frame::FRAME_HEADER;
    p.client.set_send_budget(Some(BUDGET));
    // Streams 1 to 3: three huge messages interleaved; the call will be stream 4.
    for i in 0..3u64 {
        let m = message(20 + i, Kind::OneWay, 0, HUGE, i as u8);
        p.client
            .send(OutMessage::from_bytes(100 + i, m, Delivery::Default));
    }
    let huge = |s: u32| (1..=3).contains(&s);
    let call_stream = 4;
    let mut received = Vec::new();
    let mut reply = None;
    let mut written = 0;
    let mut before_call = None;
    let mut after_call = 0;
    for round in 0..100_000 {
        p.client.handle_written(written);
        let mut buf = Vec::new();
        while p.client.poll_transmit(p.now, &mut buf) {}
        assert!(
            buf.len() <= BUDGET + frame::MAX_BUFFER as usize,
            "round {round}: {} bytes taken past a budget of {BUDGET}",
            buf.len()
        );
        if round == 5 {
            // The call arrives while this round's frames are being written.
            let call = message(7, Kind::Request, 77, 8, 0);
            p.client
                .send(OutMessage::from_bytes(7, call, Delivery::Default));
            before_call = Some(huge_bytes_before(&buf, huge, call_stream).0);
        } else if round > 5 && reply.is_none() {
            let (n, done) = huge_bytes_before(&buf, huge, call_stream);
            after_call += n;
            assert!(
                done || reply.is_some(),
                "round {round}: the call was not sent"
            );
        }
        written = buf.len();
        p.server.handle_data(p.now, &buf);
        for e in Pair::events(&mut p.server) {
            if let ConnEvent::Message { bytes, .. } = e {
                let v = MessageView::parse(&bytes).unwrap();
                if v.header().kind() == Some(Kind::Request) {
                    let r = message(7, Kind::Reply, v.header().request_id, 8, 1);
                    p.server
                        .send(OutMessage::from_bytes(8, r, Delivery::Default));
                } else {
                    received.push(bytes);
                }
            }
        }
        let mut back = Vec::new();
        while p.server.poll_transmit(p.now, &mut back) {}
        p.client.handle_data(p.now, &back);
        for e in Pair::events(&mut p.client) {
            if let ConnEvent::Message { bytes, .. } = e {
                reply = Some(bytes);
            }
        }
        if received.len() == 3 && buf.is_empty() && back.is_empty() {
            break;
        }
    }
    let before_call = before_call.expect("the call was queued");
    assert!(
        before_call <= BUDGET + frame_room,
        "{before_call} bytes of the huge messages were taken before the call was queued"
    );
    assert!(
        after_call <= frame_room,
        "{after_call} bytes of the huge messages went out after the call was queued, \
         before its frame"
    );
    let reply = reply.expect("the call's reply arrived");
    assert_eq!(MessageView::parse(&reply).unwrap().header().request_id, 77);
    // The huge messages were not harmed by being overtaken.
    assert_eq!(received.len(), 3);
    for i in 0..3u64 {
        assert!(
            received.contains(&message(20 + i, Kind::OneWay, 0, HUGE, i as u8)),
            "huge message {i} arrived intact"
        );
    }
}

/// The other side of small-first: a flood of small messages never starves a large one:
/// after a frame's worth of small ones, a frame of the large one goes, so it gets about
/// half of the bytes.
#[test]
fn small_messages_do_not_starve_a_large_one() {
    let mut p = Pair::new(config(), config());
    p.drive();
    let room = p.client.peer().unwrap().buffer_size as usize - frame::FRAME_HEADER;
    let big = message(1, Kind::OneWay, 0, 1 << 20, 9);
    p.client
        .send(OutMessage::from_bytes(1, big, Delivery::Default));
    let mut big_bytes = 0;
    let mut small_bytes = 0;
    for i in 0..400u64 {
        // Two small messages queued for every frame taken.
        for j in 0..2 {
            let m = message(2, Kind::OneWay, 0, 200, (i * 2 + j) as u8);
            p.client
                .send(OutMessage::from_bytes(10 + i * 2 + j, m, Delivery::Default));
        }
        let mut buf = Vec::new();
        assert!(p.client.poll_transmit(p.now, &mut buf));
        let (n, _) = huge_bytes_before(&buf, |s| s == 1, 0);
        big_bytes += n;
        small_bytes += huge_bytes_before(&buf, |s| s != 1, 0).0;
        p.server.handle_data(p.now, &buf);
        let mut back = Vec::new();
        while p.server.poll_transmit(p.now, &mut back) {}
        p.client.handle_data(p.now, &back);
    }
    assert!(
        big_bytes >= 20 * room && big_bytes * 2 >= small_bytes,
        "the large message got {big_bytes} bytes against {small_bytes} of small ones"
    );
}

/// A TLS stream takes a batch's plaintext and, when the socket is full, may keep the tail
/// of its records (tokio-rustls answers `Ok` then). The connection's writer flushes after
/// every batch: without it the tail waited for the next write, and the last request of a
/// busy client for a keep-alive or its timeout (`net_contenders`' `rpc-tls` under load,
/// about one run in twenty). Here the "socket" is a pipe that holds 16 KiB, so the tail
/// is always kept; the reader must get the whole batch with nothing written after it.
#[test]
fn a_tls_batch_reaches_the_peer_whole_with_nothing_written_after_it() {
    use std::sync::Arc;

    use bytes::Bytes;
    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWrite};

    use super::tcp::write_batch;
    use super::tls::{ClientTls, Identity, ServerTls};
    use super::transmit::{Transmit, TransmitBuf};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        let server = ServerTls::new(Identity::new(vec![cert.clone()], key))
            .rustls_config()
            .unwrap();
        let client = ClientTls::new("localhost", vec![cert])
            .rustls_config()
            .unwrap();
        let (a, b) = tokio::io::duplex(16 << 10);
        let connect = tokio_rustls::TlsConnector::from(Arc::new(client));
        let accept = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let name = ServerName::try_from("localhost").unwrap();
        let (c, s) = tokio::join!(connect.connect(name, a), accept.accept(b));
        let (mut c, mut s) = (c.unwrap(), s.unwrap());

        let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let len = payload.len();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; len];
            // Only turns a hang into a failure: the batch arrives in milliseconds.
            match tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut got)).await {
                Ok(Ok(_)) => Ok(got),
                Ok(Err(e)) => Err(format!("reading: {e}")),
                Err(_) => Err("the tail of the batch never arrived".to_owned()),
            }
        });
        let mut out = Transmit::new();
        out.put_slice(b"header");
        out.put_bytes(Bytes::from(payload[6..].to_vec()));
        let mut flat = Vec::new();
        let vectored = c.is_write_vectored();
        write_batch(&mut c, &mut out, &mut flat, vectored)
            .await
            .unwrap();
        // Nothing more is written; `c` stays open until the reader is done.
        let got = reader.await.unwrap().unwrap();
        assert_eq!(&got[..6], b"header");
        assert!(got[6..] == payload[6..], "the batch arrived damaged");
        drop(c);
    });
}
