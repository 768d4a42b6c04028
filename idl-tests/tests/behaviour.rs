//! The generated stubs across two real processes over shm: this test binary re-executes
//! itself (`child`) to play the server; the parent is the client. Every test has its own
//! runtime directory and service name, and a watchdog.

// The child-process helpers of shm-channel's integration tests (ChildGuard, watchdog).
#[path = "../../shm-channel/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use idl_tests::all::{self, everything, ticker};
use idl_tests::{v1, v2};
use shm_channel::rpc::{CallError, EventItem, Method, ServeOptions};
use shm_channel::wire::Bounded;
use shm_channel::{EventLoop, Service};
use support::{ChildGuard, child_role, unique_name, with_watchdog};

const LIMIT: Duration = Duration::from_secs(60);
const DIR_ENV: &str = "IDL_TESTS_DIR";
const NAME_ENV: &str = "IDL_TESTS_NAME";

// ------------------------------------------------------------------ the servers

/// The `Everything` server: echoes, sums what the one-way methods carry.
#[derive(Default)]
struct EverythingImpl {
    tally: all::Tally,
}

impl EverythingImpl {
    fn count(&mut self, n: u64) {
        self.tally.messages += 1;
        self.tally.sum = self.tally.sum.wrapping_add(n);
    }
}

/// What `params` answers (the client computes the same).
#[allow(clippy::too_many_arguments)]
fn params_summary(
    flag: bool,
    a: u8,
    b: i16,
    c: u32,
    d: i64,
    e: f32,
    name: &str,
    data: &[u8],
    nums: &[u16],
    grid: [u8; 3],
    opt: Option<u64>,
    at: &all::Rect,
) -> String {
    format!("{flag} {a} {b} {c} {d} {e} {name} {data:?} {nums:?} {grid:?} {opt:?} {at:?}")
}

fn byte_sum(data: &[u8]) -> u64 {
    data.iter().map(|&b| u64::from(b)).sum()
}

impl everything::Server for EverythingImpl {
    fn scalars(&mut self, _: &everything::Context<'_>, s: all::Scalars) -> all::Scalars {
        s
    }

    fn texts(&mut self, _: &everything::Context<'_>, t: all::TextsView<'_>) -> all::Texts {
        t.owned().expect("a valid view")
    }

    fn seqs(&mut self, _: &everything::Context<'_>, s: all::SeqsView<'_>) -> all::Seqs {
        s.owned().expect("a valid view")
    }

    fn value(
        &mut self,
        _: &everything::Context<'_>,
        v: all::ValueView<'_>,
        c: all::Color,
    ) -> all::Value {
        let v = v.owned().expect("a valid view");
        match c {
            all::Color::Blue => all::Value::Many(vec![v]),
            _ => v,
        }
    }

    fn tree(&mut self, _: &everything::Context<'_>, t: all::TreeView<'_>) -> all::Tree {
        t.owned().expect("a valid view")
    }

    fn params(
        &mut self,
        _: &everything::Context<'_>,
        flag: bool,
        a: u8,
        b: i16,
        c: u32,
        d: i64,
        e: f32,
        name: &str,
        data: &[u8],
        nums: shm_channel::wire::VecView<'_, u16>,
        grid: [u8; 3],
        opt: Option<u64>,
        at: all::Rect,
    ) -> String {
        params_summary(
            flag,
            a,
            b,
            c,
            d,
            e,
            name,
            data,
            &nums.to_vec(),
            grid,
            opt,
            &at,
        )
    }

    fn label(&mut self, _: &everything::Context<'_>, n: u32) -> String {
        "x".repeat(n as usize)
    }

    fn echo_bytes(&mut self, _: &everything::Context<'_>, data: &[u8]) -> Vec<u8> {
        data.to_vec()
    }

    fn divide(&mut self, _: &everything::Context<'_>, a: i64, b: i64) -> Result<i64, all::Failure> {
        if b == 0 {
            return Err(all::Failure::Invalid("division by zero".into()));
        }
        a.checked_div(b).ok_or(all::Failure::Code(1))
    }

    fn check(&mut self, _: &everything::Context<'_>, fail: bool) -> Result<(), all::Failure> {
        if fail {
            Err(all::Failure::NotFound)
        } else {
            Ok(())
        }
    }

    fn slow(&mut self, _: &everything::Context<'_>, ms: u32) -> u32 {
        std::thread::sleep(Duration::from_millis(ms.into()));
        ms
    }

    fn sleep_for(&mut self, _: &everything::Context<'_>, ms: u32) -> u32 {
        println!("sleeping");
        std::thread::sleep(Duration::from_millis(ms.into()));
        ms
    }

    fn boom(&mut self, _: &everything::Context<'_>, message: &str) -> u32 {
        panic!("{message}")
    }

