//! Two "machines" on one host, for the gateway's tests and the `gateway` bench: a
//! scratch directory with certificates, one runtime directory per machine (so neither
//! sees the other's local services), the configuration files of an exporting gateway
//! `b` and an importing gateway `a`, and gateways as **separate processes**: the
//! `shm-gateway` binary, or the caller's own binary re-executed running
//! [`serve_child`].
//!
//! Not for production use: the certificates it makes are throwaway ones.

use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use shm_channel::net::Identity;
use shm_channel::net::quic::CertificateDer;
use shm_channel::rpc::{
    self, HandlerError, HandlerResult, Method, RequestView, Responder, ServeOptions,
};
use shm_channel::service::ServiceConfig;

use crate::{Config, Gateway};

/// The line a gateway process prints once it serves.
pub const READY: &str = "shm-gateway: ready";

/// A scratch directory with certificates: a CA and `gw-a`, `gw-b`, `intruder` (signed
/// by it; `intruder` is allowed nowhere) in `certs/`, and `stranger` signed by another
/// CA in `other/`. Removed when dropped (kept when a test panics, for its logs).
#[derive(Debug)]
pub struct Site {
    /// The directory.
    pub root: PathBuf,
}

impl Site {
    /// Makes the directory and the certificates.
    pub fn new() -> Result<Site, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "shm-gw-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        let site = Site { root };
        let names = ["gw-a", "gw-b", "intruder"].map(String::from);
        let write = |ca: &str, names: &[String], dir: &str| -> Result<(), String> {
            crate::pki::make_certs(ca, names)
                .map_err(|e| e.to_string())?
                .write(&site.root.join(dir))
                .map_err(|e| format!("{dir}: {e}"))
        };
        write("test CA", &names, "certs")?;
        write("other CA", &["stranger".into()], "other")?;
        Ok(site)
    }

    /// A machine's runtime directory.
    pub fn machine(&self, name: &str) -> PathBuf {
        self.root.join(format!("rt-{name}"))
    }

    /// Writes `text` to `name` under the root; returns its path.
    pub fn write(&self, name: &str, text: &str) -> Result<PathBuf, String> {
        let p = self.root.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    }

    /// The identity `name` of directory `dir` (`certs` or `other`).
    pub fn identity(&self, dir: &str, name: &str) -> Result<Identity, String> {
        let d = self.root.join(dir);
        crate::pki::load_identity(
            &d.join(format!("{name}.pem")),
            &d.join(format!("{name}.key")),
        )
        .map_err(|e| e.to_string())
    }

    /// The test CA's certificates.
    pub fn ca(&self) -> Result<Vec<CertificateDer<'static>>, String> {
        crate::pki::load_certs(&self.root.join("certs/ca.pem")).map_err(|e| e.to_string())
    }

    /// The control socket of gateway `gw`.
    pub fn control(&self, gw: &str) -> PathBuf {
        self.root.join(format!("{gw}.ctl"))
    }

    /// Gateway `b`'s configuration (`b.toml`): QUIC and mutual-TLS TCP on `port` of
    /// loopback, exporting `service` (allowed to `gw-a`); `extra_listen` and
    /// `extra_export` are TOML lines added to `[listen]` and to the export.
    pub fn config_b(
        &self,
        port: u16,
        service: &ServiceSpec,
        extra_listen: &str,
        extra_export: &str,
    ) -> Result<PathBuf, String> {
        let text = format!(
            r#"
[gateway]
name = "b"
runtime_dir = "{rt}"
control = "{ctl}"

[tls]
cert = "certs/gw-b.pem"
key = "certs/gw-b.key"
ca = "certs/ca.pem"

[listen]
quic = "127.0.0.1:{port}"
tcp = "127.0.0.1:{port}"
{extra_listen}

[[export]]
service = "{name}"
protocol = "{protocol}"
versions = [{v0}, {v1}]
allow = ["gw-a"]
max_message = {max}
{extra_export}
"#,
            rt = self.machine("b").display(),
            ctl = self.control("b").display(),
            name = service.name,
            protocol = service.protocol,
            v0 = service.versions[0],
            v1 = service.versions[1],
            max = service.max_message,
        );
        self.write("b.toml", &text)
    }

    /// Gateway `a`'s configuration (`a.toml`): imports `service` from `b` at
    /// `quic://127.0.0.1:port` under the same name, with short timeouts and backoff;
    /// `extra_import` is TOML lines added to the import.
    pub fn config_a(
        &self,
        port: u16,
        service: &ServiceSpec,
        extra_import: &str,
    ) -> Result<PathBuf, String> {
        let text = format!(
            r#"
[gateway]
name = "a"
runtime_dir = "{rt}"
control = "{ctl}"

[tls]
cert = "certs/gw-a.pem"
key = "certs/gw-a.key"
ca = "certs/ca.pem"

[[import]]
name = "{name}"
remote = "quic://127.0.0.1:{port}"
server_name = "gw-b"
protocol = "{protocol}"
versions = [{v0}, {v1}]
ring_sizes = [{c2s}, {s2c}]
max_message = {max}
connect_timeout_ms = 2000
keepalive_ms = 1000
inactivity_timeout_ms = 3000
backoff_min_ms = 100
backoff_max_ms = 1000
{extra_import}
"#,
            rt = self.machine("a").display(),
            ctl = self.control("a").display(),
            name = service.name,
            protocol = service.protocol,
            v0 = service.versions[0],
            v1 = service.versions[1],
            c2s = service.ring_sizes[0],
            s2c = service.ring_sizes[1],
            max = service.max_message,
        );
        self.write("a.toml", &text)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// The service the gateways carry: its local name, protocol, versions, ring sizes (as
/// the IDL sets them) and the largest message the gateways accept for it.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// The local name on both machines.
    pub name: String,
    /// The protocol.
    pub protocol: String,
    /// Lowest and highest version.
    pub versions: [u32; 2],
    /// Client-to-server and server-to-client ring maxima (the import's local rings).
    pub ring_sizes: [u64; 2],
    /// The gateways' message limit, bytes.
    pub max_message: u64,
}

