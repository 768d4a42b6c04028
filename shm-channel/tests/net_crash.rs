//! Crash trials over the network (issue 9, point 2) and a real `kill -9` restart: a client
//! or server *process* is SIGKILLed at a random moment over TCP or QUIC, and this process,
//! the survivor, must cope. After every trial:
//!
//! - nothing hung (every trial runs under a watchdog; every call has a deadline);
//! - every call the survivor had pending ended, and how is checked against its message
//!   kind: a default call fails with `PeerRestarted` (its reply was awaited from the dead
//!   incarnation) or `ConnectionLost` (it was mid-way), or, not started yet, is resent to
//!   the restarted server and answered; an `@idempotent` call is always answered (resent);
//!   a `@one_shot` call may also fail with `NotConnected`. A call whose request the dead
//!   server was handling (it said so on its stdout) must not come back answered unless it
//!   is idempotent. Replies are checked byte for byte;
//! - the survivor holds exactly the fds it held before the trial (`/proc/self/fd`), and,
//!   over TCP, while still running, no socket of a dead connection (`/proc/net/tcp`);
//! - a new connection works (to the restarted server, or to the surviving server).
//!
//! The dead server is restarted on the same port in every trial (a new process: a new
//! instance id), which is how its clients' pending calls learn their fate; a server that
//! never returns leaves awaited calls to their own deadline (see `docs/NETWORK.md`).
//!
//! `SHM_NET_CRASH_TRIALS` sets the number of TCP trials (default 32),
//! `SHM_NET_CRASH_QUIC_TRIALS` the QUIC ones (default 8), `SHM_NET_CRASH_SEED` the seed
//! (printed; default from the clock), so a failing sequence can be replayed.

#![cfg(feature = "quic")]

mod support;
#[path = "support/transport.rs"]
mod transport;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shm_channel::net::frame::ProtocolSpec;
use shm_channel::net::{
    ClientConfig, ClientEvent, ConnError, Delivery, NetServer, Served, ServerConfig, ServerEvent,
};
use shm_channel::rpc::{
    AsyncClient, CallError, Client, HandlerError, IncomingMessage, Method, TransportError,
};
use support::{ChildGuard, assert_fds_back_to, child_role, fd_count, with_watchdog};
use transport::Net;

const PROTOCOL: &str = "NetCrash";
/// Default delivery: echoes.
const ECHO: Method = Method::new("echo", 1);
/// `@idempotent`: echoes.
const IDEMPOTENT: Method = Method::new("idempotent_echo", 2);
/// `@one_shot`: echoes.
const ONE_SHOT: Method = Method::new("one_shot_echo", 3);
/// Default delivery: echoes after `HOLD_FOR` (its caller is awaiting a reply when the
/// server dies).
const HOLD: Method = Method::new("hold", 4);
/// `@idempotent`: echoes after `HOLD_FOR`.
const HOLD_IDEMPOTENT: Method = Method::new("hold_idempotent", 5);
const HOLD_FOR: Duration = Duration::from_millis(1000);
/// How long a server child holds a `HOLD` call instead (milliseconds).
const HOLD_ENV: &str = "SHM_NET_CRASH_HOLD_MS";
/// Longer than any call of a healthy trial takes.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);
const TRIAL_LIMIT: Duration = Duration::from_secs(90);
/// The large messages (sent and echoed while the victim dies).
const LARGE: usize = 4 << 20;

const NET_ENV: &str = "SHM_NET_CRASH_NET";
const PORT_ENV: &str = "SHM_NET_CRASH_PORT";
const TRIAL_ENV: &str = "SHM_NET_CRASH_TRIAL";

