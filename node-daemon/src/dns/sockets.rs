//! Sockets inside the node's namespace, made by one long-lived thread that lives there.
//!
//! The DNS server runs on tokio workers, which must never `setns` (a worker would carry the
//! namespace into every task it runs later). A socket belongs
//! to the namespace it was created in, for its whole life, so one dedicated OS thread entered into
//! the node's namespace (through `netns::run_in`) creates every socket the server needs: listeners
//! on the gateways and fresh sockets for each forwarded query. The tokio side then uses them from
//! anywhere.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;

use super::spreading::Spread;
use crate::kernel::netns::{self, NetnsError};

type Job = Box<dyn FnOnce() + Send>;

/// A handle to the socket-making thread; the thread ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct NetnsSockets {
    jobs: mpsc::Sender<Job>,
}

/// The socket thread is gone (it only ends when every handle is dropped, or by a panic).
#[derive(Debug, thiserror::Error)]
#[error("the socket thread for the node namespace is gone")]
pub struct SocketThreadGone;

impl NetnsSockets {
    /// Starts the thread inside `netns` (`None`: this process's namespace).
    pub fn start(netns: Option<PathBuf>) -> Result<NetnsSockets, NetnsError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel::<Result<(), NetnsError>>();
        let failed_tx = ready_tx.clone();
        std::thread::Builder::new()
            .name("pier-dns-netns".into())
            .spawn(move || {
                // `run_in` makes a fresh thread inside the namespace; this one only waits for it.
                let outcome = netns::run_in(netns.as_deref(), move || {
                    let _ = ready_tx.send(Ok(()));
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                });
                if let Err(error) = outcome {
                    let _ = failed_tx.send(Err(error));
                }
            })
            .map_err(NetnsError::Spawn)?;
        match ready.recv() {
            Ok(Ok(())) => Ok(NetnsSockets { jobs }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(NetnsError::Panicked {
                path: "(dns socket thread)".into(),
            }),
        }
    }

    /// Runs `make` on the namespace thread and returns its result.
    pub async fn run<T, F>(&self, make: F) -> Result<T, SocketThreadGone>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(make());
            }))
            .map_err(|_| SocketThreadGone)?;
        rx.await.map_err(|_| SocketThreadGone)
    }
}

/// A socket for a gateway address of either family, with IP_FREEBIND (IPV6_FREEBIND) so it can be
/// bound before the bridge has the address (the dataplane may come later; an IPv6 address may
/// still be tentative while DAD runs) and keeps working when it comes and goes. An IPv6 socket
/// is IPv6 only: the IPv4 gateway has its own.
fn gateway_socket(address: SocketAddr, kind: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), kind, Some(protocol))?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// A UDP socket bound to `address` (IPv4 or IPv6, see `gateway_socket`). SO_REUSEPORT lets one
/// socket per worker share the address: the kernel hands each query to one of them, as
/// [`steer`] says (only sockets of the same user can join the group).
pub fn bind_udp(address: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = gateway_socket(address, Type::DGRAM, Protocol::UDP)?;
    socket.set_reuse_port(true)?;
    // Bursts of queries must queue in the kernel, not be dropped while a worker is busy.
    let _ = socket.set_recv_buffer_size(4 << 20);
    // Blocking: a receive thread waits in it (`udp.rs`).
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// Tells the kernel which socket of `socket`'s SO_REUSEPORT group gets each query
/// (spreading.rs), with a classic BPF program for the group (`SO_ATTACH_REUSEPORT_CBPF`) that
/// returns the socket's index in the group: 0, the first bound, for [`Spread::First`]; for
/// [`Spread::All`] an index past the end, on which the kernel falls back to its hash.
///
/// A gateway's first socket is the first of its group because the group's sockets are bound
/// together and closed together. Not when a listener is bound again while a thread of the old
/// one has not let go (`ReceiveThreads::stop` gave up waiting): the new sockets join the old
/// group, and index 0 is an old socket until it closes.
pub fn steer(socket: &std::net::UdpSocket, spread: Spread) -> io::Result<()> {
    use nix::libc;
    use nix::sys::socket::{setsockopt, sockopt};
    let index = match spread {
        Spread::First => 0,
        Spread::All => u32::MAX,
    };
    let mut program = [libc::sock_filter {
        // `BPF_RET | BPF_K`: return the constant `k`.
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: index,
    }];
    let fprog = libc::sock_fprog {
        len: 1,
        filter: program.as_mut_ptr(),
    };
    // The kernel copies the program during the call.
    setsockopt(socket, sockopt::AttachReusePortCbpf, &fprog).map_err(io::Error::from)
}

/// A TCP listener bound to `address` (free-bound as for UDP).
pub fn listen_tcp(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = gateway_socket(address, Type::STREAM, Protocol::TCP)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// An unbound UDP socket on an ephemeral port (a fresh random source port per forwarded query,
/// which is most of what protects a forwarder against spoofed answers).
pub fn ephemeral_udp(ipv6: bool) -> io::Result<std::net::UdpSocket> {
    let bind: SocketAddr = if ipv6 {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(bind)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// An unconnected TCP socket, to be connected from tokio.
pub fn tcp_socket(ipv6: bool) -> io::Result<std::net::TcpStream> {
    let domain = if ipv6 { Domain::IPV6 } else { Domain::IPV4 };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    /// Sends one datagram from each of `askers` fresh sockets (fresh source ports) to `server`;
    /// returns how many each of `group` received.
    fn deliver(group: &[UdpSocket], server: SocketAddr, askers: usize) -> Vec<usize> {
        for _ in 0..askers {
            let asker = UdpSocket::bind("127.0.0.1:0").expect("asker binds");
            asker.send_to(b"query", server).expect("sends");
        }
        // Loopback delivers before `send_to` returns; the wait only guards a slow machine.
        std::thread::sleep(Duration::from_millis(50));
        group
            .iter()
            .map(|socket| {
                let mut buffer = [0; 16];
                std::iter::from_fn(|| socket.recv_from(&mut buffer).ok()).count()
            })
            .collect()
    }

    #[test]
    fn steering_sends_every_query_to_the_first_socket_or_spreads_them_by_hash() {
        let first = bind_udp("127.0.0.1:0".parse().expect("address")).expect("binds");
        let server = first.local_addr().expect("address");
        let group = [first, bind_udp(server).expect("a sibling binds")];
        for socket in &group {
            socket.set_nonblocking(true).expect("nonblocking");
        }

        steer(&group[0], Spread::First).expect("steers to the first");
        assert_eq!(deliver(&group, server, 32), vec![32, 0]);

        // Spread by the kernel's hash: 32 source ports all landing on one socket of two is a
        // chance of one in 2^31.
        steer(&group[0], Spread::All).expect("spreads");
        let spread = deliver(&group, server, 32);
        assert_eq!(spread.iter().sum::<usize>(), 32);
        assert!(spread.iter().all(|&count| count > 0), "{spread:?}");

        // The program is the group's: attached through the second socket it steers the same.
        steer(&group[1], Spread::First).expect("steers to the first");
        assert_eq!(deliver(&group, server, 32), vec![32, 0]);
    }
}
