//! TLS over TCP and SOCKS5 for the network connectors, over real loopback sockets: a test
//! certificate authority made here (rcgen), servers with certificates it issued (and
//! others it did not), mutual TLS with the client's identity visible to the handler, and
//! a SOCKS5 proxy on loopback (fast-socks5) that counts what went through it.
//!
//! Every wait is bounded (connect and handshake timeouts, a watchdog per test); no
//! assertion is about time.

#![cfg(feature = "net")]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use shm_channel::net::tls::{CertificateDer, PrivateKeyDer};
use shm_channel::net::{
    ClientConfig, ClientEvent, ClientInfo, ClientTls, ConnConfig, Identity, Lz4, NetClient,
    NetServer, ProtocolSpec, Served, ServerConfig, ServerEvent, ServerTls, Socks5Proxy,
    current_client,
};
use shm_channel::rpc::{Client, HandlerError, IncomingMessage, Method, TransportError};
use support::with_watchdog;

const ECHO: Method = Method::new("echo", 1);
const WAIT: Duration = Duration::from_secs(10);
const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// A test certificate authority.

struct Ca {
    cert: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for `names` (subject alternative names), with common name `cn`,
    /// for a server or a client.
    fn issue(&self, cn: &str, names: &[&str], client: bool) -> Identity {
        let (cert, key) = self.leaf(cn, names, client);
        Identity::new(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }

    /// The certificate and key of [`issue`](Self::issue), as rcgen made them.
    fn leaf(&self, cn: &str, names: &[&str], client: bool) -> (rcgen::Certificate, KeyPair) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "shm-channel tests");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert, key)
    }

    fn server_tls(&self, name: &str) -> ServerTls {
        ServerTls::new(self.issue(name, &[name], false))
    }

    fn client_tls(&self) -> ClientTls {
        ClientTls::new("localhost", vec![self.cert.clone()])
    }
}

// ---------------------------------------------------------------------------------------
// An echo server that records who called.

fn echo_proto() -> ProtocolSpec {
    ProtocolSpec::new("Echo", 1)
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind(localhost())
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Echo {
    server: NetServer,
    /// Requests the handler saw.
    seen: Arc<AtomicUsize>,
    /// [`current_client`] as the handler saw it, per request.
    callers: Arc<Mutex<Vec<Option<ClientInfo>>>>,
}

fn echo_server(tls: Option<ServerTls>, conn: ConnConfig) -> Echo {
    let seen = Arc::new(AtomicUsize::new(0));
    let callers = Arc::new(Mutex::new(Vec::new()));
    let (s, c) = (Arc::clone(&seen), Arc::clone(&callers));
    let server = NetServer::bind(
        localhost(),
        ServerConfig {
            conn,
            tls,
            ..ServerConfig::default()
        },
        vec![Served::new(echo_proto(), move |req, resp| {
            s.fetch_add(1, Ordering::Relaxed);
            c.lock().unwrap().push(current_client());
            match req.message_id() {
                1 => resp.reply(&[(0, req.object(0).unwrap_or_default())]),
                _ => Err(HandlerError::UnknownMethod),
            }
        })],
    )
    .unwrap();
    Echo {
        server,
        seen,
        callers,
    }
}

fn test_conn() -> ConnConfig {
    ConnConfig {
        handshake_timeout: Duration::from_secs(5),
        ..ConnConfig::default()
    }
}

fn client_config(tls: Option<ClientTls>) -> ClientConfig {
    let mut c = ClientConfig::new(echo_proto());
    c.conn = test_conn();
    c.tls = tls;
    c.connect_timeout = Duration::from_secs(5);
    c.pool.backoff_min = Duration::from_millis(20);
    c.pool.backoff_max = Duration::from_millis(200);
    c
}

fn decode_echo(m: &dyn IncomingMessage) -> Result<Vec<u8>, String> {
    m.object(0)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "no object".into())
}

fn payload(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(2654435761).wrapping_add(seed) as u8)
        .collect()
}