fn protocol() -> ProtocolSpec {
    ProtocolSpec::new(PROTOCOL, 1)
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What a message kind allows a call to end with when its server is killed and restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KindOf {
    Default,
    Idempotent,
    OneShot,
}

fn kind_of(method: u64) -> KindOf {
    match method {
        2 | 5 => KindOf::Idempotent,
        3 => KindOf::OneShot,
        _ => KindOf::Default,
    }
}

fn allowed(kind: KindOf, e: &CallError) -> bool {
    match (kind, e) {
        (KindOf::Idempotent, _) => false,
        (_, CallError::PeerRestarted) => true,
        (_, CallError::Transport(TransportError::ConnectionLost(_))) => true,
        (KindOf::OneShot, CallError::Transport(TransportError::NotConnected)) => true,
        _ => false,
    }
}

/// Every test client's configuration: short timeouts so that a dead peer is noticed
/// quickly (over QUIC, a killed server sends nothing: only the client's inactivity
/// timeout, while a reply is awaited, tells), and the message kinds of the methods.
fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new(protocol());
    c.conn.handshake_timeout = Duration::from_secs(5);
    c.conn.inactivity_timeout = Duration::from_secs(2);
    c.conn.keepalive_interval = Duration::from_millis(300);
    c.pool.backoff_min = Duration::from_millis(20);
    c.pool.backoff_max = Duration::from_millis(200);
    c.pool.max_connections = 4;
    c.connect_timeout = Duration::from_secs(5);
    for m in [&IDEMPOTENT, &HOLD_IDEMPOTENT] {
        c.deliveries.insert(m.id, Delivery::Idempotent);
    }
    c.deliveries.insert(ONE_SHOT.id, Delivery::OneShot);
    c
}

/// The servers close a silent client after 2 s: over QUIC that is how a killed client's
/// connection ends.
fn server_config() -> ServerConfig {
    let mut c = ServerConfig::default();
    c.conn.inactivity_timeout = Duration::from_secs(2);
    c.conn.handshake_timeout = Duration::from_secs(5);
    c
}

/// A request body: its tag (8 bytes) then bytes derived from it, so an echo is checked
/// whole and a server can say which call it handled.
fn body(tag: u64, len: usize) -> Vec<u8> {
    let mut data: Vec<u8> = (0..len.max(8) as u64)
        .map(|i| (i.wrapping_mul(2654435761) ^ tag) as u8)
        .collect();
    data[..8].copy_from_slice(&tag.to_le_bytes());
    data
}

fn tag_of(data: &[u8]) -> u64 {
    data.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

fn served(log: bool) -> Vec<Served> {
    let hold = std::env::var(HOLD_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(HOLD_FOR, Duration::from_millis);
    vec![Served::new(protocol(), move |req, resp| {
        let data = req.object(0).unwrap_or_default();
        let id = req.message_id();
        // The parent reads which calls this incarnation handled, and which it may have
        // answered (a reply never goes out without its line printed first).
        let say = |what: &str| {
            if log {
                println!("{what} {id} {}", tag_of(data));
            }
        };
        say("handled");
        match id {
            1..=3 => {}
            4 | 5 => thread::sleep(hold),
            _ => return Err(HandlerError::UnknownMethod),
        }
        say("replying");
        resp.reply(&[(0, data)])
    })]
}

fn decode(m: &dyn IncomingMessage) -> Result<Vec<u8>, String> {
    m.object(0)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "no object".into())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// Sockets of this process, from /proc (TCP only: QUIC has one UDP socket per endpoint).

/// The inodes of this process's sockets.
fn socket_inodes() -> HashSet<u64> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// This process's TCP sockets (not listeners) with `port` at the given end, and their
/// states (`/proc/net/tcp` codes: 01 established, 02 syn-sent, 08 close-wait, ...).
fn tcp_sockets(port: u16, local_end: bool) -> Vec<u8> {
    let ours = socket_inodes();
    let mut states = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let end = if local_end { f[1] } else { f[2] };
            let p = end
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            let state = u8::from_str_radix(f[3], 16).unwrap_or(0);
            let inode: u64 = f[9].parse().unwrap_or(0);
            if p == Some(port) && state != 0x0a && ours.contains(&inode) {
                states.push(state);
            }
        }
    }
    states
}

