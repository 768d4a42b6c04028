//! Gateways between real processes: the display service over shm on "machine B", the
//! `shm-gateway` binary exporting it over QUIC on B, the binary importing it on "machine
//! A", and this test as the display client over shm on A. Each "machine" has its own
//! runtime directory, so neither sees the other's local services. Every test has a
//! watchdog.

#[path = "../../shm-channel/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shm_channel::layout::{MessageHeader, MessageView, MessageWriter};
use shm_channel::net::{
    ClientConfig as NetConfig, ClientEvent, ConnConfig, ConnError, ConnEvent, Connection, Delivery,
    Identity, NetClient, OutMessage, ProtocolSpec, QuicClientTls,
};
use shm_channel::rpc::{
    self, CallError, IncomingMessage, Outgoing, ServeOptions, Transport, TransportError,
    send_objects,
};
use shm_channel::wire::{Bounded, VecView};
use shm_gateway::stats::Stats;
use shm_gateway::testbed::{self, GatewayProcess, ServiceSpec, Site};
use support::{ChildGuard, child_role, with_watchdog};

#[allow(dead_code)]
mod idl {
    shm_channel::include_idl!("../examples/idl/display.idl");
}

use idl::display::{self, Event};
use idl::{DisplayError, PixelFormat, Point, Rect};

const LIMIT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(20);
const DISPLAY_ROLE: &str = "display-server";
const ROLE_TEST: &str = "child_roles";
const DIR_ENV: &str = "SHM_GATEWAY_TEST_DIR";
const ECHO_ROLE: &str = "echo-server";
const NAME_ENV: &str = "SHM_GATEWAY_TEST_NAME";
/// The echo service's rings, each way.
const ECHO_RING: u64 = 1 << 20;

// ------------------------------------------------------------------ the display service

/// A display service (the example's, smaller): surfaces, typed errors, events.
#[derive(Default)]
struct DisplayServer {
    surfaces: HashMap<u64, (Rect, u64)>,
    next_id: u64,
    frame: u64,
}

impl display::Server for DisplayServer {
    fn create_surface(
        &mut self,
        _ctx: &display::Context<'_>,
        size: Rect,
        _format: PixelFormat,
        _title: &str,
    ) -> u64 {
        self.next_id += 1;
        self.surfaces.insert(self.next_id, (size, 0));
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
        let bytes = u64::from(size.width) * u64::from(size.height) * 4;
        if bytes > 64 << 20 {
            return Err(DisplayError::OutOfMemory(bytes));
        }
        s.0 = size;
        Ok(())
    }

    fn blit(&mut self, ctx: &display::Context<'_>, surface: u64, _at: Point, pixels: &[u8]) {
        let Some((size, frames)) = self.surfaces.get_mut(&surface) else {
            let reason = Bounded::new(format!("no surface {surface}")).ok();
            let _ = ctx.events().surface_lost(ctx.client(), surface, &reason);
            return;
        };
        let expected = u64::from(size.width) * u64::from(size.height) * 4;
        let frame = *frames;
        *frames += 1;
        if pixels.len() as u64 != expected
            || !pixels
                .iter()
                .enumerate()
                .all(|(i, p)| *p == pixel(frame, i))
        {
            let reason = Bounded::new(format!("frame {frame} arrived damaged")).ok();
            let _ = ctx.events().surface_lost(ctx.client(), surface, &reason);
        }
    }

    fn commit(&mut self, ctx: &display::Context<'_>, _surface: u64) {
        self.frame += 1;
        let _ = ctx.events().vsync(ctx.client(), self.frame, 0);
    }

