//! The RPC layer between real processes: this test binary re-executes itself (`rpc_child`)
//! to play the server. Every test uses its own runtime directory and service name; every
//! blocking step has a watchdog.

mod support;

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use shm_channel::Channel;
use shm_channel::event_loop::EventLoop;
use shm_channel::ring::WaitPolicy;
use shm_channel::rpc::{
    self, CallError, Client, EventHub, EventItem, HandlerError, IncomingMessage, Method, RawError,
    ServeOptions,
};
use shm_channel::service::{self, ClientConfig, Service, ServiceConfig};
use support::{ChildGuard, child_role, unique_name, with_watchdog};

const PROTOCOL: &str = "RpcTest";
const STEP: Duration = Duration::from_secs(10);
const LIMIT: Duration = Duration::from_secs(30);

const DIR_ENV: &str = "SHM_RPC_TEST_DIR";
const NAME_ENV: &str = "SHM_RPC_TEST_NAME";
const VERSION_ENV: &str = "SHM_RPC_TEST_VERSION";
/// Set for a `channel-server` that polls (`WaitPolicy::SPIN`).
const SPIN_ENV: &str = "SHM_RPC_TEST_SPIN";

const ECHO: Method = Method::new("echo", 1);
const SLOW: Method = Method::new("slow", 2);
const PANIC: Method = Method::new("panic", 3);
const FAIL: Method = Method::new("fail", 4);
const COUNT: Method = Method::new("count", 5);
const EVENTS: Method = Method::new("events", 6);
const SLEEP: Method = Method::new("sleep", 7);
const NOOP: Method = Method::new("noop", 8);
const UNKNOWN: Method = Method::new("unknown", 9);
const NEWER: Method = Method::new("newer", 10).since(2);
const BROADCAST: Method = Method::new("broadcast", 11);
/// The message id of the test events.
const TICK: u64 = 100;

fn u64_of(data: Option<&[u8]>) -> u64 {
    u64::from_le_bytes(data.expect("object").try_into().expect("8 bytes"))
}

/// The server: a service with an event loop, dispatching the methods above.
fn run_server(dir: &Path, name: &str, version: u32) {
    let config = ServiceConfig::new(PROTOCOL, 1..=version)
        .ring_sizes(1 << 20, 1 << 20)
        .runtime_dir(dir);
    let service = Service::bind(name, config).expect("bind");
    let mut event_loop = EventLoop::new(service).expect("event loop");
    let hub = EventHub::new();
    let events = hub.clone();
    let mut dispatched = 0u64;
    let mut ticks = 0u64;
    println!("ready");
    let handler = move |req: &rpc::RequestView<'_>, resp: rpc::Responder<'_>| {
        let id = req.message_id();
        if id == COUNT.id {
            return resp.reply(&[(0, &dispatched.to_le_bytes())]);
        }
        dispatched += 1;
        match id {
            1 => {
                let m = req.message();
                let objects: Vec<(u64, &[u8])> = (0..m.object_count())
                    .filter_map(|i| m.object_at(i))
                    .collect();
                resp.reply(&objects)
            }
            2 => {
                thread::sleep(Duration::from_millis(u64_of(req.object(0))));
                resp.reply(&[(0, req.object(0).unwrap_or_default())])
            }
            3 => panic!("boom {}", req.request_id()),
            4 => Err(HandlerError::Remote(b"bad thing".to_vec())),
            6 => {
                let n = u64_of(req.object(0));
                let channel = req.channel().expect("served as a service");
                for _ in 0..n {
                    // A full client ring drops the event; the test sizes keep it from filling.
                    let _ = events.send_to(channel, TICK, &[(0, &ticks.to_le_bytes())], STEP);
                    ticks += 1;
                }
                resp.reply(&[(0, &n.to_le_bytes())])
            }
            7 => {
                thread::sleep(Duration::from_millis(u64_of(req.object(0))));
                resp.done()
            }
            8 => resp.done(),
            11 => {
                let report = events.broadcast(TICK, &[(0, &ticks.to_le_bytes())], STEP);
                ticks += 1;
                assert!(report.failed.is_empty(), "{report:?}");
                resp.reply(&[(0, &(report.sent as u64).to_le_bytes())])
            }
            _ => Err(HandlerError::UnknownMethod),
        }
    };
    rpc::serve_service(&mut event_loop, &hub, handler, &ServeOptions::default()).expect("serve");
}

