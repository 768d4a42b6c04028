//! Gateways between real processes: the display service over shm on "machine B", the
//! `shm-gateway` binary exporting it over QUIC on B, the binary importing it on "machine
//! A", and this test as the display client over shm on A. Each "machine" has its own
//! runtime directory, so neither sees the other's local services. Every test has a
//! watchdog.

#[path = "../../shm-channel/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shm_channel::net::{
    ClientConfig as NetConfig, ClientEvent, ConnError, Identity, NetClient, ProtocolSpec,
    QuicClientTls,
};
use shm_channel::rpc::{CallError, ServeOptions, TransportError};
use shm_channel::wire::{Bounded, VecView};
use shm_gateway::stats::Stats;
use support::{ChildGuard, child_role, unique_name, with_watchdog};

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
}

// ------------------------------------------------------------------ machines and gateways

/// A scratch directory with certificates: a CA, `gw-a`, `gw-b`, `intruder` (signed by
/// the CA but allowed nowhere), and `stranger` (signed by another CA).
struct Site {
    root: PathBuf,
}

impl Site {
    fn new() -> Site {
        let root = std::env::temp_dir().join(unique_name("gw"));
        std::fs::create_dir_all(&root).unwrap();
        let names = ["gw-a", "gw-b", "intruder"].map(String::from);
        shm_gateway::pki::make_certs("test CA", &names)
            .unwrap()
            .write(&root.join("certs"))
            .unwrap();
        shm_gateway::pki::make_certs("other CA", &["stranger".into()])
            .unwrap()
            .write(&root.join("other"))
            .unwrap();
        Site { root }
    }

