//! Links, addresses (both families) and routes through rtnetlink, one namespace at a time.
//!
//! A [`Nl`] is one rtnetlink socket bound to one network namespace plus the small current-thread
//! tokio runtime that drives it. The socket is created on a `netns::run_in` thread, so it is bound
//! to the target namespace for its whole life, and the caller's thread never enters a foreign
//! namespace (`setns` on a shared thread would move its later work too). After that the `Nl` can be used from any plain (non-async) thread:
//! every call blocks on the private runtime, which keeps the dataplane usable from CLI code, tests
//! and — through `spawn_blocking` — from the async node daemon.

mod addr;
mod link;
mod neigh;
mod route;

use std::future::Future;
use std::path::Path;

pub use addr::{V4Address, V6Address, list_v4_addresses};
pub use link::{Inet6Conf, InetConf, Link, LinkKind, VethSpec, VxlanConf, VxlanSpec, parse_mac};
pub use neigh::{FdbEntry, NeighbourEntry, format_mac};
pub use route::{
    MAIN_TABLE, PIER_ROUTE_PROTOCOL, RouteKind, V4Route, V6Route, foreign_default_route,
    foreign_v6_default_route,
};

use crate::kernel::netns::{self, NetnsError};

/// A netlink step that failed; one variant per kind of step, with the kernel's answer as source.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket inside the network namespace")]
    Netns(#[source] NetnsError),
    #[error("starting the runtime that drives the netlink socket")]
    Runtime(#[source] std::io::Error),
    #[error("opening a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("listing links")]
    ListLinks(#[source] Box<rtnetlink::Error>),
    #[error("looking up link {name}")]
    GetLink {
        name: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("link {0} does not exist")]
    NoSuchLink(String),
    #[error("listing routes")]
    ListRoutes(#[source] Box<rtnetlink::Error>),
    #[error("listing addresses")]
    ListAddresses(#[source] Box<rtnetlink::Error>),
    #[error("creating bridge {name}")]
    CreateBridge {
        name: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("creating VXLAN device {name}")]
    CreateVxlan {
        name: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("listing the neighbour entries of {link}")]
    ListNeighbours {
        link: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("setting {what} on {link}")]
    SetNeighbour {
        link: String,
        what: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("deleting {what} from {link}")]
    DeleteNeighbour {
        link: String,
        what: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("creating veth {host} with peer {peer} in the target namespace")]
    CreateVeth {
        host: String,
        peer: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("opening namespace file {path} to move a veth peer into it")]
    OpenNamespace {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("deleting link {name}")]
    DeleteLink {
        name: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("deleting the links of group {group}")]
    DeleteGroup {
        group: u32,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("changing link {name}: {what}")]
    SetLink {
        name: String,
        what: &'static str,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("adding address {address} to {link}")]
    AddAddress {
        link: String,
        address: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("removing address {address} from {link}")]
    DeleteAddress {
        link: String,
        address: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error("setting the default route via {gateway} on {link}")]
    DefaultRoute {
        link: String,
        gateway: std::net::IpAddr,
        #[source]
        source: Box<rtnetlink::Error>,
    },
}

impl NetlinkError {
    /// The kernel's errno (positive, e.g. `libc::EEXIST` = 17) when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        let source = match self {
            NetlinkError::ListLinks(source)
            | NetlinkError::ListAddresses(source)
            | NetlinkError::ListRoutes(source)
            | NetlinkError::GetLink { source, .. }
            | NetlinkError::CreateBridge { source, .. }
            | NetlinkError::CreateVeth { source, .. }
            | NetlinkError::CreateVxlan { source, .. }
            | NetlinkError::ListNeighbours { source, .. }
            | NetlinkError::SetNeighbour { source, .. }
            | NetlinkError::DeleteNeighbour { source, .. }
            | NetlinkError::DeleteLink { source, .. }
            | NetlinkError::DeleteGroup { source, .. }
            | NetlinkError::SetLink { source, .. }
            | NetlinkError::AddAddress { source, .. }
            | NetlinkError::DeleteAddress { source, .. }
            | NetlinkError::DefaultRoute { source, .. } => source,
            _ => return None,
        };
        errno(source)
    }
}

/// `EEXIST`: the name or address is taken.
pub const EEXIST: i32 = 17;
/// `ENODEV`: no such device.
pub const ENODEV: i32 = 19;
/// `ENOENT`: no such entry (a neighbour or FDB entry deleted meanwhile).
pub const ENOENT: i32 = 2;

/// The positive errno inside an rtnetlink error, if the kernel sent one.
pub fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|code| -code.get()),
        _ => None,
    }
}

/// One rtnetlink socket bound to one network namespace, with the runtime that drives it.
#[derive(Debug)]
pub struct Nl {
    /// Always `Some` until dropped (taken out by `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
    handle: rtnetlink::Handle,
}

impl Drop for Nl {
    /// Shuts the private runtime down without blocking: an `Nl` may be dropped from async code
    /// (the node agent's last reference to the dataplane goes on a runtime worker), where a
    /// runtime's ordinary drop panics.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Nl {
    /// Opens a socket inside the namespace at `netns` (`None`: the process's own namespace).
    ///
    /// Only the socket creation happens on a namespace thread; the socket stays bound to that
    /// namespace afterwards, wherever it is used.
    pub fn open_in(netns: Option<&Path>) -> Result<Nl, NetlinkError> {
        netns::run_in(netns, Nl::open_here).map_err(NetlinkError::Netns)?
    }

    /// Opens a socket in the calling thread's namespace.
    pub fn open_here() -> Result<Nl, NetlinkError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetlinkError::Runtime)?;
        let handle = {
            // The socket registers with the runtime's reactor, so it must be made inside it.
            let _entered = runtime.enter();
            let (connection, handle, _messages) =
                rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
            runtime.spawn(connection);
            handle
        };
        Ok(Nl {
            runtime: Some(runtime),
            handle,
        })
    }

    /// Runs one request to completion; the connection task is driven while it waits.
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        match &self.runtime {
            Some(runtime) => runtime.block_on(future),
            // Only `Drop` takes the runtime, and nothing runs on a value being dropped.
            None => unreachable!("an Nl is used after drop"),
        }
    }

    fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node agent drops its last dataplane reference (and so its cached socket) on a runtime
    /// worker at shutdown: that must not panic.
    #[tokio::test]
    async fn dropping_a_socket_inside_async_code_does_not_panic() {
        let nl = Nl::open_here().expect("a netlink socket opens without privileges");
        drop(nl);
    }
}
