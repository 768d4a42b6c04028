//! The async client's calls that read their reply themselves (rpc/async_client.rs, "Calls
//! read for themselves"): against a server in another process (this test binary
//! re-executed), such a call allocates nothing, and calls from several tasks of one
//! current-thread runtime, events and a dead peer still work when the calls and the reader
//! task pass the transport between them.
//!
//! Allocations are counted per thread by `allocation-counter` (its global allocator): the
//! calls run on a current-thread runtime, so the test thread does all the client's work.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shm_channel::ring::WaitPolicy;
use shm_channel::rpc::{self, AsyncClient, CallError, EventItem, HandlerError, IncomingMessage};
use shm_channel::rpc::{Method, ObjectSink, ServeOptions};
use shm_channel::service::{ClientConfig, Service, ServiceConfig};
use support::{ChildGuard, child_role, child_service_env, service_env, unique_name, with_watchdog};

const PROTOCOL: &str = "AsyncInline";
const STEP: Duration = Duration::from_secs(10);
const LIMIT: Duration = Duration::from_secs(60);

/// `x -> x + 1`.
const ADD_ONE: Method = Method::new("add_one", 1);
/// `n -> n`, after sending `n` events numbered from 0.
const EVENTS: Method = Method::new("events", 2);
/// Exits the server process at once (no reply).
const DIE: Method = Method::new("die", 3);
const TICK: u64 = 100;

fn u64_of(data: Option<&[u8]>) -> Result<u64, String> {
    let data = data.ok_or("no object")?;
    Ok(u64::from_le_bytes(
        data.try_into().map_err(|_| "not 8 bytes")?,
    ))
}

/// The server: one channel, served by `serve_channel` on a polling wait policy (it answers
/// as soon as it runs).
#[test]
fn async_inline_child() {
    let Some(role) = child_role() else { return };
    assert_eq!(role, "server");
    let (dir, name, _) = child_service_env();
    let config = ServiceConfig::new(PROTOCOL, 1..=1)
        .ring_sizes(1 << 16, 1 << 16)
        .runtime_dir(&dir);
    let mut service = Service::bind(&name, config).expect("bind");
    println!("ready");
    let mut channel = service.accept_timeout(STEP).expect("accept");
    channel.set_wait_policy(WaitPolicy::SPIN);
    let events = rpc::Transport::sender(&channel);
    let end = rpc::serve_channel(
        &mut channel,
        |req: &rpc::RequestView<'_>, resp: rpc::Responder<'_>| {
            let x = u64_of(req.object(0)).map_err(|_| HandlerError::UnknownMethod)?;
            match req.message_id() {
                1 => resp.reply(&[(0, &x.wrapping_add(1).to_le_bytes())]),
                2 => {
                    for i in 0..x {
                        rpc::send_event(&events, TICK, &[(0, &i.to_le_bytes())], STEP)?;
                    }
                    resp.reply(&[(0, &x.to_le_bytes())])
                }
                3 => std::process::exit(0),
                _ => Err(HandlerError::UnknownMethod),
            }
        },
        &ServeOptions::default(),
    );
    println!("served: {end:?}");
}

struct Server {
    _child: ChildGuard,
    dir: PathBuf,
    name: String,
}

fn start_server() -> Server {
    let dir = std::env::temp_dir().join(unique_name("inline-rt"));
    let name = unique_name("inline");
    let mut child = ChildGuard::spawn("async_inline_child", "server", &service_env(&dir, &name, 0));
    child.wait_for_line("ready");
    Server {
        _child: child,
        dir,
        name,
    }
}

