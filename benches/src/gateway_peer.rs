//! The `gateway` bench's cases (issue 8): what a gateway pair adds to a call.
//!
//! Four processes besides the client (this binary re-executed, see
//! [`serve_if_gateway_peer`]; the setup is `shm_gateway::testbed`'s, shared with the
//! gateway's own tests):
//!
//! - the **service**: the testbed's echo service, served over shm on "machine B" and
//!   by a `NetServer` over QUIC and over TCP with TLS 1.3 (the same handler);
//! - **gateway B**: exports the service over QUIC (mutual TLS);
//! - **gateway A**: imports it on "machine A" under the same name.
//!
//! The cases, each the same `echo` call (the payload written by the client, copied
//! back by the service, checked by the client):
//!
//! - `shm-direct`: an RPC client over shm, straight to the service on machine B;
//! - `net-quic`, `net-tls`: an RPC client over a `NetClient` to the service's
//!   `NetServer` (the direct network call);
//! - `gw-b-quic`: an RPC client over QUIC to gateway B (one gateway: B forwards into
//!   the service's ring);
//! - `gw-pair`: an RPC client over shm on machine A: gateway A, QUIC, gateway B, the
//!   service over shm.
#![forbid(unsafe_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use rustix::process::{Pid, Signal, getppid, set_parent_process_death_signal};
use shm_channel::net::{
    ClientConfig, ClientTls, NetClient, NetServer, ProtocolSpec, QuicServerTls, Served,
    ServerConfig,
};
use shm_channel::rpc;
use shm_gateway::testbed::{self, Echo, GatewayProcess, ServiceSpec, Site};

use crate::echo::{Result, START_STOP, STUCK, check_len, kill_child, wait_child_success};
use crate::net_peer::rpc_round_trip;

/// Names the role when this process is re-executed: `service` or `gateway`.
pub const GATEWAY_PEER_ENV: &str = "SHM_BENCH_GW_ROLE";
/// The gateway's configuration file (role `gateway`).
const CONFIG_ENV: &str = "SHM_BENCH_GW_CONFIG";
/// The site's directory (role `service`).
const SITE_ENV: &str = "SHM_BENCH_GW_SITE";
/// The client's pid: a peer exits if it is no longer its parent.
const PARENT_ENV: &str = "SHM_BENCH_GW_PARENT";

/// The service's name on both machines.
const SERVICE: &str = "echo";
/// Its rings, each way, and the largest message: room for the largest payload.
const RING: u64 = 1 << 20;
/// The largest payload a case carries.
pub const MAX_PAYLOAD: usize = 64 << 10;

/// One way of making the call; [`id`](GwCase::id) is the criterion id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GwCase {
    /// shm, straight to the service.
    ShmDirect,
    /// QUIC to the service's `NetServer`.
    NetQuic,
    /// TCP + TLS 1.3 to the service's `NetServer`.
    NetTls,
    /// QUIC to gateway B, which forwards into the service's ring.
    GwBQuic,
    /// shm to gateway A, QUIC to gateway B, shm to the service.
    GwPair,
}

impl GwCase {
    /// Every case, in the order the bench runs them.
    pub const ALL: [GwCase; 5] = [
        GwCase::ShmDirect,
        GwCase::NetQuic,
        GwCase::NetTls,
        GwCase::GwBQuic,
        GwCase::GwPair,
    ];

    /// The id in criterion's output and in the docs.
    pub fn id(self) -> &'static str {
        match self {
            GwCase::ShmDirect => "shm-direct",
            GwCase::NetQuic => "net-quic",
            GwCase::NetTls => "net-tls",
            GwCase::GwBQuic => "gw-b-quic",
            GwCase::GwPair => "gw-pair",
        }
    }
}

enum Conn {
    Shm(Box<rpc::Client<shm_channel::Channel>>),
    Net(Box<rpc::Client<NetClient>>),
}

/// The client end: the site, the service and both gateways, and one client per case
/// (made when first used).
pub struct GatewayBench {
    site: Site,
    service: Option<Child>,
    service_stdin: Option<ChildStdin>,
    quic_port: u16,
    tls_port: u16,
    gw_port: u16,
    gateways: Vec<GatewayProcess>,
    conns: Vec<(GwCase, Conn)>,
    seq: u64,
}