/// The child roles.
#[test]
fn rpc_child() {
    let Some(role) = child_role() else { return };
    // Method 3 panics on purpose.
    support::quiet_expected_panics("boom");
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("dir env"));
    let name = std::env::var(NAME_ENV).expect("name env");
    let version = std::env::var(VERSION_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    match role.as_str() {
        "server" => run_server(&dir, &name, version),
        "channel-server" => {
            // One client on one channel, served by `serve_channel`; every echo is preceded
            // by an event carrying the same bytes.
            let config = ServiceConfig::new(PROTOCOL, 1..=version)
                .ring_sizes(1 << 20, 1 << 20)
                .runtime_dir(&dir);
            let mut service = Service::bind(&name, config).expect("bind");
            println!("ready");
            let mut channel = service.accept_timeout(STEP).expect("accept");
            if std::env::var_os(SPIN_ENV).is_some() {
                channel.set_wait_policy(WaitPolicy::SPIN);
            }
            let events = rpc::Transport::sender(&channel);
            let end = rpc::serve_channel(
                &mut channel,
                |req: &rpc::RequestView<'_>, resp: rpc::Responder<'_>| match req.message_id() {
                    1 => {
                        let data = req.object(0).unwrap_or_default();
                        rpc::send_event(&events, TICK, &[(0, data)], STEP)?;
                        resp.reply(&[(0, data)])
                    }
                    3 => panic!("boom"),
                    _ => Err(HandlerError::UnknownMethod),
                },
                &ServeOptions::default(),
            )
            .expect("serve");
            println!("served: {end:?}");
        }
        "client-deaf" => {
            // Sends large requests and never reads the replies: the server's reply ring to
            // it fills up.
            let channel = connect(&dir, &name);
            let sender = rpc::Transport::sender(&channel);
            let data = vec![1u8; 64 << 10];
            for id in 1..=24u64 {
                let out = rpc::Outgoing::new(ECHO.id, shm_channel::Kind::Request).request_id(id);
                rpc::send_objects(&sender, &out, &[(0, &data)], STEP).expect("send");
            }
            println!("flooded");
            thread::sleep(Duration::from_secs(60));
        }
        "client-forever" => {
            // A client that calls in a loop until it is killed.
            let mut client = Client::new(connect(&dir, &name));
            println!("ready");
            loop {
                let _ = client.call(&ECHO, &[(0, b"x")], STEP, |_| Ok(()));
            }
        }
        other => panic!("unknown role {other}"),
    }
}

struct Setup {
    server: ChildGuard,
    dir: PathBuf,
    name: String,
}

/// Starts a server process speaking versions `1..=version`.
fn start_server(version: u32) -> Setup {
    let dir = std::env::temp_dir().join(unique_name("rpc-rt"));
    let name = unique_name("rpc");
    let env = [
        (DIR_ENV, dir.display().to_string()),
        (NAME_ENV, name.clone()),
        (VERSION_ENV, version.to_string()),
    ];
    let mut server = ChildGuard::spawn("rpc_child", "server", &env);
    server.wait_for_line("ready");
    Setup { server, dir, name }
}

fn connect(dir: &Path, name: &str) -> Channel {
    let config = ClientConfig::new(PROTOCOL, 1..=3)
        .ring_sizes(1 << 20, 1 << 20)
        .runtime_dir(dir)
        .timeout(STEP);
    service::connect(name, &config).expect("connect")
}

fn client(s: &Setup) -> Client<Channel> {
    Client::new(connect(&s.dir, &s.name))
}

fn echo(c: &mut Client<Channel>, data: &[u8]) -> Result<Vec<u8>, CallError> {
    c.call(&ECHO, &[(0, data)], STEP, |m| {
        m.object(0).map(<[u8]>::to_vec).ok_or("no object".into())
    })
}

fn count(c: &mut Client<Channel>) -> u64 {
    c.call(&COUNT, &[], STEP, |m| Ok(u64_of(m.object(0))))
        .expect("count")
}

fn payload(seq: u64) -> Vec<u8> {
    let len = (seq.wrapping_mul(2_654_435_761) % 4096) as usize;
    (0..len).map(|i| (seq as usize + i * 7) as u8).collect()
}

