//! Host ports Pier publishes are held open, as docker-proxy and kube-proxy's port opener do.
//!
//! A published port is a DNAT rule: without a socket of its own on the node, a process that
//! listens on the same port would see nothing (DNAT happens in prerouting and output, before the
//! socket lookup) and one that starts later would not even notice. So before a port goes into the
//! table, the node agent binds it in the node's namespace (and, for TCP, listens, never
//! accepting): the bind failing with `EADDRINUSE` is the check that no process of the node has the
//! port (atomic, unlike reading /proc), and the socket kept open is what makes every later bind by
//! another process fail. Packets never reach these sockets.
//!
//! [`PortHolder`] is the bookkeeping (which ports are held, which were refused), pure and generic
//! over the socket; [`open`] is the kernel edge.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Socket, Type};

use crate::state::{Protocol, PublishedPort};

/// One host socket address a published port needs: `hostIP:hostPort/protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub ip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

impl HostPort {
    /// The host side of `port`.
    pub fn of(port: &PublishedPort) -> HostPort {
        HostPort {
            ip: port.host_ip,
            protocol: port.protocol,
            port: port.host_port,
        }
    }
}

impl fmt::Display for HostPort {
    /// `0.0.0.0:8000/tcp`, as `docker ps` shows the host side.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.protocol.as_str())
    }
}

/// Why a wanted port is not held (and so not published).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Another socket of the node has it: a process listens there.
    InUse,
    /// Opening the socket failed otherwise (the message says how).
    Failed(String),
}

/// What opening one port gave.
#[derive(Debug)]
pub enum Opened<S> {
    /// The socket, held from now on.
    Held(S),
    /// The kernel does not have the protocol (e.g. no SCTP module): no process can listen on the
    /// port either, so it is published with nothing to hold.
    Unsupported,
    /// Not held: see [`Refused`].
    Refused(Refused),
}

impl<S> Opened<S> {
    /// Sorts an `open` outcome: `EADDRINUSE` is a port in use, a missing protocol is
    /// [`Opened::Unsupported`], anything else a failure.
    pub fn from_result(result: io::Result<S>) -> Opened<S> {
        match result {
            Ok(socket) => Opened::Held(socket),
            Err(error) => match error.raw_os_error() {
                Some(nix::libc::EADDRINUSE) => Opened::Refused(Refused::InUse),
                Some(
                    nix::libc::EPROTONOSUPPORT
                    | nix::libc::ESOCKTNOSUPPORT
                    | nix::libc::EAFNOSUPPORT,
                ) => Opened::Unsupported,
                _ => Opened::Refused(Refused::Failed(error.to_string())),
            },
        }
    }
}

/// The host ports held by the node agent, and those it was refused.
#[derive(Debug)]
pub struct PortHolder<S> {
    /// `None`: published without a socket (the protocol is not in the kernel).
    held: BTreeMap<HostPort, Option<S>>,
    /// Refused at the last try; tried again only when asked to (the full resync), so the attach
    /// path does not start a namespace thread for them on every apply.
    refused: BTreeMap<HostPort, Refused>,
}

impl<S> Default for PortHolder<S> {
    fn default() -> Self {
        PortHolder {
            held: BTreeMap::new(),
            refused: BTreeMap::new(),
        }
    }
}

