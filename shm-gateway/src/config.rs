//! The gateway's configuration file (TOML).
//!
//! ```toml
//! [gateway]
//! name = "b"                          # optional: in logs and stats
//! runtime_dir = "/run/user/1000/shm-channel"  # optional: where the local services live
//! control = "/run/user/1000/shm-gateway-b.sock"  # optional: the stats socket
//!
//! [tls]                               # required by QUIC, exports and imports over QUIC
//! cert = "b.pem"                      # this gateway's certificate chain (PEM, leaf first)
//! key = "b.key"                       # its private key (PEM, PKCS#8)
//! ca = "ca.pem"                       # the CA: clients' certificates on listeners, the
//!                                     # remote gateway's on imports, must be signed by it
//!
//! [listen]                            # needed when there are exports
//! quic = "0.0.0.0:7000"               # UDP
//! tcp = "0.0.0.0:7001"                # optional: TCP, with mutual TLS when [tls] is set
//!                                     # (plaintext otherwise: only `anonymous` exports)
//! max_connections = 256               # all exports together (default 256)
//! max_message = 16777216              # bytes, the largest message accepted (default 16 MiB)
//!
//! [[export]]                          # a local service other machines may use
//! service = "display"                 # its local name
//! protocol = "Display"                # the protocol it speaks (its shm handshake)
//! versions = [1, 2]                   # the versions to ask for (default [1, 1])
//! allow = ["a.example"]               # certificate names (DNS names or CN) allowed; "*": any
//!                                     # certificate signed by the CA
//! as = "Display"                      # optional: the protocol name remote clients ask for
//!                                     # (default: `protocol`)
//! max_connections = 16                # optional (default 64)
//! max_message = 8388608               # optional (default: the listener's)
//! anonymous = false                   # optional: also clients without a certificate (TCP)
//! max_queued = 64                     # optional: messages (replies, events) held per remote
//!                                     # connection toward a client that reads slowly; when
//!                                     # full, the gateway stops reading the service's ring
//!                                     # (backpressure: the service waits, nothing is lost)
//!
//! [[import]]                          # a remote service under a local name
//! name = "display"                    # the local name clients connect to
//! remote = "quic://b.example:7000"    # the remote gateway: quic://, or tcp:// (mutual TLS
//!                                     # when [tls] is set; tls:// insists on it)
//! server_name = "b.example"           # optional: the name its certificate must carry
//!                                     # (default: the host of `remote`)
//! protocol = "Display"                # what local clients speak (the local handshake)
//! versions = [1, 2]                   # default [1, 1]
//! remote_protocol = "Display"         # optional: the name asked for (default: `protocol`)
//! ring_sizes = [4194304, 4194304]     # the local rings' maxima, client-to-server and back
//!                                     # (default 1 MiB each; use the IDL's sizes)
//! max_clients = 64                    # optional: local clients at once (default 64)
//! connect_timeout_ms = 5000           # optional (default 5000)
//! keepalive_ms = 10000                # optional: keep-alives while idle (default 10 s)
//! inactivity_timeout_ms = 30000       # optional: a silent remote is gone (default 30 s)
//! backoff_min_ms = 100                # optional: first reconnect delay (default 100 ms)
//! backoff_max_ms = 5000               # optional: longest reconnect delay (default 5 s)
//! max_queued = 256                    # optional: messages held per local client toward a
//!                                     # remote that reads slowly; when full, the gateway
//!                                     # stops reading the client's ring (backpressure)
//! ```
//!
//! Unknown keys are errors, and a syntax error names the file and line.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shm_channel::net::Address;
use thiserror::Error;

/// Why a configuration was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed, or has unknown or mistyped keys.
    #[error("{path}:{line}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The line (1-based) the error is on.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The values do not make a working gateway.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// A parsed, checked configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the gateway's own things are.
    #[serde(default)]
    pub gateway: GatewaySection,
    /// Certificates.
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// Where remote clients connect.
    #[serde(default)]
    pub listen: Option<ListenSection>,
    /// Local services offered to remote clients.
    #[serde(default)]
    pub export: Vec<Export>,
    /// Remote services offered to local clients.
    #[serde(default)]
    pub import: Vec<Import>,
}

