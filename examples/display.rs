//! The display demo: a display server and its client in two processes,
//! talking through the typed stubs that `shm_channel::include_idl!`
//! generates from `examples/idl/display.idl`.
//!
//! ```sh
//! cargo run --release --example display            # about two seconds
//! cargo run --release --example display -- --quick # a smoke run (the test uses it)
//! cargo run --release --example display -- --url tcp://127.0.0.1:0 [--quick]
//! ```
//!
//! With `--url`, the same client and server talk over TCP instead: the
//! server process runs `display::serve_url(url, ..)`, the client
//! `display::Client::connect_url(url)` (port 0 picks a free port), and every
//! step below runs unchanged through the same generated stubs.
//!
//! One command, two processes: the client (what you started) re-executes
//! itself as the server (`display --server NAME`), which binds a service
//! named after the client's pid and serves one client with the generated
//! `display::Server` trait. The client then:
//!
//! 1. creates two surfaces (`create_surface`, two-way);
//! 2. walks the typed error paths: a `resize` of a surface that does not
//!    exist comes back as `CallError::Remote(DisplayError::NoSuchSurface)`,
//!    one too large for the server as `Remote(DisplayError::OutOfMemory(n))`,
//!    and a frame larger than the ring as `CallError::TooLarge` without
//!    anything being sent;
//! 3. calls `set_gamma`, which exists from protocol version 2 on;
//! 4. measures typed two-way calls (`resize`): calls per second, round-trip
//!    p50 and p99;
//! 5. sends frames of 3 MiB, each written **in place in the ring**
//!    (`blit_in_place`: no buffer of the client's, no copy), then `commit`s
//!    (`@sync`: returns once the server has handled it); the server checks
//!    every byte and answers each commit with a `vsync` event;
//! 6. sends a `blit` to a surface that does not exist, which the server
//!    reports with a `surface_lost` event;
//! 7. prints a report: calls per second, round trip p50/p99, MiB/s of
//!    frames, and the ring sizes (the maxima the IDL decided, from the
//!    generated constants, and how far each ring grew).
//!
//! The server exits when the client disconnects. Any error ends the client
//! with a non-zero status; a server that is still running then is killed.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use examples::ServerGuard;
use hdrhistogram::Histogram;
use shm_channel::Service;
use shm_channel::net::{Address, Endpoint, ServerEvent};
use shm_channel::rpc::{CallError, ServeEnd, ServeOptions, Transport};
use shm_channel::wire::{Bounded, VecView};

/// The code generated from `idl/display.idl` (path relative to this
/// package's `Cargo.toml`) and its import `geometry.idl`: the types, and the
/// `display` module with the clients, the server trait and the events. A
/// program uses only part of it, hence `dead_code` is allowed.
#[allow(dead_code)]
mod idl {
    shm_channel::include_idl!("idl/display.idl");
}

use idl::display::{self, Event};
use idl::{DisplayError, PixelFormat, Point, Rect};

use examples::Result;

/// The argument that makes this executable the server.
const SERVER_ARG: &str = "--server";
/// The argument that makes this executable the server at a URL.
const SERVER_URL_ARG: &str = "--server-url";
/// The argument for a short run.
const QUICK_ARG: &str = "--quick";
/// The argument that runs the demo over the network.
const URL_ARG: &str = "--url";
/// The main surface: 1024 x 768 RGBA, so a frame is 3 MiB.
const WIDTH: u32 = 1024;
const HEIGHT: u32 = 768;
const FRAME_BYTES: usize = WIDTH as usize * HEIGHT as usize * 4;
/// The server refuses surfaces larger than this (64 MiB).
const MAX_SURFACE_BYTES: u64 = 64 << 20;
/// A healthy peer answers in microseconds; this only fires when it is stuck.
const STUCK: Duration = Duration::from_secs(5);
/// How long the server may take to come up, and to exit at the end.
const START_STOP: Duration = Duration::from_secs(10);

/// How much to measure.
struct Plan {
    warm_up: u64,
    /// Measuring time for the typed calls.
    budget: Duration,
    max_calls: u64,
    frames: u64,
}

const FULL: Plan = Plan {
    warm_up: 2_000,
    budget: Duration::from_millis(1_000),
    max_calls: 500_000,
    frames: 200,
};

const QUICK: Plan = Plan {
    warm_up: 100,
    budget: Duration::from_millis(100),
    max_calls: 5_000,
    frames: 8,
};