impl GatewayBench {
    /// Makes the site, starts the service and the two gateways (each a process).
    pub fn start() -> Result<GatewayBench> {
        let site = Site::new()?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env(GATEWAY_PEER_ENV, "service")
            .env(SITE_ENV, &site.root)
            .env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = cmd.spawn()?;
        let service_stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or("the service's stdout is missing")?;
        let mut service = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let r = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(r);
        });
        let line = match rx.recv_timeout(START_STOP) {
            Ok(r) => r?,
            Err(_) => {
                kill_child(&mut service);
                return Err(format!("the service did not come up within {START_STOP:?}").into());
            }
        };
        let mut words = line.split_whitespace();
        let (Some("ready"), Some(quic), Some(tls)) = (words.next(), words.next(), words.next())
        else {
            kill_child(&mut service);
            return Err(format!("the service said {line:?}, not its ports").into());
        };
        let mut bench = GatewayBench {
            site,
            service,
            service_stdin,
            quic_port: quic.parse()?,
            tls_port: tls.parse()?,
            gw_port: testbed::free_port()?,
            gateways: Vec::new(),
            conns: Vec::new(),
            seq: 0,
        };
        let spec = spec();
        let b = bench.site.config_b(bench.gw_port, &spec, "", "")?;
        let a = bench.site.config_a(bench.gw_port, &spec, "")?;
        for config in [b, a] {
            let gw = GatewayProcess::spawn(gateway_command(&config)?, &config)?;
            bench.gateways.push(gw);
        }
        Ok(bench)
    }

    fn conn(&mut self, case: GwCase) -> Result<&mut Conn> {
        let i = match self.conns.iter().position(|(c, _)| *c == case) {
            Some(i) => i,
            None => {
                let conn = self.connect(case)?;
                self.conns.push((case, conn));
                self.conns.len() - 1
            }
        };
        Ok(&mut self.conns[i].1)
    }

    fn connect(&self, case: GwCase) -> Result<Conn> {
        let site = &self.site;
        let local = |addr: u16| vec![SocketAddr::from((Ipv4Addr::LOCALHOST, addr))];
        let net_config = || {
            let mut c = ClientConfig::new(ProtocolSpec::new(testbed::ECHO_PROTOCOL, 1));
            c.conn.max_message = RING;
            c.pool.max_connections = 1;
            c
        };
        let net = |client: NetClient| {
            let mut c = rpc::Client::new(client);
            c.set_default_timeout(STUCK);
            Conn::Net(Box::new(c))
        };
        Ok(match case {
            GwCase::ShmDirect | GwCase::GwPair => {
                let machine = if case == GwCase::ShmDirect { "b" } else { "a" };
                let config = shm_channel::ClientConfig::new(testbed::ECHO_PROTOCOL, 1..=1)
                    .ring_sizes(RING, RING)
                    .runtime_dir(site.machine(machine))
                    .timeout(START_STOP);
                // Gateway A binds its import as it starts: it is there by now.
                let mut c = rpc::Client::new(shm_channel::connect(SERVICE, &config)?);
                c.set_default_timeout(STUCK);
                Conn::Shm(Box::new(c))
            }
            GwCase::NetQuic => {
                let tls = ClientTls::new("gw-b", site.ca()?);
                net(NetClient::connect_quic(
                    local(self.quic_port),
                    net_config(),
                    &tls,
                    START_STOP,
                )?)
            }
            GwCase::NetTls => {
                let mut config = net_config();
                config.tls = Some(ClientTls::new("gw-b", site.ca()?));
                net(NetClient::connect(
                    local(self.tls_port),
                    config,
                    START_STOP,
                )?)
            }
            GwCase::GwBQuic => {
                let mut tls = ClientTls::new("gw-b", site.ca()?);
                tls.identity = Some(site.identity("certs", "gw-a")?);
                net(NetClient::connect_quic(
                    local(self.gw_port),
                    net_config(),
                    &tls,
                    START_STOP,
                )?)
            }
        })
    }

    /// `count` echo calls of `len` bytes by `case`'s client; `each` after every one.
    pub fn round_trips(
        &mut self,
        case: GwCase,
        len: usize,
        count: u64,
        each: &mut dyn FnMut(),
    ) -> Result<()> {
        check_len(len, MAX_PAYLOAD)?;
        for _ in 0..count {
            self.seq += 1;
            let seq = self.seq;
            match self.conn(case)? {
                Conn::Shm(c) => rpc_round_trip(c, &testbed::ECHO, seq, len)?,
                Conn::Net(c) => rpc_round_trip(c, &testbed::ECHO, seq, len)?,
            }
            each();
        }
        Ok(())
    }

    /// Closes the clients, stops the gateways and the service; fails if the service
    /// did not exit cleanly.
    pub fn finish(mut self) -> Result<()> {
        self.conns.clear();
        self.gateways.clear();
        drop(self.service_stdin.take());
        wait_child_success(&mut self.service)
    }
}