/// Waits (up to 20 s) until `ok` holds for this process's TCP sockets at `port`.
fn wait_sockets(port: u16, local_end: bool, what: &str, ok: impl Fn(&[u8]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let states = tcp_sockets(port, local_end);
        if ok(&states) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: sockets at port {port} left in states {states:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------
// The victims (child processes: this test binary again).

/// What the victim is doing when it is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scenario {
    /// Client victim: connects over and over (killed mid-handshake, or between).
    ClientMidHandshake,
    /// Client victim: echoes 4 MiB messages (killed mid-send or mid-receive).
    ClientMidSendLarge,
    /// Client victim: its calls wait for held replies (the server is in the handler).
    ClientAwaitingReply,
    /// Client victim: 32 calls of mixed sizes and kinds in flight at all times.
    ClientManyInFlight,
    /// Server victim: we connect over and over.
    ServerMidHandshake,
    /// Server victim: our 4 MiB echoes (it is mid-receive or mid-reply).
    ServerMidSendLarge,
    /// Server victim: our calls wait for held replies.
    ServerAwaitingReply,
    /// Server victim: 32 of our calls of mixed sizes and kinds in flight at all times.
    ServerManyInFlight,
}

const SCENARIOS: [Scenario; 8] = [
    Scenario::ClientMidHandshake,
    Scenario::ClientMidSendLarge,
    Scenario::ClientAwaitingReply,
    Scenario::ClientManyInFlight,
    Scenario::ServerMidHandshake,
    Scenario::ServerMidSendLarge,
    Scenario::ServerAwaitingReply,
    Scenario::ServerManyInFlight,
];

impl Scenario {
    fn victim_is_client(self) -> bool {
        matches!(
            self,
            Scenario::ClientMidHandshake
                | Scenario::ClientMidSendLarge
                | Scenario::ClientAwaitingReply
                | Scenario::ClientManyInFlight
        )
    }

    /// The latest the killer strikes after the victim is in position.
    fn max_delay(self) -> Duration {
        match self {
            Scenario::ClientAwaitingReply | Scenario::ServerAwaitingReply => {
                Duration::from_millis(700)
            }
            _ => Duration::from_millis(50),
        }
    }
}

/// The load one side puts on the other: tasks that call until stopped, recording how
/// each call ended.
struct Load {
    stop: Arc<AtomicBool>,
    started: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

/// Picks a load worker's next call: its method and request size.
type PickCall = fn(&mut StdRng) -> (Method, usize);

/// How one call ended.
#[derive(Debug)]
struct Outcome {
    method: u64,
    tag: u64,
    result: Result<(), CallError>,
}

impl Drop for Load {
    fn drop(&mut self) {
        // A failed trial unwinding must not leave blocking workers looping: the runtime
        // waits for them when it is dropped.
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Load {
    /// Starts `scenario`'s load on `rt` against `addr`, through `client` (one shared pool)
    /// or, mid-handshake, through new clients over and over.
    fn start(
        rt: &tokio::runtime::Runtime,
        net: Net,
        addr: SocketAddr,
        client: &Arc<AsyncClient<shm_channel::net::NetClient>>,
        scenario: Scenario,
        seed: u64,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let (workers, pick): (u64, PickCall) = match scenario {
            Scenario::ClientMidHandshake | Scenario::ServerMidHandshake => (2, |_| (ECHO, 64)),
            Scenario::ClientMidSendLarge | Scenario::ServerMidSendLarge => (2, |rng| {
                let m = if rng.random_bool(0.5) {
                    ECHO
                } else {
                    IDEMPOTENT
                };
                (m, LARGE)
            }),
            Scenario::ClientAwaitingReply | Scenario::ServerAwaitingReply => (2, |rng| {
                let m = if rng.random_bool(0.5) {
                    HOLD
                } else {
                    HOLD_IDEMPOTENT
                };
                (m, 100)
            }),
            Scenario::ClientManyInFlight | Scenario::ServerManyInFlight => (32, |rng| {
                let m = [ECHO, IDEMPOTENT, ONE_SHOT][rng.random_range(0..3)];
                let len = if rng.random_bool(0.1) {
                    rng.random_range(0..256 << 10)
                } else {
                    rng.random_range(0..4096)
                };
                (m, len)
            }),
        };
        let handshakes = matches!(
            scenario,
            Scenario::ClientMidHandshake | Scenario::ServerMidHandshake
        );
        let mut tasks = Vec::new();
        for w in 0..workers {
            let stop = Arc::clone(&stop);
            let started = Arc::clone(&started);
            let client = Arc::clone(client);
            let mut rng = StdRng::seed_from_u64(seed ^ (w + 1).wrapping_mul(0x9e37_79b9));
            let task = if handshakes {
                // A new pool per call: connect, handshake, one call, drop.
                rt.spawn_blocking(move || {
                    let mut outcomes = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        started.fetch_add(1, Ordering::Relaxed);
                        let tag = (w << 32) | i;
                        i += 1;
                        let result = match net.connect(vec![addr], client_config(), CALL_TIMEOUT) {
                            // A connect that found no server (between incarnations) is no
                            // pending call; it ends, which is all that is asked of it.
                            Err(_) => continue,
                            Ok(net_client) => {
                                let data = body(tag, 64);
                                Client::new(net_client)
                                    .call(&ECHO, &[(0, &data)], CALL_TIMEOUT, decode)
                                    .map(|got| assert_eq!(got, data, "echo of {tag}"))
                            }
                        };
                        outcomes.push(Outcome {
                            method: ECHO.id,
                            tag,
                            result,
                        });
                    }
                    outcomes
                })
            } else {
                rt.spawn(async move {
                    let mut outcomes = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        started.fetch_add(1, Ordering::Relaxed);
                        let (method, len) = pick(&mut rng);
                        let tag = (w << 32) | i;
                        i += 1;
                        let data = body(tag, len);
                        let result = client
                            .call(&method, &[(0, &data)], CALL_TIMEOUT, decode)
                            .await
                            .map(|got| assert!(got == data, "echo of {tag}: wrong bytes"));
                        if result.is_err() {
                            // Do not spin on a pool that fails one-shots at once.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        outcomes.push(Outcome {
                            method: method.id,
                            tag,
                            result,
                        });
                    }
                    outcomes
                })
            };
            tasks.push(task);
        }
        Load {
            stop,
            started,
            tasks,
        }
    }

    /// Stops the load and collects every call's outcome (each call has its deadline; a
    /// hang trips the trial's watchdog).
    fn finish(mut self, rt: &tokio::runtime::Runtime) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let tasks = std::mem::take(&mut self.tasks);
        rt.block_on(async {
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.expect("load task"));
            }
            all
        })
    }
}