#[test]
fn round_trip_1000_calls() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let mut c = client(&s);
        assert_eq!(c.version(), 3);
        for seq in 0..1000 {
            let data = payload(seq);
            assert_eq!(echo(&mut c, &data).expect("echo"), data, "call {seq}");
        }
        // Two objects come back in order.
        let both = c
            .call(&ECHO, &[(7, b"a"), (9, b"bc")], STEP, |m| {
                Ok((
                    m.object_at(0).map(|(i, d)| (i, d.to_vec())),
                    m.object(9).map(<[u8]>::to_vec),
                ))
            })
            .expect("two objects");
        assert_eq!(both, (Some((7, b"a".to_vec())), Some(b"bc".to_vec())));
        assert_eq!(count(&mut c), 1001);
        drop(s);
    });
}

#[test]
fn zero_copy_fill_in_place() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let mut c = client(&s);
        let n = 100_000u64;
        let sum = c
            .call_with(
                &ECHO,
                &[n],
                |sink| {
                    let buf = sink.object(0, n)?;
                    for (i, b) in buf.iter_mut().enumerate() {
                        *b = i as u8;
                    }
                    Ok(())
                },
                STEP,
                |m| {
                    Ok(m.object(0)
                        .map(|d| d.iter().map(|&b| u64::from(b)).sum::<u64>()))
                },
            )
            .expect("call");
        assert_eq!(sum, Some((0..n).map(|i| i % 256).sum()));
        // A fill that writes less than announced sends nothing.
        let err = c
            .call_with(&ECHO, &[8], |_| Ok(()), STEP, |_| Ok(()))
            .expect_err("short fill");
        assert!(
            matches!(err, CallError::Transport(rpc::TransportError::Layout(_))),
            "{err:?}"
        );
        assert_eq!(count(&mut c), 1);
        drop(s);
    });
}

#[test]
fn timeout_then_late_reply_discarded() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let mut c = client(&s);
        let t = Instant::now();
        let err = c
            .call(
                &SLOW,
                &[(0, &2_000u64.to_le_bytes())],
                Duration::from_millis(50),
                |_| Ok(()),
            )
            .expect_err("slow");
        assert_eq!(err, CallError::Timeout);
        assert!(
            t.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            t.elapsed()
        );
        // The next call gets its own reply, not the late one.
        assert_eq!(echo(&mut c, b"after").expect("echo"), b"after");
        assert_eq!(c.late_replies(), 1);
        drop(s);
    });
}

#[test]
fn peer_died_during_call() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let mut c = client(&s);
        assert_eq!(echo(&mut c, b"hi").expect("echo"), b"hi");
        let Setup { server, .. } = s;
        let killer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            server.kill9();
        });
        let t = Instant::now();
        let err = c
            .call(
                &SLOW,
                &[(0, &20_000u64.to_le_bytes())],
                Duration::from_secs(25),
                |_| Ok(()),
            )
            .expect_err("server killed");
        assert_eq!(err, CallError::PeerDied);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        killer.join().expect("killer");
        // Later calls fail at once too.
        assert_eq!(echo(&mut c, b"x").expect_err("dead"), CallError::PeerDied);
    });
}

#[test]
fn panicking_handler_fails_only_its_call() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let mut c = client(&s);
        match c.call(&PANIC, &[], STEP, |_| Ok(())) {
            Err(CallError::Fault(why)) => assert!(why.contains("boom"), "{why}"),
            other => panic!("expected a fault, got {other:?}"),
        }
        assert_eq!(echo(&mut c, b"still here").expect("echo"), b"still here");
        // The method's own error, and an unknown method.
        assert_eq!(
            c.call(&FAIL, &[], STEP, |_| Ok(())),
            Err(CallError::Remote(RawError(b"bad thing".to_vec())))
        );
        let typed: CallError<String> = c
            .call(&FAIL, &[], STEP, |_| Ok(()))
            .expect_err("fails")
            .try_map_remote(|raw| String::from_utf8(raw.0).map_err(|e| e.to_string()));
        assert_eq!(typed, CallError::Remote("bad thing".to_owned()));
        assert_eq!(
            c.call(&UNKNOWN, &[], STEP, |_| Ok(())),
            Err(CallError::UnknownMethod {
                message_id: UNKNOWN.id
            })
        );
        assert_eq!(echo(&mut c, b"and here").expect("echo"), b"and here");
        drop(s);
    });
}