/// Calls echo with a spread of sizes (empty to several frames) and checks each reply.
fn echo_calls(net: NetClient, n: u64) -> NetClient {
    let mut client = Client::new(net);
    for i in 0..n {
        let data = payload(((i * 7919) % 150_000) as usize, i);
        let back = client
            .call(&ECHO, &[(0, &data)], WAIT, decode_echo)
            .unwrap();
        assert_eq!(back, data, "call {i}");
    }
    client.into_transport()
}

/// The error of a first connection that must fail.
fn connect_error(addr: SocketAddr, config: ClientConfig) -> String {
    match NetClient::connect(vec![addr], config, WAIT) {
        Ok(_) => panic!("connected to {addr}"),
        Err(TransportError::Io(e)) => e,
        Err(e) => panic!("not the connect's own error: {e:?}"),
    }
}

fn handshake_failures(server: &NetServer) -> Vec<String> {
    let mut out = Vec::new();
    // The server's side of a refused handshake may come a moment after the client's.
    if let Some(ServerEvent::HandshakeFailed { error, .. }) =
        server.wait_event(WAIT, |e| matches!(e, ServerEvent::HandshakeFailed { .. }))
    {
        out.push(error);
    }
    for e in server.take_events() {
        if let ServerEvent::HandshakeFailed { error, .. } = e {
            out.push(error);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// TLS.

#[test]
fn tls_clientserver_basic() {
    with_watchdog(LIMIT, || {
        let ca = Ca::new("test CA");
        let srv = echo_server(Some(ca.server_tls("localhost")), test_conn());
        let addr = srv.server.local_addr();
        let net =
            NetClient::connect(vec![addr], client_config(Some(ca.client_tls())), WAIT).unwrap();
        let net = echo_calls(net, 30);
        assert_eq!(srv.seen.load(Ordering::Relaxed), 30);
        // No client certificate was asked for: the handler sees the address only.
        let callers = srv.callers.lock().unwrap().clone();
        assert_eq!(callers.len(), 30);
        for c in &callers {
            let c = c.as_ref().expect("current_client() inside a handler");
            assert_eq!(c.addr.ip(), addr.ip());
            assert!(c.identity.is_none());
        }
        assert!(
            srv.server
                .take_events()
                .iter()
                .any(|e| matches!(e, ServerEvent::Accepted { client: None, .. }))
        );
        drop(net);
        // The server speaks only TLS: a plain TCP client does not get through, and
        // nothing of its reaches the handler.
        let e = connect_error(addr, client_config(None));
        assert!(!e.is_empty());
        assert!(!handshake_failures(&srv.server).is_empty());
        assert_eq!(srv.seen.load(Ordering::Relaxed), 30);
        // Outside a handler there is no current client.
        assert!(current_client().is_none());
    });
}

#[test]
fn tls_client_refuses_wrong_certificate() {
    with_watchdog(LIMIT, || {
        let ca = Ca::new("trusted CA");
        let other = Ca::new("another CA");
        // A certificate for the right name, from a CA the client does not trust.
        let srv = echo_server(Some(other.server_tls("localhost")), test_conn());
        let e = connect_error(
            srv.server.local_addr(),
            client_config(Some(ca.client_tls())),
        );
        assert!(e.contains("TLS handshake"), "{e}");
        assert!(e.contains("certificate"), "{e}");
        assert!(e.contains("UnknownIssuer"), "{e}");
        let failures = handshake_failures(&srv.server);
        assert!(!failures.is_empty(), "the server saw the refusal");
        assert_eq!(srv.seen.load(Ordering::Relaxed), 0, "no call delivered");

        // A certificate from the trusted CA, for another name.
        let srv = echo_server(Some(ca.server_tls("other.example")), test_conn());
        let net = NetClient::new(
            vec![srv.server.local_addr()],
            client_config(Some(ca.client_tls())),
        )
        .unwrap();
        // A call queued meanwhile is never delivered (it waits for a connection that
        // never comes: its own timeout ends it).
        let mut client = Client::new(net);
        let r = client.call(
            &ECHO,
            &[(0, b"secret")],
            Duration::from_millis(300),
            decode_echo,
        );
        assert!(r.is_err(), "{r:?}");
        let failed = client
            .transport()
            .wait_event(WAIT, |e| matches!(e, ClientEvent::ConnectFailed(_)));
        let Some(ClientEvent::ConnectFailed(e)) = failed else {
            panic!("no connect failure: {failed:?}");
        };
        assert!(e.contains("certificate not valid for name"), "{e}");
        assert!(e.contains("localhost"), "{e}");
        assert_eq!(srv.seen.load(Ordering::Relaxed), 0, "no call delivered");

        // A bad server name is refused when the client is made, not at every connect.
        let mut bad = ca.client_tls();
        bad.server_name = "not a name!".into();
        let e =
            NetClient::new(vec![srv.server.local_addr()], client_config(Some(bad))).unwrap_err();
        assert!(e.to_string().contains("server name"), "{e}");
    });
}

#[test]
fn tls_server_requires_client_certificate() {
    with_watchdog(LIMIT, || {
        let server_ca = Ca::new("server CA");
        let client_ca = Ca::new("client CA");
        let rogue_ca = Ca::new("rogue CA");
        let tls = server_ca
            .server_tls("localhost")
            .require_client_cert(vec![client_ca.cert.clone()]);
        let srv = echo_server(Some(tls), test_conn());
        let addr = srv.server.local_addr();

        // No client certificate: refused.
        let e = connect_error(addr, client_config(Some(server_ca.client_tls())));
        assert!(!e.is_empty());
        let failures = handshake_failures(&srv.server);
        assert!(
            failures.iter().any(|f| f.contains("certificate")),
            "{failures:?}"
        );

        // A certificate from a CA the server does not trust: refused.
        let rogue = server_ca.client_tls().with_identity(rogue_ca.issue(
            "mallory",
            &["mallory.example"],
            true,
        ));
        let e = connect_error(addr, client_config(Some(rogue)));
        assert!(!e.is_empty());
        let failures = handshake_failures(&srv.server);
        assert!(
            failures.iter().any(|f| f.contains("UnknownIssuer")),
            "{failures:?}"
        );
        assert_eq!(srv.seen.load(Ordering::Relaxed), 0, "no call delivered");

        // The right one: accepted, and the handler knows who calls.
        let good = server_ca.client_tls().with_identity(client_ca.issue(
            "client-a",
            &["client-a.example", "10.1.2.3"],
            true,
        ));
        let net = NetClient::connect(vec![addr], client_config(Some(good)), WAIT).unwrap();
        let _net = echo_calls(net, 5);
        assert_eq!(srv.seen.load(Ordering::Relaxed), 5);
        for c in srv.callers.lock().unwrap().iter() {
            let id = c
                .as_ref()
                .and_then(|c| c.identity.clone())
                .expect("the client's identity in the handler");
            assert_eq!(id.common_name(), Some("client-a"));
            assert!(id.subject().contains("CN=client-a"), "{}", id.subject());
            assert_eq!(id.names(), ["client-a.example", "10.1.2.3"]);
            assert!(id.matches("client-a.example") && id.matches("client-a"));
            assert!(!id.matches("mallory.example"));
            assert_eq!(id.certificates().len(), 1);
        }
        let accepted = srv
            .server
            .wait_event(WAIT, |e| matches!(e, ServerEvent::Accepted { .. }));
        let Some(ServerEvent::Accepted {
            client: Some(id), ..
        }) = accepted
        else {
            panic!("accepted without an identity: {accepted:?}");
        };
        assert_eq!(id.common_name(), Some("client-a"));
    });
}

#[test]
fn tls_with_compression() {
    with_watchdog(LIMIT, || {
        let ca = Ca::new("test CA");
        let conn = ConnConfig {
            compression: vec![Arc::new(Lz4)],
            ..test_conn()
        };
        let srv = echo_server(Some(ca.server_tls("localhost")), conn.clone());
        let mut config = client_config(Some(ca.client_tls()));
        config.conn = conn;
        let net = NetClient::connect(vec![srv.server.local_addr()], config, WAIT).unwrap();
        let mut client = Client::new(net);
        for i in 0..20u64 {
            let data: Vec<u8> = format!("message {i} says hello again; ")
                .into_bytes()
                .into_iter()
                .cycle()
                .take((i as usize * 7919) % 100_000)
                .collect();
            let back = client
                .call(&ECHO, &[(0, &data)], WAIT, decode_echo)
                .unwrap();
            assert_eq!(back, data);
        }
        let stats = client.transport().stats();
        assert!(stats.frames_compressed > 0, "{stats:?}");
        assert!(
            stats.wire_bytes_sent * 2 < stats.raw_bytes_sent,
            "{stats:?}"
        );
    });
}

// ---------------------------------------------------------------------------------------
// SOCKS5.

/// A SOCKS5 proxy on loopback (fast-socks5), counting the tunnels it opened and the
/// destinations asked for.
struct Proxy {
    addr: SocketAddr,
    tunnels: Arc<AtomicUsize>,
    targets: Arc<Mutex<Vec<String>>>,
    _rt: tokio::runtime::Runtime,
}

fn start_proxy(password: Option<(&'static str, &'static str)>) -> Proxy {
    use fast_socks5::server::{DnsResolveHelper as _, Socks5ServerProtocol, run_tcp_proxy};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(localhost()))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let tunnels = Arc::new(AtomicUsize::new(0));
    let targets = Arc::new(Mutex::new(Vec::new()));
    let (t, g) = (Arc::clone(&tunnels), Arc::clone(&targets));
    rt.spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (t, g) = (Arc::clone(&t), Arc::clone(&g));
            tokio::spawn(async move {
                let r: Result<(), fast_socks5::SocksError> = async {
                    let proto = match password {
                        None => Socks5ServerProtocol::accept_no_auth(socket).await?,
                        Some((user, pass)) => {
                            Socks5ServerProtocol::accept_password_auth(socket, |u, p| {
                                u == user && p == pass
                            })
                            .await?
                            .0
                        }
                    };
                    let (proto, _cmd, target) = proto.read_command().await?.resolve_dns().await?;
                    g.lock().unwrap().push(target.to_string());
                    t.fetch_add(1, Ordering::Relaxed);
                    run_tcp_proxy(proto, &target, Duration::from_secs(5), true).await?;
                    Ok(())
                }
                .await;
                drop(r);
            });
        }
    });
    Proxy {
        addr,
        tunnels,
        targets,
        _rt: rt,
    }
}

