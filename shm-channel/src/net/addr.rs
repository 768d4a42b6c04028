//! Where a service is: `shm://name` (a local service), `tcp://host:port`,
//! `tls://host:port` or `quic://host:port` (network connectors). [`Address::from_target`]
//! also takes a plain service name, for `connect_url("display")`.

use std::fmt;
use std::str::FromStr;

/// A service address with its scheme.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A local service over shared memory, by name.
    Shm(String),
    /// A network service over TCP: `host:port`.
    Tcp(String),
    /// A network service over QUIC: `host:port`.
    Quic(String),
    /// A network service over TLS on TCP: `host:port` (the host is the name the server's
    /// certificate must carry, unless configured otherwise).
    Tls(String),
}

/// Why an address does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad address {input:?}: {why}")]
pub struct AddressError {
    input: String,
    why: &'static str,
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| AddressError {
            input: s.to_string(),
            why,
        };
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| err("expected shm://, tcp://, tls:// or quic://"))?;
        if rest.is_empty() {
            return Err(err("nothing after the scheme"));
        }
        let host_port = |rest: &str| -> Result<String, AddressError> {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| err("expected host:port"))?;
            if host.is_empty() {
                return Err(err("empty host"));
            }
            port.parse::<u16>().map_err(|_| err("bad port"))?;
            Ok(rest.to_string())
        };
        match scheme {
            "shm" if rest.contains('/') => Err(err("a service name has no '/'")),
            "shm" => Ok(Address::Shm(rest.to_string())),
            "tcp" => Ok(Address::Tcp(host_port(rest)?)),
            "quic" => Ok(Address::Quic(host_port(rest)?)),
            "tls" => Ok(Address::Tls(host_port(rest)?)),
            _ => Err(err("unknown scheme (shm, tcp, tls or quic)")),
        }
    }
}

impl Address {
    /// Parses `target`: an address with its scheme, or a plain service name (no `://`),
    /// which means `shm://name`.
    pub fn from_target(target: &str) -> Result<Address, AddressError> {
        if target.contains("://") {
            return target.parse();
        }
        // Through the parser, so a plain name is checked like `shm://name`.
        format!("shm://{target}")
            .parse()
            .map_err(|e: AddressError| AddressError {
                input: target.to_string(),
                why: e.why,
            })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Shm(n) => write!(f, "shm://{n}"),
            Address::Tcp(a) => write!(f, "tcp://{a}"),
            Address::Quic(a) => write!(f, "quic://{a}"),
            Address::Tls(a) => write!(f, "tls://{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Address;

    #[test]
    fn addresses_parse_and_print() {
        for (s, want) in [
            ("shm://display", Address::Shm("display".into())),
            (
                "tcp://127.0.0.1:7000",
                Address::Tcp("127.0.0.1:7000".into()),
            ),
            (
                "quic://example.org:443",
                Address::Quic("example.org:443".into()),
            ),
            ("quic://[::1]:7000", Address::Quic("[::1]:7000".into())),
            (
                "tls://example.org:7443",
                Address::Tls("example.org:7443".into()),
            ),
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a, want);
            assert_eq!(a.to_string(), s);
        }
        for bad in [
            "display",
            "udp://h:1",
            "tcp://h",
            "quic://:7",
            "quic://h:70000",
            "tls://h",
            "shm://",
            "shm://a/b",
        ] {
            let e = bad.parse::<Address>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn a_plain_name_is_a_local_service() {
        assert_eq!(
            Address::from_target("display"),
            Ok(Address::Shm("display".into()))
        );
        assert_eq!(
            Address::from_target("tcp://h:1"),
            Ok(Address::Tcp("h:1".into()))
        );
        for bad in ["", "a/b", "udp://h:1"] {
            let e = Address::from_target(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }
}
