//! The connection-wide receive window (`ConnConfig::receive_window`), sans-io: an honest
//! sender is held to it by the grants, and a hostile one that sends past them is closed.

use std::time::{Duration, Instant};

use super::conn::{ConnConfig, ConnError, ConnEvent, Connection, Delivery, OutMessage};
use super::frame::{self, FRAME_HEADER, FrameError, FrameHeader, ProtocolSpec, data_flags, kind};
use super::tests::message;
use shm_layout::Kind;

const WINDOW: u64 = 1 << 20;

fn config() -> ConnConfig {
    ConnConfig {
        buffer_size: frame::MAX_BUFFER,
        inactivity_timeout: Duration::from_secs(60),
        ..ConnConfig::default()
    }
}

fn server_config() -> ConnConfig {
    ConnConfig {
        receive_window: WINDOW,
        ..config()
    }
}

fn events(c: &mut Connection) -> Vec<ConnEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn delivered(events: &[ConnEvent]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            ConnEvent::Message { bytes, .. } => Some(bytes.clone()),
            _ => None,
        })
        .collect()
}

/// The `WINDOW` grants among frames a server sent: (stream, bytes).
fn grants(mut buf: &[u8]) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    while let Ok(Some(h)) = FrameHeader::decode(buf, frame::MAX_BUFFER) {
        if h.kind == kind::WINDOW {
            out.push((h.stream, u64::from(h.raw)));
        }
        buf = &buf[FRAME_HEADER + h.payload as usize..];
    }
    out
}

/// A server connection past its handshake with a client whose frames the test writes by
/// hand (the client `Connection` only did the handshake).
fn open_server() -> (Instant, Connection) {
    open_server_with(server_config())
}

/// [`open_server`] with the server's `config`.
fn open_server_with(config_of_server: ConnConfig) -> (Instant, Connection) {
    let now = Instant::now();
    let protocols = vec![ProtocolSpec::new("Echo", 1)];
    let mut client = Connection::client(now, config(), 1, protocols.clone());
    let mut server = Connection::server(now, config_of_server, 2, protocols);
    for _ in 0..3 {
        let mut buf = Vec::new();
        while client.poll_transmit(now, &mut buf) {}
        server.handle_data(now, &buf);
        buf.clear();
        while server.poll_transmit(now, &mut buf) {}
        client.handle_data(now, &buf);
    }
    assert!(server.is_open());
    events(&mut server);
    (now, server)
}

/// The DATA frames of `bytes` on `stream` covering message bytes `from..to`.
fn frames(stream: u32, bytes: &[u8], from: usize, to: usize) -> Vec<u8> {
    let room = frame::MAX_BUFFER as usize - FRAME_HEADER;
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let n = room.min(to - at);
        let mut flags = 0;
        if at == 0 {
            flags |= data_flags::FIRST;
        }
        if at + n == bytes.len() {
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
        out.extend_from_slice(&bytes[at..at + n]);
        at += n;
    }
    out
}

/// Whatever the server wants to send, as bytes.
fn output(server: &mut Connection, now: Instant) -> Vec<u8> {
    let mut buf = Vec::new();
    while server.poll_transmit(now, &mut buf) {}
    buf
}

#[test]
fn an_honest_sender_is_held_to_the_connection_window_and_everything_arrives() {
    let now = Instant::now();
    let protocols = vec![ProtocolSpec::new("Echo", 1)];
    let mut client = Connection::client(now, config(), 1, protocols.clone());
    let mut server = Connection::server(now, server_config(), 2, protocols);
    // Eight messages of 600 KiB: each alone fits the 1 MiB window, two do not.
    let sent: Vec<Vec<u8>> = (0..8u8)
        .map(|i| message(u64::from(i), Kind::OneWay, 0, 600 << 10, i))
        .collect();
    for (i, m) in sent.iter().enumerate() {
        client.send(OutMessage::from_bytes(
            i as u64,
            m.clone(),
            Delivery::Default,
        ));
    }
    let mut got = Vec::new();
    let mut peak = 0;
    let mut rounds = 0;
    loop {
        let mut buf = Vec::new();
        // A few frames at a time, so that grants and data interleave as on a socket.
        for _ in 0..4 {
            if !client.poll_transmit(now, &mut buf) {
                break;
            }
        }
        let moved = !buf.is_empty();
        server.handle_data(now, &buf);
        let used = server.receive_window_used();
        peak = peak.max(used);
        assert!(
            used <= WINDOW,
            "{used} bytes of credit out, window {WINDOW}"
        );
        got.extend(delivered(&events(&mut server)));
        let back = output(&mut server, now);
        client.handle_data(now, &back);
        events(&mut client);
        rounds += 1;
        if !moved && back.is_empty() {
            break;
        }
        assert!(rounds < 100_000, "no progress");
    }
    // Without the window every stream would be granted at its first frame: 8 x 536 KiB.
    assert!(peak > 0, "grants were made");
    got.sort_by_key(|m| m[0]);
    assert_eq!(got.len(), sent.len(), "every message arrived");
    assert!(got == sent, "intact");
    assert_eq!(server.receive_window_used(), 0);
}