    /// A "machine"'s runtime directory.
    fn machine(&self, name: &str) -> PathBuf {
        self.root.join(format!("rt-{name}"))
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.root.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn identity(&self, dir: &str, name: &str) -> Identity {
        let d = self.root.join(dir);
        shm_gateway::pki::load_identity(
            &d.join(format!("{name}.pem")),
            &d.join(format!("{name}.key")),
        )
        .unwrap()
    }

    fn ca(&self) -> Vec<shm_channel::net::quic::CertificateDer<'static>> {
        shm_gateway::pki::load_certs(&self.root.join("certs/ca.pem")).unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A UDP port free now on loopback (a gateway binds it, and binds it again on restart).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Gateway B's configuration: exports `display` (allowed to `gw-a`) and nothing else.
fn config_b(site: &Site, port: u16) -> PathBuf {
    let text = format!(
        r#"
[gateway]
name = "b"
runtime_dir = "{rt}"
control = "{root}/b.ctl"

[tls]
cert = "certs/gw-b.pem"
key = "certs/gw-b.key"
ca = "certs/ca.pem"

[listen]
quic = "127.0.0.1:{port}"
tcp = "127.0.0.1:{port}"

[[export]]
service = "display"
protocol = "Display"
versions = [1, 2]
allow = ["gw-a"]
max_message = 4194304
"#,
        rt = site.machine("b").display(),
        root = site.root.display(),
    );
    site.write("b.toml", &text)
}

/// Gateway A's configuration: imports B's display as `display`.
fn config_a(site: &Site, port: u16) -> PathBuf {
    let text = format!(
        r#"
[gateway]
name = "a"
runtime_dir = "{rt}"
control = "{root}/a.ctl"

[tls]
cert = "certs/gw-a.pem"
key = "certs/gw-a.key"
ca = "certs/ca.pem"

[[import]]
name = "display"
remote = "quic://127.0.0.1:{port}"
server_name = "gw-b"
protocol = "Display"
versions = [1, 2]
ring_sizes = [{c2s}, {s2c}]
max_message = 4194304
connect_timeout_ms = 2000
keepalive_ms = 1000
inactivity_timeout_ms = 3000
backoff_min_ms = 100
backoff_max_ms = 1000
"#,
        rt = site.machine("a").display(),
        root = site.root.display(),
        c2s = display::CLIENT_TO_SERVER_MAX,
        s2c = display::SERVER_TO_CLIENT_MAX,
    );
    site.write("a.toml", &text)
}

/// A `shm-gateway run` process, killed when dropped; its log goes to `<config>.log`
/// (printed when the test fails).
struct GatewayProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl GatewayProcess {
    fn start(config: &Path) -> GatewayProcess {
        let log = config.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_shm-gateway"))
            .args(["run", "-v", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn shm-gateway");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut g = GatewayProcess {
            child: Some(child),
            log,
        };
        match rx.recv_timeout(STEP) {
            Ok(l) if l == "shm-gateway: ready" => {}
            other => {
                let status = g.child.as_mut().unwrap().try_wait();
                panic!(
                    "the gateway did not start ({other:?}, {status:?}); its log:\n{}",
                    std::fs::read_to_string(&g.log).unwrap_or_default()
                );
            }
        }
        g
    }

    /// SIGKILL, as a crash.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- {} ----\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
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
    shm_gateway::control::query(&site.root.join(format!("{gw}.ctl"))).expect("stats")
}

// ------------------------------------------------------------------ tests

#[test]
fn gateway_end_to_end_display_calls_events_and_restart() {
    if child_role().is_some() {
        return;
    }
    with_watchdog(LIMIT, || {
        let site = Site::new();
        let port = free_udp_port();
        let _server = start_display_server(&site);
        let mut gw_b = GatewayProcess::start(&config_b(&site, port));
        let _gw_a = GatewayProcess::start(&config_a(&site, port));

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
        let _gw_b = GatewayProcess::start(&config_b(&site, port));
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
        let site = Site::new();
        let port = free_udp_port();
        let _server = start_display_server(&site);
        let _gw_b = GatewayProcess::start(&config_b(&site, port));
        let addr = vec![std::net::SocketAddr::from(([127, 0, 0, 1], port))];
        let connect = |protocol: &str, identity: Option<Identity>| {
            let mut tls = QuicClientTls::new("gw-b", site.ca());
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
        let e = refused(connect("Display", Some(site.identity("other", "stranger"))));
        println!("another CA: {e}");
        // The right CA, a name not allowed: the gateway refuses it.
        let e = refused(connect("Display", Some(site.identity("certs", "intruder"))));
        assert!(e.contains("certificate intruder is not allowed"), "{e}");
        // The right certificate, a protocol that is not exported.
        let e = refused(connect("Secret", Some(site.identity("certs", "gw-a"))));
        assert!(
            e.to_lowercase().contains("secret") || e.contains("refused"),
            "{e}"
        );

        // The right certificate and service: a direct QUIC client of the export (no
        // gateway on its side) is served.
        let net = connect("Display", Some(site.identity("certs", "gw-a"))).expect("allowed");
        let mut client = display::Client::new(net);
        client.set_default_timeout(STEP);
        let s = client
            .create_surface(&rect(4, 4), &PixelFormat::Bgra8, "direct")
            .expect("a call through the export");
        client.commit(s).expect("commit");
        assert!(matches!(client.recv_event(STEP), Ok(Event::Vsync { .. })));

        // The same over TCP with mutual TLS: the policy reads the same certificate.
        let tcp = |identity: Identity| {
            let mut tls = QuicClientTls::new("gw-b", site.ca());
            tls.identity = Some(identity);
            let mut config = NetConfig::new(ProtocolSpec::new("Display", 2));
            config.tls = Some(tls);
            NetClient::connect(addr.clone(), config, STEP)
        };
        let e = refused(tcp(site.identity("certs", "intruder")));
        assert!(e.contains("certificate intruder is not allowed"), "{e}");
        let mut over_tcp =
            display::Client::new(tcp(site.identity("certs", "gw-a")).expect("TLS over TCP"));
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
        let site = Site::new();
        let bad = site.write(
            "bad.toml",
            "[gateway]\nname = \"x\"\n\n[[import]]\nname = \"display\"\nremote = \"quic://h:1\"\nprotocl = \"Display\"\n",
        );
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
        let site = Site::new();
        let port = free_udp_port();
        let _server = start_display_server(&site);
        let _gw_b = GatewayProcess::start(&config_b(&site, port));
        let _gw_a = GatewayProcess::start(&config_a(&site, port));

        let config = display::client_config()
            .runtime_dir(site.machine("b"))
            .timeout(STEP);
        let mut shm = display::Client::connect_with("display", &config).expect("shm client");
        let direct = round_trips(&mut shm, n);

        let mut tls = QuicClientTls::new("gw-b", site.ca());
        tls.identity = Some(site.identity("certs", "gw-a"));
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
