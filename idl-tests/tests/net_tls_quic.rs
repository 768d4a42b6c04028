//! The generated stubs over TLS and QUIC, changing only the URL and the certificates:
//! `Client::connect_url_with` and `AsyncClient::connect_url_with` to `tls://` and
//! `quic://` servers of `serve_url_with` (real sockets on loopback), with calls, typed
//! replies, events from the server through `ctx.events()`, and one-way messages. The
//! server's certificate is issued here by a test authority (rcgen) that the clients trust;
//! a client that trusts another authority is refused. Every test has a watchdog.

// The helpers of shm-channel's integration tests (watchdog).
#[path = "../../shm-channel/tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use idl_tests::delivery::kinds;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use shm_channel::net::tls::{CertificateDer, PrivateKeyDer};
use shm_channel::net::{ClientTls, ConnectOptions, Identity, NetServer, ServerTls};
use support::with_watchdog;

const LIMIT: Duration = Duration::from_secs(60);
/// A deadline no healthy call comes near.
const LONG: Duration = Duration::from_secs(30);

/// A self-signed test authority: its certificate, and what signs with its key.
fn authority(name: &str) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert.der().clone(), Issuer::new(params, key))
}

/// A server certificate for `localhost`, issued by `issuer`.
fn server_identity(issuer: &Issuer<'static, KeyPair>) -> Identity {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, issuer).expect("server certificate");
    Identity::new(
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// The `Kinds` server: replies `n + 1`; `plain` first sends the caller the event `note(n)`;
/// one-ways are accepted and `pushed` lists them.
#[derive(Default)]
struct KindsImpl {
    pushed: Vec<u64>,
}

impl kinds::Server for KindsImpl {
    fn plain(&mut self, ctx: &kinds::Context<'_>, n: u64) -> u64 {
        ctx.events()
            .note(ctx.client(), n)
            .expect("event to the caller");
        n + 1
    }

    fn ping(&mut self, _ctx: &kinds::Context<'_>, n: u64) -> u64 {
        n + 1
    }

    fn fetch(&mut self, _ctx: &kinds::Context<'_>, n: u64) -> u64 {
        n + 1
    }

    fn slow(&mut self, _ctx: &kinds::Context<'_>, n: u64) -> u64 {
        n + 1
    }

    fn push(&mut self, _ctx: &kinds::Context<'_>, n: u64, _pad: &[u8]) {
        self.pushed.push(n);
    }

    fn push_any(&mut self, _ctx: &kinds::Context<'_>, n: u64, _pad: &[u8]) {
        self.pushed.push(n);
    }

    fn pushed(&mut self, _ctx: &kinds::Context<'_>) -> Vec<u64> {
        self.pushed.clone()
    }
}

/// A server at `scheme://127.0.0.1:<free port>` with a certificate of a fresh authority;
/// its URL and options for clients that trust that authority.
fn serve(scheme: &str, events: &kinds::Events) -> (NetServer, String, ConnectOptions) {
    let (ca, issuer) = authority("idl-tests CA");
    let opts = kinds::serve_options().tls(ServerTls::new(server_identity(&issuer)));
    let server = kinds::serve_url_with(
        &format!("{scheme}://127.0.0.1:0"),
        KindsImpl::default(),
        events,
        &opts,
    )
    .unwrap_or_else(|e| panic!("serve {scheme}: {e}"));
    let url = format!("{scheme}://{}", server.local_addr());
    let trust = kinds::connect_options().tls(ClientTls::new("localhost", vec![ca]));
    (server, url, trust)
}

/// The blocking generated client: calls, events to the caller and by broadcast, one-way
/// messages; then a client that trusts another authority is refused.
fn blocking_client_over(scheme: &str) {
    let events = kinds::Events::new();
    let (_server, url, trust) = serve(scheme, &events);
    let mut c = kinds::Client::connect_url_with(&url, &trust)
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    c.set_default_timeout(LONG);
    assert!(
        c.rpc().transport().net().is_some(),
        "{url} is not a network endpoint"
    );
    assert_eq!(c.version(), kinds::VERSION);
    for n in 0..20 {
        assert_eq!(c.plain(n), Ok(n + 1));
        assert_eq!(
            c.recv_event(LONG),
            Ok(kinds::Event::Note { n }),
            "the event of call {n} over {scheme}"
        );
        assert_eq!(c.ping(n), Ok(n + 1));
    }
    let report = events.broadcast_note(99).expect("broadcast");
    assert_eq!(report.sent, 1, "{report:?}");
    assert_eq!(c.recv_event(LONG), Ok(kinds::Event::Note { n: 99 }));
    for n in 0..50 {
        c.push_any(n, &[7u8; 100]).expect("one-way");
    }
    // One-ways may still be on their way (over QUIC each is a stream of its own): look
    // until all arrived, then check that each did once.
    let deadline = Instant::now() + LONG;
    let mut pushed = loop {
        let got = c.pushed().expect("pushed");
        if got.len() >= 50 || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    pushed.sort_unstable();
    assert_eq!(
        pushed,
        (0..50).collect::<Vec<u64>>(),
        "one-ways over {scheme}"
    );
    drop(c);

    // A client that trusts only another authority does not get through.
    let (other_ca, _) = authority("another CA");
    let stranger = kinds::connect_options()
        .tls(ClientTls::new("localhost", vec![other_ca]))
        .wait_for(Duration::from_secs(5));
    assert!(
        kinds::Client::connect_url_with(&url, &stranger).is_err(),
        "a client that does not trust the server's authority connected over {scheme}"
    );
}

/// The async generated client: many calls in flight on one connection, then calls that
/// each bring an event, received with `recv_event`.
fn async_client_over(scheme: &str) {
    let events = kinds::Events::new();
    let (_server, url, trust) = serve(scheme, &events);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let c = kinds::AsyncClient::connect_url_with(&url, &trust)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let calls = (0..50u64).map(|n| {
            let c = c.clone();
            tokio::spawn(async move { c.ping(n).await })
        });
        for (n, call) in calls.enumerate() {
            assert_eq!(call.await.expect("task"), Ok(n as u64 + 1));
        }
        for n in 0..20 {
            assert_eq!(c.plain(n).await, Ok(n + 1));
            let event = tokio::time::timeout(LONG, c.recv_event())
                .await
                .expect("an event in time");
            assert_eq!(event, Ok(kinds::Event::Note { n }), "over {scheme}");
        }
    });
}

#[test]
fn generated_blocking_client_over_tls() {
    with_watchdog(LIMIT, || blocking_client_over("tls"));
}

#[test]
fn generated_blocking_client_over_quic() {
    with_watchdog(LIMIT, || blocking_client_over("quic"));
}

#[test]
fn generated_async_client_over_tls() {
    with_watchdog(LIMIT, || async_client_over("tls"));
}

#[test]
fn generated_async_client_over_quic() {
    with_watchdog(LIMIT, || async_client_over("quic"));
}