/// `[gateway]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Names this gateway in logs and stats.
    #[serde(default)]
    pub name: Option<String>,
    /// The runtime directory of the local services (default: shm-channel's default).
    #[serde(default)]
    pub runtime_dir: Option<PathBuf>,
    /// The Unix socket `shm-gateway stats` reads (default: none).
    #[serde(default)]
    pub control: Option<PathBuf>,
}

/// `[tls]`: paths are relative to the configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// This gateway's certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, or SEC1/PKCS#1).
    pub key: PathBuf,
    /// The CA that signs the peers' certificates, PEM (one or more).
    pub ca: PathBuf,
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// The UDP address of the QUIC listener.
    #[serde(default)]
    pub quic: Option<SocketAddr>,
    /// The TCP address of the TCP listener (mutual TLS with `[tls]`, else plaintext).
    #[serde(default)]
    pub tcp: Option<SocketAddr>,
    /// Remote connections at once, all exports together.
    #[serde(default = "default_listen_connections")]
    pub max_connections: usize,
    /// The largest message accepted from a remote client, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message: u64,
}

fn default_listen_connections() -> usize {
    256
}

fn default_max_message() -> u64 {
    16 << 20
}

fn default_versions() -> [u32; 2] {
    [1, 1]
}

fn default_export_connections() -> usize {
    64
}

/// `[[export]]`: a local service offered to remote clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    /// The local service's name.
    pub service: String,
    /// The protocol it speaks.
    pub protocol: String,
    /// The versions asked for, lowest and highest.
    #[serde(default = "default_versions")]
    pub versions: [u32; 2],
    /// Who may use it: names of client certificates (DNS names or the subject's CN), or
    /// `"*"` for any certificate signed by the CA.
    pub allow: Option<Vec<String>>,
    /// The protocol name remote clients ask for (default: `protocol`).
    #[serde(default, rename = "as")]
    pub net_name: Option<String>,
    /// Remote connections at once to this service.
    #[serde(default = "default_export_connections")]
    pub max_connections: usize,
    /// The largest message accepted for this service (default: the listener's).
    #[serde(default)]
    pub max_message: Option<u64>,
    /// Also clients that present no certificate (plaintext TCP).
    #[serde(default)]
    pub anonymous: bool,
    /// The largest rings accepted from the local service (default 64 MiB each).
    #[serde(default)]
    pub ring_sizes: Option<[u64; 2]>,
    /// Messages held per remote connection toward its client (queued or being written):
    /// at the bound the gateway stops reading the service's ring until the client takes
    /// some (backpressure; nothing is dropped).
    #[serde(default = "default_export_queued")]
    pub max_queued: usize,
}

fn default_export_queued() -> usize {
    64
}

fn default_import_queued() -> usize {
    256
}

impl Export {
    /// The protocol name remote clients ask for.
    pub fn net_name(&self) -> &str {
        self.net_name.as_deref().unwrap_or(&self.protocol)
    }
}

fn default_ring_sizes() -> [u64; 2] {
    [1 << 20, 1 << 20]
}

fn default_max_clients() -> usize {
    64
}

fn default_connect_timeout() -> u64 {
    5000
}

/// `[[import]]`: a remote service offered to local clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Import {
    /// The local name.
    pub name: String,
    /// The remote gateway: `quic://host:port`, or `tcp://host:port` (TCP, with mutual TLS
    /// when `[tls]` is set; `tls://` insists on it).
    pub remote: String,
    /// The name the remote's certificate must carry (default: the host of `remote`).
    #[serde(default)]
    pub server_name: Option<String>,
    /// The protocol local clients speak.
    pub protocol: String,
    /// Its versions, lowest and highest.
    #[serde(default = "default_versions")]
    pub versions: [u32; 2],
    /// The protocol name asked of the remote (default: `protocol`).
    #[serde(default)]
    pub remote_protocol: Option<String>,
    /// The local rings' maxima, client-to-server and server-to-client.
    #[serde(default = "default_ring_sizes")]
    pub ring_sizes: [u64; 2],
    /// Local clients at once.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// How long one connect to the remote may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// The largest message sent to or accepted from the remote.
    #[serde(default = "default_max_message")]
    pub max_message: u64,
    /// Keep-alives while idle, in ms: the remote's inactivity timeout (60 s by default)
    /// must never close a quiet client, and the remote allows at most 100 a minute.
    #[serde(default = "default_keepalive")]
    pub keepalive_ms: u64,
    /// Silence of the remote while a reply is awaited, in ms, after which it is taken
    /// for gone (a host that died sends nothing). Without a call awaiting its reply,
    /// QUIC notices 5 s later than this.
    #[serde(default = "default_inactivity")]
    pub inactivity_timeout_ms: u64,
    /// The first reconnect delay, in ms (it doubles per failure, with jitter).
    #[serde(default = "default_backoff_min")]
    pub backoff_min_ms: u64,
    /// The longest reconnect delay, in ms.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
    /// Messages held per local client toward the remote, waiting for the connection:
    /// at the bound the gateway stops reading the client's ring until the remote takes
    /// some (backpressure; a `@no_queue` message is dropped instead).
    #[serde(default = "default_import_queued")]
    pub max_queued: usize,
}