fn config(s: &Server) -> ClientConfig {
    ClientConfig::new(PROTOCOL, 1..=1)
        .ring_sizes(1 << 16, 1 << 16)
        .runtime_dir(&s.dir)
        .timeout(STEP)
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A call as the generated stubs make it: the argument written in place, the reply
/// decoded from the message, object lengths in an array (no `Vec`).
async fn call_u64(c: &AsyncClient, method: &Method, x: u64) -> Result<u64, CallError> {
    c.call_with(
        method,
        &[8],
        |sink: &mut dyn ObjectSink| {
            sink.object(0, 8)?.copy_from_slice(&x.to_le_bytes());
            Ok(())
        },
        STEP,
        |m: &dyn IncomingMessage| u64_of(m.object(0)),
    )
    .await
}

/// In steady state, a call that reads its own reply allocates nothing: no copy of the
/// reply, no waker, no map growth, no timer. Each call is polled by hand with a no-op
/// waker, every poll inside the count: once (the request goes out, and the reply is looked
/// for within one spin burst); if that finds nothing, the thread sleeps a millisecond
/// (the runtime, and so the reader task, cannot run meanwhile) and polls once more, when the
/// reply is most likely in the ring already. Only calls that read their reply inline
/// (`inline_replies` grew) must be free of allocations; the others (a server preempted for
/// long, on a loaded machine) end through the reader task, which copies the reply.
#[test]
fn a_call_that_reads_its_reply_inline_allocates_nothing() {
    if child_role().is_some() {
        return;
    }
    let s = start_server();
    with_watchdog(LIMIT, move || {
        let rt = current_thread();
        rt.block_on(async {
            let c = AsyncClient::connect(&s.name, &config(&s))
                .await
                .expect("connect");
            // Warm up: the map's capacity, the runtime's timer wheel, the spin's limit.
            for x in 0..2_000u64 {
                assert_eq!(call_u64(&c, &ADD_ONE, x).await, Ok(x + 1));
            }
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            let (mut inline_calls, mut other_calls, mut inline_allocs) = (0u64, 0u64, 0u64);
            let mut x = 0u64;
            while inline_calls < 300 && x < 3_000 {
                let before = c.inline_replies();
                let mut call = std::pin::pin!(call_u64(&c, &ADD_ONE, x));
                let mut got = None;
                let mut allocs = 0;
                for poll in 0..2 {
                    if poll > 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let info = allocation_counter::measure(|| {
                        if let std::task::Poll::Ready(r) = call.as_mut().poll(&mut cx) {
                            got = Some(r);
                        }
                    });
                    allocs += info.count_total;
                    if got.is_some() {
                        break;
                    }
                }
                let r = match got {
                    Some(r) => r,
                    None => call.await,
                };
                assert_eq!(r, Ok(x + 1));
                if c.inline_replies() > before {
                    inline_calls += 1;
                    inline_allocs += allocs;
                } else {
                    other_calls += 1;
                }
                x += 1;
            }
            eprintln!(
                "{inline_calls} calls read their reply inline ({inline_allocs} allocations), \
                 {other_calls} went through the reader task"
            );
            assert!(
                inline_calls >= 100,
                "only {inline_calls} of {x} calls read their reply inline"
            );
            assert_eq!(
                inline_allocs, 0,
                "allocations by {inline_calls} inline calls"
            );
        });
    });
}

/// Thirty-two tasks of one current-thread runtime call at once, interleaved with calls that
/// bring events: every call gets its own reply, every event arrives once and in order,
/// whether a call or the reader task read it (the transport goes back and forth between
/// them); then the server dies and every call, pending or later, fails with `PeerDied`.
#[test]
fn calls_events_and_the_end_with_calls_reading_inline() {
    if child_role().is_some() {
        return;
    }
    let s = start_server();
    with_watchdog(LIMIT, move || {
        let rt = current_thread();
        rt.block_on(async {
            let c = Arc::new(
                AsyncClient::connect(&s.name, &config(&s))
                    .await
                    .expect("connect"),
            );
            let mut next_tick = 0u64;
            for round in 0..20u64 {
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..32u64 {
                    let c = Arc::clone(&c);
                    tasks.spawn(async move {
                        let x = round * 1_000 + i;
                        assert_eq!(call_u64(&c, &ADD_ONE, x).await, Ok(x + 1));
                    });
                }
                assert_eq!(call_u64(&c, &EVENTS, 3).await, Ok(3));
                while let Some(r) = tasks.join_next().await {
                    r.expect("task");
                }
                for want in 0..3u64 {
                    match c.recv_event().await.expect("event") {
                        EventItem::Event(m) => assert_eq!(u64_of(m.object(0)), Ok(want)),
                        other => panic!("{other:?}"),
                    }
                    next_tick += 1;
                }
            }
            assert_eq!(next_tick, 60);
            assert_eq!(c.in_flight(), 0);
            assert_eq!(c.late_replies(), 0);
            // The end: a pending call (the server exits instead of answering) and later ones.
            assert_eq!(call_u64(&c, &DIE, 0).await, Err(CallError::PeerDied));
            assert_eq!(call_u64(&c, &ADD_ONE, 1).await, Err(CallError::PeerDied));
            assert!(matches!(c.recv_event().await, Err(CallError::PeerDied)));
        });
    });
}