/// `--exact` name of the child entry point.
const CHILD_TEST: &str = "net_crash_child";

#[test]
fn net_crash_child() {
    let Some(role) = child_role() else { return };
    let net = Net::parse(&std::env::var(NET_ENV).expect("net env")).expect("net name");
    let port: u16 = std::env::var(PORT_ENV)
        .expect("port env")
        .parse()
        .expect("port");
    match role.as_str() {
        "server" => {
            // Bind `port` (0: any), retrying while the dead incarnation's socket goes away.
            let deadline = Instant::now() + Duration::from_secs(10);
            let server = loop {
                match net.bind(localhost(port), server_config(), served(true)) {
                    Ok(s) => break s,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("binding port {port}: {e}"),
                }
            };
            println!("port {}", server.local_addr().port());
            thread::sleep(Duration::from_secs(120));
            drop(server);
        }
        "client" => {
            let number: u64 = std::env::var(TRIAL_ENV)
                .expect("trial env")
                .parse()
                .expect("trial");
            let scenario = SCENARIOS[(number >> 32) as usize];
            let rt = runtime();
            let addr = localhost(port);
            let client = {
                let _in = rt.enter();
                Arc::new(AsyncClient::new(
                    net.client(vec![addr], client_config()).expect("client"),
                ))
            };
            let load = Load::start(&rt, net, addr, &client, scenario, number);
            // In position once a first call was made (mid-handshake: from the start).
            let deadline = Instant::now() + Duration::from_secs(10);
            while load.started.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            println!("in position");
            thread::sleep(Duration::from_secs(120));
        }
        other => panic!("unknown role {other}"),
    }
}

fn spawn_server(net: Net, port: u16) -> (ChildGuard, u16) {
    spawn_server_holding(net, port, HOLD_FOR)
}

/// A server child on `port` (0: any) whose `HOLD` calls take `hold`; and its port.
fn spawn_server_holding(net: Net, port: u16, hold: Duration) -> (ChildGuard, u16) {
    let mut child = ChildGuard::spawn(
        CHILD_TEST,
        "server",
        &[
            (NET_ENV, net.name().into()),
            (PORT_ENV, port.to_string()),
            (HOLD_ENV, hold.as_millis().to_string()),
            transport::tls_env(),
        ],
    );
    let port = child.wait_for_prefix("port ").parse().expect("port line");
    (child, port)
}

/// The tags of the calls of `method`s a server child said it handled, in `lines`.
fn handled(lines: &[String], methods: &[u64]) -> Vec<u64> {
    said(lines, "handled ", methods)
}

/// The tags of the calls of `methods` in `lines` marked `what`.
fn said(lines: &[String], what: &str, methods: &[u64]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find(what)? + what.len()..];
            let (m, tag) = rest.trim().split_once(' ')?;
            let m: u64 = m.parse().ok()?;
            methods.contains(&m).then(|| tag.parse().ok())?
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The trials.

/// Counts across trials, for the report.
#[derive(Default, Debug)]
struct Tally {
    trials: HashMap<&'static str, usize>,
    answered: usize,
    failed: HashMap<String, usize>,
    unanswered_by_the_dead: usize,
    server_closes: HashMap<String, usize>,
}