/// With `RUST_LOG` set (`info`, `debug`, `shm_channel::net=trace,info`, ...): the
/// network connectors' `tracing` logs on stderr.
fn init_logs() {
    use tracing_subscriber::prelude::*;
    let Some(filter) = std::env::var("RUST_LOG").ok() else {
        return;
    };
    match filter.parse::<tracing_subscriber::filter::Targets>() {
        Ok(targets) => tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .with(targets)
            .init(),
        Err(e) => eprintln!("RUST_LOG={filter}: {e}; no logs"),
    }
}

fn main() -> ExitCode {
    init_logs();
    let args: Vec<String> = std::env::args().collect();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let (role, result) = match rest[..] {
        [SERVER_ARG, name] => ("display server", server(name)),
        [SERVER_URL_ARG, url] => ("display server", net_server(url)),
        [] => ("display", client(&FULL, None)),
        [QUICK_ARG] => ("display", client(&QUICK, None)),
        [URL_ARG, url] => ("display", client(&FULL, Some(url))),
        [URL_ARG, url, QUICK_ARG] | [QUICK_ARG, URL_ARG, url] => {
            ("display", client(&QUICK, Some(url)))
        }
        _ => (
            "display",
            Err(format!(
                "usage: {} [{QUICK_ARG}] [{URL_ARG} tcp://HOST:PORT] | {SERVER_ARG} NAME | \
                 {SERVER_URL_ARG} URL",
                args[0]
            )
            .into()),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{role}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------ frames

/// The byte at `index` of frame `frame`: both sides compute it, so the
/// server can check that every byte arrived.
fn pixel(frame: u64, index: usize) -> u8 {
    (index as u8) ^ (frame as u8).wrapping_mul(31)
}

/// Writes frame `frame` into `pixels` (which is the ring itself).
fn paint(frame: u64, pixels: &mut [u8]) {
    for (i, p) in pixels.iter_mut().enumerate() {
        *p = pixel(frame, i);
    }
}

/// Whether `pixels` is frame `frame`, every byte looked at.
fn is_frame(frame: u64, pixels: &[u8]) -> bool {
    // An OR over every byte (no early exit), so all of them are read.
    let diff = pixels
        .iter()
        .enumerate()
        .fold(0u8, |acc, (i, &p)| acc | (p ^ pixel(frame, i)));
    diff == 0
}

fn bytes_per_pixel(format: &PixelFormat) -> u64 {
    match format {
        PixelFormat::Rgba8 | PixelFormat::Bgra8 => 4,
        PixelFormat::Rgb565 => 2,
    }
}

// ------------------------------------------------------------------ server

/// One surface the server keeps.
struct Surface {
    size: Rect,
    format: PixelFormat,
    /// Frames received so far: the number of the next one.
    frames: u64,
}

/// The display service: what the generated `display::Server` trait asks for.
struct DisplayServer {
    surfaces: HashMap<u64, Surface>,
    next_id: u64,
    /// vsync counter.
    frame: u64,
    started: Instant,
}

impl DisplayServer {
    /// Tells the caller that `surface` is gone (the way a one-way call
    /// reports trouble: it has no reply). A client that cannot take the
    /// event is gone or stuck; the serve loop notices that by itself.
    fn lost(&self, ctx: &display::Context<'_>, surface: u64, reason: String) {
        let reason = Bounded::new(reason).ok();
        let _ = ctx.events().surface_lost(ctx.client(), surface, &reason);
    }
}

impl display::Server for DisplayServer {
    fn create_surface(
        &mut self,
        _ctx: &display::Context<'_>,
        size: Rect,
        format: PixelFormat,
        _title: &str,
    ) -> u64 {
        self.next_id += 1;
        let surface = Surface {
            size,
            format,
            frames: 0,
        };
        self.surfaces.insert(self.next_id, surface);
        self.next_id
    }

    fn resize(
        &mut self,
        _ctx: &display::Context<'_>,
        surface: u64,
        size: Rect,
    ) -> Result<(), DisplayError> {
        let s = self
            .surfaces
            .get_mut(&surface)
            .ok_or(DisplayError::NoSuchSurface)?;
        let bytes = u64::from(size.width) * u64::from(size.height) * bytes_per_pixel(&s.format);
        if bytes > MAX_SURFACE_BYTES {
            return Err(DisplayError::OutOfMemory(bytes));
        }
        s.size = size;
        Ok(())
    }

    fn blit(&mut self, ctx: &display::Context<'_>, surface: u64, _at: Point, pixels: &[u8]) {
        // `pixels` borrows the request in the ring: checked in place.
        let Some(s) = self.surfaces.get_mut(&surface) else {
            self.lost(ctx, surface, format!("no surface {surface}"));
            return;
        };
        let frame = s.frames;
        s.frames += 1;
        let expected = u64::from(s.size.width) * u64::from(s.size.height) * 4;
        if pixels.len() as u64 != expected || !is_frame(frame, pixels) {
            self.lost(ctx, surface, format!("frame {frame} arrived damaged"));
        }
    }

    fn commit(&mut self, ctx: &display::Context<'_>, _surface: u64) {
        self.frame += 1;
        let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let _ = ctx.events().vsync(ctx.client(), self.frame, now);
    }

    fn cursor_moved(&mut self, _ctx: &display::Context<'_>, _at: Point) {}

    fn set_gamma(&mut self, _ctx: &display::Context<'_>, curve: VecView<'_, u16>) -> bool {
        // A usable curve rises (or stays) from entry to entry.
        let values: Vec<u16> = curve.iter().collect();
        !values.is_empty() && values.windows(2).all(|w| w[0] <= w[1])
    }
}

impl DisplayServer {
    fn new() -> Self {
        DisplayServer {
            surfaces: HashMap::new(),
            next_id: 0,
            frame: 0,
            started: Instant::now(),
        }
    }
}

/// The server process: binds `name`, serves one client until it leaves.
fn server(name: &str) -> Result<()> {
    let mut service = Service::bind(name, display::service_config())?;
    let mut channel = service.accept_timeout(START_STOP)?;
    // One client only: dropping the service removes its socket.
    drop(service);
    let server = DisplayServer::new();
    let events = display::Events::new().with_timeout(STUCK);
    match display::serve_channel_with(&mut channel, server, &events, &ServeOptions::default())? {
        ServeEnd::PeerDied => Ok(()),
        other => Err(format!("the serve loop ended: {other:?}").into()),
    }
}

/// The server process over the network: serves the same `DisplayServer` at
/// `url` (in the background, on the net layer's threads) until its one
/// client has come and gone.
fn net_server(url: &str) -> Result<()> {
    let events = display::Events::new().with_timeout(STUCK);
    let net = display::serve_url(url, DisplayServer::new(), &events)?;
    let mut open = 0u32;
    let mut served = false;
    let deadline = Instant::now() + START_STOP;
    loop {
        for e in net.take_events() {
            match e {
                ServerEvent::Accepted { .. } => {
                    open += 1;
                    served = true;
                }
                ServerEvent::Closed { .. } => open = open.saturating_sub(1),
                _ => {}
            }
        }
        if served && open == 0 {
            return Ok(());
        }
        if !served && Instant::now() > deadline {
            return Err(format!("no client came to {url} in {START_STOP:?}").into());
        }
        // Any event ends the wait; the loop above counts it.
        let _ = net.wait_event(Duration::from_millis(100), |_| false);
    }
}

// ------------------------------------------------------------------ client

/// Starts the server process and connects to it.
fn start_server() -> Result<(ServerGuard, display::Client)> {
    let name = format!("display-{}", std::process::id());
    let mut server = ServerGuard::spawn_self(&[SERVER_ARG, &name])?;
    let client = examples::connect(&mut server, START_STOP, || display::Client::connect(&name))?;
    Ok((server, client))
}

/// `url` with a free port in place of port 0 (the client picks it, so that
/// it knows where to connect).
fn with_free_port(url: &str) -> Result<String> {
    match Address::from_target(url)? {
        Address::Tcp(host_port) if host_port.ends_with(":0") => {
            let listener = std::net::TcpListener::bind(&host_port)?;
            let port = listener.local_addr()?.port();
            let host = &host_port[..host_port.len() - 2];
            Ok(format!("tcp://{host}:{port}"))
        }
        Address::Tcp(_) => Ok(url.to_string()),
        other => Err(format!("the demo serves tcp:// URLs, not {other}").into()),
    }
}

/// Starts the server process at `url` and connects to it over the network.
fn start_net_server(url: &str) -> Result<(ServerGuard, display::Client<Endpoint>, String)> {
    let url = with_free_port(url)?;
    let mut server = ServerGuard::spawn_self(&[SERVER_URL_ARG, &url])?;
    let deadline = Instant::now() + START_STOP;
    // Until the server listens, the connect is refused: try again.
    let client = loop {
        match display::Client::connect_url(&url) {
            Ok(client) => break client,
            Err(e) => {
                if let Some(status) = server.child()?.try_wait()? {
                    return Err(format!("the server exited before serving ({status})").into());
                }
                if Instant::now() >= deadline {
                    return Err(format!("the server did not come up at {url}: {e}").into());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    Ok((server, client, url))
}

fn rect(width: u32, height: u32) -> Rect {
    Rect {
        origin: Point { x: 0, y: 0 },
        width,
        height,
    }
}

fn client(plan: &Plan, url: Option<&str>) -> Result<()> {
    match url {
        None => {
            let (mut server, mut client) = start_server()?;
            let pid = server.child()?.id();
            let measured = demo(&mut client, plan, pid, "shared memory")?;
            let rings = client.rpc().transport();
            report(
                plan,
                &measured,
                Some((rings.tx_ring().capacity(), rings.rx_ring().capacity())),
            );
            // Closing is the server's signal to exit.
            drop(client);
            server.wait_success(START_STOP)
        }
        Some(url) => {
            let (mut server, mut client, url) = start_net_server(url)?;
            let pid = server.child()?.id();
            let measured = demo(&mut client, plan, pid, &url)?;
            report(plan, &measured, None);
            if let Some(net) = client.rpc().transport().net() {
                println!("network counters (client):");
                print!("{}", net.stats());
            }
            drop(client);
            server.wait_success(START_STOP)
        }
    }
}

/// What the demo measured.
struct Measured {
    calls: u64,
    calls_per_sec: f64,
    hist: Histogram<u64>,
    mib_per_sec: f64,
    elapsed: Duration,
}

/// Steps 1 to 6, through the generated client over any transport.
fn demo<T: Transport>(
    client: &mut display::Client<T>,
    plan: &Plan,
    server_pid: u32,
    over: &str,
) -> Result<Measured> {
    println!(
        "display: client pid {} <-> server pid {} over {over}, protocol {} version {}",
        std::process::id(),
        server_pid,
        display::NAME,
        client.version(),
    );

    // 1. Surfaces.
    let main = client.create_surface(&rect(WIDTH, HEIGHT), &PixelFormat::Rgba8, "main")?;
    let overlay = client.create_surface(&rect(64, 64), &PixelFormat::Bgra8, "cursor")?;
    println!("created surfaces {main} ({WIDTH}x{HEIGHT} RGBA) and {overlay} (64x64 BGRA)");

    // 2. Typed errors: the IDL's `result<(), DisplayError>` arrives as
    //    `CallError::Remote(DisplayError)`.
    let missing = main + overlay + 100;
    match client.resize(missing, &rect(640, 480)) {
        Err(CallError::Remote(DisplayError::NoSuchSurface)) => {
            println!("resize of surface {missing}: Remote(NoSuchSurface), as expected");
        }
        other => return Err(format!("resize of a missing surface gave {other:?}").into()),
    }
    match client.resize(main, &rect(16_384, 16_384)) {
        Err(CallError::Remote(DisplayError::OutOfMemory(bytes))) => {
            println!("resize to 16384x16384: Remote(OutOfMemory({bytes})), as expected");
        }
        other => return Err(format!("a huge resize gave {other:?}").into()),
    }
    // Larger than the ring (`@buffer(4 MiB)`) though within `bytes<16 MiB>`:
    // refused before anything is written.
    match client.blit_in_place(main, &Point { x: 0, y: 0 }, 8 << 20, |_| {}) {
        Err(CallError::TooLarge { size, max }) => {
            println!("an 8 MiB blit: TooLarge {{ size: {size}, max: {max} }}, nothing sent");
        }
        other => return Err(format!("an 8 MiB blit gave {other:?}").into()),
    }

    // 3. A method of version 2.
    let curve: Vec<u16> = (0..256u16).map(|i| i * 257).collect();
    if !client.set_gamma(&curve)? {
        return Err("the server refused a rising gamma curve".into());
    }

    // 4. Typed two-way calls, measured. `resize`'s `@timeout(250)` suits
    //    an interactive caller; a benchmark on a busy machine should not
    //    fail on one stall, so these calls get a longer deadline.
    let (calls, calls_per_sec, hist) = {
        let mut timed = client.with_timeout(STUCK);
        let size = rect(WIDTH, HEIGHT);
        for _ in 0..plan.warm_up {
            timed.resize(main, &size)?;
        }
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
        let start = Instant::now();
        let mut prev = start;
        while hist.len() < plan.max_calls && prev - start < plan.budget {
            timed.resize(main, &size)?;
            let now = Instant::now();
            hist.saturating_record(u64::try_from((now - prev).as_nanos())?);
            prev = now;
        }
        let per_sec = hist.len() as f64 / (prev - start).as_secs_f64();
        (hist.len(), per_sec, hist)
    };

    // 5. Frames, written in place in the ring, each committed and answered
    //    by a vsync event.
    let origin = Point { x: 0, y: 0 };
    let mut last_vsync = 0;
    let start = Instant::now();
    for frame in 0..plan.frames {
        client.blit_in_place(main, &origin, FRAME_BYTES, |pixels| paint(frame, pixels))?;
        client.commit(main)?;
        match client.recv_event(STUCK)? {
            Event::Vsync { frame: n, .. } if n > last_vsync => last_vsync = n,
            Event::SurfaceLost { surface, reason } => {
                return Err(format!("surface {surface} lost: {reason:?}").into());
            }
            other => return Err(format!("expected a vsync, got {other:?}").into()),
        }
    }
    let elapsed = start.elapsed();
    let frame_mib = (plan.frames * FRAME_BYTES as u64) as f64 / f64::from(1 << 20);
    let mib_per_sec = frame_mib / elapsed.as_secs_f64();

    // Cursor moves are `@no_queue`: when the ring is full they are dropped
    // (and counted) rather than waited for.
    let mut dropped = 0u32;
    for x in 0..1_000 {
        match client.cursor_moved(&Point { x, y: x / 2 }) {
            Ok(()) => {}
            Err(CallError::Dropped) => dropped += 1,
            Err(e) => return Err(e.into()),
        }
    }
    println!("1000 cursor moves (@no_queue): {dropped} dropped for want of room");

    // 6. A one-way call has no reply to fail with: the server reports a
    //    blit to a missing surface with an event. The commit after it makes
    //    sure the blit was handled.
    client.blit(missing, &origin, &[0; 64])?;
    client.commit(main)?;
    match client.recv_event(STUCK)? {
        Event::SurfaceLost { surface, reason } if surface == missing => {
            let reason = reason.map(Bounded::into_inner).unwrap_or_default();
            println!("blit to surface {missing}: surface_lost event ({reason})");
        }
        other => return Err(format!("expected surface_lost, got {other:?}").into()),
    }

    Ok(Measured {
        calls,
        calls_per_sec,
        hist,
        mib_per_sec,
        elapsed,
    })
}

/// 7. The report; `rings` are how far the shm rings grew (up, down).
fn report(plan: &Plan, m: &Measured, rings: Option<(u64, u64)>) {
    let Measured {
        calls,
        calls_per_sec,
        hist,
        mib_per_sec,
        elapsed,
    } = m;
    println!();
    println!(
        "typed calls (resize, two-way): {calls} in {:?}",
        plan.budget
    );
    println!("  calls per second     {calls_per_sec:>12.0}");
    println!(
        "  round trip p50       {:>12}",
        micros(hist.value_at_quantile(0.50))
    );
    println!(
        "  round trip p99       {:>12}",
        micros(hist.value_at_quantile(0.99))
    );
    println!(
        "frames: {} x {} written in place, committed, vsync'd",
        plan.frames,
        mib(FRAME_BYTES as u64)
    );
    println!("  throughput           {mib_per_sec:>9.0} MiB/s ({elapsed:.2?})");
    let grown = |r: Option<u64>| r.map_or_else(|| "no ring: network".into(), mib);
    println!("rings (maximum from the IDL, decided by; grown to):");
    println!(
        "  client -> server     {:>9} ({}; {})",
        mib(display::CLIENT_TO_SERVER_MAX),
        display::CLIENT_TO_SERVER_DECIDED_BY,
        grown(rings.map(|r| r.0))
    );
    println!(
        "  server -> client     {:>9} ({}; {})",
        mib(display::SERVER_TO_CLIENT_MAX),
        display::SERVER_TO_CLIENT_DECIDED_BY,
        grown(rings.map(|r| r.1))
    );
}

fn micros(ns: u64) -> String {
    format!("{:.2} µs", ns as f64 / 1_000.0)
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else {
        format!("{} KiB", bytes >> 10)
    }
}
