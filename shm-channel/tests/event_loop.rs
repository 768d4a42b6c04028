//! The epoll event loop between real processes: this test binary re-executes itself
//! (`el_child`) to play client processes. One loop in the parent serves 64 channels (8 child
//! processes with 8 connections each, one thread per connection); an idle loop burns no CPU;
//! a SIGKILLed client's channels are reported; messages are delivered round-robin; no fd is
//! left behind.
//!
//! The tests of this file take one lock, one after the other: the fd count of the process is
//! only meaningful when no other test opens fds meanwhile.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use shm_channel::event_loop::{DisconnectReason, Event, EventLoop};
use shm_channel::service::{self, ClientConfig, Service, ServiceConfig};
use shm_channel::{Channel, ChannelId, Kind};
use support::echo::{Checked, stream_payload};
use support::{
    ChildGuard, WATCHDOG, assert_fds_back_to, child_role, child_service_env, fd_count, runtime_dir,
    serial, service_env, thread_cpu_ticks, unique_name, with_watchdog,
};

const PROTOCOL: &str = "LoopTest";
const STEP: Duration = Duration::from_secs(10);
/// Child processes of the 64-channel test, and connections of each.
const PROCESSES: usize = 8;
const CONNECTIONS: usize = 8;
/// Messages each connection echoes.
const MESSAGES: u64 = 200;

/// Messages each channel of the `burst` child sends before it exits.
const BURST: u64 = 50;

fn service_config(dir: &Path) -> ServiceConfig {
    ServiceConfig::new(PROTOCOL, 1..=1)
        .ring_sizes(1 << 18, 1 << 18)
        .runtime_dir(dir)
}

fn client_config(dir: &Path) -> ClientConfig {
    ClientConfig::new(PROTOCOL, 1..=1)
        .ring_sizes(1 << 18, 1 << 18)
        .runtime_dir(dir)
        .timeout(STEP)
}

/// Payload `seq` of stream `stream`: 1 B .. 16 KiB, bytes from a per-stream generator.
fn payload(stream: u64, seq: u64) -> Vec<u8> {
    stream_payload(stream, seq, 16 << 10)
}

/// Checks a checked message; returns its seq.
fn check(msg: &shm_channel::ring::Message<'_>) -> u64 {
    support::echo::check(msg).0
}

fn send_checked(ch: &Channel, stream: u64, seq: u64) {
    let data = payload(stream, seq);
    ch.send_objects(
        seq,
        Kind::Request,
        &Checked::new(seq, &data).objects(),
        STEP,
    )
    .unwrap_or_else(|e| panic!("send {seq}: {e}"));
}

/// 64 channels are ~1000 fds in this process; make sure the soft limit allows them.
fn raise_nofile_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: lim.maximum,
                maximum: lim.maximum,
            },
        );
    }
}

/// Re-executes this test binary as an `el_child` in `role`.
fn spawn_child(role: &str, dir: &Path, name: &str, index: usize) -> ChildGuard {
    ChildGuard::spawn("el_child", role, &service_env(dir, name, index as u64))
}

/// An event loop over a new service `name` in `dir`.
fn bind_loop(dir: &Path, name: &str) -> EventLoop {
    EventLoop::new(Service::bind(name, service_config(dir)).expect("bind")).expect("event loop")
}

/// Waits for `n` connections; any other event fails.
fn wait_for_connections(lp: &mut EventLoop, n: usize) {
    let mut connected = 0;
    while connected < n {
        match lp.next_event(STEP).expect("next_event") {
            Some(Event::Connected(_)) => connected += 1,
            other => panic!("expected a connection, got {other:?}"),
        }
    }
}