#[test]
fn since_against_older_server_sends_nothing() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(1);
    with_watchdog(LIMIT, move || {
        let mut c = client(&s);
        assert_eq!(c.version(), 1);
        let unsupported = CallError::Unsupported {
            method: "newer",
            since: 2,
            peer_version: 1,
        };
        assert_eq!(
            c.call(&NEWER, &[(0, b"x")], STEP, |_| Ok(())),
            Err(unsupported.clone())
        );
        assert_eq!(
            c.send_oneway(&NEWER, &[], STEP, false),
            Err(unsupported.clone())
        );
        assert_eq!(c.send_sync(&NEWER, &[], STEP), Err(unsupported));
        // The server saw nothing before this call.
        assert_eq!(count(&mut c), 0);
        drop(s);
    });
}

#[test]
fn no_queue_dropped_when_ring_full() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let mut c = client(&s);
        // The server sleeps in a one-way handler while the client fills its ring.
        c.send_oneway(&SLEEP, &[(0, &2_000u64.to_le_bytes())], STEP, false)
            .expect("sleep");
        let data = vec![7u8; 1024];
        let t = Instant::now();
        let mut sent = 0;
        let dropped = loop {
            match c.send_oneway(&ECHO, &[(0, &data)], STEP, true) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 10_000, "the ring never filled");
        };
        assert_eq!(dropped, CallError::Dropped);
        assert!(
            t.elapsed() < Duration::from_millis(1_500),
            "no_queue waited: {:?}",
            t.elapsed()
        );
        // Everything that was sent is handled, then the count call.
        assert_eq!(count(&mut c), 1 + sent);
        drop(s);
    });
}

#[test]
fn sync_oneway_waits_for_completion() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let mut c = client(&s);
        let t = Instant::now();
        c.send_sync(&SLEEP, &[(0, &200u64.to_le_bytes())], STEP)
            .expect("sync");
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        c.send_sync(&NOOP, &[], STEP).expect("sync noop");
        // A plain one-way returns at once.
        let t = Instant::now();
        c.send_oneway(&SLEEP, &[(0, &1_000u64.to_le_bytes())], STEP, false)
            .expect("one-way");
        assert!(
            t.elapsed() < Duration::from_millis(800),
            "{:?}",
            t.elapsed()
        );
        // A panicking @sync handler is reported; a panicking plain one-way is not, and the
        // server lives on.
        assert!(matches!(
            c.send_sync(&PANIC, &[], STEP),
            Err(CallError::Fault(_))
        ));
        c.send_oneway(&PANIC, &[], STEP, false)
            .expect("one-way panic");
        assert_eq!(count(&mut c), 5);
        drop(s);
    });
}

fn tick(item: EventItem) -> u64 {
    match item {
        EventItem::Event(m) => {
            assert_eq!(m.message_id, TICK);
            u64_of(m.object(0))
        }
        other => panic!("expected an event, got {other:?}"),
    }
}

fn emit(c: &mut Client<Channel>, n: u64) {
    let got = c
        .call(&EVENTS, &[(0, &n.to_le_bytes())], STEP, |m| {
            Ok(u64_of(m.object(0)))
        })
        .expect("events");
    assert_eq!(got, n);
}

#[test]
fn events_interleaved_with_replies_in_order() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let mut c = client(&s);
        emit(&mut c, 5);
        assert_eq!(echo(&mut c, b"between").expect("echo"), b"between");
        emit(&mut c, 3);
        assert_eq!(c.queued_events(), 8);
        for expect in 0..8 {
            assert_eq!(tick(c.recv_event(STEP).expect("event")), expect);
        }
        assert!(c.try_recv_event().expect("try").is_none());
        // An event that arrives while nobody calls is received directly.
        emit(&mut c, 1);
        assert_eq!(tick(c.recv_event(STEP).expect("event")), 8);
        drop(s);
    });
}

#[test]
fn event_queue_overflow_is_reported() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let mut c = client(&s).with_event_queue(4);
        emit(&mut c, 10);
        for expect in 0..4 {
            assert_eq!(tick(c.recv_event(STEP).expect("event")), expect);
        }
        assert_eq!(c.recv_event(STEP), Ok(EventItem::Lost { count: 6 }));
        emit(&mut c, 2);
        assert_eq!(tick(c.recv_event(STEP).expect("event")), 10);
        assert_eq!(tick(c.recv_event(STEP).expect("event")), 11);
        drop(s);
    });
}

