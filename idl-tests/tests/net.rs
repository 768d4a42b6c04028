//! The generated stubs over TCP, changing only how they connect: `Client::connect_url`,
//! `AsyncClient::connect_url` and `serve_url` (real sockets on loopback), events from the
//! server, and the delivery kinds the IDL's `@one_shot`, `@idempotent` and `@ordered` give
//! each method (`idl/delivery.idl`). Every test has a watchdog.

// The helpers of shm-channel's integration tests (watchdog, runtime dirs, names).
#[path = "../../shm-channel/tests/support/mod.rs"]
mod support;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idl_tests::delivery::kinds;
use shm_channel::net::{ClientEvent, Endpoint, NetServer};
use shm_channel::rpc::{CallError, TransportError};
use support::{runtime_dir, unique_name, with_watchdog};

const LIMIT: Duration = Duration::from_secs(60);
/// A deadline no healthy call comes near.
const LONG: Duration = Duration::from_secs(30);

/// What the server saw, shared with the test.
#[derive(Default)]
struct Seen {
    /// `fetch` calls handled.
    fetches: u64,
    /// `push` / `push_any` numbers, in arrival order.
    pushed: Vec<u64>,
}

/// The `Kinds` server.
struct KindsImpl {
    seen: Arc<Mutex<Seen>>,
    /// When set, `fetch` and `slow` tell this sender they started, then never reply:
    /// see [`KindsImpl::maybe_hold`].
    started: Option<mpsc::Sender<()>>,
    hold: Option<mpsc::Receiver<()>>,
}

impl KindsImpl {
    fn new(seen: &Arc<Mutex<Seen>>) -> Self {
        KindsImpl {
            seen: Arc::clone(seen),
            started: None,
            hold: None,
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }

    /// A server that dies mid-call: says it started, then never replies (until the test
    /// drops the other end of `hold`).
    fn maybe_hold(&self) {
        if let (Some(started), Some(hold)) = (&self.started, &self.hold) {
            let _ = started.send(());
            let _ = hold.recv();
        }
    }
}

impl kinds::Server for KindsImpl {
    fn plain(&mut self, ctx: &kinds::Context<'_>, n: u64) -> u64 {
        // An event to the caller, over its connection, before the reply.
        ctx.events()
            .note(ctx.client(), n)
            .expect("event to the caller");
        n + 1
    }

    fn ping(&mut self, _ctx: &kinds::Context<'_>, n: u64) -> u64 {
        n + 1
    }

    fn fetch(&mut self, _ctx: &kinds::Context<'_>, n: u64) -> u64 {
        self.seen().fetches += 1;
        self.maybe_hold();
        n + 1
    }

    fn slow(&mut self, _ctx: &kinds::Context<'_>, n: u64) -> u64 {
        self.seen().fetches += 1;
        self.maybe_hold();
        n + 1
    }

    fn push(&mut self, _ctx: &kinds::Context<'_>, n: u64, _pad: &[u8]) {
        self.seen().pushed.push(n);
    }

    fn push_any(&mut self, _ctx: &kinds::Context<'_>, n: u64, _pad: &[u8]) {
        self.seen().pushed.push(n);
    }

    fn pushed(&mut self, _ctx: &kinds::Context<'_>) -> Vec<u64> {
        self.seen().pushed.clone()
    }
}

/// A loopback URL where nothing listens (yet).
fn free_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    format!("tcp://{}", l.local_addr().expect("its address"))
}

/// Serves what `make` builds at `url` with instance id `instance` (a new one is a
/// restarted server); retries while the port is still held by a server just killed.
fn serve_at(
    url: &str,
    make: impl Fn() -> KindsImpl,
    events: &kinds::Events,
    instance: u128,
) -> NetServer {
    let mut opts = kinds::serve_options();
    opts.config.instance = Some(instance);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match kinds::serve_url_with(url, make(), events, &opts) {
            Ok(net) => return net,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("serving {url}: {e}"),
        }
    }
}

/// A blocking client of `url` that connects in the background (calls wait for it).
fn lazy_client(url: &str) -> kinds::Client<Endpoint> {
    let mut c = kinds::Client::connect_url_with(url, &kinds::connect_options().lazy())
        .expect("a lazy client never fails to start");
    c.set_default_timeout(LONG);
    c
}

fn net(c: &mut kinds::Client<Endpoint>) -> &shm_channel::net::NetClient {
    c.rpc().transport().net().expect("a network endpoint")
}