/// A port free now on loopback for both UDP and TCP: gateway B listens on it for QUIC
/// and TCP alike (and again after a restart). A port free for UDP alone was not enough:
/// its TCP twin can be the local end of some other connection (a CI run saw gateway B
/// refused with "Address already in use").
pub fn free_port() -> std::io::Result<u16> {
    let mut last = None;
    for _ in 0..64 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(_tcp) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port free for UDP and TCP")))
}

/// A gateway process: the `shm-gateway` binary or a re-executed binary running
/// [`serve_child`]. Its stderr goes to `<config>.log` (printed when the owner panics);
/// it is killed when dropped.
#[derive(Debug)]
pub struct GatewayProcess {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

/// How long a gateway may take to print [`READY`].
const START: Duration = Duration::from_secs(30);

impl GatewayProcess {
    /// Runs `shm-gateway run -v --config <config>` from `binary`.
    pub fn binary(binary: &Path, config: &Path) -> Result<GatewayProcess, String> {
        let mut cmd = Command::new(binary);
        cmd.args(["run", "-v", "--config"]).arg(config);
        Self::spawn(cmd, config)
    }

    /// Runs `cmd` (which must end up in [`serve_child`] with `config`, or be the
    /// binary) and waits until it printed [`READY`].
    pub fn spawn(mut cmd: Command, config: &Path) -> Result<GatewayProcess, String> {
        let log = config.with_extension("log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("spawning a gateway: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or("the gateway's stdout is missing")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // A thread reads, so a gateway that never says it is ready is a timeout.
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let mut g = GatewayProcess {
            child: Some(child),
            stdin,
            log,
        };
        match rx.recv_timeout(START) {
            Ok(l) if l == READY => Ok(g),
            other => {
                let status = g.child.as_mut().map(Child::try_wait);
                Err(format!(
                    "the gateway did not start ({other:?}, {status:?}); its log:\n{}",
                    g.log_text()
                ))
            }
        }
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        self.stdin.take();
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
            eprintln!("---- {} ----\n{}", self.log.display(), self.log_text());
        }
    }
}

/// The body of a re-executed gateway process: starts the gateway of `config`, prints
/// [`READY`], and serves until its stdin closes (its parent finished or died).
pub fn serve_child(config: &Path) -> Result<(), String> {
    let config = Config::load(config).map_err(|e| e.to_string())?;
    let gateway = Gateway::start(config).map_err(|e| e.to_string())?;
    println!("{READY}");
    let mut sink = Vec::new();
    let _ = std::io::stdin().lock().read_to_end(&mut sink);
    drop(gateway);
    Ok(())
}

// ------------------------------------------------------------------ the echo service

/// The echo service's protocol.
pub const ECHO_PROTOCOL: &str = "GwEcho";
/// Returns its request's object 0, copied.
pub const ECHO: Method = Method::new("echo", 1);
/// Request: `[len, seed]` (two little-endian `u64`s); reply: `len` bytes,
/// [`fill_byte`]`(seed, i)` each.
pub const FILL: Method = Method::new("fill", 2);
/// `@idempotent`. Request: `[ms, tag]`; the service sleeps `ms`, then replies `[tag,
/// executions]` (how many `slow` calls it ran so far, this one included).
pub const SLOW: Method = Method::new("slow", 3).delivery(rpc::flags::IDEMPOTENT);

/// Byte `i` of a `fill` reply with `seed`.
pub fn fill_byte(seed: u64, i: usize) -> u8 {
    (seed as u8).wrapping_add(i as u8).wrapping_mul(7)
}

/// The echo service as the gateways carry it under `name`: rings of `ring` bytes each
/// way, messages of up to `ring` bytes.
pub fn echo_spec(name: &str, ring: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.to_owned(),
        protocol: ECHO_PROTOCOL.to_owned(),
        versions: [1, 1],
        ring_sizes: [ring, ring],
        max_message: ring,
    }
}