impl Tally {
    fn record(&mut self, kind: KindOf, r: &Result<(), CallError>) {
        match r {
            Ok(()) => self.answered += 1,
            Err(e) => {
                let name = match e {
                    CallError::Transport(TransportError::ConnectionLost(_)) => {
                        "ConnectionLost".to_owned()
                    }
                    other => format!("{other:?}"),
                };
                *self.failed.entry(format!("{kind:?}: {name}")).or_default() += 1;
            }
        }
    }
}

/// A server victim: we are the client. The server is killed at a random moment of
/// `scenario`, then restarted on its port.
fn server_victim_trial(net: Net, scenario: Scenario, seed: u64, tally: &mut Tally) {
    let before = fd_count();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut victim, port) = spawn_server(net, 0);
    let addr = localhost(port);
    let rt = runtime();
    let client = {
        let _in = rt.enter();
        Arc::new(AsyncClient::new(
            net.client(vec![addr], client_config()).unwrap(),
        ))
    };
    let load = Load::start(&rt, net, addr, &client, scenario, seed);
    // In position: the server handled a first call (mid-handshake: at once).
    let mut lines = Vec::new();
    let held = [HOLD.id, HOLD_IDEMPOTENT.id];
    match scenario {
        Scenario::ServerMidHandshake => {}
        Scenario::ServerAwaitingReply => {
            while handled(&lines, &held).is_empty() {
                lines.push(format!("handled {}", victim.wait_for_prefix("handled ")));
            }
        }
        _ => lines.push(format!("handled {}", victim.wait_for_prefix("handled "))),
    }
    thread::sleep(rng.random_range(Duration::ZERO..=scenario.max_delay()));
    let (_, rest) = victim.kill9_with_output();
    lines.extend(rest);
    // The calls the dead incarnation handled but never answered: their replies were
    // awaited from it when it died.
    let all = [
        ECHO.id,
        IDEMPOTENT.id,
        ONE_SHOT.id,
        HOLD.id,
        HOLD_IDEMPOTENT.id,
    ];
    let replying: HashSet<u64> = said(&lines, "replying ", &all).into_iter().collect();
    let unanswered: HashSet<u64> = handled(&lines, &all)
        .into_iter()
        .filter(|t| !replying.contains(t))
        .collect();
    // Calls fail, queue or retry meanwhile; the pool backs off.
    thread::sleep(rng.random_range(Duration::ZERO..=Duration::from_millis(200)));
    let (mut restarted, port_again) = spawn_server(net, port);
    assert_eq!(port_again, port);
    // The load meets the new incarnation a little, then stops.
    thread::sleep(Duration::from_millis(100));
    let outcomes = load.finish(&rt);
    for o in &outcomes {
        let kind = kind_of(o.method);
        tally.record(kind, &o.result);
        if let Err(e) = &o.result {
            assert!(
                allowed(kind, e),
                "{scenario:?}: a {kind:?} call ({}) ended with {e:?}",
                o.method
            );
        }
        if unanswered.contains(&o.tag) {
            // Handled by the dead incarnation, which never replied: a reply is only ever
            // delivered to the incarnation that asked, and only an idempotent call is
            // resent (and answered by the new one).
            assert!(
                o.result.is_ok() == (kind == KindOf::Idempotent),
                "{scenario:?}: a {kind:?} call the dead server never answered ended with {:?}",
                o.result
            );
            tally.unanswered_by_the_dead += 1;
        }
    }
    // A new connection works: the same pool, and a new client.
    let data = body(u64::MAX, 1000);
    let got = rt
        .block_on(client.call(&ECHO, &[(0, &data)], CALL_TIMEOUT, decode))
        .unwrap_or_else(|e| panic!("{scenario:?}: the pool after the restart: {e:?}"));
    assert_eq!(got, data);
    let mut fresh = Client::new(
        net.connect(vec![addr], client_config(), CALL_TIMEOUT)
            .unwrap(),
    );
    assert_eq!(
        fresh
            .call(&ECHO, &[(0, &data)], CALL_TIMEOUT, decode)
            .unwrap(),
        data
    );
    drop(fresh);
    if net == Net::Tcp {
        // While the pool lives: the dead connections' sockets are closed; what is left
        // are live connections to the new incarnation (or connects to it).
        wait_sockets(port, false, "client survivor", |s| {
            s.iter().all(|st| *st == 0x01 || *st == 0x02)
        });
    }
    drop(client);
    rt.shutdown_timeout(Duration::from_secs(10));
    let _ = restarted.lines_so_far();
    restarted.kill9();
    assert_fds_back_to(before);
}