#[test]
fn a_hostile_sender_gets_no_credit_past_the_connection_window() {
    let (now, mut server) = open_server();
    // Sixteen streams open a 512 KiB message each with one first frame.
    let len = 512 << 10;
    let msgs: Vec<Vec<u8>> = (1..=16u8)
        .map(|i| message(u64::from(i), Kind::OneWay, 0, len, i))
        .collect();
    let first = frame::MAX_BUFFER as usize - FRAME_HEADER;
    let mut buf = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        buf.extend(frames(i as u32 + 1, m, 0, first));
    }
    server.handle_data(now, &buf);
    assert!(server.is_open());
    let g = grants(&output(&mut server, now));
    let total: u64 = g.iter().map(|(_, n)| n).sum();
    let extra = msgs[0].len() as u64 - u64::from(frame::INITIAL_WINDOW);
    // Streams 1 and 2 fit the window (2 x 448 KiB); the other 14 wait.
    assert_eq!(g, vec![(1, extra), (2, extra)]);
    assert!(total <= WINDOW);
    assert_eq!(server.receive_window_used(), total);

    // Stream 1 completes: its credit comes back and the oldest waiting stream (3, not
    // 16) is granted.
    server.handle_data(now, &frames(1, &msgs[0], first, msgs[0].len()));
    assert_eq!(delivered(&events(&mut server)), vec![msgs[0].clone()]);
    assert_eq!(grants(&output(&mut server, now)), vec![(3, extra)]);

    // Stream 9 sends past its initial window without a grant: the connection closes.
    let initial = frame::INITIAL_WINDOW as usize;
    server.handle_data(now, &frames(9, &msgs[8], first, initial + first));
    assert!(server.is_closed());
    let closed = events(&mut server).into_iter().find_map(|e| match e {
        ConnEvent::Closed(e) => Some(e),
        _ => None,
    });
    assert!(
        matches!(&closed, Some(ConnError::Frame(FrameError::Malformed(m))) if m.contains("granted")),
        "{closed:?}"
    );
}

#[test]
fn a_message_larger_than_the_window_gets_in_alone() {
    let (now, mut server) = open_server();
    let big = message(1, Kind::OneWay, 0, 3 << 20, 1);
    let small = message(2, Kind::OneWay, 0, 300 << 10, 2);
    let first = frame::MAX_BUFFER as usize - FRAME_HEADER;
    let mut buf = frames(1, &big, 0, first);
    buf.extend(frames(2, &small, 0, first));
    server.handle_data(now, &buf);
    // Nothing else holds credit: the 3 MiB message is granted though the window is 1 MiB;
    // the small one waits behind it.
    let extra = big.len() as u64 - u64::from(frame::INITIAL_WINDOW);
    assert_eq!(grants(&output(&mut server, now)), vec![(1, extra)]);
    server.handle_data(now, &frames(1, &big, first, big.len()));
    assert_eq!(delivered(&events(&mut server)).len(), 1);
    let small_extra = small.len() as u64 - u64::from(frame::INITIAL_WINDOW);
    assert_eq!(grants(&output(&mut server, now)), vec![(2, small_extra)]);
    server.handle_data(now, &frames(2, &small, first, small.len()));
    assert_eq!(delivered(&events(&mut server)), vec![small]);
    assert!(server.is_open());
}

