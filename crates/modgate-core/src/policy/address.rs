//! Where agent-chosen traffic (CONNECT tunnels, plain-HTTP forwarding, gateway-mode splices)
//! may go, decided on the resolved address: never to loopback, link-local (cloud metadata at
//! 169.254.169.254 among them), unspecified addresses or the gateway's own listeners, unless
//! `egress.allow_addresses` lists it; CONNECT only to port 443 and `egress.connect_ports` (like
//! Squid's `SSL_ports`). Pure: addresses in, a verdict out.

use std::net::{IpAddr, SocketAddr};

/// Why an address is refused; the text is one line for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "modgate: {addr} is a loopback address; egress to it is refused (egress.allow_addresses)"
    )]
    Loopback { addr: SocketAddr },
    #[error(
        "modgate: {addr} is a link-local address; egress to it is refused (egress.allow_addresses)"
    )]
    LinkLocal { addr: SocketAddr },
    #[error("modgate: {addr} is an unspecified address; egress to it is refused")]
    Unspecified { addr: SocketAddr },
    #[error("modgate: {addr} is one of modgate's own listeners; egress to it is refused")]
    OwnListener { addr: SocketAddr },
    #[error(
        "modgate: CONNECT to port {port} is refused: only 443 and egress.connect_ports are allowed"
    )]
    Port { port: u16 },
}

impl Refusal {
    /// Bounded label for metrics.
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::Loopback { .. } => "loopback",
            Refusal::LinkLocal { .. } => "link_local",
            Refusal::Unspecified { .. } => "unspecified",
            Refusal::OwnListener { .. } => "own_listener",
            Refusal::Port { .. } => "port",
        }
    }
}

/// A malformed `egress.allow_addresses` or `egress.connect_ports` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} is not an address or CIDR block (e.g. 127.0.0.1/32, ::1/128)")]
    Cidr(String),
    #[error("{0:?} is not a port or range (e.g. 8443, 1024-65535)")]
    Port(String),
}

/// An address block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub(crate) fn parse(s: &str) -> Result<Cidr, AddressError> {
        let bad = || AddressError::Cidr(s.to_string());
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { net, prefix })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The address rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow: Vec<Cidr>,
    ports: Vec<(u16, u16)>,
}

impl AddressPolicy {
    /// `allow`: address blocks exempt from the class rules; `ports`: ports or ranges CONNECT
    /// may target besides 443.
    pub fn new(allow: &[String], ports: &[String]) -> Result<AddressPolicy, AddressError> {
        let allow = allow
            .iter()
            .map(|s| Cidr::parse(s.trim()))
            .collect::<Result<_, _>>()?;
        let ports = ports
            .iter()
            .map(|s| {
                let bad = || AddressError::Port(s.clone());
                let (a, b) = s.split_once('-').unwrap_or((s, s));
                let a: u16 = a.trim().parse().map_err(|_| bad())?;
                let b: u16 = b.trim().parse().map_err(|_| bad())?;
                if a == 0 || a > b {
                    return Err(bad());
                }
                Ok((a, b))
            })
            .collect::<Result<_, _>>()?;
        Ok(AddressPolicy { allow, ports })
    }

    /// Whether CONNECT may target `port`.
    pub fn check_port(&self, port: u16) -> Result<(), Refusal> {
        if port == 443 || self.ports.iter().any(|(a, b)| (*a..=*b).contains(&port)) {
            Ok(())
        } else {
            Err(Refusal::Port { port })
        }
    }

    /// Whether agent-chosen traffic may go to `addr`; `own` are modgate's listener addresses
    /// (with unspecified ones expanded to this machine's addresses).
    pub fn check_addr(&self, addr: SocketAddr, own: &[SocketAddr]) -> Result<(), Refusal> {
        let ip = canonical(addr.ip());
        if own
            .iter()
            .any(|o| o.port() == addr.port() && canonical(o.ip()) == ip)
        {
            return Err(Refusal::OwnListener { addr });
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        match ip {
            _ if ip.is_unspecified() => Err(Refusal::Unspecified { addr }),
            _ if ip.is_loopback() => Err(Refusal::Loopback { addr }),
            IpAddr::V4(v4) if v4.is_link_local() => Err(Refusal::LinkLocal { addr }),
            IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => {
                Err(Refusal::LinkLocal { addr })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_classes_by_default() {
        let p = AddressPolicy::default();
        let own = [sa("127.0.0.1:3128"), sa("10.0.0.5:9090")];
        let cases = [
            ("127.0.0.1:443", Some("loopback")),
            ("127.1.2.3:8080", Some("loopback")),
            ("[::1]:443", Some("loopback")),
            ("[::ffff:127.0.0.1]:443", Some("loopback")),
            ("169.254.169.254:80", Some("link_local")),
            ("[::ffff:169.254.169.254]:80", Some("link_local")),
            ("[fe80::1]:443", Some("link_local")),
            ("[febf::1]:443", Some("link_local")),
            ("0.0.0.0:443", Some("unspecified")),
            ("[::]:443", Some("unspecified")),
            ("10.0.0.5:9090", Some("own_listener")),
            ("[::ffff:10.0.0.5]:9090", Some("own_listener")),
            // Private ranges and public addresses are the egress policy's business.
            ("10.0.0.5:443", None),
            ("192.168.1.1:443", None),
            ("172.16.0.1:443", None),
            ("[fc00::1]:443", None),
            ("[fec0::1]:443", None),
            ("93.184.216.34:443", None),
            ("[2606:4700::1]:443", None),
        ];
        for (addr, want) in cases {
            let got = p.check_addr(sa(addr), &own).err().map(|r| r.rule());
            assert_eq!(got, want, "{addr}");
        }
    }

    #[test]
    fn explicit_exceptions_and_ports() {
        let p = AddressPolicy::new(
            &[
                "127.0.0.0/8".into(),
                "::1".into(),
                "169.254.169.254/32".into(),
            ],
            &["8443".into(), "9000-9100".into()],
        )
        .unwrap();
        assert!(p.check_addr(sa("127.0.0.1:8080"), &[]).is_ok());
        assert!(p.check_addr(sa("[::1]:8080"), &[]).is_ok());
        assert!(p.check_addr(sa("169.254.169.254:80"), &[]).is_ok());
        assert!(p.check_addr(sa("169.254.169.253:80"), &[]).is_err());
        // An exception never opens the gateway's own listeners.
        assert_eq!(
            p.check_addr(sa("127.0.0.1:9090"), &[sa("127.0.0.1:9090")])
                .unwrap_err()
                .rule(),
            "own_listener"
        );
        for (port, ok) in [
            (443, true),
            (8443, true),
            (9000, true),
            (9100, true),
            (9101, false),
            (22, false),
        ] {
            assert_eq!(p.check_port(port).is_ok(), ok, "{port}");
        }
        assert_eq!(
            AddressPolicy::default()
                .check_port(80)
                .unwrap_err()
                .to_string(),
            "modgate: CONNECT to port 80 is refused: only 443 and egress.connect_ports are allowed"
        );
        for bad in ["127.0.0.1/33", "localhost", "::1/129"] {
            assert!(AddressPolicy::new(&[bad.into()], &[]).is_err(), "{bad}");
        }
        for bad in ["0", "9-8", "x", "70000"] {
            assert!(AddressPolicy::new(&[], &[bad.into()]).is_err(), "{bad}");
        }
    }
}