/// A client victim: we are the server (`srv`, alive across trials). The client is killed
/// at a random moment of `scenario`.
fn client_victim_trial(
    net: Net,
    srv: &NetServer,
    scenario: Scenario,
    seed: u64,
    tally: &mut Tally,
) {
    let before = fd_count();
    let mut rng = StdRng::seed_from_u64(seed);
    let port = srv.local_addr().port();
    let index = SCENARIOS.iter().position(|s| *s == scenario).unwrap() as u64;
    let mut victim = ChildGuard::spawn(
        CHILD_TEST,
        "client",
        &[
            (NET_ENV, net.name().into()),
            (PORT_ENV, port.to_string()),
            (TRIAL_ENV, (index << 32 | (seed & 0xffff_ffff)).to_string()),
            transport::tls_env(),
        ],
    );
    victim.wait_for_prefix("in position");
    thread::sleep(rng.random_range(Duration::ZERO..=scenario.max_delay()));
    victim.kill9();
    // The server closes every connection of the dead client: over TCP at once (the kernel
    // reset them), over QUIC at its inactivity timeout.
    wait_server_quiet(net, srv, port, tally, "after the kill");
    // A new connection works.
    let data = body(7, 10_000);
    let mut probe = Client::new(
        net.connect(vec![localhost(port)], client_config(), CALL_TIMEOUT)
            .unwrap(),
    );
    assert_eq!(
        probe
            .call(&ECHO, &[(0, &data)], CALL_TIMEOUT, decode)
            .unwrap(),
        data
    );
    drop(probe);
    wait_server_quiet(net, srv, port, tally, "after the probe");
    assert_fds_back_to(before);
}

/// Waits until the server has closed every connection it accepted (by its events; over
/// TCP also by its sockets).
fn wait_server_quiet(net: Net, srv: &NetServer, port: u16, tally: &mut Tally, when: &str) {
    static OPEN: Mutex<Vec<(SocketAddr, isize)>> = Mutex::new(Vec::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut open = OPEN.lock().unwrap();
        for e in srv.take_events() {
            let (peer, d) = match e {
                ServerEvent::Accepted { peer, .. } => (peer, 1),
                ServerEvent::Closed { peer, error } => {
                    let why = match error {
                        ConnError::Frame(_) => "Frame".to_owned(),
                        ConnError::Io(_) => "Io".to_owned(),
                        ConnError::ClosedByPeer { code, .. } => format!("ClosedByPeer({code:?})"),
                        other => format!("{other:?}"),
                    };
                    *tally.server_closes.entry(why).or_default() += 1;
                    (peer, -1)
                }
                _ => continue,
            };
            match open.iter_mut().find(|(p, _)| *p == peer) {
                Some(entry) => entry.1 += d,
                None => open.push((peer, d)),
            }
        }
        // A connection closed before its handshake is closed without being accepted.
        let quiet = open.iter().all(|(_, n)| *n <= 0);
        let sockets = net == Net::Quic || tcp_sockets(port, true).is_empty();
        if quiet && sockets {
            open.clear();
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server survivor {when}: connections still open {open:?}, sockets {:?}",
            tcp_sockets(port, true)
        );
        drop(open);
        thread::sleep(Duration::from_millis(10));
    }
}