#[test]
fn cancel_from_another_thread() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let mut c = client(&s);
        let handle = c.cancel_handle();
        assert!(!handle.cancel(), "nothing in flight");
        let canceler = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            handle.cancel()
        });
        let t = Instant::now();
        let err = c
            .call(&SLOW, &[(0, &3_000u64.to_le_bytes())], STEP, |_| Ok(()))
            .expect_err("canceled");
        assert_eq!(err, CallError::Canceled);
        assert!(
            t.elapsed() < Duration::from_millis(2_000),
            "{:?}",
            t.elapsed()
        );
        assert!(canceler.join().expect("canceler"));
        // The late reply is discarded; the next call gets its own.
        assert_eq!(echo(&mut c, b"next").expect("echo"), b"next");
        assert_eq!(c.late_replies(), 1);
        drop(s);
    });
}

#[test]
fn other_clients_survive_a_killed_client() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let env = [
            (DIR_ENV, s.dir.display().to_string()),
            (NAME_ENV, s.name.clone()),
        ];
        let mut victim = ChildGuard::spawn("rpc_child", "client-forever", &env);
        victim.wait_for_line("ready");
        let mut c = client(&s);
        for i in 0..100u64 {
            assert_eq!(
                echo(&mut c, &i.to_le_bytes()).expect("echo"),
                i.to_le_bytes()
            );
        }
        victim.kill9();
        for i in 0..100u64 {
            assert_eq!(
                echo(&mut c, &i.to_le_bytes()).expect("echo"),
                i.to_le_bytes()
            );
        }
        drop(s);
    });
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn client_config(s: &Setup) -> ClientConfig {
    ClientConfig::new(PROTOCOL, 1..=3)
        .ring_sizes(1 << 20, 1 << 20)
        .runtime_dir(&s.dir)
        .timeout(STEP)
}

#[test]
fn async_eight_concurrent_calls_on_one_channel() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        runtime().block_on(async {
            let c = std::sync::Arc::new(
                rpc::AsyncClient::connect(&s.name, &client_config(&s))
                    .await
                    .expect("connect"),
            );
            for round in 0..50u64 {
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..8u64 {
                    let c = std::sync::Arc::clone(&c);
                    tasks.spawn(async move {
                        let data = payload(round * 8 + i);
                        let got = c
                            .call(&ECHO, &[(0, &data)], STEP, |m| {
                                Ok(m.object(0).map(<[u8]>::to_vec))
                            })
                            .await
                            .expect("call");
                        assert_eq!(got.as_deref(), Some(&data[..]));
                    });
                }
                while let Some(r) = tasks.join_next().await {
                    r.expect("task");
                }
            }
            // Eight slow calls really are in flight together.
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..8u64 {
                let c = std::sync::Arc::clone(&c);
                tasks.spawn(async move {
                    let ms = 20 + i;
                    let got = c
                        .call(&SLOW, &[(0, &ms.to_le_bytes())], STEP, |m| {
                            Ok(u64_of(m.object(0)))
                        })
                        .await
                        .expect("slow");
                    assert_eq!(got, ms);
                });
            }
            let deadline = Instant::now() + STEP;
            while c.in_flight() < 8 && Instant::now() < deadline && !tasks.is_empty() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            assert!(c.in_flight() >= 7, "only {} in flight", c.in_flight());
            while let Some(r) = tasks.join_next().await {
                r.expect("task");
            }
            assert_eq!(c.late_replies(), 0);
        });
        drop(s);
    });
}