    fn note(&mut self, _: &everything::Context<'_>, n: u64) {
        self.count(n);
    }

    fn blit(&mut self, _: &everything::Context<'_>, surface: u64, pixels: &[u8]) {
        self.count(surface + byte_sum(pixels));
    }

    fn commit(&mut self, _: &everything::Context<'_>, n: u64) {
        self.count(n);
    }

    fn cursor(&mut self, _: &everything::Context<'_>, x: i32, y: i32) {
        self.count(i64::from(x + y) as u64);
    }

    fn stall(&mut self, _: &everything::Context<'_>, flag: &str) {
        // Bounded: a test that never releases the server must not leave it stuck.
        let deadline = Instant::now() + LIMIT;
        while !Path::new(flag).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn seen(&mut self, _: &everything::Context<'_>) -> all::Tally {
        self.tally
    }

    fn emit(&mut self, ctx: &everything::Context<'_>, n: u32) -> u32 {
        for i in 0..u64::from(n) {
            let label = Some(Bounded(format!("tick {i}")));
            ctx.events()
                .tick(ctx.client(), i, &label)
                .expect("tick sent");
        }
        n
    }

    fn shout(&mut self, ctx: &everything::Context<'_>, n: u64) -> u32 {
        let report = ctx.events().broadcast_tick(n, &None).expect("encoded");
        assert!(report.failed.is_empty(), "{report:?}");
        report.sent as u32
    }

    fn refresh(&mut self, ctx: &everything::Context<'_>) -> u32 {
        let values = [all::Value::Int(1)];
        let one = match ctx.events().fresh(ctx.client(), &values) {
            Ok(()) => 100,
            Err(shm_channel::rpc::TransportError::Unsupported { since: 2, .. }) => 0,
            Err(e) => panic!("{e}"),
        };
        let all = ctx.events().broadcast_fresh(&values).expect("encoded");
        assert!(all.failed.is_empty(), "{all:?}");
        one + all.sent as u32
    }

    fn newer(&mut self, _: &everything::Context<'_>, x: u32) -> u32 {
        x + 1
    }

    fn pinned(&mut self, _: &everything::Context<'_>) -> u32 {
        40
    }

    fn ordered(&mut self, _: &everything::Context<'_>, n: u32) -> u32 {
        n
    }

    fn once(&mut self, _: &everything::Context<'_>, n: u32) -> u32 {
        n
    }
}

/// The `Ticker` server: fills the client's ring with events while the client does not
/// read, and reports in a file.
struct TickerImpl;

impl ticker::Server for TickerImpl {
    fn fire(&mut self, ctx: &ticker::Context<'_>, ticks: u32, max_lossy: u32, report: &str) {
        // No waiting for room: what fits is what the IDL sized the ring for.
        let events = ctx.events().clone().with_timeout(Duration::ZERO);
        let ticks_ok = (0..u64::from(ticks))
            .filter(|&i| events.tick(ctx.client(), i).is_ok())
            .count();
        let mut lossy_ok = 0u64;
        let mut dropped = "none".to_owned();
        for i in 0..u64::from(max_lossy) {
            match events.lossy(ctx.client(), i) {
                Ok(()) => lossy_ok += 1,
                Err(e) => {
                    dropped = format!("{e:?}");
                    break;
                }
            }
        }
        let text = format!("{ticks_ok} {lossy_ok} {dropped}");
        // Written whole, then renamed: the client never reads half a report.
        let tmp = format!("{report}.tmp");
        std::fs::write(&tmp, text).expect("write report");
        std::fs::rename(&tmp, report).expect("rename report");
    }
}

struct V1Impl;

impl v1::versioned::Server for V1Impl {
    fn base(&mut self, _: &v1::versioned::Context<'_>, x: u32) -> u32 {
        x * 2
    }
}

struct V2Impl;

impl v2::versioned::Server for V2Impl {
    fn base(&mut self, _: &v2::versioned::Context<'_>, x: u32) -> u32 {
        x * 2
    }