fn run_trials(net: Net, trials: usize) {
    let _serial = support::serial();
    let start_fds = fd_count();
    let seed = std::env::var("SHM_NET_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{net:?} crash trials: {trials}, SHM_NET_CRASH_SEED={seed}");
    let start = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    // The surviving server of the client-victim trials, alive across them.
    let srv = Arc::new(
        net.bind(localhost(0), server_config(), served(false))
            .unwrap(),
    );
    for i in 0..trials {
        let scenario = SCENARIOS[i % SCENARIOS.len()];
        let trial_seed: u64 = rng.random();
        let name = format!("{scenario:?}");
        *tally.trials.entry(scenario_name(scenario)).or_default() += 1;
        let t = Instant::now();
        let srv = Arc::clone(&srv);
        eprintln!("trial {i}: {name}, seed {trial_seed}");
        let local = with_watchdog(TRIAL_LIMIT, move || {
            let mut local = Tally::default();
            if scenario.victim_is_client() {
                client_victim_trial(net, &srv, scenario, trial_seed, &mut local);
            } else {
                server_victim_trial(net, scenario, trial_seed, &mut local);
            }
            local
        });
        tally.answered += local.answered;
        tally.unanswered_by_the_dead += local.unanswered_by_the_dead;
        for (k, v) in local.failed {
            *tally.failed.entry(k).or_default() += v;
        }
        for (k, v) in local.server_closes {
            *tally.server_closes.entry(k).or_default() += v;
        }
        eprintln!("trial {i}: done in {:?}", t.elapsed());
    }
    eprintln!(
        "{net:?}: {trials} trials in {:?}: {:?}",
        start.elapsed(),
        tally
    );
    // The surviving server goes, and with it every fd it held (so the next test of this
    // binary counts from a quiet start).
    drop(srv);
    assert_fds_back_to(start_fds);
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::ClientMidHandshake => "client mid-handshake",
        Scenario::ClientMidSendLarge => "client mid-send (4 MiB)",
        Scenario::ClientAwaitingReply => "client awaiting a reply",
        Scenario::ClientManyInFlight => "client with 32 calls in flight",
        Scenario::ServerMidHandshake => "server mid-handshake",
        Scenario::ServerMidSendLarge => "server mid-send (4 MiB)",
        Scenario::ServerAwaitingReply => "server holding calls",
        Scenario::ServerManyInFlight => "server with 32 calls in flight",
    }
}

#[test]
fn net_crash_trials_tcp() {
    if child_role().is_some() {
        return;
    }
    run_trials(Net::Tcp, env_usize("SHM_NET_CRASH_TRIALS", 32));
}

#[test]
fn net_crash_trials_quic() {
    if child_role().is_some() {
        return;
    }
    run_trials(Net::Quic, env_usize("SHM_NET_CRASH_QUIC_TRIALS", 8));
}

// ---------------------------------------------------------------------------------------
// A server process killed with SIGKILL mid-call and restarted on the same port.