fn default_keepalive() -> u64 {
    10_000
}

fn default_inactivity() -> u64 {
    30_000
}

fn default_backoff_min() -> u64 {
    100
}

fn default_backoff_max() -> u64 {
    5_000
}

impl Import {
    /// The protocol name asked of the remote.
    pub fn remote_protocol(&self) -> &str {
        self.remote_protocol.as_deref().unwrap_or(&self.protocol)
    }

    /// How long one connect may take.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The remote address, parsed.
    pub fn address(&self) -> Result<Address, String> {
        let a: Address = self
            .remote
            .parse()
            .map_err(|e| format!("import {:?}: remote {:?}: {e}", self.name, self.remote))?;
        match a {
            Address::Shm(_) => Err(format!(
                "import {:?}: remote {:?} is a local name; use quic:// or tcp://",
                self.name, self.remote
            )),
            other => Ok(other),
        }
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Config {
    /// Reads and checks the file at `path`; relative paths in it are made relative to its
    /// directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(tls) = &mut config.tls {
            for p in [&mut tls.cert, &mut tls.key, &mut tls.ca] {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(config)
    }

    /// Parses and checks `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            message: e.message().trim_end().to_owned(),
        })?;
        config.check().map_err(|message| ConfigError::Invalid {
            path: origin.to_owned(),
            message,
        })?;
        Ok(config)
    }

    /// The checks serde cannot make.
    fn check(&self) -> Result<(), String> {
        if self.export.is_empty() && self.import.is_empty() {
            return Err("nothing to do: no [[export]] and no [[import]]".into());
        }
        let versions = |what: &str, v: [u32; 2]| {
            if v[0] == 0 || v[0] > v[1] {
                Err(format!(
                    "{what}: versions = [{}, {}] must be [lowest, highest] with 1 <= lowest <= highest",
                    v[0], v[1]
                ))
            } else {
                Ok(())
            }
        };
        let mut net_names = HashSet::new();
        for e in &self.export {
            let what = format!("export {:?}", e.service);
            shm_channel::service::validate_name(&e.service)
                .map_err(|r| format!("{what}: invalid service name: {r}"))?;
            versions(&what, e.versions)?;
            match &e.allow {
                None => {
                    return Err(format!(
                        "{what}: say who may use it: allow = [\"client.example\", ...] \
                         (certificate names), or allow = [\"*\"] (any certificate of the CA)"
                    ));
                }
                Some(a) if a.iter().any(|n| n.is_empty()) => {
                    return Err(format!("{what}: an empty name in allow"));
                }
                Some(_) => {}
            }
            if !net_names.insert(e.net_name().to_owned()) {
                return Err(format!(
                    "{what}: another export is also offered as protocol {:?}; give one of them \
                     another name with `as = \"...\"`",
                    e.net_name()
                ));
            }
            if e.max_connections == 0 {
                return Err(format!("{what}: max_connections must be at least 1"));
            }
            if e.max_queued == 0 {
                return Err(format!("{what}: max_queued must be at least 1"));
            }
        }
        if !self.export.is_empty() {
            let Some(listen) = &self.listen else {
                return Err(
                    "exports need a [listen] section with quic = \"addr:port\" (or tcp)".into(),
                );
            };
            if listen.quic.is_none() && listen.tcp.is_none() {
                return Err("[listen] has neither quic nor tcp".into());
            }
            if listen.quic.is_some() && self.tls.is_none() {
                return Err("[listen] quic needs a [tls] section (cert, key, ca)".into());
            }
            if listen.max_connections == 0 {
                return Err("[listen] max_connections must be at least 1".into());
            }
        }
        let mut local_names = HashSet::new();
        for i in &self.import {
            let what = format!("import {:?}", i.name);
            shm_channel::service::validate_name(&i.name)
                .map_err(|r| format!("{what}: invalid local name: {r}"))?;
            if !local_names.insert(i.name.clone()) {
                return Err(format!("{what}: imported twice"));
            }
            versions(&what, i.versions)?;
            if i.max_queued == 0 {
                return Err(format!("{what}: max_queued must be at least 1"));
            }
            if let Address::Quic(_) | Address::Tls(_) = i.address()?
                && self.tls.is_none()
            {
                return Err(format!("{what}: quic:// and tls:// need a [tls] section"));
            }
            if i.max_clients == 0 {
                return Err(format!("{what}: max_clients must be at least 1"));
            }
            if i.keepalive_ms == 0 || i.keepalive_ms >= i.inactivity_timeout_ms {
                return Err(format!(
                    "{what}: keepalive_ms must be above 0 and below inactivity_timeout_ms"
                ));
            }
            if i.backoff_min_ms == 0 || i.backoff_min_ms > i.backoff_max_ms {
                return Err(format!(
                    "{what}: backoff_min_ms must be above 0 and at most backoff_max_ms"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[gateway]
name = "b"

[tls]
cert = "b.pem"
key = "b.key"
ca = "ca.pem"

[listen]
quic = "127.0.0.1:7000"

[[export]]
service = "display"
protocol = "Display"
versions = [1, 2]
allow = ["a.example"]

[[import]]
name = "kv"
remote = "quic://kv.example:7000"
protocol = "Kv"
"#;

    fn err(text: &str) -> String {
        Config::parse(text, "gw.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_good_file_parses_with_defaults() {
        let c = Config::parse(GOOD, "gw.toml").unwrap();
        assert_eq!(c.export[0].net_name(), "Display");
        assert_eq!(c.export[0].max_connections, 64);
        assert_eq!(c.listen.as_ref().unwrap().max_message, 16 << 20);
        assert_eq!(c.import[0].versions, [1, 1]);
        assert_eq!(c.import[0].remote_protocol(), "Kv");
        assert_eq!(c.import[0].ring_sizes, [1 << 20, 1 << 20]);
    }

    #[test]
    fn unknown_keys_are_refused_with_file_and_line() {
        let text = GOOD.replace("versions = [1, 2]", "verisons = [1, 2]");
        let e = err(&text);
        assert!(e.starts_with("gw.toml:16: "), "{e}");
        assert!(e.contains("unknown field `verisons`"), "{e}");
    }

    #[test]
    fn syntax_and_type_errors_name_the_line() {
        let e = err("[listen]\nquic = 7000\n");
        assert!(e.starts_with("gw.toml:2: "), "{e}");
        let e = err("[[export]\n");
        assert!(e.starts_with("gw.toml:1: "), "{e}");
        let e = err("[listen]\nquic = \"not an address\"\n");
        assert!(e.starts_with("gw.toml:2: "), "{e}");
    }

    #[test]
    fn meaningless_configurations_say_why() {
        let no_allow = GOOD.replace("allow = [\"a.example\"]\n", "");
        assert!(err(&no_allow).contains("say who may use it"));
        let no_tls = GOOD.replace(
            "[tls]\ncert = \"b.pem\"\nkey = \"b.key\"\nca = \"ca.pem\"\n",
            "",
        );
        assert!(err(&no_tls).contains("needs a [tls] section"));
        let versions = GOOD.replace("versions = [1, 2]", "versions = [3, 2]");
        assert!(err(&versions).contains("versions = [3, 2]"));
        let bad_remote = GOOD.replace("quic://kv.example:7000", "shm://kv");
        assert!(err(&bad_remote).contains("is a local name"));
        let dup = format!(
            "{GOOD}\n[[export]]\nservice = \"display2\"\nprotocol = \"Display\"\nallow = [\"*\"]\n"
        );
        assert!(err(&dup).contains("`as = "));
        assert!(err("").contains("nothing to do"));
        let bad_name = GOOD.replace("service = \"display\"", "service = \"../x\"");
        assert!(err(&bad_name).contains("invalid service name"));
    }
}
