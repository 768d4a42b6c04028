//! Crash trials (issue 9): a client or server process is SIGKILLed at a random moment —
//! mid-send, holding a ring's spinlock, mid-handshake, awaiting a reply, while a ring grows —
//! and the process that survives (this one) must cope. After every trial:
//!
//! - nothing hung (every trial runs under a watchdog; every blocking step has a deadline);
//! - every call the survivor had pending ended with an error (`PeerDied`), and a server
//!   survivor's serve loop ended with `PeerDied`;
//! - the survivor holds exactly the fds, memfds and memfd mappings it held before the trial;
//! - a new connection works (to the survivor's own service, or, when the server died, to a
//!   service bound again under the dead server's name).
//!
//! `SHM_CRASH_TRIALS` sets the number of trials (default 200), `SHM_CRASH_SEED` the seed
//! (printed; default from the clock), so a failing sequence can be replayed.

mod support;

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shm_channel::rpc::{
    self, CallError, Client, EventItem, IncomingMessage, Method, ServeEnd, ServeOptions,
};
use shm_channel::service::{self, ClientConfig, Service, ServiceConfig};
use shm_channel::{Channel, Kind};
use support::{
    ChildGuard, checksum, child_role, child_service_env, fd_count, runtime_dir, service_env,
    unique_name, with_watchdog,
};

const PROTOCOL: &str = "CrashTrials";
/// Rings of up to 1 MiB each way: they start at one page, so bursts make them grow.
const RING: u64 = 1 << 20;
/// Longer than any step of a healthy trial; a call still pending after it is a failure.
const STEP: Duration = Duration::from_secs(10);
/// One trial, all of it.
const TRIAL_LIMIT: Duration = Duration::from_secs(60);
const ECHO: Method = Method::new("echo", 1);
/// The latest the killer strikes after the victim said it is in position.
const MAX_DELAY_US: u64 = 20_000;

/// What the victim is doing when it is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Client victim: sends one-way messages of random sizes as fast as it can.
    ClientMidSend,
    /// Client victim: a burst of ever larger messages, unread, so its ring grows.
    ClientGrowing,
    /// Client victim: holds the spinlock of the ring the server replies on, then sends a
    /// request.
    ClientHoldsLock,
    /// Client victim: calls in a loop (killed awaiting a reply, or sending a request).
    ClientAwaitingReply,
    /// Client victim: connects over and over (killed mid-handshake), with a half-sent hello
    /// pending.
    ClientMidHandshake,
    /// Server victim: two of our calls wait for replies it never sends.
    ServerHoldsCalls,
    /// Server victim: serves our calls in a loop (killed while reading or replying).
    ServerServing,
    /// Server victim: sends events as fast as it can.
    ServerMidSend,
    /// Server victim: a burst of ever larger events, so the ring to us grows.
    ServerGrowing,
    /// Server victim: holds the spinlock of the ring we send on while we call.
    ServerHoldsLock,
    /// Server victim: accepts connections while we connect over and over.
    ServerMidHandshake,
}

const SCENARIOS: [Scenario; 11] = [
    Scenario::ClientMidSend,
    Scenario::ClientGrowing,
    Scenario::ClientHoldsLock,
    Scenario::ClientAwaitingReply,
    Scenario::ClientMidHandshake,
    Scenario::ServerHoldsCalls,
    Scenario::ServerServing,
    Scenario::ServerMidSend,
    Scenario::ServerGrowing,
    Scenario::ServerHoldsLock,
    Scenario::ServerMidHandshake,
];

impl Scenario {
    fn victim_is_client(self) -> bool {
        matches!(
            self,
            Scenario::ClientMidSend
                | Scenario::ClientGrowing
                | Scenario::ClientHoldsLock
                | Scenario::ClientAwaitingReply
                | Scenario::ClientMidHandshake
        )
    }

    fn index(self) -> u64 {
        SCENARIOS.iter().position(|s| *s == self).expect("listed") as u64
    }
}

/// The child's number: scenario index and the child's own seed.
fn encode(scenario: Scenario, seed: u64) -> u64 {
    scenario.index() << 32 | (seed & 0xffff_ffff)
}

fn decode(number: u64) -> (Scenario, u64) {
    (SCENARIOS[(number >> 32) as usize], number & 0xffff_ffff)
}

