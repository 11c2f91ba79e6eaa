//! The host-port holder against the kernel, in a namespace of the test's own: binding a port a
//! process listens on is `EADDRINUSE` (the in-use check), a held port cannot be bound by anyone
//! else, with or without SO_REUSEADDR, on the wildcard or on one address, and is free once the
//! socket is dropped; SCTP without the kernel module is published unheld, never an error.

mod common;

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::{Ns, require_root};
use pier_node::kernel::host_ports::{self, HostPort, Opened, Refused};
use pier_node::kernel::netns::run_in;
use pier_node::state::Protocol;
use socket2::{Domain, Socket, Type};

fn port(ip: Ipv4Addr, protocol: Protocol, port: u16) -> HostPort {
    HostPort {
        ip: ip.into(),
        protocol,
        port,
    }
}

/// What holding `port` in `ns` gives.
fn hold(ns: &Ns, port: HostPort) -> Opened<Socket> {
    run_in(Some(&ns.path()), move || {
        Opened::from_result(host_ports::open(&port))
    })
    .expect("runs in the namespace")
}

/// The error of another process's bind of `address` in `ns` asking for SO_REUSEADDR, as most
/// servers do; `None`: it bound.
fn bind_as_another(ns: &Ns, protocol: Protocol, address: SocketAddrV4) -> Option<io::ErrorKind> {
    run_in(Some(&ns.path()), move || {
        let kind = match protocol {
            Protocol::Udp => Type::DGRAM,
            _ => Type::STREAM,
        };
        let socket = Socket::new(Domain::IPV4, kind, None).ok()?;
        socket.set_reuse_address(true).ok()?;
        let bound = socket.bind(&address.into());
        let bound = match (bound, protocol) {
            (Ok(()), Protocol::Tcp) => socket.listen(16),
            (other, _) => other,
        };
        bound.err().map(|e| e.kind())
    })
    .expect("runs in the namespace")
}

#[test]
fn a_listened_port_is_in_use_and_a_held_port_cannot_be_taken() {
    require_root();
    let node = Ns::new("hold");
    let any = Ipv4Addr::UNSPECIFIED;
    let lo = Ipv4Addr::LOCALHOST;

    // A process listens on 7000: the bind is refused, on the wildcard and on one address.
    let _listener = node.spawn("socat TCP-LISTEN:7000,reuseaddr,fork SYSTEM:'echo mine'");
    let listening = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        node.exec("socat -T1 - TCP:127.0.0.1:7000")
            .stdout
            .starts_with(b"mine")
    });
    assert!(listening, "socat listens in the namespace");
    for ip in [any, lo] {
        assert!(
            matches!(
                hold(&node, port(ip, Protocol::Tcp, 7000)),
                Opened::Refused(Refused::InUse)
            ),
            "{ip}:7000 is in use"
        );
    }

    // Held ports: nobody else binds them, nor the same port on one address of the node.
    let tcp = hold(&node, port(any, Protocol::Tcp, 7001));
    let udp = hold(&node, port(any, Protocol::Udp, 7002));
    assert!(matches!(tcp, Opened::Held(_)) && matches!(udp, Opened::Held(_)));
    for ip in [any, lo] {
        assert_eq!(
            bind_as_another(&node, Protocol::Tcp, SocketAddrV4::new(ip, 7001)),
            Some(io::ErrorKind::AddrInUse),
            "tcp {ip}:7001"
        );
        assert_eq!(
            bind_as_another(&node, Protocol::Udp, SocketAddrV4::new(ip, 7002)),
            Some(io::ErrorKind::AddrInUse),
            "udp {ip}:7002"
        );
    }
    // Dropped (unpublished): free again.
    drop((tcp, udp));
    assert_eq!(
        bind_as_another(&node, Protocol::Tcp, SocketAddrV4::new(any, 7001)),
        None
    );
    assert_eq!(
        bind_as_another(&node, Protocol::Udp, SocketAddrV4::new(any, 7002)),
        None
    );

    // One address of the node (or one it does not have yet): only that address is held.
    let on_lo = hold(&node, port(lo, Protocol::Tcp, 7003));
    assert!(matches!(on_lo, Opened::Held(_)));
    let elsewhere = hold(
        &node,
        port(Ipv4Addr::new(10, 99, 0, 1), Protocol::Tcp, 7003),
    );
    assert!(matches!(elsewhere, Opened::Held(_)), "IP_FREEBIND");
    assert_eq!(
        bind_as_another(&node, Protocol::Tcp, SocketAddrV4::new(any, 7003)),
        Some(io::ErrorKind::AddrInUse)
    );

    // SCTP: held where the kernel has it, published unheld where it does not; never refused.
    match hold(&node, port(any, Protocol::Sctp, 7004)) {
        Opened::Held(_) | Opened::Unsupported => {}
        Opened::Refused(why) => panic!("SCTP refused: {why:?}"),
    }
}