/// Many calls in flight on one channel from tasks of a current-thread runtime, whose one
/// thread also runs the client's reader task (and its spin before parking): each call gets
/// its own reply.
#[test]
fn async_concurrent_calls_on_a_current_thread_runtime() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let c = std::sync::Arc::new(
                rpc::AsyncClient::connect(&s.name, &client_config(&s))
                    .await
                    .expect("connect"),
            );
            for round in 0..20u64 {
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..32u64 {
                    let c = std::sync::Arc::clone(&c);
                    tasks.spawn(async move {
                        let data = payload(round * 32 + i);
                        let got = c
                            .call(&ECHO, &[(0, &data)], STEP, |m| {
                                Ok(m.object(0).map(<[u8]>::to_vec))
                            })
                            .await
                            .expect("call");
                        assert_eq!(got.as_deref(), Some(&data[..]));
                    });
                }
                while let Some(r) = tasks.join_next().await {
                    r.expect("task");
                }
            }
            assert_eq!(c.late_replies(), 0);
            assert_eq!(c.in_flight(), 0);
        });
        drop(s);
    });
}

#[test]
fn async_drop_cancels_timeout_events_and_errors() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        runtime().block_on(async {
            let c = rpc::AsyncClient::connect(&s.name, &client_config(&s))
                .await
                .expect("connect");
            // Dropping a call's future cancels it; its late reply is discarded.
            let ms = 200u64.to_le_bytes();
            let args = [(0, &ms[..])];
            let slow = c.call(&SLOW, &args, STEP, |_| Ok(()));
            assert!(
                tokio::time::timeout(Duration::from_millis(20), slow)
                    .await
                    .is_err()
            );
            assert_eq!(c.in_flight(), 0);
            let err = c
                .call(
                    &SLOW,
                    &[(0, &200u64.to_le_bytes())],
                    Duration::from_millis(20),
                    |_| Ok(()),
                )
                .await
                .expect_err("timeout");
            assert_eq!(err, CallError::Timeout);
            let echoed = c
                .call(&ECHO, &[(0, b"after")], STEP, |m| {
                    Ok(m.object(0).map(<[u8]>::to_vec))
                })
                .await
                .expect("echo");
            assert_eq!(echoed.as_deref(), Some(&b"after"[..]));
            assert_eq!(c.late_replies(), 2);
            // Events interleaved with replies, in order.
            for n in [3u64, 2] {
                let got = c
                    .call(&EVENTS, &[(0, &n.to_le_bytes())], STEP, |m| {
                        Ok(u64_of(m.object(0)))
                    })
                    .await
                    .expect("events");
                assert_eq!(got, n);
            }
            for expect in 0..5 {
                assert_eq!(tick(c.recv_event().await.expect("event")), expect);
            }
            // Errors, @sync, @since.
            assert!(matches!(
                c.call(&PANIC, &[], STEP, |_| Ok(())).await,
                Err(CallError::Fault(_))
            ));
            assert_eq!(
                c.call(&FAIL, &[], STEP, |_| Ok(())).await,
                Err(CallError::Remote(RawError(b"bad thing".to_vec())))
            );
            c.send_sync(&NOOP, &[], STEP).await.expect("sync");
            // @no_queue against a full ring, async.
            c.send_oneway(&SLEEP, &[(0, &1_000u64.to_le_bytes())], STEP, false)
                .await
                .expect("sleep");
            let data = vec![3u8; 1024];
            let mut sent = 0;
            let dropped = loop {
                match c.send_oneway(&NOOP, &[(0, &data)], STEP, true).await {
                    Ok(()) => sent += 1,
                    Err(e) => break e,
                }
                assert!(sent < 10_000, "the ring never filled");
            };
            assert_eq!(dropped, CallError::Dropped);
            c.send_oneway(&NOOP, &[], STEP, false)
                .await
                .expect("one-way");
            assert!(matches!(
                c.call(&NEWER.since(4), &[], STEP, |_| Ok(())).await,
                Err(CallError::Unsupported { .. })
            ));
        });
        drop(s);
    });
}

#[test]
fn async_peer_died_fails_pending_calls() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        runtime().block_on(async {
            let c = rpc::AsyncClient::connect(&s.name, &client_config(&s))
                .await
                .expect("connect");
            let Setup { server, .. } = s;
            let killer = std::thread::spawn(move || {
                thread::sleep(Duration::from_millis(200));
                server.kill9();
            });
            let err = c
                .call(
                    &SLOW,
                    &[(0, &20_000u64.to_le_bytes())],
                    Duration::from_secs(25),
                    |_| Ok(()),
                )
                .await
                .expect_err("killed");
            assert_eq!(err, CallError::PeerDied);
            killer.join().expect("killer");
            assert_eq!(
                c.call(&ECHO, &[], STEP, |_| Ok(())).await,
                Err(CallError::PeerDied)
            );
        });
    });
}