fn service_config(dir: &Path) -> ServiceConfig {
    support::v1_service_config(PROTOCOL, RING, dir)
}

fn client_config(dir: &Path) -> ClientConfig {
    support::v1_client_config(PROTOCOL, RING, dir, STEP)
}

/// A message body that carries its own checksum, so the receiver can check it whole.
fn body(rng: &mut StdRng, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len.max(8)];
    rng.fill(&mut data[8..]);
    let sum = checksum(&data[8..]);
    data[..8].copy_from_slice(&sum.to_le_bytes());
    data
}

fn body_ok(data: &[u8]) -> bool {
    data.len() >= 8 && data[..8] == checksum(&data[8..]).to_le_bytes()
}

/// Memfds open in this process, and mappings of memfds.
fn memfds() -> (usize, usize) {
    let fds = std::fs::read_dir("/proc/self/fd")
        .expect("/proc")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("/memfd:"))
        .count();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .expect("/proc")
        .lines()
        .filter(|l| l.contains("/memfd:"))
        .count();
    (fds, maps)
}

/// Waits (up to 20 s: drain threads close their pipes a moment after a child ends) for the
/// fds, memfds and memfd mappings to be back to `before`.
fn assert_resources_back_to(before: (usize, usize, usize), trial: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (fds, maps) = memfds();
        let now = (fd_count(), fds, maps);
        if now == before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{trial}: (fds, memfds, memfd mappings) left behind: {before:?} before, {now:?} after"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Kills `victim` after `delay` on another thread; join it to know the kill is done.
fn kill_after(victim: ChildGuard, delay: Duration) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        thread::sleep(delay);
        let status = victim.kill9();
        // Killed, or (rarely) ended on its own: either way it is gone.
        let _ = status;
    })
}

fn is_peer_died<E: std::fmt::Debug>(r: &Result<(), CallError<E>>) -> bool {
    matches!(r, Err(CallError::PeerDied))
}

// ---------------------------------------------------------------------------------------
// The victims (child processes).

#[test]
fn crash_child() {
    let Some(role) = child_role() else { return };
    let (dir, name, number) = child_service_env();
    let (scenario, seed) = decode(number);
    let mut rng = StdRng::seed_from_u64(seed);
    match role.as_str() {
        "client" => client_victim(&dir, &name, scenario, &mut rng),
        "server" => server_victim(&dir, &name, scenario, &mut rng),
        other => panic!("unknown role {other}"),
    }
    // Every victim waits here to be killed.
    thread::sleep(Duration::from_secs(120));
}

fn client_victim(dir: &Path, name: &str, scenario: Scenario, rng: &mut StdRng) {
    let config = client_config(dir);
    match scenario {
        Scenario::ClientMidSend => {
            let channel = service::connect(name, &config).expect("connect");
            println!("go");
            for id in 0.. {
                let len = rng.random_range(8..8192);
                let data = body(rng, len);
                channel
                    .send_objects(id, Kind::OneWay, &[(0, &data)], STEP)
                    .expect("send");
            }
        }
        Scenario::ClientGrowing => {
            let channel = service::connect(name, &config).expect("connect");
            println!("go");
            let mut len = 64usize;
            for id in 0.. {
                let data = body(rng, len);
                channel
                    .send_objects(id, Kind::OneWay, &[(0, &data)], STEP)
                    .expect("send");
                len = if len >= 256 << 10 { 64 } else { len * 2 };
            }
        }
        Scenario::ClientHoldsLock => {
            let channel = service::connect(name, &config).expect("connect");
            // A writer of the ring the server replies on, dying inside its critical
            // section (a hostile client can map that ring: it got its memfd).
            shm_channel::ring::testing::hold_spinlock_forever(&channel.rx_ring().writer());
            let data = body(rng, 64);
            channel
                .send_objects(ECHO.id, Kind::Request, &[(0, &data)], STEP)
                .expect("send");
            println!("go");
            thread::sleep(Duration::from_secs(120));
        }
        Scenario::ClientAwaitingReply => {
            let mut client = Client::new(service::connect(name, &config).expect("connect"));
            println!("go");
            loop {
                let len = rng.random_range(8..4096);
                let data = body(rng, len);
                let back = client
                    .call(&ECHO, &[(0, &data)], STEP, |m| {
                        Ok(m.object(0).map(<[u8]>::to_vec))
                    })
                    .expect("call");
                assert_eq!(back.as_deref(), Some(&data[..]));
            }
        }
        Scenario::ClientMidHandshake => {
            // A hello that will never be finished...
            let path = dir.join(format!("{name}.sock"));
            let mut half = std::os::unix::net::UnixStream::connect(&path).expect("raw connect");
            std::io::Write::write_all(&mut half, &[1, 0, 0]).expect("write");
            println!("go");
            // ...and full handshakes, one after the other.
            loop {
                let channel = service::connect(name, &config).expect("connect");
                drop(channel);
            }
        }
        other => panic!("{other:?} has a server victim"),
    }
}