#[test]
fn socks5_proxy() {
    with_watchdog(LIMIT, || {
        let srv = echo_server(None, test_conn());
        let addr = srv.server.local_addr();
        for password in [None, Some(("alice", "s3cret"))] {
            let proxy = start_proxy(password);
            let mut config = client_config(None);
            let mut via = Socks5Proxy::new(proxy.addr.to_string());
            if let Some((u, p)) = password {
                via = via.with_password(u, p);
            }
            config.socks5 = Some(via);
            let net = NetClient::connect(vec![addr], config, WAIT).unwrap();
            let net = echo_calls(net, 10);
            // Every connection of the client went through the proxy, to the server.
            assert_eq!(
                proxy.tunnels.load(Ordering::Relaxed),
                net.open_connections()
            );
            assert!(proxy.tunnels.load(Ordering::Relaxed) >= 1);
            assert!(
                proxy
                    .targets
                    .lock()
                    .unwrap()
                    .iter()
                    .all(|t| *t == addr.to_string()),
                "{:?}",
                proxy.targets
            );
        }
        assert_eq!(srv.seen.load(Ordering::Relaxed), 20);
    });
}

#[test]
fn socks5_refusing_or_absent_proxy_is_a_clear_error() {
    with_watchdog(LIMIT, || {
        let srv = echo_server(None, test_conn());
        let addr = srv.server.local_addr();
        let through = |via: Socks5Proxy| {
            let mut config = client_config(None);
            config.socks5 = Some(via);
            connect_error(addr, config)
        };
        // Nothing listens where the proxy should be.
        let absent = free_port();
        let e = through(Socks5Proxy::new(absent.to_string()));
        assert!(e.contains("SOCKS5 proxy"), "{e}");
        assert!(e.contains(&absent.to_string()), "{e}");

        // A proxy that refuses our credentials.
        let proxy = start_proxy(Some(("alice", "s3cret")));
        let e = through(Socks5Proxy::new(proxy.addr.to_string()).with_password("alice", "wrong"));
        assert!(e.contains("SOCKS5 proxy"), "{e}");
        // One that wants credentials we do not give.
        let e = through(Socks5Proxy::new(proxy.addr.to_string()));
        assert!(e.contains("SOCKS5 proxy"), "{e}");
        assert_eq!(proxy.tunnels.load(Ordering::Relaxed), 0);

        // A proxy that cannot reach the destination.
        let proxy = start_proxy(None);
        let mut config = client_config(None);
        config.socks5 = Some(Socks5Proxy::new(proxy.addr.to_string()));
        let e = connect_error(free_port(), config);
        assert!(e.contains("SOCKS5 proxy"), "{e}");
        assert_eq!(srv.seen.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn socks5_with_tls() {
    with_watchdog(LIMIT, || {
        let server_ca = Ca::new("server CA");
        let client_ca = Ca::new("client CA");
        let tls = server_ca
            .server_tls("localhost")
            .require_client_cert(vec![client_ca.cert.clone()]);
        let srv = echo_server(Some(tls), test_conn());
        let addr = srv.server.local_addr();
        let proxy = start_proxy(None);
        // TLS runs inside the tunnel: the server's certificate is still checked end to
        // end, and the server still sees the client's.
        let mut config =
            client_config(Some(server_ca.client_tls().with_identity(client_ca.issue(
                "client-b",
                &["client-b.example"],
                true,
            ))));
        config.socks5 = Some(Socks5Proxy::new(proxy.addr.to_string()));
        let net = NetClient::connect(vec![addr], config, WAIT).unwrap();
        let _net = echo_calls(net, 10);
        assert!(proxy.tunnels.load(Ordering::Relaxed) >= 1);
        for c in srv.callers.lock().unwrap().iter() {
            let id = c.as_ref().and_then(|c| c.identity.clone()).unwrap();
            assert_eq!(id.common_name(), Some("client-b"));
        }
        assert_eq!(srv.seen.load(Ordering::Relaxed), 10);

        // Through the same proxy, a server with a certificate we do not trust is refused.
        let other = echo_server(
            Some(Ca::new("another CA").server_tls("localhost")),
            test_conn(),
        );
        let mut config = client_config(Some(server_ca.client_tls()));
        config.socks5 = Some(Socks5Proxy::new(proxy.addr.to_string()));
        let e = connect_error(other.server.local_addr(), config);
        assert!(e.contains("UnknownIssuer"), "{e}");
        assert_eq!(other.seen.load(Ordering::Relaxed), 0);
    });
}

/// QUIC takes the same TLS configuration, and its client identity reaches the handler
/// the same way.
#[cfg(feature = "quic")]
#[test]
fn quic_mutual_tls_identity() {
    with_watchdog(LIMIT, || {
        let server_ca = Ca::new("server CA");
        let client_ca = Ca::new("client CA");
        let tls = server_ca
            .server_tls("localhost")
            .require_client_cert(vec![client_ca.cert.clone()]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let server = NetServer::bind_quic(
            localhost(),
            ServerConfig::default(),
            vec![Served::new(echo_proto(), move |req, resp| {
                s.lock().unwrap().push(current_client());
                resp.reply(&[(0, req.object(0).unwrap_or_default())])
            })],
            &tls,
        )
        .unwrap();
        let addr = server.local_addr();
        // Without a client certificate: refused.
        let r = NetClient::connect_quic(
            vec![addr],
            client_config(None),
            &server_ca.client_tls(),
            WAIT,
        );
        assert!(r.is_err(), "{r:?}");
        assert!(seen.lock().unwrap().is_empty());
        // With one: the handler knows who calls.
        let good = server_ca.client_tls().with_identity(client_ca.issue(
            "client-q",
            &["client-q.example"],
            true,
        ));
        let net = NetClient::connect_quic(vec![addr], client_config(None), &good, WAIT).unwrap();
        let _net = echo_calls(net, 3);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        for c in seen.iter() {
            let id = c.as_ref().and_then(|c| c.identity.clone()).unwrap();
            assert_eq!(id.common_name(), Some("client-q"));
            assert!(id.matches("client-q.example"));
        }
    });
}

/// A client that opens a TCP connection to a TLS server and never says a word is cut off
/// at the handshake timeout, and holds nobody else back meanwhile; a server whose key
/// does not parse fails at bind.
#[test]
fn tls_stalled_handshake_is_cut_off_and_others_are_served() {
    with_watchdog(LIMIT, || {
        let ca = Ca::new("test CA");
        let conn = ConnConfig {
            handshake_timeout: Duration::from_millis(300),
            ..test_conn()
        };
        let srv = echo_server(Some(ca.server_tls("localhost")), conn);
        let addr = srv.server.local_addr();
        let silent = std::net::TcpStream::connect(addr).unwrap();
        // Served while the silent one waits.
        let net =
            NetClient::connect(vec![addr], client_config(Some(ca.client_tls())), WAIT).unwrap();
        let _net = echo_calls(net, 3);
        let failed = srv
            .server
            .wait_event(WAIT, |e| matches!(e, ServerEvent::HandshakeFailed { .. }));
        let Some(ServerEvent::HandshakeFailed { peer, error }) = failed else {
            panic!("the silent client was not cut off: {failed:?}");
        };
        assert_eq!(peer, silent.local_addr().unwrap());
        assert!(error.contains("timed out"), "{error}");
        // Its socket was closed: a read ends.
        silent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 16];
        let n = std::io::Read::read(&mut &silent, &mut buf).unwrap();
        assert_eq!(n, 0, "closed by the server");

        let mut broken = ca.server_tls("localhost");
        broken.identity.key = PrivateKeyDer::Pkcs8(vec![1, 2, 3].into());
        let e = NetServer::bind(
            localhost(),
            ServerConfig {
                tls: Some(broken),
                ..ServerConfig::default()
            },
            vec![],
        )
        .unwrap_err();
        assert!(!e.to_string().is_empty());
    });
}

/// TLS configured from PEM files, as a deployment has them; files that are not what they
/// should be give an error naming the file.
#[test]
fn tls_from_pem_files() {
    use shm_channel::net::tls::{certificates_from_pem, certificates_from_pem_file};
    with_watchdog(LIMIT, || {
        let dir = std::env::temp_dir().join(format!("shm-channel-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new("PEM CA");
        let (cert, key) = ca.leaf("localhost", &["localhost"], false);
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_file = write("ca.pem", &ca.cert_pem);
        let cert_file = write("server.pem", &cert.pem());
        let key_file = write("server.key", &key.serialize_pem());

        let identity = Identity::from_pem_files(&cert_file, &key_file).unwrap();
        let srv = echo_server(Some(ServerTls::new(identity)), test_conn());
        let roots = certificates_from_pem_file(&ca_file).unwrap();
        assert_eq!(roots, vec![ca.cert.clone()]);
        let net = NetClient::connect(
            vec![srv.server.local_addr()],
            client_config(Some(ClientTls::new("localhost", roots))),
            WAIT,
        )
        .unwrap();
        let _net = echo_calls(net, 3);

        // A key where the certificate should be, a missing file, no certificate at all.
        let e = Identity::from_pem_files(&key_file, &key_file).unwrap_err();
        assert!(e.to_string().contains("server.key"), "{e}");
        let missing = dir.join("missing.pem");
        let e = certificates_from_pem_file(&missing).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let e = certificates_from_pem(b"not pem at all").unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    });
}
