//! The IPv6 part of the fixture: addresses given by hand (`nodad`, so they work at once), and
//! clients and servers over IPv6 that say which address they saw on the other side.

use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use pier_node::state::NetworkState;

use super::{Bg, Ns};

impl Ns {
    /// Gives `interface` the IPv6 address `address6` in `network`'s subnet and a default route
    /// via its IPv6 gateway. Idempotent (`replace`): the links code may have done it already.
    pub fn add_address6(&self, network: &NetworkState, interface: &str, address6: &str) {
        let subnet6 = network.subnet6.expect("the network has IPv6");
        let gateway6 = network.gateway6.expect("the network has an IPv6 gateway");
        self.sh(&format!(
            "sysctl -qw net.ipv6.conf.{interface}.disable_ipv6=0 && \
             ip -6 addr replace {address6}/{} dev {interface} nodad && \
             ip -6 route replace default via {gateway6} dev {interface}",
            subnet6.prefix_len()
        ));
    }

    /// Waits until `link`'s IPv6 link-local address has passed duplicate address detection
    /// (about a second after the link comes up), as on a node that has run for a while. Until
    /// then the node cannot solicit a neighbour from a source that is not its own: where
    /// br_netfilter DNATs a hairpin connection, the solicitation for the endpoint carries the
    /// other endpoint's address, and the kernel sends none (the first SYNs are lost).
    pub fn wait_link_local(&self, link: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let addresses = self.sh(&format!("ip -6 addr show dev {link} scope link"));
            if addresses.contains("inet6") && !addresses.contains("tentative") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{link} has no usable link-local address: {addresses}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether one `ping -6` gets an answer within a second.
    pub fn ping6(&self, address: Ipv6Addr) -> bool {
        self.exec(&format!("ping -6 -c1 -W1 {address}"))
            .status
            .success()
    }

    /// Pings over IPv6 until it answers (neighbour discovery can take a moment).
    pub fn ping6_eventually(&self, address: Ipv6Addr) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.ping6(address) {
                return true;
            }
        }
        false
    }

    /// Starts a TCP server on `port` (both families: an IPv4 client shows as `::ffff:a.b.c.d`)
    /// that writes `peer ADDRESS`, the client's address as it sees it, to every connection and
    /// closes it; waits until it listens. The client's address is what tells a DNAT (kept)
    /// from a proxy or a masquerade (replaced).
    #[must_use = "the server is killed when the guard is dropped"]
    pub fn serve_peer(&self, port: u16) -> Bg {
        let server = self.spawn(&format!(
            "socat TCP6-LISTEN:{port},fork,reuseaddr SYSTEM:'echo peer $SOCAT_PEERADDR'"
        ));
        self.wait_listening6(port);
        server
    }

    /// Starts a TCP server on `port` that writes `bytes` zero bytes to every connection.
    #[must_use = "the server is killed when the guard is dropped"]
    pub fn serve_bytes(&self, port: u16, bytes: usize) -> Bg {
        let server = self.spawn(&format!(
            "socat TCP6-LISTEN:{port},fork,reuseaddr SYSTEM:'head -c {bytes} /dev/zero'"
        ));
        self.wait_listening6(port);
        server
    }

    /// Starts a UDP server on `port` (both families) answering every datagram with
    /// `udp-peer ADDRESS`.
    #[must_use = "the server is killed when the guard is dropped"]
    pub fn serve_udp_peer(&self, port: u16) -> Bg {
        let server = self.spawn(&format!(
            // Reads the request first (see `Ns::serve_udp`).
            "socat UDP6-RECVFROM:{port},fork SYSTEM:'read -r _; echo udp-peer $SOCAT_PEERADDR'"
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self
            .sh("cat /proc/net/udp6")
            .contains(&format!(":{port:04X} "))
        {
            assert!(
                Instant::now() < deadline,
                "UDP server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Connects to `addr:port` (either family) and reads until the server closes: the address
    /// a [`Ns::serve_peer`] server saw, or None when nothing answered in a few seconds.
    pub fn peer_seen(&self, addr: impl Into<IpAddr>, port: u16) -> Option<IpAddr> {
        let text = self.tcp_read(addr.into(), port)?;
        parse_peer(text.strip_prefix("peer ")?)
    }

    /// [`Ns::peer_seen`], retried for a few seconds (the path may still be settling).
    pub fn peer_seen_eventually(&self, addr: impl Into<IpAddr>, port: u16) -> Option<IpAddr> {
        let addr = addr.into();
        let deadline = Instant::now() + Duration::from_secs(6);
        while Instant::now() < deadline {
            if let Some(peer) = self.peer_seen(addr, port) {
                return Some(peer);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// How many bytes a TCP connection to `addr:port` received before the server closed it.
    pub fn bytes_received(&self, addr: impl Into<IpAddr>, port: u16) -> usize {
        let output = self.exec(&format!(
            "busybox timeout 10 socat -T 5 -u {} - | wc -c",
            socat_tcp(addr.into(), port)
        ));
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// One UDP request to `addr:port` (asked up to three times, as any UDP client does): the
    /// address a [`Ns::serve_udp_peer`] server saw.
    pub fn udp_peer_seen(&self, addr: impl Into<IpAddr>, port: u16) -> Option<IpAddr> {
        parse_peer(self.udp_request(addr, port)?.strip_prefix("udp-peer ")?)
    }

    fn tcp_read(&self, addr: IpAddr, port: u16) -> Option<String> {
        let output = self.exec(&format!(
            "busybox timeout 4 socat -T 3 -u {} -",
            socat_tcp(addr, port)
        ));
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        (output.status.success() && !text.is_empty()).then_some(text)
    }

    fn wait_listening6(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self
            .sh("cat /proc/net/tcp6")
            .lines()
            .any(|l| l.contains(&format!(":{port:04X} ")) && l.contains(" 0A "))
        {
            assert!(Instant::now() < deadline, "server on {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn socat_tcp(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("TCP4:{a}:{port},connect-timeout=2"),
        IpAddr::V6(a) => format!("TCP6:[{a}]:{port},connect-timeout=2"),
    }
}

/// socat's `SOCAT_PEERADDR`: `[fd00:0018:...]` (written out in full) or `a.b.c.d`; an IPv4
/// client of an IPv6 socket is `::ffff:a.b.c.d`, given back as IPv4.
fn parse_peer(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_start_matches('[').trim_end_matches(']');
    let addr: IpAddr = text.parse().ok()?;
    Some(match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    })
}