/// With `in_order` (a gateway's connections), messages that completed before an earlier
/// one wait for it, and their bytes count against the window: a peer cannot make the
/// server hold message after message behind a stream it leaves unfinished (or never
/// starts). The stream they wait for is granted past them and past the streams queued for
/// the window, or everything would wait for ever.
#[test]
fn messages_held_for_order_count_against_the_window_and_the_first_gets_past_them() {
    let (now, mut server) = open_server_with(ConnConfig {
        in_order: true,
        ..server_config()
    });
    let len = 512 << 10;
    let msgs: Vec<Vec<u8>> = (1..=12u8)
        .map(|i| message(u64::from(i), Kind::OneWay, 0, len, i))
        .collect();
    let first = frame::MAX_BUFFER as usize - FRAME_HEADER;
    let extra = msgs[0].len() as u64 - u64::from(frame::INITIAL_WINDOW);
    // Streams 2 to 12 open (stream 1 is late): 2 and 3 fit the 1 MiB window.
    let mut buf = Vec::new();
    for (i, m) in msgs.iter().enumerate().skip(1) {
        buf.extend(frames(i as u32 + 1, m, 0, first));
    }
    server.handle_data(now, &buf);
    let mut granted: Vec<u32> = grants(&output(&mut server, now))
        .into_iter()
        .map(|(s, n)| {
            assert_eq!(n, extra);
            s
        })
        .collect();
    assert_eq!(granted, vec![2, 3]);
    // The peer completes every stream it is granted: they all wait for stream 1, and
    // their bytes keep the window closed to the others.
    let mut completed = Vec::new();
    while let Some(s) = granted.pop() {
        let m = &msgs[s as usize - 1];
        server.handle_data(now, &frames(s, m, first, m.len()));
        completed.push(s);
        let used = server.receive_window_used();
        assert!(
            used <= WINDOW,
            "{used} bytes held past the {WINDOW} B window"
        );
        granted.extend(
            grants(&output(&mut server, now))
                .into_iter()
                .map(|(s, _)| s),
        );
    }
    completed.sort_unstable();
    // Without the held bytes counted: 2 to 12, each granted once the one before was held.
    assert_eq!(completed, vec![2, 3]);
    assert!(
        delivered(&events(&mut server)).is_empty(),
        "they wait for 1"
    );
    assert!(server.is_open());

    // Stream 1 opens: granted at once, past the held messages and the waiting streams.
    server.handle_data(now, &frames(1, &msgs[0], 0, first));
    assert_eq!(grants(&output(&mut server, now)), vec![(1, extra)]);
    server.handle_data(now, &frames(1, &msgs[0], first, msgs[0].len()));
    let mut got = delivered(&events(&mut server));
    assert_eq!(
        got,
        msgs[..3].to_vec(),
        "1, then the two that waited for it"
    );
    // The window opens for the rest, oldest first; all arrive, in order.
    let mut rounds = 0;
    while got.len() < msgs.len() {
        let g = grants(&output(&mut server, now));
        assert!(!g.is_empty(), "no grant with {} of 12 delivered", got.len());
        for (s, _) in g {
            let m = &msgs[s as usize - 1];
            server.handle_data(now, &frames(s, m, first, m.len()));
            assert!(server.receive_window_used() <= WINDOW);
        }
        got.extend(delivered(&events(&mut server)));
        rounds += 1;
        assert!(rounds < 100, "no progress");
    }
    assert!(got == msgs, "all, in order");
    assert_eq!(server.receive_window_used(), 0);
}

/// The stream the held messages wait for, queued for the window behind later streams, is
/// granted as soon as the window has room for it alone, before the streams queued ahead
/// of it.
#[test]
fn a_late_first_stream_queued_for_the_window_is_granted_before_the_streams_ahead_of_it() {
    let (now, mut server) = open_server_with(ConnConfig {
        in_order: true,
        ..server_config()
    });
    let len = 512 << 10;
    let msgs: Vec<Vec<u8>> = (1..=6u8)
        .map(|i| message(u64::from(i), Kind::OneWay, 0, len, i))
        .collect();
    let first = frame::MAX_BUFFER as usize - FRAME_HEADER;
    let extra = msgs[0].len() as u64 - u64::from(frame::INITIAL_WINDOW);
    let finish = |server: &mut Connection, s: u32| {
        let m = &msgs[s as usize - 1];
        server.handle_data(now, &frames(s, m, first, m.len()));
    };
    // Streams 2 to 6 open; 2 and 3 take the window.
    let mut buf = Vec::new();
    for (i, m) in msgs.iter().enumerate().skip(1) {
        buf.extend(frames(i as u32 + 1, m, 0, first));
    }
    server.handle_data(now, &buf);
    let g = grants(&output(&mut server, now));
    assert_eq!(g, vec![(2, extra), (3, extra)]);
    // Stream 1 opens: no room, it waits behind 4, 5 and 6.
    server.handle_data(now, &frames(1, &msgs[0], 0, first));
    assert_eq!(grants(&output(&mut server, now)), vec![]);
    // 3 completes and is held (its bytes still count): 4, first in the queue, does not
    // fit; 1 does (what waits for it does not count against it) and goes first.
    finish(&mut server, 3);
    assert_eq!(grants(&output(&mut server, now)), vec![(1, extra)]);
    assert!(delivered(&events(&mut server)).is_empty());
    finish(&mut server, 1);
    assert_eq!(delivered(&events(&mut server)), vec![msgs[0].clone()]);
    finish(&mut server, 2);
    assert_eq!(delivered(&events(&mut server)), msgs[1..3].to_vec());
    // Then the rest, oldest first.
    let mut got = Vec::new();
    for _ in 0..10 {
        for (s, _) in grants(&output(&mut server, now)) {
            finish(&mut server, s);
        }
        got.extend(delivered(&events(&mut server)));
    }
    assert!(got == msgs[3..], "4, 5, 6 in order");
    assert_eq!(server.receive_window_used(), 0);
}