    fn added(&mut self, _: &v2::versioned::Context<'_>, x: u32) -> u32 {
        x * 3
    }
}

/// Binds with `config`, says `ready`, and serves until killed.
fn serve_child<S>(
    name: &str,
    config: shm_channel::ServiceConfig,
    serve: impl FnOnce(&mut EventLoop, &ServeOptions) -> S,
) -> S {
    let service = Service::bind(name, config).expect("bind");
    let mut event_loop = EventLoop::new(service).expect("event loop");
    println!("ready");
    serve(&mut event_loop, &ServeOptions::default())
}

/// The child roles: one server each.
#[test]
fn child() {
    let Some(role) = child_role() else { return };
    // `boom` panics on purpose.
    support::quiet_expected_panics("kaboom");
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("dir env"));
    let name = std::env::var(NAME_ENV).expect("name env");
    match role.as_str() {
        "everything" => {
            let config = everything::service_config().runtime_dir(&dir);
            let events = everything::Events::new();
            serve_child(&name, config, |l, o| {
                everything::serve_service(l, EverythingImpl::default(), &events, o)
            })
            .expect("serve");
        }
        "channel" => {
            // One connection served by `serve_channel_with`: events to `ChannelId(0)`.
            let config = everything::service_config().runtime_dir(&dir);
            let mut service = Service::bind(&name, config).expect("bind");
            println!("ready");
            let mut channel = service.accept_timeout(LIMIT).expect("accept");
            let events = everything::Events::new();
            everything::serve_channel_with(
                &mut channel,
                EverythingImpl::default(),
                &events,
                &ServeOptions::default(),
            )
            .expect("serve");
        }
        "ticker" => {
            let config = ticker::service_config().runtime_dir(&dir);
            let events = ticker::Events::new();
            serve_child(&name, config, |l, o| {
                ticker::serve_service(l, TickerImpl, &events, o)
            })
            .expect("serve");
        }
        "v1" => {
            let config = v1::versioned::service_config().runtime_dir(&dir);
            let events = v1::versioned::Events::new();
            serve_child(&name, config, |l, o| {
                v1::versioned::serve_service(l, V1Impl, &events, o)
            })
            .expect("serve");
        }
        "v2" => {
            let config = v2::versioned::service_config().runtime_dir(&dir);
            let events = v2::versioned::Events::new();
            serve_child(&name, config, |l, o| {
                v2::versioned::serve_service(l, V2Impl, &events, o)
            })
            .expect("serve");
        }
        "doomed-client" => {
            // Connects, says so, then waits in a long call until the parent kills it.
            let config = everything::client_config().runtime_dir(&dir);
            let mut c = everything::Client::connect_with(&name, &config).expect("connect");
            assert_eq!(c.pinned(), Ok(40));
            println!("calling");
            let _ = c.with_timeout(LIMIT).sleep_for(500);
            std::thread::sleep(LIMIT);
        }
        other => panic!("unknown role {other}"),
    }
}

/// A server child of `role`, ready; with its runtime directory and service name.
struct Server {
    child: Option<ChildGuard>,
    dir: PathBuf,
    name: String,
}

impl Server {
    fn start(role: &str) -> Server {
        let dir = std::env::temp_dir().join(unique_name("idl-rt"));
        let name = unique_name(role);
        let env = [
            (DIR_ENV, dir.display().to_string()),
            (NAME_ENV, name.clone()),
        ];
        let mut child = ChildGuard::spawn("child", role, &env);
        child.wait_for_line("ready");
        Server {
            child: Some(child),
            dir,
            name,
        }
    }

    fn everything(&self) -> everything::Client {
        let config = everything::client_config().runtime_dir(&self.dir);
        everything::Client::connect_with(&self.name, &config).expect("connect")
    }