/// The echo service's state: how many `slow` calls it ran.
#[derive(Debug, Default)]
pub struct Echo {
    /// `slow` calls run so far.
    pub executions: AtomicU64,
}

fn two_words(data: &[u8]) -> Option<(u64, u64)> {
    let a = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let b = u64::from_le_bytes(data.get(8..16)?.try_into().ok()?);
    Some((a, b))
}

impl Echo {
    /// Handles one request (over shm or a `NetServer` alike).
    pub fn handle(&self, req: &RequestView<'_>, resp: Responder<'_>) -> HandlerResult {
        let data = req
            .object(0)
            .ok_or_else(|| HandlerError::Failed("a request without object 0".into()))?;
        let words =
            || two_words(data).ok_or_else(|| HandlerError::Failed("expected two u64s".into()));
        match req.message_id() {
            1 => resp.reply(&[(0, data)]),
            2 => {
                let (len, seed) = words()?;
                let len = usize::try_from(len).map_err(|e| HandlerError::Failed(e.to_string()))?;
                resp.reply_with(&[len as u64], |sink| {
                    for (i, b) in sink.object(0, len as u64)?.iter_mut().enumerate() {
                        *b = fill_byte(seed, i);
                    }
                    Ok(())
                })
            }
            3 => {
                let (ms, tag) = words()?;
                std::thread::sleep(Duration::from_millis(ms.min(60_000)));
                let n = self.executions.fetch_add(1, Ordering::Relaxed) + 1;
                let mut out = [0u8; 16];
                out[..8].copy_from_slice(&tag.to_le_bytes());
                out[8..].copy_from_slice(&n.to_le_bytes());
                resp.reply(&[(0, &out)])
            }
            _ => Err(HandlerError::UnknownMethod),
        }
    }
}

/// Serves the echo service over shm as `name` in `runtime_dir` until `stop` is set,
/// with rings of `ring` bytes each way; a client whose ring stays full for
/// `reply_timeout` is dropped.
pub fn serve_echo(
    name: &str,
    runtime_dir: &Path,
    ring: u64,
    reply_timeout: Duration,
    echo: &Echo,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let config = ServiceConfig::new(ECHO_PROTOCOL, 1..=1)
        .ring_sizes(ring, ring)
        .runtime_dir(runtime_dir);
    let opts = ServeOptions {
        stop: Some(stop),
        reply_timeout,
        ..ServeOptions::default()
    };
    rpc::serve(
        name,
        config,
        &rpc::EventHub::default(),
        |req, resp| echo.handle(req, resp),
        &opts,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}
