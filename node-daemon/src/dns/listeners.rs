//! Listeners that follow the bridges: UDP and TCP on port 53 of each gateway address, IPv4 and
//! IPv6 (a dual-stack network has two, each its own listener).
//!
//! Each gateway has its own UDP receive threads (`udp.rs`) and its own hickory `Server` for TCP
//! (a `Server` cannot drop one socket of several); all share one handler, and so the same views.
//! A network that appears gets listeners, one that goes loses them, and the others are not
//! touched: nothing is ever restarted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_server::Server;

use super::server::PierHandler;
use super::sockets::{self, NetnsSockets, SocketThreadGone};
use super::udp::{self, ReceiveThreads};

/// How long a TCP client may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 64;
/// How long a removed listener gets to finish what it is answering.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// Listening on one gateway failed (retried at the next sync).
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("making sockets for {address}")]
    Thread {
        address: SocketAddr,
        #[source]
        source: SocketThreadGone,
    },
    #[error("binding UDP {address}")]
    Udp {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("binding TCP {address}")]
    Tcp {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// One gateway's listeners: UDP receive threads (ours) and TCP (hickory's `Server`).
struct Gateway {
    udp: ReceiveThreads,
    tcp: Server<PierHandler>,
}

/// The set of per-gateway servers.
pub struct Listeners {
    port: u16,
    sockets: NetnsSockets,
    handler: PierHandler,
    servers: BTreeMap<IpAddr, Gateway>,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("port", &self.port)
            .field("gateways", &self.servers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Listeners {
    pub fn new(port: u16, sockets: NetnsSockets, handler: PierHandler) -> Listeners {
        Listeners {
            port,
            sockets,
            handler,
            servers: BTreeMap::new(),
        }
    }

    /// Where it listens now.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.servers
            .keys()
            .map(|ip| SocketAddr::new(*ip, self.port))
            .collect()
    }

    /// Listens on exactly `gateways`: new ones are bound, gone ones shut down.
    pub async fn sync(&mut self, gateways: &BTreeSet<IpAddr>) -> Vec<ListenError> {
        let gone: Vec<IpAddr> = self
            .servers
            .keys()
            .filter(|ip| !gateways.contains(ip))
            .copied()
            .collect();
        for ip in gone {
            if let Some(server) = self.servers.remove(&ip) {
                stop(server).await;
                tracing::info!(address = %ip, "DNS listener removed");
            }
        }
        let mut errors = Vec::new();
        for ip in gateways {
            if self.servers.contains_key(ip) {
                continue;
            }
            match self.bind(*ip).await {
                Ok(server) => {
                    tracing::info!(address = %ip, port = self.port, "DNS listener added");
                    self.servers.insert(*ip, server);
                }
                Err(error) => errors.push(error),
            }
        }
        errors
    }

    /// Stops every listener.
    pub async fn stop_all(&mut self) {
        for (_, server) in std::mem::take(&mut self.servers) {
            stop(server).await;
        }
    }

    async fn bind(&self, ip: IpAddr) -> Result<Gateway, ListenError> {
        let address = SocketAddr::new(ip, self.port);
        // One UDP socket and receive thread per runtime worker: every core can answer when one
        // is not enough (spreading.rs).
        let runtime = tokio::runtime::Handle::current();
        let loops = runtime.metrics().num_workers().max(1);
        let (udp, tcp) = self
            .sockets
            .run(move || {
                let udp: std::io::Result<Vec<_>> =
                    (0..loops).map(|_| sockets::bind_udp(address)).collect();
                (udp, sockets::listen_tcp(address))
            })
            .await
            .map_err(|source| ListenError::Thread { address, source })?;
        let udp = udp
            .and_then(|sockets| udp::serve(sockets, self.handler.clone(), runtime))
            .map_err(|source| ListenError::Udp { address, source })?;
        let tcp = tcp
            .and_then(tokio::net::TcpListener::from_std)
            .map_err(|source| ListenError::Tcp { address, source })?;
        let mut server = Server::new(self.handler.clone());
        server.register_listener(tcp, TCP_IDLE, TCP_RESPONSE_BUFFER);
        Ok(Gateway { udp, tcp: server })
    }
}

async fn stop(mut gateway: Gateway) {
    gateway.udp.stop(SHUTDOWN_GRACE).await;
    // Dropping the server (on timeout) aborts whatever is still running.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, gateway.tcp.shutdown_gracefully()).await;
}
