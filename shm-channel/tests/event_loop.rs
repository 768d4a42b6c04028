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
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shm_channel::event_loop::{DisconnectReason, Event, EventLoop};
use shm_channel::ring::Message;
use shm_channel::service::{self, ClientConfig, Service, ServiceConfig};
use shm_channel::{Channel, ChannelId, Kind};
use support::{WATCHDOG, child_role, unique_name, with_watchdog};

const PROTOCOL: &str = "LoopTest";
const STEP: Duration = Duration::from_secs(10);
/// Child processes of the 64-channel test, and connections of each.
const PROCESSES: usize = 8;
const CONNECTIONS: usize = 8;
/// Messages each connection echoes.
const MESSAGES: u64 = 200;

/// Messages each channel of the `burst` child sends before it exits.
const BURST: u64 = 50;

const DIR_ENV: &str = "SHM_LOOP_TEST_DIR";
const NAME_ENV: &str = "SHM_LOOP_TEST_NAME";
const INDEX_ENV: &str = "SHM_LOOP_TEST_INDEX";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn runtime_dir() -> PathBuf {
    std::env::temp_dir().join(unique_name("rt"))
}

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

/// FNV-1a.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Payload `seq` of stream `stream`: 1 B .. 16 KiB, bytes from a per-stream generator.
fn payload(stream: u64, seq: u64) -> Vec<u8> {
    let mut x = (stream << 32 | seq).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = 1 + (next() % (16 << 10)) as usize;
    (0..len).map(|_| next() as u8).collect()
}

/// Checks a message of the echo protocol: objects (0: seq, 1: data, 2: checksum of data).
/// Returns its seq.
fn check(msg: &Message<'_>) -> u64 {
    let seq = u64::from_le_bytes(msg.object(0).expect("seq").try_into().expect("8 bytes"));
    let data = msg.object(1).expect("data");
    let sum = u64::from_le_bytes(msg.object(2).expect("sum").try_into().expect("8 bytes"));
    assert_eq!(checksum(data), sum, "message {seq} corrupted");
    seq
}

fn send_checked(ch: &Channel, stream: u64, seq: u64) {
    let data = payload(stream, seq);
    ch.send_objects(
        seq,
        Kind::Request,
        &[
            (0, &seq.to_le_bytes()),
            (1, &data),
            (2, &checksum(&data).to_le_bytes()),
        ],
        STEP,
    )
    .unwrap_or_else(|e| panic!("send {seq}: {e}"));
}

/// Open fds of this process.
fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc").count()
}

/// Waits (up to the watchdog) for the fd count to come back to `before`: threads that drain
/// children's pipes close them a moment after the children end.
fn assert_fds_back_to(before: usize) {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        let now = fd_count();
        if now == before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fds left behind: {before} before, {now} after"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU time of the calling thread (utime + stime, in ticks of 10 ms).
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
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

/// A child process, killed and reaped when dropped.
struct Proc(Option<std::process::Child>);

impl Proc {
    fn spawn(role: &str, dir: &Path, name: &str, index: usize) -> Proc {
        let exe = std::env::current_exe().expect("current_exe");
        let child = Command::new(exe)
            .args(["--exact", "el_child", "--nocapture", "--test-threads=1"])
            .env(support::CHILD_ENV, role)
            .env(DIR_ENV, dir)
            .env(NAME_ENV, name)
            .env(INDEX_ENV, index.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn test child");
        Proc(Some(child))
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }

    /// Waits for the exit (killing it after the watchdog); whether it succeeded.
    fn wait(mut self) -> bool {
        let mut child = self.0.take().expect("not waited yet");
        let deadline = Instant::now() + WATCHDOG;
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                return s.success();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("child did not end within {WATCHDOG:?}; killed it");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Child roles.
#[test]
fn el_child() {
    let Some(role) = child_role() else { return };
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("dir env"));
    let name = std::env::var(NAME_ENV).expect("name env");
    let index: u64 = std::env::var(INDEX_ENV)
        .expect("index env")
        .parse()
        .expect("index");
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
                    ch.try_send_objects(
                        seq,
                        Kind::OneWay,
                        &[
                            (0, &seq.to_le_bytes()),
                            (1, &data),
                            (2, &checksum(&data).to_le_bytes()),
                        ],
                    )
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
    let lp = EventLoop::new(Service::bind(&name, service_config(&dir)).expect("bind"))
        .expect("event loop");
    let children: Vec<Proc> = (0..PROCESSES)
        .map(|i| Proc::spawn("clients", &dir, &name, i))
        .collect();
    let total = PROCESSES * CONNECTIONS;
    let (lp, tally) = with_watchdog(Duration::from_secs(120), move || {
        let mut lp = lp;
        let mut tally = Tally::default();
        serve(&mut lp, &mut tally, |t| t.disconnected.len() == total);
        (lp, tally)
    });
    for (i, c) in children.into_iter().enumerate() {
        assert!(c.wait(), "client process {i} failed");
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
    let mut lp = EventLoop::new(Service::bind(&name, service_config(&dir)).expect("bind"))
        .expect("event loop");
    let child = Proc::spawn("idle", &dir, &name, IDLE);
    let pid = child.pid();
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
    let mut lp = EventLoop::new(Service::bind(&name, service_config(&dir)).expect("bind"))
        .expect("event loop");
    let child = Proc::spawn("burst", &dir, &name, CHANNELS);
    let lp = with_watchdog(WATCHDOG, move || {
        let mut connected = 0;
        while connected < CHANNELS {
            match lp.next_event(STEP).expect("next_event") {
                Some(Event::Connected(_)) => connected += 1,
                other => panic!("expected a connection, got {other:?}"),
            }
        }
        lp
    });
    // The loop reads nothing until the client is gone.
    assert!(child.wait(), "burst client failed");
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
    let mut lp = EventLoop::new(Service::bind(&name, service_config(&dir)).expect("bind"))
        .expect("event loop");
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
        let mut connected = 0;
        while connected < 3 {
            match lp.next_event(STEP).expect("next_event") {
                Some(Event::Connected(_)) => connected += 1,
                other => panic!("expected a connection, got {other:?}"),
            }
        }
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