fn server_sigkilled_mid_call_and_restarted(net: Net) {
    let _serial = support::serial();
    let start_fds = fd_count();
    with_watchdog(Duration::from_secs(90), move || {
        // The first incarnation holds calls far longer than the test runs: it is killed
        // holding them, whatever the machine's speed.
        let (mut first, port) = spawn_server_holding(net, 0, Duration::from_secs(600));
        let addr = localhost(port);
        // Three pools: a default call and an idempotent one held by the first incarnation
        // (each on its own connection: a server handles one connection's requests in
        // order), and one that keeps calling across the restart.
        let call = |method: Method, tag: u64| {
            let mut client = Client::new(net.client(vec![addr], client_config()).unwrap());
            thread::spawn(move || {
                let data = body(tag, 100);
                let r = client.call(&method, &[(0, &data)], CALL_TIMEOUT, decode);
                if let Ok(got) = &r {
                    assert_eq!(got, &data);
                }
                (client, r)
            })
        };
        let held = call(HOLD, 1001);
        let held_idempotent = call(HOLD_IDEMPOTENT, 1002);
        let mut other = Client::new(
            net.connect(vec![addr], client_config(), CALL_TIMEOUT)
                .unwrap(),
        );
        assert_eq!(
            other
                .call(&ECHO, &[(0, &body(1, 10))], CALL_TIMEOUT, decode)
                .unwrap(),
            body(1, 10)
        );
        // Both held calls reached the first incarnation, which is killed holding them.
        let mut lines = Vec::new();
        while handled(&lines, &[HOLD.id, HOLD_IDEMPOTENT.id]).len() < 2 {
            lines.push(format!("handled {}", first.wait_for_prefix("handled ")));
        }
        let (first_status, rest) = first.kill9_with_output();
        let killed = Instant::now();
        assert!(!first_status.success(), "{first_status:?}");
        lines.extend(rest);
        assert!(said(&lines, "replying ", &[HOLD.id, HOLD_IDEMPOTENT.id]).is_empty());
        // While no server runs, a one-shot call fails without waiting for one:
        // `NotConnected` once the pool saw its connection drop, `ConnectionLost` when it
        // went out on the dying connection (over QUIC a dead server is only noticed by the
        // inactivity timeout of a call awaiting its reply).
        let one_shot = other.call(&ONE_SHOT, &[(0, &body(3, 10))], CALL_TIMEOUT, decode);
        match &one_shot {
            Err(e) if allowed(KindOf::OneShot, e) && *e != CallError::PeerRestarted => {}
            r => panic!(
                "one-shot call with the server dead: {r:?}; {:?}",
                other.transport().take_events()
            ),
        }
        // A default call made meanwhile waits in the queue for the next incarnation.
        let queued = thread::spawn(move || {
            let r = other.call(&ECHO, &[(0, &body(4, 5000))], CALL_TIMEOUT, decode);
            (other, r)
        });
        thread::sleep(Duration::from_millis(300));
        let (mut second, port_again) = spawn_server(net, port);
        assert_eq!(port_again, port);
        let outage = killed.elapsed();

        let (mut held_client, r) = held.join().unwrap();
        assert_eq!(
            r.unwrap_err(),
            CallError::PeerRestarted,
            "a reply awaited from the killed incarnation"
        );
        let (idem_client, r) = held_idempotent.join().unwrap();
        assert_eq!(r.unwrap(), body(1002, 100), "resent and answered");
        let (mut other, r) = queued.join().unwrap();
        assert_eq!(
            r.unwrap(),
            body(4, 5000),
            "queued, then sent to the new incarnation"
        );
        // The new incarnation serves new calls on the same pools.
        assert_eq!(
            held_client
                .call(&ECHO, &[(0, &body(5, 10))], CALL_TIMEOUT, decode)
                .unwrap(),
            body(5, 10)
        );
        assert_eq!(
            other
                .call(&ECHO, &[(0, &body(6, 10))], CALL_TIMEOUT, decode)
                .unwrap(),
            body(6, 10)
        );
        // Exactly once: the idempotent call was handled once by each incarnation (the
        // first died before replying), the default one only by the first.
        let mut second_lines = Vec::new();
        while !handled(&second_lines, &[ECHO.id]).contains(&6) {
            second_lines.push(format!("handled {}", second.wait_for_prefix("handled ")));
        }
        second_lines.extend(second.lines_so_far());
        let again = handled(&second_lines, &[HOLD.id, HOLD_IDEMPOTENT.id]);
        assert_eq!(again, vec![1002], "{second_lines:?}");
        assert_eq!(handled(&lines, &[HOLD.id]), vec![1001]);
        // The pools reconnected: to the first incarnation, then to another one, after
        // failed connects spaced by the backoff (over TCP: refused while no server ran).
        let mut incarnations = None;
        for (what, events) in [
            ("held", held_client.transport().take_events()),
            ("idempotent", idem_client.transport().take_events()),
            ("other", other.transport().take_events()),
        ] {
            let instances: Vec<u128> = events
                .iter()
                .filter_map(|e| match e {
                    ClientEvent::Connected { instance } => Some(*instance),
                    _ => None,
                })
                .collect();
            // `connect` took the first `Connected` of "other".
            let (first, last) = (instances.first(), instances.last());
            let (first, last) = (*first.expect(what), *last.expect(what));
            let (a, b) = *incarnations.get_or_insert((first, last));
            assert_ne!(a, b, "{what}: a new instance");
            assert_eq!(last, b, "{what}: {events:?}");
            if what != "other" {
                assert_eq!(first, a, "{what}: {events:?}");
            }
            let failed = events
                .iter()
                .filter(|e| matches!(e, ClientEvent::ConnectFailed(_)))
                .count();
            eprintln!("{what}: {} connects, {failed} failed", instances.len());
            if net == Net::Tcp && what == "other" {
                // It had a call queued for the whole outage: refused connects, spaced by
                // a backoff from 20 ms doubling to 200 ms (jittered down to half), so a
                // few for the ramp and then at most one per 100 ms; twice that is allowed.
                // Without a backoff a refused connect on loopback would come back in
                // microseconds, thousands of them.
                let bound = 10 + 2 * outage.as_millis() as usize / 100;
                assert!(
                    failed <= bound,
                    "{what}: {failed} failed connects in {outage:?} (at most {bound})"
                );
            }
        }
        second.kill9();
    });
    assert_fds_back_to(start_fds);
}

#[test]
fn server_sigkilled_mid_call_and_restarted_tcp() {
    if child_role().is_some() {
        return;
    }
    server_sigkilled_mid_call_and_restarted(Net::Tcp);
}

#[test]
fn server_sigkilled_mid_call_and_restarted_quic() {
    if child_role().is_some() {
        return;
    }
    server_sigkilled_mid_call_and_restarted(Net::Quic);
}