/// Child roles.
#[test]
fn el_child() {
    let Some(role) = child_role() else { return };
    let (dir, name, index) = child_service_env();
    match role.as_str() {
        // CONNECTIONS threads, each connects and echoes MESSAGES checked messages (a window of
        // 4 in flight), checking every reply.
        "clients" => {
            let threads: Vec<_> = (0..CONNECTIONS as u64)
                .map(|c| {
                    let (dir, name) = (dir.clone(), name.clone());
                    std::thread::spawn(move || {
                        let stream = index * 1000 + c;
                        let mut ch =
                            service::connect(&name, &client_config(&dir)).expect("connect");
                        let mut next = 0;
                        for expect in 0..MESSAGES {
                            while next < MESSAGES && next < expect + 4 {
                                send_checked(&ch, stream, next);
                                next += 1;
                            }
                            let msg = ch.recv_timeout(STEP).expect("reply");
                            assert_eq!(check(&msg), expect, "replies out of order");
                            assert_eq!(msg.object(1), Some(&payload(stream, expect)[..]));
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("client thread");
            }
        }
        // Connects `index` channels and sleeps until killed.
        "idle" => {
            let _channels: Vec<_> = (0..index)
                .map(|_| service::connect(&name, &client_config(&dir)).expect("connect"))
                .collect();
            std::thread::sleep(WATCHDOG);
        }
        // Connects `index` channels, sends BURST small messages on each, and exits without
        // waiting for anyone to read them.
        "burst" => {
            let channels: Vec<_> = (0..index)
                .map(|_| service::connect(&name, &client_config(&dir)).expect("connect"))
                .collect();
            for ch in &channels {
                for seq in 0..BURST {
                    let data = [seq as u8; 100];
                    ch.try_send_objects(seq, Kind::OneWay, &Checked::new(seq, &data).objects())
                        .expect("room for the whole burst");
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// What the server side of the 64-channel test saw.
#[derive(Default)]
struct Tally {
    connected: usize,
    echoed: HashMap<ChannelId, u64>,
    disconnected: HashMap<ChannelId, DisconnectReason>,
}

/// Serves echo until `done` says so; every message is checked, then echoed from the ring in
/// place.
fn serve(lp: &mut EventLoop, tally: &mut Tally, done: impl Fn(&Tally) -> bool) {
    while !done(tally) {
        let mut gone = None;
        match lp.next_event(STEP).expect("next_event") {
            None => panic!(
                "no event within {STEP:?}: {} connected, {} disconnected",
                tally.connected,
                tally.disconnected.len()
            ),
            Some(Event::Connected(id)) => {
                tally.connected += 1;
                assert!(tally.echoed.insert(id, 0).is_none(), "{id} connected twice");
            }
            Some(Event::Message {
                channel,
                message,
                reply,
            }) => {
                let seq = check(&message);
                let n = tally.echoed.get_mut(&channel).expect("connected first");
                assert_eq!(seq, *n, "{channel}: out of order");
                *n += 1;
                let objects: Vec<(u64, &[u8])> = message
                    .objects()
                    .map(|o| o.map(|o| (o.id, o.data)).expect("valid object"))
                    .collect();
                reply
                    .send_objects(seq, Kind::Reply, &objects, STEP)
                    .expect("echo");
            }
            Some(Event::Disconnected(id, reason)) => {
                assert!(tally.disconnected.insert(id, reason).is_none());
                gone = Some(id);
            }
            Some(other) => panic!("unexpected {other:?}"),
        }
        if let Some(id) = gone {
            assert!(lp.channel(id).is_none(), "a disconnected channel is gone");
        }
    }
}

#[test]
fn one_event_loop_serves_64_channels_of_8_processes() {
    let _serial = serial();
    raise_nofile_limit();
    let before = fd_count();
    let dir = runtime_dir();
    let name = unique_name("loop64");
    let lp = bind_loop(&dir, &name);
    let children: Vec<ChildGuard> = (0..PROCESSES)
        .map(|i| spawn_child("clients", &dir, &name, i))
        .collect();
    let total = PROCESSES * CONNECTIONS;
    let (lp, tally) = with_watchdog(Duration::from_secs(120), move || {
        let mut lp = lp;
        let mut tally = Tally::default();
        serve(&mut lp, &mut tally, |t| t.disconnected.len() == total);
        (lp, tally)
    });
    for (i, c) in children.into_iter().enumerate() {
        assert!(c.wait().success(), "client process {i} failed");
    }
    assert_eq!(tally.connected, total);
    assert!(lp.is_empty());
    for (id, n) in &tally.echoed {
        assert_eq!(*n, MESSAGES, "{id} echoed {n} messages");
        assert_eq!(tally.disconnected[id], DisconnectReason::PeerDied);
    }
    eprintln!(
        "one loop echoed {} messages over {total} channels",
        MESSAGES * total as u64
    );
    drop(lp);
    std::fs::remove_dir_all(&dir).ok();
    assert_fds_back_to(before);
}

#[test]
fn an_idle_event_loop_burns_no_cpu_and_sees_sigkilled_clients() {
    let _serial = serial();
    let before = fd_count();
    let dir = runtime_dir();
    let name = unique_name("idle");
    const IDLE: usize = 4;
    let mut lp = bind_loop(&dir, &name);
    let child = spawn_child("idle", &dir, &name, IDLE);
    let pid = child.id();
    let lp = with_watchdog(WATCHDOG, move || {
        let mut tally = Tally::default();
        serve(&mut lp, &mut tally, |t| t.connected == IDLE);
        // Let the spin adapt down, as it does in a loop that keeps finding nothing.
        for _ in 0..10 {
            assert!(lp.next_event(Duration::from_millis(5)).unwrap().is_none());
        }
        let t0 = thread_cpu_ticks();
        let got = lp
            .next_event(Duration::from_secs(1))
            .expect("wait")
            .map(|e| format!("{e:?}"));
        let ticks = thread_cpu_ticks() - t0;
        assert!(got.is_none(), "an event from idle clients: {got:?}");
        eprintln!("idle loop with {IDLE} channels: {ticks} ticks (10 ms each) of CPU in 1 s");
        assert!(
            ticks <= 5,
            "an idle loop used {ticks} ticks of CPU in one second"
        );
        lp
    });
    let killed = Instant::now();
    drop(child); // SIGKILL, reaped
    let mut lp = lp;
    let lp = with_watchdog(WATCHDOG, move || {
        let mut gone = 0;
        while gone < IDLE {
            match lp.next_event(STEP).expect("next_event") {
                Some(Event::Disconnected(_, DisconnectReason::PeerDied)) => gone += 1,
                other => panic!("expected a disconnection, got {other:?}"),
            }
        }
        lp
    });
    eprintln!(
        "{IDLE} channels of SIGKILLed client {pid} seen gone within {:?}",
        killed.elapsed()
    );
    assert!(killed.elapsed() < Duration::from_secs(2));
    drop(lp);
    std::fs::remove_dir_all(&dir).ok();
    assert_fds_back_to(before);
}

/// A client process that sent messages and exited before the loop read any: every message is
/// delivered, in order, before its channel's `Disconnected`.
#[test]
fn what_a_dead_client_sent_is_delivered_before_its_disconnection() {
    let _serial = serial();
    let dir = runtime_dir();
    let name = unique_name("burst");
    const CHANNELS: usize = 2;
    let mut lp = bind_loop(&dir, &name);
    let child = spawn_child("burst", &dir, &name, CHANNELS);
    let lp = with_watchdog(WATCHDOG, move || {
        wait_for_connections(&mut lp, CHANNELS);
        lp
    });
    // The loop reads nothing until the client is gone.
    assert!(child.wait().success(), "burst client failed");
    let mut lp = lp;
    let (received, gone) = with_watchdog(WATCHDOG, move || {
        let mut received: HashMap<ChannelId, u64> = HashMap::new();
        let mut gone = Vec::new();
        while gone.len() < CHANNELS {
            match lp.next_event(STEP).expect("next_event") {
                Some(Event::Message {
                    channel, message, ..
                }) => {
                    let n = received.entry(channel).or_default();
                    assert_eq!(check(&message), *n, "{channel}: out of order");
                    *n += 1;
                }
                Some(Event::Disconnected(id, reason)) => {
                    assert_eq!(reason, DisconnectReason::PeerDied);
                    assert_eq!(
                        received.get(&id).copied().unwrap_or(0),
                        BURST,
                        "{id} disconnected before all its messages were delivered"
                    );
                    gone.push(id);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (received, gone)
    });
    assert_eq!(received.len(), CHANNELS);
    assert_eq!(gone.len(), CHANNELS);
    std::fs::remove_dir_all(&dir).ok();
}

/// Three channels with five messages waiting each: the loop hands them out one channel at a
/// time, in turn, never two of one channel while another one waits.
#[test]
fn messages_are_delivered_round_robin() {
    let _serial = serial();
    let dir = runtime_dir();
    let name = unique_name("fair");
    let mut lp = bind_loop(&dir, &name);
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let clients = std::thread::spawn({
        let (dir, name) = (dir.clone(), name.clone());
        move || {
            let channels: Vec<Channel> = (0..3)
                .map(|_| service::connect(&name, &client_config(&dir)).expect("connect"))
                .collect();
            for ch in &channels {
                for seq in 0..5 {
                    send_checked(ch, 0, seq);
                }
            }
            sent_tx.send(()).expect("signal");
            channels
        }
    });
    let order = with_watchdog(WATCHDOG, move || {
        wait_for_connections(&mut lp, 3);
        // Read nothing before all 15 messages wait in the rings.
        sent_rx.recv_timeout(STEP).expect("clients sent");
        let mut order = Vec::new();
        let mut ids = Vec::new();
        while order.len() < 15 {
            match lp.next_event(STEP).expect("next_event") {
                Some(Event::Message {
                    channel, message, ..
                }) => {
                    order.push((channel, check(&message)));
                    if !ids.contains(&channel) {
                        ids.push(channel);
                    }
                }
                other => panic!("expected a message, got {other:?}"),
            }
        }
        (order, lp)
    });
    let (order, lp) = order;
    let channels = clients.join().expect("clients");
    eprintln!("delivery order: {order:?}");
    // Each channel's messages in order; a channel may lag by the one round it takes the loop
    // to notice it, never more: per-channel counts in every prefix differ by at most 2.
    let mut counts: HashMap<ChannelId, u64> = HashMap::new();
    for (i, (c, seq)) in order.iter().enumerate() {
        let n = counts.entry(*c).or_default();
        assert_eq!(*seq, *n, "{c}: out of order");
        *n += 1;
        let (lo, hi) = (0..3)
            .map(|k| counts.values().nth(k).copied().unwrap_or(0))
            .fold((u64::MAX, 0), |(lo, hi), n| (lo.min(n), hi.max(n)));
        assert!(hi - lo <= 2, "unfair after {} messages: {order:?}", i + 1);
    }
    drop(channels);
    drop(lp);
    std::fs::remove_dir_all(&dir).ok();
}