impl<S> PortHolder<S> {
    /// Makes the held ports exactly the `wanted` ones that can be had, and returns the wanted
    /// ports that are not held, with why.
    ///
    /// Ports no longer wanted are closed first (a port that moved from one address to the
    /// wildcard would otherwise conflict with its old self). The others not held yet are opened
    /// with `open` (one call with all of them, so the caller enters the node's namespace once;
    /// it returns one result per port, in order); a port refused before is tried again only with
    /// `retry_refused`.
    pub fn converge(
        &mut self,
        wanted: &BTreeSet<HostPort>,
        retry_refused: bool,
        open: impl FnOnce(&[HostPort]) -> Vec<Opened<S>>,
    ) -> BTreeMap<HostPort, Refused> {
        self.held.retain(|port, _| wanted.contains(port));
        self.refused.retain(|port, _| wanted.contains(port));
        let to_open: Vec<HostPort> = wanted
            .iter()
            .filter(|port| !self.held.contains_key(port))
            .filter(|port| retry_refused || !self.refused.contains_key(port))
            .copied()
            .collect();
        if !to_open.is_empty() {
            let mut outcomes = open(&to_open).into_iter();
            for port in to_open {
                let outcome = outcomes.next().unwrap_or_else(|| {
                    Opened::Refused(Refused::Failed("no socket was opened".to_owned()))
                });
                match outcome {
                    Opened::Held(socket) => {
                        self.refused.remove(&port);
                        self.held.insert(port, Some(socket));
                    }
                    Opened::Unsupported => {
                        self.refused.remove(&port);
                        self.held.insert(port, None);
                    }
                    Opened::Refused(why) => {
                        self.refused.insert(port, why);
                    }
                }
            }
        }
        self.refused.clone()
    }

    /// Whether `port` is held (or published with nothing to hold).
    pub fn holds(&self, port: &HostPort) -> bool {
        self.held.contains_key(port)
    }

    /// Number of sockets open.
    pub fn sockets(&self) -> usize {
        self.held.values().filter(|s| s.is_some()).count()
    }
}

/// How many connections the kernel may queue on a held TCP port before refusing more: none are
/// ever accepted, and DNAT sends the port's traffic elsewhere first.
const BACKLOG: i32 = 1;