fn server_victim(dir: &Path, name: &str, scenario: Scenario, rng: &mut StdRng) {
    let mut service = Service::bind(name, service_config(dir)).expect("bind");
    println!("ready");
    match scenario {
        Scenario::ServerHoldsCalls => {
            let mut channels: Vec<Channel> = (0..2)
                .map(|_| service.accept_timeout(STEP).expect("accept"))
                .collect();
            for c in &mut channels {
                let m = c.recv_timeout(STEP).expect("request");
                assert_eq!(m.kind(), Kind::Request);
            }
            println!("go");
            thread::sleep(Duration::from_secs(120));
        }
        Scenario::ServerServing => {
            let mut channel = service.accept_timeout(STEP).expect("accept");
            println!("go");
            let opts = ServeOptions::default();
            let _ = rpc::serve_channel(
                &mut channel,
                |req, resp| resp.reply(&[(0, req.object(0).unwrap_or_default())]),
                &opts,
            );
        }
        Scenario::ServerMidSend | Scenario::ServerGrowing => {
            let channel = service.accept_timeout(STEP).expect("accept");
            println!("go");
            let mut len = 64usize;
            for id in 0.. {
                if scenario == Scenario::ServerMidSend {
                    len = rng.random_range(8..8192);
                } else {
                    len = if len >= 256 << 10 { 64 } else { len * 2 };
                }
                let data = body(rng, len);
                channel
                    .send_objects(id, Kind::Event, &[(0, &data)], STEP)
                    .expect("send");
            }
        }
        Scenario::ServerHoldsLock => {
            let channel = service.accept_timeout(STEP).expect("accept");
            shm_channel::ring::testing::hold_spinlock_forever(&channel.rx_ring().writer());
            println!("go");
            thread::sleep(Duration::from_secs(120));
        }
        Scenario::ServerMidHandshake => {
            // Accept late, at a random moment, so the kill may land before, during or
            // after any handshake.
            thread::sleep(Duration::from_micros(rng.random_range(0..3_000)));
            println!("go");
            loop {
                let channel = service.accept_timeout(STEP).expect("accept");
                drop(channel);
            }
        }
        other => panic!("{other:?} has a client victim"),
    }
}

// ---------------------------------------------------------------------------------------
// The survivor (this process).

/// Serves a client victim until it is gone: the loop must end with `PeerDied`, every
/// message received intact.
fn serve_until_peer_died(channel: &mut Channel, slow: bool) {
    let opts = ServeOptions {
        reply_timeout: STEP,
        ..ServeOptions::default()
    };
    let end = rpc::serve_channel(
        channel,
        |req, resp| {
            let data = req.object(0).unwrap_or_default();
            assert!(body_ok(data), "a received message is damaged");
            if slow {
                // Let the writer's burst fill (and grow) the ring.
                thread::sleep(Duration::from_micros(200));
            }
            if resp.wants_reply() {
                resp.reply(&[(0, data)])
            } else {
                resp.done()
            }
        },
        &opts,
    );
    assert_eq!(
        end.expect("the serve loop ends without error"),
        ServeEnd::PeerDied
    );
}