    fn cursor_moved(&mut self, _ctx: &display::Context<'_>, _at: Point) {}

    fn set_gamma(&mut self, _ctx: &display::Context<'_>, curve: VecView<'_, u16>) -> bool {
        let v: Vec<u16> = curve.iter().collect();
        !v.is_empty() && v.windows(2).all(|w| w[0] <= w[1])
    }
}

fn pixel(frame: u64, index: usize) -> u8 {
    (index as u8) ^ (frame as u8).wrapping_mul(31)
}

/// Plays the child roles when re-executed.
#[test]
fn child_roles() {
    if child_role().as_deref() == Some(DISPLAY_ROLE) {
        let dir = PathBuf::from(std::env::var(DIR_ENV).expect("dir"));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        // Never outlives a crashed test run by much.
        std::thread::spawn(move || {
            std::thread::sleep(LIMIT);
            stop2.store(true, Ordering::Relaxed);
        });
        let opts = ServeOptions {
            stop: Some(stop),
            ..ServeOptions::default()
        };
        println!("serving");
        let end = display::serve_with(
            "display",
            DisplayServer::default(),
            display::service_config().runtime_dir(&dir),
            &display::Events::new(),
            &opts,
        );
        println!("display server ended: {end:?}");
    }
    if child_role().as_deref() == Some(ECHO_ROLE) {
        let dir = PathBuf::from(std::env::var(DIR_ENV).expect("dir"));
        let name = std::env::var(NAME_ENV).expect("name");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        std::thread::spawn(move || {
            std::thread::sleep(LIMIT);
            stop2.store(true, Ordering::Relaxed);
        });
        println!("serving");
        // A slow client is waited for a minute (the slow-peer test pauses for seconds).
        let end = testbed::serve_echo(
            &name,
            &dir,
            ECHO_RING,
            Duration::from_secs(60),
            &testbed::Echo::default(),
            stop,
        );
        println!("echo server ended: {end:?}");
    }
}

// ------------------------------------------------------------------ machines and gateways

/// The display service as the gateways carry it.
fn display_spec() -> ServiceSpec {
    ServiceSpec {
        name: "display".into(),
        protocol: "Display".into(),
        versions: [1, 2],
        ring_sizes: [display::CLIENT_TO_SERVER_MAX, display::SERVER_TO_CLIENT_MAX],
        max_message: 4 << 20,
    }
}

fn new_site() -> Site {
    Site::new().expect("a scratch site")
}

fn free_port() -> u16 {
    testbed::free_port().expect("a port free for UDP and TCP")
}

/// Gateway B's configuration: exports `display` (allowed to `gw-a`) and nothing else.
fn config_b(site: &Site, port: u16) -> PathBuf {
    site.config_b(port, &display_spec(), "", "").unwrap()
}

/// Gateway A's configuration: imports B's display as `display`.
fn config_a(site: &Site, port: u16) -> PathBuf {
    site.config_a(port, &display_spec(), "").unwrap()
}

/// A `shm-gateway run` process.
fn start_gateway(config: &Path) -> GatewayProcess {
    GatewayProcess::binary(env!("CARGO_BIN_EXE_shm-gateway").as_ref(), config)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn start_display_server(site: &Site) -> ChildGuard {
    let mut server = ChildGuard::spawn(
        ROLE_TEST,
        DISPLAY_ROLE,
        &[(DIR_ENV, site.machine("b").display().to_string())],
    );
    server.wait_for_line("serving");
    server
}

/// Connects to `display` on machine A (through gateway A, as soon as it is bound).
fn connect_display(site: &Site) -> display::Client {
    let config = display::client_config()
        .runtime_dir(site.machine("a"))
        .timeout(STEP);
    let deadline = Instant::now() + STEP;
    loop {
        match display::Client::connect_with("display", &config) {
            Ok(mut c) => {
                c.set_default_timeout(STEP);
                return c;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connecting to display on machine A: {e}"),
        }
    }
}

fn rect(width: u32, height: u32) -> Rect {
    Rect {
        origin: Point { x: 0, y: 0 },
        width,
        height,
    }
}

/// The display demo's calls and events, through the gateways.
fn display_session(client: &mut display::Client) {
    let main = client
        .create_surface(&rect(256, 256), &PixelFormat::Rgba8, "main")
        .expect("create_surface");
    let missing = main + 1000;
    match client.with_timeout(STEP).resize(missing, &rect(10, 10)) {
        Err(CallError::Remote(DisplayError::NoSuchSurface)) => {}
        other => panic!("resize of a missing surface: {other:?}"),
    }
    match client
        .with_timeout(STEP)
        .resize(main, &rect(16_384, 16_384))
    {
        Err(CallError::Remote(DisplayError::OutOfMemory(n))) => assert_eq!(n, 1 << 30),
        other => panic!("a huge resize: {other:?}"),
    }
    client
        .with_timeout(STEP)
        .resize(main, &rect(256, 256))
        .expect("resize");
    let curve: Vec<u16> = (0..256u16).map(|i| i * 257).collect();
    assert!(client.set_gamma(&curve).expect("set_gamma"));
    // Frames of 256 KiB, written in place, each committed (`@sync`) and answered by an
    // event.
    for frame in 0..4u64 {
        client
            .blit_in_place(main, &Point { x: 0, y: 0 }, 256 * 256 * 4, |p| {
                for (i, b) in p.iter_mut().enumerate() {
                    *b = pixel(frame, i);
                }
            })
            .expect("blit");
        client.commit(main).expect("commit");
        match client.recv_event(STEP).expect("an event") {
            Event::Vsync { .. } => {}
            other => panic!("expected vsync, got {other:?}"),
        }
    }
    // `@no_queue` cursor moves: delivered or dropped, never an error.
    for x in 0..100 {
        match client.cursor_moved(&Point { x, y: x }) {
            Ok(()) | Err(CallError::Dropped) => {}
            Err(e) => panic!("cursor_moved: {e:?}"),
        }
    }
    // A one-way call's trouble comes back as an event.
    client
        .blit(missing, &Point { x: 0, y: 0 }, &[0; 64])
        .expect("blit");
    client.commit(main).expect("commit");
    let mut saw_lost = false;
    for _ in 0..2 {
        match client.recv_event(STEP).expect("an event") {
            Event::SurfaceLost { surface, .. } if surface == missing => saw_lost = true,
            Event::Vsync { .. } => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert!(saw_lost, "no surface_lost event");
}

fn stats(site: &Site, gw: &str) -> Stats {
    shm_gateway::control::query(&site.control(gw)).expect("stats")
}

// ------------------------------------------------------------------ tests

#[test]
fn gateway_end_to_end_display_calls_events_and_restart() {
    if child_role().is_some() {
        return;
    }
    with_watchdog(LIMIT, || {
        let site = new_site();
        let port = free_port();
        let _server = start_display_server(&site);
        let mut gw_b = start_gateway(&config_b(&site, port));
        let _gw_a = start_gateway(&config_a(&site, port));

        let mut client = connect_display(&site);
        display_session(&mut client);
        let b = stats(&site, "b");
        let exported = b.export("display").unwrap();
        assert_eq!(exported.accepted, 1, "{b}");
        assert!(
            exported.messages_in >= 10 && exported.messages_out >= 10,
            "{b}"
        );
        assert!(exported.bytes_in >= 4 * 256 * 256 * 4, "{b}");

        // Gateway B dies mid-run: calls fail with the documented errors, never hang.
        gw_b.kill9();
        let started = Instant::now();
        let mut errors = Vec::new();
        loop {
            match client.create_surface(&rect(8, 8), &PixelFormat::Rgba8, "while down") {
                Ok(_) if errors.is_empty() => {
                    // QUIC takes a moment to notice a peer that vanished without a word.
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(s) => panic!("a call succeeded while B was down: surface {s}; after {errors:?}"),
                Err(e) => {
                    errors.push(format!("{e:?}"));
                    match e {
                        CallError::Transport(TransportError::ConnectionLost(_))
                        | CallError::Transport(TransportError::NotConnected) => {}
                        other => panic!("undocumented error while B is down: {other:?}"),
                    }
                    if errors.len() >= 3 {
                        break;
                    }
                }
            }
            assert!(started.elapsed() < STEP, "no error within {STEP:?}");
        }
        // While B stays down, a call fails at once (bounded by the step, not a timeout).
        let t = Instant::now();
        match client.with_timeout(STEP).resize(1, &rect(1, 1)) {
            Err(CallError::Transport(TransportError::NotConnected)) => {}
            other => panic!("a call while B is down: {other:?}"),
        }
        assert!(t.elapsed() < STEP);
        println!("errors while B was down: {errors:?}");

        // B comes back: the same client works again (a new session on B).
        let _gw_b = start_gateway(&config_b(&site, port));
        let started = Instant::now();
        loop {
            match client.create_surface(&rect(8, 8), &PixelFormat::Rgba8, "after") {
                Ok(_) => break,
                Err(CallError::Transport(TransportError::NotConnected)) => {
                    assert!(started.elapsed() < STEP, "B never reached again");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("after B restarted: {e:?}"),
            }
        }
        display_session(&mut client);

        // A new local client works too.
        let mut second = connect_display(&site);
        display_session(&mut second);

        let a = stats(&site, "a");
        let imported = a.import("display").unwrap();
        assert!(imported.connects >= 2, "{a}");
        assert!(imported.failed_calls >= 3, "{a}");
        assert_eq!(imported.accepted, 2, "{a}");
        println!("gateway A: {a}");
    });
}

#[test]
fn gateway_policy_refuses_strangers_and_unexported_services() {
    if child_role().is_some() {
        return;
    }
    with_watchdog(LIMIT, || {
        let site = new_site();
        let port = free_port();
        let _server = start_display_server(&site);
        let _gw_b = start_gateway(&config_b(&site, port));
        let addr = vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))];
        let connect = |protocol: &str, identity: Option<Identity>| {
            let mut tls = QuicClientTls::new("gw-b", site.ca().unwrap());
            tls.identity = identity;
            let mut config = NetConfig::new(ProtocolSpec::new(protocol, 2));
            config.connect_timeout = Duration::from_secs(5);
            NetClient::connect_quic(addr.clone(), config, &tls, STEP)
        };
        let refused = |r: Result<NetClient, TransportError>| -> String {
            match r {
                Ok(c) => match c.wait_event(STEP, |e| matches!(e, ClientEvent::Closed(_))) {
                    Some(ClientEvent::Closed(ConnError::ClosedByPeer { reason, .. })) => reason,
                    other => panic!("expected a refusal, got {other:?}"),
                },
                Err(e) => e.to_string(),
            }
        };

        // No certificate: TLS refuses it.
        let e = refused(connect("Display", None));
        println!("no certificate: {e}");
        // A certificate of another CA: TLS refuses it.
        let e = refused(connect(
            "Display",
            Some(site.identity("other", "stranger").unwrap()),
        ));
        println!("another CA: {e}");
        // The right CA, a name not allowed: the gateway refuses it.
        let e = refused(connect(
            "Display",
            Some(site.identity("certs", "intruder").unwrap()),
        ));
        assert!(e.contains("certificate intruder is not allowed"), "{e}");
        // The right certificate, a protocol that is not exported.
        let e = refused(connect(
            "Secret",
            Some(site.identity("certs", "gw-a").unwrap()),
        ));
        assert!(
            e.to_lowercase().contains("secret") || e.contains("refused"),
            "{e}"
        );

        // The right certificate and service: a direct QUIC client of the export (no
        // gateway on its side) is served.
        let net =
            connect("Display", Some(site.identity("certs", "gw-a").unwrap())).expect("allowed");
        let mut client = display::Client::new(net);
        client.set_default_timeout(STEP);
        let s = client
            .create_surface(&rect(4, 4), &PixelFormat::Bgra8, "direct")
            .expect("a call through the export");
        client.commit(s).expect("commit");
        assert!(matches!(client.recv_event(STEP), Ok(Event::Vsync { .. })));

        // The same over TCP with mutual TLS: the policy reads the same certificate.
        let tcp = |identity: Identity| {
            let mut tls = QuicClientTls::new("gw-b", site.ca().unwrap());
            tls.identity = Some(identity);
            let mut config = NetConfig::new(ProtocolSpec::new("Display", 2));
            config.tls = Some(tls);
            NetClient::connect(addr.clone(), config, STEP)
        };
        let e = refused(tcp(site.identity("certs", "intruder").unwrap()));
        assert!(e.contains("certificate intruder is not allowed"), "{e}");
        let mut over_tcp = display::Client::new(
            tcp(site.identity("certs", "gw-a").unwrap()).expect("TLS over TCP"),
        );
        over_tcp.set_default_timeout(STEP);
        over_tcp
            .create_surface(&rect(4, 4), &PixelFormat::Bgra8, "tcp")
            .expect("a call over TLS/TCP");

        let b = stats(&site, "b");
        let exported = b.export("display").unwrap();
        assert!(exported.refused >= 2, "{b}");
        assert_eq!(exported.accepted, 2, "{b}");
    });
}

#[test]
fn gateway_check_names_the_file_and_line_of_an_error() {
    if child_role().is_some() {
        return;
    }
    with_watchdog(LIMIT, || {
        let site = new_site();
        let bad = site.write(
            "bad.toml",
            "[gateway]\nname = \"x\"\n\n[[import]]\nname = \"display\"\nremote = \"quic://h:1\"\nprotocl = \"Display\"\n",
        ).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_shm-gateway"))
            .args(["check", "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("bad.toml:7: unknown field `protocl`"), "{err}");
        let good = config_b(&site, 7000);
        let out = Command::new(env!("CARGO_BIN_EXE_shm-gateway"))
            .args(["check", "--config"])
            .arg(&good)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// Round trips of a small call (`set_gamma` with a 2-entry curve): p50 and p99 in µs.
fn round_trips<T: shm_channel::rpc::Transport>(
    client: &mut display::Client<T>,
    n: usize,
) -> (f64, f64) {
    let curve = [1u16, 2];
    for _ in 0..n / 10 {
        assert!(client.set_gamma(&curve).expect("warm-up call"));
    }
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            assert!(client.set_gamma(&curve).expect("call"));
            t.elapsed()
        })
        .collect();
    times.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (us(times[n / 2]), us(times[n * 99 / 100]))
}

/// What a gateway pair adds to a call: the same small call over shm straight to the
/// service, through gateway B only (a QUIC client of the export), and through both
/// gateways (shm client on A).
/// `cargo test -p shm-gateway --test gateway -- --ignored gateway_latency --nocapture`
#[test]
#[ignore = "a measurement, not a test"]
fn gateway_latency() {
    if child_role().is_some() {
        return;
    }
    with_watchdog(Duration::from_secs(600), || {
        let n = 5_000;
        let site = new_site();
        let port = free_port();
        let _server = start_display_server(&site);
        let _gw_b = start_gateway(&config_b(&site, port));
        let _gw_a = start_gateway(&config_a(&site, port));

        let config = display::client_config()
            .runtime_dir(site.machine("b"))
            .timeout(STEP);
        let mut shm = display::Client::connect_with("display", &config).expect("shm client");
        let direct = round_trips(&mut shm, n);

        let mut tls = QuicClientTls::new("gw-b", site.ca().unwrap());
        tls.identity = Some(site.identity("certs", "gw-a").unwrap());
        let net = NetClient::connect_quic(
            vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))],
            NetConfig::new(ProtocolSpec::new("Display", 2)),
            &tls,
            STEP,
        )
        .expect("QUIC client");
        let mut one = display::Client::new(net);
        let one_gw = round_trips(&mut one, n);

        let mut two = connect_display(&site);
        let two_gw = round_trips(&mut two, n);

        println!("small call round trip, {n} calls each (p50 / p99, µs):");
        println!(
            "  shm, straight to the service:          {:8.1} / {:8.1}",
            direct.0, direct.1
        );
        println!(
            "  QUIC client -> gateway B -> service:   {:8.1} / {:8.1}",
            one_gw.0, one_gw.1
        );
        println!(
            "  shm -> gateway A -> QUIC -> B -> svc:  {:8.1} / {:8.1}",
            two_gw.0, two_gw.1
        );
        println!(
            "  gateway A adds {:.1} µs at p50 to the QUIC call; the pair adds {:.1} µs to the shm call",
            two_gw.0 - one_gw.0,
            two_gw.0 - direct.0
        );
        println!(
            "  display rings: CLIENT_TO_SERVER_MAX = {}, SERVER_TO_CLIENT_MAX = {}",
            display::CLIENT_TO_SERVER_MAX,
            display::SERVER_TO_CLIENT_MAX
        );
    });
}

// ------------------------------------------------------------------ the echo service

fn start_echo_server(site: &Site, name: &str) -> ChildGuard {
    let mut server = ChildGuard::spawn(
        ROLE_TEST,
        ECHO_ROLE,
        &[
            (DIR_ENV, site.machine("b").display().to_string()),
            (NAME_ENV, name.to_owned()),
        ],
    );
    server.wait_for_line("serving");
    server
}

/// An RPC client of the echo service over shm on `machine` (through gateway A's import
/// on machine A), retried until the name is bound.
fn connect_echo(site: &Site, machine: &str) -> rpc::Client<shm_channel::Channel> {
    let config = shm_channel::ClientConfig::new(testbed::ECHO_PROTOCOL, 1..=1)
        .ring_sizes(ECHO_RING, ECHO_RING)
        .runtime_dir(site.machine(machine))
        .timeout(STEP);
    let deadline = Instant::now() + STEP;
    loop {
        match shm_channel::connect("echo", &config) {
            Ok(c) => {
                let mut client = rpc::Client::new(c);
                client.set_default_timeout(STEP);
                return client;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connecting to echo on machine {machine}: {e}"),
        }
    }
}

/// A QUIC client of gateway B's export `GwEcho`, as `gw-a`.
fn quic_echo_client(site: &Site, port: u16) -> Result<NetClient, TransportError> {
    let mut tls = QuicClientTls::new("gw-b", site.ca().unwrap());
    tls.identity = Some(site.identity("certs", "gw-a").unwrap());
    let mut config = NetConfig::new(ProtocolSpec::new(testbed::ECHO_PROTOCOL, 1));
    config.connect_timeout = Duration::from_secs(5);
    config.conn.max_message = 4 << 20;
    let addr = vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))];
    NetClient::connect_quic(addr, config, &tls, STEP)
}

/// The reason a refused connection got: its connect's error, or the reason of the
/// close that followed its handshake.
fn refusal(r: Result<NetClient, TransportError>) -> String {
    match r {
        Ok(c) => match c.wait_event(STEP, |e| matches!(e, ClientEvent::Closed(_))) {
            Some(ClientEvent::Closed(ConnError::ClosedByPeer { reason, .. })) => reason,
            other => panic!(
                "expected a refusal, got {other:?} (events: {:?})",
                c.take_events()
            ),
        },
        Err(e) => e.to_string(),
    }
}

/// One `echo` call of `payload`, checked.
fn echo<T: shm_channel::rpc::Transport>(
    client: &mut rpc::Client<T>,
    payload: &[u8],
) -> Result<(), CallError> {
    echo_within(client, payload, STEP)
}

/// [`echo`] with a timeout of its own.
fn echo_within<T: shm_channel::rpc::Transport>(
    client: &mut rpc::Client<T>,
    payload: &[u8],
    timeout: Duration,
) -> Result<(), CallError> {
    client.call_with(
        &testbed::ECHO,
        &[payload.len() as u64],
        |sink| {
            sink.object(0, payload.len() as u64)?
                .copy_from_slice(payload);
            Ok(())
        },
        timeout,
        |m| {
            assert_eq!(m.object(0), Some(payload), "the echo differs");
            Ok::<(), String>(())
        },
    )
}

/// Machine B with the echo service (rings of `ECHO_RING`, messages up to
/// `max_message`) exported by gateway B with `extra_export`: the site, B's port, the
/// service and B's configuration.
struct EchoB {
    site: Site,
    port: u16,
    spec: ServiceSpec,
    _server: ChildGuard,
    config: PathBuf,
}

fn echo_b(max_message: u64, extra_export: &str) -> EchoB {
    let site = new_site();
    let port = free_port();
    let mut spec = testbed::echo_spec("echo", ECHO_RING);
    spec.max_message = max_message;
    let server = start_echo_server(&site, "echo");
    let config = site.config_b(port, &spec, "", extra_export).unwrap();
    EchoB {
        site,
        port,
        spec,
        _server: server,
        config,
    }
}

#[test]
#[ignore = "quarantined: failed in the project's CI on 2026-11-21 and never locally; `.ci/run` runs it after the gating tests and prints what it says (docs/NETWORK.md, Tests)"]
fn gateway_resends_an_idempotent_call_across_a_remote_restart_and_answers_once() {
    if child_role().is_some() {
        return;
    }
    with_watchdog(LIMIT, || {
        let b = echo_b(ECHO_RING, "");
        let (site, port, config_b) = (&b.site, b.port, &b.config);
        let mut gw_b = start_gateway(config_b);
        let _gw_a = start_gateway(&site.config_a(port, &b.spec, "").unwrap());

        let mut client = connect_echo(site, "a");
        echo(&mut client, b"warm-up").expect("a call through both gateways");
        // The `@idempotent` call: the service holds it 1.5 s; gateway B dies meanwhile.
        let slow = std::thread::spawn(move || {
            let mut words = [0u8; 16];
            words[..8].copy_from_slice(&1500u64.to_le_bytes());
            words[8..].copy_from_slice(&7u64.to_le_bytes());
            let r = client.call_with(
                &testbed::SLOW,
                &[16],
                |sink| {
                    sink.object(0, 16)?.copy_from_slice(&words);
                    Ok(())
                },
                Duration::from_secs(60),
                |m| {
                    let d = m.object(0).ok_or("no object")?;
                    let word =
                        |i: usize| u64::from_le_bytes(d[i * 8..i * 8 + 8].try_into().unwrap());
                    Ok::<_, String>((word(0), word(1)))
                },
            );
            (client, r)
        });
        // Once B handed the call to the service, B crashes and comes back.
        let deadline = Instant::now() + STEP;
        while stats(site, "b").export("echo").unwrap().messages_in < 2 {
            assert!(Instant::now() < deadline, "the call never reached B");
            std::thread::sleep(Duration::from_millis(10));
        }
        gw_b.kill9();
        std::thread::sleep(Duration::from_millis(300));
        let _gw_b = start_gateway(config_b);

        let (mut client, r) = slow.join().unwrap();
        // Both gateways' counters, for every failure below.
        let both = || {
            format!(
                "gateway A: {}\ngateway B: {}",
                stats(site, "a"),
                stats(site, "b")
            )
        };
        let (tag, executions) = r.unwrap_or_else(|e| {
            panic!(
                "the idempotent call was not answered after B restarted: {e}\n{}",
                both()
            )
        });
        assert_eq!(tag, 7, "{}", both());
        // Sent twice to the service (B's first channel died with B), answered once.
        assert_eq!(executions, 2, "the call was not resent\n{}", both());
        for i in 0..5u8 {
            echo(&mut client, &[i; 100])
                .unwrap_or_else(|e| panic!("call {i} after the restart: {e}\n{}", both()));
        }
        let a = stats(site, "a");
        let imported = a.import("echo").unwrap();
        // Replies written to the local client: warm-up, the idempotent call once, five.
        assert_eq!(
            imported.messages_in,
            7,
            "a reply arrived twice or never\n{}",
            both()
        );
        assert!(imported.connects >= 2, "{}", both());
        println!("{}", both());
    });
}

#[test]
#[ignore = "quarantined: failed in the project's CI on 2026-11-21 and never locally; `.ci/run` runs it after the gating tests and prints what it says (docs/NETWORK.md, Tests)"]
fn gateway_export_limits_refuse_clearly_and_spare_the_other_clients() {
    if child_role().is_some() {
        return;
    }
    with_watchdog(LIMIT, || {
        let b = echo_b(64 << 10, "max_connections = 2");
        let (site, port) = (&b.site, b.port);
        let _gw_b = start_gateway(&b.config);
        // Gateway B's counters, for every failure below.
        let b_now = || format!("gateway B: {}", stats(site, "b"));
        let mut first = rpc::Client::new(quic_echo_client(site, port).expect("client 1"));
        let mut second = rpc::Client::new(quic_echo_client(site, port).expect("client 2"));
        echo(&mut first, b"one").unwrap_or_else(|e| panic!("client 1: {e}\n{}", b_now()));
        echo(&mut second, b"two").unwrap_or_else(|e| panic!("client 2: {e}\n{}", b_now()));

        // A third connection: refused, with the limit in the reason.
        let why = refusal(quic_echo_client(site, port));
        assert!(
            why.contains("its limit of 2 connections is reached"),
            "{why}\n{}",
            b_now()
        );
        // A message over the export's limit: refused with the sizes, before it leaves.
        let big = vec![9u8; 100 << 10];
        match echo(&mut first, &big) {
            Err(
                CallError::TooLarge { size, max }
                | CallError::Transport(TransportError::TooLarge { size, max }),
            ) => {
                assert!(size > 100 << 10 && max == 64 << 10, "{size} / {max}");
            }
            other => panic!("a message over the limit: {other:?}\n{}", b_now()),
        }
        // Both clients keep working, the one that sent too much included.
        for i in 0..10u8 {
            echo(&mut first, &[i; 1000]).unwrap_or_else(|e| {
                panic!(
                    "client 1, call {i} after its refused message: {e}\n{}",
                    b_now()
                )
            });
            echo(&mut second, &[i; 60 << 10])
                .unwrap_or_else(|e| panic!("client 2, call {i} at the limit: {e}\n{}", b_now()));
        }
        echo(&mut second, b"still").unwrap_or_else(|e| panic!("client 2: {e}\n{}", b_now()));
        let b = stats(site, "b");
        let exported = b.export("echo").unwrap();
        assert!(exported.refused >= 1, "{b}");
        assert_eq!(exported.open, 2, "{b}");
        println!("gateway B: {b}");
    });
}

/// A burst toward a service that stops taking messages (busy with a slow call): 128 MiB
/// of calls over QUIC wait in gateway B (its `received` counter ahead of `messages_in`)
/// and, once the service resumes, every call is answered, right, once. The
/// messages a connection holds for order count against its receive window
/// (`ConnConfig::in_order`, see `net::window_tests`), and the first of them is granted
/// past them: this runs that with 513 QUIC streams that complete in any order.
#[test]
fn gateway_carries_a_burst_to_a_stuck_service_and_answers_every_call_once_it_resumes() {
    if child_role().is_some() {
        return;
    }
    with_watchdog(LIMIT, || {
        const CALLS: u64 = 512;
        const SIZE: usize = 256 << 10;
        let b = echo_b(ECHO_RING, "");
        let (site, port) = (&b.site, b.port);
        let _gw_b = start_gateway(&b.config);
        let mut client = quic_echo_client(site, port).expect("client");
        let tx = client.sender();
        let send = |method: u64, id: u64, data: &[u8]| {
            let out = Outgoing::new(method, shm_channel::Kind::Request).request_id(id);
            send_objects(&tx, &out, &[(0, data)], STEP)
                .unwrap_or_else(|e| panic!("sending call {id}: {e}"));
        };
        let mut words = [0u8; 16];
        words[..8].copy_from_slice(&4000u64.to_le_bytes());
        words[8..].copy_from_slice(&7u64.to_le_bytes());
        let held_from = Instant::now();
        send(testbed::SLOW.id, 1, &words);
        for id in 2..=CALLS + 1 {
            send(testbed::ECHO.id, id, &vec![testbed::fill_byte(id, 0); SIZE]);
        }
        // While the slow call holds the service (4 s): until gateway B's count of
        // messages received stops growing for a second.
        let received = || stats(site, "b").export("echo").unwrap().received;
        support::settled(received, 0, CALLS + 1, Duration::from_secs(1), STEP);
        let held = stats(site, "b");
        println!("while the service was stuck: {held}");
        let e = *held.export("echo").unwrap();
        // (Checked while the service surely still sleeps: a machine so slow that the
        // burst took most of the 4 s may see it resume first.)
        if held_from.elapsed() < Duration::from_millis(3500) {
            assert!(
                e.received > e.messages_in + 1,
                "no message waited for the stuck service: {held}"
            );
        } else {
            println!(
                "the burst took {:?}: not checked while stuck",
                held_from.elapsed()
            );
        }
        assert_eq!(e.drops, 0, "{held}");
        // The service catches up: every call answered, right, once.
        let mut seen = std::collections::HashSet::new();
        while (seen.len() as u64) < CALLS + 1 {
            let m = client.recv_timeout(STEP).unwrap_or_else(|e| {
                panic!(
                    "{} of {} replies arrived: {e}\n{}",
                    seen.len(),
                    CALLS + 1,
                    stats(site, "b")
                )
            });
            let id = m.request_id();
            let data = m.object(0).expect("a reply object");
            if id == 1 {
                assert_eq!(&data[..8], &7u64.to_le_bytes(), "the slow call's tag");
            } else {
                assert_eq!(
                    data.len(),
                    SIZE,
                    "reply {id}: {:?}\n{}",
                    String::from_utf8_lossy(&data[..data.len().min(300)]),
                    stats(site, "b")
                );
                assert!(
                    data.iter().all(|b| *b == testbed::fill_byte(id, 0)),
                    "reply {id} damaged"
                );
            }
            assert!(seen.insert(id), "reply {id} twice");
        }
        let done = stats(site, "b");
        let e = done.export("echo").unwrap();
        assert_eq!(
            (e.received, e.messages_in, e.drops),
            (CALLS + 1, CALLS + 1, 0),
            "{done}"
        );
    });
}

/// A client that leaves frees its place under `max_connections`: the client's drop waits
/// (briefly) for its QUIC connection to say `CLOSE`. Before that wait, dropping a client
/// shut its runtime down mid-close and gateway B learnt of it only at its idle timeout.
#[test]
fn gateway_export_frees_the_place_of_a_client_that_left() {
    if child_role().is_some() {
        return;
    }
    with_watchdog(LIMIT, || {
        let b = echo_b(ECHO_RING, "max_connections = 1");
        let (site, port) = (&b.site, b.port);
        let _gw_b = start_gateway(&b.config);
        let mut first = rpc::Client::new(quic_echo_client(site, port).expect("client 1"));
        echo(&mut first, b"one").expect("client 1");
        // A connection that leaves (closing it, so that B learns at once) frees its place.
        let net = first.into_transport();
        net.close(false);
        let deadline = Instant::now() + STEP;
        while !net.is_closed() {
            assert!(Instant::now() < deadline, "client 1 never finished closing");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(net);
        let deadline = Instant::now() + STEP;
        while stats(site, "b").export("echo").unwrap().open > 1 {
            assert!(
                Instant::now() < deadline,
                "B never saw client 1 leave: {}",
                stats(site, "b")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let deadline = Instant::now() + STEP;
        let mut third = loop {
            match quic_echo_client(site, port) {
                Ok(c) => {
                    let mut c = rpc::Client::new(c);
                    // A refused connection's pool retries the call until its timeout.
                    match echo_within(&mut c, b"three", Duration::from_secs(2)) {
                        Ok(()) => break c,
                        Err(e) => assert!(Instant::now() < deadline, "never admitted: {e:?}"),
                    }
                }
                Err(e) => assert!(Instant::now() < deadline, "never admitted: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        echo(&mut third, b"again").expect("the newcomer");
    });
}

/// A remote client speaking the wire protocol itself (the sans-io `Connection`) over a
/// plain TCP socket, so that it can stop reading the socket altogether.
struct RawPeer {
    sock: std::net::TcpStream,
    conn: Connection,
    buf: Vec<u8>,
}

impl RawPeer {
    fn connect(port: u16) -> RawPeer {
        let sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        sock.set_nodelay(true).unwrap();
        // A small, fixed receive buffer: what the kernel holds for a peer that reads
        // nothing stays far below the replies asked for.
        rustix::net::sockopt::set_socket_recv_buffer_size(&sock, 64 << 10).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let config = ConnConfig {
            max_message: 4 << 20,
            ..ConnConfig::default()
        };
        let conn = Connection::client(
            Instant::now(),
            config,
            0x5157,
            vec![ProtocolSpec::new(testbed::ECHO_PROTOCOL, 1)],
        );
        let mut peer = RawPeer {
            sock,
            conn,
            buf: vec![0; 1 << 16],
        };
        match peer.next_event(STEP) {
            Some(ConnEvent::Connected(_)) => peer,
            other => panic!("the handshake: {other:?}"),
        }
    }

    /// Writes every frame the connection has to send.
    fn flush(&mut self) {
        use std::io::Write;
        let mut out = Vec::new();
        while self.conn.poll_transmit(Instant::now(), &mut out) {}
        self.sock.write_all(&out).expect("writing to the gateway");
    }

    /// Reads until the connection has an event (or `limit` passes).
    fn next_event(&mut self, limit: Duration) -> Option<ConnEvent> {
        use std::io::Read;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.conn.poll_event() {
                return Some(e);
            }
            self.flush();
            if Instant::now() > deadline {
                return None;
            }
            match self.sock.read(&mut self.buf) {
                Ok(0) => return None,
                Ok(n) => self.conn.handle_data(Instant::now(), &self.buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("reading from the gateway: {e}"),
            }
        }
    }

    /// Queues a `fill` call of `len` bytes with `seed` under request id `id`.
    fn fill(&mut self, id: u64, len: u64, seed: u64) {
        let size = shm_channel::layout::message_len([16]).unwrap() as usize;
        let mut bytes = vec![0u8; size];
        let header = MessageHeader::new(testbed::FILL.id, shm_channel::Kind::Request, 1, id);
        let mut w = MessageWriter::new(&mut bytes, header).unwrap();
        let words = w.object_mut(0, 16).unwrap();
        words[..8].copy_from_slice(&len.to_le_bytes());
        words[8..].copy_from_slice(&seed.to_le_bytes());
        w.finish().unwrap();
        self.conn
            .send(OutMessage::from_bytes(id, bytes, Delivery::Default));
    }
}

#[test]
fn gateway_holds_a_bounded_queue_toward_a_client_that_stops_reading() {
    if child_role().is_some() {
        return;
    }
    with_watchdog(LIMIT, || {
        const CALLS: u64 = 128;
        const REPLY: u64 = 256 << 10;
        const MAX_QUEUED: u64 = 4;
        let site = new_site();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let _server = start_echo_server(&site, "echo");
        // Plain TCP, anonymous: the raw peer speaks the wire protocol without TLS.
        let config = site
            .write(
                "slow.toml",
                &format!(
                    r#"
[gateway]
name = "b"
runtime_dir = "{rt}"
control = "{ctl}"

[listen]
tcp = "127.0.0.1:{port}"

[[export]]
service = "echo"
protocol = "{protocol}"
allow = []
anonymous = true
max_message = 4194304
max_queued = {MAX_QUEUED}
"#,
                    rt = site.machine("b").display(),
                    ctl = site.control("b").display(),
                    protocol = testbed::ECHO_PROTOCOL,
                ),
            )
            .unwrap();
        let _gw_b = start_gateway(&config);
        let mut peer = RawPeer::connect(port);
        // 32 MiB of replies asked for; then the peer reads nothing.
        for id in 1..=CALLS {
            peer.fill(id, REPLY, id);
        }
        peer.flush();
        let deadline = Instant::now() + STEP;
        let stalled = loop {
            let s = stats(&site, "b");
            let e = *s.export("echo").unwrap();
            if e.stalls > 0 && e.messages_in == CALLS {
                break e;
            }
            assert!(Instant::now() < deadline, "the gateway never stalled: {s}");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The gateway stopped taking replies out of the ring: far fewer than asked for
        // went to the connection (the sockets' buffers hold a few MiB at most).
        std::thread::sleep(Duration::from_millis(500));
        let held = *stats(&site, "b").export("echo").unwrap();
        assert!(
            held.messages_out < CALLS / 2,
            "{} of {CALLS} replies went to a peer that reads nothing",
            held.messages_out
        );
        assert_eq!(held.drops, 0);
        println!("stalled: {stalled}; held back: {held}");
        // The peer reads again: every reply arrives, whole, once.
        let mut seen = std::collections::HashSet::new();
        while (seen.len() as u64) < CALLS {
            match peer.next_event(STEP) {
                Some(ConnEvent::Message { bytes, .. }) => {
                    let view = MessageView::parse(&bytes).unwrap();
                    let id = view.header().request_id;
                    let data = view.object(0).expect("a reply object");
                    assert_eq!(data.len() as u64, REPLY);
                    assert!(
                        data.iter()
                            .enumerate()
                            .all(|(i, b)| *b == testbed::fill_byte(id, i)),
                        "reply {id} damaged"
                    );
                    assert!(seen.insert(id), "reply {id} twice");
                }
                Some(_) => {}
                None => panic!("only {} of {CALLS} replies arrived", seen.len()),
            }
        }
        let done = stats(&site, "b");
        let e = done.export("echo").unwrap();
        assert_eq!((e.messages_out, e.drops), (CALLS, 0), "{done}");
    });
}