    async fn everything_async(&self) -> everything::AsyncClient {
        let config = everything::client_config().runtime_dir(&self.dir);
        everything::AsyncClient::connect_with(&self.name, &config)
            .await
            .expect("connect")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ------------------------------------------------------------------ values

fn scalars() -> all::Scalars {
    all::Scalars {
        a: true,
        b: u8::MAX,
        c: 0xbeef,
        d: u32::MAX - 1,
        e: u64::MAX,
        f: i8::MIN,
        g: -12_345,
        h: i32::MIN,
        i: i64::MAX,
        j: -1.5,
        k: f64::MIN_POSITIVE,
    }
}

fn texts() -> all::Texts {
    all::Texts {
        name: "écran ✓".into(),
        any: "u".repeat(5000),
        blob: (0..=255).collect(),
        any_blob: vec![7; 100_000],
    }
}

fn point(x: i32, y: i32) -> all::Point {
    all::Point { x, y }
}

fn rect() -> all::Rect {
    all::Rect {
        origin: point(-3, 4),
        width: 640,
        height: 480,
    }
}

fn seqs() -> all::Seqs {
    all::Seqs {
        grid: [[1, 2, 3], [4, 5, u16::MAX]],
        labels: [Bounded("ab".into()), Bounded("cdef".into())],
        nums: vec![1, 2, 3, 4, 5, 6, 7, 8],
        floats: vec![0.5, -0.0, f64::MAX],
        flags: vec![true, false, true],
        names: vec![Bounded("one".into()), Bounded("eight888".into())],
        points: (0..100).map(|i| point(i, -i)).collect(),
        rects: vec![rect(), all::Rect::default()],
        colors: vec![Some(all::Color::Green), None, Some(all::Color::Blue)],
        maybe: Some(rect()),
        maybe_name: Some(Bounded("name".into())),
        values: vec![value(), all::Value::Nothing],
    }
}

fn value() -> all::Value {
    all::Value::Many(vec![
        all::Value::Int(-1),
        all::Value::Text("text".into()),
        all::Value::Blob(vec![1, 2, 3]),
        all::Value::At(point(1, 2)),
        all::Value::Many(vec![]),
    ])
}

fn tree() -> all::Tree {
    let leaf = |value| all::Tree {
        value,
        left: None,
        children: vec![],
    };
    all::Tree {
        value: 1,
        left: Some(Box::new(all::Tree {
            value: 2,
            left: Some(Box::new(leaf(3))),
            children: vec![leaf(4)],
        })),
        children: vec![leaf(5), leaf(6)],
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

// ------------------------------------------------------------------ tests

/// Every type of `everything.idl` goes to the server and back through the blocking
/// client: structs of scalars, strings and bytes (bounded or not), arrays, vecs,
/// options, enums with payloads, recursion, and a method of many parameters.
#[test]
fn every_type_round_trips_through_the_blocking_client() {
    with_watchdog(LIMIT, || {
        let server = Server::start("everything");
        let mut c = server.everything();
        assert_eq!(c.version(), everything::VERSION);
        assert_eq!(c.scalars(&scalars()), Ok(scalars()));
        assert_eq!(c.texts(&texts()), Ok(texts()));
        assert_eq!(c.seqs(&seqs()), Ok(seqs()));
        assert_eq!(c.value(&value(), &all::Color::Red), Ok(value()));
        assert_eq!(
            c.value(&all::Value::Int(9), &all::Color::Blue),
            Ok(all::Value::Many(vec![all::Value::Int(9)]))
        );
        assert_eq!(c.tree(&tree()), Ok(tree()));
        let nums = [1u16, 2, 65535];
        let expect = params_summary(
            true,
            1,
            -2,
            3,
            -4,
            5.5,
            "n",
            b"data",
            &nums,
            [7, 8, 9],
            Some(10),
            &rect(),
        );
        assert_eq!(
            c.params(
                true,
                1,
                -2,
                3,
                -4,
                5.5,
                "n",
                b"data",
                &nums,
                &[7, 8, 9],
                &Some(10),
                &rect()
            ),
            Ok(expect)
        );
        assert_eq!(c.label(3), Ok("xxx".to_owned()));
        let big = pattern(512 << 10, 5);
        assert_eq!(c.echo_bytes(&big), Ok(big.clone()));
        // Within the IDL bound (4 MiB) but not within the ring (1 MiB, the default where
        // a message is unbounded): refused at send, naming the size and the limit.
        let huge = pattern(3 << 20, 5);
        match c.echo_bytes(&huge) {
            Err(CallError::TooLarge { size, max }) => {
                assert!(size > 3 << 20 && max <= everything::CLIENT_TO_SERVER_MAX);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(c.label(2), Ok("xx".to_owned()));
        assert_eq!(c.pinned(), Ok(40));
        assert_eq!(c.ordered(3), Ok(3));
        assert_eq!(c.once(4), Ok(4));
        assert_eq!(c.newer(1), Ok(2));
        assert_eq!(everything::PINNED.id, 40);
    });
}

/// The same values through the async client.
#[test]
fn every_type_round_trips_through_the_async_client() {
    with_watchdog(LIMIT, || {
        let server = Server::start("everything");
        runtime().block_on(async {
            let c = server.everything_async().await;
            assert_eq!(c.version(), everything::VERSION);
            assert_eq!(c.scalars(&scalars()).await, Ok(scalars()));
            assert_eq!(c.texts(&texts()).await, Ok(texts()));
            assert_eq!(c.seqs(&seqs()).await, Ok(seqs()));
            assert_eq!(c.value(&value(), &all::Color::Green).await, Ok(value()));
            assert_eq!(c.tree(&tree()).await, Ok(tree()));
            let big = pattern(512 << 10, 9);
            assert_eq!(c.echo_bytes(&big).await, Ok(big.clone()));
            let filled = c
                .echo_bytes_in_place(big.len(), |buf| {
                    buf.copy_from_slice(&big);
                })
                .await;
            assert_eq!(filled, Ok(big));
            assert_eq!(c.divide(7, 2).await, Ok(3));
            assert_eq!(
                c.divide(7, 0).await,
                Err(CallError::Remote(all::Failure::Invalid(
                    "division by zero".into()
                )))
            );
            // One-way kinds, then a two-way call that sees them all (one ring: in order).
            c.note(5).await.expect("note");
            c.commit(6).await.expect("commit");
            c.cursor(3, 4).await.expect("cursor");
            assert_eq!(
                c.seen().await,
                Ok(all::Tally {
                    messages: 3,
                    sum: 5 + 6 + 7
                })
            );
        });
    });
}

/// `bytes` arguments filled in place, and every one-way kind (`@async`, `@queue`,
/// `@sync`, `@no_queue`) delivered in order.
#[test]
fn zero_copy_bytes_and_one_way_kinds() {
    with_watchdog(LIMIT, || {
        let server = Server::start("everything");
        let mut c = server.everything();
        let big = pattern(900 << 10, 3);
        let back = c.echo_bytes_in_place(big.len(), |buf| buf.copy_from_slice(&big));
        assert_eq!(back, Ok(big));
        let pixels = pattern(64 << 10, 1);
        let mut expect = all::Tally::default();
        for surface in 0..4u64 {
            c.blit_in_place(surface, pixels.len(), |buf| buf.copy_from_slice(&pixels))
                .expect("blit");
            expect.messages += 1;
            expect.sum += surface + byte_sum(&pixels);
        }
        c.blit(9, &pixels[..10]).expect("blit");
        c.note(11).expect("note");
        c.commit(12).expect("commit");
        c.cursor(-1, 2).expect("cursor");
        expect.messages += 4;
        expect.sum += 9 + byte_sum(&pixels[..10]) + 11 + 12 + 1;
        assert_eq!(c.seen(), Ok(expect));
        // Over the IDL bound of `blit`'s bytes: refused before anything is sent.
        let too_big = c.blit_in_place(0, (64 << 10) + 1, |_| panic!("never filled"));
        assert!(
            matches!(too_big, Err(CallError::Transport(_))),
            "{too_big:?}"
        );
        assert_eq!(c.seen(), Ok(expect));
    });
}

/// Typed errors come back as `CallError::Remote(E)`, decoded, for `result<T, E>` and
/// `result<(), E>`.
#[test]
fn typed_errors_arrive_as_remote() {
    with_watchdog(LIMIT, || {
        let server = Server::start("everything");
        let mut c = server.everything();
        assert_eq!(c.divide(9, 3), Ok(3));
        assert_eq!(
            c.divide(9, 0),
            Err(CallError::Remote(all::Failure::Invalid(
                "division by zero".into()
            )))
        );
        assert_eq!(
            c.divide(i64::MIN, -1),
            Err(CallError::Remote(all::Failure::Code(1)))
        );
        assert_eq!(c.check(false), Ok(()));
        assert_eq!(
            c.check(true),
            Err(CallError::Remote(all::Failure::NotFound))
        );
    });
}

/// Events: `emit` sends `tick`s from inside the handler; they queue while the call waits
/// and arrive in order, through both clients.
#[test]
fn events_arrive_in_order_through_both_clients() {
    with_watchdog(LIMIT, || {
        let server = Server::start("everything");
        let mut c = server.everything();
        assert_eq!(c.emit(20), Ok(20));
        for i in 0..20 {
            let label = Some(Bounded(format!("tick {i}")));
            assert_eq!(
                c.recv_event(Duration::from_secs(10)),
                Ok(everything::Event::Tick { n: i, label })
            );
        }
        assert_eq!(c.try_recv_event(), Ok(None));
        assert_eq!(c.lost_events(), 0);
        // The borrowed form, decoded from the message the RPC client copied out.
        assert_eq!(c.emit(1), Ok(1));
        match c.rpc().recv_event(LIMIT) {
            Ok(EventItem::Event(m)) => match everything::EventView::decode(&m) {
                Ok(everything::EventView::Tick { n: 0, label }) => {
                    assert_eq!(label.map(|l| l.0), Some("tick 0"));
                }
                other => panic!("expected a tick view, got {other:?}"),
            },
            other => panic!("expected an event, got {other:?}"),
        }
        runtime().block_on(async {
            let a = server.everything_async().await;
            assert_eq!(a.emit(3).await, Ok(3));
            for i in 0..3 {
                let event = a.recv_event().await.expect("event");
                assert_eq!(event.method(), &everything::TICK);
                assert!(matches!(event, everything::Event::Tick { n, .. } if n == i));
            }
        });
    });
}

/// A broadcast from a handler reaches every connected client; the async client's
/// `try_recv_event` sees it without waiting once it arrived.
#[test]
fn broadcast_events_reach_every_client() {
    with_watchdog(LIMIT, || {
        let server = Server::start("everything");
        let mut a = server.everything();
        let mut b = server.everything();
        // A reply to each proves the server registered both clients.
        assert_eq!(a.pinned(), Ok(40));
        assert_eq!(b.pinned(), Ok(40));
        runtime().block_on(async {
            let c = server.everything_async().await;
            assert_eq!(c.pinned().await, Ok(40));
            assert_eq!(c.try_recv_event(), Ok(None));
            assert_eq!(a.shout(7), Ok(3));
            let tick = everything::Event::Tick { n: 7, label: None };
            assert_eq!(a.recv_event(LIMIT), Ok(tick.clone()));
            assert_eq!(b.recv_event(LIMIT), Ok(tick.clone()));
            assert_eq!(c.recv_event().await, Ok(tick.clone()));
            // The next one, polled: it arrives without a call waiting for it.
            assert_eq!(b.shout(8), Ok(3));
            let eight = everything::Event::Tick { n: 8, label: None };
            let deadline = Instant::now() + LIMIT;
            loop {
                match c.try_recv_event() {
                    Ok(Some(e)) => {
                        assert_eq!(e, eight);
                        break;
                    }
                    Ok(None) => {
                        assert!(Instant::now() < deadline, "no event");
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        });
    });
}

/// One connection served by `serve_channel`: calls, and events sent to its client.
#[test]
fn serve_channel_serves_one_connection() {
    with_watchdog(LIMIT, || {
        let server = Server::start("channel");
        let mut c = server.everything();
        assert_eq!(c.scalars(&scalars()), Ok(scalars()));
        assert_eq!(c.emit(2), Ok(2));
        for n in 0..2 {
            match c.recv_event(LIMIT) {
                Ok(everything::Event::Tick { n: got, .. }) => assert_eq!(got, n),
                other => panic!("expected a tick, got {other:?}"),
            }
        }
        assert_eq!(c.shout(5), Ok(1));
        assert_eq!(
            c.recv_event(LIMIT),
            Ok(everything::Event::Tick { n: 5, label: None })
        );
    });
}

/// Events with a queue depth: while the client does not read, the server sends the 8
/// `@queue(8)` ticks with no waiting at all (the IDL sized the ring for them), then
/// `@no_queue` events until the full ring drops one. The client then receives every
/// event that was accepted, in order, and nothing else.
#[test]
fn events_with_a_queue_depth_fill_the_ring_and_no_queue_ones_drop() {
    with_watchdog(LIMIT, || {
        let server = Server::start("ticker");
        let config = ticker::client_config().runtime_dir(&server.dir);
        let mut c = ticker::Client::connect_with(&server.name, &config).expect("connect");
        let report = server.dir.join("fire-report");
        let max_lossy = 1_000_000;
        c.fire(8, max_lossy, report.to_str().expect("utf-8 path"))
            .expect("fire");
        // Wait for the report without touching the channel.
        let deadline = Instant::now() + LIMIT;
        while !report.exists() {
            assert!(Instant::now() < deadline, "no report");
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = std::fs::read_to_string(&report).expect("report");
        let parts: Vec<&str> = text.split(' ').collect();
        assert_eq!(parts[0], "8", "every queued tick fits: {text}");
        assert_eq!(parts[2], "Dropped", "the full ring drops: {text}");
        let lossy: u64 = parts[1].parse().expect("count");
        assert!(lossy < u64::from(max_lossy), "{text}");
        for n in 0..8 {
            assert_eq!(
                c.recv_event(Duration::from_secs(10)),
                Ok(ticker::Event::Tick { n })
            );
        }
        for n in 0..lossy {
            assert_eq!(
                c.recv_event(Duration::from_secs(10)),
                Ok(ticker::Event::Lossy { n })
            );
        }
        assert_eq!(c.try_recv_event(), Ok(None));
        // The ring is sized from the IDL: the 8 ticks and their replies, in pages.
        const { assert!(ticker::SERVER_TO_CLIENT_MAX < 64 << 10) };
    });
}

/// `@no_queue` under a full ring: with the server stalled, `cursor` calls return at once
/// with `Dropped` once the client-to-server ring is full; every cursor that was accepted
/// is delivered once the server resumes.
#[test]
fn no_queue_under_a_full_ring_reports_dropped() {
    with_watchdog(LIMIT, || {
        let server = Server::start("everything");
        let mut c = server.everything();
        let flag = server.dir.join("resume");
        c.stall(flag.to_str().expect("utf-8 path")).expect("stall");
        let mut accepted = 0u64;
        let mut sum = 0u64;
        let dropped = loop {
            assert!(accepted < 10_000_000, "the ring never filled");
            match c.cursor(1, 2) {
                Ok(()) => {
                    accepted += 1;
                    sum += 3;
                }
                Err(e) => break e,
            }
        };
        assert_eq!(dropped, CallError::Dropped);
        assert!(accepted > 0);
        std::fs::write(&flag, b"go").expect("release the server");
        assert_eq!(
            c.seen(),
            Ok(all::Tally {
                messages: accepted,
                sum
            })
        );
    });
}

/// `@timeout(100)` against a handler that sleeps 2 s: `Timeout`; the late reply is
/// discarded and the next call (with a per-call deadline override) works.
#[test]
fn timeout_against_a_slow_handler() {
    with_watchdog(LIMIT, || {
        let server = Server::start("everything");
        let mut c = server.everything();
        assert_eq!(c.slow(2000), Err(CallError::Timeout));
        assert_eq!(c.with_timeout(LIMIT).slow(1), Ok(1));
        // The override ended with its handle: the IDL's 100 ms applies again.
        assert_eq!(c.slow(2000), Err(CallError::Timeout));
        // A call after the timeouts: their late replies were discarded, this one is ours.
        assert_eq!(c.with_timeout(LIMIT).pinned(), Ok(40));
        runtime().block_on(async {
            let a = server.everything_async().await;
            assert_eq!(a.slow(2000).await, Err(CallError::Timeout));
            assert_eq!(a.with_timeout(LIMIT).slow(2).await, Ok(2));
        });
    });
}

/// `@since(2)` against a version 1 server: `Unsupported` without sending; the methods
/// both know work. A version 2 server refuses a since-2 method from a version 1 client
/// (sent raw, bypassing the client's own check) with `UnknownMethod`.
#[test]
fn since_against_an_older_server() {
    with_watchdog(LIMIT, || {
        let old = Server::start("v1");
        let config = v2::versioned::client_config().runtime_dir(&old.dir);
        let mut c = v2::versioned::Client::connect_with(&old.name, &config).expect("connect");
        assert_eq!(c.version(), 1);
        assert_eq!(c.base(4), Ok(8));
        assert_eq!(
            c.added(4),
            Err(CallError::Unsupported {
                method: "added",
                since: 2,
                peer_version: 1
            })
        );
        // Nothing was sent: the next reply is the next call's.
        assert_eq!(c.base(5), Ok(10));
        assert_eq!(c.rpc().late_replies(), 0);

        let new = Server::start("v2");
        let config = v1::versioned::client_config().runtime_dir(&new.dir);
        let mut c = v1::versioned::Client::connect_with(&new.name, &config).expect("connect");
        assert_eq!(c.version(), 1);
        assert_eq!(c.base(2), Ok(4));
        let sneaky = Method::new("added", v2::versioned::ADDED.id);
        let raw = c
            .rpc()
            .call(&sneaky, &[(0, &4u32.to_le_bytes())], LIMIT, |_| Ok(()));
        assert_eq!(
            raw,
            Err(CallError::UnknownMethod {
                message_id: v2::versioned::ADDED.id
            })
        );

        let config = v2::versioned::client_config().runtime_dir(&new.dir);
        let mut c = v2::versioned::Client::connect_with(&new.name, &config).expect("connect");
        assert_eq!(c.version(), 2);
        assert_eq!(c.added(4), Ok(12));
    });
}

/// A client that speaks version 1 of `Everything` (version 2): `@since(2)` methods are
/// `Unsupported` on its side, and the server never sends it `@since(2)` events (to it:
/// `Unsupported`; broadcasts skip it) while a version 2 client gets them.
#[test]
fn since_events_skip_older_clients() {
    with_watchdog(LIMIT, || {
        let server = Server::start("everything");
        let old_config = shm_channel::ClientConfig::new(everything::NAME, 1..=1)
            .ring_sizes(
                everything::CLIENT_TO_SERVER_MAX,
                everything::SERVER_TO_CLIENT_MAX,
            )
            .runtime_dir(&server.dir);
        let mut old = everything::Client::connect_with(&server.name, &old_config).expect("v1");
        assert_eq!(old.version(), 1);
        assert!(matches!(
            old.newer(1),
            Err(CallError::Unsupported { since: 2, .. })
        ));
        let mut new = server.everything();
        assert_eq!(new.pinned(), Ok(40));
        // The old client: not sent to it, skipped by the broadcast (which reaches `new`).
        assert_eq!(old.refresh(), Ok(1));
        // The new client: sent to it, and broadcast to it (not to `old`).
        assert_eq!(new.refresh(), Ok(101));
        let fresh = everything::Event::Fresh {
            values: vec![all::Value::Int(1)],
        };
        for _ in 0..3 {
            assert_eq!(new.recv_event(LIMIT), Ok(fresh.clone()));
        }
        assert_eq!(new.try_recv_event(), Ok(None));
        assert_eq!(old.pinned(), Ok(40));
        assert_eq!(old.try_recv_event(), Ok(None));
    });
}

/// The server killed (SIGKILL) while a call waits: the call fails with `PeerDied`.
#[test]
fn server_killed_during_a_call_is_peer_died() {
    with_watchdog(LIMIT, || {
        let mut server = Server::start("everything");
        let mut c = server.everything();
        let call = std::thread::spawn(move || c.with_timeout(LIMIT).sleep_for(60_000));
        let mut child = server.child.take().expect("child");
        child.wait_for_line("sleeping");
        child.kill9();
        assert_eq!(call.join().expect("caller"), Err(CallError::PeerDied));
    });
}

/// A client process killed while its call runs: the server drops it and keeps serving
/// the others.
#[test]
fn a_client_killed_mid_call_does_not_stop_the_server() {
    with_watchdog(LIMIT, || {
        let server = Server::start("everything");
        let mut c = server.everything();
        let env = [
            (DIR_ENV, server.dir.display().to_string()),
            (NAME_ENV, server.name.clone()),
        ];
        let mut doomed = ChildGuard::spawn("child", "doomed-client", &env);
        doomed.wait_for_line("calling");
        doomed.kill9();
        for i in 0..20 {
            assert_eq!(c.divide(i * 6, 3), Ok(i * 2));
        }
        assert_eq!(c.texts(&texts()), Ok(texts()));
    });
}

/// A panicking handler fails that call only (`Fault` with its message); a malformed
/// argument, an unknown method and a reply over its bound are faults too; after each,
/// the next call works.
#[test]
fn panicking_handler_and_bad_requests_fail_only_that_call() {
    with_watchdog(LIMIT, || {
        let server = Server::start("everything");
        let mut c = server.everything();
        match c.boom("kaboom 42") {
            Err(CallError::Fault(why)) => assert!(why.contains("kaboom 42"), "{why}"),
            other => panic!("expected a fault, got {other:?}"),
        }
        assert_eq!(c.divide(4, 2), Ok(2));
        // A reply over `string<8>`: refused by the server's encoder, a fault.
        assert!(matches!(c.label(9), Err(CallError::Fault(_))));
        assert_eq!(c.label(8), Ok("x".repeat(8)));
        // Raw requests the generated client would never send.
        let bad = c
            .rpc()
            .call(&everything::DIVIDE, &[(0, b"short")], LIMIT, |_| Ok(()));
        match bad {
            Err(CallError::Fault(why)) => assert!(why.contains("malformed"), "{why}"),
            other => panic!("expected a fault, got {other:?}"),
        }
        let unknown = c
            .rpc()
            .call(&Method::new("nope", 999), &[], LIMIT, |_| Ok(()));
        assert_eq!(unknown, Err(CallError::UnknownMethod { message_id: 999 }));
        assert_eq!(c.scalars(&scalars()), Ok(scalars()));
    });
}

/// 8 calls in flight at once on one async client (one channel): each gets its own reply.
#[test]
fn eight_concurrent_async_calls_on_one_channel() {
    with_watchdog(LIMIT, || {
        let server = Server::start("everything");
        runtime().block_on(async {
            let c = server.everything_async().await;
            let calls = (0..8u32).map(|i| {
                let c = c.clone();
                tokio::spawn(async move {
                    let slept = c.with_timeout(LIMIT).sleep_for(20 + i).await;
                    let divided = c.divide(i64::from(i) * 10, 10).await;
                    (i, slept, divided)
                })
            });
            let results: Vec<_> = futures_join_all(calls).await;
            assert_eq!(results.len(), 8);
            for (i, slept, divided) in results {
                assert_eq!(slept, Ok(20 + i));
                assert_eq!(divided, Ok(i64::from(i)));
            }
            assert_eq!(c.rpc().in_flight(), 0);
        });
    });
}

/// Awaits every task (no futures crate needed).
async fn futures_join_all<T: Send + 'static>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let handles: Vec<_> = tasks.collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("task"));
    }
    out
}

/// The generated code is usable as a library: the constants match the IDL.
#[test]
fn constants_follow_the_idl() {
    assert_eq!(everything::NAME, "Everything");
    assert_eq!(everything::VERSION, 2);
    assert_eq!(everything::NEWER.since, 2);
    assert_eq!(everything::FRESH.since, 2);
    assert_eq!(all::NAME_MAX, 32);
    assert_eq!(all::BLOB_MAX, 1024);
    assert_eq!(all::LABEL, "everything");
    const { assert!(all::ENABLED) };
    assert_eq!(all::Color::Green as u32, 5);
}

/// The clients move to other threads, the async client and the event sender are shared
/// between threads (and tasks), and the futures of the async client are `Send` (spawned
/// on a multi-threaded runtime above).
#[test]
fn stubs_are_send_and_sync_where_they_should_be() {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<everything::Client>();
    send_sync::<everything::AsyncClient>();
    send_sync::<everything::Events>();
    send_sync::<everything::Event>();
    send::<EverythingImpl>();
}