fn client_victim_trial(
    service: &mut Service,
    dir: &Path,
    scenario: Scenario,
    seed: u64,
    delay: Duration,
) {
    let env = service_env(dir, service.name(), encode(scenario, seed));
    let mut victim = ChildGuard::spawn("crash_child", "client", &env);
    if scenario == Scenario::ClientMidHandshake {
        victim.wait_for_line("go");
        let killer = kill_after(victim, delay);
        // Accept whatever completes, until the victim is dead and no handshake is pending.
        loop {
            match service.accept_timeout(Duration::from_millis(20)) {
                Ok(channel) => drop(channel),
                Err(service::AcceptError::Timeout) => {
                    if killer.is_finished() && service.pending_handshakes() == 0 {
                        break;
                    }
                }
                Err(e) => panic!("accept failed: {e}"),
            }
        }
        killer.join().expect("killer");
        return;
    }
    let mut channel = service.accept_timeout(STEP).expect("accept");
    victim.wait_for_line("go");
    let killer = kill_after(victim, delay);
    serve_until_peer_died(&mut channel, scenario == Scenario::ClientGrowing);
    killer.join().expect("killer");
}

fn server_victim_trial(dir: &Path, name: &str, scenario: Scenario, seed: u64, delay: Duration) {
    let env = service_env(dir, name, encode(scenario, seed));
    let mut victim = ChildGuard::spawn("crash_child", "server", &env);
    victim.wait_for_line("ready");
    let config = client_config(dir);
    let connect = || Client::new(service::connect(name, &config).expect("connect"));
    let echo = |client: &mut Client<Channel>, data: &[u8]| {
        client
            .call(&ECHO, &[(0, data)], STEP, |m| {
                Ok(m.object(0).map(<[u8]>::to_vec))
            })
            .map(|back| assert_eq!(back.as_deref(), Some(data), "echo"))
    };
    match scenario {
        Scenario::ServerHoldsCalls => {
            let callers: Vec<_> = (0..2)
                .map(|i| {
                    let mut client = connect();
                    thread::spawn(move || {
                        let r = client.call(&ECHO, &[(0, &[i; 16])], STEP, |_| Ok(()));
                        (r, client)
                    })
                })
                .collect();
            victim.wait_for_line("go");
            let killer = kill_after(victim, delay);
            for caller in callers {
                let (r, _client) = caller.join().expect("caller");
                assert!(is_peer_died(&r), "a pending call ended with {r:?}");
            }
            killer.join().expect("killer");
        }
        Scenario::ServerServing => {
            let mut client = connect();
            victim.wait_for_line("go");
            let killer = kill_after(victim, delay);
            let mut rng = StdRng::seed_from_u64(seed);
            let r = loop {
                let len = rng.random_range(8..4096);
                let data = body(&mut rng, len);
                if let Err(e) = echo(&mut client, &data) {
                    break Err(e);
                }
            };
            assert!(is_peer_died(&r), "the call in flight ended with {r:?}");
            killer.join().expect("killer");
        }
        Scenario::ServerMidSend | Scenario::ServerGrowing => {
            let mut client = connect();
            victim.wait_for_line("go");
            let killer = kill_after(victim, delay);
            let end = loop {
                match client.recv_event(STEP) {
                    Ok(EventItem::Event(m)) => {
                        assert!(body_ok(m.object(0).unwrap_or_default()), "damaged event");
                        if scenario == Scenario::ServerGrowing {
                            thread::sleep(Duration::from_micros(200));
                        }
                    }
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(e) => break e,
                }
            };
            assert_eq!(end, CallError::PeerDied);
            killer.join().expect("killer");
        }
        Scenario::ServerHoldsLock => {
            let mut client = connect();
            victim.wait_for_line("go");
            let killer = kill_after(victim, delay);
            // The request waits for the lock (a live holder) until the holder dies, then
            // takes it over; the reply never comes.
            let r = client.call(&ECHO, &[(0, b"locked")], STEP, |_| Ok(()));
            assert!(is_peer_died(&r), "the call ended with {r:?}");
            killer.join().expect("killer");
        }
        Scenario::ServerMidHandshake => {
            victim.wait_for_line("go");
            let killer = kill_after(victim, delay);
            // Connect over and over until the server is gone: a connection may fail at any
            // step, or succeed and then see the server die; none may hang.
            let short = config.clone().timeout(Duration::from_secs(2));
            // Refused, cut off mid-handshake or timed out ends the loop: the server died (a
            // live one answers every connection); the kill is due anyway.
            while let Ok(mut channel) = service::connect(name, &short) {
                if killer.is_finished() {
                    // Accepted before the kill: the server is gone now.
                    let r = channel.recv_timeout(STEP).map(|_| ());
                    assert!(
                        matches!(r, Err(shm_channel::ring::RecvError::PeerDied)),
                        "{r:?}"
                    );
                }
            }
            killer.join().expect("killer");
        }
        other => panic!("{other:?} has a client victim"),
    }
}