/// Polls `pushed` until `n` numbers arrived.
fn wait_pushed(c: &mut kinds::Client<Endpoint>, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + LONG;
    loop {
        let got = c.pushed().expect("pushed");
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The same generated client and server trait over TCP: calls, typed replies, and an
/// event from the server to the caller through `ctx.events()`.
#[test]
fn generated_client_and_server_talk_over_tcp_with_events() {
    with_watchdog(LIMIT, || {
        let seen = Arc::default();
        let events = kinds::Events::new();
        let server = kinds::serve_url("tcp://127.0.0.1:0", KindsImpl::new(&seen), &events)
            .expect("serve on a free port");
        let url = format!("tcp://{}", server.local_addr());
        let mut c = kinds::Client::connect_url(&url).expect("connect");
        assert_eq!(c.version(), kinds::VERSION);
        for n in 0..20 {
            assert_eq!(c.plain(n), Ok(n + 1));
            assert_eq!(
                c.recv_event(LONG),
                Ok(kinds::Event::Note { n }),
                "the event of call {n}"
            );
        }
        // The server knows the client as a network channel and can broadcast to it.
        assert_eq!(events.clients().len(), 1);
        let report = events.broadcast_note(99).expect("broadcast");
        assert_eq!(report.sent, 1, "{report:?}");
        assert_eq!(c.recv_event(LONG), Ok(kinds::Event::Note { n: 99 }));
        drop(c);
        // The client's leaving takes it out of the event hub.
        let deadline = Instant::now() + LONG;
        while !events.clients().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(events.clients().is_empty(), "{:?}", events.clients());
    });
}

/// The async client connects by URL too, with many calls in flight on one pool.
#[test]
fn async_client_connects_by_url() {
    with_watchdog(LIMIT, || {
        let seen = Arc::default();
        let events = kinds::Events::new();
        let server =
            kinds::serve_url("tcp://127.0.0.1:0", KindsImpl::new(&seen), &events).expect("serve");
        let url = format!("tcp://{}", server.local_addr());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let c = kinds::AsyncClient::connect_url(&url)
                .await
                .expect("connect");
            let calls = (0..50u64).map(|n| {
                let c = c.clone();
                tokio::spawn(async move { c.ping(n).await })
            });
            for (n, call) in calls.enumerate() {
                assert_eq!(call.await.expect("task"), Ok(n as u64 + 1));
            }
        });
    });
}

/// `connect_url` with a plain name (or `shm://`) is the shm channel, as `connect`.
#[test]
fn a_plain_name_still_means_shared_memory() {
    with_watchdog(LIMIT, || {
        let dir = runtime_dir();
        let name = unique_name("kinds");
        let stop = Arc::new(AtomicBool::new(false));
        let serving = {
            let (dir, name, stop) = (dir.clone(), name.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let opts = shm_channel::rpc::ServeOptions {
                    stop: Some(stop),
                    ..Default::default()
                };
                let seen = Arc::default();
                kinds::serve_with(
                    &name,
                    KindsImpl::new(&seen),
                    kinds::service_config().runtime_dir(dir),
                    &kinds::Events::new(),
                    &opts,
                )
            })
        };
        let mut options = kinds::connect_options();
        options.shm = kinds::client_config().runtime_dir(&dir);
        let deadline = Instant::now() + LONG;
        for url in [name.clone(), format!("shm://{name}")] {
            let mut c = loop {
                match kinds::Client::connect_url_with(&url, &options) {
                    Ok(c) => break c,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("connect {url}: {e}"),
                }
            };
            assert!(c.rpc().transport().shm().is_some(), "{url} is not shm");
            assert_eq!(c.ping(1), Ok(2));
        }
        stop.store(true, Ordering::Relaxed);
        serving.join().expect("serve thread").expect("serve");
    });
}

/// Bad URLs are refused with an error that names them; `tls://` and `quic://` without
/// TLS roots say what they need.
#[test]
fn bad_urls_are_refused_with_their_reason() {
    for url in ["udp://h:1", "tcp://nohost", "", "a/b"] {
        let e = kinds::Client::connect_url(url).expect_err(url);
        assert!(e.to_string().contains(&format!("{url:?}")), "{url}: {e}");
    }
    let e = kinds::Client::connect_url("tls://127.0.0.1:9").expect_err("tls");
    assert!(e.to_string().contains("TLS settings"), "{e}");
    // (Or, where shm-channel's `quic` feature is off, that this build has no QUIC.)
    let e = kinds::Client::connect_url("quic://127.0.0.1:9").expect_err("quic");
    let e = e.to_string();
    assert!(
        e.contains("TLS settings") || e.contains("no connector"),
        "{e}"
    );
    // A TCP URL with nobody listening fails within the wait, naming the URL.
    let url = free_url();
    let opts = kinds::connect_options().wait_for(Duration::from_secs(5));
    let e = kinds::Client::connect_url_with(&url, &opts).expect_err("nobody listens");
    assert!(e.to_string().contains(&url), "{e}");
}

/// Each method constant carries its IDL delivery, as RPC flag bits; events none.
#[test]
fn method_constants_carry_their_delivery() {
    use shm_channel::rpc::flags;
    assert_eq!(kinds::PLAIN.delivery, 0);
    assert_eq!(kinds::PING.delivery, flags::ONE_SHOT);
    assert_eq!(kinds::FETCH.delivery, flags::IDEMPOTENT);
    assert_eq!(kinds::PUSH.delivery, flags::ORDERED);
    assert_eq!(kinds::NOTE.delivery, 0);
}