/// Opens `port` in the calling thread's network namespace and holds it: bound, and for TCP and
/// SCTP listening.
///
/// IP_FREEBIND: a host address the node does not have (yet) is held all the same, as the rule
/// for it is installed all the same. TCP sets SO_REUSEADDR, as every server does (Go's listeners,
/// so docker-proxy and kube-proxy): it lets the bind pass over connections of an earlier
/// listener still in TIME_WAIT, and never lets another socket bind the port while this one
/// listens. UDP sets no reuse option: with it, another socket asking for reuse could share.
/// An IPv6 port is held on IPv6 alone (IPV6_V6ONLY), as its IPv4 twin is its own entry.
pub fn open(port: &HostPort) -> io::Result<Socket> {
    let address = SocketAddr::new(port.ip, port.port);
    let (kind, protocol) = match port.protocol {
        Protocol::Tcp => (Type::STREAM, socket2::Protocol::TCP),
        Protocol::Udp => (Type::DGRAM, socket2::Protocol::UDP),
        Protocol::Sctp => (Type::STREAM, socket2::Protocol::SCTP),
    };
    let socket = Socket::new(Domain::for_address(address), kind, Some(protocol))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    if port.protocol == Protocol::Tcp {
        socket.set_reuse_address(true)?;
    }
    socket.bind(&address.into())?;
    if port.protocol != Protocol::Udp {
        socket.listen(BACKLOG)?;
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(port: u16) -> HostPort {
        HostPort {
            ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            protocol: Protocol::Tcp,
            port,
        }
    }

    fn set(ports: &[HostPort]) -> BTreeSet<HostPort> {
        ports.iter().copied().collect()
    }

    /// An opener that refuses `in_use` and counts what it was asked to open.
    fn opener<'a>(
        in_use: &'a [HostPort],
        asked: &'a mut Vec<HostPort>,
    ) -> impl FnOnce(&[HostPort]) -> Vec<Opened<u16>> + 'a {
        move |ports| {
            asked.extend_from_slice(ports);
            ports
                .iter()
                .map(|p| {
                    if in_use.contains(p) {
                        Opened::Refused(Refused::InUse)
                    } else {
                        Opened::Held(p.port)
                    }
                })
                .collect()
        }
    }

    #[test]
    fn holds_what_is_free_and_refuses_what_is_in_use() {
        let mut holder = PortHolder::default();
        let mut asked = Vec::new();
        let refused = holder.converge(
            &set(&[tcp(8000), tcp(8001)]),
            false,
            opener(&[tcp(8000)], &mut asked),
        );
        assert_eq!(refused, BTreeMap::from([(tcp(8000), Refused::InUse)]));
        assert!(holder.holds(&tcp(8001)) && !holder.holds(&tcp(8000)));
        assert_eq!(asked, vec![tcp(8000), tcp(8001)]);
    }

    #[test]
    fn held_ports_are_not_opened_again_and_refused_ones_wait_for_a_retry() {
        let mut holder = PortHolder::default();
        let wanted = set(&[tcp(8000), tcp(8001)]);
        let mut asked = Vec::new();
        holder.converge(&wanted, false, opener(&[tcp(8000)], &mut asked));
        // Not a retry: nothing to open, the refusal stands.
        let mut asked = Vec::new();
        let refused = holder.converge(&wanted, false, opener(&[], &mut asked));
        assert!(asked.is_empty(), "{asked:?}");
        assert_eq!(refused.len(), 1);
        // The retry (the resync) finds the port free.
        let mut asked = Vec::new();
        let refused = holder.converge(&wanted, true, opener(&[], &mut asked));
        assert_eq!(asked, vec![tcp(8000)], "only the refused one");
        assert!(refused.is_empty());
        assert!(holder.holds(&tcp(8000)));
        assert_eq!(holder.sockets(), 2);
    }

    #[test]
    fn ports_no_longer_wanted_are_released_and_forgotten() {
        let mut holder = PortHolder::default();
        let mut asked = Vec::new();
        holder.converge(
            &set(&[tcp(8000), tcp(8001)]),
            false,
            opener(&[tcp(8001)], &mut asked),
        );
        let mut asked = Vec::new();
        let refused = holder.converge(&BTreeSet::new(), false, opener(&[], &mut asked));
        assert!(refused.is_empty() && asked.is_empty());
        assert_eq!(holder.sockets(), 0);
        // Wanted again later: opened afresh, the old refusal forgotten.
        let mut asked = Vec::new();
        holder.converge(&set(&[tcp(8001)]), false, opener(&[], &mut asked));
        assert_eq!(asked, vec![tcp(8001)]);
    }

    #[test]
    fn a_protocol_the_kernel_lacks_is_published_unheld_and_not_retried() {
        let mut holder: PortHolder<u16> = PortHolder::default();
        let sctp = HostPort {
            protocol: Protocol::Sctp,
            ..tcp(9000)
        };
        let refused = holder.converge(&set(&[sctp]), false, |ports| {
            ports
                .iter()
                .map(|_| {
                    Opened::from_result(Err(io::Error::from_raw_os_error(
                        nix::libc::EPROTONOSUPPORT,
                    )))
                })
                .collect()
        });
        assert!(refused.is_empty());
        assert!(holder.holds(&sctp));
        assert_eq!(holder.sockets(), 0);
        let refused = holder.converge(&set(&[sctp]), true, |_| panic!("not opened again"));
        assert!(refused.is_empty());
    }

    #[test]
    fn errors_are_sorted() {
        let sort = |errno| Opened::<()>::from_result(Err(io::Error::from_raw_os_error(errno)));
        assert!(matches!(
            sort(nix::libc::EADDRINUSE),
            Opened::Refused(Refused::InUse)
        ));
        assert!(matches!(
            sort(nix::libc::EPROTONOSUPPORT),
            Opened::Unsupported
        ));
        assert!(matches!(
            sort(nix::libc::EACCES),
            Opened::Refused(Refused::Failed(m)) if m.contains("denied")
        ));
        assert_eq!(tcp(8000).to_string(), "0.0.0.0:8000/tcp");
    }
}