/// One round trip over a fresh connection to `service`, both ends in this process.
fn fresh_connection_works(service: &mut Service, dir: &Path) {
    let name = service.name().to_owned();
    let config = client_config(dir);
    let client = thread::spawn(move || {
        let mut client = Client::new(service::connect(&name, &config).expect("connect"));
        client
            .call(&ECHO, &[(0, b"fresh")], STEP, |m| {
                Ok(m.object(0).map(<[u8]>::to_vec))
            })
            .expect("call over a fresh connection")
    });
    let mut channel = service.accept_timeout(STEP).expect("accept");
    {
        let m = channel.recv_timeout(STEP).expect("request");
        let data = m.object(0).expect("object").to_vec();
        let request_id = m.request_id();
        drop(m);
        let reply = rpc::Outgoing::new(ECHO.id, Kind::Reply).request_id(request_id);
        rpc::send_objects(channel.tx(), &reply, &[(0, &data)], STEP).expect("reply");
    }
    assert_eq!(
        client.join().expect("client").as_deref(),
        Some(&b"fresh"[..])
    );
}

#[test]
fn crash_trials() {
    if child_role().is_some() {
        return;
    }
    let trials: u64 = std::env::var("SHM_CRASH_TRIALS")
        .ok()
        .map_or(200, |v| v.parse().expect("SHM_CRASH_TRIALS"));
    let seed: u64 = std::env::var("SHM_CRASH_SEED").ok().map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
        },
        |v| v.parse().expect("SHM_CRASH_SEED"),
    );
    println!("crash trials: {trials} trials, seed {seed} (replay: SHM_CRASH_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = runtime_dir();
    let server_name = unique_name("survivor");
    let victim_name = unique_name("victim");
    let mut service = Some(Service::bind(&server_name, service_config(&dir)).expect("bind"));
    let started = Instant::now();
    let (fds, memfds_open, maps) = memfds_with_fds();
    let before = (fds, memfds_open, maps);
    let mut counts = [0u32; SCENARIOS.len()];
    for t in 0..trials {
        // Every scenario in turn, each at a random moment.
        let scenario = SCENARIOS[(t % SCENARIOS.len() as u64) as usize];
        counts[scenario.index() as usize] += 1;
        let delay = Duration::from_micros(match rng.random_range(0..4) {
            0 => 0,
            1 => rng.random_range(0..500),
            _ => rng.random_range(0..MAX_DELAY_US),
        });
        let child_seed = rng.random();
        let trial = format!("trial {t} ({scenario:?}, kill after {delay:?})");
        let mut svc = service.take().expect("service");
        let (d, vn) = (dir.clone(), victim_name.clone());
        let svc = with_watchdog(TRIAL_LIMIT, move || {
            if scenario.victim_is_client() {
                client_victim_trial(&mut svc, &d, scenario, child_seed, delay);
                fresh_connection_works(&mut svc, &d);
            } else {
                server_victim_trial(&d, &vn, scenario, child_seed, delay);
                // The dead server's name is free again (its lock died with it) and a stale
                // socket is replaced: bind it here and connect.
                let mut again = Service::bind(&vn, service_config(&d)).expect("bind again");
                fresh_connection_works(&mut again, &d);
            }
            svc
        });
        service = Some(svc);
        assert_resources_back_to(before, &trial);
    }
    drop(service);
    std::fs::remove_dir_all(&dir).ok();
    println!(
        "crash trials: {trials} trials in {:.1?}; per scenario: {:?}",
        started.elapsed(),
        SCENARIOS.iter().zip(counts).collect::<Vec<_>>()
    );
}

fn memfds_with_fds() -> (usize, usize, usize) {
    let (memfds, maps) = memfds();
    (fd_count(), memfds, maps)
}