impl Drop for GatewayBench {
    fn drop(&mut self) {
        self.conns.clear();
        self.gateways.clear();
        kill_child(&mut self.service);
    }
}

/// The echo service as the gateways carry it.
fn spec() -> ServiceSpec {
    testbed::echo_spec(SERVICE, RING)
}

/// This binary re-executed as a gateway running `config`.
fn gateway_command(config: &Path) -> Result<Command> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(GATEWAY_PEER_ENV, "gateway")
        .env(CONFIG_ENV, config)
        .env(PARENT_ENV, std::process::id().to_string());
    Ok(cmd)
}

/// If this process is a re-executed service or gateway, serves and returns the exit
/// code; `None` otherwise. Call it first thing in `main`.
pub fn serve_if_gateway_peer() -> Option<i32> {
    let role = std::env::var(GATEWAY_PEER_ENV).ok()?;
    Some(match serve(&role) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("gateway bench peer ({role}): {e}");
            1
        }
    })
}

fn serve(role: &str) -> Result<()> {
    let env = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let parent: i32 = env(PARENT_ENV)?.parse()?;
    // Die with the client even if it is killed; then check it did not die before
    // this took effect.
    set_parent_process_death_signal(Some(Signal::KILL))?;
    if getppid().map(Pid::as_raw_pid) != Some(parent) {
        return Err("the client is gone".into());
    }
    match role {
        "gateway" => Ok(testbed::serve_child(&PathBuf::from(env(CONFIG_ENV)?))?),
        "service" => serve_service(&PathBuf::from(env(SITE_ENV)?)),
        other => Err(format!("unknown role {other:?}").into()),
    }
}

/// The service: the echo handler over shm (machine B), and by a `NetServer` over QUIC
/// and over TCP + TLS with gateway B's certificate, until stdin closes.
fn serve_service(root: &Path) -> Result<()> {
    let echo = Arc::new(Echo::default());
    let stop = Arc::new(AtomicBool::new(false));
    let shm = {
        let (echo, stop) = (Arc::clone(&echo), Arc::clone(&stop));
        let dir = root.join("rt-b");
        std::thread::spawn(move || {
            testbed::serve_echo(SERVICE, &dir, RING, Duration::from_secs(5), &echo, stop)
        })
    };
    let certs = root.join("certs");
    let identity =
        shm_gateway::pki::load_identity(&certs.join("gw-b.pem"), &certs.join("gw-b.key"))?;
    let tls = QuicServerTls {
        identity,
        client_roots: None,
    };
    let served = || {
        let echo = Arc::clone(&echo);
        vec![Served::new(
            ProtocolSpec::new(testbed::ECHO_PROTOCOL, 1),
            move |req, resp| echo.handle(req, resp),
        )]
    };
    let mut config = ServerConfig::default();
    config.conn.max_message = RING;
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let quic = NetServer::bind_quic(any, config.clone(), served(), &tls)?;
    config.tls = Some(tls);
    let tcp = NetServer::bind(any, config, served())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "ready {} {}",
            quic.local_addr().port(),
            tcp.local_addr().port()
        )?;
        out.flush()?;
    }
    let mut sink = Vec::new();
    std::io::stdin().lock().read_to_end(&mut sink)?;
    drop((quic, tcp));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    match shm.join() {
        Ok(r) => Ok(r?),
        Err(_) => Err("the shm server panicked".into()),
    }
}