#[test]
fn serve_one_channel_until_the_client_leaves() {
    if child_role().is_some() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name("rpc-rt"));
    let name = unique_name("rpc");
    let env = [
        (DIR_ENV, dir.display().to_string()),
        (NAME_ENV, name.clone()),
    ];
    let mut server = ChildGuard::spawn("rpc_child", "channel-server", &env);
    server.wait_for_line("ready");
    let server = with_watchdog(LIMIT, move || {
        let mut c = Client::new(connect(&dir, &name));
        for i in 0..100u64 {
            assert_eq!(
                echo(&mut c, &i.to_le_bytes()).expect("echo"),
                i.to_le_bytes()
            );
        }
        assert!(matches!(
            c.call(&PANIC, &[], STEP, |_| Ok(())),
            Err(CallError::Fault(_))
        ));
        assert_eq!(echo(&mut c, b"alive").expect("echo"), b"alive");
        for i in 0..100u64 {
            match c.recv_event(STEP).expect("event") {
                EventItem::Event(m) => assert_eq!(m.object(0), Some(&i.to_le_bytes()[..])),
                other => panic!("{other:?}"),
            }
        }
        drop(c);
        server.wait_for_line("served: PeerDied");
        server
    });
    assert!(server.wait().success(), "the server failed");
}

/// A polling server is never woken by its client's leaving: `serve_channel` must look
/// between waits, and end.
#[test]
fn polling_server_ends_when_the_client_leaves() {
    if child_role().is_some() {
        return;
    }
    let dir = std::env::temp_dir().join(unique_name("rpc-rt"));
    let name = unique_name("rpc");
    let env = [
        (DIR_ENV, dir.display().to_string()),
        (NAME_ENV, name.clone()),
        (SPIN_ENV, "1".to_owned()),
    ];
    let mut server = ChildGuard::spawn("rpc_child", "channel-server", &env);
    server.wait_for_line("ready");
    let server = with_watchdog(LIMIT, move || {
        let mut c = Client::new(connect(&dir, &name));
        assert_eq!(echo(&mut c, b"spin").expect("echo"), b"spin");
        drop(c);
        server.wait_for_line("served: PeerDied");
        server
    });
    assert!(server.wait().success(), "the server failed");
}

#[test]
fn broadcast_reaches_every_client() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let mut a = client(&s);
        let mut b = client(&s);
        // Both are known to the server once each has been served once.
        assert_eq!(echo(&mut b, b"b").expect("echo"), b"b");
        let sent = a
            .call(&BROADCAST, &[], STEP, |m| Ok(u64_of(m.object(0))))
            .expect("broadcast");
        assert_eq!(sent, 2);
        assert_eq!(tick(a.recv_event(STEP).expect("a's event")), 0);
        assert_eq!(tick(b.recv_event(STEP).expect("b's event")), 0);
        drop(b);
        // A departed client is no longer sent to.
        let deadline = Instant::now() + STEP;
        loop {
            let sent = a
                .call(&BROADCAST, &[], STEP, |m| Ok(u64_of(m.object(0))))
                .expect("broadcast");
            if sent == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "the hub kept a dead client");
            thread::sleep(Duration::from_millis(10));
        }
        drop(s);
    });
}

#[test]
fn a_client_that_stops_reading_is_dropped() {
    if child_role().is_some() {
        return;
    }
    let s = start_server(3);
    with_watchdog(LIMIT, move || {
        let env = [
            (DIR_ENV, s.dir.display().to_string()),
            (NAME_ENV, s.name.clone()),
        ];
        let mut deaf = ChildGuard::spawn("rpc_child", "client-deaf", &env);
        deaf.wait_for_line("flooded");
        // The server waits `reply_timeout` (5 s) for room in the deaf client's ring, then
        // drops it and serves the others again.
        let mut c = client(&s);
        let t = Instant::now();
        assert_eq!(echo(&mut c, b"served").expect("echo"), b"served");
        assert!(t.elapsed() < Duration::from_secs(9), "{:?}", t.elapsed());
        for i in 0..10u64 {
            assert_eq!(
                echo(&mut c, &i.to_le_bytes()).expect("echo"),
                i.to_le_bytes()
            );
        }
        drop(deaf);
        drop(s);
    });
}
