//! Bootstrap entries: parsing (pure) and DNS resolution (IO), kept apart.
//!
//! Accepted forms:
//! - a multiaddr, with or without a trailing `/p2p/<peer id>`: `/ip4/10.0.0.5/tcp/7300/p2p/12D3…`;
//!   `/dns/<name>/tcp/<port>` without a peer id is treated like `name:port` below;
//! - `ip:port` or `[ipv6]:port`, and a bare IP (port [`DEFAULT_PORT`]);
//! - `name:port` or a bare `name` (port [`DEFAULT_PORT`]): resolved with the system resolver and
//!   **every** address is dialled, since an alias such as Docker's `controller` resolves to one
//!   address per replica.

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, SocketAddr};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::Error;

/// Port assumed for a bootstrap entry that names no port.
pub const DEFAULT_PORT: u16 = 7300;
/// Longest DNS name accepted.
const MAX_HOSTNAME_LEN: usize = 253;

/// One parsed bootstrap entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Dial this address; `peer` is set when the entry carried `/p2p/<id>`.
    Addr {
        addr: Multiaddr,
        peer: Option<PeerId>,
    },
    /// Resolve this name and dial every address it yields.
    Name { host: String, port: u16 },
}

/// Parses one bootstrap entry. Pure: resolution happens later, in [`resolve`].
pub fn parse(entry: &str) -> Result<Target, Error> {
    let fail = |reason: &str| Error::Bootstrap {
        entry: entry.into(),
        reason: reason.into(),
    };
    let text = entry.trim();
    if text.is_empty() {
        return Err(fail("empty entry"));
    }
    if text.starts_with('/') {
        let mut addr: Multiaddr = text
            .parse()
            .map_err(|e| fail(&format!("not a multiaddr: {e}")))?;
        let peer = match addr.iter().last() {
            Some(Protocol::P2p(peer)) => {
                addr.pop();
                Some(peer)
            }
            _ => None,
        };
        if addr.iter().any(|p| matches!(p, Protocol::P2p(_))) {
            return Err(fail("/p2p/<id> must come last"));
        }
        let mut parts = addr.iter();
        return match (parts.next(), parts.next(), parts.next(), peer) {
            (None, ..) => Err(fail("multiaddr has no address, only a peer id")),
            (
                Some(Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h)),
                Some(Protocol::Tcp(port)),
                None,
                None,
            ) => Ok(Target::Name {
                host: h.to_string(),
                port,
            }),
            _ => Ok(Target::Addr { addr, peer }),
        };
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        if socket.port() == 0 {
            return Err(fail("port 0 cannot be dialled"));
        }
        return Ok(Target::Addr {
            addr: socket_multiaddr(socket),
            peer: None,
        });
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Target::Addr {
            addr: socket_multiaddr(SocketAddr::new(ip, DEFAULT_PORT)),
            peer: None,
        });
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| fail(&format!("port {port:?} is not a number in 1..=65535")))?;
            (host, port)
        }
        None => (text, DEFAULT_PORT),
    };
    if host.contains(':') {
        return Err(fail("write an IPv6 address with a port as [addr]:port"));
    }
    check_hostname(host).map_err(|reason| fail(&reason))?;
    Ok(Target::Name {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn check_hostname(host: &str) -> Result<(), String> {
    if host.is_empty() || host.len() > MAX_HOSTNAME_LEN {
        return Err(format!(
            "host name must be 1..={MAX_HOSTNAME_LEN} characters"
        ));
    }
    for label in host.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "host name label {label:?} must be 1..=63 characters"
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-_".contains(*c)))
        {
            return Err(format!("character {c:?} not allowed in a host name"));
        }
    }
    Ok(())
}

/// `/ip4|ip6/<ip>/tcp/<port>` for a socket address.
pub fn socket_multiaddr(socket: SocketAddr) -> Multiaddr {
    Multiaddr::empty()
        .with(Protocol::from(socket.ip()))
        .with(Protocol::Tcp(socket.port()))
}

/// Resolves `host:port` with the system resolver (so `/etc/hosts` and Docker's embedded DNS
/// apply) into every distinct TCP address, in a stable order.
pub async fn resolve(host: &str, port: u16) -> io::Result<Vec<Multiaddr>> {
    let sockets: BTreeSet<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    Ok(sockets.into_iter().map(socket_multiaddr).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn multiaddr_with_and_without_peer_id() {
        let peer = PeerId::random();
        assert_eq!(
            parse(&format!("/ip4/10.0.0.5/tcp/7300/p2p/{peer}")).unwrap(),
            Target::Addr {
                addr: addr("/ip4/10.0.0.5/tcp/7300"),
                peer: Some(peer)
            }
        );
        assert_eq!(
            parse(" /ip6/::1/tcp/9 ").unwrap(),
            Target::Addr {
                addr: addr("/ip6/::1/tcp/9"),
                peer: None
            }
        );
        // A DNS multiaddr with a peer id names one peer: dial it as is.
        let dns = format!("/dns4/controller/tcp/7300/p2p/{peer}");
        assert_eq!(
            parse(&dns).unwrap(),
            Target::Addr {
                addr: addr("/dns4/controller/tcp/7300"),
                peer: Some(peer)
            }
        );
    }

    #[test]
    fn dns_multiaddr_without_peer_id_resolves_to_many() {
        assert_eq!(
            parse("/dns/controller/tcp/7300").unwrap(),
            Target::Name {
                host: "controller".into(),
                port: 7300
            }
        );
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse("10.1.2.3:4000").unwrap(),
            Target::Addr {
                addr: addr("/ip4/10.1.2.3/tcp/4000"),
                peer: None
            }
        );
        assert_eq!(
            parse("[::1]:4000").unwrap(),
            Target::Addr {
                addr: addr("/ip6/::1/tcp/4000"),
                peer: None
            }
        );
        assert_eq!(
            parse("10.1.2.3").unwrap(),
            Target::Addr {
                addr: addr(&format!("/ip4/10.1.2.3/tcp/{DEFAULT_PORT}")),
                peer: None
            }
        );
        assert_eq!(
            parse("localhost:4000").unwrap(),
            Target::Name {
                host: "localhost".into(),
                port: 4000
            }
        );
        assert_eq!(
            parse("Controller").unwrap(),
            Target::Name {
                host: "controller".into(),
                port: DEFAULT_PORT
            }
        );
        assert_eq!(
            parse("redcloud_controller.local.").unwrap(),
            Target::Name {
                host: "redcloud_controller.local.".into(),
                port: DEFAULT_PORT
            }
        );
    }

    #[test]
    fn bad_entries_have_clear_errors() {
        for (entry, expect) in [
            ("", "empty"),
            ("   ", "empty"),
            ("/ip4/1.2.3.4/tcp/x", "not a multiaddr"),
            (
                "/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
                "only a peer id",
            ),
            ("host:", "port"),
            ("host:0", "port"),
            ("host:65536", "port"),
            ("1.2.3.4:0", "port 0"),
            ("bad host:80", "not allowed"),
            ("a..b", "label"),
            ("[::1:80", "[addr]:port"),
        ] {
            let msg = parse(entry).unwrap_err().to_string();
            assert!(
                msg.contains(expect),
                "{entry:?}: {msg:?} should mention {expect:?}"
            );
            assert!(msg.contains(entry), "{msg:?} should quote the entry");
        }
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let addrs = resolve("localhost", 4000).await.unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| {
            matches!(a.iter().next(), Some(Protocol::Ip4(ip)) if ip.is_loopback())
                || matches!(a.iter().next(), Some(Protocol::Ip6(ip)) if ip.is_loopback())
        }));
    }
}