/// `@one_shot`: with no connection the call fails at once (`NotConnected`), though its
/// deadline is long; a default call in the same spot waits in the queue instead.
#[test]
fn one_shot_call_without_a_server_fails_at_once() {
    with_watchdog(LIMIT, || {
        let url = free_url();
        let mut c = lazy_client(&url);
        assert_eq!(
            c.ping(1),
            Err(CallError::Transport(TransportError::NotConnected))
        );
        // The default kind waits for a connection until its deadline.
        assert_eq!(
            c.with_timeout(Duration::from_millis(200)).plain(1),
            Err(CallError::Timeout)
        );
    });
}

/// Default delivery: one-way messages queued while no server exists are sent once it
/// appears (the pool's connects failed meanwhile); a call made then is answered.
#[test]
fn default_messages_queued_before_the_server_exists_are_sent_once_it_appears() {
    with_watchdog(LIMIT, || {
        let url = free_url();
        let mut c = lazy_client(&url);
        for n in 0..5 {
            c.push_any(n, &[0; 16]).expect("queued");
        }
        // Nobody listens: the pool's connect failed, and the messages still wait.
        let failed = net(&mut c).wait_event(LONG, |e| matches!(e, ClientEvent::ConnectFailed(_)));
        assert!(failed.is_some(), "no failed connect while nobody listened");
        assert_eq!(net(&mut c).messages_sent(), 0);
        let seen = Arc::default();
        let _server = serve_at(&url, || KindsImpl::new(&seen), &kinds::Events::new(), 1);
        assert_eq!(wait_pushed(&mut c, 5), [0, 1, 2, 3, 4]);
        assert_eq!(c.plain(7), Ok(8));
    });
}

/// `@ordered`: large and small one-way messages queued together arrive in the order
/// they were sent; the same messages with the default delivery do not (the small ones
/// overtake the large one, as multiplexing means them to), which shows what the
/// attribute changes.
#[test]
fn ordered_calls_arrive_in_order() {
    with_watchdog(LIMIT, || {
        let big = vec![7u8; 512 * 1024];
        let sizes = |n: u64| {
            if n.is_multiple_of(4) {
                &big[..]
            } else {
                &big[..8]
            }
        };
        // Ordered, queued before the server exists so they all leave at once.
        let url = free_url();
        let mut c = lazy_client(&url);
        for n in 0..16 {
            c.push(n, sizes(n)).expect("queued");
        }
        let seen = Arc::default();
        let server = serve_at(&url, || KindsImpl::new(&seen), &kinds::Events::new(), 1);
        let got = wait_pushed(&mut c, 16);
        assert_eq!(got, (0..16).collect::<Vec<_>>());
        drop((c, server));

        // The default kind, same messages: the small ones finish first.
        let url = free_url();
        let mut c = lazy_client(&url);
        for n in 0..16 {
            c.push_any(n, sizes(n)).expect("queued");
        }
        let seen = Arc::default();
        let _server = serve_at(&url, || KindsImpl::new(&seen), &kinds::Events::new(), 1);
        let mut got = wait_pushed(&mut c, 16);
        assert_ne!(got, (0..16).collect::<Vec<_>>(), "nothing overtook");
        got.sort_unstable();
        assert_eq!(got, (0..16).collect::<Vec<_>>());
    });
}

/// `@idempotent`: a call whose server dies before replying is resent to the restarted
/// server (a new instance) and answered once; a default call in the same spot fails
/// with `PeerRestarted` (a reply is never taken from an incarnation that did not get it).
#[test]
fn idempotent_call_survives_a_server_restart() {
    with_watchdog(LIMIT, || {
        for idempotent in [true, false] {
            let url = free_url();
            let seen = Arc::new(Mutex::new(Seen::default()));
            let (started_tx, started) = mpsc::channel();
            let (release, hold) = mpsc::channel::<()>();
            let hold = Mutex::new(Some(hold));
            let first = || KindsImpl {
                seen: Arc::clone(&seen),
                started: Some(started_tx.clone()),
                hold: hold.lock().unwrap().take(),
            };
            let events = kinds::Events::new();
            let old = serve_at(&url, first, &events, 1);
            let mut c = kinds::Client::connect_url(&url).expect("connect");
            c.set_default_timeout(LONG);
            let call = std::thread::spawn(move || {
                let r = if idempotent { c.fetch(7) } else { c.slow(7) };
                (r, c)
            });
            // The first server has the call and will never answer it; then it dies.
            started
                .recv_timeout(LONG)
                .expect("the first server got the call");
            drop(old);
            let seen2 = Arc::new(Mutex::new(Seen::default()));
            let _new = serve_at(&url, || KindsImpl::new(&seen2), &events, 2);
            let (result, _c) = call.join().expect("caller");
            if idempotent {
                assert_eq!(result, Ok(8));
                assert_eq!(seen2.lock().unwrap().fetches, 1, "answered once");
            } else {
                assert_eq!(result, Err(CallError::PeerRestarted));
                assert_eq!(seen2.lock().unwrap().fetches, 0, "not resent");
            }
            assert_eq!(seen.lock().unwrap().fetches, 1);
            drop(release);
        }
    });
}
